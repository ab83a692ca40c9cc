//! Output tables in the Hive layout: `<root>/<table>/dt=…/hr=…/<run>-<n>.parquet`.
//!
//! `ad-metrics` is partitioned by the window's start hour (its event time), `dlq` by ingest
//! hour (a rejected event may have no event time). File names are derived from the run (the
//! backfilled range), and a run first removes its own earlier files from each partition it
//! writes, so re-running a backfill replaces its output instead of adding to it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use anyhow::Context;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use arrow::array::{AsArray, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::SchemaRef;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk};
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;
use tokio::runtime::Handle;

use super::store::Location;
use crate::contract::columns::{AD_METRICS_TABLE, DLQ_TABLE, RECORD_UUID};
use crate::contract::outputs::{ad_metrics_col, ad_metrics_schema, dead_letter_batch, dead_letter_col, dead_letter_schema, DeadLetter};
use crate::contract::time::{floor_to, hive_hour_dir, HOUR_MS};
use crate::runtime::backfill::OutputSink;

/// Rows buffered per partition before a file is written.
const FILE_ROWS: usize = 1 << 20;

pub struct HiveParquetSink {
    location: Location,
    rt: Handle,
    run: String,
    /// Per window-start hour: slices, each ordered by (window_start, region, ad_id).
    metrics: BTreeMap<i64, Vec<RecordBatch>>,
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
        let bytes = encode(batch, table_properties(table))?;
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
        if let Some(slices) = self.metrics.remove(&hour) {
            self.write_file(AD_METRICS_TABLE, hour, merge_sorted(slices)?)?;
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

/// (window_start, region, ad_id) of each row: the order of an ad-metrics file.
struct MetricOrder<'a> {
    start: &'a TimestampMillisecondArray,
    region: &'a StringArray,
    ad: &'a StringArray,
}

impl<'a> MetricOrder<'a> {
    fn new(b: &'a RecordBatch) -> Self {
        Self {
            start: b.column(ad_metrics_col::WINDOW_START).as_primitive(),
            region: b.column(ad_metrics_col::REGION).as_string(),
            ad: b.column(ad_metrics_col::AD_ID).as_string(),
        }
    }

    fn key(&self, row: usize) -> (i64, &'a str, &'a str) {
        (self.start.value(row), self.region.value(row), self.ad.value(row))
    }
}

/// Merges slices that are each ordered by (window_start, region, ad_id) into one batch in
/// that order, so a file's content does not depend on parallelism or on how the rows arrived.
fn merge_sorted(slices: Vec<RecordBatch>) -> anyhow::Result<RecordBatch> {
    if slices.len() == 1 {
        return Ok(slices.into_iter().next().expect("one slice"));
    }
    let orders: Vec<MetricOrder> = slices.iter().map(MetricOrder::new).collect();
    let lens: Vec<usize> = slices.iter().map(|b| b.num_rows()).collect();
    let indices = merge_order(&lens, |i, row| orders[i].key(row));
    let refs: Vec<&RecordBatch> = slices.iter().collect();
    Ok(interleave_record_batch(&refs, &indices)?)
}

/// The (slice, row) order that merges slices of `lens[i]` rows, each ordered by `key`; ties go
/// to the lower slice. With a few slices (one per key group of a small machine) the smallest
/// head is found by scanning them: a heap's pop and push cost three times the comparisons of
/// two slices' one, and were 2 % of a backfill's CPU samples.
fn merge_order<K: Ord>(lens: &[usize], key: impl Fn(usize, usize) -> K) -> Vec<(usize, usize)> {
    let mut indices = Vec::with_capacity(lens.iter().sum());
    if lens.len() <= SCANNED_SLICES {
        let mut heads: Vec<Option<(K, usize)>> = lens.iter().enumerate().map(|(i, &n)| (n > 0).then(|| (key(i, 0), 0))).collect();
        loop {
            let mut best: Option<usize> = None;
            for (i, head) in heads.iter().enumerate() {
                if let Some((k, _)) = head {
                    if best.is_none_or(|b| heads[b].as_ref().is_some_and(|(bk, _)| k < bk)) {
                        best = Some(i);
                    }
                }
            }
            let Some(i) = best else { break };
            let row = heads[i].as_ref().expect("chosen from the present heads").1;
            indices.push((i, row));
            heads[i] = (row + 1 < lens[i]).then(|| (key(i, row + 1), row + 1));
        }
        return indices;
    }
    // (row's key, slice, row), smallest first.
    let mut heads: BinaryHeap<Reverse<(K, usize, usize)>> =
        lens.iter().enumerate().filter(|(_, &n)| n > 0).map(|(i, _)| Reverse((key(i, 0), i, 0))).collect();
    while let Some(Reverse((_, i, row))) = heads.pop() {
        indices.push((i, row));
        if row + 1 < lens[i] {
            heads.push(Reverse((key(i, row + 1), i, row + 1)));
        }
    }
    indices
}

/// Up to this many slices are merged by scanning their heads, more with a heap.
const SCANNED_SLICES: usize = 4;

fn sorted_dead(mut rows: Vec<DeadLetter>) -> RecordBatch {
    rows.par_sort_unstable_by_key(|d| (d.partition, d.offset));
    dead_letter_batch(&rows)
}

/// Writer settings of the `ad-metrics` table: the common ones ([`table_defaults`]) and these.
///
/// The ad, campaign and advertiser ids have no min/max statistics: every minute of a file
/// holds nearly every active ad, so each page's range is nearly the whole id space (1.4 % of
/// a backfill's CPU samples were those comparisons).
///
/// Plain values, compressed, for the columns where a dictionary costs more than it saves: rows
/// are sorted by (window, region, ad), so window bounds and regions come in long runs and ad
/// ids in order, and clicks are mostly 0, all of which zstd takes well; interning them (a hash
/// and a compare per row) was the slower way to a file no smaller. On 20 hours of the bench's
/// output (146k rows each, one thread, best of 7) encoding took 1140 -> 994 ms and the files
/// were 1.5 % smaller. Campaign and advertiser ids and the impressions were smaller and no
/// slower with their dictionaries.
fn ad_metrics_properties() -> &'static WriterProperties {
    static PROPERTIES: LazyLock<WriterProperties> = LazyLock::new(|| {
        use ad_metrics_col as c;
        let no_statistics = [c::AD_ID, c::CAMPAIGN_ID, c::ADVERTISER_ID];
        table_settings(ad_metrics_schema(), &no_statistics, &[c::REGION, c::AD_ID, c::WINDOW_START, c::WINDOW_END, c::CLICKS])
    });
    &PROPERTIES
}

/// Writer settings of the dead-letter table: the common ones ([`table_defaults`]) and, as for
/// `record_uuid`, no dictionary where values rarely repeat: the payload (each message's own
/// text, also without min/max statistics, which prune nothing on JSON text), the source
/// position and the ingest time. Timed column by column on a default-mode backfill's 261k dead
/// letters (one thread, best of 5): payload 263 -> 221 ms, offset 13.5 -> 9.3 ms and half the
/// size, the ingest time 14.3 -> 8.3 ms and 40 % smaller. `reason` keeps its dictionary: its
/// codes and most of its texts repeat (80 ms with it, 137 ms without).
fn dead_letter_properties() -> &'static WriterProperties {
    static PROPERTIES: LazyLock<WriterProperties> = LazyLock::new(|| {
        use dead_letter_col as c;
        table_settings(dead_letter_schema(), &[c::PAYLOAD], &[c::PAYLOAD, c::PARTITION, c::OFFSET, c::KAFKA_TIMESTAMP])
    });
    &PROPERTIES
}

/// [`table_defaults`], with no min/max statistics for the columns `no_statistics` and no
/// dictionary for the columns `no_dictionary` (indices into `schema`).
fn table_settings(schema: SchemaRef, no_statistics: &[usize], no_dictionary: &[usize]) -> WriterProperties {
    let column = |i: usize| ColumnPath::from(schema.field(i).name().as_str());
    let mut props = table_defaults();
    for &i in no_statistics {
        props = props.set_column_statistics_enabled(column(i), EnabledStatistics::None);
    }
    for &i in no_dictionary {
        props = props.set_column_dictionary_enabled(column(i), false);
    }
    props.build()
}

fn table_properties(table: &str) -> &'static WriterProperties {
    if table == AD_METRICS_TABLE {
        ad_metrics_properties()
    } else {
        dead_letter_properties()
    }
}

/// What every output table is written with: zstd level 1, and `record_uuid` (every table has
/// one) without a dictionary or statistics. It is unique per row and uniformly spread: a
/// dictionary attempt on it is pure cost, and so are its min/max statistics (every page spans
/// nearly the whole range, so they prune nothing; a string comparison per row, ~2 % of
/// encoding's instructions).
fn table_defaults() -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("1 is a zstd level")))
        .set_column_statistics_enabled(ColumnPath::from(RECORD_UUID), EnabledStatistics::None)
        .set_column_dictionary_enabled(ColumnPath::from(RECORD_UUID), false)
}

fn encode(batch: RecordBatch, props: &WriterProperties) -> anyhow::Result<Vec<u8>> {
    let rows_per_group = props.max_row_group_row_count().unwrap_or(usize::MAX).max(1);
    let schema = batch.schema();
    let mut buf = Vec::new();
    // Columns are encoded and compressed in parallel (ArrowWriter does them one after the
    // other), then appended in order: the same bytes as ArrowWriter's. An hour's file was one
    // task of the output phase while the next hour's formatting was two; now the cores stay
    // busy.
    let (mut file, row_groups) = ArrowWriter::try_new(&mut buf, schema.clone(), Some(props.clone()))?.into_serialized_writer()?;
    let mut offset = 0;
    while offset < batch.num_rows() {
        let part = batch.slice(offset, rows_per_group.min(batch.num_rows() - offset));
        let mut leaves = Vec::with_capacity(part.num_columns());
        for (field, column) in schema.fields().iter().zip(part.columns()) {
            leaves.extend(compute_leaves(field, column)?);
        }
        let writers = row_groups.create_column_writers(file.flushed_row_groups().len())?;
        let chunks: Vec<ArrowColumnChunk> = writers
            .into_par_iter()
            .zip(leaves)
            .map(|(mut writer, leaf)| {
                writer.write(&leaf)?;
                writer.close()
            })
            .collect::<Result<_, ParquetError>>()?;
        let mut row_group = file.next_row_group()?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        offset += part.num_rows();
    }
    file.close()?;
    Ok(buf)
}

impl OutputSink for HiveParquetSink {
    fn write_metrics(&mut self, batch: RecordBatch) -> anyhow::Result<()> {
        // Ordered by window_start, so each hour's rows are one contiguous slice.
        let starts: &TimestampMillisecondArray = batch.column(ad_metrics_col::WINDOW_START).as_primitive();
        let starts = starts.values();
        let mut full = Vec::new();
        let mut from = 0;
        while from < starts.len() {
            let hour = floor_to(starts[from], HOUR_MS);
            let to = from + starts[from..].partition_point(|&s| s < hour + HOUR_MS);
            let buf = self.metrics.entry(hour).or_default();
            buf.push(batch.slice(from, to - from));
            if buf.iter().map(|b| b.num_rows()).sum::<usize>() >= FILE_ROWS {
                full.push(hour);
            }
            from = to;
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

    fn complete_before(&mut self, metrics_before: i64, dead_letters_before: i64) -> anyhow::Result<()> {
        // Partition h is complete once its whole hour is before the limit: h + 1 h <= limit.
        let done = |limit: i64| limit.saturating_sub(HOUR_MS - 1);
        let later_metrics = self.metrics.split_off(&done(metrics_before));
        let later_dead = self.dead.split_off(&done(dead_letters_before));
        let metrics = std::mem::replace(&mut self.metrics, later_metrics);
        let dead = std::mem::replace(&mut self.dead, later_dead);
        self.write_partitions(metrics, dead)
    }

    fn finish(&mut self) -> anyhow::Result<String> {
        self.complete_before(i64::MAX, i64::MAX)?;
        Ok(format!(
            "{} files under {} ({})",
            self.files,
            self.location.url,
            self.tables.iter().copied().collect::<Vec<_>>().join(", ")
        ))
    }
}

impl HiveParquetSink {
    fn write_partitions(&mut self, metrics: BTreeMap<i64, Vec<RecordBatch>>, dead: BTreeMap<i64, Vec<DeadLetter>>) -> anyhow::Result<()> {
        if metrics.is_empty() && dead.is_empty() {
            return Ok(());
        }
        // Partitions are independent: merge, encode and compress them in parallel.
        let encoded: Vec<(&'static str, i64, Vec<u8>)> = metrics
            .into_par_iter()
            .map(|(h, slices)| (AD_METRICS_TABLE, h, merge_sorted(slices)))
            .chain(dead.into_par_iter().map(|(h, rows)| (DLQ_TABLE, h, Ok(sorted_dead(rows)))))
            .map(|(t, h, batch)| batch.and_then(|b| encode(b, table_properties(t))).map(|bytes| (t, h, bytes)))
            .collect::<anyhow::Result<_>>()?;
        for (table, hour, bytes) in encoded {
            self.put_file(table, hour, bytes)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The dead-letter table's settings reach the file: no dictionary (nor, for the payload,
    /// statistics) on the columns whose values rarely repeat; a dictionary for `reason`.
    #[test]
    fn dead_letters_are_written_with_their_settings() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let rows: Vec<DeadLetter> = (0..1000)
            .map(|i| DeadLetter {
                record_uuid: crate::contract::record_uuid::dead_letter("ad-events", 0, i),
                topic: "ad-events".into(),
                partition: Some(0),
                offset: Some(i),
                kafka_timestamp: Some(1_767_225_600_000 + i),
                reason: "missing_field: ad_id".into(),
                payload: format!(r#"{{"event_id":"e{i}"}}"#),
            })
            .collect();
        let file = encode(sorted_dead(rows), table_properties(DLQ_TABLE)).unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(file)).unwrap();
        let group = reader.metadata().row_group(0);
        let column = |name: &str| group.columns().iter().find(|c| c.column_path().string() == name).unwrap();
        for name in ["record_uuid", "payload", "partition", "offset", "kafka_timestamp"] {
            assert_eq!(column(name).dictionary_page_offset(), None, "{name} has a dictionary");
        }
        assert!(column("reason").dictionary_page_offset().is_some());
        assert!(column("payload").statistics().is_none());
        assert!(column("offset").statistics().is_some());
    }

    proptest! {
        /// Merging gives every row once, in the order of a stable sort of all rows by key
        /// (ties in slice order), whether the heads are scanned or kept in a heap.
        #[test]
        fn merging_is_a_stable_sort_of_the_slices(
            mut slices in proptest::collection::vec(proptest::collection::vec(0u8..6, 0..30), 0..2 * SCANNED_SLICES + 2),
        ) {
            for s in &mut slices {
                s.sort();
            }
            let lens: Vec<usize> = slices.iter().map(Vec::len).collect();
            let merged = merge_order(&lens, |i, row| slices[i][row]);
            let mut expected: Vec<(usize, usize)> = lens.iter().enumerate().flat_map(|(i, &n)| (0..n).map(move |r| (i, r))).collect();
            expected.sort_by_key(|&(i, r)| slices[i][r]);
            prop_assert_eq!(merged, expected);
        }
    }
}
