//! `--metrics-addr` of the long-running commands, scraped while they work: the stream job, the
//! archiver and the load each serve Prometheus metrics whose values move as data flows, and
//! answer /healthz and /readyz.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::kafka::{spawn, wait_for_topic, Broker};
use common::postgres::Postgres;

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// An HTTP GET: (status, body).
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let status = reply.split(' ').nth(1)?.parse().ok()?;
    Some((status, reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// The sum of the samples of `name` whose labels contain every one of `with`.
fn value(metrics: &str, name: &str, with: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scrapes until `done(metrics)` holds (within 60 s), returning that scrape.
fn scrape_until(addr: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, body)) = get(addr, "/metrics") {
            if done(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "{what} within 60 s; last scrape:\n{body}");
        }
        assert!(Instant::now() < deadline, "{what}: no /metrics on {addr} within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn stream_archive_and_load_serve_metrics_that_move_as_data_flows() {
    let broker = Broker::start("memory");
    let work = tempfile::tempdir().unwrap();
    let mut producer = spawn(
        &["produce", "--brokers", &broker.addr, "--start", "2026-01-01T00:00:00Z", "--partitions", "2", "--events", "40000", "--hours", "1",
          "--ads", "100", "--late-fraction", "0.05", "--rate", "4000", "--watermark-tick"],
        &work.path().join("produce.log"),
    );
    wait_for_topic(&broker.addr, "ad-events");

    // The stream job.
    let stream_addr = free_addr();
    let ckpt = work.path().join("ckpt");
    let mut stream = spawn(
        &["stream", "--job", "aggregation", "--brokers", &broker.addr, "--checkpoint", ckpt.to_str().unwrap(), "--checkpoint-interval", "500ms",
          "--metrics-addr", &stream_addr],
        &work.path().join("stream.log"),
    );
    let first = scrape_until(&stream_addr, "the stream job read messages and checkpointed", |m| {
        value(m, "adsproc_messages_read_total", &[]) > 0.0 && value(m, "adsproc_checkpoint_duration_seconds_count", &[]) > 0.0
    });
    assert_eq!(get(&stream_addr, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(get(&stream_addr, "/readyz").map(|r| r.0), Some(200), "it owns its key groups");
    let later = scrape_until(&stream_addr, "the figures moved", |m| {
        value(m, "adsproc_messages_read_total", &[]) > value(&first, "adsproc_messages_read_total", &[])
            && value(m, "adsproc_records_written_total", &[]) > value(&first, "adsproc_records_written_total", &[])
            && value(m, "adsproc_checkpoint_duration_seconds_count", &[]) > value(&first, "adsproc_checkpoint_duration_seconds_count", &[])
    });
    for (name, with) in [
        ("adsproc_consumer_lag_messages", &["topic=\"ad-events\""][..]),
        ("adsproc_transactions_total", &["outcome=\"committed\""][..]),
        ("adsproc_state_entries", &["kind=\"dedupe_entries\""][..]),
        ("adsproc_audit", &["bucket=\"counted\""][..]),
        ("adsproc_owned_key_groups", &[][..]),
        ("adsproc_checkpoint_bytes", &[][..]),
    ] {
        assert!(later.lines().any(|l| l.starts_with(name) && with.iter().all(|w| l.contains(w))), "{name} {with:?} missing:\n{later}");
    }
    assert_eq!(value(&later, "adsproc_owned_key_groups", &[]), 8.0);
    assert!(value(&later, "adsproc_state_entries", &["dedupe_entries"]) > 0.0);
    assert!(value(&later, "adsproc_watermark_delay_seconds", &[]) > 0.0, "the generated events are from 2026-01-01: far behind the clock");

    // The archiver, continuously, flushing every second.
    let archive_addr = free_addr();
    let mut archiver = spawn(
        &["archive", "--topic", "ad-events", "--brokers", &broker.addr, "--sink", work.path().join("archive").to_str().unwrap(),
          "--flush-interval", "1s", "--metrics-addr", &archive_addr],
        &work.path().join("archive.log"),
    );
    scrape_until(&archive_addr, "the archiver read and wrote", |m| {
        value(m, "adsproc_messages_read_total", &["command=\"archive\""]) > 0.0 && value(m, "adsproc_records_written_total", &[]) > 0.0
    });
    assert_eq!(get(&archive_addr, "/readyz").map(|r| r.0), Some(200));

    // The load of the job's output into PostgreSQL.
    let pg = Postgres::start();
    let load_addr = free_addr();
    let mut load = spawn(
        &["load", "--brokers", &broker.addr, "--topic", "ad-metrics", "--into", &pg.url, "--linger", "200ms", "--metrics-addr", &load_addr],
        &work.path().join("load.log"),
    );
    let loaded = scrape_until(&load_addr, "the load wrote rows", |m| {
        value(m, "adsproc_records_written_total", &["to=\"ad_metrics\""]) > 0.0
            && value(m, "adsproc_transactions_total", &[]) > 0.0
            && m.contains("adsproc_consumer_lag_messages{command=\"load\",topic=\"ad-metrics\"")
    });
    assert!(value(&loaded, "adsproc_checkpoint_age_seconds", &[]) < 60.0, "the load committed within the minute");
    assert_eq!(get(&load_addr, "/readyz").map(|r| r.0), Some(200));
    assert_eq!(get(&load_addr, "/nothing").map(|r| r.0), Some(404));

    assert!(producer.wait().unwrap().success());
    // The stream job and the load stop cleanly on SIGTERM; the archiver restarts from what it
    // archived, and is simply killed.
    for child in [&mut stream, &mut load] {
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert!(child.wait().unwrap().success());
    }
    archiver.kill().unwrap();
    archiver.wait().unwrap();
}

/// A backfill, throttled so that it runs for seconds, counts what it reads as it goes.
#[test]
fn a_long_backfill_serves_metrics_too() {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("archive");
    common::kafka::adsproc(&["gen", "--out", archive.to_str().unwrap(), "--events", "20000", "--hours", "2", "--ads", "50"]);
    let addr = free_addr();
    let mut backfill = spawn(
        &["backfill", "--job", "aggregation", "--quiet", "--source", archive.to_str().unwrap(), "--sink", work.path().join("out").to_str().unwrap(),
          "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T02:00:00Z", "--max-rate", "1000", "--metrics-addr", &addr],
        &work.path().join("backfill.log"),
    );
    scrape_until(&addr, "the backfill read messages and wrote records", |m| {
        value(m, "adsproc_messages_read_total", &["command=\"backfill\""]) > 0.0 && value(m, "adsproc_records_written_total", &["to=\"backfill\""]) > 0.0
    });
    assert_eq!(get(&addr, "/readyz").map(|r| r.0), Some(200));
    assert!(backfill.wait().unwrap().success(), "{}", std::fs::read_to_string(work.path().join("backfill.log")).unwrap());
}

#[test]
fn a_taken_metrics_port_is_a_clear_error_before_any_work() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let ckpt = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_adsproc"))
        .args(["stream", "--job", "aggregation", "--brokers", "127.0.0.1:1", "--checkpoint", ckpt.path().to_str().unwrap(), "--metrics-addr", &addr])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains(&format!("--metrics-addr {addr}: cannot listen")), "{stderr}");
}
