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
use crate::contract::outputs::DeadLetter;
use crate::contract::time::{floor_to, HOUR_MS};
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
    /// One key group's `ad-metrics` rows (see [`ad_metrics_schema`]), ordered by
    /// (window_start, region, ad_id); groups hold disjoint ads.
    ///
    /// [`ad_metrics_schema`]: crate::contract::outputs::ad_metrics_schema
    fn write_metrics(&mut self, batch: RecordBatch) -> anyhow::Result<()>;
    fn write_dead_letters(&mut self, records: Vec<DeadLetter>) -> anyhow::Result<()>;
    /// The sink's watermark: no more ad-metrics of windows starting before `metrics_before`
    /// and no more dead letters of messages ingested before `dead_letters_before` will come,
    /// so their partitions can be written out and their buffers freed.
    fn complete_before(&mut self, metrics_before: i64, dead_letters_before: i64) -> anyhow::Result<()>;
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

/// Decoded hours that may wait for processing while the next is decoded.
const DECODED_AHEAD: usize = 1;

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

    let (mut files, mut bytes) = (0u64, 0u64);
    // Wall time of the two sides of the pipeline, which overlap: for tuning (--log debug).
    let (mut decode_time, mut process_time) = (Duration::ZERO, Duration::ZERO);
    // A thread decodes hours ahead while this one processes, writes and completes them: the
    // two sides share rayon's workers with no barrier between them, so neither waits for the
    // other's slowest task, and decoding fills the cores while this thread writes an hour's
    // dead letters. At most DECODED_AHEAD decoded hours wait besides the one being decoded.
    std::thread::scope(|ts| -> anyhow::Result<()> {
        let (decoded_tx, decoded_rx) = std::sync::mpsc::sync_channel::<anyhow::Result<(i64, Decoded, Duration)>>(DECODED_AHEAD);
        let hours = &plan.hours;
        ts.spawn(move || {
            for h in hours {
                let t = Instant::now();
                let d = decode_hour(source, h, groups).map(|d| (h.hour, d, t.elapsed()));
                let failed = d.is_err();
                // The receiver is gone when the run failed; nothing more is wanted then.
                if decoded_tx.send(d).is_err() || failed {
                    break;
                }
            }
        });
        let mut first = true;
        for received in decoded_rx {
            let (hour, decoded, took) = received?;
            decode_time += took;
            if std::mem::take(&mut first) {
                reserve_state(&mut operators, &decoded, &plan, rules);
            }
            let t = Instant::now();
            operators.par_iter_mut().enumerate().with_max_len(1).for_each(|(g, op)| {
                op.process_epoch(&decoded.batches, Some(&decoded.rows[g]));
                op.advance_ingest_watermark(hour + HOUR_MS);
            });
            process_time += t.elapsed();
            let events: u64 = decoded.batches.iter().map(|b| b.num_rows() as u64).sum();
            files += decoded.files;
            bytes += decoded.bytes;
            progress.advance(decoded.files, decoded.bytes, events);
            drop(decoded);
            write(drain(&mut operators, i64::MAX), sink, throttle.as_mut(), &mut written)?;
            let final_before = operators.iter().map(|op| op.final_before()).min().unwrap_or(i64::MIN);
            sink.complete_before(final_before, hour + HOUR_MS)?;
        }
        Ok(())
    })?;
    tracing::debug!(
        "read and processed {} hours in {:?} (decoding {decode_time:?}, processing {process_time:?}, overlapping)",
        plan.hours.len(),
        started.elapsed()
    );
    let t = Instant::now();
    operators.par_iter_mut().for_each(|op| op.finish());
    tracing::debug!("closed the remaining windows in {:?}", t.elapsed());
    let t = Instant::now();
    // Out an hour of windows at a time, formatting the next hour while the sink writes the
    // last: buffers stay an hour's size and are reused, instead of the whole range's output
    // being formatted at once into freshly faulted memory.
    let mut hour_end = next_hour_end(&operators);
    let mut drained = drain(&mut operators, hour_end.unwrap_or(i64::MAX));
    loop {
        write(drained, sink, throttle.as_mut(), &mut written)?;
        let done = hour_end.unwrap_or(i64::MAX);
        let next = next_hour_end(&operators);
        let (completed, next_drained) = rayon::join(|| sink.complete_before(done, i64::MAX), || next.map(|end| drain(&mut operators, end)));
        completed?;
        match (next, next_drained) {
            (Some(end), Some(d)) => (hour_end, drained) = (Some(end), d),
            _ => break,
        }
    }
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

/// Sizes each key group's dedupe state once, from the first hour: its rows per byte scale the
/// plan's bytes to the rows still to come, of which the state holds at most a TTL's worth (plus
/// the quarter-TTL between expiries). A wrong estimate costs memory or a regrowth, never results.
fn reserve_state(operators: &mut [AggregationOperator], first: &Decoded, plan: &Plan, rules: &AggregationRules) {
    let rows: usize = first.batches.iter().map(|b| b.num_rows()).sum();
    if rows == 0 || first.bytes == 0 {
        return;
    }
    let total = rows as f64 * plan.bytes() as f64 / first.bytes as f64;
    let ttl_hours = (rules.dedupe_ttl_ms as f64 * 1.25 / HOUR_MS as f64).ceil() + 1.0;
    let held = total.min(rows as f64 * ttl_hours);
    for (op, group_rows) in operators.iter_mut().zip(&first.rows) {
        let share = group_rows.iter().map(Vec::len).sum::<usize>() as f64 / rows as f64;
        op.reserve((held * share) as usize);
    }
}

/// The end of the hour of the earliest window result not yet drained.
fn next_hour_end(operators: &[AggregationOperator]) -> Option<i64> {
    let first = operators.iter().filter_map(|op| op.first_emitted_start()).min()?;
    Some(floor_to(first, HOUR_MS) + HOUR_MS)
}

type Drained = Vec<(Option<RecordBatch>, Vec<DeadLetter>)>;

/// Every key group's results for windows starting before `before`, and its dead letters.
/// Sorting and formatting (record_uuid, strings) is per key group: in parallel.
fn drain(operators: &mut [AggregationOperator], before: i64) -> Drained {
    operators.par_iter_mut().map(|op| op.drain_batch(before)).collect()
}

fn write(drained: Drained, sink: &mut dyn OutputSink, mut throttle: Option<&mut Throttle>, written: &mut (u64, u64)) -> anyhow::Result<()> {
    for (metrics, dead) in drained {
        let rows = metrics.as_ref().map_or(0, |b| b.num_rows());
        if let Some(t) = throttle.as_deref_mut() {
            t.acquire((rows + dead.len()) as u64);
        }
        written.0 += rows as u64;
        written.1 += dead.len() as u64;
        if let Some(metrics) = metrics {
            sink.write_metrics(metrics)?;
        }
        if !dead.is_empty() {
            sink.write_dead_letters(dead)?;
        }
    }
    Ok(())
}
