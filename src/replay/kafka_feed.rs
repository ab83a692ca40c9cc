//! The Kafka feed of a scenario: its messages produced to a fresh topic on a real broker, the
//! stream runtime (the same loop `adsproc stream` runs) until caught up, its committed output
//! read back. This is the whole stream path — consumer, key groups, checkpoints, transactions.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::scenario::{Produced, Scenario};
use crate::connector::checkpoint_store::ObjectCheckpoints;
use crate::connector::kafka::broker::{KafkaBroker, StreamTopics};
use crate::connector::kafka::topic_dump::read_to_end;
use crate::connector::kafka::txn_output::transaction_timeout;
use crate::connector::kafka::{admin, KafkaSettings};
use crate::connector::store::open;
use crate::contract::time::DAY_MS;
use crate::runtime::stream::job::{run, StreamOptions};

pub(crate) fn run_kafka_feed(s: &Scenario, brokers: &str) -> anyhow::Result<Produced> {
    let settings = KafkaSettings::new(brokers, &[]);
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let topic = format!("replay-{}-{nonce}", s.name);
    let (metrics_topic, dlq_topic, group) = (format!("{topic}-metrics"), format!("{topic}-dlq"), format!("{topic}-group"));
    let n = s.messages.iter().map(|m| m.partition).max().unwrap_or(0) + 1;
    let input_partitions = admin::ensure_topic(&settings, &topic, n)?;

    let producer: ThreadedProducer<DefaultProducerContext> =
        settings.config(&[("enable.idempotence", "true"), ("linger.ms", "0")]).create().context("cannot create a producer")?;
    let mut msgs = s.messages.clone();
    msgs.sort_by_key(|m| (m.partition, m.offset));
    for m in &msgs {
        producer
            .send(BaseRecord::<(), [u8]>::to(&topic).partition(m.partition).timestamp(m.timestamp).payload(&m.payload))
            .map_err(|(e, _)| e)?;
    }
    // One message per partition a day later, so that the watermark passes every window of the
    // scenario (it is outside the compared range).
    let tick_at = msgs.iter().map(|m| m.timestamp).max().unwrap_or(0) + DAY_MS;
    for p in &input_partitions {
        let tick = format!(r#"{{"event_id":"tick-{p}","event_type":"impression","ad_id":"tick","event_time":{tick_at},"region":"tick"}}"#);
        producer.send(BaseRecord::<(), str>::to(&topic).partition(*p).timestamp(tick_at).payload(&tick)).map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;

    let ckpt_dir = tempfile::tempdir()?;
    let rt = crate::cli::tokio_runtime()?;
    let store = ObjectCheckpoints::new(open(ckpt_dir.path().to_str().context("utf-8 path")?, &[], true)?, rt.handle().clone());
    let mut rules = s.rules.clone();
    rules.input_topic = topic.clone();
    let opts = StreamOptions {
        key_groups: 2,
        checkpoint_interval: Duration::from_millis(200),
        min_checkpoint_pause: Duration::from_millis(100),
        idle_timeout: Duration::from_secs(3600),
        partition_discovery_interval: Some(Duration::from_secs(30)),
        stop_when_caught_up: true,
        max_poll: s.poll_size,
        max_waiting_per_partition: s.poll_size,
    };
    let topics = StreamTopics {
        input: topic.clone(),
        metrics: metrics_topic.clone(),
        dlq: dlq_topic.clone(),
        group,
        instance: "0".into(),
        key_groups: opts.key_groups,
        // The rule `adsproc stream` applies, so that the replay runs the job as deployed.
        transaction_timeout: transaction_timeout(opts.checkpoint_interval, &[])?,
    };
    let (mut broker, partitions) = KafkaBroker::connect(&settings, &topics)?;
    let summary = run(&rules, &partitions, &mut broker, &store, &opts, &AtomicBool::new(false))?;
    drop(broker);

    let decode = |topic: &str| read_to_end(&settings, topic, Duration::from_secs(60));
    let metrics = decode(&metrics_topic)?
        .into_iter()
        .map(|(_, _, _, v)| serde_json::from_slice(&v).context("an ad-metrics record that is not the contract's JSON"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let dead = decode(&dlq_topic)?
        .into_iter()
        .map(|(_, _, _, v)| serde_json::from_slice(&v).context("a dead letter that is not JSON"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Produced { metrics, dead, audit: summary.audit })
}
