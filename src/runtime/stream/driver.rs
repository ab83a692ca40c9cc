//! Polls → epochs, Kafka timestamps → watermarks.
//!
//! Each poll is one epoch. The ingest watermark is the minimum over assigned partitions of the
//! greatest Kafka timestamp seen on each: a partition's messages arrive in offset order and
//! its timestamps are the ingest times, so nothing earlier can still come from it. A partition
//! with no message yet holds the watermark back; an idle one can be released with
//! [`StreamDriver::mark_idle`] so that it does not stall every window.

use std::collections::BTreeMap;

use crate::contract::outputs::{AdMetric, DeadLetter};
use crate::contract::raw::{decode_messages, RawMessage};
use crate::core::aggregation::{AggregationOperator, Emit, Lateness, Scope, Settings};
use crate::core::audit::Audit;
use crate::core::config::AggregationRules;

#[derive(Debug, Clone, Copy)]
struct PartitionClock {
    max_timestamp: Option<i64>,
    idle: bool,
}

pub struct StreamDriver {
    op: AggregationOperator,
    topic: String,
    partitions: BTreeMap<i32, PartitionClock>,
    not_json: u64,
    out_dead: Vec<DeadLetter>,
}

impl StreamDriver {
    pub fn new(rules: AggregationRules, partitions: impl IntoIterator<Item = i32>) -> Self {
        let topic = rules.input_topic.clone();
        let settings = Settings { emit: Emit::Updates, lateness: Lateness::Bounded, scope: Scope::everything() };
        Self {
            op: AggregationOperator::new(rules, settings),
            topic,
            partitions: partitions.into_iter().map(|p| (p, PartitionClock { max_timestamp: None, idle: false })).collect(),
            not_json: 0,
            out_dead: Vec::new(),
        }
    }

    /// Processes one poll's messages as one epoch.
    pub fn on_poll(&mut self, messages: &[RawMessage]) {
        let (batch, not_json) = decode_messages(&self.topic, messages);
        self.not_json += not_json.len() as u64;
        self.out_dead.extend(not_json);
        if batch.num_rows() > 0 {
            self.op.process_epoch(std::slice::from_ref(&batch), None);
        }
        for m in messages {
            let clock = self.partitions.entry(m.partition).or_insert(PartitionClock { max_timestamp: None, idle: false });
            clock.max_timestamp = Some(clock.max_timestamp.map_or(m.timestamp, |t| t.max(m.timestamp)));
            clock.idle = false;
        }
        self.advance();
    }

    /// Excludes a partition from the watermark until it delivers again.
    pub fn mark_idle(&mut self, partition: i32) {
        if let Some(c) = self.partitions.get_mut(&partition) {
            c.idle = true;
        }
        self.advance();
    }

    fn advance(&mut self) {
        let active = self.partitions.values().filter(|c| !c.idle);
        let mut wm: Option<i64> = None;
        for c in active {
            match c.max_timestamp {
                None => return,
                Some(t) => wm = Some(wm.map_or(t, |w| w.min(t))),
            }
        }
        if let Some(wm) = wm {
            self.op.advance_ingest_watermark(wm);
        }
    }

    /// End of a bounded replay: every open window fires.
    pub fn finish(&mut self) {
        self.op.finish();
    }

    /// Records emitted since the last call, in emission order.
    pub fn drain(&mut self) -> (Vec<AdMetric>, Vec<DeadLetter>) {
        let (m, mut d) = self.op.drain();
        let mut dead = std::mem::take(&mut self.out_dead);
        dead.append(&mut d);
        (m, dead)
    }

    /// The operator's audit plus messages that were not JSON (counted as invalid).
    pub fn audit(&self) -> Audit {
        let mut a = self.op.audit().clone();
        a.read += self.not_json;
        a.invalid += self.not_json;
        if self.not_json > 0 {
            *a.rejected_by_reason.entry("not_json").or_default() += self.not_json;
        }
        a
    }
}
