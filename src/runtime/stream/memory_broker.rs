//! An in-memory [`Broker`] and [`CheckpointStore`] for tests of the job loop: a topic whose
//! partitions can be added while the job reads it, which the test broker (Nisshi 0.7.0, no
//! CreatePartitions) cannot do. Transactions are buffers moved to the output topic on commit,
//! so an aborted transaction leaves nothing behind; what reaches the output is what a
//! read_committed consumer of Apache Kafka would read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;

use super::checkpoint::CheckpointStore;
use super::job::Broker;
use crate::contract::outputs::{AdMetric, DeadLetter};
use crate::contract::raw::{decode_messages, RawMessage};

/// The broker's side: what survives the job process.
#[derive(Default)]
pub struct Topics {
    /// The source topic: per partition, (timestamp, payload) in offset order.
    pub source: BTreeMap<i32, Vec<(i64, Vec<u8>)>>,
    /// Partitions of `source` the metadata shows only from this poll of a reader on (the poll
    /// count of the [`MemoryBroker`] asking): a partition added to the topic then.
    pub added_at_poll: BTreeMap<i32, usize>,
    /// Committed ad-metrics, in commit order.
    pub metrics: Vec<AdMetric>,
    pub dead_letters: Vec<DeadLetter>,
    /// Committed checkpoint number per key group.
    pub committed: BTreeMap<u32, u64>,
}

impl Topics {
    pub fn append(&mut self, partition: i32, timestamp: i64, payload: &str) {
        self.source.entry(partition).or_default().push((timestamp, payload.as_bytes().to_vec()));
    }

    /// The last value of each record_uuid in commit order: what an upsert store keeps.
    pub fn upserted(&self) -> BTreeMap<uuid::Uuid, AdMetric> {
        self.metrics.iter().map(|m| (m.record_uuid, m.clone())).collect()
    }
}

/// One process's client: it owns every key group and reads the partitions it is given.
pub struct MemoryBroker<'a> {
    topics: &'a mut Topics,
    key_groups: u32,
    joined: bool,
    polls: usize,
    /// Partitions read, and the next offset of each.
    reading: BTreeMap<i32, i64>,
    paused: BTreeSet<i32>,
    at_end: BTreeMap<i32, Instant>,
    open: BTreeMap<u32, (Vec<AdMetric>, Vec<DeadLetter>)>,
}

impl<'a> MemoryBroker<'a> {
    /// A process that found `partitions` in the metadata when it started.
    pub fn new(topics: &'a mut Topics, partitions: &[i32], key_groups: u32) -> Self {
        Self {
            topics,
            key_groups,
            joined: false,
            polls: 0,
            reading: partitions.iter().map(|p| (*p, 0)).collect(),
            paused: BTreeSet::new(),
            at_end: BTreeMap::new(),
            open: BTreeMap::new(),
        }
    }

    fn visible(&self, p: i32) -> bool {
        self.topics.added_at_poll.get(&p).is_none_or(|at| self.polls >= *at)
    }
}

impl Broker for MemoryBroker<'_> {
    fn poll_membership(&mut self, _wait: Duration) -> anyhow::Result<Option<BTreeSet<u32>>> {
        if self.joined {
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

    fn seek(&mut self, offsets: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
        for (p, next) in self.reading.iter_mut() {
            *next = offsets.get(p).copied().unwrap_or(0);
        }
        self.paused.clear();
        self.at_end.clear();
        Ok(())
    }

    fn unread_partitions(&mut self) -> anyhow::Result<Vec<i32>> {
        Ok(self.topics.source.keys().copied().filter(|p| self.visible(*p) && !self.reading.contains_key(p)).collect())
    }

    fn add_partitions(&mut self, new: &[i32], offsets: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
        for p in new {
            self.reading.entry(*p).or_insert_with(|| offsets.get(p).copied().unwrap_or(0));
        }
        Ok(())
    }

    /// Up to `max` messages, taken round-robin one at a time from the partitions not paused.
    fn poll(&mut self, max: usize, _wait: Duration) -> anyhow::Result<Vec<RecordBatch>> {
        self.polls += 1;
        let mut taken = Vec::new();
        loop {
            let before = taken.len();
            for (p, next) in self.reading.iter_mut() {
                let log = self.topics.source.get(p).map_or(&[][..], Vec::as_slice);
                if taken.len() == max || self.paused.contains(p) || *next as usize >= log.len() {
                    continue;
                }
                let (timestamp, payload) = &log[*next as usize];
                taken.push(RawMessage { partition: *p, offset: *next, timestamp: *timestamp, payload: payload.clone() });
                *next += 1;
                self.at_end.remove(p);
            }
            if taken.len() == before {
                break;
            }
        }
        for (p, next) in &self.reading {
            if *next as usize >= self.topics.source.get(p).map_or(0, Vec::len) {
                self.at_end.entry(*p).or_insert_with(Instant::now);
            }
        }
        Ok(if taken.is_empty() { Vec::new() } else { vec![decode_messages(&taken)] })
    }

    fn idle_partitions(&self, for_at_least: Duration) -> BTreeSet<i32> {
        self.at_end.iter().filter(|(_, t)| t.elapsed() >= for_at_least).map(|(p, _)| *p).collect()
    }

    fn caught_up(&self) -> bool {
        self.reading.keys().all(|p| self.at_end.contains_key(p))
    }

    fn pause_only(&mut self, partitions: &BTreeSet<i32>) -> anyhow::Result<()> {
        self.paused = partitions.clone();
        Ok(())
    }

    fn paused(&self) -> &BTreeSet<i32> {
        &self.paused
    }

    fn begin(&mut self, _group: u32) -> anyhow::Result<()> {
        Ok(())
    }

    fn send_metric(&mut self, group: u32, m: &AdMetric) -> anyhow::Result<()> {
        self.open.get_mut(&group).expect("owned").0.push(m.clone());
        Ok(())
    }

    fn send_dead_letter(&mut self, group: u32, d: &DeadLetter) -> anyhow::Result<()> {
        self.open.get_mut(&group).expect("owned").1.push(d.clone());
        Ok(())
    }

    fn commit(&mut self, seqs: &BTreeMap<u32, u64>) -> anyhow::Result<()> {
        for (g, seq) in seqs {
            let (metrics, dead) = std::mem::take(self.open.get_mut(g).expect("owned"));
            self.topics.metrics.extend(metrics);
            self.topics.dead_letters.extend(dead);
            self.topics.committed.insert(*g, *seq);
        }
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
