//! Output tables in the Hive layout: `<root>/<table>/dt=…/hr=…/<run>-<n>.parquet`.
//!
//! `ad-metrics` is partitioned by the window's start hour (its event time), `dlq` by ingest
//! hour (a rejected event may have no event time). File names are derived from the run (the
//! backfilled range), and a run first removes its own earlier files from each partition it
//! writes, so re-running a backfill replaces its output instead of adding to it.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use arrow::array::RecordBatch;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;
use tokio::runtime::Handle;

use super::store::Location;
use crate::contract::columns::{AD_METRICS_TABLE, DLQ_TABLE};
use crate::contract::outputs::{ad_metrics_batch, dead_letter_batch, AdMetric, DeadLetter};
use crate::contract::time::{floor_to, hive_hour_dir, HOUR_MS};
use crate::runtime::backfill::OutputSink;

/// Rows buffered per partition before a file is written.
const FILE_ROWS: usize = 1 << 20;

pub struct HiveParquetSink {
    location: Location,
    rt: Handle,
    run: String,
    metrics: BTreeMap<i64, Vec<AdMetric>>,
    dead: BTreeMap<i64, Vec<DeadLetter>>,
    /// Partitions already cleared of this run's earlier files, with the next file number.
    seq: BTreeMap<(String, i64), usize>,
    files: usize,
    tables: BTreeSet<&'static str>,
}

impl HiveParquetSink {
    /// `run` names this run's files, e.g. `backfill-20260101T0000Z-20260102T0000Z`.
    pub fn new(location: Location, rt: Handle, run: String) -> Self {
        Self { location, rt, run, metrics: BTreeMap::new(), dead: BTreeMap::new(), seq: BTreeMap::new(), files: 0, tables: BTreeSet::new() }
    }

    fn write_file(&mut self, table: &'static str, hour: i64, batch: RecordBatch) -> anyhow::Result<()> {
        let bytes = encode(batch)?;
        self.put_file(table, hour, bytes)
    }

    fn put_file(&mut self, table: &'static str, hour: i64, bytes: Vec<u8>) -> anyhow::Result<()> {
        let dir = self.location.child(&format!("{table}/{}", hive_hour_dir(hour)));
        let key = (table.to_string(), hour);
        if !self.seq.contains_key(&key) {
            let prefix = format!("{}-", self.run);
            let old: Vec<_> = self
                .rt
                .block_on(self.location.store.list(Some(&dir)).try_collect::<Vec<_>>())
                .with_context(|| format!("cannot list {dir}"))?;
            for m in old.into_iter().filter(|m| m.location.filename().is_some_and(|f| f.starts_with(&prefix))) {
                self.rt.block_on(self.location.store.delete(&m.location)).with_context(|| format!("cannot delete {}", m.location))?;
            }
            self.seq.insert(key.clone(), 0);
        }
        let n = self.seq.get_mut(&key).expect("inserted above");
        let path = dir.clone().join(format!("{}-{:05}.parquet", self.run, n));
        *n += 1;
        self.rt
            .block_on(self.location.store.put(&path, PutPayload::from(bytes)))
            .with_context(|| format!("cannot write {path}"))?;
        self.files += 1;
        self.tables.insert(table);
        Ok(())
    }

    fn flush_metrics(&mut self, hour: i64) -> anyhow::Result<()> {
        if let Some(rows) = self.metrics.remove(&hour) {
            self.write_file(AD_METRICS_TABLE, hour, sorted_metrics(rows))?;
        }
        Ok(())
    }

    fn flush_dead(&mut self, hour: i64) -> anyhow::Result<()> {
        if let Some(rows) = self.dead.remove(&hour) {
            self.write_file(DLQ_TABLE, hour, sorted_dead(rows))?;
        }
        Ok(())
    }
}

/// Rows in a stable order, so a file's content does not depend on parallelism.
fn sorted_metrics(mut rows: Vec<AdMetric>) -> RecordBatch {
    rows.par_sort_unstable_by(|a, b| (a.window_start, &a.region, &a.ad_id).cmp(&(b.window_start, &b.region, &b.ad_id)));
    ad_metrics_batch(&rows)
}

fn sorted_dead(mut rows: Vec<DeadLetter>) -> RecordBatch {
    rows.par_sort_unstable_by_key(|d| (d.partition, d.offset));
    dead_letter_batch(&rows)
}

fn encode(batch: RecordBatch) -> anyhow::Result<Vec<u8>> {
    // record_uuid is unique per row: a dictionary attempt on it is pure cost.
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_column_dictionary_enabled(ColumnPath::from("record_uuid"), false)
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok(buf)
}

impl OutputSink for HiveParquetSink {
    fn write_metrics(&mut self, records: Vec<AdMetric>) -> anyhow::Result<()> {
        let mut full = Vec::new();
        for r in records {
            let hour = floor_to(r.window_start, HOUR_MS);
            let buf = self.metrics.entry(hour).or_default();
            buf.push(r);
            if buf.len() >= FILE_ROWS {
                full.push(hour);
            }
        }
        for h in full {
            self.flush_metrics(h)?;
        }
        Ok(())
    }

    fn write_dead_letters(&mut self, records: Vec<DeadLetter>) -> anyhow::Result<()> {
        let mut full = Vec::new();
        for r in records {
            let hour = floor_to(r.kafka_timestamp.unwrap_or(0), HOUR_MS);
            let buf = self.dead.entry(hour).or_default();
            buf.push(r);
            if buf.len() >= FILE_ROWS {
                full.push(hour);
            }
        }
        for h in full {
            self.flush_dead(h)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<String> {
        // Partitions are independent: sort, encode and compress them in parallel.
        let metrics = std::mem::take(&mut self.metrics);
        let dead = std::mem::take(&mut self.dead);
        let encoded: Vec<(&'static str, i64, Vec<u8>)> = metrics
            .into_par_iter()
            .map(|(h, rows)| (AD_METRICS_TABLE, h, encode(sorted_metrics(rows))))
            .chain(dead.into_par_iter().map(|(h, rows)| (DLQ_TABLE, h, encode(sorted_dead(rows)))))
            .map(|(t, h, r)| r.map(|b| (t, h, b)))
            .collect::<anyhow::Result<_>>()?;
        for (table, hour, bytes) in encoded {
            self.put_file(table, hour, bytes)?;
        }
        Ok(format!(
            "{} files under {} ({})",
            self.files,
            self.location.url,
            self.tables.iter().copied().collect::<Vec<_>>().join(", ")
        ))
    }
}
