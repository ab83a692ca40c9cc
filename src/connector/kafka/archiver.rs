//! The archiver of contract §3: a topic, read_committed, into Parquet files in the Hive layout
//! by ingest hour, with the Kafka metadata columns.
//!
//! Files are named `p<partition>-<first offset>-<last offset>.parquet`, so the archive itself
//! records how far each partition was archived: a restarted archiver lists it and resumes
//! after the highest offset per partition, and needs no other state. A crash between writing a
//! file and the next one repeats nothing; a crash while writing one leaves no file.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use futures::TryStreamExt;
use tokio::runtime::Handle;

use super::reader::TopicReader;
use crate::connector::archive::write_archive_file;
use crate::connector::store::Location;
use crate::contract::format::Format;
use crate::contract::time::{floor_to, HOUR_MS};
use crate::runtime::stream::driver::Source;

#[derive(Debug, Default)]
pub struct ArchiveSummary {
    pub messages: u64,
    pub rows: u64,
    pub files: u64,
}

/// Where each partition's archiving resumes, from the file names already in the archive
/// (the topic is the reader's input 0).
pub fn archived_positions(location: &Location, topic: &str, rt: &Handle) -> anyhow::Result<BTreeMap<Source, i64>> {
    let dir = location.child(topic);
    let files: Vec<_> = rt
        .block_on(location.store.list(Some(&dir)).try_collect::<Vec<_>>())
        .with_context(|| format!("cannot list {}/{topic}", location.url))?;
    let mut out = BTreeMap::new();
    for f in files {
        let Some((p, last)) = f.location.filename().and_then(parse_name) else { continue };
        let e = out.entry(Source::new(0, p)).or_insert(last + 1);
        *e = (*e).max(last + 1);
    }
    Ok(out)
}

fn parse_name(name: &str) -> Option<(i32, i64)> {
    let rest = name.strip_prefix('p')?.strip_suffix(".parquet")?;
    let mut it = rest.split('-');
    let p = it.next()?.parse().ok()?;
    let _first: i64 = it.next()?.parse().ok()?;
    let last = it.next()?.parse().ok()?;
    Some((p, last))
}

/// How often the archiver looks for partitions added to its topic.
const PARTITION_DISCOVERY: Duration = Duration::from_secs(30);

/// Archives the reader's one topic, of `format`, until caught up (every partition at its end),
/// or forever, flushing files every `flush_every`. Partitions added to the topic meanwhile are
/// archived too, from their beginning (or where an earlier run stopped).
pub fn run(
    reader: &mut TopicReader,
    format: Format,
    location: &Location,
    rt: &Handle,
    until_caught_up: bool,
    flush_every: Duration,
    metrics: Option<&crate::runtime::metrics::Metrics>,
) -> anyhow::Result<ArchiveSummary> {
    let topic = reader.topic(0).to_string();
    let topic = topic.as_str();
    let start = archived_positions(location, topic, rt)?;
    // What retention deleted before it was archived is logged by the reader: gone from
    // Kafka, nothing can archive it any more.
    reader.seek(&start)?;
    if let Some(m) = metrics {
        m.set_ready(true);
    }
    let mut summary = ArchiveSummary::default();
    let mut buffered: Vec<RecordBatch> = Vec::new();
    let mut last_flush = Instant::now();
    let mut last_discovery = Instant::now();
    loop {
        if last_discovery.elapsed() >= PARTITION_DISCOVERY {
            last_discovery = Instant::now();
            discover(reader, &start);
        }
        for (_, got) in reader.poll(50_000, Duration::from_millis(200))? {
            summary.messages += got.num_rows() as u64;
            if let Some(m) = metrics {
                m.messages_read.inc_by(got.num_rows() as u64);
            }
            buffered.push(got);
        }
        if let Some(m) = metrics {
            m.beat();
            m.sample_lag(|| reader.lag());
        }
        // Caught up with the partitions it reads, and no partition added since the last look.
        let done = until_caught_up && reader.caught_up() && !discover(reader, &start);
        let buffered_rows: usize = buffered.iter().map(RecordBatch::num_rows).sum();
        if done || last_flush.elapsed() >= flush_every || buffered_rows >= 1_000_000 {
            let (t, rows_before) = (Instant::now(), summary.rows);
            flush(&mut buffered, format, location, topic, rt, &mut summary)?;
            last_flush = Instant::now();
            if let Some(m) = metrics {
                m.written(topic, summary.rows - rows_before);
                m.checkpointed(t.elapsed(), None);
            }
        }
        if done {
            return Ok(summary);
        }
    }
}

/// Starts reading partitions added to the topic since the last look; whether there were any.
/// A failed metadata request is only logged: the next look repeats it.
fn discover(reader: &mut TopicReader, archived: &BTreeMap<Source, i64>) -> bool {
    let found = reader.unread_partitions().and_then(|new| {
        if !new.is_empty() {
            let partitions: Vec<i32> = new.iter().map(|s| s.partition).collect();
            tracing::info!("partitions {partitions:?} were added to {:?}: archiving them", reader.topic(0));
            reader.add_partitions(&new, archived)?;
        }
        Ok(!new.is_empty())
    });
    found.unwrap_or_else(|e| {
        tracing::warn!("looking for new partitions: {e:#}");
        false
    })
}

fn flush(
    buffered: &mut Vec<RecordBatch>,
    format: Format,
    location: &Location,
    topic: &str,
    rt: &Handle,
    summary: &mut ArchiveSummary,
) -> anyhow::Result<()> {
    let polled = arrow::compute::concat_batches(&format.canonical_schema(), buffered.iter())?;
    buffered.clear();
    if polled.num_rows() == 0 {
        return Ok(());
    }
    let meta = format.meta_columns();
    let parts = polled.column(meta.partition).as_primitive::<Int32Type>();
    let offsets = polled.column(meta.offset).as_primitive::<Int64Type>();
    let mut by_partition: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
    for r in 0..polled.num_rows() {
        by_partition.entry(parts.value(r)).or_default().push(r as u32);
    }
    for (p, ix) in by_partition {
        // A file is named by the offsets it covers, not-JSON messages (which have no row in
        // the archive) included: that is how a restarted archiver knows where it stopped.
        let (first, last) = (offsets.value(ix[0] as usize), offsets.value(ix[ix.len() - 1] as usize));
        let msgs = arrow::compute::take_record_batch(&polled, &arrow::array::UInt32Array::from(ix))?;
        let rows = format.to_archive_rows(&msgs);
        for (hour, batch) in split_by_hour(&rows, meta.timestamp) {
            write_archive_file(location, rt, topic, hour, &format!("p{p}-{first}-{last}.parquet"), &batch)?;
            summary.files += 1;
            summary.rows += batch.num_rows() as u64;
        }
    }
    Ok(())
}

/// `timestamp`: the Kafka timestamp column (an archive row has the canonical columns' positions
/// up to the in-memory extras).
fn split_by_hour(rows: &RecordBatch, timestamp: usize) -> Vec<(i64, RecordBatch)> {
    let ts = rows.column(timestamp).as_primitive::<TimestampMillisecondType>();
    let mut idx: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for r in 0..rows.num_rows() {
        idx.entry(floor_to(ts.value(r), HOUR_MS)).or_default().push(r as u32);
    }
    idx.into_iter()
        .map(|(h, ix)| (h, arrow::compute::take_record_batch(rows, &arrow::array::UInt32Array::from(ix)).expect("in range")))
        .collect()
}
