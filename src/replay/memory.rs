//! In-memory archive and sink: the backfill runtime's traits without a file system, so a
//! scenario runs through the real backfill loop.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;

use crate::contract::outputs::{ad_metrics_rows, AdMetric, DeadLetter};
use crate::contract::schema::normalize;
use crate::runtime::backfill::{ArchiveFile, ArchiveSource, HourPartition, OutputSink};

#[derive(Default)]
pub struct MemoryArchive {
    /// hour → file name → archive rows
    pub hours: BTreeMap<i64, BTreeMap<String, RecordBatch>>,
}

impl ArchiveSource for MemoryArchive {
    fn describe(&self) -> String {
        "memory".into()
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

    fn read(&self, file: &ArchiveFile) -> anyhow::Result<Vec<RecordBatch>> {
        let (h, name) = file.path.split_once('/').expect("path made by hours()");
        let batch = &self.hours[&h.parse::<i64>()?][name];
        Ok(vec![normalize(batch)?.0])
    }
}

#[derive(Default)]
pub struct MemorySink {
    pub metrics: Vec<AdMetric>,
    pub dead: Vec<DeadLetter>,
}

impl OutputSink for MemorySink {
    fn write_metrics(&mut self, batch: RecordBatch) -> anyhow::Result<()> {
        self.metrics.extend(ad_metrics_rows(&batch)?);
        Ok(())
    }

    fn write_dead_letters(&mut self, records: Vec<DeadLetter>) -> anyhow::Result<()> {
        self.dead.extend(records);
        Ok(())
    }

    fn complete_before(&mut self, _metrics_before: i64, _dead_letters_before: i64) -> anyhow::Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<String> {
        Ok(format!("{} records in memory", self.metrics.len() + self.dead.len()))
    }
}
