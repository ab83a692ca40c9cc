//! Polls → epochs, Kafka timestamps → watermarks.
//!
//! The ingest watermark is the minimum over assigned partitions of the greatest Kafka timestamp
//! seen on each: a partition's messages arrive in offset order and its timestamps are the
//! ingest times, so nothing earlier can still come from it.
//!
//! Partitions are *aligned by the watermark*: polled messages wait in a buffer until the
//! watermark passes their timestamp, and are then released together, sorted by (ingest time,
//! partition, offset), as one epoch. The core therefore sees messages in exactly the order a
//! backfill of the archive gives it, whatever the consumers' relative speeds, so even a
//! conflicting duplicate resolves as it would in a backfill. This costs no window latency: a
//! window cannot fire before the watermark passes its end anyway. Released messages are a
//! prefix of each partition, so the offsets to commit are the first unreleased ones
//! ([`StreamDriver::resume_offsets`]) and the buffer never needs to be checkpointed.
//!
//! A partition with no message yet holds the watermark back; an idle one can be released with
//! [`StreamDriver::mark_idle`] so that it does not stall every window.

use std::collections::BTreeMap;

use crate::contract::outputs::{AdMetric, DeadLetter};
use crate::contract::raw::{decode_messages, RawMessage};
use crate::core::aggregation::{AggregationOperator, Emit, Lateness, Scope, Settings};
use crate::core::audit::Audit;
use crate::core::config::AggregationRules;

#[derive(Debug, Clone, Copy, Default)]
struct PartitionClock {
    max_timestamp: Option<i64>,
    /// Offset after the last message polled.
    next_offset: Option<i64>,
    idle: bool,
}

pub struct StreamDriver {
    op: AggregationOperator,
    topic: String,
    partitions: BTreeMap<i32, PartitionClock>,
    buffered: Vec<RawMessage>,
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
            partitions: partitions.into_iter().map(|p| (p, PartitionClock::default())).collect(),
            buffered: Vec::new(),
            not_json: 0,
            out_dead: Vec::new(),
        }
    }

    /// Takes one poll's messages; processes every buffered message the watermark has passed.
    pub fn on_poll(&mut self, messages: &[RawMessage]) {
        for m in messages {
            let clock = self.partitions.entry(m.partition).or_default();
            clock.max_timestamp = Some(clock.max_timestamp.map_or(m.timestamp, |t| t.max(m.timestamp)));
            clock.next_offset = Some(m.offset + 1);
            clock.idle = false;
        }
        self.buffered.extend_from_slice(messages);
        self.advance();
    }

    /// Excludes a partition from the watermark until it delivers again.
    pub fn mark_idle(&mut self, partition: i32) {
        if let Some(c) = self.partitions.get_mut(&partition) {
            c.idle = true;
        }
        self.advance();
    }

    fn watermark(&self) -> Option<i64> {
        let mut wm: Option<i64> = None;
        for c in self.partitions.values().filter(|c| !c.idle) {
            let t = c.max_timestamp?;
            wm = Some(wm.map_or(t, |w| w.min(t)));
        }
        wm
    }

    fn advance(&mut self) {
        let Some(wm) = self.watermark() else { return };
        // Messages at the watermark itself stay: their partition may deliver more at that time.
        self.release(|m| m.timestamp < wm);
        self.op.advance_ingest_watermark(wm);
    }

    fn release(&mut self, ready: impl Fn(&RawMessage) -> bool) {
        let (mut epoch, keep): (Vec<RawMessage>, Vec<RawMessage>) = std::mem::take(&mut self.buffered).into_iter().partition(ready);
        self.buffered = keep;
        if epoch.is_empty() {
            return;
        }
        epoch.sort_by_key(|m| (m.timestamp, m.partition, m.offset));
        let (batch, not_json) = decode_messages(&self.topic, &epoch);
        self.not_json += not_json.len() as u64;
        self.out_dead.extend(not_json);
        if batch.num_rows() > 0 {
            self.op.process_epoch(std::slice::from_ref(&batch), None);
        }
    }

    /// Where each partition's consumption must resume after a restart from the current state:
    /// the first message not yet processed.
    pub fn resume_offsets(&self) -> BTreeMap<i32, i64> {
        let mut out: BTreeMap<i32, i64> =
            self.partitions.iter().filter_map(|(p, c)| c.next_offset.map(|o| (*p, o))).collect();
        for m in &self.buffered {
            let e = out.entry(m.partition).or_insert(m.offset);
            *e = (*e).min(m.offset);
        }
        out
    }

    /// Messages polled but not yet processed (waiting for the watermark).
    pub fn buffered(&self) -> usize {
        self.buffered.len()
    }

    /// End of a bounded replay: everything buffered is processed and every open window fires.
    pub fn finish(&mut self) {
        self.release(|_| true);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(partition: i32, offset: i64, timestamp: i64) -> RawMessage {
        RawMessage { partition, offset, timestamp, payload: b"{}".to_vec() }
    }

    #[test]
    fn a_partition_ahead_waits_for_the_watermark_and_resume_offsets_follow() {
        let mut d = StreamDriver::new(AggregationRules::defaults(), [0, 1]);
        d.on_poll(&[msg(0, 0, 100), msg(0, 1, 200)]);
        // Partition 1 has delivered nothing: no watermark, nothing processed.
        assert_eq!(d.buffered(), 2);
        assert_eq!(d.resume_offsets()[&0], 0);
        d.on_poll(&[msg(1, 7, 150)]);
        // Watermark 150: only the message ingested at 100 is released.
        assert_eq!(d.buffered(), 2);
        assert_eq!(d.resume_offsets(), BTreeMap::from([(0, 1), (1, 7)]));
        d.mark_idle(1);
        assert_eq!(d.buffered(), 1);
        d.finish();
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.resume_offsets(), BTreeMap::from([(0, 2), (1, 8)]));
    }
}
