//! An in-memory [`Broker`] and [`CheckpointStore`] for tests of the job loop: source topics
//! whose partitions can be added while the job reads them, which the test broker (Nisshi
//! 0.7.0, no CreatePartitions) cannot do. Transactions are buffers moved to the output on
//! commit, so an aborted transaction leaves nothing behind; what reaches the output is what a
//! read_committed consumer of Apache Kafka would read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;

use super::checkpoint::CheckpointStore;
use super::driver::Source;
use super::job::Broker;
use crate::contract::format::{decode, Format};
use crate::contract::outputs::DeadLetter;
use crate::contract::raw::RawMessage;
use crate::core::job::OutputRecord;

/// The broker's side: what survives the job process.
pub struct Topics<R> {
    /// The formats of the source topics, by input index.
    pub formats: Vec<Format>,
    /// The source topics: per partition, (timestamp, payload) in offset order.
    pub source: BTreeMap<Source, Vec<(i64, Vec<u8>)>>,
    /// Partitions of `source` the metadata shows only from this poll of a reader on (the poll
    /// count of the [`MemoryBroker`] asking): a partition added to the topic then.
    pub added_at_poll: BTreeMap<Source, usize>,
    /// Committed records, in commit order.
    pub records: Vec<R>,
    pub dead_letters: Vec<DeadLetter>,
    /// Committed checkpoint number per key group.
    pub committed: BTreeMap<u32, u64>,
}

impl<R: OutputRecord> Topics<R> {
    pub fn new(formats: Vec<Format>) -> Self {
        Self {
            formats,
            source: BTreeMap::new(),
            added_at_poll: BTreeMap::new(),
            records: Vec::new(),
            dead_letters: Vec::new(),
            committed: BTreeMap::new(),
        }
    }

    /// Appends a message to partition `partition` of input `input`.
    pub fn append_to(&mut self, input: usize, partition: i32, timestamp: i64, payload: &str) {
        self.source.entry(Source::new(input, partition)).or_default().push((timestamp, payload.as_bytes().to_vec()));
    }

    /// Appends a message to partition `partition` of input 0.
    pub fn append(&mut self, partition: i32, timestamp: i64, payload: &str) {
        self.append_to(0, partition, timestamp, payload);
    }

    /// Every message of input `input`, as read from the beginning.
    pub fn messages(&self, input: usize) -> Vec<RawMessage> {
        self.source
            .iter()
            .filter(|(s, _)| s.input as usize == input)
            .flat_map(|(s, log)| {
                log.iter().enumerate().map(|(o, (t, payload))| RawMessage {
                    partition: s.partition,
                    offset: o as i64,
                    timestamp: *t,
                    payload: payload.clone(),
                })
            })
            .collect()
    }

    /// The last value of each record_uuid in commit order: what an upsert store keeps.
    pub fn upserted(&self) -> BTreeMap<uuid::Uuid, R> {
        self.records.iter().map(|r| (r.record_uuid(), r.clone())).collect()
    }
}

/// One process's client: it owns every key group and reads the partitions it is given.
pub struct MemoryBroker<'a, R> {
    topics: &'a mut Topics<R>,
    key_groups: u32,
    joined: bool,
    polls: usize,
    /// Partitions read, and the next offset of each.
    reading: BTreeMap<Source, i64>,
    paused: BTreeSet<Source>,
    at_end: BTreeMap<Source, Instant>,
    open: BTreeMap<u32, (Vec<R>, Vec<DeadLetter>)>,
    /// Scripted rebalances: at poll n, the process is assigned these key groups.
    rebalances: Vec<(usize, BTreeSet<u32>)>,
}

impl<'a, R: OutputRecord> MemoryBroker<'a, R> {
    /// A process that found `partitions` in the metadata when it started.
    pub fn new(topics: &'a mut Topics<R>, partitions: &[Source], key_groups: u32) -> Self {
        Self {
            topics,
            key_groups,
            joined: false,
            polls: 0,
            reading: partitions.iter().map(|p| (*p, 0)).collect(),
            paused: BTreeSet::new(),
            at_end: BTreeMap::new(),
            open: BTreeMap::new(),
            rebalances: Vec::new(),
        }
    }

    /// Rebalances at the given polls (in order), each assigning the listed key groups: the
    /// loop then aborts its open transactions and restores what it owns, as after a Kafka
    /// group rebalance. Until the last has happened the broker is never caught up.
    pub fn rebalancing_at(mut self, script: Vec<(usize, BTreeSet<u32>)>) -> Self {
        self.rebalances = script;
        self
    }

    fn visible(&self, p: Source) -> bool {
        self.topics.added_at_poll.get(&p).is_none_or(|at| self.polls >= *at)
    }
}

impl<R: OutputRecord> Broker<R> for MemoryBroker<'_, R> {
    fn poll_membership(&mut self, _wait: Duration) -> anyhow::Result<Option<BTreeSet<u32>>> {
        if self.joined {
            if self.rebalances.first().is_some_and(|(at, _)| self.polls >= *at) {
                return Ok(Some(self.rebalances.remove(0).1));
            }
            return Ok(None);
        }
        self.joined = true;
        Ok(Some((0..self.key_groups).collect()))
    }

    fn take_ownership(&mut self, owned: &BTreeSet<u32>) -> anyhow::Result<()> {
        self.open = owned.iter().map(|g| (*g, Default::default())).collect();
        Ok(())
    }

    fn committed(&self, groups: &BTreeSet<u32>) -> anyhow::Result<Vec<(u32, Option<u64>)>> {
        Ok(groups.iter().map(|g| (*g, self.topics.committed.get(g).copied())).collect())
    }

    fn seek(&mut self, offsets: &BTreeMap<Source, i64>) -> anyhow::Result<()> {
        for (p, next) in self.reading.iter_mut() {
            *next = offsets.get(p).copied().unwrap_or(0);
        }
        self.paused.clear();
        self.at_end.clear();
        Ok(())
    }

    fn unread_partitions(&mut self) -> anyhow::Result<Vec<Source>> {
        Ok(self.topics.source.keys().copied().filter(|p| self.visible(*p) && !self.reading.contains_key(p)).collect())
    }

    fn add_partitions(&mut self, new: &[Source], offsets: &BTreeMap<Source, i64>) -> anyhow::Result<()> {
        for p in new {
            self.reading.entry(*p).or_insert_with(|| offsets.get(p).copied().unwrap_or(0));
        }
        Ok(())
    }

    /// Up to `max` messages, taken round-robin one at a time from the partitions not paused;
    /// one batch per input.
    fn poll(&mut self, max: usize, _wait: Duration) -> anyhow::Result<Vec<(usize, RecordBatch)>> {
        self.polls += 1;
        let mut taken: BTreeMap<u32, Vec<RawMessage>> = BTreeMap::new();
        let mut n = 0;
        loop {
            let before = n;
            for (p, next) in self.reading.iter_mut() {
                let log = self.topics.source.get(p).map_or(&[][..], Vec::as_slice);
                if n == max || self.paused.contains(p) || *next as usize >= log.len() {
                    continue;
                }
                let (timestamp, payload) = &log[*next as usize];
                taken.entry(p.input).or_default().push(RawMessage {
                    partition: p.partition,
                    offset: *next,
                    timestamp: *timestamp,
                    payload: payload.clone(),
                });
                n += 1;
                *next += 1;
                self.at_end.remove(p);
            }
            if n == before {
                break;
            }
        }
        for (p, next) in &self.reading {
            if *next as usize >= self.topics.source.get(p).map_or(0, Vec::len) {
                self.at_end.entry(*p).or_insert_with(Instant::now);
            }
        }
        Ok(taken.into_iter().map(|(input, msgs)| (input as usize, decode(self.topics.formats[input as usize], &msgs))).collect())
    }

    fn idle_partitions(&self, for_at_least: Duration) -> BTreeSet<Source> {
        self.at_end.iter().filter(|(_, t)| t.elapsed() >= for_at_least).map(|(p, _)| *p).collect()
    }

    fn caught_up(&self) -> bool {
        self.rebalances.is_empty() && self.reading.keys().all(|p| self.at_end.contains_key(p))
    }

    fn pause_only(&mut self, partitions: &BTreeSet<Source>) -> anyhow::Result<()> {
        self.paused = partitions.clone();
        Ok(())
    }

    fn paused(&self) -> &BTreeSet<Source> {
        &self.paused
    }

    fn begin(&mut self, _group: u32) -> anyhow::Result<()> {
        Ok(())
    }

    fn send_record(&mut self, group: u32, r: &R) -> anyhow::Result<()> {
        self.open.get_mut(&group).expect("owned").0.push(r.clone());
        Ok(())
    }

    fn send_dead_letter(&mut self, group: u32, d: &DeadLetter) -> anyhow::Result<()> {
        self.open.get_mut(&group).expect("owned").1.push(d.clone());
        Ok(())
    }

    fn commit_group(&mut self, g: u32, seq: u64) -> anyhow::Result<()> {
        let (records, dead) = std::mem::take(self.open.get_mut(&g).expect("owned"));
        self.topics.records.extend(records);
        self.topics.dead_letters.extend(dead);
        self.topics.committed.insert(g, seq);
        Ok(())
    }
}

/// Checkpoints in memory.
#[derive(Default)]
pub struct MemoryCheckpoints(Mutex<BTreeMap<(u32, u64), Vec<u8>>>);

impl CheckpointStore for MemoryCheckpoints {
    fn put_all(&self, checkpoints: Vec<(u32, u64, Vec<u8>)>) -> anyhow::Result<()> {
        let mut m = self.0.lock().expect("not poisoned");
        for (g, n, bytes) in checkpoints {
            m.insert((g, n), bytes);
        }
        Ok(())
    }

    fn get(&self, key_group: u32, seq: u64) -> anyhow::Result<Vec<u8>> {
        let m = self.0.lock().expect("not poisoned");
        m.get(&(key_group, seq)).cloned().ok_or_else(|| anyhow::anyhow!("no checkpoint {seq} of key group {key_group}"))
    }

    fn prune(&self, key_group: u32, keep_from: u64) -> anyhow::Result<()> {
        self.0.lock().expect("not poisoned").retain(|(g, n), _| *g != key_group || *n >= keep_from);
        Ok(())
    }
}
