//! The attribution stream job against a real Kafka-protocol broker (Nisshi on loopback): its
//! committed output equals a backfill of the archived topics, record for record (record_uuid
//! and final value), whether it runs once, is killed with SIGKILL at random moments while both
//! topics flow, or runs as several processes of one group.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use adsproc::contract::attributed_orders::{AttributedOrder, AttributionType};
use adsproc::contract::outputs::DeadLetter;
use adsproc::contract::time::rfc3339;
use common::exactly_once::{assert_held_as_sent, committed_dead_letters, committed_output};
use common::kafka::*;
use common::parquet_out::{read_dead_of, read_table};
use common::{HOUR, T0};
use rand::{Rng, SeedableRng};

/// Orders are placed over the last 3 of the workload's 6 hours; a backfill of those hours.
const FROM: i64 = T0 + 3 * HOUR;
const TO: i64 = T0 + 6 * HOUR;

/// `adsproc produce` of both topics: 6 hours of ad events on 4 partitions and orders over
/// the last 3 hours on 3, with duplicates, late and malformed messages of both, not-JSON
/// messages and wrongly typed orders, and a watermark tick; `extra` after.
fn produce_args<'a>(addr: &'a str, events: &'a str, orders: &'a str, seed: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "produce", "--brokers", addr, "--start", "2026-01-01T00:00:00Z", "--hours", "6", "--partitions", "4", "--regions", "2",
        "--ads", "300", "--events", events, "--orders", orders, "--order-hours", "3", "--order-partitions", "3",
        "--duplicate-fraction", "0.05", "--late-fraction", "0.03", "--malformed-fraction", "0.02", "--not-json-fraction", "0.002",
        "--wrong-type-fraction", "0.005", "--seed", seed, "--watermark-tick",
    ];
    args.extend_from_slice(extra);
    args
}

/// Archives both topics and backfills the attribution job over [FROM, TO).
fn backfill_of_the_archive(broker: &Broker, work: &Path) -> (BTreeMap<uuid::Uuid, AttributedOrder>, BTreeSet<(i32, i64)>) {
    let (archive, out) = (work.join("archive"), work.join("out"));
    for topic in ["ad-events", "orders"] {
        adsproc(&["archive", "--topic", topic, "--brokers", &broker.addr, "--sink", archive.to_str().unwrap(), "--until-caught-up"]);
    }
    let report = adsproc(&[
        "backfill", "--job", "attribution", "--quiet", "--source", archive.to_str().unwrap(), "--sink", out.to_str().unwrap(),
        "--from", &rfc3339(FROM), "--to", &rfc3339(TO),
    ]);
    assert!(report.matches("[balanced]").count() == 2, "{report}");
    let records: Vec<AttributedOrder> = read_table(&out, "attributed-orders");
    let by_uuid: BTreeMap<uuid::Uuid, AttributedOrder> = records.iter().map(|r| (r.record_uuid, r.clone())).collect();
    assert_eq!(by_uuid.len(), records.len(), "a backfill writes each order once");
    (by_uuid, read_dead_of(&out, "orders"))
}

/// What an upsert store keeps of the stream job's committed `attributed-orders`, for the
/// orders of [FROM, TO).
fn streamed(broker: &Broker) -> BTreeMap<uuid::Uuid, AttributedOrder> {
    let (all, _) = upsert::<AttributedOrder>(&broker.addr, "attributed-orders");
    all.into_iter().filter(|(_, r)| (FROM..TO).contains(&r.order_time)).collect()
}

fn differences(expected: &BTreeMap<uuid::Uuid, AttributedOrder>, actual: &BTreeMap<uuid::Uuid, AttributedOrder>) -> String {
    let mut out = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => out.push(format!("missing {v:?}")),
            Some(a) if a != v => out.push(format!("expected {v:?}, got {a:?}")),
            _ => {}
        }
    }
    out.extend(actual.iter().filter(|(k, _)| !expected.contains_key(k)).map(|(_, v)| format!("unexpected {v:?}")));
    let n = out.len();
    out.truncate(5);
    format!("{n} differences: {}", out.join("; "))
}

/// The stream job's committed output equals the backfill's: every (record_uuid, final value)
/// of the range's orders, and every dead letter of an archived order (the not-JSON ones are
/// dead-lettered live only; a wrongly typed one is archived with the field null, so the
/// backfill gives another reason at the same position).
fn assert_equals_backfill(broker: &Broker, work: &Path) -> usize {
    let (expected, archived_dead) = backfill_of_the_archive(broker, work);
    assert!(expected.len() > 300, "a real workload: {} attributed orders", expected.len());
    let clicks = expected.values().filter(|r| r.attribution_type == AttributionType::Click).count();
    assert!(clicks > 20 && expected.len() - clicks > 20, "clicks and impressions: {clicks} of {}", expected.len());
    assert!(expected.values().filter(|r| r.status != "placed").count() > 50, "status updates reach the records");
    let actual = streamed(broker);
    assert!(actual == expected, "{}", differences(&expected, &actual));

    let live: Vec<DeadLetter> = dead_letters(&broker.addr, "orders-dlq").into_values().collect();
    let in_range: BTreeSet<(i32, i64)> = live
        .iter()
        .filter(|d| d.reason_code() != "not_json" && d.kafka_timestamp.is_some_and(|t| (FROM..TO).contains(&t)))
        .map(|d| (d.partition.unwrap(), d.offset.unwrap()))
        .collect();
    assert_eq!(in_range, archived_dead, "dead letters of [{}, {})", rfc3339(FROM), rfc3339(TO));
    for code in ["not_json", "wrong_type", "invalid_status", "negative_amount", "invalid_currency", "order_time_in_future", "order_time_too_old", "missing_field"] {
        assert!(live.iter().any(|d| d.reason_code() == code), "a dead letter for {code}");
    }
    expected.len()
}

#[test]
fn stream_output_equals_a_backfill_of_the_archived_topics_record_for_record() {
    let broker = Broker::start("memory");
    let work = tempfile::tempdir().unwrap();
    adsproc(&produce_args(&broker.addr, "60000", "6000", "5", &[]));
    let ckpt = work.path().join("ckpt");
    let log = adsproc(&["stream", "--job", "attribution", "--brokers", &broker.addr, "--checkpoint", ckpt.to_str().unwrap(),
        "--checkpoint-interval", "1s", "--stop-when-caught-up"]);
    assert_eq!(log.matches("[balanced]").count(), 2, "{log}");
    let n = assert_equals_backfill(&broker, work.path());
    eprintln!("{n} attributed orders, equal in stream and backfill");
}

#[test]
fn sigkill_at_random_moments_while_both_topics_flow_loses_nothing_and_repeats_nothing() {
    let seed: u64 = std::env::var("ADSPROC_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    eprintln!("kill schedule seed {seed} (rerun with ADSPROC_KILL_SEED={seed})");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let broker = Broker::start("sqlite");
    let work = tempfile::tempdir().unwrap();
    let produce_log = work.path().join("produce.log");
    let mut producer = spawn(&produce_args(&broker.addr, "60000", "6000", "7", &["--rate", "3000"]), &produce_log);
    wait_for_topic(&broker.addr, "ad-events");
    wait_for_topic(&broker.addr, "orders");
    let ckpt = work.path().join("ckpt");
    let log_path = work.path().join("stream.log");
    let args = ["stream", "--job", "attribution", "--brokers", &broker.addr, "--checkpoint", ckpt.to_str().unwrap(), "--checkpoint-interval", "300ms"];
    let mut child = spawn(&args, &log_path);
    let kills = 10;
    for kill in 0..kills {
        // Each run first gets its key groups; the kill then lands at a random moment of its work.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&log_path).unwrap_or_default().matches("owning key groups").count() <= kill && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(500..2500)));
        assert!(child.try_wait().unwrap().is_none(), "run {kill} ended on its own:\n{}", std::fs::read_to_string(&log_path).unwrap());
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "run {kill} ended on its own ({status})");
        child = spawn(&args, &log_path);
    }
    let produced = producer.wait().unwrap();
    assert!(produced.success(), "producer failed: {}", std::fs::read_to_string(work.path().join("produce.log")).unwrap());
    child.kill().unwrap();
    child.wait().unwrap();
    let mut last = args.to_vec();
    last.push("--stop-when-caught-up");
    adsproc(&last);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.matches("owning key groups").count() >= kills, "every killed run got its key groups:\n{log}");
    assert!(log.matches("restored checkpoints {0:").count() >= kills / 2, "restarts resumed from committed checkpoints:\n{log}");
    let n = assert_equals_backfill(&broker, work.path());

    // What the broker stored, committed told from aborted: the same strict reading as the
    // aggregation job's kill test. Between committed values of an order only its status and
    // amount may change: the attribution is decided once.
    assert_held_as_sent(&broker, &std::fs::read_to_string(&produce_log).unwrap(), &["ad-events", "orders"]);
    let out = committed_output::<AttributedOrder>(&broker, "attributed-orders", |a, b| {
        let decided = |o: &AttributedOrder| {
            (o.order_id.clone(), o.user_id.clone(), o.store_id.clone(), o.order_time, o.ad_id.clone(), o.attributed_event_id.clone(), o.attribution_type, o.ad_event_time)
        };
        if decided(a) == decided(b) { Ok(()) } else { Err("a committed attribution changed".into()) }
    });
    assert_eq!(out.last, streamed(&broker), "the last committed values are what an upsert consumer keeps");
    let dead = committed_dead_letters(&broker, "orders-dlq");
    eprintln!("{n} attributed orders after {kills} kills: {} committed records and {} of aborted transactions; {} dead letters, each committed once", out.committed, out.aborted, dead.len());
}

/// Three processes of one group, one killed for good and one joining late: the key groups,
/// with their candidates and orders, move between processes, and the committed output
/// converges on the backfill's.
#[test]
fn several_processes_share_the_key_groups_and_converge_on_the_backfill() {
    let broker = Broker::start("memory");
    let work = tempfile::tempdir().unwrap();
    let mut producer = spawn(&produce_args(&broker.addr, "40000", "4000", "9", &["--rate", "4000"]), &work.path().join("produce.log"));
    wait_for_topic(&broker.addr, "ad-events");
    wait_for_topic(&broker.addr, "orders");
    let ckpt = work.path().join("ckpt");
    let start = |instance: &str| stream_process("attribution", &broker.addr, &ckpt, instance, work.path());
    let (a, a_log) = start("a");
    let (mut b, b_log) = start("b");
    let (c, c_log) = start("c");
    std::thread::sleep(Duration::from_secs(4));
    b.kill().unwrap(); // for good: its key groups move after its session times out
    b.wait().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (d, d_log) = start("d");
    assert!(producer.wait().unwrap().success(), "producer failed");

    let (expected, _) = backfill_of_the_archive(&broker, work.path());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let actual = streamed(&broker);
        if actual == expected {
            break;
        }
        if Instant::now() >= deadline {
            if let Ok(keep) = std::env::var("ADSPROC_KEEP_LOGS") {
                for l in [&a_log, &b_log, &c_log, &d_log] {
                    let _ = std::fs::copy(l, Path::new(&keep).join(l.file_name().unwrap()));
                }
            }
            let tails: Vec<String> = [&a_log, &b_log, &c_log, &d_log]
                .iter()
                .map(|l| {
                    let text = std::fs::read_to_string(l).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    format!("{}:\n{}", l.display(), lines[lines.len().saturating_sub(8)..].join("\n"))
                })
                .collect();
            panic!("the group did not converge on the backfill within 120 s: {}\n{}", differences(&expected, &actual), tails.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for mut p in [a, c, d] {
        let _ = Command::new("kill").args(["-TERM", &p.id().to_string()]).status();
        assert!(p.wait().unwrap().success(), "a stream process did not stop cleanly on SIGTERM");
    }
    assert!(streamed(&broker) == expected, "the output after a clean stop");
    let logs: Vec<String> = [&a_log, &b_log, &c_log, &d_log].iter().map(|l| std::fs::read_to_string(l).unwrap()).collect();
    let shared = logs.iter().filter(|l| l.lines().any(|x| x.contains("owning key groups {") && !x.contains("{0, 1, 2, 3, 4, 5, 6, 7}") && !x.contains("owning key groups {}"))).count();
    assert!(shared >= 2, "at least two processes held a share of the key groups:\n{}", logs.join("\n----\n"));
    assert!(logs[3].contains("restored checkpoints {") && !logs[3].contains("restored checkpoints {})"), "the late joiner restored moved state");
}

/// The orders topic missing: a clear error at once, not a job waiting forever for it.
#[test]
fn a_missing_orders_topic_is_a_clear_error() {
    let broker = Broker::start("memory");
    let work = tempfile::tempdir().unwrap();
    adsproc(&["produce", "--brokers", &broker.addr, "--events", "100", "--hours", "1", "--orders", "0"]);
    let started = Instant::now();
    let o = Command::new(bin())
        .args(["stream", "--job", "attribution", "--brokers", &broker.addr, "--checkpoint", work.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains(&format!("input topic \"orders\" does not exist on {}", broker.addr)), "{text}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}
