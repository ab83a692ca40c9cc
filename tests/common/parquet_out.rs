//! Reading what a backfill wrote, and running the binary.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use adsproc::contract::time::{hive_hour_dir, rfc3339};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::Windows;

pub fn parquet_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(parquet_files(&p));
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out
}

/// Reads ad-metrics back, checking each record sits in its window's hour partition.
pub fn read_metrics(root: &Path) -> Windows {
    let mut out = Windows::new();
    for f in parquet_files(&root.join("ad-metrics")) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap()).unwrap().build().unwrap();
        for b in reader {
            let b = b.unwrap();
            let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
            let (uuid, region, ad, campaign, adv) = (s("record_uuid"), s("region"), s("ad_id"), s("campaign_id"), s("advertiser_id"));
            let ws = b.column_by_name("window_start").unwrap().as_primitive::<TimestampMillisecondType>().clone();
            let imp = b.column_by_name("impressions").unwrap().as_primitive::<Int64Type>().clone();
            let clk = b.column_by_name("clicks").unwrap().as_primitive::<Int64Type>().clone();
            for i in 0..b.num_rows() {
                let w = ws.value(i);
                if i > 0 {
                    let key = |j: usize| (ws.value(j), region.value(j), ad.value(j));
                    assert!(key(i - 1) < key(i), "{} is not ordered by (window_start, region, ad_id) at row {i}", f.display());
                }
                assert!(f.to_string_lossy().contains(&hive_hour_dir(w)), "{} holds window {}", f.display(), rfc3339(w));
                assert_eq!(uuid.value(i), adsproc::contract::record_uuid::ad_metric(region.value(i), ad.value(i), w).to_string());
                let opt = |a: &arrow::array::StringArray| (!a.is_null(i)).then(|| a.value(i).to_string());
                let prev = out.insert(
                    (region.value(i).to_string(), ad.value(i).to_string(), w),
                    (opt(&campaign), opt(&adv), imp.value(i), clk.value(i)),
                );
                assert!(prev.is_none(), "a backfill writes each window once");
            }
        }
    }
    out
}

pub fn read_dead(root: &Path) -> BTreeSet<(i32, i64)> {
    let mut out = BTreeSet::new();
    for f in parquet_files(&root.join("dlq")) {
        for b in ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap()).unwrap().build().unwrap() {
            let b = b.unwrap();
            let p = b.column_by_name("partition").unwrap().as_primitive::<Int32Type>().clone();
            let o = b.column_by_name("offset").unwrap().as_primitive::<Int64Type>().clone();
            let reason = b.column_by_name("reason").unwrap().as_string::<i32>().clone();
            let payload = b.column_by_name("payload").unwrap().as_string::<i32>().clone();
            for i in 0..b.num_rows() {
                assert!(!reason.value(i).is_empty() && serde_json::from_str::<serde_json::Value>(payload.value(i)).is_ok());
                assert!(out.insert((p.value(i), o.value(i))), "dead letter written twice");
            }
        }
    }
    out
}

/// The payload of every dead letter by source position.
#[allow(dead_code)]
pub fn read_dead_payloads(root: &Path) -> BTreeMap<(i32, i64), serde_json::Value> {
    let mut out = BTreeMap::new();
    for f in parquet_files(&root.join("dlq")) {
        for b in ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap()).unwrap().build().unwrap() {
            let b = b.unwrap();
            let p = b.column_by_name("partition").unwrap().as_primitive::<Int32Type>().clone();
            let o = b.column_by_name("offset").unwrap().as_primitive::<Int64Type>().clone();
            let payload = b.column_by_name("payload").unwrap().as_string::<i32>().clone();
            for i in 0..b.num_rows() {
                out.insert((p.value(i), o.value(i)), serde_json::from_str(payload.value(i)).unwrap());
            }
        }
    }
    out
}

pub fn backfill(archive: &Path, out: &Path, from: i64, to: i64, extra: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_adsproc"))
        .args(["backfill", "--job", "aggregation", "--quiet", "--source"])
        .arg(archive)
        .arg("--sink")
        .arg(out)
        .args(["--from", &rfc3339(from), "--to", &rfc3339(to)])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "backfill failed: {stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("[balanced]"), "{stdout}");
    stdout
}


/// Every record of a job's output table under a backfill's sink, each checked to sit in the
/// hour partition of its partition time.
pub fn read_table<R: adsproc::core::job::OutputRecord>(root: &Path, table: &str) -> Vec<R> {
    let mut out = Vec::new();
    for f in parquet_files(&root.join(table)) {
        for b in ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap()).unwrap().build().unwrap() {
            for r in R::from_batch(0, &b.unwrap()).unwrap() {
                assert!(f.to_string_lossy().contains(&hive_hour_dir(r.partition_time())), "{} holds {r:?}", f.display());
                out.push(r);
            }
        }
    }
    out
}

/// (topic, partition, offset) of every dead letter under a backfill's sink.
pub fn read_dead_of(root: &Path, topic: &str) -> BTreeSet<(i32, i64)> {
    let mut out = BTreeSet::new();
    for f in parquet_files(&root.join("dlq")) {
        for b in ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap()).unwrap().build().unwrap() {
            let b = b.unwrap();
            let t = b.column_by_name("topic").unwrap().as_string::<i32>().clone();
            let p = b.column_by_name("partition").unwrap().as_primitive::<Int32Type>().clone();
            let o = b.column_by_name("offset").unwrap().as_primitive::<Int64Type>().clone();
            for i in 0..b.num_rows() {
                if t.value(i) == topic {
                    assert!(out.insert((p.value(i), o.value(i))), "dead letter written twice");
                }
            }
        }
    }
    out
}
