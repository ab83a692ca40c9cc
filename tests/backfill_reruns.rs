//! Backfills of several jobs into one sink, and re-runs of a range: each run replaces its own
//! partitions' files and no other's (the jobs share the `dlq` table, one file per source topic).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn adsproc(args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_adsproc")).args(args).env("ADSPROC_NO_PROGRESS", "1").output().unwrap();
    assert!(o.status.success(), "adsproc {args:?}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

/// Every file under `root` (relative path) with its bytes.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if !p.starts_with(root.join("_adsproc")) {
                out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn backfill(job: &str, source: &Path, sink: &Path) {
    let (source, sink) = (source.to_str().unwrap(), sink.to_str().unwrap());
    adsproc(&["backfill", "--job", job, "--quiet", "--source", source, "--sink", sink, "--from", "2026-01-01T12:00:00Z", "--to", "2026-01-01T18:00:00Z"]);
}

#[test]
fn jobs_share_a_sink_and_a_rerun_replaces_only_its_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, sink) = (dir.path().join("archive"), dir.path().join("out"));
    let archive_s = archive.to_str().unwrap();
    adsproc(&["gen", "--out", archive_s, "--events", "60000", "--orders", "3000", "--seed", "5", "--log", "warn"]);

    backfill("aggregation", &archive, &sink);
    let aggregation = files(&sink);
    backfill("attribution", &archive, &sink);
    let both = files(&sink);
    let dlq = |file: &str| both.keys().filter(|k| k.starts_with("dlq/") && k.ends_with(&format!("/{file}"))).count();
    // One dead-letter file per source topic in each partition: each job replaces its own.
    assert!(dlq("ad-events.parquet") > 0 && dlq("orders.parquet") > 0, "{:?}", both.keys().collect::<Vec<_>>());
    assert!(both.keys().all(|k| k.starts_with("dlq/") || k.ends_with("/data.parquet")), "one data file per partition: {:?}", both.keys().collect::<Vec<_>>());
    for (path, bytes) in &aggregation {
        assert_eq!(both.get(path), Some(bytes), "{path}: the attribution backfill changed the aggregation job's file");
    }
    assert!(both.keys().any(|k| k.starts_with("attributed-orders/")));

    // Re-runs write the same files again, in place: nothing added, and the rows unchanged (the
    // footer names the run that wrote each file, so the bytes differ there).
    backfill("aggregation", &archive, &sink);
    backfill("attribution", &archive, &sink);
    let again = files(&sink);
    assert_eq!(again.keys().collect::<Vec<_>>(), both.keys().collect::<Vec<_>>());
    for (path, bytes) in &both {
        assert_eq!(rows(&again[path]), rows(bytes), "{path}: a re-run changed the rows");
    }
}

/// A Parquet file's rows.
fn rows(bytes: &[u8]) -> Vec<arrow::array::RecordBatch> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(bytes)).unwrap().build().unwrap();
    reader.map(Result::unwrap).collect()
}
