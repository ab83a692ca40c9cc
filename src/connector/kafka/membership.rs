//! Key-group ownership through a consumer group.
//!
//! A topic with one partition per key group carries no messages: it exists so that Kafka's
//! group protocol assigns key groups to processes, and so that the group's committed offset
//! on partition `g` can name key group `g`'s checkpoint (its sequence number), committed in
//! the output transaction. Rebalances arrive through the consumer context; the job loop sees
//! them after each poll.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::KafkaSettings;

#[derive(Default)]
struct Events {
    /// Set when the assignment changed since the job loop last looked.
    changed: bool,
    assigned: BTreeSet<u32>,
}

#[derive(Clone, Default)]
struct RebalanceContext(Arc<Mutex<Events>>);

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        let mut e = self.0.lock().expect("not poisoned");
        if let Rebalance::Revoke(tpl) = r {
            for el in tpl.elements() {
                e.assigned.remove(&(el.partition() as u32));
            }
            e.changed = true;
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        let mut e = self.0.lock().expect("not poisoned");
        if let Rebalance::Assign(tpl) = r {
            e.assigned = tpl.elements().iter().map(|el| el.partition() as u32).collect();
            e.changed = true;
        }
    }
}

pub struct Membership {
    consumer: BaseConsumer<RebalanceContext>,
    ctx: RebalanceContext,
    topic: String,
}

impl Membership {
    pub fn join(settings: &KafkaSettings, group: &str, topic: &str, client_id: &str) -> anyhow::Result<Self> {
        let ctx = RebalanceContext::default();
        let consumer: BaseConsumer<RebalanceContext> = settings
            .config(&[
                ("group.id", group),
                ("client.id", client_id),
                // Static membership: a restarted process takes its predecessor's place at once
                // instead of waiting out the session timeout.
                ("group.instance.id", client_id),
                ("enable.auto.commit", "false"),
                ("isolation.level", "read_committed"),
                ("partition.assignment.strategy", "range"),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
            ])
            .create_with_context(ctx.clone())
            .context("cannot create the group consumer")?;
        consumer.subscribe(&[topic]).with_context(|| format!("cannot subscribe to {topic:?}"))?;
        Ok(Self { consumer, ctx, topic: topic.to_string() })
    }

    /// Serves the group protocol (heartbeats, rebalances). Returns the new set of owned key
    /// groups if it changed.
    pub fn poll(&self, wait: Duration) -> anyhow::Result<Option<BTreeSet<u32>>> {
        if let Some(Err(e)) = self.consumer.poll(wait) {
            tracing::warn!("group consumer: {e}");
        }
        let mut e = self.ctx.0.lock().expect("not poisoned");
        if !e.changed {
            return Ok(None);
        }
        e.changed = false;
        Ok(Some(e.assigned.clone()))
    }

    /// The committed checkpoint sequence of each key group (None: never checkpointed).
    pub fn committed(&self, groups: &BTreeSet<u32>) -> anyhow::Result<Vec<(u32, Option<u64>)>> {
        let mut tpl = TopicPartitionList::new();
        for g in groups {
            tpl.add_partition(&self.topic, *g as i32);
        }
        let got = self.consumer.committed_offsets(tpl, Duration::from_secs(15)).context("cannot read the group's committed offsets")?;
        Ok(got
            .elements()
            .iter()
            .map(|el| {
                let seq = match el.offset() {
                    Offset::Offset(o) if o > 0 => Some(o as u64),
                    _ => None,
                };
                (el.partition() as u32, seq)
            })
            .collect())
    }

    pub fn group_metadata(&self) -> anyhow::Result<ConsumerGroupMetadata> {
        self.consumer.group_metadata().context("the group consumer has no group metadata yet")
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}
