//! The readers of a job whose inputs live on several clusters (the union job reads every
//! region's outputs): one [`TopicReader`] per cluster, behind the one interface the stream
//! loop polls. Source partitions are named by the job's input indices outside and by each
//! reader's own inside; this translates between the two.
//!
//! A cluster that stops answering does not stop the others: each is polled without waiting
//! while any delivers, its partitions fall idle (the stream loop's `--idle-timeout`) and stop
//! holding the watermark back, and its log line says which region is behind and by how much
//! ingest time. When it answers again, its reader resumes where it stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMillisecondType;

use super::reader::{LostRange, TopicReader};
use super::KafkaSettings;
use crate::contract::format::Format;
use crate::contract::time::rfc3339;
use crate::runtime::stream::driver::Source;

/// One cluster's reader and its inputs.
struct Cluster {
    /// The region, or "local" for --brokers.
    name: String,
    reader: TopicReader,
    /// Job input index of each of the reader's inputs.
    inputs: Vec<usize>,
    /// Formats of the reader's inputs (for the timestamp column).
    formats: Vec<Format>,
    last_delivery: Instant,
    /// The greatest Kafka timestamp read from it.
    newest: Option<i64>,
    last_said: Option<Instant>,
}

pub struct ClusterReaders {
    clusters: Vec<Cluster>,
    /// (cluster, reader input) of each job input.
    of_input: Vec<(usize, usize)>,
    paused: BTreeSet<Source>,
}

/// How long a cluster may deliver nothing while another delivers before the log says so.
const BEHIND_AFTER: Duration = Duration::from_secs(15);

impl ClusterReaders {
    /// `inputs[i]`: input i's topic, format and cluster (region name and settings);
    /// `partitions`: the job's source partitions, by input index.
    pub fn new(inputs: &[(String, Format, String, KafkaSettings)], partitions: &[Source], client_id: &str) -> anyhow::Result<Self> {
        let mut names: Vec<String> = Vec::new();
        for (_, _, region, _) in inputs {
            if !names.contains(region) {
                names.push(region.clone());
            }
        }
        let mut clusters = Vec::new();
        let mut of_input = vec![(0, 0); inputs.len()];
        for (c, name) in names.iter().enumerate() {
            let mine: Vec<usize> = (0..inputs.len()).filter(|&i| inputs[i].2 == *name).collect();
            for (local, &i) in mine.iter().enumerate() {
                of_input[i] = (c, local);
            }
            let topics: Vec<(String, Format)> = mine.iter().map(|&i| (inputs[i].0.clone(), inputs[i].1)).collect();
            let local_parts: Vec<Source> = partitions
                .iter()
                .filter(|s| inputs[s.input as usize].2 == *name)
                .map(|s| Source::new(of_input[s.input as usize].1, s.partition))
                .collect();
            let id = if names.len() == 1 { client_id.to_string() } else { format!("{client_id}-{name}") };
            let reader = TopicReader::new(&inputs[mine[0]].3, &topics, local_parts, &id)
                .map_err(|e| anyhow::anyhow!("{}: {e:#}", if names.len() == 1 { "the input cluster".to_string() } else { format!("region {name}") }))?;
            clusters.push(Cluster {
                name: name.clone(),
                reader,
                formats: mine.iter().map(|&i| inputs[i].1).collect(),
                inputs: mine,
                last_delivery: Instant::now(),
                newest: None,
                last_said: None,
            });
        }
        Ok(Self { clusters, of_input, paused: BTreeSet::new() })
    }

    fn local(&self, s: Source) -> (usize, Source) {
        let (c, i) = self.of_input[s.input as usize];
        (c, Source::new(i, s.partition))
    }

    fn global(&self, c: usize, s: Source) -> Source {
        Source::new(self.clusters[c].inputs[s.input as usize], s.partition)
    }

    fn split<V: Copy>(&self, m: &BTreeMap<Source, V>) -> Vec<BTreeMap<Source, V>> {
        let mut out = vec![BTreeMap::new(); self.clusters.len()];
        for (s, v) in m {
            let (c, l) = self.local(*s);
            out[c].insert(l, *v);
        }
        out
    }

    fn lost(&self, c: usize, lost: Vec<LostRange>) -> Vec<LostRange> {
        lost.into_iter().map(|l| LostRange { source: self.global(c, l.source), ..l }).collect()
    }

    pub fn seek(&mut self, offsets: &BTreeMap<Source, i64>) -> anyhow::Result<Vec<LostRange>> {
        let per = self.split(offsets);
        let mut lost = Vec::new();
        for (c, o) in per.into_iter().enumerate() {
            let l = self.clusters[c].reader.seek(&o)?;
            lost.extend(self.lost(c, l));
        }
        self.paused.clear();
        Ok(lost)
    }

    /// Partitions added to the topics since the readers started. A cluster that does not
    /// answer is skipped (said in the log): its new partitions are found at a later look.
    pub fn unread_partitions(&self) -> anyhow::Result<Vec<Source>> {
        let mut new = Vec::new();
        for (c, cluster) in self.clusters.iter().enumerate() {
            match cluster.reader.unread_partitions() {
                Ok(ps) => new.extend(ps.into_iter().map(|s| self.global(c, s))),
                Err(e) if self.clusters.len() > 1 => tracing::warn!("region {}: cannot look for new partitions: {e:#}", cluster.name),
                Err(e) => return Err(e),
            }
        }
        new.sort_unstable();
        Ok(new)
    }

    pub fn add_partitions(&mut self, new: &[Source], offsets: &BTreeMap<Source, i64>) -> anyhow::Result<Vec<LostRange>> {
        let per_offsets = self.split(offsets);
        let mut per_new = vec![Vec::new(); self.clusters.len()];
        for s in new {
            let (c, l) = self.local(*s);
            per_new[c].push(l);
        }
        let mut lost = Vec::new();
        for (c, (n, o)) in per_new.into_iter().zip(per_offsets).enumerate() {
            if !n.is_empty() {
                let l = self.clusters[c].reader.add_partitions(&n, &o)?;
                lost.extend(self.lost(c, l));
            }
        }
        Ok(lost)
    }

    pub fn poll(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<(usize, RecordBatch)>> {
        if self.clusters.len() == 1 {
            return self.clusters[0].reader.poll(max, wait);
        }
        let mut out = Vec::new();
        for c in 0..self.clusters.len() {
            let polled = self.clusters[c].reader.poll(max, Duration::ZERO)?;
            self.delivered(c, polled, &mut out);
        }
        if out.is_empty() {
            let each = wait / self.clusters.len() as u32;
            for c in 0..self.clusters.len() {
                let polled = self.clusters[c].reader.poll(max, each)?;
                self.delivered(c, polled, &mut out);
                if !out.is_empty() {
                    break;
                }
            }
        }
        self.say_who_is_behind();
        Ok(out)
    }

    fn delivered(&mut self, c: usize, polled: Vec<(usize, RecordBatch)>, out: &mut Vec<(usize, RecordBatch)>) {
        let cluster = &mut self.clusters[c];
        for (input, batch) in polled {
            if batch.num_rows() > 0 {
                cluster.last_delivery = Instant::now();
                let ts = batch.column(cluster.formats[input].meta_columns().timestamp).as_primitive::<TimestampMillisecondType>();
                if let Some(max) = arrow::compute::max(ts) {
                    cluster.newest = Some(cluster.newest.map_or(max, |n| n.max(max)));
                }
            }
            out.push((cluster.inputs[input], batch));
        }
    }

    /// Names a region that has delivered nothing for a while when another has, with how far
    /// its newest record is behind theirs, at most every [`BEHIND_AFTER`].
    fn say_who_is_behind(&mut self) {
        let newest = self.clusters.iter().filter_map(|c| c.newest).max();
        let freshest = self.clusters.iter().map(|c| c.last_delivery).max();
        let (Some(newest), Some(freshest)) = (newest, freshest) else { return };
        for c in &mut self.clusters {
            let silent = c.last_delivery.elapsed();
            let others_flow = freshest.elapsed() < BEHIND_AFTER;
            if silent >= BEHIND_AFTER && others_flow && c.last_said.is_none_or(|t| t.elapsed() >= BEHIND_AFTER) && !c.reader.caught_up() {
                c.last_said = Some(Instant::now());
                let behind = c.newest.map_or("nothing read from it yet".to_string(), |n| {
                    format!("its newest record ({}) is {} behind the others'", rfc3339(n), humantime::format_duration(Duration::from_millis((newest - n).max(0) as u64)))
                });
                tracing::warn!("region {} is behind: nothing read from it for {} s while the others deliver; {behind}", c.name, silent.as_secs());
            }
        }
    }

    pub fn idle_partitions(&self, for_at_least: Duration) -> BTreeSet<Source> {
        let mut out = BTreeSet::new();
        for (c, cluster) in self.clusters.iter().enumerate() {
            out.extend(cluster.reader.idle_partitions(for_at_least).into_iter().map(|s| self.global(c, s)));
            // A cluster that has not answered for that long holds nothing back either: its
            // partitions are idle, whatever it last said about their ends.
            if self.clusters.len() > 1 && cluster.last_delivery.elapsed() >= for_at_least && !cluster.reader.caught_up() {
                out.extend(cluster.reader.partitions().iter().map(|s| self.global(c, *s)));
            }
        }
        out
    }

    pub fn caught_up(&self) -> bool {
        self.clusters.iter().all(|c| c.reader.caught_up())
    }

    pub fn pause_only(&mut self, partitions: &BTreeSet<Source>) -> anyhow::Result<()> {
        let mut per = vec![BTreeSet::new(); self.clusters.len()];
        for s in partitions {
            let (c, l) = self.local(*s);
            per[c].insert(l);
        }
        for (c, p) in per.into_iter().enumerate() {
            self.clusters[c].reader.pause_only(&p)?;
        }
        self.paused = partitions.clone();
        Ok(())
    }

    pub fn paused(&self) -> &BTreeSet<Source> {
        if self.clusters.len() == 1 {
            return self.clusters[0].reader.paused();
        }
        &self.paused
    }
}
