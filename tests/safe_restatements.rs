//! A backfill's Parquet output is safe to restate into: killed (SIGKILL, SIGTERM) at random
//! moments or failing on a corrupt archive file, over a sink that holds an earlier run's
//! output, it leaves every partition exactly the earlier run's or its own, as an independent
//! reader (pyarrow, tests/support/read_partitions.py) sees it; two runs of different ranges and
//! modes into one sink leave every record_uuid once. On a local directory and on S3 (moto).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use adsproc::contract::time::rfc3339;
use common::moto::{create_bucket, s3_options, start_moto};
use common::{HOUR, MINUTE, T0};
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct PartitionFile {
    file: String,
    run: String,
    rows: Vec<String>,
}

/// `<table>/dt=…/hr=…` → its files, as pyarrow reads them.
type Partitions = BTreeMap<String, Vec<PartitionFile>>;

/// Where output goes: a local directory or an S3 prefix on a moto server.
struct Sink {
    url: String,
    options: Vec<String>,
    endpoint: Option<String>,
}

impl Sink {
    fn local(dir: &Path) -> Self {
        Self { url: dir.to_str().unwrap().to_string(), options: Vec::new(), endpoint: None }
    }

    fn s3(endpoint: &str, url: &str) -> Self {
        Self { url: url.to_string(), options: s3_options(endpoint), endpoint: Some(endpoint.to_string()) }
    }

    fn read(&self) -> Partitions {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/read_partitions.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(&self.url);
        if let Some(e) = &self.endpoint {
            cmd.arg(e);
        }
        let o = cmd.output().expect("python3");
        assert!(o.status.success(), "read_partitions.py {}: {}", self.url, String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Copies every object of `from` (a local directory) under this sink, replacing what it holds.
    fn fill_from(&self, from: &Path) {
        match &self.endpoint {
            None => {
                let _ = std::fs::remove_dir_all(&self.url);
                copy_dir(from, Path::new(&self.url));
            }
            Some(_) => {
                use object_store::ObjectStoreExt;
                let rt = tokio::runtime::Runtime::new().unwrap();
                let kv: Vec<(String, String)> = self.options.chunks(2).map(|c| adsproc::connector::store::parse_key_value(&c[1]).unwrap()).collect();
                let loc = adsproc::connector::store::open(&self.url, &kv, true).unwrap();
                let held: Vec<_> = rt.block_on(futures::TryStreamExt::try_collect::<Vec<_>>(loc.store.list(Some(&loc.prefix)))).unwrap();
                for m in held {
                    rt.block_on(loc.store.delete(&m.location)).unwrap();
                }
                for f in files_under(from) {
                    let rel = f.strip_prefix(from).unwrap().to_str().unwrap().to_string();
                    rt.block_on(loc.store.put(&loc.child(&rel), std::fs::read(&f).unwrap().into())).unwrap();
                }
            }
        }
    }
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for f in files_under(from) {
        let target = to.join(f.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&f, &target).unwrap();
    }
}

fn backfill_args(archive: &str, sink: &Sink, from: i64, to: i64, complete: bool) -> Vec<String> {
    let mut a: Vec<String> = ["backfill", "--job", "aggregation", "--quiet", "--source", archive, "--sink", &sink.url, "--from", &rfc3339(from), "--to", &rfc3339(to)]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if complete {
        a.push("--complete".into());
    }
    a.extend(sink.options.iter().cloned());
    a
}

fn run(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adsproc")).args(args).output().unwrap()
}

fn ok(args: &[String]) -> String {
    let o = run(args);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "adsproc {args:?} failed:\n{text}");
    text
}

/// A partition's rows, all files together (an absent partition has none).
fn rows(p: &Partitions, key: &str) -> Vec<String> {
    let mut rows: Vec<String> = p.get(key).into_iter().flatten().flat_map(|f| f.rows.iter().cloned()).collect();
    rows.sort();
    rows
}

/// Every partition of `got` is exactly `old`'s or exactly `new`'s, and holds one file per
/// writer (a table's `data.parquet`; in `dlq/`, one per source topic). Returns how many of the
/// partitions where the two runs differ are the new run's.
fn each_partition_old_or_new(got: &Partitions, old: &Partitions, new: &Partitions, case: &str) -> (usize, usize) {
    let keys: BTreeSet<&String> = got.keys().chain(old.keys()).chain(new.keys()).collect();
    let (mut differing, mut now_new) = (0, 0);
    for key in keys {
        let (g, o, n) = (rows(got, key), rows(old, key), rows(new, key));
        assert!(g == o || g == n, "{case}: partition {key} is neither the old run's ({} rows) nor the new run's ({} rows): {} rows", o.len(), n.len(), g.len());
        let names: Vec<&str> = got.get(key).into_iter().flatten().map(|f| f.file.as_str()).collect();
        let unique: BTreeSet<&&str> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{case}: {key} holds {names:?}");
        if !key.starts_with("dlq/") && !names.is_empty() {
            assert_eq!(names, ["data.parquet"], "{case}: {key} holds {names:?}");
        }
        if o != n {
            differing += 1;
            now_new += usize::from(g == n && g != o);
        }
    }
    (differing, now_new)
}

const HOURS: i64 = 6;

/// An archive of six hours with late events (which --complete counts and the default mode
/// dead-letters), so the two modes' outputs differ in most partitions.
fn archive(dir: &Path) -> String {
    let archive = dir.join("archive");
    if archive.exists() {
        return archive.to_str().unwrap().to_string();
    }
    ok(&["gen", "--out", archive.to_str().unwrap(), "--events", "120000", "--hours", "6", "--ads", "300", "--late-fraction", "0.1", "--seed", "9"]
        .map(String::from));
    archive.to_str().unwrap().to_string()
}

/// Kills the --complete restatement of [T0, T0 + 6 h) over a sink holding the default run's
/// output, again and again, at random moments, with SIGKILL and with SIGTERM; then one run of it
/// over an archive with a corrupt file; then lets it finish.
fn interrupted_restatements(sink: &Sink, work: &Path, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    println!("kill schedule seed {seed}");
    let archive = archive(work);
    let clean = |name: &str, complete: bool| -> Partitions {
        let s = Sink::local(&work.join(name));
        ok(&backfill_args(&archive, &s, T0, T0 + HOURS * HOUR, complete));
        s.read()
    };
    let (old, new) = (clean("old", false), clean("new", true));
    let differing = each_partition_old_or_new(&new, &old, &new, "the clean runs").0;
    assert!(differing >= 8, "the two modes differ in only {differing} partitions");
    let old_dir = work.join("old");

    // Throttled, so that the run takes seconds and the kills land while it writes.
    let mut restate = backfill_args(&archive, sink, T0, T0 + HOURS * HOUR, true);
    restate.extend(["--max-rate".to_string(), "20000".to_string()]);
    let (mut mixed, mut interrupted) = (0, 0);
    for kill in 0..8 {
        sink.fill_from(&old_dir);
        let child = Command::new(env!("CARGO_BIN_EXE_adsproc")).args(&restate).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(200..2600)));
        let sigterm = kill % 2 == 1;
        unsafe { libc::kill(child.id() as i32, if sigterm { libc::SIGTERM } else { libc::SIGKILL }) };
        let o = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        if sigterm {
            match o.status.code() {
                Some(130) => {
                    interrupted += 1;
                    assert!(stderr.contains("stopped by a signal") && stderr.contains("none is half"), "{stderr}");
                }
                Some(0) => {}
                other => panic!("kill {kill}: SIGTERM ended the run with {other:?}: {stderr}"),
            }
        }
        let (_, now_new) = each_partition_old_or_new(&sink.read(), &old, &new, &format!("kill {kill} ({})", if sigterm { "SIGTERM" } else { "SIGKILL" }));
        mixed += usize::from(now_new > 0 && now_new < differing);
    }
    assert!(mixed >= 2, "only {mixed} of the kills landed while the run was replacing partitions");
    assert!(interrupted >= 1, "no SIGTERM landed before the run's end");

    // A corrupt file in the middle of the archive: the run fails, naming it; the partitions it
    // had replaced are its own, the others as they were.
    let bad = work.join("archive-bad");
    copy_dir(Path::new(&archive), &bad);
    let victim = files_under(&bad.join("ad-events/dt=2026-01-01/hr=03")).into_iter().next().unwrap();
    std::fs::write(&victim, b"PAR1 this is not a Parquet file PAR1").unwrap();
    sink.fill_from(&old_dir);
    let o = run(&backfill_args(bad.to_str().unwrap(), sink, T0, T0 + HOURS * HOUR, true));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(victim.file_name().unwrap().to_str().unwrap()), "the error names the file: {stderr}");
    each_partition_old_or_new(&sink.read(), &old, &new, "a corrupt file");

    // Run again to its end: the restatement is complete, every partition the new run's.
    ok(&backfill_args(&archive, sink, T0, T0 + HOURS * HOUR, true));
    let done = sink.read();
    let (_, now_new) = each_partition_old_or_new(&done, &old, &new, "the finished restatement");
    assert_eq!(now_new, differing);
    println!("{differing} partitions differ between the runs; {mixed} kills left a mix of old and new ones, {interrupted} SIGTERMs stopped the run");
}

/// Two runs of overlapping ranges and different modes into one sink: [T0, T0 + 4 h) by default,
/// then [T0 + 1 h 30 min, T0 + 6 h) with --complete. Each record_uuid once; each window the
/// later run's if it starts in its range, else the earlier's (hour 1 keeps its first half).
fn overlapping_runs(sink: &Sink, work: &Path) {
    let archive = archive(work);
    let (a_to, b_from) = (T0 + 4 * HOUR, T0 + 90 * MINUTE);
    ok(&backfill_args(&archive, sink, T0, a_to, false));
    ok(&backfill_args(&archive, sink, b_from, T0 + HOURS * HOUR, true));
    let got = sink.read();

    let alone = |name: &str, from: i64, to: i64, complete: bool| -> Partitions {
        let s = Sink::local(&work.join(name));
        ok(&backfill_args(&archive, &s, from, to, complete));
        s.read()
    };
    let (a, b) = (alone("a", T0, a_to, false), alone("b", b_from, T0 + HOURS * HOUR, true));
    let metrics = |p: &Partitions| -> BTreeMap<String, serde_json::Value> {
        let mut out = BTreeMap::new();
        for (key, files) in p.iter().filter(|(k, _)| k.starts_with("ad-metrics/")) {
            for row in files.iter().flat_map(|f| &f.rows) {
                let v: serde_json::Value = serde_json::from_str(row).unwrap();
                let uuid = v["record_uuid"].as_str().unwrap().to_string();
                assert!(out.insert(uuid.clone(), v).is_none(), "{key}: record_uuid {uuid} twice");
            }
        }
        out
    };
    let got_metrics = metrics(&got);
    let mut expected = metrics(&a);
    let b_metrics = metrics(&b);
    // Windows of [b_from, a_to) are the later run's; pyarrow renders timestamps as text, so the
    // range test is on the window's minute, from its ad-metrics row.
    let starts_in_b = |v: &serde_json::Value| {
        let text = v["window_start"].as_str().unwrap();
        let t = chrono::NaiveDateTime::parse_from_str(&text[..19], "%Y-%m-%d %H:%M:%S").unwrap().and_utc().timestamp_millis();
        t >= b_from
    };
    expected.retain(|_, v| !starts_in_b(v));
    expected.extend(b_metrics);
    assert_eq!(got_metrics.len(), expected.len(), "record_uuids in the sink");
    let differ = expected.iter().filter(|(u, v)| got_metrics.get(*u) != Some(*v)).count();
    assert_eq!(differ, 0, "windows whose value is not the run that covers them");
    // Dead letters too: each record_uuid once.
    let mut dead = BTreeSet::new();
    for files in got.iter().filter(|(k, _)| k.starts_with("dlq/")).map(|(_, f)| f) {
        for row in files.iter().flat_map(|f| &f.rows) {
            let v: serde_json::Value = serde_json::from_str(row).unwrap();
            assert!(dead.insert(v["record_uuid"].as_str().unwrap().to_string()), "a dead letter twice");
        }
    }
    // Hour 1, covered in part by the later run, is one file the later run wrote.
    let hour1 = &got["ad-metrics/dt=2026-01-01/hr=01"];
    assert_eq!(hour1.len(), 1);
    assert!(hour1[0].run.contains("-complete-"), "hour 1 was rewritten by the later run: {}", hour1[0].run);
    println!("{} windows and {} dead letters, each once", got_metrics.len(), dead.len());
}

#[test]
fn restatements_into_a_local_sink_are_atomic_per_partition() {
    let work = tempfile::tempdir().unwrap();
    let seed = std::env::var("ADSPROC_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(35);
    interrupted_restatements(&Sink::local(&work.path().join("sink")), work.path(), seed);
    // The manifest of each run says what it did.
    let runs = files_under(&work.path().join("sink/_adsproc/runs"));
    let statuses: Vec<String> = runs
        .iter()
        .map(|f| serde_json::from_slice::<serde_json::Value>(&std::fs::read(f).unwrap()).unwrap()["status"].as_str().unwrap().to_string())
        .collect();
    assert!(statuses.iter().any(|s| s == "complete") && statuses.iter().any(|s| s == "failed"), "{statuses:?}");
}

#[test]
fn overlapping_runs_into_a_local_sink_leave_each_record_uuid_once() {
    let work = tempfile::tempdir().unwrap();
    overlapping_runs(&Sink::local(&work.path().join("sink")), work.path());
}

#[test]
fn restatements_into_s3_are_atomic_per_partition() {
    let moto = start_moto();
    create_bucket(&moto.endpoint, "out");
    let work = tempfile::tempdir().unwrap();
    interrupted_restatements(&Sink::s3(&moto.endpoint, "s3://out/restated"), work.path(), 36);
    overlapping_runs(&Sink::s3(&moto.endpoint, "s3://out/overlapping"), work.path());
}
