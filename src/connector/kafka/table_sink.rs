//! `backfill --sink kafka://…`: a job's output tables written to their Kafka topics, as the
//! stream job writes them, so that a restatement reaches the consumers of the live output (the
//! union, the loads into serving stores) and replaces the live values there.
//!
//! Each record goes to the partition the live job writes its `record_uuid` to (its key group,
//! [`OutputRecord::key_group`], of as many key groups as the topic has partitions: the stream
//! job creates its output topics with one partition per key group). In one partition a
//! restated value is therefore appended after every live value of its `record_uuid`, and an
//! upsert in offset order ends on it. Records are written in transactions of
//! [`RECORDS_PER_TRANSACTION`], so a consumer reading read_committed never sees a failed run's
//! half-written transaction (Nisshi shows it anyway: re-running the backfill writes the same
//! values again, which an upsert absorbs).
//!
//! Dead letters go to the job's `<topic>-dlq` topics keyed by their `record_uuid` (the same as
//! the live job's for the same message), in the partition of that key's hash: the live job
//! places them by key group, which a dead letter does not carry, so a restated dead letter may
//! sit in another partition than the live one. Deduplicate dead letters on `record_uuid`.

use std::marker::PhantomData;
use std::time::Duration;

use anyhow::Context;
use arrow::array::RecordBatch;

use super::txn_output::TxnOutput;
use super::{admin, KafkaSettings};
use crate::contract::outputs::DeadLetter;
use crate::contract::table::OutputTable;
use crate::core::job::OutputRecord;
use crate::runtime::backfill::OutputSink;

/// Records per transaction: large enough that commits cost little next to the records, small
/// enough that a failure leaves little to resend.
pub const RECORDS_PER_TRANSACTION: u64 = 50_000;

struct Topic {
    name: String,
    partitions: usize,
}

pub struct KafkaTableSink<R> {
    out: TxnOutput,
    tables: Vec<Topic>,
    /// `(input topic, its dead-letter topic)`.
    dead_letter_topics: Vec<(String, Topic)>,
    brokers: String,
    value: Vec<u8>,
    in_transaction: u64,
    /// Records sent, and when the first was: the rate downstream consumers see (what
    /// `--max-rate` bounds).
    sent: u64,
    first_send: Option<std::time::Instant>,
    _records: PhantomData<R>,
}

impl<R: OutputRecord> KafkaTableSink<R> {
    /// Opens (creating missing topics with `key_groups` partitions, as the stream job would)
    /// and fences any earlier run with the same `transactional_id`.
    pub fn new(settings: &KafkaSettings, transactional_id: &str, tables: &[OutputTable], dead_letters: &[String], key_groups: u32) -> anyhow::Result<Self> {
        let topic = |name: &str| -> anyhow::Result<Topic> {
            let partitions = admin::ensure_topic(settings, name, key_groups as i32)?.len();
            Ok(Topic { name: name.to_string(), partitions })
        };
        let tables = tables.iter().map(|t| topic(&t.name)).collect::<anyhow::Result<Vec<_>>>()?;
        let dead_letter_topics =
            dead_letters.iter().map(|input| Ok((input.clone(), topic(&format!("{input}-dlq"))?))).collect::<anyhow::Result<Vec<_>>>()?;
        let out = TxnOutput::new(settings, transactional_id, Duration::from_secs(60))?;
        Ok(Self { out, tables, dead_letter_topics, brokers: settings.brokers.clone(), value: Vec::new(), in_transaction: 0, sent: 0, first_send: None, _records: PhantomData })
    }

    /// Opens a transaction if none is; the rate's clock starts at the first send.
    fn begin(&mut self) -> anyhow::Result<()> {
        self.first_send.get_or_insert_with(std::time::Instant::now);
        self.out.begin()
    }

    fn sent(&mut self, n: u64) -> anyhow::Result<()> {
        self.sent += n;
        self.in_transaction += n;
        if self.in_transaction >= RECORDS_PER_TRANSACTION {
            self.out.commit_records()?;
            self.in_transaction = 0;
        }
        Ok(())
    }
}

impl<R: OutputRecord> OutputSink for KafkaTableSink<R> {
    fn write(&mut self, table: usize, batch: RecordBatch) -> anyhow::Result<()> {
        let records = R::from_batch(table, &batch)?;
        self.begin()?;
        let topic = &self.tables[table];
        let mut key = uuid::Uuid::encode_buffer();
        for r in &records {
            self.value.clear();
            r.write_json(&mut self.value);
            let partition = r.key_group(topic.partitions) as i32;
            let key = r.record_uuid().hyphenated().encode_lower(&mut key);
            self.out.send(&topic.name, partition, key.as_bytes(), &self.value)?;
        }
        self.sent(records.len() as u64)
    }

    fn write_dead_letters(&mut self, records: Vec<DeadLetter>) -> anyhow::Result<()> {
        self.begin()?;
        let mut key = uuid::Uuid::encode_buffer();
        for d in &records {
            let (_, topic) = self
                .dead_letter_topics
                .iter()
                .find(|(input, _)| **input == *d.topic)
                .with_context(|| format!("a dead letter of {:?}, which has no dead-letter topic", d.topic))?;
            self.value.clear();
            serde_json::to_writer(&mut self.value, d)?;
            let partition = (d.record_uuid.as_u128() % topic.partitions as u128) as i32;
            let key = d.record_uuid.hyphenated().encode_lower(&mut key);
            self.out.send(&topic.name, partition, key.as_bytes(), &self.value)?;
        }
        self.sent(records.len() as u64)
    }

    fn complete_before(&mut self, _records_before: i64, _dead_letters_before: i64) -> anyhow::Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<String> {
        self.out.commit_records()?;
        let topics: Vec<&str> = self.tables.iter().chain(self.dead_letter_topics.iter().map(|(_, t)| t)).map(|t| t.name.as_str()).collect();
        let seconds = self.first_send.map_or(0.0, |t| t.elapsed().as_secs_f64());
        Ok(format!(
            "Kafka topics {} on {} ({} records sent and committed in {seconds:.2} s: {:.0} records/s)",
            topics.join(", "),
            self.brokers,
            self.sent,
            self.sent as f64 / seconds.max(1e-9)
        ))
    }
}
