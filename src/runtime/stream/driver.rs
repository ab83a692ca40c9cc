//! Polls → epochs, Kafka timestamps → watermarks, per key group, for any job.
//!
//! The ingest watermark is the minimum over the source partitions — of every input topic of
//! the job — of the greatest Kafka timestamp seen on each: a partition's messages arrive in
//! offset order and its timestamps are the ingest times, so nothing earlier can still come
//! from it.
//!
//! Partitions are *aligned by the watermark*: polled rows wait until the watermark passes their
//! partition's running maximum timestamp, and are then released together as one epoch. The
//! job's operator therefore resolves each epoch as a backfill would resolve the same messages,
//! whatever the consumers' relative speeds, so even a conflicting duplicate resolves as it
//! would in a backfill. This costs no window latency: a window cannot fire before the watermark
//! passes its end anyway. Released rows are a prefix of each partition (the running maximum
//! never decreases), so a key group's position is "first unreleased offset per partition"
//! ([`StreamDriver::resume_offsets`]) and pending rows never need to be checkpointed: after a
//! restore they are read again.
//!
//! State is split into key groups (the job's [`Job::route`], as in the backfill): each group
//! has its own operator, clocks and position, so a group can move to another process with its
//! checkpoint. Every group sees every message of the sources for its clocks and keeps the rows
//! the job routes to it. A group restored from an older checkpoint than its neighbours skips
//! nothing and repeats nothing: it ignores messages before its own position.
//!
//! A partition with no message yet holds the watermark back; an idle one can be released with
//! [`StreamDriver::mark_idle`] so that it does not stall every result.

use std::collections::BTreeMap;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::checkpoint;
use crate::contract::format::{decode, MetaColumns};
use crate::contract::outputs::DeadLetter;
use crate::contract::raw::RawMessage;
use crate::core::job::{EpochInput, Input, Job, JobAudit, Operator, Route, RunSettings};

/// How a checkpoint names an input: its topic, after its region when it is another cluster's
/// (`region-b/ad-metrics`), so that positions are never restored onto another region's topic.
fn checkpoint_name(input: &Input) -> String {
    match &input.region {
        Some(r) => format!("{r}/{}", input.topic),
        None => input.topic.clone(),
    }
}

/// A source partition: a partition of one of the job's input topics (by input index).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Source {
    pub input: u32,
    pub partition: i32,
}

impl Source {
    pub fn new(input: usize, partition: i32) -> Self {
        Self { input: input as u32, partition }
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.input, self.partition)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionClock {
    /// Running maximum of the partition's timestamps, over the messages this group has taken.
    pub max_timestamp: Option<i64>,
    /// The first offset this group has not taken yet.
    pub next_offset: Option<i64>,
    #[serde(skip)]
    idle: bool,
}

/// Rows of one poll's batch of one input that belong to a group, each with its partition's
/// running maximum timestamp: the row is released once the watermark passes that.
///
/// The poll's batch is shared by every group (its columns are reference-counted) and each
/// group keeps only the indices of its rows: copying each group's rows out (`take`, then
/// `filter` on release) moved every payload twice (per-group work 0.75 s → 0.47 s per 1M
/// messages without the copies). The price: a poll's batch stays in memory until the last of
/// its rows is released, which watermark alignment bounds (see `job::aligned`).
struct Pending {
    input: u32,
    batch: RecordBatch,
    rows: Vec<u32>,
    release_at: Vec<i64>,
}

struct GroupTask<J: Job> {
    op: J::Operator,
    clocks: BTreeMap<Source, PartitionClock>,
    pending: Vec<Pending>,
}

/// One key group's checkpoint: its operator state and where to resume each source partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSnapshot<S> {
    /// The job that wrote it (a checkpoint of another job is refused).
    pub job: String,
    pub key_group: u32,
    pub key_groups: u32,
    /// The input topics, by input index.
    pub topics: Vec<String>,
    /// Per source partition: resume offset, and the running maximum timestamp before it.
    pub clocks: BTreeMap<Source, PartitionClock>,
    pub operator: S,
}

impl<S> GroupSnapshot<S> {
    /// The fields before the operator state, as `checkpoint::encode_with` takes them.
    pub fn head(&self) -> GroupHead<'_> {
        GroupHead { job: &self.job, key_group: self.key_group, key_groups: self.key_groups, topics: &self.topics, clocks: &self.clocks }
    }
}

/// A [`GroupSnapshot`]'s fields before its operator state, borrowed: postcard writes a
/// struct as its fields one after the other, so these bytes followed by the state's are the
/// snapshot's.
#[derive(Serialize)]
pub struct GroupHead<'a> {
    pub job: &'a str,
    pub key_group: u32,
    pub key_groups: u32,
    pub topics: &'a [String],
    pub clocks: &'a BTreeMap<Source, PartitionClock>,
}

pub struct StreamDriver<J: Job> {
    rules: J::Rules,
    inputs: Vec<Input>,
    meta: Vec<MetaColumns>,
    sources: Vec<Source>,
    key_groups: u32,
    groups: BTreeMap<u32, GroupTask<J>>,
}

/// A key group's records drained from the driver: (key group, records, dead letters).
pub type GroupRecords<R> = (u32, Vec<R>, Vec<DeadLetter>);

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

impl<J: Job> StreamDriver<J> {
    /// A driver owning all state in one key group: for a single process and for tests.
    pub fn new(rules: J::Rules, sources: impl IntoIterator<Item = Source>) -> Self {
        let mut d = Self::with_key_groups(rules, sources, 1);
        d.start_group(0);
        d
    }

    /// A driver for `key_groups` groups that owns none yet: add them with
    /// [`start_group`](Self::start_group) or [`restore_group`](Self::restore_group).
    pub fn with_key_groups(rules: J::Rules, sources: impl IntoIterator<Item = Source>, key_groups: u32) -> Self {
        assert!(key_groups > 0);
        let inputs = J::inputs(&rules);
        let meta = inputs.iter().map(|i| i.format.meta_columns()).collect();
        let mut sources: Vec<Source> = sources.into_iter().collect();
        sources.sort_unstable();
        Self { rules, inputs, meta, sources, key_groups, groups: BTreeMap::new() }
    }

    pub fn key_groups(&self) -> u32 {
        self.key_groups
    }

    pub fn owned_groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.groups.keys().copied()
    }

    fn settings(&self, g: u32) -> RunSettings {
        RunSettings::stream(g, self.key_groups)
    }

    /// Takes ownership of a group with empty state, reading every partition from the start.
    pub fn start_group(&mut self, g: u32) {
        let op = J::operator(&self.rules, self.settings(g));
        let clocks = self.sources.iter().map(|s| (*s, PartitionClock::default())).collect();
        self.groups.insert(g, GroupTask { op, clocks, pending: Vec::new() });
    }

    /// Takes ownership of a group from its checkpoint.
    pub fn restore_group(&mut self, snap: GroupSnapshot<J::State>) -> Result<(), String> {
        if snap.job != J::NAME {
            return Err(format!("the checkpoint is of the {} job, this is the {} job", snap.job, J::NAME));
        }
        if snap.key_groups != self.key_groups {
            return Err(format!(
                "the checkpoint was taken with {} key groups, this job runs {}: key groups are fixed for the life of a checkpoint",
                snap.key_groups, self.key_groups
            ));
        }
        let topics: Vec<String> = self.inputs.iter().map(checkpoint_name).collect();
        if snap.topics != topics {
            return Err(format!("the checkpoint is of topics {:?}, this job reads {topics:?}", snap.topics));
        }
        let op = J::restore(&self.rules, self.settings(snap.key_group), snap.operator);
        // A checkpoint taken by a process that had found partitions this one has not (see
        // `add_partitions`) names them: they are source partitions from now on.
        let found: Vec<Source> = snap.clocks.keys().copied().filter(|s| !self.sources.contains(s)).collect();
        self.add_partitions(&found);
        let mut clocks: BTreeMap<Source, PartitionClock> = self.sources.iter().map(|s| (*s, PartitionClock::default())).collect();
        clocks.extend(snap.clocks);
        self.groups.insert(snap.key_group, GroupTask { op, clocks, pending: Vec::new() });
        Ok(())
    }

    /// The source partitions: those it was created with and those added since.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Source partitions added to a topic while the job runs. Each owned group gets a clock
    /// for them with no timestamp yet, so that they hold its watermark back, as a partition
    /// does at start, until they deliver or fall idle: their first messages may be older than
    /// what the others have delivered since they were added. [`resume_offsets`] leaves them
    /// out, so they are read from their beginning.
    ///
    /// [`resume_offsets`]: Self::resume_offsets
    pub fn add_partitions(&mut self, new: &[Source]) {
        for &s in new {
            if self.sources.contains(&s) {
                continue;
            }
            self.sources.push(s);
            for t in self.groups.values_mut() {
                t.clocks.entry(s).or_default();
            }
        }
        self.sources.sort_unstable();
    }

    /// Gives up a group (it moved to another process); its state is dropped.
    pub fn release_group(&mut self, g: u32) {
        self.groups.remove(&g);
    }

    /// The checkpoint of group `g` as of now. Call between polls, after [`drain`](Self::drain).
    pub fn snapshot_group(&self, g: u32) -> Option<GroupSnapshot<J::State>> {
        let t = self.groups.get(&g)?;
        let clocks = self.resume_clocks(g);
        Some(GroupSnapshot {
            job: J::NAME.to_string(),
            key_group: g,
            key_groups: self.key_groups,
            topics: self.inputs.iter().map(checkpoint_name).collect(),
            clocks,
            operator: t.op.snapshot(),
        })
    }

    /// The checkpoint file's bytes of [`snapshot_group`](Self::snapshot_group), written with
    /// the operator's [`Operator::encode_snapshot`].
    pub fn encode_group(&self, g: u32) -> Option<Vec<u8>> {
        let t = self.groups.get(&g)?;
        let clocks = self.resume_clocks(g);
        let topics: Vec<String> = self.inputs.iter().map(checkpoint_name).collect();
        let head = GroupHead { job: J::NAME, key_group: g, key_groups: self.key_groups, topics: &topics, clocks: &clocks };
        Some(checkpoint::encode_with(&head, |out| t.op.encode_snapshot(out)))
    }

    /// Takes one poll's messages of input `input` (in offset order per partition); processes
    /// every row the watermark has passed.
    pub fn on_poll(&mut self, input: usize, messages: &[RawMessage]) {
        if messages.is_empty() {
            return;
        }
        self.on_batch(input, &decode(self.inputs[input].format, messages));
    }

    /// Takes one poll of input `input` already decoded into its canonical batch (the Kafka
    /// partition, offset and timestamp columns are set; rows in offset order per partition);
    /// processes every row the watermark has passed.
    pub fn on_batch(&mut self, input: usize, batch: &RecordBatch) {
        if batch.num_rows() == 0 || self.groups.is_empty() {
            return;
        }
        let meta = self.meta[input];
        let partitions = batch.column(meta.partition).as_primitive::<Int32Type>().values();
        let offsets = batch.column(meta.offset).as_primitive::<Int64Type>().values();
        let timestamps = batch.column(meta.timestamp).as_primitive::<TimestampMillisecondType>().values();
        // The group of each row and each group's row count; None: every group takes every row.
        let row_group: Option<(Vec<u32>, Vec<usize>)> = match J::route(&self.rules, input, batch, self.key_groups as usize) {
            Route::Broadcast => None,
            Route::Keyed(by_group) => {
                let mut row_group = vec![0u32; batch.num_rows()];
                for (g, rows) in by_group.iter().enumerate() {
                    for &r in rows {
                        row_group[r as usize] = g as u32;
                    }
                }
                Some((row_group, by_group.iter().map(Vec::len).collect()))
            }
        };
        // A poll holds runs of one partition's messages: each group looks its clock up once
        // per run, not once per row (a map lookup per row and group was the hottest part of
        // this function).
        let runs = partition_runs(partitions);
        // Groups are independent (own clocks, state and pending rows): take each one's rows
        // and run its operator on a rayon thread, as the backfill does.
        let mut tasks: Vec<(u32, &mut GroupTask<J>)> = self.groups.iter_mut().map(|(g, t)| (*g, t)).collect();
        let n_inputs = self.inputs.len();
        let (row_group, sizes) = match &row_group {
            Some((rg, sizes)) => (Some(rg.as_slice()), Some(sizes.as_slice())),
            None => (None, None),
        };
        tasks.par_iter_mut().for_each(|(g, task)| {
            let g = *g;
            let mut take: Vec<u32> = Vec::with_capacity(sizes.map_or(batch.num_rows(), |s| s[g as usize]));
            let mut release_at = Vec::with_capacity(take.capacity());
            for &(partition, ref rows) in &runs {
                let c = task.clocks.entry(Source::new(input, partition)).or_default();
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
                    if row_group.is_none_or(|rg| rg[i] == g) {
                        take.push(i as u32);
                        release_at.push(t);
                    }
                }
                (c.next_offset, c.max_timestamp) = (next_offset, max_timestamp);
            }
            if !take.is_empty() {
                task.pending.push(Pending { input: input as u32, batch: batch.clone(), rows: take, release_at });
            }
            task.advance(n_inputs);
        });
    }

    /// Excludes a partition from the watermark until it delivers again.
    pub fn mark_idle(&mut self, source: Source) {
        for t in self.groups.values_mut() {
            if let Some(c) = t.clocks.get_mut(&source) {
                c.idle = true;
            }
        }
        self.advance();
    }

    fn advance(&mut self) {
        let n = self.inputs.len();
        self.groups.values_mut().for_each(|t| t.advance(n));
    }

    /// Where each partition's consumption must resume so that every owned group gets every
    /// message it has not processed: the least position over the groups. Partitions that no
    /// group has read yet are absent (start them from the beginning).
    pub fn resume_offsets(&self) -> BTreeMap<Source, i64> {
        let mut out = BTreeMap::new();
        let mut unknown = std::collections::BTreeSet::new();
        for g in self.groups.keys() {
            let snap_clocks = self.resume_clocks(*g);
            for s in &self.sources {
                match snap_clocks.get(s).and_then(|c| c.next_offset) {
                    Some(o) => {
                        let e = out.entry(*s).or_insert(o);
                        *e = (*e).min(o);
                    }
                    None => {
                        unknown.insert(*s);
                    }
                }
            }
        }
        out.retain(|s, _| !unknown.contains(s));
        out
    }

    /// A group's clocks as of its first unreleased row per partition. A pending row is read
    /// again after a restore; its partition's running maximum must then be what it was before
    /// that row, which is what the row's release time records.
    fn resume_clocks(&self, g: u32) -> BTreeMap<Source, PartitionClock> {
        let t = &self.groups[&g];
        let mut clocks = t.clocks.clone();
        for p in &t.pending {
            let meta = self.meta[p.input as usize];
            let parts = p.batch.column(meta.partition).as_primitive::<Int32Type>();
            let offs = p.batch.column(meta.offset).as_primitive::<Int64Type>();
            for (&r, &release_at) in p.rows.iter().zip(&p.release_at) {
                let (partition, offset) = (parts.value(r as usize), offs.value(r as usize));
                let c = clocks.entry(Source { input: p.input, partition }).or_default();
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
    pub fn waiting_by_partition(&self) -> BTreeMap<Source, usize> {
        let mut out = BTreeMap::new();
        for p in self.groups.values().flat_map(|t| &t.pending) {
            let parts = p.batch.column(self.meta[p.input as usize].partition).as_primitive::<Int32Type>().values();
            let mut run: Option<(i32, usize)> = None;
            for &r in &p.rows {
                let part = parts[r as usize];
                match &mut run {
                    Some((rp, n)) if *rp == part => *n += 1,
                    _ => {
                        if let Some((rp, n)) = run.replace((part, 1)) {
                            *out.entry(Source { input: p.input, partition: rp }).or_insert(0) += n;
                        }
                    }
                }
            }
            if let Some((rp, n)) = run {
                *out.entry(Source { input: p.input, partition: rp }).or_insert(0) += n;
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

    /// End of a bounded replay: everything buffered is processed and every result is final.
    pub fn finish(&mut self) {
        let n = self.inputs.len();
        for t in self.groups.values_mut() {
            t.release(n, |_| true);
            t.op.finish();
        }
    }

    /// Runs a bounded sequence of polls of input 0 to the end; returns everything emitted, in
    /// order.
    pub fn replay<P: AsRef<[RawMessage]>>(&mut self, polls: impl IntoIterator<Item = P>) -> (Vec<J::Record>, Vec<DeadLetter>) {
        self.replay_inputs(polls.into_iter().map(|p| (0, p)))
    }

    /// Runs a bounded sequence of polls, each of one input, to the end; returns everything
    /// emitted, in order.
    pub fn replay_inputs<P: AsRef<[RawMessage]>>(
        &mut self,
        polls: impl IntoIterator<Item = (usize, P)>,
    ) -> (Vec<J::Record>, Vec<DeadLetter>) {
        let (mut records, mut dead) = (Vec::new(), Vec::new());
        for (input, poll) in polls {
            self.on_poll(input, poll.as_ref());
            let (m, d) = self.drain();
            records.extend(m);
            dead.extend(d);
        }
        self.finish();
        let (m, d) = self.drain();
        records.extend(m);
        dead.extend(d);
        (records, dead)
    }

    /// Records emitted since the last call, in emission order (group by group).
    pub fn drain(&mut self) -> (Vec<J::Record>, Vec<DeadLetter>) {
        let (mut records, mut dead) = (Vec::new(), Vec::new());
        for t in self.groups.values_mut() {
            let (m, d) = t.op.drain();
            records.extend(m);
            dead.extend(d);
        }
        (records, dead)
    }

    /// Records emitted since the last call, per owned key group. Built on rayon threads: each
    /// record's `record_uuid` is a SHA-1, and its strings are copied out of the interner.
    pub fn drain_by_group(&mut self) -> Vec<GroupRecords<J::Record>> {
        let mut groups: Vec<(&u32, &mut GroupTask<J>)> = self.groups.iter_mut().collect();
        groups
            .par_iter_mut()
            .map(|(g, t)| {
                let (m, d) = t.op.drain();
                (**g, m, d)
            })
            .collect()
    }

    /// The owned groups' keyed state sizes, summed by kind.
    pub fn state_sizes(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let mut out = std::collections::BTreeMap::new();
        for t in self.groups.values() {
            for (kind, n) in t.op.state_sizes() {
                *out.entry(kind).or_default() += n;
            }
        }
        out
    }

    /// The owned groups' audits, summed.
    pub fn audit(&self) -> J::Audit {
        let mut a = J::Audit::default();
        for t in self.groups.values() {
            a.merge(t.op.audit());
        }
        a
    }
}

impl<J: Job> GroupTask<J> {
    fn advance(&mut self, inputs: usize) {
        if J::RELEASE_ON_ARRIVAL {
            self.release(inputs, |_| true);
            if let Some(wm) = watermark(&self.clocks) {
                self.op.advance_ingest_watermark(wm);
            }
            return;
        }
        let Some(wm) = watermark(&self.clocks) else { return };
        // Rows at the watermark itself stay: their partition may deliver more at that time.
        self.release(inputs, |at| at < wm);
        self.op.advance_ingest_watermark(wm);
    }

    fn release(&mut self, inputs: usize, ready: impl Fn(i64) -> bool) {
        // Per input: the batches released and their selections.
        let mut released: Vec<(Vec<RecordBatch>, Vec<Vec<u32>>)> = (0..inputs).map(|_| Default::default()).collect();
        let mut keep = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            let n = p.release_at.iter().filter(|t| ready(**t)).count();
            let (batches, selections) = &mut released[p.input as usize];
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
                keep.push(Pending { input: p.input, batch: p.batch, rows: later, release_at: later_at });
            }
        }
        self.pending = keep;
        if released.iter().any(|(b, _)| !b.is_empty()) {
            let epoch: Vec<EpochInput> = released.iter().map(|(b, s)| EpochInput { batches: b, rows: Some(s) }).collect();
            self.op.process_epoch(&epoch);
        }
    }
}

fn watermark(clocks: &BTreeMap<Source, PartitionClock>) -> Option<i64> {
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
    use crate::jobs::aggregation::rules::AggregationRules;
    use crate::jobs::aggregation::Aggregation;

    /// Partitions of the one input.
    fn on(ps: &[i32]) -> Vec<Source> {
        ps.iter().map(|p| Source::new(0, *p)).collect()
    }

    /// A map keyed by partitions of the one input.
    fn by<V, const N: usize>(entries: [(i32, V); N]) -> BTreeMap<Source, V> {
        entries.into_iter().map(|(p, v)| (Source::new(0, p), v)).collect()
    }

    fn driver(ps: &[i32]) -> StreamDriver<Aggregation> {
        StreamDriver::new(AggregationRules::defaults(), on(ps))
    }

    fn msg(partition: i32, offset: i64, timestamp: i64) -> RawMessage {
        RawMessage { partition, offset, timestamp, payload: b"{}".to_vec() }
    }

    #[test]
    fn a_partition_ahead_waits_for_the_watermark_and_resume_offsets_follow() {
        let mut d = driver(&[0, 1]);
        d.on_poll(0, &[msg(0, 0, 100), msg(0, 1, 200)]);
        // Partition 1 has delivered nothing: no watermark, nothing processed.
        assert_eq!(d.buffered(), 2);
        assert_eq!(d.waiting_by_partition(), by([(0, 2)]));
        assert_eq!(d.resume_offsets(), by([(0, 0)]));
        d.on_poll(0, &[msg(1, 7, 150)]);
        // Watermark 150: only the message ingested at 100 is released.
        assert_eq!(d.buffered(), 2);
        assert_eq!(d.waiting_by_partition(), by([(0, 1), (1, 1)]));
        assert_eq!(d.resume_offsets(), by([(0, 1), (1, 7)]));
        d.mark_idle(Source::new(0, 1));
        assert_eq!(d.buffered(), 1);
        // Runs of partitions within one poll are counted per partition.
        let mut d2 = driver(&[0, 1, 2]);
        d2.on_poll(0, &[msg(0, 0, 100), msg(1, 0, 100), msg(1, 1, 100), msg(0, 1, 100), msg(2, 0, 50)]);
        assert_eq!(d2.waiting_by_partition(), by([(0, 2), (1, 2), (2, 1)]));
        d.finish();
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.resume_offsets(), by([(0, 2), (1, 8)]));
    }

    #[test]
    fn an_added_partition_holds_the_watermark_until_it_delivers_and_is_read_from_its_start() {
        let mut d = driver(&[0]);
        d.on_poll(0, &[msg(0, 0, 100), msg(0, 1, 200)]);
        // Watermark 200: the row ingested at 100 is processed.
        assert_eq!(d.buffered(), 1);
        d.add_partitions(&on(&[1]));
        assert_eq!(d.sources(), on(&[0, 1]));
        // Partition 1 has delivered nothing: it holds the watermark back and is left out of
        // the positions, so a reader starts it at its beginning.
        d.on_poll(0, &[msg(0, 2, 300)]);
        assert_eq!(d.buffered(), 2);
        assert_eq!(d.resume_offsets(), by([(0, 1)]));
        // Its first message is older than what partition 0 delivered since: it is processed
        // first, and partition 0's rows wait for partition 1 to pass them.
        d.on_poll(0, &[msg(1, 0, 150), msg(1, 1, 250)]);
        assert_eq!(d.waiting_by_partition(), by([(0, 1), (1, 1)]));
        assert_eq!(d.resume_offsets(), by([(0, 2), (1, 1)]));
        // A checkpoint names the partition, so a process that has not found it yet reads it
        // after restoring the group.
        d.drain();
        let snap = d.snapshot_group(0).unwrap();
        let mut elsewhere = StreamDriver::<Aggregation>::with_key_groups(AggregationRules::defaults(), on(&[0]), 1);
        elsewhere.restore_group(snap).unwrap();
        assert_eq!(elsewhere.sources(), on(&[0, 1]));
        assert_eq!(elsewhere.resume_offsets(), by([(0, 2), (1, 1)]));
    }

    #[test]
    fn timestamps_going_backwards_keep_released_rows_a_prefix() {
        let mut d = driver(&[0, 1]);
        // Offset 1 has an older timestamp than offset 0: it is released with it, not before.
        d.on_poll(0, &[msg(0, 0, 200), msg(0, 1, 100), msg(1, 0, 150)]);
        assert_eq!(d.buffered(), 3);
        assert_eq!(d.resume_offsets(), by([(0, 0), (1, 0)]));
        d.on_poll(0, &[msg(1, 1, 250)]);
        // Watermark 200: both rows of partition 0 wait for it to pass 200.
        assert_eq!(d.buffered(), 3);
        assert_eq!(d.resume_offsets(), by([(0, 0), (1, 1)]));
        d.drain();
        let snap = d.snapshot_group(0).unwrap();
        assert_eq!(snap.clocks[&Source::new(0, 1)].max_timestamp, Some(250));
        assert_eq!(snap.clocks[&Source::new(0, 0)], PartitionClock { max_timestamp: Some(200), next_offset: Some(0), idle: false });
    }
}
