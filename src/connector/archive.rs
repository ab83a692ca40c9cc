//! The Parquet archive of a topic (contract §3): `<root>/<topic>/dt=YYYY-MM-DD/hr=HH/*.parquet`,
//! in the topic's format.

use std::sync::Arc;

use anyhow::Context;
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{GetResult, GetResultPayload, ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::{ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowFilter as ParquetRowFilter};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use tokio::runtime::Handle;

use super::store::Location;
use crate::contract::columns as c;
use crate::contract::format::Format;
use crate::contract::time::{hive_hour_dir, parse_hive_date, parse_hive_hour, DAY_MS};
use crate::core::job::RowFilter;
use crate::runtime::backfill::{ArchiveFile, ArchiveSource, FileRows, HourPartition};

/// Rows per decoded batch: large enough to amortize per-batch work, small enough for cache.
const BATCH_ROWS: usize = 256 * 1024;

pub struct ParquetArchive {
    location: Location,
    topic: String,
    format: Format,
    rt: Handle,
}

impl ParquetArchive {
    pub fn new(location: Location, topic: &str, format: Format, rt: Handle) -> Self {
        Self { location, topic: topic.to_string(), format, rt }
    }

    fn topic_dir(&self) -> Path {
        self.location.child(&self.topic)
    }

    fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.location.store
    }

    /// `dt=` directories with their day start, ascending.
    fn days(&self) -> anyhow::Result<Vec<(i64, Path)>> {
        let dir = self.topic_dir();
        let listing = self
            .rt
            .block_on(self.store().list_with_delimiter(Some(&dir)))
            .with_context(|| format!("cannot list {}/{}", self.location.url, self.topic))?;
        let mut days: Vec<(i64, Path)> = listing
            .common_prefixes
            .into_iter()
            .filter_map(|p| {
                let name = p.filename()?.to_string();
                Some((parse_hive_date(&name)?, p))
            })
            .collect();
        days.sort_by_key(|d| d.0);
        Ok(days)
    }

    fn hours_of_day(&self, day: &Path) -> anyhow::Result<Vec<(i64, Path)>> {
        let listing = self
            .rt
            .block_on(self.store().list_with_delimiter(Some(day)))
            .with_context(|| format!("cannot list {day}"))?;
        let dt = day.filename().unwrap_or_default().to_string();
        let mut hours: Vec<(i64, Path)> = listing
            .common_prefixes
            .into_iter()
            .filter_map(|p| {
                let hr = p.filename()?.to_string();
                Some((parse_hive_hour(&dt, &hr)?, p))
            })
            .collect();
        hours.sort_by_key(|h| h.0);
        Ok(hours)
    }
}

impl ArchiveSource for ParquetArchive {
    fn describe(&self) -> String {
        format!("{}/{}", self.location.url.trim_end_matches('/'), self.topic)
    }

    fn format(&self) -> Format {
        self.format
    }

    fn hours(&self, from: i64, to: i64) -> anyhow::Result<Vec<HourPartition>> {
        let mut out = Vec::new();
        for (day, day_path) in self.days()? {
            if day + DAY_MS <= from || day >= to {
                continue;
            }
            for (hour, hour_path) in self.hours_of_day(&day_path)? {
                if hour < from || hour >= to {
                    continue;
                }
                let metas: Vec<_> = self
                    .rt
                    .block_on(self.store().list(Some(&hour_path)).try_collect::<Vec<_>>())
                    .with_context(|| format!("cannot list {hour_path}"))?;
                let mut files: Vec<ArchiveFile> = metas
                    .into_iter()
                    .filter(|m| m.location.as_ref().ends_with(".parquet"))
                    .map(|m| ArchiveFile { path: m.location.to_string(), size: m.size })
                    .collect();
                files.sort_by(|a, b| a.path.cmp(&b.path));
                out.push(HourPartition { hour, files });
            }
        }
        Ok(out)
    }

    fn bounds(&self) -> anyhow::Result<Option<(i64, i64)>> {
        let days = self.days()?;
        let first = days.iter().find_map(|(_, d)| self.hours_of_day(d).ok()?.first().map(|h| h.0));
        let last = days.iter().rev().find_map(|(_, d)| self.hours_of_day(d).ok()?.last().map(|h| h.0));
        Ok(first.zip(last))
    }

    fn read(&self, file: &ArchiveFile, filter: Option<&RowFilter>) -> anyhow::Result<FileRows> {
        let path = Path::parse(&file.path)?;
        let bytes = self
            .rt
            .block_on(async {
                let got = self.store().get(&path).await?;
                match got.payload {
                    GetResultPayload::File(file, _) => read_file_range(file, got.range),
                    payload => Ok(GetResult { payload, ..got }.bytes().await?),
                }
            })
            .with_context(|| format!("cannot read {}", file.path))?;
        decode_parquet(bytes, self.format, filter, &file.path).with_context(|| format!("archive file {}", file.path))
    }
}

/// A local file's bytes in `range`, read on this thread into a buffer that is not filled first.
/// `GetResult::bytes` zero-fills its buffer before reading the file over it (and does so on
/// another thread): ~1 % of a backfill's CPU samples went to that fill, over every byte of the
/// archive.
fn read_file_range(mut file: std::fs::File, range: std::ops::Range<u64>) -> anyhow::Result<Bytes> {
    use std::io::{Read, Seek, SeekFrom};
    let len = range.end - range.start;
    file.seek(SeekFrom::Start(range.start))?;
    let mut buf = Vec::with_capacity(usize::try_from(len)?);
    file.take(len).read_to_end(&mut buf)?;
    anyhow::ensure!(buf.len() as u64 == len, "the file ended after {} of its {len} bytes", buf.len());
    Ok(Bytes::from(buf))
}

/// Decodes the archive columns of a Parquet file of `format` into canonical batches; with a
/// filter, only the rows it keeps (its columns are decoded first, the others only for the rows
/// kept). `name` names the file in warnings.
pub fn decode_parquet(bytes: Bytes, format: Format, filter: Option<&RowFilter>, name: &str) -> anyhow::Result<FileRows> {
    let meta = ArrowReaderMetadata::load(&bytes, ArrowReaderOptions::new()).context("not a readable Parquet file")?;
    let in_file = u64::try_from(meta.metadata().file_metadata().num_rows()).unwrap_or(0);
    let meta = match format.viewed_schema().and_then(|viewed| as_views(meta.schema(), &viewed)) {
        Some(hint) => ArrowReaderMetadata::try_new(meta.metadata().clone(), ArrowReaderOptions::new().with_schema(hint))?,
        None => meta,
    };
    let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, meta);
    let wanted = format.archive_schema();
    let file_schema = builder.schema().clone();
    let indices: Vec<usize> = file_schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| wanted.field_with_name(f.name()).is_ok())
        .map(|(i, _)| i)
        .collect();
    if let Some(filter) = filter {
        let columns: Option<Vec<usize>> = filter.columns.iter().map(|c| file_schema.index_of(c).ok()).collect();
        // A file without the filter's columns is read whole: its rows then reach the job,
        // which dead-letters or ignores them by its own rules.
        if let Some(columns) = columns {
            let keep = filter.keep.clone();
            let predicate =
                ArrowPredicateFn::new(ProjectionMask::roots(builder.parquet_schema(), columns), move |batch: RecordBatch| Ok(keep(&batch)));
            builder = builder.with_row_filter(ParquetRowFilter::new(vec![Box::new(predicate)]));
        }
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let reader = builder.with_projection(mask).with_batch_size(BATCH_ROWS).build()?;
    let mut out = Vec::new();
    let mut warned = false;
    for batch in reader {
        let batch = batch.context("corrupt data in Parquet file")?;
        let (canonical, missing) = format.normalize(&batch)?;
        if !missing.is_empty() && !warned {
            tracing::warn!("{name}: columns {missing:?} are missing; their rows go to the dead-letter output");
            warned = true;
        }
        out.push(canonical);
    }
    Ok(FileRows { batches: out, in_file })
}

/// The file's schema with views for its plain string columns that the core takes as views
/// (`viewed`, see [`crate::contract::schema::canonical_viewed_schema`]), so that the reader
/// makes them without copying a value; None if there are none. Other types are left to
/// normalization.
fn as_views(file: &SchemaRef, canonical: &SchemaRef) -> Option<SchemaRef> {
    let viewed = |f: &Field| {
        f.data_type() == &DataType::Utf8 && canonical.field_with_name(f.name()).is_ok_and(|c| c.data_type() == &DataType::Utf8View)
    };
    if !file.fields().iter().any(|f| viewed(f)) {
        return None;
    }
    let fields =
        file.fields().iter().map(|f| if viewed(f) { f.as_ref().clone().with_data_type(DataType::Utf8View) } else { f.as_ref().clone() });
    Some(Arc::new(Schema::new_with_metadata(fields.collect::<Vec<_>>(), file.metadata().clone())))
}

/// Archive columns whose values are (nearly) all distinct within a file, written without a
/// dictionary. The writer's default tries one per column and falls back to plain values once
/// it outgrows its page: a dictionary page of values seen once, then the rest plain, which a
/// reader decodes both ways. Without the attempt, the 10M-event bench archive is 8 % smaller
/// (649 -> 594 MB) and its backfill used less user CPU in 3 of 4 alternating pairs (~8.2 ->
/// ~7.6 s); decoding alone (`examples/archive_decode_bench.rs`) is about the same. The ids of
/// ads, campaigns, advertisers, stores and regions, which repeat, keep their dictionaries.
const UNIQUE_PER_ROW: [&str; 5] = [c::EVENT_ID, c::USER_ID, c::EVENT_TIME, c::KAFKA_OFFSET, c::KAFKA_TIMESTAMP];

/// Archive columns written uncompressed. `event_id` is random UUID text: Snappy saves 10 % of
/// its bytes, and decompressing them, a short match every few bytes in random hex, was the
/// largest part of decoding (`examples/archive_decode_bench.rs`: 86 ns per row with `event_id`
/// compressed, 64 without). The bench archive is 5.6 % larger (594 -> 627 MB). The other
/// columns keep Snappy, which halves `user_id` and the timestamps.
const UNCOMPRESSED: [&str; 1] = [c::EVENT_ID];

/// How adsproc writes archive files (`gen` and `archive`).
fn archive_properties() -> WriterProperties {
    let mut props = WriterProperties::builder().set_compression(Compression::SNAPPY).set_max_row_group_row_count(Some(1 << 20));
    for column in UNIQUE_PER_ROW {
        props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    for column in UNCOMPRESSED {
        props = props.set_column_compression(ColumnPath::from(column), Compression::UNCOMPRESSED);
    }
    props.build()
}

/// Writes one archive file under its ingest hour's directory (used by `gen` and the
/// archiver). `batch` must hold the archive columns of its topic's format, of a single ingest
/// hour.
pub fn write_archive_file(location: &Location, rt: &Handle, topic: &str, hour: i64, name: &str, batch: &RecordBatch) -> anyhow::Result<()> {
    let props = archive_properties();
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 2);
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    w.write(batch)?;
    w.close()?;
    let path = location.child(&format!("{topic}/{}/{name}", hive_hour_dir(hour)));
    rt.block_on(location.store.put(&path, PutPayload::from(buf)))
        .with_context(|| format!("cannot write {path}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use arrow::array::{new_null_array, ArrayRef, StringArray};
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    /// A range is read exactly; a file that ends before the range does is an error, not a
    /// short read passed on as the file's bytes.
    #[test]
    fn a_local_files_range_is_read_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let open = || std::fs::File::open(&path).unwrap();
        assert_eq!(&read_file_range(open(), 0..10).unwrap()[..], b"0123456789");
        assert_eq!(&read_file_range(open(), 3..7).unwrap()[..], b"3456");
        let short = read_file_range(open(), 4..12).unwrap_err().to_string();
        assert!(short.contains("after 6 of its 8 bytes"), "{short}");
    }

    /// Strings of any archiver's types decode to the canonical ones: `event_id`, `user_id` and
    /// `store_id` as views (read as views straight from plain strings, cast from the rest), the
    /// others as dictionaries, with every value and null kept.
    #[test]
    fn string_columns_of_any_type_decode_to_the_canonical_types() {
        use arrow::array::{AsArray, DictionaryArray, LargeStringArray, StringViewArray};
        use arrow::datatypes::Int32Type;
        let ids = [Some("e-0123456789abcdef0123456789"), None, Some("short")];
        let columns: Vec<(&str, ArrayRef)> = vec![
            (c::EVENT_ID, Arc::new(StringArray::from(ids.to_vec()))),
            (c::USER_ID, Arc::new(LargeStringArray::from(ids.to_vec()))),
            (c::STORE_ID, Arc::new(ids.into_iter().collect::<DictionaryArray<Int32Type>>())),
            (c::REGION, Arc::new(StringViewArray::from(ids.to_vec()))),
        ];
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let decoded = decode_parquet(Bytes::from(buf), Format::AdEvents, None, "test").unwrap().batches;
        assert_eq!(decoded.len(), 1);
        let out = &decoded[0];
        assert_eq!(out.schema(), crate::contract::schema::canonical_viewed_schema());
        for name in [c::EVENT_ID, c::USER_ID, c::STORE_ID] {
            let values: Vec<_> = out.column_by_name(name).unwrap().as_string_view().iter().collect();
            assert_eq!(values, ids, "{name}");
        }
        let region = out.column_by_name(c::REGION).unwrap().as_dictionary::<Int32Type>();
        let region: Vec<_> = region.downcast_dict::<StringArray>().unwrap().into_iter().collect();
        assert_eq!(region, ids);
    }

    /// The writer's settings reach the file: `event_id` uncompressed, the rest Snappy; no
    /// dictionary for the columns unique per row, one for the ids that repeat.
    #[test]
    fn archive_files_are_written_with_their_settings() {
        let schema = crate::contract::schema::archive_schema();
        let n = 1000;
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.name().as_str() {
                    c::EVENT_ID | c::USER_ID => Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("{}-{i:08}", f.name())))),
                    c::AD_ID => {
                        let ids = StringArray::from_iter_values((0..n).map(|i| format!("ad-{}", i % 7)));
                        arrow::compute::cast(&ids, f.data_type()).unwrap()
                    }
                    _ => new_null_array(f.data_type(), n),
                }
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, schema, Some(archive_properties())).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let reader = SerializedFileReader::new(Bytes::from(buf)).unwrap();
        let group = reader.metadata().row_group(0);
        let column = |name: &str| group.columns().iter().find(|col| col.column_path().string() == name).unwrap();
        assert_eq!(column(c::EVENT_ID).compression(), Compression::UNCOMPRESSED);
        for name in [c::USER_ID, c::AD_ID, c::KAFKA_TIMESTAMP] {
            assert_eq!(column(name).compression(), Compression::SNAPPY, "{name}");
        }
        for name in UNIQUE_PER_ROW {
            assert_eq!(column(name).dictionary_page_offset(), None, "{name} has a dictionary");
        }
        assert!(column(c::AD_ID).dictionary_page_offset().is_some());
    }
}
