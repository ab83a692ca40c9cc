//! Polls → epochs, Kafka timestamps → watermarks, per key group.
//!
//! The ingest watermark is the minimum over the source partitions of the greatest Kafka
//! timestamp seen on each: a partition's messages arrive in offset order and its timestamps are
//! the ingest times, so nothing earlier can still come from it.
//!
//! Partitions are *aligned by the watermark*: polled rows wait until the watermark passes their
//! partition's running maximum timestamp, and are then released together as one epoch. The
//! core therefore resolves each epoch as a backfill would resolve the same messages, whatever
//! the consumers' relative speeds, so even a conflicting duplicate resolves as it would in a
//! backfill. This costs no window latency: a window cannot fire before the watermark passes
//! its end anyway. Released rows are a prefix of each partition (the running maximum never
//! decreases), so a key group's position is "first unreleased offset per partition"
//! ([`StreamDriver::resume_offsets`]) and pending rows never need to be checkpointed: after a
//! restore they are read again.
//!
//! State is split into key groups (a hash of `ad_id`, as in the backfill): each group has its
//! own operator, clocks and position, so a group can move to another process with its
//! checkpoint. Every group sees every message of the source for its clocks and keeps the rows
//! of its own ads. A group restored from an older checkpoint than its neighbours skips nothing
//! and repeats nothing: it ignores messages before its own position.
//!
//! A partition with no message yet holds the watermark back; an idle one can be released with
//! [`StreamDriver::mark_idle`] so that it does not stall every window.

use std::collections::BTreeMap;

use rayon::prelude::*;
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use serde::{Deserialize, Serialize};

use crate::contract::outputs::{AdMetric, DeadLetter};
use crate::contract::raw::{decode_messages, RawMessage};
use crate::contract::schema::col;
use crate::core::aggregation::{AggregationOperator, Emit, Lateness, OperatorState, Scope, Settings};
use crate::core::audit::Audit;
use crate::core::config::AggregationRules;
use crate::core::key_group::split_rows;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionClock {
    /// Running maximum of the partition's timestamps, over the messages this group has taken.
    pub max_timestamp: Option<i64>,
    /// The first offset this group has not taken yet.
    pub next_offset: Option<i64>,
    #[serde(skip)]
    idle: bool,
}

/// Rows of one poll that belong to a group, each with its partition's running maximum
/// timestamp: the row is released once the watermark passes that.
///
/// The poll's batch is shared by every group (its columns are reference-counted) and each
/// group keeps only the indices of its rows: copying each group's rows out (`take`, then
/// `filter` on release) moved every payload twice (per-group work 0.75 s → 0.47 s per 1M
/// messages without the copies). The price: a poll's batch stays in memory until the last of
/// its rows is released, which watermark alignment bounds (see `job::aligned`).
struct Pending {
    batch: RecordBatch,
    rows: Vec<u32>,
    release_at: Vec<i64>,
}

struct GroupTask {
    op: AggregationOperator,
    clocks: BTreeMap<i32, PartitionClock>,
    pending: Vec<Pending>,
}

/// One key group's checkpoint: its operator state and where to resume each partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSnapshot {
    pub key_group: u32,
    pub key_groups: u32,
    pub topic: String,
    /// Per partition: resume offset, and the running maximum timestamp before it.
    pub clocks: BTreeMap<i32, PartitionClock>,
    pub operator: OperatorState,
}

pub struct StreamDriver {
    rules: AggregationRules,
    settings: Settings,
    partitions: Vec<i32>,
    key_groups: u32,
    groups: BTreeMap<u32, GroupTask>,
}

/// A key group's records drained from the driver: (key group, ad-metrics, dead letters).
pub type GroupRecords = (u32, Vec<AdMetric>, Vec<DeadLetter>);

/// The runs of equal partitions in a poll's rows: (partition, rows).
fn partition_runs(partitions: &[i32]) -> Vec<(i32, std::ops::Range<usize>)> {
    let mut runs: Vec<(i32, std::ops::Range<usize>)> = Vec::new();
    for (i, &p) in partitions.iter().enumerate() {
        match runs.last_mut() {
            Some((rp, rows)) if *rp == p => rows.end = i + 1,
            _ => runs.push((p, i..i + 1)),
        }
    }
    runs
}

impl StreamDriver {
    /// A driver owning all state in one key group: for a single process and for tests.
    pub fn new(rules: AggregationRules, partitions: impl IntoIterator<Item = i32>) -> Self {
        let mut d = Self::with_key_groups(rules, partitions, 1);
        d.start_group(0);
        d
    }

    /// A driver for `key_groups` groups that owns none yet: add them with
    /// [`start_group`](Self::start_group) or [`restore_group`](Self::restore_group).
    pub fn with_key_groups(rules: AggregationRules, partitions: impl IntoIterator<Item = i32>, key_groups: u32) -> Self {
        assert!(key_groups > 0);
        let settings = Settings { emit: Emit::Updates, lateness: Lateness::Bounded, scope: Scope::everything() };
        Self { rules, settings, partitions: partitions.into_iter().collect(), key_groups, groups: BTreeMap::new() }
    }

    pub fn key_groups(&self) -> u32 {
        self.key_groups
    }

    pub fn owned_groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.groups.keys().copied()
    }

    /// Takes ownership of a group with empty state, reading every partition from the start.
    pub fn start_group(&mut self, g: u32) {
        let op = AggregationOperator::new(self.rules.clone(), self.settings.clone());
        let clocks = self.partitions.iter().map(|p| (*p, PartitionClock::default())).collect();
        self.groups.insert(g, GroupTask { op, clocks, pending: Vec::new() });
    }

    /// Takes ownership of a group from its checkpoint.
    pub fn restore_group(&mut self, snap: GroupSnapshot) -> Result<(), String> {
        if snap.key_groups != self.key_groups {
            return Err(format!(
                "the checkpoint was taken with {} key groups, this job runs {}: key groups are fixed for the life of a checkpoint",
                snap.key_groups, self.key_groups
            ));
        }
        if snap.topic != self.rules.input_topic {
            return Err(format!("the checkpoint is of topic {:?}, this job reads {:?}", snap.topic, self.rules.input_topic));
        }
        let op = AggregationOperator::restore(self.rules.clone(), self.settings.clone(), snap.operator);
        // A checkpoint taken by a process that had found partitions this one has not (see
        // `add_partitions`) names them: they are source partitions from now on.
        let found: Vec<i32> = snap.clocks.keys().copied().filter(|p| !self.partitions.contains(p)).collect();
        self.add_partitions(&found);
        let mut clocks: BTreeMap<i32, PartitionClock> = self.partitions.iter().map(|p| (*p, PartitionClock::default())).collect();
        clocks.extend(snap.clocks);
        self.groups.insert(snap.key_group, GroupTask { op, clocks, pending: Vec::new() });
        Ok(())
    }

    /// The source partitions: those it was created with and those added since.
    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    /// Source partitions added to the topic while the job runs. Each owned group gets a clock
    /// for them with no timestamp yet, so that they hold its watermark back, as a partition
    /// does at start, until they deliver or fall idle: their first messages may be older than
    /// what the others have delivered since they were added. [`resume_offsets`] leaves them
    /// out, so they are read from their beginning.
    ///
    /// [`resume_offsets`]: Self::resume_offsets
    pub fn add_partitions(&mut self, new: &[i32]) {
        for &p in new {
            if self.partitions.contains(&p) {
                continue;
            }
            self.partitions.push(p);
            for t in self.groups.values_mut() {
                t.clocks.entry(p).or_default();
            }
        }
        self.partitions.sort_unstable();
    }

    /// Gives up a group (it moved to another process); its state is dropped.
    pub fn release_group(&mut self, g: u32) {
        self.groups.remove(&g);
    }

    /// The checkpoint of group `g` as of now. Call between polls, after [`drain`](Self::drain).
    pub fn snapshot_group(&self, g: u32) -> Option<GroupSnapshot> {
        let t = self.groups.get(&g)?;
        let clocks = self.resume_clocks(g);
        Some(GroupSnapshot {
            key_group: g,
            key_groups: self.key_groups,
            topic: self.rules.input_topic.clone(),
            clocks,
            operator: t.op.snapshot(),
        })
    }

    /// Takes one poll's messages (in offset order per partition); processes every row the
    /// watermark has passed.
    pub fn on_poll(&mut self, messages: &[RawMessage]) {
        if messages.is_empty() {
            return;
        }
        self.on_batch(&decode_messages(messages));
    }

    /// Takes one poll already decoded into the canonical input batch (the Kafka partition,
    /// offset and timestamp columns are set; rows in offset order per partition); processes
    /// every row the watermark has passed.
    pub fn on_batch(&mut self, batch: &RecordBatch) {
        if batch.num_rows() == 0 || self.groups.is_empty() {
            return;
        }
        let partitions = batch.column(col::KAFKA_PARTITION).as_primitive::<Int32Type>().values();
        let offsets = batch.column(col::KAFKA_OFFSET).as_primitive::<Int64Type>().values();
        let timestamps = batch.column(col::KAFKA_TIMESTAMP).as_primitive::<TimestampMillisecondType>().values();
        let by_group = split_rows(batch, self.key_groups as usize);
        let mut row_group = vec![0u32; batch.num_rows()];
        for (g, rows) in by_group.iter().enumerate() {
            for &r in rows {
                row_group[r as usize] = g as u32;
            }
        }
        // A poll holds runs of one partition's messages: each group looks its clock up once
        // per run, not once per row (a map lookup per row and group was the hottest part of
        // this function).
        let runs = partition_runs(partitions);
        // Groups are independent (own clocks, state and pending rows): take each one's rows
        // and run its operator on a rayon thread, as the backfill does.
        let mut tasks: Vec<(u32, &mut GroupTask)> = self.groups.iter_mut().map(|(g, t)| (*g, t)).collect();
        tasks.par_iter_mut().for_each(|(g, task)| {
            let g = *g;
            let mut take: Vec<u32> = Vec::with_capacity(by_group[g as usize].len());
            let mut release_at = Vec::with_capacity(take.capacity());
            for &(partition, ref rows) in &runs {
                let c = task.clocks.entry(partition).or_default();
                let (mut next_offset, mut max_timestamp) = (c.next_offset, c.max_timestamp);
                for i in rows.clone() {
                    let (offset, timestamp) = (offsets[i], timestamps[i]);
                    if next_offset.is_some_and(|o| offset < o) {
                        continue; // before this group's position: already in its state
                    }
                    let t = max_timestamp.map_or(timestamp, |t| t.max(timestamp));
                    max_timestamp = Some(t);
                    next_offset = Some(offset + 1);
                    c.idle = false;
                    if row_group[i] == g {
                        take.push(i as u32);
                        release_at.push(t);
                    }
                }
                (c.next_offset, c.max_timestamp) = (next_offset, max_timestamp);
            }
            if !take.is_empty() {
                task.pending.push(Pending { batch: batch.clone(), rows: take, release_at });
            }
            task.advance();
        });
    }

    /// Excludes a partition from the watermark until it delivers again.
    pub fn mark_idle(&mut self, partition: i32) {
        for t in self.groups.values_mut() {
            if let Some(c) = t.clocks.get_mut(&partition) {
                c.idle = true;
            }
        }
        self.advance();
    }

    fn advance(&mut self) {
        self.groups.values_mut().for_each(GroupTask::advance);
    }

    /// Where each partition's consumption must resume so that every owned group gets every
    /// message it has not processed: the least position over the groups. Partitions that no
    /// group has read yet are absent (start them from the beginning).
    pub fn resume_offsets(&self) -> BTreeMap<i32, i64> {
        let mut out = BTreeMap::new();
        let mut unknown = std::collections::BTreeSet::new();
        for g in self.groups.keys() {
            let snap_clocks = self.resume_clocks(*g);
            for p in &self.partitions {
                match snap_clocks.get(p).and_then(|c| c.next_offset) {
                    Some(o) => {
                        let e = out.entry(*p).or_insert(o);
                        *e = (*e).min(o);
                    }
                    None => {
                        unknown.insert(*p);
                    }
                }
            }
        }
        out.retain(|p, _| !unknown.contains(p));
        out
    }

    /// A group's clocks as of its first unreleased row per partition. A pending row is read
    /// again after a restore; its partition's running maximum must then be what it was before
    /// that row, which is what the row's release time records.
    fn resume_clocks(&self, g: u32) -> BTreeMap<i32, PartitionClock> {
        let t = &self.groups[&g];
        let mut clocks = t.clocks.clone();
        for p in &t.pending {
            let parts = p.batch.column(col::KAFKA_PARTITION).as_primitive::<Int32Type>();
            let offs = p.batch.column(col::KAFKA_OFFSET).as_primitive::<Int64Type>();
            for (&r, &release_at) in p.rows.iter().zip(&p.release_at) {
                let (partition, offset) = (parts.value(r as usize), offs.value(r as usize));
                let c = clocks.entry(partition).or_default();
                if c.next_offset.is_none_or(|o| offset < o) {
                    c.next_offset = Some(offset);
                    c.max_timestamp = Some(release_at);
                }
            }
        }
        clocks
    }

    /// Rows polled but not yet processed, per source partition.
    ///
    /// Called after every poll over up to ~160k waiting rows: a map update per row was 4 % of
    /// the job loop's thread, so rows are counted per run of one partition (a poll's messages
    /// come in such runs) and the map is updated once per run.
    pub fn waiting_by_partition(&self) -> BTreeMap<i32, usize> {
        let mut out = BTreeMap::new();
        for p in self.groups.values().flat_map(|t| &t.pending) {
            let parts = p.batch.column(col::KAFKA_PARTITION).as_primitive::<Int32Type>().values();
            let mut run: Option<(i32, usize)> = None;
            for &r in &p.rows {
                let part = parts[r as usize];
                match &mut run {
                    Some((rp, n)) if *rp == part => *n += 1,
                    _ => {
                        if let Some((rp, n)) = run.replace((part, 1)) {
                            *out.entry(rp).or_insert(0) += n;
                        }
                    }
                }
            }
            if let Some((rp, n)) = run {
                *out.entry(rp).or_insert(0) += n;
            }
        }
        out
    }

    /// Rows polled but not yet processed (waiting for the watermark).
    pub fn buffered(&self) -> usize {
        self.groups.values().flat_map(|t| &t.pending).map(|p| p.rows.len()).sum()
    }

    /// The least ingest watermark over the owned groups.
    pub fn ingest_watermark(&self) -> Option<i64> {
        self.groups.values().map(|t| t.op.ingest_watermark()).min()
    }

    /// End of a bounded replay: everything buffered is processed and every open window fires.
    pub fn finish(&mut self) {
        for t in self.groups.values_mut() {
            t.release(|_| true);
            t.op.finish();
        }
    }

    /// Runs a bounded sequence of polls to the end; returns everything emitted, in order.
    pub fn replay<P: AsRef<[RawMessage]>>(&mut self, polls: impl IntoIterator<Item = P>) -> (Vec<AdMetric>, Vec<DeadLetter>) {
        let (mut metrics, mut dead) = (Vec::new(), Vec::new());
        for poll in polls {
            self.on_poll(poll.as_ref());
            let (m, d) = self.drain();
            metrics.extend(m);
            dead.extend(d);
        }
        self.finish();
        let (m, d) = self.drain();
        metrics.extend(m);
        dead.extend(d);
        (metrics, dead)
    }

    /// Records emitted since the last call, in emission order (group by group).
    pub fn drain(&mut self) -> (Vec<AdMetric>, Vec<DeadLetter>) {
        let (mut metrics, mut dead) = (Vec::new(), Vec::new());
        for t in self.groups.values_mut() {
            let (m, d) = t.op.drain();
            metrics.extend(m);
            dead.extend(d);
        }
        (metrics, dead)
    }

    /// Records emitted since the last call, per owned key group. Built on rayon threads: each
    /// record's `record_uuid` is a SHA-1, and its strings are copied out of the interner.
    pub fn drain_by_group(&mut self) -> Vec<GroupRecords> {
        let mut groups: Vec<(&u32, &mut GroupTask)> = self.groups.iter_mut().collect();
        groups.par_iter_mut().map(|(g, t)| {
            let (m, d) = t.op.drain();
            (**g, m, d)
        }).collect()
    }

    /// The owned groups' audits, summed.
    pub fn audit(&self) -> Audit {
        let mut a = Audit::default();
        for t in self.groups.values() {
            a.merge(t.op.audit());
        }
        a
    }
}

impl GroupTask {
    fn advance(&mut self) {
        let Some(wm) = watermark(&self.clocks) else { return };
        // Rows at the watermark itself stay: their partition may deliver more at that time.
        self.release(|at| at < wm);
        self.op.advance_ingest_watermark(wm);
    }

    fn release(&mut self, ready: impl Fn(i64) -> bool) {
        let (mut batches, mut selections) = (Vec::new(), Vec::new());
        let mut keep = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            let n = p.release_at.iter().filter(|t| ready(**t)).count();
            if n == p.rows.len() {
                batches.push(p.batch);
                selections.push(p.rows);
            } else if n == 0 {
                keep.push(p);
            } else {
                let (mut now, mut later) = (Vec::with_capacity(n), Vec::with_capacity(p.rows.len() - n));
                let mut later_at = Vec::with_capacity(p.rows.len() - n);
                for (r, t) in p.rows.into_iter().zip(p.release_at) {
                    if ready(t) {
                        now.push(r);
                    } else {
                        later.push(r);
                        later_at.push(t);
                    }
                }
                batches.push(p.batch.clone());
                selections.push(now);
                keep.push(Pending { batch: p.batch, rows: later, release_at: later_at });
            }
        }
        self.pending = keep;
        if !batches.is_empty() {
            self.op.process_epoch(&batches, Some(&selections));
        }
    }
}

fn watermark(clocks: &BTreeMap<i32, PartitionClock>) -> Option<i64> {
    let mut wm: Option<i64> = None;
    for c in clocks.values().filter(|c| !c.idle) {
        let t = c.max_timestamp?;
        wm = Some(wm.map_or(t, |w| w.min(t)));
    }
    wm
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
        assert_eq!(d.waiting_by_partition(), BTreeMap::from([(0, 2)]));
        assert_eq!(d.resume_offsets(), BTreeMap::from([(0, 0)]));
        d.on_poll(&[msg(1, 7, 150)]);
        // Watermark 150: only the message ingested at 100 is released.
        assert_eq!(d.buffered(), 2);
        assert_eq!(d.waiting_by_partition(), BTreeMap::from([(0, 1), (1, 1)]));
        assert_eq!(d.resume_offsets(), BTreeMap::from([(0, 1), (1, 7)]));
        d.mark_idle(1);
        assert_eq!(d.buffered(), 1);
        // Runs of partitions within one poll are counted per partition.
        let mut d2 = StreamDriver::new(AggregationRules::defaults(), [0, 1, 2]);
        d2.on_poll(&[msg(0, 0, 100), msg(1, 0, 100), msg(1, 1, 100), msg(0, 1, 100), msg(2, 0, 50)]);
        assert_eq!(d2.waiting_by_partition(), BTreeMap::from([(0, 2), (1, 2), (2, 1)]));
        d.finish();
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.resume_offsets(), BTreeMap::from([(0, 2), (1, 8)]));
    }

    #[test]
    fn an_added_partition_holds_the_watermark_until_it_delivers_and_is_read_from_its_start() {
        let mut d = StreamDriver::new(AggregationRules::defaults(), [0]);
        d.on_poll(&[msg(0, 0, 100), msg(0, 1, 200)]);
        // Watermark 200: the row ingested at 100 is processed.
        assert_eq!(d.buffered(), 1);
        d.add_partitions(&[1]);
        assert_eq!(d.partitions(), &[0, 1]);
        // Partition 1 has delivered nothing: it holds the watermark back and is left out of
        // the positions, so a reader starts it at its beginning.
        d.on_poll(&[msg(0, 2, 300)]);
        assert_eq!(d.buffered(), 2);
        assert_eq!(d.resume_offsets(), BTreeMap::from([(0, 1)]));
        // Its first message is older than what partition 0 delivered since: it is processed
        // first, and partition 0's rows wait for partition 1 to pass them.
        d.on_poll(&[msg(1, 0, 150), msg(1, 1, 250)]);
        assert_eq!(d.waiting_by_partition(), BTreeMap::from([(0, 1), (1, 1)]));
        assert_eq!(d.resume_offsets(), BTreeMap::from([(0, 2), (1, 1)]));
        // A checkpoint names the partition, so a process that has not found it yet reads it
        // after restoring the group.
        d.drain();
        let snap = d.snapshot_group(0).unwrap();
        let mut elsewhere = StreamDriver::with_key_groups(AggregationRules::defaults(), [0], 1);
        elsewhere.restore_group(snap).unwrap();
        assert_eq!(elsewhere.partitions(), &[0, 1]);
        assert_eq!(elsewhere.resume_offsets(), BTreeMap::from([(0, 2), (1, 1)]));
    }

    #[test]
    fn timestamps_going_backwards_keep_released_rows_a_prefix() {
        let mut d = StreamDriver::new(AggregationRules::defaults(), [0, 1]);
        // Offset 1 has an older timestamp than offset 0: it is released with it, not before.
        d.on_poll(&[msg(0, 0, 200), msg(0, 1, 100), msg(1, 0, 150)]);
        assert_eq!(d.buffered(), 3);
        assert_eq!(d.resume_offsets(), BTreeMap::from([(0, 0), (1, 0)]));
        d.on_poll(&[msg(1, 1, 250)]);
        // Watermark 200: both rows of partition 0 wait for it to pass 200.
        assert_eq!(d.buffered(), 3);
        assert_eq!(d.resume_offsets(), BTreeMap::from([(0, 0), (1, 1)]));
        d.drain();
        let snap = d.snapshot_group(0).unwrap();
        assert_eq!(snap.clocks[&1].max_timestamp, Some(250));
        assert_eq!(snap.clocks[&0], PartitionClock { max_timestamp: Some(200), next_offset: Some(0), idle: false });
    }
}
