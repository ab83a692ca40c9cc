//! The stream job against a real Kafka-protocol broker (Nisshi on loopback): equivalence with a
//! backfill of the archived topic, record for record.

mod common;

use std::collections::BTreeMap;

use adsproc::contract::time::rfc3339;
use common::kafka::*;
use common::parquet_out::{backfill, read_dead, read_metrics};
use adsproc::contract::outputs::AdMetric;
use common::broker_log::transaction_outcomes;
use common::exactly_once::{assert_held_as_sent, committed_dead_letters, committed_output};
use common::{diff, Windows, HOUR, T0};
use std::process::Command;

/// `adsproc produce` to 4 partitions, 2 regions, from T0, with `extra`.
fn produce_args<'a>(addr: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["produce", "--brokers", addr, "--start", "2026-01-01T00:00:00Z", "--partitions", "4", "--regions", "2"];
    args.extend_from_slice(extra);
    args
}

fn produce(addr: &str, extra: &[&str]) -> String {
    adsproc(&produce_args(addr, extra))
}

/// Two hours of 300 ads with duplicates, late events, malformed and not-JSON messages.
fn messy_workload<'a>(events: &'a str, seed: &'a str) -> Vec<&'a str> {
    vec!["--events", events, "--hours", "2", "--ads", "300", "--duplicate-fraction", "0.05", "--late-fraction", "0.03",
         "--malformed-fraction", "0.02", "--not-json-fraction", "0.002", "--seed", seed, "--watermark-tick"]
}

fn as_windows(m: &BTreeMap<String, adsproc::contract::outputs::AdMetric>, from: i64, to: i64) -> Windows {
    m.values()
        .filter(|m| m.window_start >= from && m.window_start < to)
        .map(|m| {
            (
                (m.region.to_string(), m.ad_id.to_string(), m.window_start),
                (m.campaign_id.as_deref().map(str::to_string), m.advertiser_id.as_deref().map(str::to_string), m.impressions, m.clicks),
            )
        })
        .collect()
}

#[test]
fn stream_output_equals_a_backfill_of_the_archived_topic_record_for_record() {
    let broker = Broker::start("memory");
    let work = tempfile::tempdir().unwrap();
    let ckpt = work.path().join("ckpt");
    produce(
        &broker.addr,
        &messy_workload("30000", "11"),
    );
    let log = adsproc(&["stream", "--job", "aggregation", "--brokers", &broker.addr, "--checkpoint", ckpt.to_str().unwrap(),
        "--checkpoint-interval", "1s", "--stop-when-caught-up"]);
    assert!(log.contains("[balanced]"), "{log}");
    assert_equals_backfill(&broker, work.path(), T0, T0 + 2 * HOUR);
}

/// The windows of a backfill of the archived input topic over [from, to), once the committed
/// output of the processes still running has reached them (within 90 s).
fn converge_on_backfill(broker: &Broker, work: &std::path::Path, from: i64, to: i64) -> Windows {
    let (archive, out) = (work.join("archive"), work.join("out"));
    adsproc(&["archive", "--topic", "ad-events", "--brokers", &broker.addr, "--sink", archive.to_str().unwrap(), "--until-caught-up"]);
    backfill(&archive, &out, from, to, &[]);
    let expected = read_metrics(&out);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let got = as_windows(&metrics_upsert(&broker.addr, "ad-metrics").0, from, to);
        if got == expected {
            return expected;
        }
        assert!(std::time::Instant::now() < deadline, "the output did not converge on the backfill within 90 s: {}", diff(&expected, &got));
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Archives the input topic, backfills [from, to) from the archive, and compares what an
/// upsert store keeps of the stream job's committed output with it: every window, every dead
/// letter.
fn assert_equals_backfill(broker: &Broker, work: &std::path::Path, from: i64, to: i64) -> usize {
    let (archive, out) = (work.join("archive"), work.join("out"));
    adsproc(&["archive", "--topic", "ad-events", "--brokers", &broker.addr, "--sink", archive.to_str().unwrap(), "--until-caught-up"]);
    backfill(&archive, &out, from, to, &[]);

    let (stream, records) = metrics_upsert(&broker.addr, "ad-metrics");
    let streamed = as_windows(&stream, from, to);
    let backfilled: Windows = read_metrics(&out);
    assert!(backfilled.len() > 5_000, "a real workload: {} windows", backfilled.len());
    assert!(records >= streamed.len());
    assert_eq!(streamed.len(), backfilled.len(), "{}", diff(&backfilled, &streamed));
    assert!(streamed == backfilled, "{}", diff(&backfilled, &streamed));

    // Dead letters: every archived message the backfill rejected was rejected live, with the
    // same record_uuid; live, the not-JSON messages (never archived) come on top.
    let live = dead_letters(&broker.addr, "ad-events-dlq");
    let archived_rejects = read_dead(&out);
    let live_positions: std::collections::BTreeSet<(i32, i64)> =
        live.values().filter(|d| d.reason_code() != "not_json").map(|d| (d.partition.unwrap(), d.offset.unwrap())).collect();
    let in_range: std::collections::BTreeSet<(i32, i64)> = live
        .values()
        .filter(|d| d.reason_code() != "not_json" && d.kafka_timestamp.is_some_and(|t| t >= from && t < to))
        .map(|d| (d.partition.unwrap(), d.offset.unwrap()))
        .collect();
    assert_eq!(in_range, archived_rejects, "dead letters of [{}, {})", rfc3339(from), rfc3339(to));
    assert!(live_positions.len() >= archived_rejects.len());
    assert!(live.values().any(|d| d.reason_code() == "not_json"), "the workload had not-JSON messages");
    records
}

#[test]
fn sigkill_at_random_moments_and_a_broker_restart_and_crash_lose_nothing_and_count_nothing_twice() {
    use rand::{Rng, SeedableRng};
    // A fixed seed, printed: a failure replays with the same kill schedule (the machine's timing
    // still moves where in the job's work each kill lands). ADSPROC_KILL_SEED picks another.
    let seed: u64 = std::env::var("ADSPROC_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(3636);
    println!("kill schedule seed {seed} (rerun with ADSPROC_KILL_SEED={seed})");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);

    let broker = Broker::start("sqlite");
    let work = tempfile::tempdir().unwrap();
    let ckpt = work.path().join("ckpt");
    let produce_log = work.path().join("produce.log");
    let mut producer = spawn(&produce_args(&broker.addr, &[messy_workload("90000", "23"), vec!["--rate", "2500"]].concat()), &produce_log);
    wait_for_topic(&broker.addr, "ad-events");
    let stream_log = work.path().join("stream.log");
    let args = ["stream", "--job", "aggregation", "--brokers", &broker.addr, "--checkpoint", ckpt.to_str().unwrap(), "--checkpoint-interval", "300ms"];
    let runs_started = || std::fs::read_to_string(&stream_log).unwrap_or_default().matches("owning key groups").count();
    let mut child = spawn(&args, &stream_log);
    let kills = 20;
    for kill in 0..kills {
        // Each run first gets its key groups (group join takes a variable second or two on a
        // loaded machine); the kill then lands at a random moment of its processing.
        // (The run that crashes on purpose after kill 4, and its restart, started two more.)
        wait_until(20, || runs_started() > kill + 2 * usize::from(kill > 4));
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(700..2500)));
        if kill == 6 {
            // The broker goes down and comes back under a running job (sqlite storage).
            broker.restart();
            std::thread::sleep(std::time::Duration::from_millis(rng.random_range(300..1500)));
        }
        if kill == 13 {
            // The broker crashes (SIGKILL, nothing flushed) and comes back under a running job.
            broker.crash();
            std::thread::sleep(std::time::Duration::from_millis(rng.random_range(300..1500)));
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        // Only our SIGKILL may end a run: a job that exits on its own (a panic, an error when the
        // broker goes away) would otherwise be hidden by the next restart.
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "run {kill} ended on its own ({status}):\n{}",
            std::fs::read_to_string(&stream_log).unwrap_or_default().lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
        if kill == 4 {
            // A random kill rarely lands between a checkpoint's snapshots and its commit, the
            // window the protocol exists for; this run dies there on purpose.
            let pass = rng.random_range(2..6);
            crash_after_snapshot_then_restore_the_committed_checkpoint(&args, &stream_log, &ckpt, pass);
        }
        child = spawn(&args, &stream_log);
    }
    let produced = producer.wait().unwrap();
    let produced_text = std::fs::read_to_string(&produce_log).unwrap();
    assert!(produced.success(), "producer failed: {produced_text}");
    assert!(child.try_wait().unwrap().is_none(), "the last run ended on its own");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut last = args.to_vec();
    last.push("--stop-when-caught-up");
    adsproc(&last);

    let log = std::fs::read_to_string(&stream_log).unwrap();
    let starts = log.matches("owning key groups").count();
    let restores = log.matches("restored checkpoints {0:").count();
    assert!(starts >= kills + 2, "every killed run and the final one got their key groups, saw {starts}:\n{log}");
    assert!(restores >= kills - 4, "most restarts resumed from a committed checkpoint, saw {restores}:\n{log}");
    let records = assert_equals_backfill(&broker, work.path(), T0, T0 + 2 * HOUR);

    // What the broker itself holds, committed told from aborted.
    // (produce writes a few orders too: the aggregation job does not read them.)
    assert_held_as_sent(&broker, &produced_text, &["ad-events", "orders"]);
    let out = committed_output::<AdMetric>(&broker, "ad-metrics", |a, b| {
        if b.impressions < a.impressions || b.clicks < a.clicks {
            Err(format!("committed counts went from {}/{} down to {}/{}", a.impressions, a.clicks, b.impressions, b.clicks))
        } else {
            Ok(())
        }
    });
    let backfilled = read_metrics(&work.path().join("out"));
    let by_uuid = |w: &Windows| -> BTreeMap<uuid::Uuid, _> {
        w.iter().map(|((region, ad, ws), v)| (adsproc::contract::record_uuid::ad_metric(region, ad, *ws), v.clone())).collect()
    };
    let committed: Windows = as_windows(&out.last.iter().map(|(u, m)| (u.to_string(), m.clone())).collect(), T0, T0 + 2 * HOUR);
    assert!(by_uuid(&committed) == by_uuid(&backfilled), "the last committed value per record_uuid: {}", diff(&backfilled, &committed));
    assert!(out.aborted > 0, "some kill aborted a transaction that had written records");
    let dead = committed_dead_letters(&broker, "ad-events-dlq");
    let outcomes = transaction_outcomes(&broker);
    assert!(outcomes.get("ABORTED").is_some_and(|n| *n > 0), "the broker aborted transactions: {outcomes:?}");
    eprintln!(
        "after {kills} kills, a crash at a crash point, a broker restart and a broker crash: {records} ad-metrics records in the topic, \
         {} committed and {} of aborted transactions; {} dead letters, each committed once; producer epochs by final state {outcomes:?}",
        out.committed, out.aborted, dead.len()
    );
}

fn wait_until(seconds: u64, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !done() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The newest checkpoint file of each key group in the checkpoint directory.
fn newest_snapshots(ckpt: &std::path::Path) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for group in std::fs::read_dir(ckpt).unwrap().flatten() {
        let name = group.file_name().to_string_lossy().to_string();
        let Some(g) = name.strip_prefix("kg-").and_then(|g| g.parse::<u32>().ok()) else { continue };
        let newest = std::fs::read_dir(group.path()).unwrap().flatten().filter_map(|f| {
            f.file_name().to_string_lossy().strip_suffix(".ckpt").and_then(|n| n.parse::<u64>().ok())
        });
        out.insert(g, newest.max().expect("a group directory holds a checkpoint"));
    }
    out
}

/// The key groups and checkpoint numbers the last run in `log` said it restored.
fn last_restore(log: &str) -> BTreeMap<u32, u64> {
    let line = log.lines().rev().find(|l| l.contains("owning key groups")).expect("a run got its key groups");
    let seqs = line.split("restored checkpoints {").nth(1).and_then(|s| s.split('}').next()).unwrap_or_default();
    seqs.split(", ").filter(|s| !s.is_empty()).map(|kv| {
        let (g, n) = kv.split_once(": ").unwrap();
        (g.parse().unwrap(), n.parse().unwrap())
    }).collect()
}

/// Runs the job until the `pass`-th checkpoint has written its snapshots and dies there
/// (`ADSPROC_CRASH_AT`) with its transactions open; then starts it again and checks that it
/// restored, for every key group, the checkpoint before the written one: the committed one.
fn crash_after_snapshot_then_restore_the_committed_checkpoint(args: &[&str], log: &std::path::Path, ckpt: &std::path::Path, pass: u32) {
    let mut crashing = spawn_with_env(args, log, &[("ADSPROC_CRASH_AT", &format!("stream-after-snapshot:{pass}"))]);
    let status = crashing.wait().unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(6), "the run aborts at the crash point ({status})");
    assert!(text.ends_with(&format!("crash point stream-after-snapshot (pass {pass}): aborting\n")), "{text}");
    let written = newest_snapshots(ckpt);
    let mut restarted = spawn(args, log);
    wait_until(20, || std::fs::read_to_string(log).unwrap()[text.len()..].contains("owning key groups"));
    restarted.kill().unwrap();
    restarted.wait().unwrap();
    let restored = last_restore(&std::fs::read_to_string(log).unwrap()[text.len()..]);
    let expected: BTreeMap<u32, u64> = written.iter().map(|(g, n)| (*g, n - 1)).collect();
    assert_eq!(restored, expected, "after a crash between snapshot {written:?} and its commit, the committed checkpoints are restored");
}

/// Several processes in one group, one of them killed for good and one joining late, give the
/// same committed output as a backfill: key groups and their state move between processes.
#[test]
fn several_processes_share_the_key_groups_and_their_state_moves_on_rebalance() {
    let broker = Broker::start("memory");
    let work = tempfile::tempdir().unwrap();
    let ckpt = work.path().join("ckpt");
    let mut producer = spawn(
        &produce_args(&broker.addr, &[messy_workload("40000", "31"), vec!["--rate", "4000"]].concat()),
        &work.path().join("produce.log"),
    );
    wait_for_topic(&broker.addr, "ad-events");
    let start = |instance: &str| stream_process("aggregation", &broker.addr, &ckpt, instance, work.path());
    let (a, a_log) = start("a");
    let (mut b, b_log) = start("b");
    let (c, c_log) = start("c");
    std::thread::sleep(std::time::Duration::from_secs(4));
    b.kill().unwrap(); // for good: its key groups must move, with their state, after its session times out
    b.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (d, d_log) = start("d");
    assert!(producer.wait().unwrap().success(), "producer failed");

    let (from, to) = (T0, T0 + 2 * HOUR);
    let expected = converge_on_backfill(&broker, work.path(), from, to);
    // A clean stop: SIGTERM, a final checkpoint, exit 0; and the output is still exactly right.
    for mut p in [a, c, d] {
        let _ = Command::new("kill").args(["-TERM", &p.id().to_string()]).status();
        assert!(p.wait().unwrap().success(), "a stream process did not stop cleanly on SIGTERM");
    }
    let (live, _) = metrics_upsert(&broker.addr, "ad-metrics");
    let got = as_windows(&live, from, to);
    assert!(got == expected, "{}", diff(&expected, &got));

    let logs: Vec<String> = [&a_log, &b_log, &c_log, &d_log].iter().map(|l| std::fs::read_to_string(l).unwrap()).collect();
    let shared = logs.iter().filter(|l| l.lines().any(|x| x.contains("owning key groups {") && !x.contains("{0, 1, 2, 3, 4, 5, 6, 7}") && !x.contains("owning key groups {}"))).count();
    assert!(shared >= 2, "at least two processes held a share of the key groups:\n{}", logs.join("\n----\n"));
    assert!(logs[3].contains("restored checkpoints {") && !logs[3].contains("restored checkpoints {})"), "the late joiner restored moved state");
}

/// Checkpoints whose transactions carry no record (no window fired, no dead letter) still
/// commit their numbers: a restart restores the latest. Nisshi 0.7.0 commits a transaction's
/// offsets only when the transaction produced a record (after a producer's first commit), so
/// the job writes a marker record in every checkpoint's transaction (docs/stream.md).
#[test]
fn checkpoints_without_output_are_committed_and_restored() {
    let broker = Broker::start("memory");
    let work = tempfile::tempdir().unwrap();
    // Valid events of one minute and nothing after it: no window fires, nothing is dead-lettered.
    {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let settings = adsproc::connector::kafka::KafkaSettings::new(&broker.addr, &[]);
        adsproc::connector::kafka::admin::ensure_topic(&settings, "ad-events", 1).unwrap();
        let producer: BaseProducer = settings.config(&[]).create().unwrap();
        for i in 0..5i64 {
            let t = T0 + 1_000 * (i + 1);
            let payload = format!(r#"{{"event_id":"e{i}","event_type":"impression","ad_id":"ad-1","event_time":{t},"region":"r"}}"#);
            producer.send(BaseRecord::<(), str>::to("ad-events").partition(0).timestamp(t).payload(&payload)).unwrap();
        }
        producer.flush(std::time::Duration::from_secs(10)).unwrap();
    }
    let ckpt = work.path().join("ckpt");
    let log_path = work.path().join("stream.log");
    let args = ["stream", "--job", "aggregation", "--brokers", &broker.addr, "--checkpoint", ckpt.to_str().unwrap(),
        "--checkpoint-interval", "200ms", "--key-groups", "1", "--idle-timeout", "1h"];
    let mut child = spawn(&args, &log_path);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_to_string(&log_path).unwrap_or_default().contains("checkpoint Some(8)") {
        assert!(std::time::Instant::now() < deadline, "no 8 checkpoints within 30 s:\n{}", std::fs::read_to_string(&log_path).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(metrics_upsert(&broker.addr, "ad-metrics").0.is_empty(), "no window fired");
    let mut child = spawn(&args, &log_path);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let restored = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(line) = log.lines().filter(|l| l.contains("owning key groups")).nth(1) {
            break line.to_string();
        }
        assert!(child.try_wait().unwrap().is_none(), "the restart failed:\n{log}");
        assert!(std::time::Instant::now() < deadline, "no restart within 30 s:\n{log}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let seq: u64 = restored.split("restored checkpoints {0: ").nth(1).and_then(|s| s.split('}').next()).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(seq >= 8, "the restart restored checkpoint {seq}, not one of the latest: {restored}");
}

/// A zombie: a process paused (SIGSTOP) until its key groups move to another process, then
/// resumed mid-transaction. Its late commits must be refused (its producers were fenced by the
/// new owner's), and the output must stay exactly a backfill's.
#[test]
fn a_paused_process_that_resumes_after_its_key_groups_moved_is_fenced() {
    let broker = Broker::start("memory");
    let work = tempfile::tempdir().unwrap();
    let ckpt = work.path().join("ckpt");
    let mut producer = spawn(
        &produce_args(&broker.addr, &[messy_workload("40000", "36"), vec!["--rate", "2500"]].concat()),
        &work.path().join("produce.log"),
    );
    wait_for_topic(&broker.addr, "ad-events");
    let start = |instance: &str| stream_process("aggregation", &broker.addr, &ckpt, instance, work.path());
    let (mut zombie, zombie_log) = start("zombie");
    let read = |log: &std::path::Path| std::fs::read_to_string(log).unwrap_or_default();
    let wait_for = |what: &str, log: &std::path::Path, ok: &dyn Fn(&str) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !ok(&read(log)) {
            assert!(std::time::Instant::now() < deadline, "{what} within 60 s:\n{}", read(log));
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait_for("the first process committed checkpoints", &zombie_log, &|l| l.matches("INFO checkpoint").count() >= 5);
    unsafe { libc::kill(zombie.id() as i32, libc::SIGSTOP) };
    let (mut heir, heir_log) = start("heir");
    wait_for("the key groups moved to the second process", &heir_log, &|l| l.contains("owning key groups {0, 1, 2, 3, 4, 5, 6, 7}"));
    wait_for("the second process committed checkpoints", &heir_log, &|l| l.matches("INFO checkpoint").count() >= 3);
    unsafe { libc::kill(zombie.id() as i32, libc::SIGCONT) };
    assert!(producer.wait().unwrap().success(), "producer failed");
    std::thread::sleep(std::time::Duration::from_secs(3));

    let (from, to) = (T0, T0 + 2 * HOUR);
    let expected = converge_on_backfill(&broker, work.path(), from, to);
    for p in [&mut zombie, &mut heir] {
        let _ = Command::new("kill").args(["-TERM", &p.id().to_string()]).status();
        let _ = p.wait();
    }
    let got = as_windows(&metrics_upsert(&broker.addr, "ad-metrics").0, from, to);
    assert!(got == expected, "{}", diff(&expected, &got));
    let z = read(&zombie_log);
    println!("the zombie's log after its resume:\n{}", z.lines().filter(|l| !l.contains("INFO checkpoint")).rev().take(12).collect::<Vec<_>>().join("\n"));
    assert!(z.to_lowercase().contains("fenced"), "the resumed process's commits were not refused as fenced:\n{z}");
}
