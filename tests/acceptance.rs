//! Acceptance: a generated archive in the contract's layout, the real `adsproc backfill`
//! command, its Parquet output read back, every window compared with the naive reference
//! model; and the same messages fed to the stream driver as polls.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use adsproc::contract::time::{hive_hour_dir, rfc3339};
use adsproc::core::config::AggregationRules;
use adsproc::gen::{GenSpec, Row};
use adsproc::runtime::stream::driver::StreamDriver;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn spec(seed: u64) -> GenSpec {
    GenSpec {
        events: 120_000,
        start: T0,
        hours: 5,
        ads: 300,
        zipf_exponent: 1.1,
        regions: 2,
        partitions: 4,
        files_per_hour: 3,
        click_fraction: 0.1,
        duplicate_fraction: 0.05,
        late_fraction: 0.05,
        malformed_fraction: 0.02,
        seed,
        topic: "ad-events".into(),
    }
}

fn all_rows(spec: &GenSpec) -> Vec<Row> {
    (0..spec.hours).flat_map(|h| spec.hour_rows(h)).collect()
}

fn parquet_files(dir: &Path) -> Vec<std::path::PathBuf> {
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
fn read_metrics(root: &Path) -> Windows {
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

fn read_dead(root: &Path) -> BTreeSet<(i32, i64)> {
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

fn backfill(archive: &Path, out: &Path, from: i64, to: i64, extra: &[&str]) -> String {
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

#[test]
fn backfill_of_a_generated_archive_matches_the_reference_in_both_lateness_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    let spec = spec(7);
    let loc = adsproc::connector::store::open(archive.to_str().unwrap(), &[], true).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    spec.write(&loc, rt.handle()).unwrap();
    let rows = all_rows(&spec);
    let (from, to) = (T0 + HOUR, T0 + 4 * HOUR);
    for (name, extra, complete) in [("default", vec![], false), ("complete", vec!["--complete"], true)] {
        let out = tmp.path().join(name);
        backfill(&archive, &out, from, to, &extra);
        let expected = reference(&rows, from, to, complete);
        assert!(expected.windows.len() > 1_000, "the workload is too small to mean anything");
        let actual = read_metrics(&out);
        assert!(actual == expected.windows, "{name}: {}", diff(&expected.windows, &actual));
        assert_eq!(read_dead(&out), expected.dead, "{name}: dead letters");
        // Re-running replaces the run's files rather than adding to them.
        backfill(&archive, &out, from, to, &extra);
        assert!(read_metrics(&out) == expected.windows);
    }
}

#[test]
fn stream_driver_over_the_same_messages_matches_the_reference() {
    let spec = spec(11);
    let rows = all_rows(&spec);
    let (from, to) = (T0 + HOUR, T0 + 4 * HOUR);
    let expected = reference(&rows, from, to, false);
    let mut per_partition: Vec<Vec<&Row>> = vec![Vec::new(); spec.partitions as usize];
    for r in &rows {
        per_partition[r.partition as usize].push(r);
    }
    for v in &mut per_partition {
        v.sort_by_key(|r| r.offset);
    }
    let mut driver = StreamDriver::new(AggregationRules::defaults(), 0..spec.partitions as i32);
    let mut metrics = Vec::new();
    let mut cursors = vec![0usize; per_partition.len()];
    // Partitions advance at different speeds, as consumers fetch them.
    let sizes = [500, 137, 900, 61];
    while cursors.iter().zip(&per_partition).any(|(c, v)| *c < v.len()) {
        for (p, v) in per_partition.iter().enumerate() {
            let end = (cursors[p] + sizes[p % sizes.len()]).min(v.len());
            let msgs: Vec<_> = v[cursors[p]..end].iter().map(|r| to_message(r)).collect();
            cursors[p] = end;
            if !msgs.is_empty() {
                driver.on_poll(&msgs);
                metrics.extend(driver.drain().0);
            }
        }
    }
    driver.finish();
    metrics.extend(driver.drain().0);
    let actual = upsert_view(&metrics, from, to);
    assert!(actual == expected.windows, "{}", diff(&expected.windows, &actual));
    assert!(driver.audit().balances());
}
