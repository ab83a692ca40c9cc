//! Reads every partition of a topic from given positions, read_committed, without a consumer
//! group: positions are the caller's (they live in checkpoints), never committed here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaSettings;
use arrow::array::RecordBatch;

use rayon::prelude::*;

use crate::contract::raw::MessageDecoder;

/// Reaching a partition's end is how the reader knows it is caught up, not an error worth a
/// log line.
pub struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for QuietEof {}

/// Polls smaller than twice this are decoded on one thread.
const MIN_DECODE_SLICE: usize = 2048;

pub struct TopicReader {
    consumer: BaseConsumer<QuietEof>,
    topic: String,
    partitions: Vec<i32>,
    /// Partitions whose end the last poll reached, and since when.
    at_end: BTreeMap<i32, Instant>,
    /// Partitions not being fetched (see [`Self::pause_only`]).
    paused: BTreeSet<i32>,
}

impl TopicReader {
    pub fn new(settings: &KafkaSettings, topic: &str, partitions: Vec<i32>, client_id: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer<QuietEof> = settings
            .config(&[
                ("group.id", &format!("{client_id}-reader")),
                ("client.id", client_id),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
                ("isolation.level", "read_committed"),
                ("auto.offset.reset", "earliest"),
                ("fetch.wait.max.ms", "100"),
                // librdkafka stops fetching a partition whose local queue is above
                // queued.min.messages and, by default, waits a whole second before fetching it
                // again: a job slower than the network then idles most of that second
                // (measured: 11 s instead of 5.6 s for 1M messages).
                ("fetch.queue.backoff.ms", "10"),
            ])
            .create_with_context(QuietEof)
            .context("cannot create the Kafka reader")?;
        Ok(Self { consumer, topic: topic.to_string(), partitions, at_end: BTreeMap::new(), paused: BTreeSet::new() })
    }

    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    /// Positions every partition: at the given offset, or at the beginning if absent.
    pub fn seek(&mut self, offsets: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for p in &self.partitions {
            let o = offsets.get(p).map_or(Offset::Beginning, |o| Offset::Offset(*o));
            tpl.add_partition_offset(&self.topic, *p, o)?;
        }
        self.pause_only(&BTreeSet::new())?;
        self.consumer.assign(&tpl).with_context(|| format!("cannot assign partitions of {:?}", self.topic))?;
        self.at_end.clear();
        Ok(())
    }

    /// Up to `max` messages, waiting at most `wait` for the first, decoded straight from the
    /// client's buffers into canonical batches: consecutive slices of the poll, in order,
    /// decoded in parallel (decoding is most of a poll's cost, and the job's other stages
    /// wait for it).
    pub fn poll(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<RecordBatch>> {
        let mut held = Vec::with_capacity(max.min(65_536));
        let deadline = Instant::now() + wait;
        while held.len() < max {
            // Wait only for the first message; then take what is already fetched.
            let timeout = if held.is_empty() { deadline.saturating_duration_since(Instant::now()) } else { Duration::ZERO };
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(m)) => {
                    self.at_end.remove(&m.partition());
                    held.push(m);
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    self.at_end.entry(p).or_insert_with(Instant::now);
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition))) => {
                    anyhow::bail!("topic {:?} does not exist", self.topic)
                }
                Some(Err(e)) => {
                    // Transient broker errors are retried by librdkafka; report and go on.
                    tracing::warn!("reading {}: {e}", self.topic);
                    break;
                }
            }
        }
        let slice = held.len().div_ceil(rayon::current_num_threads()).max(MIN_DECODE_SLICE);
        Ok(held
            .par_chunks(slice)
            .map(|slice| {
                // Sized exactly: a builder that outgrows its buffer copies it into a fresh one
                // (see `MessageDecoder::with_capacity_for`).
                let bytes = slice.iter().map(|m| m.payload_len()).sum();
                let mut out = MessageDecoder::with_capacity_for(slice.len(), bytes);
                for m in slice {
                    out.append(m.partition(), m.offset(), m.timestamp().to_millis().unwrap_or(0), m.payload().unwrap_or_default());
                }
                out.finish()
            })
            .collect())
    }

    /// Stops fetching `partitions` and fetches every other one. A paused partition resumes
    /// from the message after the last one it delivered (librdkafka drops what it had
    /// fetched beyond that).
    pub fn pause_only(&mut self, partitions: &BTreeSet<i32>) -> anyhow::Result<()> {
        let list = |ps: &mut dyn Iterator<Item = &i32>| {
            let mut tpl = TopicPartitionList::new();
            for p in ps {
                tpl.add_partition(&self.topic, *p);
            }
            tpl
        };
        let resume = list(&mut self.paused.difference(partitions));
        let pause = list(&mut partitions.difference(&self.paused));
        if resume.count() > 0 {
            self.consumer.resume(&resume).with_context(|| format!("cannot resume partitions of {:?}", self.topic))?;
        }
        if pause.count() > 0 {
            self.consumer.pause(&pause).with_context(|| format!("cannot pause partitions of {:?}", self.topic))?;
        }
        self.paused = partitions.clone();
        Ok(())
    }

    pub fn paused(&self) -> &BTreeSet<i32> {
        &self.paused
    }

    /// Partitions that have been at their end for at least `for_at_least`.
    pub fn idle_partitions(&self, for_at_least: Duration) -> BTreeSet<i32> {
        self.at_end.iter().filter(|(_, since)| since.elapsed() >= for_at_least).map(|(p, _)| *p).collect()
    }

    /// Whether every partition has reached its end since it last delivered.
    pub fn caught_up(&self) -> bool {
        self.partitions.iter().all(|p| self.at_end.contains_key(p))
    }
}
