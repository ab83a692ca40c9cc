//! Reads a whole topic, read_committed, from the beginning to its current end: how tests,
//! `replay --brokers` and the benchmarks see what the stream job committed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::reader::QuietEof;
use super::{admin, KafkaSettings};

/// One record: partition, offset, key, value.
pub type Record = (i32, i64, Vec<u8>, Vec<u8>);

/// Every committed record of `topic`, in offset order per partition (partitions interleaved).
pub fn read_to_end(settings: &KafkaSettings, topic: &str, timeout: Duration) -> anyhow::Result<Vec<Record>> {
    let Some(parts) = admin::partitions(settings, topic)? else { return Ok(Vec::new()) };
    let consumer: BaseConsumer<QuietEof> = settings
        .config(&[
            ("group.id", "adsproc-topic-dump"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
            ("isolation.level", "read_committed"),
        ])
        .create_with_context(QuietEof)
        .context("cannot create a Kafka consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut at_end = BTreeSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while at_end.len() < parts.len() {
        anyhow::ensure!(Instant::now() < deadline, "reading {topic} did not reach its end within {timeout:?}");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                out.push((m.partition(), m.offset(), m.key().unwrap_or_default().to_vec(), m.payload().unwrap_or_default().to_vec()));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => tracing::debug!("reading {topic}: {e}"),
            None => {}
        }
    }
    Ok(out)
}
