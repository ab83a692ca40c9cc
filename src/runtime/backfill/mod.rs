//! The bounded runtime: one ingest hour of the archives is one epoch.
//!
//! Hours are processed in ingest order; the files of an hour, which the contract leaves
//! unordered, are one epoch (across all of a job's inputs), so file order cannot matter. After
//! each hour the ingest watermark moves to the hour's end: every message ingested before it has
//! been seen. State is split into key groups processed in parallel (rayon), and the next hour
//! is decoded while the current one is processed.
//!
//! A job may name inputs to decode first ([`Job::EAGER_INPUTS`]) whose rows narrow what is
//! decoded of the others ([`Job::read_filter`]): the attribution job reads its orders first,
//! then only the ad events of their users and stores.

mod plan;

pub use plan::{plan, InputPlan, Plan, PlanError};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use rayon::prelude::*;

use super::progress::Progress;
use super::throttle::Throttle;
use crate::contract::format::Format;
use crate::contract::outputs::DeadLetter;
use crate::contract::time::{floor_to, HOUR_MS};
use crate::core::job::{BackfillRange, Emit, EpochInput, Job, JobAudit, Operator, Route, RowFilter, RunSettings};

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

/// Where a backfill reads: the archive of one topic, partitioned by ingest hour.
pub trait ArchiveSource: Sync {
    /// Human-readable location, for messages.
    fn describe(&self) -> String;
    /// The topic's format.
    fn format(&self) -> Format;
    /// Hour partitions with their files, for hours in [from, to), ascending.
    fn hours(&self, from: i64, to: i64) -> anyhow::Result<Vec<HourPartition>>;
    /// The first and last hour that hold any file, to report the archive's boundary.
    fn bounds(&self) -> anyhow::Result<Option<(i64, i64)>>;
    /// A file's rows in the format's canonical schema; with a filter, only the rows it keeps.
    fn read(&self, file: &ArchiveFile, filter: Option<&RowFilter>) -> anyhow::Result<FileRows>;
}

/// What a read of an archive file gave.
#[derive(Debug, Default)]
pub struct FileRows {
    /// The rows kept, canonical.
    pub batches: Vec<RecordBatch>,
    /// The file's rows, kept or not.
    pub in_file: u64,
}

/// Where results go.
pub trait OutputSink: Send {
    /// One key group's rows of output table `table` (an index into the job's outputs), sorted
    /// as the table is; groups hold disjoint keys.
    fn write(&mut self, table: usize, batch: RecordBatch) -> anyhow::Result<()>;
    fn write_dead_letters(&mut self, records: Vec<DeadLetter>) -> anyhow::Result<()>;
    /// The sink's watermark: no more records of partition times before `records_before` and
    /// no more dead letters of messages ingested before `dead_letters_before` will come, so
    /// their partitions can be written out and their buffers freed.
    fn complete_before(&mut self, records_before: i64, dead_letters_before: i64) -> anyhow::Result<()>;
    /// Makes everything written durable; returns a description of what was written.
    fn finish(&mut self) -> anyhow::Result<String>;
    /// The run ends without finishing (`status`: failed, interrupted): what is written stays,
    /// and the sink records why, where it can.
    fn abandon(&mut self, _status: &str, _detail: &str) {}
}

#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub from: i64,
    pub to: i64,
    pub complete: bool,
    /// Number of key groups, processed in parallel.
    pub parallelism: usize,
    pub max_rate: Option<f64>,
    /// An hour missing inside an archive is an error instead of a warning.
    pub fail_on_gap: bool,
    /// Set (by SIGINT/SIGTERM) to stop between hours: the run then fails with [`Interrupted`].
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl BackfillOptions {
    pub fn new(from: i64, to: i64, complete: bool, parallelism: usize) -> Self {
        Self { from, to, complete, parallelism, max_rate: None, fail_on_gap: false, stop: None }
    }

    fn check_stop(&self, at: &str) -> anyhow::Result<()> {
        match &self.stop {
            Some(stop) if stop.load(std::sync::atomic::Ordering::Relaxed) => Err(Interrupted(at.to_string()).into()),
            _ => Ok(()),
        }
    }
}

/// The run was asked to stop (SIGINT/SIGTERM) before its end.
#[derive(Debug, thiserror::Error)]
#[error("stopped by a signal {0}")]
pub struct Interrupted(pub String);

/// What a read filter left out of an input's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filtered {
    pub input: usize,
    pub describe: String,
    /// Rows of the input's files read.
    pub in_files: u64,
    /// Of those, rows decoded (kept by the filter).
    pub decoded: u64,
}

#[derive(Debug)]
pub struct BackfillReport<A> {
    pub plan: Plan,
    pub audit: A,
    /// Records written per output table, as the job's outputs.
    pub records_written: Vec<u64>,
    pub dead_letters_written: u64,
    pub files: u64,
    pub bytes: u64,
    pub filtered: Vec<Filtered>,
    pub elapsed: Duration,
    pub sink: String,
}

impl<A: JobAudit> BackfillReport<A> {
    pub fn events_per_second(&self) -> f64 {
        self.audit.read() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Decoded hours that may wait for processing while the next is decoded.
const DECODED_AHEAD: usize = 1;

/// One input's files of one hour, decoded and routed.
struct Decoded {
    batches: Vec<RecordBatch>,
    /// Rows in the files, kept by a filter or not.
    in_files: u64,
    /// rows[group][batch]; None: every group takes every row (a broadcast input).
    rows: Option<Vec<Vec<Vec<u32>>>>,
    files: u64,
    bytes: u64,
}

impl Decoded {
    fn empty() -> Self {
        Self { batches: Vec::new(), in_files: 0, rows: None, files: 0, bytes: 0 }
    }

    fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    fn group_rows(&self, g: usize) -> usize {
        match &self.rows {
            Some(rows) => rows[g].iter().map(Vec::len).sum(),
            None => self.num_rows(),
        }
    }

    fn input(&self, g: usize) -> EpochInput<'_> {
        EpochInput { batches: &self.batches, rows: self.rows.as_ref().map(|r| r[g].as_slice()) }
    }
}

fn decode_hour<J: Job>(
    rules: &J::Rules,
    input: usize,
    source: &dyn ArchiveSource,
    hour: &HourPartition,
    filter: Option<&RowFilter>,
    groups: usize,
) -> anyhow::Result<Decoded> {
    let per_file: Vec<FileRows> = hour.files.par_iter().map(|f| source.read(f, filter)).collect::<anyhow::Result<_>>()?;
    let in_files = per_file.iter().map(|f| f.in_file).sum();
    let batches: Vec<RecordBatch> = per_file.into_iter().flat_map(|f| f.batches).filter(|b| b.num_rows() > 0).collect();
    let routes: Vec<Route> = batches.par_iter().map(|b| J::route(rules, input, b, groups)).collect();
    let rows = if routes.iter().all(|r| matches!(r, Route::Broadcast)) {
        None
    } else {
        let mut rows: Vec<Vec<Vec<u32>>> = (0..groups).map(|_| Vec::with_capacity(batches.len())).collect();
        for (route, batch) in routes.into_iter().zip(&batches) {
            match route {
                Route::Keyed(per_group) => {
                    for (g, r) in per_group.into_iter().enumerate() {
                        rows[g].push(r);
                    }
                }
                Route::Broadcast => {
                    let all: Vec<u32> = (0..batch.num_rows() as u32).collect();
                    rows.iter_mut().for_each(|r| r.push(all.clone()));
                }
            }
        }
        Some(rows)
    };
    Ok(Decoded { batches, in_files, rows, files: hour.files.len() as u64, bytes: hour.files.iter().map(|f| f.size).sum() })
}

/// `sources[i]` is the archive of the job's input `i`.
pub fn run<J: Job>(
    rules: &J::Rules,
    sources: &[&dyn ArchiveSource],
    sink: &mut dyn OutputSink,
    options: &BackfillOptions,
    progress: &dyn Progress,
) -> anyhow::Result<BackfillReport<J::Audit>> {
    let started = Instant::now();
    let range = BackfillRange { from: options.from, to: options.to, complete: options.complete };
    let plan = plan::<J>(rules, sources, range)?;
    if options.fail_on_gap && !plan.gaps.is_empty() {
        return Err(PlanError::Gaps(plan.gaps.clone()).into());
    }
    let groups = options.parallelism.max(1);
    let settings = |g: usize| RunSettings {
        emit: Emit::FinalOnly,
        complete: options.complete,
        range: Some((options.from, options.to)),
        key_group: g as u32,
        key_groups: groups as u32,
    };
    let mut operators: Vec<J::Operator> = (0..groups).map(|g| J::operator(rules, settings(g))).collect();
    let mut throttle = options.max_rate.map(Throttle::new);
    let tables = J::outputs(rules).len();
    let mut written = (vec![0u64; tables], 0u64);
    progress.begin(plan.files(), plan.bytes());
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut count = |d: &Decoded, rows: usize| {
        files += d.files;
        bytes += d.bytes;
        progress.advance(d.files, d.bytes, rows as u64);
    };

    // The eager inputs, whole, before anything else.
    let mut eager: BTreeMap<usize, BTreeMap<i64, Decoded>> = BTreeMap::new();
    for &input in J::EAGER_INPUTS {
        let mut hours = BTreeMap::new();
        for h in &plan.inputs[input].hours {
            let d = decode_hour::<J>(rules, input, sources[input], h, None, groups)?;
            count(&d, d.num_rows());
            hours.insert(h.hour, d);
        }
        eager.insert(input, hours);
    }
    let eager_batches: Vec<Vec<RecordBatch>> =
        eager.values().map(|hours| hours.values().flat_map(|d| d.batches.iter().cloned()).collect()).collect();
    let filters: Vec<Option<RowFilter>> =
        (0..sources.len()).map(|i| if eager.contains_key(&i) { None } else { J::read_filter(rules, range, i, &eager_batches) }).collect();
    let mut filtered: Vec<Filtered> = filters
        .iter()
        .enumerate()
        .filter_map(|(input, f)| f.as_ref().map(|f| Filtered { input, describe: f.describe.clone(), in_files: 0, decoded: 0 }))
        .collect();

    // Wall time of the two sides of the pipeline, which overlap: for tuning (--log debug).
    let (mut decode_time, mut process_time) = (Duration::ZERO, Duration::ZERO);
    let epochs = plan.epochs();
    // A thread decodes hours ahead while this one processes, writes and completes them: the
    // two sides share rayon's workers with no barrier between them, so neither waits for the
    // other's slowest task, and decoding fills the cores while this thread writes an hour's
    // dead letters. At most DECODED_AHEAD decoded hours wait besides the one being decoded.
    std::thread::scope(|ts| -> anyhow::Result<()> {
        type Hour = (i64, Vec<Option<Decoded>>, Duration);
        let (decoded_tx, decoded_rx) = std::sync::mpsc::sync_channel::<anyhow::Result<Hour>>(DECODED_AHEAD);
        let (plan, filters) = (&plan, &filters);
        ts.spawn(move || {
            for &hour in &epochs {
                let t = Instant::now();
                // Eager inputs were decoded already: None here, taken from `eager` below.
                let d = (0..sources.len())
                    .map(|i| -> anyhow::Result<Option<Decoded>> {
                        if J::EAGER_INPUTS.contains(&i) {
                            return Ok(None);
                        }
                        match plan.inputs[i].hours.iter().find(|h| h.hour == hour) {
                            Some(h) => decode_hour::<J>(rules, i, sources[i], h, filters[i].as_ref(), groups).map(Some),
                            None => Ok(Some(Decoded::empty())),
                        }
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
                    .map(|d| (hour, d, t.elapsed()));
                let failed = d.is_err();
                // The receiver is gone when the run failed; nothing more is wanted then.
                if decoded_tx.send(d).is_err() || failed {
                    break;
                }
            }
        });
        let mut first = true;
        for received in decoded_rx {
            let (hour, mut decoded, took) = received?;
            options.check_stop(&format!("while reading ingest hour {}", crate::contract::time::rfc3339(hour)))?;
            decode_time += took;
            let inputs: Vec<Decoded> = decoded
                .iter_mut()
                .enumerate()
                .map(|(i, d)| match d.take() {
                    Some(d) => d,
                    None => eager.get_mut(&i).and_then(|hours| hours.remove(&hour)).unwrap_or_else(Decoded::empty),
                })
                .collect();
            for f in &mut filtered {
                f.decoded += inputs[f.input].num_rows() as u64;
                f.in_files += inputs[f.input].in_files;
            }
            if std::mem::take(&mut first) {
                reserve_state::<J>(&mut operators, &inputs, plan);
            }
            let t = Instant::now();
            operators.par_iter_mut().enumerate().with_max_len(1).for_each(|(g, op)| {
                let epoch: Vec<EpochInput> = inputs.iter().map(|d| d.input(g)).collect();
                op.process_epoch(&epoch);
                op.advance_ingest_watermark(hour + HOUR_MS);
            });
            process_time += t.elapsed();
            for (i, d) in inputs.iter().enumerate() {
                // Eager inputs were counted when they were decoded.
                if !eager.contains_key(&i) {
                    count(d, d.num_rows());
                }
            }
            drop(inputs);
            write(drain::<J>(&mut operators, i64::MAX), sink, throttle.as_mut(), &mut written)?;
            progress.written(written.0.iter().sum(), written.1);
            let final_before = operators.iter().map(|op| op.final_before()).min().unwrap_or(i64::MIN);
            sink.complete_before(final_before, hour + HOUR_MS)?;
        }
        Ok(())
    })?;
    tracing::debug!(
        "read and processed {} hours in {:?} (decoding {decode_time:?}, processing {process_time:?}, overlapping)",
        plan.epochs().len(),
        started.elapsed()
    );
    let t = Instant::now();
    operators.par_iter_mut().for_each(|op| op.finish());
    tracing::debug!("closed the remaining state in {:?}", t.elapsed());
    let t = Instant::now();
    // Out an hour of records at a time, formatting the next hour while the sink writes the
    // last: buffers stay an hour's size and are reused, instead of the whole range's output
    // being formatted at once into freshly faulted memory.
    let mut hour_end = next_hour_end::<J>(&operators);
    let mut drained = drain::<J>(&mut operators, hour_end.unwrap_or(i64::MAX));
    loop {
        options.check_stop("while writing the output")?;
        write(drained, sink, throttle.as_mut(), &mut written)?;
        progress.written(written.0.iter().sum(), written.1);
        let done = hour_end.unwrap_or(i64::MAX);
        let next = next_hour_end::<J>(&operators);
        let (completed, next_drained) =
            rayon::join(|| sink.complete_before(done, i64::MAX), || next.map(|end| drain::<J>(&mut operators, end)));
        completed?;
        match (next, next_drained) {
            (Some(end), Some(d)) => (hour_end, drained) = (Some(end), d),
            _ => break,
        }
    }
    let sink_summary = sink.finish()?;
    tracing::debug!("wrote the output in {:?}", t.elapsed());
    progress.end();

    let mut audit = J::Audit::default();
    for op in &operators {
        audit.merge(op.audit());
    }
    Ok(BackfillReport {
        plan,
        audit,
        records_written: written.0,
        dead_letters_written: written.1,
        files,
        bytes,
        filtered,
        elapsed: started.elapsed(),
        sink: sink_summary,
    })
}

/// Sizes each key group's keyed state once, from the first hour: its rows per byte scale the
/// plan's bytes to the rows still to come, of which each operator knows how many its state
/// holds at once. A wrong estimate costs memory or a regrowth, never results.
fn reserve_state<J: Job>(operators: &mut [J::Operator], first: &[Decoded], plan: &Plan) {
    let rows: usize = first.iter().map(Decoded::num_rows).sum();
    let first_bytes: u64 = first.iter().map(|d| d.bytes).sum();
    if rows == 0 || first_bytes == 0 {
        return;
    }
    let total = rows as f64 * plan.bytes() as f64 / first_bytes as f64;
    for (g, op) in operators.iter_mut().enumerate() {
        let share = first.iter().map(|d| d.group_rows(g)).sum::<usize>() as f64 / rows as f64;
        op.reserve(total * share, rows as f64 * share);
    }
}

/// The end of the hour of the earliest record not yet drained.
fn next_hour_end<J: Job>(operators: &[J::Operator]) -> Option<i64> {
    let first = operators.iter().filter_map(|op| op.first_emitted()).min()?;
    Some(floor_to(first, HOUR_MS) + HOUR_MS)
}

type Drained = Vec<(Vec<(usize, RecordBatch)>, Vec<DeadLetter>)>;

/// Every key group's records of partition times before `before`, and its dead letters.
/// Sorting and formatting (record_uuid, strings) is per key group: in parallel.
fn drain<J: Job>(operators: &mut [J::Operator], before: i64) -> Drained {
    operators.par_iter_mut().map(|op| op.drain_tables(before)).collect()
}

fn write(drained: Drained, sink: &mut dyn OutputSink, mut throttle: Option<&mut Throttle>, written: &mut (Vec<u64>, u64)) -> anyhow::Result<()> {
    for (tables, dead) in drained {
        for (table, batch) in tables {
            written.0[table] += batch.num_rows() as u64;
            match throttle.as_deref_mut() {
                // Paced in slices of a twentieth of a second's records: a key group's drain can
                // be an hour of output, which released at once would be the burst the throttle
                // exists to prevent.
                Some(t) => {
                    let slice = t.per_tick(Duration::from_millis(50));
                    let mut at = 0;
                    while at < batch.num_rows() {
                        let n = slice.min(batch.num_rows() - at);
                        t.acquire(n as u64);
                        sink.write(table, batch.slice(at, n))?;
                        at += n;
                    }
                }
                None => sink.write(table, batch)?,
            }
        }
        written.1 += dead.len() as u64;
        if !dead.is_empty() {
            if let Some(t) = throttle.as_deref_mut() {
                t.acquire(dead.len() as u64);
            }
            sink.write_dead_letters(dead)?;
        }
    }
    Ok(())
}
