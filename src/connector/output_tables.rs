//! A job's output tables read back from their Hive layout (`<root>/<table>/dt=…/hr=…/*.parquet`,
//! as a backfill writes them): the regions' tables that the union's backfill merges.

use std::sync::Arc;

use anyhow::Context;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::runtime::Handle;

use super::archive::ParquetArchive;
use super::store::Location;
use crate::contract::format::Format;
use crate::contract::time::{floor_to, HOUR_MS};
use crate::core::job::OutputRecord;
use crate::runtime::backfill::ArchiveSource;

/// A record of a table, with when its file was written (ms since the epoch) and the file.
#[derive(Debug, Clone)]
pub struct TableRow<R> {
    pub written: i64,
    pub file: String,
    pub record: R,
}

/// The records of `table` under `location` whose partition time is in `[from, to)`, and how many
/// files they came from.
pub fn read_table<R: OutputRecord>(location: &Location, rt: &Handle, table: &str, from: i64, to: i64) -> anyhow::Result<(Vec<TableRow<R>>, usize)> {
    // The table's hour partitions are laid out as an archive's; its files are read as they are.
    let listing = ParquetArchive::new(location.clone(), table, Format::Records, rt.clone());
    let store: &Arc<dyn ObjectStore> = &location.store;
    let mut rows = Vec::new();
    let mut files = 0;
    for hour in listing.hours(floor_to(from, HOUR_MS), to)? {
        for f in hour.files {
            let path = object_store::path::Path::from(f.path.as_str());
            let (meta, bytes) = rt
                .block_on(async {
                    let got = store.get(&path).await?;
                    let meta = got.meta.clone();
                    Ok::<_, object_store::Error>((meta, got.bytes().await?))
                })
                .with_context(|| format!("cannot read {}", f.path))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .and_then(|b| b.build())
                .with_context(|| format!("{} is not a Parquet file of table {table}", f.path))?;
            for batch in reader {
                let batch = batch.with_context(|| format!("cannot decode {}", f.path))?;
                let records = R::from_batch(0, &batch).with_context(|| format!("{} does not hold {table} records", f.path))?;
                rows.extend(records.into_iter().filter(|r| (from..to).contains(&r.partition_time())).map(|record| TableRow {
                    written: meta.last_modified.timestamp_millis(),
                    file: f.path.clone(),
                    record,
                }));
            }
            files += 1;
        }
    }
    Ok((rows, files))
}
