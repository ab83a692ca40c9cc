//! Topic metadata and creation.

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use super::KafkaSettings;

const TIMEOUT: Duration = Duration::from_secs(15);

/// The topic's partition numbers, or None if it does not exist.
pub fn partitions(settings: &KafkaSettings, topic: &str) -> anyhow::Result<Option<Vec<i32>>> {
    partitions_within(settings, topic, TIMEOUT)
}

/// [`partitions`], waiting at most `timeout` for the cluster to answer.
pub fn partitions_within(settings: &KafkaSettings, topic: &str, timeout: Duration) -> anyhow::Result<Option<Vec<i32>>> {
    let consumer: BaseConsumer = settings
        .config(&[("allow.auto.create.topics", "false")])
        .create()
        .context("cannot create a Kafka client")?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read metadata of topic {topic:?} from {}", settings.brokers))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else { return Ok(None) };
    if let Some(e) = t.error() {
        let code: RDKafkaErrorCode = e.into();
        if code == RDKafkaErrorCode::UnknownTopicOrPartition {
            return Ok(None);
        }
        bail!("topic {topic:?}: {code}");
    }
    if t.partitions().is_empty() {
        return Ok(None);
    }
    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ps.sort_unstable();
    Ok(Some(ps))
}

/// Creates the topic with `n` partitions unless it exists; returns its partitions.
pub fn ensure_topic(settings: &KafkaSettings, topic: &str, n: i32) -> anyhow::Result<Vec<i32>> {
    if let Some(ps) = partitions(settings, topic)? {
        return Ok(ps);
    }
    let admin: AdminClient<DefaultClientContext> = settings.config(&[]).create().context("cannot create a Kafka admin client")?;
    let new = NewTopic::new(topic, n, TopicReplication::Fixed(1));
    let results = futures::executor::block_on(admin.create_topics([&new], &AdminOptions::new().operation_timeout(Some(TIMEOUT))))
        .with_context(|| format!("cannot create topic {topic:?}"))?;
    for r in results {
        if let Err((name, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                bail!("cannot create topic {name:?}: {code}");
            }
        }
    }
    // Metadata can lag creation by a moment.
    for _ in 0..50 {
        if let Some(ps) = partitions(settings, topic)? {
            return Ok(ps);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("topic {topic:?} was created but does not show in the metadata")
}
