//! The union job on two real brokers (two regions) and the loads into each region's PostgreSQL
//! database: active-active serving. Each region runs its aggregation and attribution jobs over
//! its own traffic; a union per region merges both regions' outputs on its cluster (one of them
//! SIGKILLed at random moments while records flow); a load per region and table fills its
//! database. Both databases must then hold the same rows: the last value of every record_uuid
//! of both regions' output topics.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use adsproc::contract::attributed_orders::AttributedOrder;
use adsproc::contract::outputs::AdMetric;
use adsproc::contract::time::rfc3339;
use common::exactly_once::committed_output;
use common::kafka::{adsproc, read_all, spawn, upsert, Broker};
use common::parquet_out::{backfill, read_table};
use common::postgres::{metrics_table, Postgres};
use common::T0;
use rand::{Rng, SeedableRng};

/// A region's own traffic (region-a or region-b: `first_region` 0 or 1), and its jobs' outputs.
fn region(broker: &Broker, first_region: &str, seed: &str, work: &Path, aggregation_job_file: Option<&Path>) {
    adsproc(&[
        "produce", "--brokers", &broker.addr, "--start", &rfc3339(T0), "--partitions", "4", "--regions", "1", "--first-region", first_region,
        "--events", "20000", "--hours", "2", "--ads", "150", "--orders", "600", "--order-hours", "2", "--duplicate-fraction", "0.03",
        "--late-fraction", "0.03", "--malformed-fraction", "0.01", "--seed", seed, "--watermark-tick",
    ]);
    for job in ["aggregation", "attribution"] {
        let ckpt = work.join(format!("ckpt-{job}-{first_region}"));
        let mut args = vec!["stream", "--job", job, "--brokers", &broker.addr, "--checkpoint", ckpt.to_str().unwrap(), "--checkpoint-interval", "1s",
            "--stop-when-caught-up"];
        if let (Some(f), "aggregation") = (aggregation_job_file, job) {
            args.extend(["--job-file", f.to_str().unwrap()]);
        }
        adsproc(&args);
    }
}

fn union_args<'a>(local: &'a str, ckpt: &'a str, a: &'a str, b: &'a str) -> Vec<String> {
    ["stream", "--job", "union", "--brokers", local, "--checkpoint", ckpt, "--checkpoint-interval", "300ms", "-X", "session.timeout.ms=6000"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--input=region-a={a}"), format!("--input=region-b={b}")])
        .collect()
}

/// Runs a union on `local` until caught up; returns its log.
fn union_until_caught_up(local: &Broker, ckpt: &Path, a: &Broker, b: &Broker) -> String {
    let out = std::process::Command::new(common::kafka::bin())
        .args(union_args(&local.addr, ckpt.to_str().unwrap(), &a.addr, &b.addr))
        .arg("--stop-when-caught-up")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success() && text.contains("[balanced]"), "{text}");
    text
}

/// How many records a union that never failed forwards of these sources: every record whose
/// value differs from the one before it of its record_uuid (offset order).
fn changes(sources: &[Vec<adsproc::connector::kafka::topic_dump::Record>]) -> usize {
    let mut last: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut n = 0;
    for topic in sources {
        for (_, _, k, v) in topic {
            if last.get(k) != Some(v) {
                n += 1;
                last.insert(k.clone(), v.clone());
            }
        }
    }
    n
}

/// Equal maps, or a panic that says how they differ (counts and a few keys, not the maps).
fn same<V: PartialEq + std::fmt::Debug>(what: &str, got: &BTreeMap<uuid::Uuid, V>, expected: &BTreeMap<uuid::Uuid, V>) {
    if got == expected {
        return;
    }
    let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(k)).collect();
    let wrong: Vec<_> = expected.iter().filter(|(k, v)| got.get(k).is_some_and(|g| g != *v)).map(|(k, v)| (k, v, &got[k])).collect();
    panic!(
        "{what}: {} rows, expected {}: {} missing (e.g. {:?}), {} extra (e.g. {:?}), {} differ (e.g. {:?})",
        got.len(),
        expected.len(),
        missing.len(),
        missing.iter().take(2).map(|k| &expected[*k]).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(2).map(|k| &got[*k]).collect::<Vec<_>>(),
        wrong.len(),
        wrong.iter().take(2).collect::<Vec<_>>()
    );
}

fn orders_table(url: &str) -> BTreeMap<uuid::Uuid, (String, String, i64)> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.query("SELECT record_uuid, order_id, status, amount_cents FROM attributed_orders_all", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect()
}

#[test]
fn two_regions_serve_the_same_rows_through_union_and_load_with_kills() {
    let seed: u64 = std::env::var("ADSPROC_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(34);
    println!("seed {seed} (ADSPROC_TEST_SEED reproduces the kill moments)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // Region a's broker stores to sqlite: what the killed union committed is read from it.
    let (a, b) = (Broker::start("sqlite"), Broker::start("memory"));
    let work = tempfile::tempdir().unwrap();
    // Region b's aggregation runs live with a faulty rule: events more than two minutes behind
    // their ingest time are "too old" (the fixed job file restates it below).
    let faulty = work.path().join("faulty.toml");
    std::fs::write(&faulty, adsproc::jobs::aggregation::rules::DEFAULT_JOB_FILE.replace("max_past = \"7d\"", "max_past = \"2m\"")).unwrap();
    region(&a, "0", "1", work.path(), None);
    region(&b, "1", "2", work.path(), Some(&faulty));

    // Region b's union runs undisturbed; region a's is killed at random moments as it works.
    let ckpt_b = work.path().join("union-b");
    union_until_caught_up(&b, &ckpt_b, &a, &b);

    // While region a's union is killed, region a's traffic goes on: another hour of events,
    // sent at two thousand a second (30 s: the ten kills take 14 s on average, and more when the
    // suite's other tests load the machine), counted by its aggregation job as they come.
    let more = spawn(
        &["produce", "--brokers", &a.addr, "--start", &rfc3339(T0 + 4 * 3_600_000), "--partitions", "4", "--regions", "1", "--events", "60000",
          "--hours", "1", "--ads", "150", "--seed", "3", "--rate", "2000", "--watermark-tick"],
        &work.path().join("produce-more.log"),
    );
    let ckpt_agg = work.path().join("ckpt-aggregation-0");
    let live = spawn(
        &["stream", "--job", "aggregation", "--brokers", &a.addr, "--checkpoint", ckpt_agg.to_str().unwrap(), "--checkpoint-interval", "500ms"],
        &work.path().join("aggregation-a.log"),
    );
    let ckpt_a = work.path().join("union-a");
    let log = work.path().join("union-a.log");
    let args = union_args(&a.addr, ckpt_a.to_str().unwrap(), &a.addr, &b.addr);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sources_before = read_all(&a.addr, "ad-metrics").len();
    for kill in 1..=10 {
        let mut child = spawn(&args, &log);
        std::thread::sleep(Duration::from_millis(rng.random_range(600..2200)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "union a ended on its own before kill {kill} ({status}):\n{}", std::fs::read_to_string(&log).unwrap());
    }
    let (mut more, mut live) = (more, live);
    assert!(more.try_wait().unwrap().is_none(), "the traffic ended before the last kill: the kills did not land while records flowed");
    assert!(read_all(&a.addr, "ad-metrics").len() > sources_before, "region a's output grew while its union was killed");
    assert!(more.wait().unwrap().success());
    // The aggregation job stops cleanly (SIGTERM), then catches up with the last of the traffic.
    unsafe { libc::kill(live.id() as i32, libc::SIGTERM) };
    assert!(live.wait().unwrap().success());
    adsproc(&["stream", "--job", "aggregation", "--brokers", &a.addr, "--checkpoint", ckpt_agg.to_str().unwrap(), "--stop-when-caught-up"]);
    union_until_caught_up(&a, &ckpt_a, &a, &b);
    // What the killed union committed, read from region a's broker storage (the kill test's
    // strict reading): every record keyed by its derived record_uuid, and the upsert of all
    // records, aborted ones included, ending on the committed values. (No order rule between
    // committed values: the union forwards its sources' values as they come.)
    let forwarded_metrics = committed_output::<AdMetric>(&a, "ad-metrics-all", |_, _| Ok(()));
    let forwarded_orders = committed_output::<AttributedOrder>(&a, "attributed-orders-all", |_, _| Ok(()));
    println!(
        "union a after 10 kills: ad-metrics-all {} committed and {} aborted records, attributed-orders-all {} and {}",
        forwarded_metrics.committed, forwarded_metrics.aborted, forwarded_orders.committed, forwarded_orders.aborted
    );
    // Region b's union resumes from its checkpoint and forwards region a's new records.
    let text = union_until_caught_up(&b, &ckpt_b, &a, &b);
    // (Its first run committed one checkpoint or, on a loaded machine, more.)
    let restored = text.lines().find(|l| l.contains("owning key groups")).and_then(|l| l.split("restored checkpoints {").nth(1)).unwrap_or_default();
    assert!((0..8).all(|g| restored.contains(&format!("{g}: "))), "every key group resumed from its checkpoint: {text}");

    // Contract §6 on the topics: per record_uuid, the union topic's last value is the source's.
    let mut metrics: BTreeMap<uuid::Uuid, AdMetric> = upsert::<AdMetric>(&a.addr, "ad-metrics").0;
    metrics.extend(upsert::<AdMetric>(&b.addr, "ad-metrics").0);
    let mut orders: BTreeMap<uuid::Uuid, AttributedOrder> = upsert::<AttributedOrder>(&a.addr, "attributed-orders").0;
    orders.extend(upsert::<AttributedOrder>(&b.addr, "attributed-orders").0);
    assert!(metrics.len() > 3000 && orders.len() > 100, "a real workload: {} metrics, {} orders", metrics.len(), orders.len());
    assert!(metrics.values().any(|m| &*m.region == "region-a") && metrics.values().any(|m| &*m.region == "region-b"));
    for broker in [&a, &b] {
        same(&format!("ad-metrics-all on {}", broker.addr), &upsert::<AdMetric>(&broker.addr, "ad-metrics-all").0, &metrics);
        same(&format!("attributed-orders-all on {}", broker.addr), &upsert::<AttributedOrder>(&broker.addr, "attributed-orders-all").0, &orders);
    }
    // Replicas are collapsed: the undisturbed union forwarded each change of value once.
    let sources = [read_all(&a.addr, "ad-metrics"), read_all(&b.addr, "ad-metrics")];
    assert_eq!(read_all(&b.addr, "ad-metrics-all").len(), changes(&sources), "records forwarded by region b's union");

    // Active-active serving: a load per region and table, into each region's database.
    let pg = Postgres::start();
    let urls = [pg.database("region_a"), pg.database("region_b")];
    for (broker, url) in [(&a, &urls[0]), (&b, &urls[1])] {
        for topic in ["ad-metrics-all", "attributed-orders-all"] {
            adsproc(&["load", "--brokers", &broker.addr, "--topic", topic, "--into", url, "--stop-when-caught-up"]);
        }
    }
    let served: Vec<_> = urls.iter().map(|u| metrics_table(u, "ad_metrics_all")).collect();
    same("region a's database", &served[0], &metrics);
    same("region b's database", &served[1], &metrics);
    let expected_orders: BTreeMap<uuid::Uuid, (String, String, i64)> =
        orders.values().map(|o| (o.record_uuid, (o.order_id.clone(), o.status.clone(), o.amount_cents))).collect();
    same("region a's attributed orders", &orders_table(&urls[0]), &expected_orders);
    same("region b's attributed orders", &orders_table(&urls[1]), &expected_orders);
    println!("{} metrics and {} attributed orders served identically in both regions", metrics.len(), orders.len());

    // Kappa+: each region restates its aggregation with the fixed job file (--complete), into its
    // own live topic, throttled; the unions and loads catch up.
    let touched = touched_windows(&[&a, &b]);
    let ranges = [(&a, T0 - 3_600_000, T0 + 7 * 3_600_000), (&b, T0 - 3_600_000, T0 + 4 * 3_600_000)];
    let mut fresh: BTreeMap<uuid::Uuid, AdMetric> = BTreeMap::new();
    for (i, (broker, from, to)) in ranges.iter().enumerate() {
        let archive = work.path().join(format!("archive-{i}"));
        adsproc(&["archive", "--topic", "ad-events", "--brokers", &broker.addr, "--sink", archive.to_str().unwrap(), "--until-caught-up"]);
        let out = adsproc(&["backfill", "--job", "aggregation", "--quiet", "--complete", "--source", archive.to_str().unwrap(), "--sink",
            &format!("kafka://{}", broker.addr), "--from", &rfc3339(*from), "--to", &rfc3339(*to), "--max-rate", "20000"]);
        assert!(out.contains("[balanced]"), "{out}");
        let parquet = work.path().join(format!("fresh-{i}"));
        backfill(&archive, &parquet, *from, *to, &["--complete"]);
        fresh.extend(read_table::<AdMetric>(&parquet, "ad-metrics").into_iter().map(|m| (m.record_uuid, m)));
    }
    for (local, ckpt) in [(&a, &ckpt_a), (&b, &ckpt_b)] {
        union_until_caught_up(local, ckpt, &a, &b);
    }
    for (broker, url) in [(&a, &urls[0]), (&b, &urls[1])] {
        adsproc(&["load", "--brokers", &broker.addr, "--topic", "ad-metrics-all", "--into", url, "--stop-when-caught-up"]);
    }
    let after: Vec<_> = urls.iter().map(|u| metrics_table(u, "ad_metrics_all")).collect();
    same("region a's database after the restatement", &after[0], &fresh);
    same("region b's database after the restatement", &after[1], &fresh);
    // Exactly the affected rows changed: each changed row is a window of an event the live jobs
    // rejected as too old (the fault) or late (the lateness rule --complete lifts).
    let changed: Vec<&AdMetric> = after[0].values().filter(|m| served[0].get(&m.record_uuid) != Some(*m)).collect();
    let stray: Vec<_> = changed.iter().filter(|m| !touched.contains(&(m.region.to_string(), m.ad_id.to_string(), m.window_start))).take(3).collect();
    assert!(stray.is_empty(), "rows of windows no rejected event belongs to changed: {stray:?}");
    let changed_b = changed.iter().filter(|m| &*m.region == "region-b").count();
    assert!(changed_b > 50, "the fault's restatement changed only {changed_b} of region b's rows");
    // The restatement re-sent every window; its replicas of live values were collapsed.
    let sources = [read_all(&a.addr, "ad-metrics"), read_all(&b.addr, "ad-metrics")];
    let forwarded = read_all(&b.addr, "ad-metrics-all").len();
    assert_eq!(forwarded, changes(&sources), "records forwarded by region b's union after the restatement");
    println!("restatement: {} rows changed ({changed_b} of region b), {forwarded} records forwarded by region b's union of {} source records",
        changed.len(), sources.iter().map(Vec::len).sum::<usize>());
}

/// (region, ad_id, window_start) of every event the regions' live aggregation jobs
/// dead-lettered as too old or late.
fn touched_windows(brokers: &[&Broker]) -> std::collections::BTreeSet<(String, String, i64)> {
    let mut out = std::collections::BTreeSet::new();
    for broker in brokers {
        for (_, _, _, v) in read_all(&broker.addr, "ad-events-dlq") {
            let d: adsproc::contract::outputs::DeadLetter = serde_json::from_slice(&v).unwrap();
            if !matches!(d.reason_code(), "event_time_too_old" | "late") {
                continue;
            }
            let Ok(e) = serde_json::from_str::<serde_json::Value>(&d.payload) else { continue };
            if let (Some(t), Some(r), Some(ad)) = (e["event_time"].as_i64(), e["region"].as_str(), e["ad_id"].as_str()) {
                out.insert((r.to_string(), ad.to_string(), t - t.rem_euclid(60_000)));
            }
        }
    }
    out
}

/// One region's broker goes away for a while (stopped, then started again on its storage):
/// the union on the other region keeps forwarding its own region's records meanwhile, says
/// which region is behind, and catches up with the returning region, losing nothing.
#[test]
fn a_region_that_goes_away_does_not_stop_the_others_and_is_caught_up_on_return() {
    let (a, b) = (Broker::start("memory"), Broker::start("sqlite"));
    let work = tempfile::tempdir().unwrap();
    region(&a, "0", "1", work.path(), None);
    region(&b, "1", "2", work.path(), None);
    let ckpt = work.path().join("union-a");
    let log = work.path().join("union-a.log");
    let mut args = union_args(&a.addr, ckpt.to_str().unwrap(), &a.addr, &b.addr);
    args.extend(["--idle-timeout".to_string(), "2s".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut union = spawn(&args, &log);
    let forwarded_all = |source: &Broker| forwarded_all(&a, source);
    let wait_until = |what: &str, secs: u64, ok: &dyn Fn() -> bool| wait_until(&log, what, secs, ok);
    wait_until("the union forwarded region a's records", 60, &|| forwarded_all(&a));

    // Region b goes away; region a's traffic goes on, and its new windows still reach the union.
    b.stop();
    let more = spawn(
        &["produce", "--brokers", &a.addr, "--start", &rfc3339(T0 + 4 * 3_600_000), "--partitions", "4", "--regions", "1", "--events", "30000",
          "--hours", "1", "--ads", "150", "--seed", "3", "--rate", "1500", "--watermark-tick"],
        &work.path().join("produce-more.log"),
    );
    let ckpt_agg = work.path().join("ckpt-aggregation-0");
    adsproc_until_caught_up_while(&a, &ckpt_agg, more);
    wait_until("region a's new records were forwarded while region b was away", 60, &|| forwarded_all(&a));
    wait_until("the log named the region behind", 40, &|| std::fs::read_to_string(&log).unwrap_or_default().contains("region region-b is behind"));
    assert!(union.try_wait().unwrap().is_none(), "the union stopped while region b was away:\n{}", std::fs::read_to_string(&log).unwrap());

    // Region b returns, on its storage, with more traffic of its own.
    b.restart();
    adsproc(&["produce", "--brokers", &b.addr, "--start", &rfc3339(T0 + 4 * 3_600_000), "--partitions", "4", "--regions", "1", "--first-region", "1",
        "--events", "10000", "--hours", "1", "--ads", "150", "--seed", "4", "--watermark-tick"]);
    let ckpt_b = work.path().join("ckpt-aggregation-1");
    adsproc(&["stream", "--job", "aggregation", "--brokers", &b.addr, "--checkpoint", ckpt_b.to_str().unwrap(), "--checkpoint-interval", "1s", "--stop-when-caught-up"]);
    wait_until("region b's records, old and new, were forwarded after its return", 90, &|| forwarded_all(&b));
    unsafe { libc::kill(union.id() as i32, libc::SIGTERM) };
    assert!(union.wait().unwrap().success(), "{}", std::fs::read_to_string(&log).unwrap());

    let mut metrics: BTreeMap<uuid::Uuid, AdMetric> = upsert::<AdMetric>(&a.addr, "ad-metrics").0;
    metrics.extend(upsert::<AdMetric>(&b.addr, "ad-metrics").0);
    same("ad-metrics-all after region b's return", &upsert::<AdMetric>(&a.addr, "ad-metrics-all").0, &metrics);
}

/// Whether every last value of a region's `ad-metrics` is `local`'s `ad-metrics-all` value too.
fn forwarded_all(local: &Broker, source: &Broker) -> bool {
    let union = upsert::<AdMetric>(&local.addr, "ad-metrics-all").0;
    upsert::<AdMetric>(&source.addr, "ad-metrics").0.iter().all(|(u, m)| union.get(u) == Some(m))
}

/// Waits until `ok` (within `secs`), else fails with the last lines of the union's `log`.
fn wait_until(log: &Path, what: &str, secs: u64, ok: &dyn Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !ok() {
        if std::time::Instant::now() >= deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().filter(|l| !l.starts_with('%')).rev().take(8).collect();
            panic!("{what} within {secs} s; the union's log, checkpoints left out, last lines first:\n{}", tail.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A region down when the union starts does not keep the others from flowing: the union
/// forwards the regions that answer, and reads the other once it answers (partition discovery),
/// from its beginning.
#[test]
fn a_region_down_at_start_is_read_once_it_answers() {
    let (a, b) = (Broker::start("memory"), Broker::start("sqlite"));
    let work = tempfile::tempdir().unwrap();
    region(&a, "0", "1", work.path(), None);
    region(&b, "1", "2", work.path(), None);
    b.stop();

    let (ckpt, log) = (work.path().join("union-a"), work.path().join("union-a.log"));
    let mut args = union_args(&a.addr, ckpt.to_str().unwrap(), &a.addr, &b.addr);
    args.extend(["--idle-timeout", "2s", "--partition-discovery-interval", "2s"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let mut union = spawn(&args, &log);
    wait_until(&log, "region a's records were forwarded with region b down", 60, &|| forwarded_all(&a, &a));
    println!("region a forwarded {:.1} s after the start, region b down", started.elapsed().as_secs_f64());
    assert!(std::fs::read_to_string(&log).unwrap().contains("region region-b does not answer"));
    assert!(union.try_wait().unwrap().is_none(), "the union stopped:\n{}", std::fs::read_to_string(&log).unwrap());

    b.restart();
    wait_until(&log, "region b's records were forwarded once it answered", 90, &|| forwarded_all(&a, &b));
    unsafe { libc::kill(union.id() as i32, libc::SIGTERM) };
    assert!(union.wait().unwrap().success(), "{}", std::fs::read_to_string(&log).unwrap());
    let mut metrics: BTreeMap<uuid::Uuid, AdMetric> = upsert::<AdMetric>(&a.addr, "ad-metrics").0;
    metrics.extend(upsert::<AdMetric>(&b.addr, "ad-metrics").0);
    same("ad-metrics-all after region b answered", &upsert::<AdMetric>(&a.addr, "ad-metrics-all").0, &metrics);
}

/// Runs region a's aggregation job live until `traffic` ends, then until caught up.
fn adsproc_until_caught_up_while(a: &Broker, ckpt: &Path, mut traffic: std::process::Child) {
    let log = ckpt.with_extension("log");
    let mut live = spawn(&["stream", "--job", "aggregation", "--brokers", &a.addr, "--checkpoint", ckpt.to_str().unwrap(), "--checkpoint-interval", "500ms"], &log);
    assert!(traffic.wait().unwrap().success());
    unsafe { libc::kill(live.id() as i32, libc::SIGTERM) };
    assert!(live.wait().unwrap().success(), "{}", std::fs::read_to_string(&log).unwrap_or_default());
    adsproc(&["stream", "--job", "aggregation", "--brokers", &a.addr, "--checkpoint", ckpt.to_str().unwrap(), "--stop-when-caught-up"]);
}
