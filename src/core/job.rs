//! The seam between a job and the runtimes that drive it, in the vocabulary of Flink's
//! operators: a job declares its inputs, how each is routed to key groups, its operator (epochs
//! of batches and ingest watermarks in; records, dead letters and an audit out;
//! snapshot/restore of its keyed state), its output tables and its backfill reading plan. The
//! backfill and stream runtimes, the sinks, replay and the command line are generic over it,
//! so a new job is its module, its job file and one registration line (`crate::jobs`).
//!
//! Everything here is pure: a job knows no Kafka, no Parquet, no clock.

use std::fmt::{Debug, Display};
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use super::config::ConfigError;
use crate::contract::format::Format;
use crate::contract::outputs::DeadLetter;
use crate::contract::table::OutputTable;

/// How results leave an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// The stream job: a result as soon as it is known, then a corrected one for every later
    /// change, all under one `record_uuid`.
    Updates,
    /// A backfill: each record once, when it can no longer change.
    FinalOnly,
}

/// What a runtime tells an operator about the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSettings {
    pub emit: Emit,
    /// `backfill --complete`: a restatement that ignores the live job's lateness rules, for the
    /// jobs that have such rules.
    pub complete: bool,
    /// A backfill's range `[from, to)`: which records it emits is the job's rule. None: all.
    pub range: Option<(i64, i64)>,
    /// This operator's key group, of `key_groups`.
    pub key_group: u32,
    pub key_groups: u32,
}

impl RunSettings {
    /// The stream job's settings for one key group.
    pub fn stream(key_group: u32, key_groups: u32) -> Self {
        Self { emit: Emit::Updates, complete: false, range: None, key_group, key_groups }
    }
}

/// One input of a job: a topic (its archive has the same name) and its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub topic: String,
    pub format: Format,
    /// Whether the job dead-letters this input's invalid messages (to `<topic>-dlq`).
    pub dead_letters: bool,
    /// The region whose cluster holds the topic (`stream --input <region>=<brokers>`); None:
    /// the job's own cluster (`--brokers`).
    pub region: Option<String>,
}

/// Which key groups take an input batch's rows.
pub enum Route {
    /// `rows[g]`: the rows of key group `g`, ascending. State keyed by the rows' key lives in
    /// exactly one group.
    Keyed(Vec<Vec<u32>>),
    /// Every group takes every row (a small input that every group's state needs).
    Broadcast,
}

/// One input's part of an epoch: its batches, and per batch the rows of this operator's key
/// group (all rows when None).
#[derive(Clone, Copy)]
pub struct EpochInput<'a> {
    pub batches: &'a [RecordBatch],
    pub rows: Option<&'a [Vec<u32>]>,
}

impl<'a> EpochInput<'a> {
    pub const EMPTY: EpochInput<'static> = EpochInput { batches: &[], rows: None };

    /// Each batch with the rows to read of it.
    pub fn selections(&self) -> impl Iterator<Item = (&'a RecordBatch, Option<&'a [u32]>)> {
        let rows = self.rows;
        self.batches.iter().enumerate().map(move |(i, b)| (b, rows.map(|r| r[i].as_slice())))
    }

    pub fn num_rows(&self) -> usize {
        match self.rows {
            Some(rows) => rows.iter().map(Vec::len).sum(),
            None => self.batches.iter().map(RecordBatch::num_rows).sum(),
        }
    }
}

/// A record of one of the job's output tables.
pub trait OutputRecord: Clone + Debug + PartialEq + Send + Sync + Serialize + DeserializeOwned + 'static {
    fn record_uuid(&self) -> Uuid;
    /// The `record_uuid` its identity fields derive (the documented derivation): tests and
    /// replays hold every record to it.
    fn derived_uuid(&self) -> Uuid;
    /// The key group (of `key_groups`) whose state emits it: the stream job writes it to that
    /// partition of its table's topic, and so must anything that restates it there.
    fn key_group(&self, key_groups: usize) -> usize;
    /// Its table, as an index into [`Job::outputs`].
    fn table(&self) -> usize {
        0
    }
    /// The time that places it in its table's hour partitions and in a backfill's range
    /// (a window's start, an order's `order_time`).
    fn partition_time(&self) -> i64;
    /// The contract's JSON form (a Kafka record's value).
    fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("writing to a Vec cannot fail");
    }
    /// The records of a batch of table `table` (as drained by [`Operator::drain_tables`]).
    fn from_batch(table: usize, batch: &RecordBatch) -> anyhow::Result<Vec<Self>>;
    /// A form for people, as replay fixtures write expected records: the JSON form without
    /// `record_uuid`, times in RFC 3339.
    fn readable(&self) -> serde_json::Value;
}

/// A job's accounting: every message read lands in exactly one bucket.
pub trait JobAudit: Clone + Default + Debug + PartialEq + Display + Serialize + DeserializeOwned + Send + Sync + 'static {
    fn merge(&mut self, other: &Self);
    /// Nothing read is unaccounted for.
    fn balances(&self) -> bool;
    /// Messages read, for rates.
    fn read(&self) -> u64;
    /// The main counts on one line, for a running job's log.
    fn line(&self) -> String;
}

/// A bound on a state's encoded size (postcard), so that a checkpoint's buffer is sized once:
/// grown as it is filled, it would double into fresh memory (the bulk of a snapshot is the
/// keyed state, up to hundreds of megabytes).
pub trait StateSize {
    fn encoded_len_bound(&self) -> usize;
}

/// Appends `value`'s postcard encoding to `out`.
pub fn append_postcard<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    *out = postcard::to_extend(value, std::mem::take(out)).expect("states serialize");
}

/// Appends `state`'s postcard encoding to `out`, room for it reserved first.
pub fn append_state<S: Serialize + StateSize>(state: &S, out: &mut Vec<u8>) {
    out.reserve(state.encoded_len_bound());
    append_postcard(state, out);
}

/// Narrows what a backfill decodes of an input's files: rows whose `columns` (decoded first)
/// `keep` rejects are never decoded further. Columns are given in the file's types.
#[derive(Clone)]
pub struct RowFilter {
    pub columns: Vec<&'static str>,
    pub keep: Arc<dyn Fn(&RecordBatch) -> BooleanArray + Send + Sync>,
    /// For reports: what the filter keeps, e.g. "ad events of an order's user and store".
    pub describe: String,
}

/// What a backfill of `[from, to)` must read of one input, in ingest time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRange {
    pub read_from: i64,
    pub read_to: i64,
    /// The archive must hold a file in `[relevant_from, read_to)`: else the range has no input
    /// at all, which is an error rather than an empty result.
    pub relevant_from: i64,
    /// Said when the archive starts after `read_from`: what the missing warm-up costs.
    pub warm_up_note: &'static str,
    /// Said when the archive ends before `read_to`: what the missing tail costs.
    pub tail_note: &'static str,
}

/// A backfill's range and mode, as a job's plan sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillRange {
    pub from: i64,
    pub to: i64,
    pub complete: bool,
}

pub trait Job: Sized + Send + Sync + 'static {
    /// `--job` names it; `jobs/<NAME>.toml` holds its rules.
    const NAME: &'static str;
    /// What it does, for `--help`.
    const ABOUT: &'static str;
    /// `jobs/<NAME>.toml`, compiled in as the default.
    const DEFAULT_JOB_FILE: &'static str;
    /// Whether `backfill --complete` (a restatement that lifts lateness rules) means anything
    /// for this job.
    const COMPLETE_MODE: bool = false;
    /// Inputs the backfill decodes whole before the others, whose rows narrow what the others
    /// read ([`Job::read_filter`]).
    const EAGER_INPUTS: &'static [usize] = &[];
    /// How a backfill's runs are named (`<FILE_PREFIX>-<from>-<to>[-complete]-<started>`, in
    /// their manifests and files' footers), and how its output files were named before one file
    /// per partition (`<FILE_PREFIX>-<from>-<to>…-<n>.parquet`): a run replaces such files of
    /// its own job, so the prefix must stay the job's own (jobs share the `dlq` table).
    const FILE_PREFIX: &'static str = Self::NAME;
    /// Whether the stream runtime hands rows to the operator as they arrive instead of when
    /// the ingest watermark passes them: for a job whose results do not depend on how its
    /// inputs interleave in ingest time (the union forwards each source partition in order).
    const RELEASE_ON_ARRIVAL: bool = false;

    type Rules: Clone + Debug + Send + Sync;
    type Record: OutputRecord;
    type Audit: JobAudit;
    /// A key group's keyed state, as a checkpoint stores it.
    type State: Clone + Debug + PartialEq + Serialize + DeserializeOwned + StateSize + Send + Sync;
    type Operator: Operator<Record = Self::Record, Audit = Self::Audit, State = Self::State>;

    fn parse_rules(job_file: &str) -> Result<Self::Rules, ConfigError>;
    /// The regions whose clusters the job reads (`--input <region>=…`, in order), for a job
    /// whose inputs are on other clusters.
    fn set_regions(_rules: &mut Self::Rules, _regions: &[String]) -> anyhow::Result<()> {
        anyhow::bail!("the {} job reads the cluster of --brokers only; --input names the regions' clusters of the union job", Self::NAME)
    }
    fn inputs(rules: &Self::Rules) -> Vec<Input>;
    /// Renames input `input`'s topic (`--topic`).
    fn set_topic(rules: &mut Self::Rules, input: usize, topic: &str);
    fn outputs(rules: &Self::Rules) -> Vec<OutputTable>;
    /// Renames output table `table` (`--output-topic`).
    fn set_output(rules: &mut Self::Rules, table: usize, name: &str);
    /// Which key groups take the rows of a canonical batch of input `input`.
    fn route(rules: &Self::Rules, input: usize, batch: &RecordBatch, key_groups: usize) -> Route;
    fn operator(rules: &Self::Rules, settings: RunSettings) -> Self::Operator;
    fn restore(rules: &Self::Rules, settings: RunSettings, state: Self::State) -> Self::Operator;
    /// A count that grows exactly when an operator at ingest watermark `t` emits results
    /// that were waiting for the watermark (windows firing): the stream job checkpoints early
    /// then, so those results become readable sooner. None: checkpoint on the interval only.
    fn firings(_rules: &Self::Rules, _ingest_watermark: i64) -> Option<i64> {
        None
    }
    /// What a backfill of `range` reads of each input (indexed as [`Job::inputs`]); an error
    /// if the range itself is not one the job can backfill.
    fn reading(rules: &Self::Rules, range: BackfillRange) -> anyhow::Result<Vec<ReadRange>>;
    /// A filter for input `input`'s files, from the decoded batches of the
    /// [`EAGER_INPUTS`](Job::EAGER_INPUTS) (`eager[k]`: every batch of the k-th of them).
    fn read_filter(_rules: &Self::Rules, _range: BackfillRange, _input: usize, _eager: &[Vec<RecordBatch>]) -> Option<RowFilter> {
        None
    }
}

pub trait Operator: Send + Sync {
    type Record;
    type Audit;
    type State;

    /// One epoch: per input (indexed as [`Job::inputs`]), batches delivered together.
    fn process_epoch(&mut self, epoch: &[EpochInput<'_>]);
    /// The runtime's promise that no message ingested before `t` will follow.
    fn advance_ingest_watermark(&mut self, t: i64);
    /// End of a bounded input: every result is final.
    fn finish(&mut self);
    fn ingest_watermark(&self) -> i64;
    fn audit(&self) -> &Self::Audit;
    /// Makes room in the keyed state once, when a runtime can estimate what is to come:
    /// `rows` more rows for this key group, about `rows_per_hour` of them per ingest hour.
    fn reserve(&mut self, _rows: f64, _rows_per_hour: f64) {}
    /// Records and dead letters emitted since the last drain, in emission order.
    fn drain(&mut self) -> (Vec<Self::Record>, Vec<DeadLetter>);
    /// The records emitted so far whose table partition time (the hour they are written
    /// under) is before `before`, as one batch per table, sorted as the table is, and every
    /// dead letter: the columnar path to Parquet.
    fn drain_tables(&mut self, before: i64) -> (Vec<(usize, RecordBatch)>, Vec<DeadLetter>);
    /// Partition times before this will get no more records ([`Emit::FinalOnly`]).
    fn final_before(&self) -> i64;
    /// The earliest partition time among the records emitted and not drained.
    fn first_emitted(&self) -> Option<i64>;
    /// The keyed state, for a checkpoint; everything emitted must have been drained.
    fn snapshot(&self) -> Self::State;
    /// [`snapshot`](Self::snapshot) as postcard encodes it, appended to `out`: what a
    /// checkpoint stores. The default builds the state, then encodes it; an operator whose
    /// state is mostly one encoded part can write that part in place instead of building it
    /// and having it copied (attribution's candidates: tens of MB of fresh memory each).
    fn encode_snapshot(&self, out: &mut Vec<u8>)
    where
        Self::State: Serialize + StateSize,
    {
        append_state(&self.snapshot(), out);
    }
    /// Entries of the keyed state by kind (dedupe entries, open windows, join state), for
    /// metrics.
    fn state_sizes(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}
