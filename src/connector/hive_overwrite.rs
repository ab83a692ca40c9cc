//! Replacing Hive partitions the way a reader can trust: Hive's INSERT OVERWRITE, one partition
//! at a time, on a local directory and on S3 (which has no rename).
//!
//! Each partition directory (`<table>/dt=…/hr=…`) holds one data file, [`DATA_FILE`] (the
//! `dlq` table, which the jobs share, one per source topic: `<topic>.parquet`, each replaced
//! only by the job that reads that topic). A run replaces a partition by writing that one
//! object: a PUT is atomic on S3 (a reader gets the
//! old object or the new, never a part), and object_store's local file system writes a
//! temporary file beside it and renames it over. So a partition is always completely one run's,
//! however the run ends (an error, SIGTERM, SIGKILL). What a partition cannot be is two runs'
//! files side by side: a run that added its files next to an earlier run's made readers count
//! both.
//!
//! A run covers the hours of its range. A partition the range covers in full gets only the
//! run's rows; one it covers in part (a range starting at 10:30 covers hour 10 in part) keeps
//! the rows of its current file that lie outside the range, carried into its replacement, so
//! that restating half an hour does not drop the other half. A partition in the range that the
//! run has no rows for is emptied (its file deleted, or rewritten with the carried rows only).
//!
//! Every data file names the run that wrote it in its footer (`adsproc.run`), and each run
//! leaves a manifest, `_adsproc/runs/<run>.json`: range, mode, job file digest, status
//! (`running` until it ends, then `complete`, `failed` or `interrupted`) and what it wrote.

use std::collections::HashSet;

use anyhow::Context;
use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::runtime::Handle;

use super::store::Location;
use crate::contract::time::{rfc3339, HOUR_MS};

/// The one data file of a partition.
pub const DATA_FILE: &str = "data.parquet";
/// Where runs leave their manifests, under the sink's root.
pub const RUNS_DIR: &str = "_adsproc/runs";

/// Who writes: stamped on every data file and in the run's manifest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunInfo {
    /// Unique per run: `<job>-<from>-<to>[-complete]-<started>`.
    pub id: String,
    pub job: String,
    /// `default` or `complete`.
    pub mode: String,
    pub from: i64,
    pub to: i64,
    /// SHA-256 of the job file's text (the compiled-in default's when none was given).
    pub job_file_sha256: String,
    /// How the job's files were named before one file per partition
    /// (`<prefix>-<from>-<to>…-<n>.parquet`): such files of the job's are replaced too.
    #[serde(skip)]
    pub file_prefix: String,
}

impl RunInfo {
    /// `[from, to)`, for people.
    pub fn range(&self) -> String {
        format!("[{}, {})", rfc3339(self.from), rfc3339(self.to))
    }

    /// The footer key-value pairs of a data file this run writes.
    pub fn footer(&self) -> Vec<(String, String)> {
        vec![
            ("adsproc.run".into(), self.id.clone()),
            ("adsproc.range".into(), self.range()),
            ("adsproc.mode".into(), self.mode.clone()),
            ("adsproc.job_file_sha256".into(), self.job_file_sha256.clone()),
        ]
    }

    /// Whether the range covers the whole hour starting at `hour`.
    pub fn covers(&self, hour: i64) -> bool {
        self.from <= hour && hour + HOUR_MS <= self.to
    }
}

/// What a run did to one partition, for its manifest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replaced {
    pub table: String,
    pub partition: String,
    /// Rows of the run's in the new file.
    pub rows: usize,
    /// Rows of the partition's earlier file outside the range, kept.
    pub carried: usize,
    /// Earlier files removed besides the one overwritten (an earlier layout's).
    pub removed: usize,
}

/// A run's manifest, `_adsproc/runs/<run>.json`.
#[derive(Debug, serde::Serialize)]
pub struct Manifest<'a> {
    #[serde(flatten)]
    pub run: &'a RunInfo,
    pub range: String,
    pub status: &'a str,
    pub detail: Option<String>,
    pub partitions: &'a [Replaced],
}

pub fn write_manifest(loc: &Location, rt: &Handle, manifest: &Manifest) -> anyhow::Result<()> {
    let path = loc.child(&format!("{RUNS_DIR}/{}.json", manifest.run.id));
    let bytes = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
    rt.block_on(loc.store.put(&path, PutPayload::from(bytes))).with_context(|| format!("cannot write {}", url_of(loc, &path)))?;
    Ok(())
}

fn url_of(loc: &Location, path: &Path) -> String {
    let rel = path.as_ref().strip_prefix(loc.prefix.as_ref()).unwrap_or(path.as_ref()).trim_start_matches('/');
    format!("{}/{rel}", loc.url.trim_end_matches('/'))
}

/// Which files of a partition directory one output owns: its data file and any file an
/// earlier layout left for it.
pub struct Owned<'a> {
    /// The one file it writes: [`DATA_FILE`] or `<topic>.parquet`.
    pub file: String,
    /// Earlier files that are its own: every other Parquet file of a table's partition; in the
    /// shared `dlq` table, the job's earlier-named files (`<prefix>-…`).
    pub earlier: &'a dyn Fn(&str) -> bool,
    /// Rows of earlier files that are its own (the dlq: those of its topic).
    pub topic: Option<&'a str>,
}

impl Owned<'_> {
    pub fn owns(&self, name: &str) -> bool {
        name.ends_with(".parquet") && (name == self.file || (self.earlier)(name))
    }
}

/// The files a partition directory holds of `owned`, its data file first, then newest first.
fn files(loc: &Location, rt: &Handle, dir: &Path, owned: &Owned) -> anyhow::Result<Vec<ObjectMeta>> {
    let mut all: Vec<ObjectMeta> = rt
        .block_on(loc.store.list(Some(dir)).try_collect::<Vec<_>>())
        .with_context(|| format!("cannot list {}", url_of(loc, dir)))?
        .into_iter()
        .filter(|m| m.location.filename().is_some_and(|f| owned.owns(f)))
        .collect();
    let first = |m: &ObjectMeta| m.location.filename() == Some(owned.file.as_str());
    all.sort_by(|a, b| first(b).cmp(&first(a)).then(b.last_modified.cmp(&a.last_modified)));
    Ok(all)
}

/// The rows of a partition's current files whose time (column `time_column`) lies outside
/// `[from, to)`: what its replacement keeps. Earlier layouts left several files per partition;
/// a `record_uuid` found in more than one is kept from the newest.
#[allow(clippy::too_many_arguments)]
pub fn carried_rows(
    loc: &Location,
    rt: &Handle,
    dir: &Path,
    owned: &Owned,
    schema: &SchemaRef,
    time_column: usize,
    from: i64,
    to: i64,
) -> anyhow::Result<Vec<RecordBatch>> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for meta in files(loc, rt, dir, owned)? {
        let url = url_of(loc, &meta.location);
        let bytes = rt
            .block_on(async { loc.store.get(&meta.location).await?.bytes().await })
            .with_context(|| format!("cannot read {url}"))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).and_then(|b| b.build()).with_context(|| format!("{url} is not a Parquet file"))?;
        for batch in reader {
            let batch = batch.with_context(|| format!("cannot decode {url}"))?;
            anyhow::ensure!(
                batch.schema().fields() == schema.fields(),
                "{url} does not have the table's columns: it cannot be carried into the partition's replacement"
            );
            let times = batch.column(time_column).as_primitive::<TimestampMillisecondType>();
            let uuids = batch.column(0).as_string::<i32>();
            let topics = owned.topic.map(|_| batch.column(crate::contract::outputs::dead_letter_col::TOPIC).as_string::<i32>());
            let keep: BooleanArray = (0..batch.num_rows())
                .map(|i| {
                    let t = if times.is_null(i) { 0 } else { times.value(i) };
                    let ours = topics.is_none_or(|topics| Some(topics.value(i)) == owned.topic);
                    Some(ours && (t < from || t >= to) && seen.insert(uuids.value(i).to_string()))
                })
                .collect();
            let kept = filter_record_batch(&batch, &keep)?;
            if kept.num_rows() > 0 {
                out.push(kept);
            }
        }
    }
    Ok(out)
}

/// Makes `bytes` the output's one file in the partition, then removes the output's earlier
/// files there (an earlier layout's, or none). Returns how many were removed.
pub fn replace(loc: &Location, rt: &Handle, dir: &Path, owned: &Owned, bytes: Vec<u8>) -> anyhow::Result<usize> {
    let path = dir.clone().join(owned.file.as_str());
    rt.block_on(loc.store.put(&path, PutPayload::from(bytes))).with_context(|| format!("cannot write {}", url_of(loc, &path)))?;
    remove_others(loc, rt, dir, owned, Some(&path))
}

/// Empties a partition of the output: deletes its files.
pub fn empty(loc: &Location, rt: &Handle, dir: &Path, owned: &Owned) -> anyhow::Result<usize> {
    remove_others(loc, rt, dir, owned, None)
}

fn remove_others(loc: &Location, rt: &Handle, dir: &Path, owned: &Owned, keep: Option<&Path>) -> anyhow::Result<usize> {
    let mut removed = 0;
    for meta in files(loc, rt, dir, owned)? {
        if Some(&meta.location) != keep {
            rt.block_on(loc.store.delete(&meta.location)).with_context(|| format!("cannot delete {}", url_of(loc, &meta.location)))?;
            removed += 1;
        }
    }
    Ok(removed)
}
