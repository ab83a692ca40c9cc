//! The bounded runtime: one ingest hour of the archive is one epoch.
//!
//! Hours are processed in ingest order; the files of an hour, which the contract leaves
//! unordered, are one epoch, so file order cannot matter. After each hour the ingest
//! watermark moves to the hour's end: every message ingested before it has been seen. State is
//! split into key groups processed in parallel (rayon), and the next hour is decoded while the
//! current one is processed.

mod plan;

pub use plan::{plan, Plan, PlanError};

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use rayon::prelude::*;

use super::progress::Progress;
use super::throttle::Throttle;
use crate::contract::outputs::{AdMetric, DeadLetter};
use crate::contract::time::HOUR_MS;
use crate::core::aggregation::{AggregationOperator, Emit, Lateness, Scope, Settings};
use crate::core::audit::Audit;
use crate::core::config::AggregationRules;
use crate::core::key_group;

/// A file of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    pub path: String,
    pub size: u64,
}

/// The files of one ingest hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourPartition {
    pub hour: i64,
    pub files: Vec<ArchiveFile>,
}

/// Where a backfill reads: an archive of one topic, partitioned by ingest hour.
pub trait ArchiveSource: Sync {
    /// Human-readable location, for messages.
    fn describe(&self) -> String;
    /// Hour partitions with their files, for hours in [from, to), ascending.
    fn hours(&self, from: i64, to: i64) -> anyhow::Result<Vec<HourPartition>>;
    /// The first and last hour that hold any file, to report the archive's boundary.
    fn bounds(&self) -> anyhow::Result<Option<(i64, i64)>>;
    /// A file's rows in the canonical schema.
    fn read(&self, file: &ArchiveFile) -> anyhow::Result<Vec<RecordBatch>>;
}

/// Where results go.
pub trait OutputSink: Send {
    fn write_metrics(&mut self, records: Vec<AdMetric>) -> anyhow::Result<()>;
    fn write_dead_letters(&mut self, records: Vec<DeadLetter>) -> anyhow::Result<()>;
    /// Makes everything written durable; returns a description of what was written.
    fn finish(&mut self) -> anyhow::Result<String>;
}

#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub from: i64,
    pub to: i64,
    pub complete: bool,
    /// Number of key groups, processed in parallel.
    pub parallelism: usize,
    pub max_rate: Option<f64>,
}

#[derive(Debug)]
pub struct BackfillReport {
    pub plan: Plan,
    pub audit: Audit,
    pub metrics_written: u64,
    pub dead_letters_written: u64,
    pub files: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub sink: String,
}

impl BackfillReport {
    pub fn events_per_second(&self) -> f64 {
        self.audit.read as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct Decoded {
    batches: Vec<RecordBatch>,
    /// rows[group][batch]
    rows: Vec<Vec<Vec<u32>>>,
    files: u64,
    bytes: u64,
}

fn decode_hour(source: &dyn ArchiveSource, hour: &HourPartition, groups: usize) -> anyhow::Result<Decoded> {
    let per_file: Vec<Vec<RecordBatch>> = hour.files.par_iter().map(|f| source.read(f)).collect::<anyhow::Result<_>>()?;
    let batches: Vec<RecordBatch> = per_file.into_iter().flatten().filter(|b| b.num_rows() > 0).collect();
    let split: Vec<Vec<Vec<u32>>> = batches.par_iter().map(|b| key_group::split_rows(b, groups)).collect();
    let mut rows: Vec<Vec<Vec<u32>>> = (0..groups).map(|_| Vec::with_capacity(batches.len())).collect();
    for per_batch in split {
        for (g, r) in per_batch.into_iter().enumerate() {
            rows[g].push(r);
        }
    }
    Ok(Decoded {
        batches,
        rows,
        files: hour.files.len() as u64,
        bytes: hour.files.iter().map(|f| f.size).sum(),
    })
}

pub fn run(
    rules: &AggregationRules,
    source: &dyn ArchiveSource,
    sink: &mut dyn OutputSink,
    options: &BackfillOptions,
    progress: &dyn Progress,
) -> anyhow::Result<BackfillReport> {
    let started = Instant::now();
    let plan = plan(rules, source, options)?;
    let groups = options.parallelism.max(1);
    let settings = Settings {
        emit: Emit::FinalOnly,
        lateness: if options.complete { Lateness::Unbounded } else { Lateness::Bounded },
        scope: Scope::range(options.from, options.to),
    };
    let mut operators: Vec<AggregationOperator> =
        (0..groups).map(|_| AggregationOperator::new(rules.clone(), settings.clone())).collect();
    let mut throttle = options.max_rate.map(Throttle::new);
    let mut written = (0u64, 0u64);
    progress.begin(plan.files(), plan.bytes());

    let mut pending: Option<(i64, Decoded)> = match plan.hours.first() {
        Some(h) => Some((h.hour, decode_hour(source, h, groups)?)),
        None => None,
    };
    let mut next_index = 1;
    let (mut files, mut bytes) = (0u64, 0u64);
    while let Some((hour, decoded)) = pending.take() {
        let next = plan.hours.get(next_index);
        next_index += 1;
        let (next_decoded, ()) = rayon::join(
            || next.map(|h| decode_hour(source, h, groups).map(|d| (h.hour, d))).transpose(),
            || {
                operators.par_iter_mut().enumerate().for_each(|(g, op)| {
                    op.process_epoch(&decoded.batches, Some(&decoded.rows[g]));
                    op.advance_ingest_watermark(hour + HOUR_MS);
                });
            },
        );
        let events: u64 = decoded.batches.iter().map(|b| b.num_rows() as u64).sum();
        files += decoded.files;
        bytes += decoded.bytes;
        progress.advance(decoded.files, decoded.bytes, events);
        drop(decoded);
        emit(&mut operators, sink, throttle.as_mut(), &mut written)?;
        pending = next_decoded?;
    }
    tracing::debug!("read and processed {} hours in {:?}", plan.hours.len(), started.elapsed());
    let t = Instant::now();
    operators.par_iter_mut().for_each(|op| op.finish());
    tracing::debug!("closed the remaining windows in {:?}", t.elapsed());
    let t = Instant::now();
    emit(&mut operators, sink, throttle.as_mut(), &mut written)?;
    let sink_summary = sink.finish()?;
    tracing::debug!("wrote the output in {:?}", t.elapsed());
    progress.end();

    let mut audit = Audit::default();
    for op in &operators {
        audit.merge(op.audit());
    }
    Ok(BackfillReport {
        plan,
        audit,
        metrics_written: written.0,
        dead_letters_written: written.1,
        files,
        bytes,
        elapsed: started.elapsed(),
        sink: sink_summary,
    })
}

fn emit(
    operators: &mut [AggregationOperator],
    sink: &mut dyn OutputSink,
    mut throttle: Option<&mut Throttle>,
    written: &mut (u64, u64),
) -> anyhow::Result<()> {
    for op in operators.iter_mut() {
        let (metrics, dead) = op.drain();
        if let Some(t) = throttle.as_deref_mut() {
            t.acquire((metrics.len() + dead.len()) as u64);
        }
        written.0 += metrics.len() as u64;
        written.1 += dead.len() as u64;
        if !metrics.is_empty() {
            sink.write_metrics(metrics)?;
        }
        if !dead.is_empty() {
            sink.write_dead_letters(dead)?;
        }
    }
    Ok(())
}
