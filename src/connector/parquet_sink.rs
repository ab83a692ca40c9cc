//! Output tables in the Hive layout: `<root>/<table>/dt=…/hr=…/data.parquet`.
//!
//! A job's tables are partitioned by their event-time hour (`ad-metrics` by the window's start,
//! `attributed-orders` by `order_time`), `dlq` by ingest hour (a rejected message may have no
//! event time). Each partition is one file, replaced as a whole when the run's rows of that
//! hour are complete (connector::hive_overwrite: atomic per partition, INSERT OVERWRITE of the
//! hours the range covers), so re-running a backfill, or restating part of an earlier run's
//! range, replaces output instead of adding to it. A partition's rows wait in memory until
//! the watermark completes its hour, then are merged into the table's order and written once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use arrow::array::{AsArray, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::SchemaRef;
use object_store::path::Path;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk};
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;
use tokio::runtime::Handle;

use super::archive::ParquetArchive;
use super::hive_overwrite::{self, Manifest, Owned, Replaced, RunInfo};
use super::store::Location;
use crate::contract::attributed_orders;
use crate::contract::columns::{DLQ_TABLE, RECORD_UUID};
use crate::contract::format::Format;
use crate::contract::outputs::{ad_metrics_col, ad_metrics_schema, dead_letter_batch, dead_letter_col, dead_letter_schema, DeadLetter};
use crate::contract::table::{OutputTable, TableKind};
use crate::contract::time::{floor_to, hive_hour_dir, HOUR_MS};
use crate::runtime::backfill::{ArchiveSource, OutputSink};

/// Where rows go: a job's output table, or the dead letters of one source topic (an index into
/// the sink's dead-letter topics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dest {
    Table(usize),
    DeadLetters(usize),
}

pub struct HiveParquetSink {
    location: Location,
    rt: Handle,
    run: RunInfo,
    tables: Vec<OutputTable>,
    /// The source topics whose dead letters this run writes (the inputs that have them).
    dead_letter_topics: Vec<String>,
    /// Per table, per partition hour: slices, each sorted as the table is.
    buffers: Vec<BTreeMap<i64, Vec<RecordBatch>>>,
    dead: BTreeMap<i64, Vec<DeadLetter>>,
    /// What this run replaced, for its manifest.
    replaced: Vec<Replaced>,
    written: BTreeSet<(Dest, i64)>,
}

impl HiveParquetSink {
    /// `tables` are the job's output tables, `dead_letter_topics` the inputs it dead-letters.
    /// Writes the run's manifest (status `running`) first, so an unwritable sink fails before
    /// any work.
    pub fn new(location: Location, rt: Handle, run: RunInfo, tables: Vec<OutputTable>, dead_letter_topics: Vec<String>) -> anyhow::Result<Self> {
        let buffers = tables.iter().map(|_| BTreeMap::new()).collect();
        let sink =
            Self { location, rt, run, tables, dead_letter_topics, buffers, dead: BTreeMap::new(), replaced: Vec::new(), written: BTreeSet::new() };
        sink.manifest("running", None)?;
        Ok(sink)
    }

    fn manifest(&self, status: &str, detail: Option<String>) -> anyhow::Result<()> {
        let manifest = Manifest { run: &self.run, range: self.run.range(), status, detail, partitions: &self.replaced };
        hive_overwrite::write_manifest(&self.location, &self.rt, &manifest)
    }

    fn name(&self, dest: Dest) -> String {
        match dest {
            Dest::Table(t) => self.tables[t].name.clone(),
            Dest::DeadLetters(_) => DLQ_TABLE.to_string(),
        }
    }

    fn order(&self, dest: Dest) -> Order {
        match dest {
            Dest::Table(t) => Order::Table(self.tables[t].kind),
            Dest::DeadLetters(_) => Order::DeadLetters,
        }
    }

    /// Calls `f` with the files `dest` owns in a partition (see [`Owned`]).
    fn with_owned<T>(&self, dest: Dest, f: impl FnOnce(&Owned) -> T) -> T {
        let prefix = format!("{}-", self.run.file_prefix);
        match dest {
            Dest::Table(_) => f(&Owned { file: hive_overwrite::DATA_FILE.to_string(), earlier: &|_: &str| true, topic: None }),
            Dest::DeadLetters(i) => {
                let topic = self.dead_letter_topics[i].as_str();
                f(&Owned { file: format!("{topic}.parquet"), earlier: &|name: &str| name.starts_with(&prefix), topic: Some(topic) })
            }
        }
    }

    fn dests(&self) -> Vec<Dest> {
        (0..self.tables.len()).map(Dest::Table).chain((0..self.dead_letter_topics.len()).map(Dest::DeadLetters)).collect()
    }

    fn dir(&self, dest: Dest, hour: i64) -> Path {
        self.location.child(&format!("{}/{}", self.name(dest), hive_hour_dir(hour)))
    }

    /// The rows of the partition's current file that the range does not cover, if it covers
    /// the hour only in part.
    fn carried(&self, dest: Dest, hour: i64) -> anyhow::Result<Vec<RecordBatch>> {
        if self.run.covers(hour) {
            return Ok(Vec::new());
        }
        let (dir, order) = (self.dir(dest, hour), self.order(dest));
        self.with_owned(dest, |owned| {
            hive_overwrite::carried_rows(&self.location, &self.rt, &dir, owned, &order.schema(), order.time_column(), self.run.from, self.run.to)
        })
    }

    fn put_partition(&mut self, dest: Dest, hour: i64, rows: usize, carried: usize, bytes: Option<Vec<u8>>) -> anyhow::Result<()> {
        let dir = self.dir(dest, hour);
        let removed = self.with_owned(dest, |owned| match bytes {
            Some(bytes) => hive_overwrite::replace(&self.location, &self.rt, &dir, owned, bytes),
            None => hive_overwrite::empty(&self.location, &self.rt, &dir, owned),
        })?;
        let table = match dest {
            Dest::Table(_) => self.name(dest),
            Dest::DeadLetters(i) => format!("{DLQ_TABLE} ({})", self.dead_letter_topics[i]),
        };
        self.written.insert((dest, hour));
        self.replaced.push(Replaced { table, partition: hive_hour_dir(hour), rows, carried, removed });
        Ok(())
    }

    /// Partitions in the range that hold earlier output and got no rows of this run: emptied,
    /// but for rows outside the range, which stay (INSERT OVERWRITE of the range's hours).
    /// Only the range's days are listed, as a backfill lists an archive's.
    fn empty_the_rest(&mut self) -> anyhow::Result<()> {
        let mut stale = Vec::new();
        for dest in self.dests() {
            let listing = ParquetArchive::new(self.location.clone(), &self.name(dest), Format::Records, self.rt.clone());
            for partition in listing.hours(floor_to(self.run.from, HOUR_MS), self.run.to)? {
                let held = self.with_owned(dest, |owned| {
                    partition.files.iter().any(|f| f.path.rsplit('/').next().is_some_and(|name| owned.owns(name)))
                });
                if held && !self.written.contains(&(dest, partition.hour)) {
                    stale.push((dest, partition.hour, Rows::Sorted(Vec::new())));
                }
            }
        }
        self.write_partitions(stale)
    }

}

/// A complete partition's new rows: a table's sorted slices, or dead letters not yet sorted.
enum Rows {
    Sorted(Vec<RecordBatch>),
    Dead(Vec<DeadLetter>),
}

/// What a file holds: a table of a kind, or dead letters. It decides the file's schema, the
/// column that places a row in its hour, the rows' order and the writer's settings.
#[derive(Debug, Clone, Copy)]
enum Order {
    Table(TableKind),
    DeadLetters,
}

impl Order {
    fn schema(self) -> SchemaRef {
        match self {
            Order::Table(kind) => kind.schema(),
            Order::DeadLetters => dead_letter_schema(),
        }
    }

    fn time_column(self) -> usize {
        match self {
            Order::Table(kind) => kind.partition_column(),
            Order::DeadLetters => dead_letter_col::KAFKA_TIMESTAMP,
        }
    }

    fn properties(self) -> &'static WriterProperties {
        match self {
            Order::Table(kind) => table_properties(kind),
            Order::DeadLetters => dead_letter_properties(),
        }
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

/// (partition, offset) of each row: the order of a dead-letter file.
struct DeadOrder<'a> {
    partition: &'a Int32Array,
    offset: &'a Int64Array,
}

impl<'a> DeadOrder<'a> {
    fn new(b: &'a RecordBatch) -> Self {
        Self { partition: b.column(dead_letter_col::PARTITION).as_primitive(), offset: b.column(dead_letter_col::OFFSET).as_primitive() }
    }

    fn key(&self, row: usize) -> (Option<i32>, Option<i64>) {
        use arrow::array::Array;
        ((!self.partition.is_null(row)).then(|| self.partition.value(row)), (!self.offset.is_null(row)).then(|| self.offset.value(row)))
    }
}

/// Merges slices that are each sorted as the table is into one batch in that order, so a
/// file's content does not depend on parallelism or on how the rows arrived.
fn merge_sorted(order: Order, slices: Vec<RecordBatch>) -> anyhow::Result<RecordBatch> {
    if slices.len() == 1 {
        return Ok(slices.into_iter().next().expect("one slice"));
    }
    let lens: Vec<usize> = slices.iter().map(|b| b.num_rows()).collect();
    let indices = match order {
        Order::DeadLetters => {
            let orders: Vec<DeadOrder> = slices.iter().map(DeadOrder::new).collect();
            merge_order(&lens, |i, row| orders[i].key(row))
        }
        Order::Table(TableKind::AdMetrics) => {
            let orders: Vec<MetricOrder> = slices.iter().map(MetricOrder::new).collect();
            merge_order(&lens, |i, row| orders[i].key(row))
        }
        Order::Table(TableKind::AttributedOrders) => {
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

/// One Parquet file of `batch`, its row groups' columns encoded in parallel, with `footer`
/// as key-value metadata (the run that wrote it).
fn encode(batch: RecordBatch, props: &WriterProperties, footer: &[(String, String)]) -> anyhow::Result<Vec<u8>> {
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
    for (k, v) in footer {
        file.append_key_value_metadata(KeyValue::new(k.clone(), v.clone()));
    }
    file.close()?;
    Ok(buf)
}

impl OutputSink for HiveParquetSink {
    fn write(&mut self, table: usize, batch: RecordBatch) -> anyhow::Result<()> {
        let times: &TimestampMillisecondArray = batch.column(self.tables[table].kind.partition_column()).as_primitive();
        let times = times.values();
        let mut from = 0;
        while from < times.len() {
            let hour = floor_to(times[from], HOUR_MS);
            let to = from + times[from..].partition_point(|&s| s < hour + HOUR_MS);
            self.buffers[table].entry(hour).or_default().push(batch.slice(from, to - from));
            from = to;
        }
        Ok(())
    }

    fn write_dead_letters(&mut self, records: Vec<DeadLetter>) -> anyhow::Result<()> {
        for r in records {
            self.dead.entry(floor_to(r.kafka_timestamp.unwrap_or(0), HOUR_MS)).or_default().push(r);
        }
        Ok(())
    }

    fn complete_before(&mut self, records_before: i64, dead_letters_before: i64) -> anyhow::Result<()> {
        let done = |limit: i64| limit.saturating_sub(HOUR_MS - 1);
        let mut complete: Vec<(Dest, i64, Rows)> = Vec::new();
        for (t, buffer) in self.buffers.iter_mut().enumerate() {
            let later = buffer.split_off(&done(records_before));
            complete.extend(std::mem::replace(buffer, later).into_iter().map(|(h, slices)| (Dest::Table(t), h, Rows::Sorted(slices))));
        }
        let later_dead = self.dead.split_off(&done(dead_letters_before));
        let dead = std::mem::replace(&mut self.dead, later_dead);
        for (hour, rows) in dead {
            let mut by_topic: BTreeMap<usize, Vec<DeadLetter>> = BTreeMap::new();
            for d in rows {
                let i = self.dead_letter_topics.iter().position(|t| **t == *d.topic).ok_or_else(|| {
                    anyhow::anyhow!("a dead letter of topic {}, which is not among this run's inputs {:?}", d.topic, self.dead_letter_topics)
                })?;
                by_topic.entry(i).or_default().push(d);
            }
            complete.extend(by_topic.into_iter().map(|(i, rows)| (Dest::DeadLetters(i), hour, Rows::Dead(rows))));
        }
        self.write_partitions(complete)
    }

    fn finish(&mut self) -> anyhow::Result<String> {
        self.complete_before(i64::MAX, i64::MAX)?;
        self.empty_the_rest()?;
        self.manifest("complete", None)?;
        let files = self.replaced.iter().filter(|r| r.rows + r.carried > 0).count();
        let emptied = self.replaced.len() - files;
        let carried: usize = self.replaced.iter().map(|r| r.carried).sum();
        let tables: BTreeSet<&str> = self.replaced.iter().map(|r| r.table.as_str()).collect();
        let mut text = format!("{files} partitions replaced under {} ({})", self.location.url, tables.into_iter().collect::<Vec<_>>().join(", "));
        if emptied > 0 {
            text.push_str(&format!(", {emptied} emptied"));
        }
        if carried > 0 {
            text.push_str(&format!(", {carried} rows outside the range kept"));
        }
        text.push_str(&format!("; manifest {}/{}.json", hive_overwrite::RUNS_DIR, self.run.id));
        Ok(text)
    }

    fn abandon(&mut self, status: &str, detail: &str) {
        if let Err(e) = self.manifest(status, Some(detail.to_string())) {
            tracing::warn!("{e:#}");
        }
    }
}

impl HiveParquetSink {
    /// Writes complete partitions: each merged with the rows it keeps from its current file (if
    /// the range covers it in part), encoded (in parallel), and put as the partition's one file;
    /// a partition left with no rows at all is emptied.
    fn write_partitions(&mut self, partitions: Vec<(Dest, i64, Rows)>) -> anyhow::Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        let mut work = Vec::with_capacity(partitions.len());
        for (dest, hour, rows) in partitions {
            let n = match &rows {
                Rows::Sorted(slices) => slices.iter().map(RecordBatch::num_rows).sum(),
                Rows::Dead(d) => d.len(),
            };
            let carried = self.carried(dest, hour)?;
            let kept: usize = carried.iter().map(RecordBatch::num_rows).sum();
            work.push((dest, hour, n, kept, rows, carried, self.order(dest)));
        }
        let footer = self.run.footer();
        let encoded: Vec<_> = work
            .into_par_iter()
            .map(|(dest, hour, rows, kept, new, carried, order)| {
                if rows + kept == 0 {
                    return Ok((dest, hour, 0, 0, None));
                }
                // Dead letters are sorted here, on the pool, as the tables' slices are merged.
                let mut slices = match new {
                    Rows::Sorted(slices) => slices,
                    Rows::Dead(d) => vec![sorted_dead(d)],
                };
                slices.extend(carried);
                let bytes = encode(merge_sorted(order, slices)?, order.properties(), &footer)?;
                Ok((dest, hour, rows, kept, Some(bytes)))
            })
            .collect::<anyhow::Result<_>>()?;
        for (dest, hour, rows, kept, bytes) in encoded {
            self.put_partition(dest, hour, rows, kept, bytes)?;
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
        let file = encode(sorted_dead(rows), dead_letter_properties(), &[]).unwrap();
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

    /// A run replaces the partitions its range touches: hours it has no rows for are emptied,
    /// and an hour it covers in part keeps the rows outside the range, rewritten as one file.
    #[test]
    fn a_run_overwrites_the_hours_of_its_range_and_keeps_rows_outside_it() {
        use crate::contract::outputs::{ad_metrics_batch, AdMetric};
        use crate::core::job::OutputRecord;
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let location = crate::connector::store::open(dir.path().to_str().unwrap(), &[], true).unwrap();
        const H: i64 = HOUR_MS;
        let metric = |start: i64, impressions: i64| AdMetric {
            record_uuid: crate::contract::record_uuid::ad_metric("r", "ad", start),
            region: "r".into(),
            ad_id: "ad".into(),
            campaign_id: None,
            advertiser_id: None,
            window_start: start,
            window_end: start + 60_000,
            impressions,
            clicks: 0,
        };
        let run = |from: i64, to: i64, rows: &[AdMetric]| {
            let info = RunInfo {
                id: format!("test-{from}-{to}"),
                job: "aggregation".into(),
                mode: "default".into(),
                from,
                to,
                job_file_sha256: String::new(),
                file_prefix: "backfill".into(),
            };
            let tables = vec![OutputTable { name: "ad-metrics".into(), kind: TableKind::AdMetrics }];
            let mut sink = HiveParquetSink::new(location.clone(), rt.handle().clone(), info, tables, vec!["ad-events".into()]).unwrap();
            if !rows.is_empty() {
                sink.write(0, ad_metrics_batch(rows)).unwrap();
            }
            sink.finish().unwrap()
        };
        let read = |hour: i64| -> Option<Vec<(i64, i64)>> {
            let f = dir.path().join("ad-metrics").join(hive_hour_dir(hour)).join(hive_overwrite::DATA_FILE);
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).ok()?).unwrap().build().unwrap();
            Some(reader.flat_map(|b| AdMetric::from_batch(0, &b.unwrap()).unwrap()).map(|m| (m.window_start, m.impressions)).collect())
        };
        run(0, 2 * H, &[metric(0, 1), metric(40 * 60_000, 2), metric(H, 3)]);
        assert_eq!((read(0), read(H)), (Some(vec![(0, 1), (40 * 60_000, 2)]), Some(vec![(H, 3)])));
        // [0:30, 2:00) with one window of hour 0 and none of hour 1: hour 1 is emptied, hour 0
        // keeps its 0:00 window and takes the new 0:40 value.
        let said = run(30 * 60_000, 2 * H, &[metric(40 * 60_000, 5)]);
        assert_eq!(read(0), Some(vec![(0, 1), (40 * 60_000, 5)]));
        assert_eq!(read(H), None, "{said}");
        assert!(said.contains("1 emptied") && said.contains("1 rows outside the range kept"), "{said}");
        // [0:30, 1:00) with nothing: hour 0 keeps only its rows outside the range.
        run(30 * 60_000, H, &[]);
        assert_eq!(read(0), Some(vec![(0, 1)]));
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
