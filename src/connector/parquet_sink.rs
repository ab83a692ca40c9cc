//! Output tables in the Hive layout: `<root>/<table>/dt=…/hr=…/<run>-<n>.parquet`.
//!
//! A job's tables are partitioned by their event-time hour (`ad-metrics` by the window's start,
//! `attributed-orders` by `order_time`), `dlq` by ingest hour (a rejected message may have no
//! event time). File names are derived from the run (job and backfilled range), and a run first
//! removes its own earlier files from each partition it writes, so re-running a backfill
//! replaces its output instead of adding to it.

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
use crate::contract::attributed_orders;
use crate::contract::columns::{DLQ_TABLE, RECORD_UUID};
use crate::contract::outputs::{ad_metrics_col, ad_metrics_schema, dead_letter_batch, dead_letter_col, dead_letter_schema, DeadLetter};
use crate::contract::table::{OutputTable, TableKind};
use crate::contract::time::{floor_to, hive_hour_dir, HOUR_MS};
use crate::runtime::backfill::OutputSink;

/// Rows buffered per partition before a file is written.
const FILE_ROWS: usize = 1 << 20;

/// Where rows go: a job's output table, or the dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dest {
    Table(usize),
    DeadLetters,
}

pub struct HiveParquetSink {
    location: Location,
    rt: Handle,
    run: String,
    tables: Vec<OutputTable>,
    /// Per table, per partition hour: slices, each sorted as the table is.
    buffers: Vec<BTreeMap<i64, Vec<RecordBatch>>>,
    dead: BTreeMap<i64, Vec<DeadLetter>>,
    /// Partitions already cleared of this run's earlier files, with the next file number.
    seq: BTreeMap<(String, i64), usize>,
    files: usize,
    written: BTreeSet<String>,
}

impl HiveParquetSink {
    /// `run` names this run's files, e.g. `backfill-20260101T0000Z-20260102T0000Z` (`Job::FILE_PREFIX`);
    /// `tables` are the job's output tables.
    pub fn new(location: Location, rt: Handle, run: String, tables: Vec<OutputTable>) -> Self {
        let buffers = tables.iter().map(|_| BTreeMap::new()).collect();
        Self { location, rt, run, tables, buffers, dead: BTreeMap::new(), seq: BTreeMap::new(), files: 0, written: BTreeSet::new() }
    }

    fn name(&self, dest: Dest) -> String {
        match dest {
            Dest::Table(t) => self.tables[t].name.clone(),
            Dest::DeadLetters => DLQ_TABLE.to_string(),
        }
    }

    fn properties(&self, dest: Dest) -> &'static WriterProperties {
        match dest {
            Dest::Table(t) => table_properties(self.tables[t].kind),
            Dest::DeadLetters => dead_letter_properties(),
        }
    }

    fn write_file(&mut self, dest: Dest, hour: i64, batch: RecordBatch) -> anyhow::Result<()> {
        let bytes = encode(batch, self.properties(dest))?;
        self.put_file(dest, hour, bytes)
    }

    fn put_file(&mut self, dest: Dest, hour: i64, bytes: Vec<u8>) -> anyhow::Result<()> {
        let table = self.name(dest);
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
        self.written.insert(table);
        Ok(())
    }

    fn flush_table(&mut self, table: usize, hour: i64) -> anyhow::Result<()> {
        if let Some(slices) = self.buffers[table].remove(&hour) {
            let kind = self.tables[table].kind;
            self.write_file(Dest::Table(table), hour, merge_sorted(kind, slices)?)?;
        }
        Ok(())
    }

    fn flush_dead(&mut self, hour: i64) -> anyhow::Result<()> {
        if let Some(rows) = self.dead.remove(&hour) {
            self.write_file(Dest::DeadLetters, hour, sorted_dead(rows))?;
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

/// (order_time, order_id) of each row: the order of an attributed-orders file.
struct OrderOrder<'a> {
    time: &'a TimestampMillisecondArray,
    order_id: &'a StringArray,
}

impl<'a> OrderOrder<'a> {
    fn new(b: &'a RecordBatch) -> Self {
        Self { time: b.column(attributed_orders::col::ORDER_TIME).as_primitive(), order_id: b.column(attributed_orders::col::ORDER_ID).as_string() }
    }

    fn key(&self, row: usize) -> (i64, &'a str) {
        (self.time.value(row), self.order_id.value(row))
    }
}

/// Merges slices that are each sorted as the table is into one batch in that order, so a
/// file's content does not depend on parallelism or on how the rows arrived.
fn merge_sorted(kind: TableKind, slices: Vec<RecordBatch>) -> anyhow::Result<RecordBatch> {
    if slices.len() == 1 {
        return Ok(slices.into_iter().next().expect("one slice"));
    }
    let lens: Vec<usize> = slices.iter().map(|b| b.num_rows()).collect();
    let indices = match kind {
        TableKind::AdMetrics => {
            let orders: Vec<MetricOrder> = slices.iter().map(MetricOrder::new).collect();
            merge_order(&lens, |i, row| orders[i].key(row))
        }
        TableKind::AttributedOrders => {
            let orders: Vec<OrderOrder> = slices.iter().map(OrderOrder::new).collect();
            merge_order(&lens, |i, row| orders[i].key(row))
        }
    };
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

/// Writer settings of the `attributed-orders` table: the common ones ([`table_defaults`]),
/// no min/max statistics on the ids of orders, users and events (unique or nearly so per row:
/// a page's range spans the id space and prunes nothing) and no dictionary for them.
fn attributed_orders_properties() -> &'static WriterProperties {
    static PROPERTIES: LazyLock<WriterProperties> = LazyLock::new(|| {
        use attributed_orders::col as c;
        let unique = [c::ORDER_ID, c::USER_ID, c::ATTRIBUTED_EVENT_ID];
        table_settings(attributed_orders::schema(), &unique, &unique)
    });
    &PROPERTIES
}

fn table_properties(kind: TableKind) -> &'static WriterProperties {
    match kind {
        TableKind::AdMetrics => ad_metrics_properties(),
        TableKind::AttributedOrders => attributed_orders_properties(),
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
    fn write(&mut self, table: usize, batch: RecordBatch) -> anyhow::Result<()> {
        // Sorted by the partition time first, so each hour's rows are one contiguous slice.
        let times: &TimestampMillisecondArray = batch.column(self.tables[table].kind.partition_column()).as_primitive();
        let times = times.values();
        let mut full = Vec::new();
        let mut from = 0;
        while from < times.len() {
            let hour = floor_to(times[from], HOUR_MS);
            let to = from + times[from..].partition_point(|&s| s < hour + HOUR_MS);
            let buf = self.buffers[table].entry(hour).or_default();
            buf.push(batch.slice(from, to - from));
            if buf.iter().map(|b| b.num_rows()).sum::<usize>() >= FILE_ROWS {
                full.push(hour);
            }
            from = to;
        }
        for h in full {
            self.flush_table(table, h)?;
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

    fn complete_before(&mut self, records_before: i64, dead_letters_before: i64) -> anyhow::Result<()> {
        // Partition h is complete once its whole hour is before the limit: h + 1 h <= limit.
        let done = |limit: i64| limit.saturating_sub(HOUR_MS - 1);
        let mut complete: Vec<(Dest, i64, Vec<RecordBatch>)> = Vec::new();
        for (t, buffer) in self.buffers.iter_mut().enumerate() {
            let later = buffer.split_off(&done(records_before));
            complete.extend(std::mem::replace(buffer, later).into_iter().map(|(h, slices)| (Dest::Table(t), h, slices)));
        }
        let later_dead = self.dead.split_off(&done(dead_letters_before));
        let dead = std::mem::replace(&mut self.dead, later_dead);
        self.write_partitions(complete, dead)
    }

    fn finish(&mut self) -> anyhow::Result<String> {
        self.complete_before(i64::MAX, i64::MAX)?;
        Ok(format!("{} files under {} ({})", self.files, self.location.url, self.written.iter().cloned().collect::<Vec<_>>().join(", ")))
    }
}

impl HiveParquetSink {
    fn write_partitions(&mut self, tables: Vec<(Dest, i64, Vec<RecordBatch>)>, dead: BTreeMap<i64, Vec<DeadLetter>>) -> anyhow::Result<()> {
        if tables.is_empty() && dead.is_empty() {
            return Ok(());
        }
        let kinds: Vec<TableKind> = self.tables.iter().map(|t| t.kind).collect();
        // Partitions are independent: merge, encode and compress them in parallel.
        let encoded: Vec<(Dest, i64, Vec<u8>)> = tables
            .into_par_iter()
            .map(|(dest, h, slices)| {
                let Dest::Table(t) = dest else { unreachable!("tables only") };
                (dest, h, merge_sorted(kinds[t], slices))
            })
            .chain(dead.into_par_iter().map(|(h, rows)| (Dest::DeadLetters, h, Ok(sorted_dead(rows)))))
            .map(|(dest, h, batch)| {
                let props = match dest {
                    Dest::Table(t) => table_properties(kinds[t]),
                    Dest::DeadLetters => dead_letter_properties(),
                };
                batch.and_then(|b| encode(b, props)).map(|bytes| (dest, h, bytes))
            })
            .collect::<anyhow::Result<_>>()?;
        for (dest, hour, bytes) in encoded {
            self.put_file(dest, hour, bytes)?;
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
        let file = encode(sorted_dead(rows), dead_letter_properties()).unwrap();
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
