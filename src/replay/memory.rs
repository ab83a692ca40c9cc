//! In-memory archive and sink: the backfill runtime's traits without a file system, so a
//! scenario runs through the real backfill loop.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;

use crate::contract::format::Format;
use crate::contract::outputs::DeadLetter;
use crate::core::job::{OutputRecord, RowFilter};
use crate::runtime::backfill::{ArchiveFile, ArchiveSource, FileRows, HourPartition, OutputSink};

/// The archive of one topic.
pub struct MemoryArchive {
    pub format: Format,
    /// hour → file name → archive rows
    pub hours: BTreeMap<i64, BTreeMap<String, RecordBatch>>,
}

impl MemoryArchive {
    pub fn new(format: Format) -> Self {
        Self { format, hours: BTreeMap::new() }
    }
}

impl Default for MemoryArchive {
    /// An archive of ad events.
    fn default() -> Self {
        Self::new(Format::AdEvents)
    }
}

impl ArchiveSource for MemoryArchive {
    fn describe(&self) -> String {
        format!("memory ({})", self.format)
    }

    fn format(&self) -> Format {
        self.format
    }

    fn hours(&self, from: i64, to: i64) -> anyhow::Result<Vec<HourPartition>> {
        Ok(self
            .hours
            .range(from..to)
            .map(|(h, files)| HourPartition {
                hour: *h,
                files: files.keys().map(|n| ArchiveFile { path: format!("{h}/{n}"), size: 1 }).collect(),
            })
            .collect())
    }

    fn bounds(&self) -> anyhow::Result<Option<(i64, i64)>> {
        Ok(self.hours.keys().next().copied().zip(self.hours.keys().next_back().copied()))
    }

    /// A filter is applied to the normalized rows, as the Parquet reader applies it to the
    /// file's (the filter's columns have the same names in both).
    fn read(&self, file: &ArchiveFile, filter: Option<&RowFilter>) -> anyhow::Result<FileRows> {
        let (h, name) = file.path.split_once('/').expect("path made by hours()");
        let batch = self.format.normalize(&self.hours[&h.parse::<i64>()?][name])?.0;
        let in_file = batch.num_rows() as u64;
        let columns = filter.map(|f| f.columns.iter().map(|c| batch.column_by_name(c).cloned().map(|a| (*c, a))).collect::<Option<Vec<_>>>());
        let (Some(filter), Some(Some(columns))) = (filter, columns) else { return Ok(FileRows { batches: vec![batch], in_file }) };
        let keep = (filter.keep)(&RecordBatch::try_from_iter(columns)?);
        Ok(FileRows { batches: vec![arrow::compute::filter_record_batch(&batch, &keep)?], in_file })
    }
}

/// Collects what a backfill writes: the job's records and the dead letters.
pub struct MemorySink<R> {
    pub records: Vec<R>,
    pub dead: Vec<DeadLetter>,
}

impl<R> Default for MemorySink<R> {
    fn default() -> Self {
        Self { records: Vec::new(), dead: Vec::new() }
    }
}

impl<R: OutputRecord> OutputSink for MemorySink<R> {
    fn write(&mut self, table: usize, batch: RecordBatch) -> anyhow::Result<()> {
        self.records.extend(R::from_batch(table, &batch)?);
        Ok(())
    }

    fn write_dead_letters(&mut self, records: Vec<DeadLetter>) -> anyhow::Result<()> {
        self.dead.extend(records);
        Ok(())
    }

    fn complete_before(&mut self, _records_before: i64, _dead_letters_before: i64) -> anyhow::Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<String> {
        Ok(format!("{} records in memory", self.records.len() + self.dead.len()))
    }
}
