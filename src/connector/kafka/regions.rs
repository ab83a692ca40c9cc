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
    /// When a look for new partitions last failed to reach it, if nothing came from it since.
    unreachable: Option<Instant>,
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
                unreachable: None,
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
    pub fn unread_partitions(&mut self) -> anyhow::Result<Vec<Source>> {
        let mut new = Vec::new();
        // With several clusters, the loop that waits here is the one that forwards the others'
        // records: a cluster that does not answer may hold it up one short wait per topic, not
        // librdkafka's ten seconds (found by the outage test: the union stalled 20 s of every 30).
        let timeout = if self.clusters.len() > 1 { Duration::from_millis(500) } else { Duration::from_secs(10) };
        let several = self.clusters.len() > 1;
        for c in 0..self.clusters.len() {
            match self.clusters[c].reader.unread_partitions_within(timeout) {
                Ok(ps) => {
                    let found: Vec<Source> = ps.into_iter().map(|s| self.global(c, s)).collect();
                    new.extend(found);
                }
                Err(e) if several => {
                    let cluster = &mut self.clusters[c];
                    tracing::debug!("region {}: cannot look for new partitions: {e:#}", cluster.name);
                    cluster.unreachable.get_or_insert_with(Instant::now);
                }
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
                cluster.unreachable = None;
                let ts = batch.column(cluster.formats[input].meta_columns().timestamp).as_primitive::<TimestampMillisecondType>();
                if let Some(max) = arrow::compute::max(ts) {
                    cluster.newest = Some(cluster.newest.map_or(max, |n| n.max(max)));
                }
            }
            out.push((cluster.inputs[input], batch));
        }
    }

    /// Names a region that cannot be reached, or has delivered nothing for a while when another
    /// has, with how long and how far its newest record is behind the others', at most every
    /// [`BEHIND_AFTER`] per region.
    fn say_who_is_behind(&mut self) {
        let newest = self.clusters.iter().filter_map(|c| c.newest).max();
        let freshest = self.clusters.iter().map(|c| c.last_delivery).max();
        for c in &mut self.clusters {
            if c.last_said.is_some_and(|t| t.elapsed() < BEHIND_AFTER) {
                continue;
            }
            let silent = c.last_delivery.elapsed();
            // Its metadata could not be read at the last look for partitions, and nothing came since.
            let unreachable = c.unreachable;
            let starved = silent >= BEHIND_AFTER && freshest.is_some_and(|f| f.elapsed() < BEHIND_AFTER) && !c.reader.caught_up();
            if unreachable.is_none() && !starved {
                continue;
            }
            c.last_said = Some(Instant::now());
            let behind = match (c.newest, newest) {
                (Some(n), Some(newest)) => format!(
                    "its newest record read ({}) is {} behind the newest of all regions",
                    rfc3339(n),
                    humantime::format_duration(Duration::from_millis((newest - n).max(0) as u64))
                ),
                _ => "nothing read from it yet".to_string(),
            };
            let why = if unreachable.is_some() { "its brokers cannot be reached" } else { "it delivers nothing while the others do" };
            tracing::warn!("region {} is behind: {why}, nothing read from it for {} s; {behind}; the other regions go on", c.name, silent.as_secs());
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

    /// Each cluster's [`TopicReader::lag`]; with several clusters, topics are named
    /// `<region>/<topic>`.
    pub fn lag(&self) -> Vec<(String, i32, i64)> {
        let several = self.clusters.len() > 1;
        self.clusters
            .iter()
            .flat_map(|c| c.reader.lag().into_iter().map(move |(t, p, l)| (if several { format!("{}/{t}", c.name) } else { t }, p, l)))
            .collect()
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
