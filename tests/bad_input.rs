//! Bad input never panics: each case gives a clear error (exit 2) or dead-letter records.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use common::*;
use parquet::arrow::ArrowWriter;

fn adsproc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adsproc")).args(args).env("ADSPROC_NO_PROGRESS", "1").output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn backfill(source: &Path, sink: &Path, from: &str, to: &str) -> Output {
    adsproc(&["backfill", "--job", "aggregation", "--quiet", "--source", source.to_str().unwrap(), "--sink", sink.to_str().unwrap(), "--from", from, "--to", to])
}

fn hour_dir(root: &Path) -> std::path::PathBuf {
    let d = root.join("ad-events/dt=2026-01-01/hr=00");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn ts(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC"))
}

/// Two rows with every archive column except those named in `skip`.
fn rows_without(skip: &[&str]) -> RecordBatch {
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("event_id", Arc::new(StringArray::from(vec!["e1", "e2"]))),
        ("event_type", Arc::new(StringArray::from(vec!["impression", "click"]))),
        ("ad_id", Arc::new(StringArray::from(vec!["ad-1", "ad-1"]))),
        ("campaign_id", Arc::new(StringArray::from(vec!["c", "c"]))),
        ("advertiser_id", Arc::new(StringArray::from(vec!["a", "a"]))),
        ("user_id", Arc::new(StringArray::from(vec!["u", "u"]))),
        ("store_id", Arc::new(StringArray::from(vec!["s", "s"]))),
        ("event_time", ts(vec![Some(T0 + 1_000), Some(T0 + 2_000)])),
        ("region", Arc::new(StringArray::from(vec!["region-a", "region-a"]))),
        ("_kafka_partition", Arc::new(Int32Array::from(vec![0, 0]))),
        ("_kafka_offset", Arc::new(Int64Array::from(vec![0, 1]))),
        ("_kafka_timestamp", ts(vec![Some(T0 + 1_500), Some(T0 + 2_500)])),
    ];
    RecordBatch::try_from_iter(cols.into_iter().filter(|(n, _)| !skip.contains(n))).unwrap()
}

const FROM: &str = "2026-01-01T00:00:00Z";
const TO: &str = "2026-01-01T01:00:00Z";

#[test]
fn a_valid_file_is_counted() {
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(&hour_dir(tmp.path()).join("ok.parquet"), &rows_without(&[]));
    let o = backfill(tmp.path(), &tmp.path().join("out"), FROM, TO);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("counted 2 "), "{}", text(&o));
}

#[test]
fn a_corrupt_parquet_file_is_a_clear_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(hour_dir(tmp.path()).join("broken.parquet"), b"PAR1 this is not parquet at all").unwrap();
    let o = backfill(tmp.path(), &tmp.path().join("out"), FROM, TO);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("broken.parquet") && t.contains("not a readable Parquet file"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn a_truncated_parquet_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = hour_dir(tmp.path());
    write_parquet(&dir.join("whole.parquet"), &rows_without(&[]));
    let bytes = std::fs::read(dir.join("whole.parquet")).unwrap();
    std::fs::remove_file(dir.join("whole.parquet")).unwrap();
    std::fs::write(dir.join("cut.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    let o = backfill(tmp.path(), &tmp.path().join("out"), FROM, TO);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("cut.parquet"), "{}", text(&o));
}

#[test]
fn a_missing_column_sends_its_rows_to_the_dead_letter_output() {
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(&hour_dir(tmp.path()).join("no-ad.parquet"), &rows_without(&["ad_id"]));
    let o = backfill(tmp.path(), &tmp.path().join("out"), FROM, TO);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("invalid 2 ") && t.contains("dead-lettered missing_field: 2"), "{t}");
    assert!(t.contains("[\"ad_id\"] are missing"), "{t}");
    assert!(tmp.path().join("out/dlq/dt=2026-01-01/hr=00").exists());
}

#[test]
fn a_wrong_column_type_is_a_clear_error_naming_column_and_type() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = rows_without(&["event_time"]);
    let mut cols: Vec<(String, ArrayRef)> = b.schema().fields().iter().map(|f| f.name().clone()).zip(b.columns().iter().cloned()).collect();
    cols.push(("event_time".into(), Arc::new(StringArray::from(vec!["soon", "later"]))));
    b = RecordBatch::try_from_iter(cols).unwrap();
    write_parquet(&hour_dir(tmp.path()).join("typed.parquet"), &b);
    let o = backfill(tmp.path(), &tmp.path().join("out"), FROM, TO);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("typed.parquet") && t.contains("column 'event_time' has type Utf8"), "{t}");
}

#[test]
fn nulls_everywhere_are_dead_lettered_not_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let s = |n: usize| -> ArrayRef { Arc::new(StringArray::from(vec![None::<&str>; n])) };
    let b = RecordBatch::try_from_iter(vec![
        ("event_id", s(3)),
        ("event_type", s(3)),
        ("ad_id", s(3)),
        ("event_time", ts(vec![None; 3])),
        ("region", s(3)),
        ("_kafka_partition", Arc::new(Int32Array::from(vec![None; 3])) as ArrayRef),
        ("_kafka_offset", Arc::new(Int64Array::from(vec![None; 3])) as ArrayRef),
        ("_kafka_timestamp", ts(vec![None; 3])),
    ])
    .unwrap();
    write_parquet(&hour_dir(tmp.path()).join("nulls.parquet"), &b);
    let o = backfill(tmp.path(), &tmp.path().join("out"), FROM, TO);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("events read 3 = counted 0 + duplicates 0 + invalid 3"), "{t}");
}

#[test]
fn an_empty_archive_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("ad-events")).unwrap();
    let o = backfill(tmp.path(), &tmp.path().join("out"), FROM, TO);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("has no ad-event files") && text(&o).contains("the archive is empty"), "{}", text(&o));
}

#[test]
fn a_missing_source_directory_is_a_clear_error() {
    let o = backfill(Path::new("/nonexistent/archive"), Path::new("/tmp/unused-out"), FROM, TO);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("--source: directory /nonexistent/archive does not exist"), "{}", text(&o));
}

#[test]
fn data_outside_the_range_is_a_clear_error_with_the_archive_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(&hour_dir(tmp.path()).join("ok.parquet"), &rows_without(&[]));
    let o = backfill(tmp.path(), &tmp.path().join("out"), "2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z");
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("the archive holds ingest hours 2026-01-01T00:00:00.000Z to 2026-01-01T00:00:00.000Z"), "{}", text(&o));
}

#[test]
fn bad_arguments_exit_non_zero_with_a_precise_message() {
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(&hour_dir(tmp.path()).join("ok.parquet"), &rows_without(&[]));
    let unaligned = backfill(tmp.path(), &tmp.path().join("out"), "2026-01-01T00:00:30Z", TO);
    assert_eq!(unaligned.status.code(), Some(2));
    assert!(text(&unaligned).contains("not aligned to the job's 60000 ms windows; the nearest window boundaries are 2026-01-01T00:00:00.000Z and 2026-01-01T00:01:00.000Z"), "{}", text(&unaligned));
    let reversed = backfill(tmp.path(), &tmp.path().join("out"), TO, FROM);
    assert_eq!(reversed.status.code(), Some(2));
    assert!(text(&reversed).contains("is not before --to"));
    let garbage = backfill(tmp.path(), &tmp.path().join("out"), "yesterday", TO);
    assert_eq!(garbage.status.code(), Some(2));
    assert!(text(&garbage).contains("'yesterday' is not an RFC 3339 time"), "{}", text(&garbage));
    let rate = adsproc(&["backfill", "--job", "aggregation", "--source", "x", "--sink", "y", "--from", FROM, "--to", TO, "--max-rate", "0"]);
    assert_eq!(rate.status.code(), Some(2));
    assert!(text(&rate).contains("not a positive number of records per second"));
    let job = adsproc(&["backfill", "--job", "nope", "--source", "x", "--sink", "y", "--from", FROM, "--to", TO]);
    assert_eq!(job.status.code(), Some(2));
    assert!(text(&job).contains("possible values: aggregation"), "{}", text(&job));
    // Checked before any connection is tried: no broker listens on port 9.
    let waiting =
        adsproc(&["stream", "--job", "aggregation", "--brokers", "127.0.0.1:9", "--checkpoint", "y", "--max-waiting-per-partition", "0"]);
    assert_eq!(waiting.status.code(), Some(2));
    assert!(text(&waiting).contains("invalid value '0' for '--max-waiting-per-partition"), "{}", text(&waiting));
    let stream = ["stream", "--job", "aggregation", "--brokers", "127.0.0.1:9", "--checkpoint", "y"];
    let discovery = adsproc(&[&stream[..], &["--partition-discovery-interval", "often"]].concat());
    assert_eq!(discovery.status.code(), Some(2));
    assert!(text(&discovery).contains("invalid value 'often' for '--partition-discovery-interval"), "{}", text(&discovery));
    // The seed system's two-minute interval with transactions that time out after one.
    let txn = adsproc(&[&stream[..], &["--checkpoint-interval", "2m", "-X", "transaction.timeout.ms=60000"]].concat());
    assert_eq!(txn.status.code(), Some(2));
    assert!(text(&txn).contains("is less than twice --checkpoint-interval (2m)"), "{}", text(&txn));
}

#[test]
fn a_bad_job_file_names_the_file_and_the_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("job.toml");
    std::fs::write(&f, adsproc::jobs::aggregation::rules::DEFAULT_JOB_FILE.replace("ttl = \"24h\"", "ttl = \"10m\"")).unwrap();
    let o = adsproc(&["backfill", "--job", "aggregation", "--job-file", f.to_str().unwrap(), "--source", "x", "--sink", "y", "--from", FROM, "--to", TO]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("job.toml: invalid job file: dedupe.ttl must be at least 1h"), "{}", text(&o));
}

#[test]
fn an_unreachable_s3_endpoint_fails_quickly_with_the_endpoint_in_the_message() {
    // A port on loopback that nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_adsproc"))
        .args(["backfill", "--job", "aggregation", "--quiet", "--source", "s3://archive/raw", "--sink", tempfile::tempdir().unwrap().path().join("out").to_str().unwrap()])
        .args(["--from", FROM, "--to", TO])
        .args(["--store-option", &format!("endpoint={endpoint}"), "--store-option", "allow_http=true"])
        .args(["--store-option", "access_key_id=x", "--store-option", "secret_access_key=y", "--store-option", "region=us-east-1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("cannot list s3://archive/raw/ad-events") && t.contains(&format!("127.0.0.1:{port}")), "{t}");
    // The endpoint was really tried: refused, not rejected before sending.
    assert!(t.contains("Connection refused") || t.contains("connect"), "{t}");
    assert!(!t.contains("scheme is not allowed"), "{t}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}

/// An attribution backfill of [FROM, TO) over `root`, which holds an ad-events archive.
fn attribution(root: &Path) -> Output {
    adsproc(&["backfill", "--job", "attribution", "--quiet", "--source", root.to_str().unwrap(), "--sink", root.join("out").to_str().unwrap(), "--from", FROM, "--to", TO])
}

fn orders_dir(root: &Path) -> std::path::PathBuf {
    let d = root.join("orders/dt=2026-01-01/hr=00");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Two orders with every archive column; `amount` replaces the amount column.
fn orders(amount: ArrayRef) -> RecordBatch {
    let s = |v: [&str; 2]| -> ArrayRef { Arc::new(StringArray::from(v.to_vec())) };
    RecordBatch::try_from_iter(vec![
        ("order_id", s(["o1", "o2"])),
        ("user_id", s(["u", "u"])),
        ("store_id", s(["s", "s"])),
        ("order_time", ts(vec![Some(T0 + 3_000), Some(T0 + 4_000)])),
        ("status", s(["placed", "placed"])),
        ("amount_cents", amount),
        ("currency", s(["EUR", "EUR"])),
        ("region", s(["region-a", "region-a"])),
        ("_kafka_partition", Arc::new(Int32Array::from(vec![0, 0])) as ArrayRef),
        ("_kafka_offset", Arc::new(Int64Array::from(vec![0, 1])) as ArrayRef),
        ("_kafka_timestamp", ts(vec![Some(T0 + 3_500), Some(T0 + 4_500)])),
    ])
    .unwrap()
}

#[test]
fn attribution_of_valid_orders_is_counted() {
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(&hour_dir(tmp.path()).join("ads.parquet"), &rows_without(&[]));
    write_parquet(&orders_dir(tmp.path()).join("orders.parquet"), &orders(Arc::new(Int64Array::from(vec![100, 200]))));
    let o = attribution(tmp.path());
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    // The events (clicks and impressions by u at s) precede the orders: both are attributed.
    assert!(t.contains("orders read 2 = attributed 2 "), "{t}");
}

#[test]
fn an_orders_file_with_a_wrong_column_type_is_a_clear_error_naming_file_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(&hour_dir(tmp.path()).join("ads.parquet"), &rows_without(&[]));
    write_parquet(&orders_dir(tmp.path()).join("typed.parquet"), &orders(Arc::new(StringArray::from(vec!["1.00", "2.00"]))));
    let o = attribution(tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("typed.parquet") && t.contains("column 'amount_cents' has type Utf8, which cannot hold the contract's int64"), "{t}");
}

#[test]
fn a_corrupt_orders_file_is_a_clear_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(&hour_dir(tmp.path()).join("ads.parquet"), &rows_without(&[]));
    std::fs::write(orders_dir(tmp.path()).join("broken.parquet"), b"PAR1 not parquet").unwrap();
    let o = attribution(tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("orders/dt=2026-01-01/hr=00/broken.parquet") && t.contains("not a readable Parquet file"), "{t}");
}

#[test]
fn a_missing_orders_archive_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(&hour_dir(tmp.path()).join("ads.parquet"), &rows_without(&[]));
    let o = attribution(tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("/orders has no order files for ingest hours") && t.contains("(the archive is empty)"), "{t}");
}

#[test]
fn options_of_another_job_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().to_str().unwrap();
    let complete = adsproc(&["backfill", "--job", "attribution", "--source", src, "--sink", src, "--from", FROM, "--to", TO, "--complete"]);
    assert_eq!(complete.status.code(), Some(2));
    assert!(text(&complete).contains("--complete applies to the aggregation job's lateness rule; the attribution job has none"), "{}", text(&complete));
    let topic = adsproc(&["backfill", "--job", "attribution", "--source", src, "--sink", src, "--from", FROM, "--to", TO, "--topic", "x"]);
    assert_eq!(topic.status.code(), Some(2));
    assert!(text(&topic).contains("the attribution job reads orders and ad-events: their names are in its job file"), "{}", text(&topic));
    let stream = adsproc(&["stream", "--job", "attribution", "--brokers", "127.0.0.1:9", "--checkpoint", src, "--dlq-topic", "x", "--output-topic", "y", "--topic", "z"]);
    assert_eq!(stream.status.code(), Some(2));
    assert!(text(&stream).contains("--topic names the input topic of a job with one input"), "{}", text(&stream));
}

/// An hour missing in the middle of an archive (25 % of its messages, unread) is reported by
/// name; --fail-on-gap makes it an error before any work.
#[test]
fn an_hour_missing_inside_the_archive_is_reported_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    let o = adsproc(&["gen", "--out", archive.to_str().unwrap(), "--events", "8000", "--hours", "4", "--ads", "50"]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_dir_all(archive.join("ad-events/dt=2026-01-01/hr=02")).unwrap();
    let o = backfill(&archive, &tmp.path().join("out"), "2026-01-01T00:00:00Z", "2026-01-01T04:00:00Z");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("warning: the ad-events archive at") && text(&o).contains("has no files for 1 hour between") && text(&o).contains("dt=2026-01-01/hr=02"), "{}", text(&o));
    let o = adsproc(&["backfill", "--job", "aggregation", "--quiet", "--fail-on-gap", "--source", archive.to_str().unwrap(), "--sink", tmp.path().join("out2").to_str().unwrap(),
        "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T04:00:00Z"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("dt=2026-01-01/hr=02") && text(&o).contains("--fail-on-gap"), "{}", text(&o));
    assert!(!tmp.path().join("out2/ad-metrics").exists(), "nothing written");
}

/// Paths given in flags are checked before the work starts: an unwritable --report-json fails
/// at once, naming it, and writes nothing.
#[test]
fn an_unwritable_report_path_fails_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    assert!(adsproc(&["gen", "--out", archive.to_str().unwrap(), "--events", "2000", "--hours", "1", "--ads", "20"]).status.success());
    let report = tmp.path().join("no/such/dir/report.json");
    let o = adsproc(&["backfill", "--job", "aggregation", "--quiet", "--source", archive.to_str().unwrap(), "--sink", tmp.path().join("out").to_str().unwrap(),
        "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T01:00:00Z", "--report-json", report.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--report-json") && text(&o).contains("no/such/dir/report.json"), "{}", text(&o));
    assert!(!tmp.path().join("out/ad-metrics").exists(), "nothing written");
}

/// gen into an archive root that holds the topics already refuses (two archives would merge,
/// two messages at each offset) unless told to replace it.
#[test]
fn gen_refuses_a_non_empty_out_unless_told_to_replace_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("archive");
    let gen = |extra: &[&str]| {
        let mut args = vec!["gen", "--out", out.to_str().unwrap(), "--events", "2000", "--hours", "1", "--ads", "20"];
        args.extend_from_slice(extra);
        adsproc(&args)
    };
    assert!(gen(&[]).status.success());
    let files = parquet_files_under(&out);
    let o = gen(&["--seed", "7"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("already holds") && text(&o).contains("--replace"), "{}", text(&o));
    assert_eq!(parquet_files_under(&out), files, "nothing changed");
    let o = gen(&["--seed", "7", "--replace", "--files-per-hour", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(parquet_files_under(&out.join("ad-events")).len(), 2, "the old files (4 per hour) are gone, the new ones (2) there");
}

fn parquet_files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = common::parquet_out::parquet_files(dir);
    out.sort();
    out
}
