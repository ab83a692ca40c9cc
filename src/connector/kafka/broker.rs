//! [`Broker`] over Kafka: the key-group membership, the source reader and the transactional
//! output, with the contract's JSON records keyed by `record_uuid`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::membership::Membership;
use super::reader::TopicReader;
use super::txn_output::TxnOutput;
use crate::contract::outputs::{AdMetric, DeadLetter};
use crate::contract::raw::RawMessage;
use crate::runtime::stream::job::Broker;

pub struct KafkaBroker {
    pub membership: Membership,
    pub reader: TopicReader,
    pub output: TxnOutput,
    pub metrics_topic: String,
    pub dlq_topic: String,
}

impl Broker for KafkaBroker {
    fn poll_membership(&mut self, wait: Duration) -> anyhow::Result<Option<BTreeSet<u32>>> {
        self.membership.poll(wait)
    }

    fn committed(&self, groups: &BTreeSet<u32>) -> anyhow::Result<Vec<(u32, Option<u64>)>> {
        self.membership.committed(groups)
    }

    fn seek(&mut self, offsets: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
        self.reader.seek(offsets)
    }

    fn poll(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<RawMessage>> {
        self.reader.poll(max, wait)
    }

    fn idle_partitions(&self, for_at_least: Duration) -> BTreeSet<i32> {
        self.reader.idle_partitions(for_at_least)
    }

    fn caught_up(&self) -> bool {
        self.reader.caught_up()
    }

    fn begin(&mut self) -> anyhow::Result<()> {
        self.output.begin()
    }

    fn send_metric(&mut self, m: &AdMetric) -> anyhow::Result<()> {
        let value = serde_json::to_vec(m)?;
        self.output.send(&self.metrics_topic, m.record_uuid.to_string().as_bytes(), &value)
    }

    fn send_dead_letter(&mut self, d: &DeadLetter) -> anyhow::Result<()> {
        let value = serde_json::to_vec(d)?;
        self.output.send(&self.dlq_topic, d.record_uuid.to_string().as_bytes(), &value)
    }

    fn commit(&mut self, seqs: &BTreeMap<u32, u64>) -> anyhow::Result<()> {
        let cgm = self.membership.group_metadata()?;
        let topic = self.membership.topic().to_string();
        self.output.commit(&topic, seqs, &cgm)
    }

    fn abort(&mut self) -> anyhow::Result<()> {
        self.output.abort()
    }
}
