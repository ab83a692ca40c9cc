//! The object_store S3 path against a real S3-protocol server (moto) on 127.0.0.1: generate
//! an archive into a bucket, backfill it from S3 to S3, and compare every output record with
//! the same backfill on a local directory.
//!
//! Needs `moto_server` (PyPI `moto[server]`); `scripts/test.sh` installs it. Set
//! ADSPROC_MOTO_SERVER to use another executable.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use arrow::util::display::{ArrayFormatter, FormatOptions};
use common::moto::{create_bucket, s3_options, start_moto};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn adsproc(args: &[String]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_adsproc")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "adsproc {args:?} failed:\n{text}");
    text
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// Every row of every Parquet file under `prefix` of a location, rendered as text, with the
/// Hive directory of the file.
fn rows_under(location: &adsproc::connector::store::Location, prefix: &str, rt: &tokio::runtime::Runtime) -> BTreeSet<String> {
    let root = location.child(prefix);
    let metas: Vec<_> = rt.block_on(location.store.list(Some(&root)).try_collect()).unwrap();
    let mut out = BTreeSet::new();
    for m in metas {
        let bytes: Bytes = rt.block_on(async { location.store.get(&m.location).await.unwrap().bytes().await.unwrap() });
        let rel = m.location.as_ref().split(prefix).nth(1).unwrap().to_string();
        let dir = rel.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default();
        for b in ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap() {
            let b = b.unwrap();
            // Timestamps as epoch ms: formatting a named time zone needs chrono-tz.
            let cols: Vec<_> = b
                .columns()
                .iter()
                .map(|c| match c.data_type() {
                    arrow::datatypes::DataType::Timestamp(_, _) => arrow::compute::cast(c, &arrow::datatypes::DataType::Int64).unwrap(),
                    _ => c.clone(),
                })
                .collect();
            let fmts: Vec<_> = cols.iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).unwrap()).collect();
            for i in 0..b.num_rows() {
                let row: Vec<String> = fmts.iter().map(|f| f.value(i).to_string()).collect();
                assert!(out.insert(format!("{dir} | {}", row.join(" | "))), "duplicate row");
            }
        }
    }
    out
}

#[test]
fn backfill_from_s3_to_s3_equals_the_local_run_record_for_record() {
    let moto = start_moto();
    create_bucket(&moto.endpoint, "ads");
    let opts = s3_options(&moto.endpoint);
    let tmp = tempfile::tempdir().unwrap();
    let local_archive = tmp.path().join("archive");
    let local_out = tmp.path().join("out");
    let gen = ["gen", "--events", "40000", "--hours", "3", "--ads", "200", "--seed", "5", "--out"];
    let range = ["--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T02:00:00Z"];

    let mut a = args(&gen);
    a.push("s3://ads/archive".into());
    a.extend(opts.clone());
    adsproc(&a);
    let mut a = args(&gen);
    a.push(local_archive.display().to_string());
    adsproc(&a);

    let mut a = args(&["backfill", "--job", "aggregation", "--quiet", "--source", "s3://ads/archive", "--sink", "s3://ads/out"]);
    a.extend(args(&range));
    a.extend(opts.clone());
    let s3_report = adsproc(&a);
    let mut a = args(&["backfill", "--job", "aggregation", "--quiet", "--source", local_archive.to_str().unwrap(), "--sink", local_out.to_str().unwrap()]);
    a.extend(args(&range));
    let local_report = adsproc(&a);
    let audit = |r: &str| r.lines().find(|l| l.contains("events read")).unwrap().to_string();
    assert_eq!(audit(&s3_report), audit(&local_report));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let kv: Vec<(String, String)> = opts.chunks(2).map(|c| adsproc::connector::store::parse_key_value(&c[1]).unwrap()).collect();
    let s3 = adsproc::connector::store::open("s3://ads/out", &kv, false).unwrap();
    let local = adsproc::connector::store::open(local_out.to_str().unwrap(), &[], false).unwrap();
    for table in ["ad-metrics/", "dlq/"] {
        let from_s3 = rows_under(&s3, table, &rt);
        let from_local = rows_under(&local, table, &rt);
        assert!(from_s3.len() > 100, "{table}: only {} rows", from_s3.len());
        assert_eq!(from_s3, from_local, "{table} differs between S3 and the local run");
    }
    assert!(Path::new(&local_out).join("ad-metrics/dt=2026-01-01/hr=01").exists());
}

/// The stream job's checkpoint store on S3: every group's checkpoint written at once comes
/// back byte for byte, pruning removes only the older ones, and a missing one is an error
/// that names it.
#[test]
fn checkpoints_round_trip_through_s3() {
    use adsproc::runtime::stream::checkpoint::CheckpointStore;
    let moto = start_moto();
    create_bucket(&moto.endpoint, "state");
    let opts = s3_options(&moto.endpoint);
    let kv: Vec<(String, String)> = opts.chunks(2).map(|c| adsproc::connector::store::parse_key_value(&c[1]).unwrap()).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let location = adsproc::connector::store::open("s3://state/agg", &kv, true).unwrap();
    let store = adsproc::connector::checkpoint_store::ObjectCheckpoints::new(location, rt.handle().clone());
    let bytes = |g: u32, seq: u64| -> Vec<u8> {
        (0..1000 + g as usize * 7 + seq as usize).map(|i| (i as u64 * 31 + seq * 7 + g as u64) as u8).collect()
    };
    for seq in 1..=3 {
        store.put_all((0..4).map(|g| (g, seq, bytes(g, seq))).collect()).unwrap();
    }
    for g in 0..4 {
        for seq in 1..=3 {
            assert_eq!(store.get(g, seq).unwrap(), bytes(g, seq), "group {g}, checkpoint {seq}");
        }
        store.prune(g, 3).unwrap();
        assert_eq!(store.get(g, 3).unwrap(), bytes(g, 3));
        for seq in 1..=2 {
            let e = format!("{:#}", store.get(g, seq).unwrap_err());
            assert!(e.contains("is missing") && e.contains(&format!("kg-{g:04}/{seq:020}.ckpt")), "{e}");
        }
    }
}
