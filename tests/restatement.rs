//! Kappa+ end to end on one region: the live aggregation job runs with a faulty job file (a
//! validity rule that dead-letters valid late events as too old), its output is loaded into a
//! real PostgreSQL table; then `backfill --complete --sink kafka://…` with the fixed job file
//! restates the range into the live topic (throttled), and the load picks it up. The table must
//! then equal a fresh backfill of the fixed job, and only rows of the windows the fault or the
//! live lateness rule touched may have changed.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use adsproc::contract::outputs::{AdMetric, DeadLetter};
use adsproc::contract::time::rfc3339;
use common::kafka::{adsproc, read_all, Broker};
use common::parquet_out::{backfill, read_table};
use common::postgres::{metrics_table, Postgres};
use common::{HOUR, MINUTE, T0};

fn load(broker: &Broker, url: &str) -> String {
    adsproc(&["load", "--brokers", &broker.addr, "--topic", "ad-metrics", "--into", url, "--stop-when-caught-up"])
}

/// The (region, ad_id, window_start) an archived/dead-lettered ad event would count in.
fn window_of(payload: &str) -> Option<(String, String, i64)> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let t = v.get("event_time")?.as_i64()?;
    Some((v.get("region")?.as_str()?.to_string(), v.get("ad_id")?.as_str()?.to_string(), t - t.rem_euclid(MINUTE)))
}

#[test]
fn a_restatement_through_kafka_replaces_exactly_the_affected_rows_of_the_serving_table() {
    let broker = Broker::start("memory");
    let pg = Postgres::start();
    let work = tempfile::tempdir().unwrap();
    adsproc(&[
        "produce", "--brokers", &broker.addr, "--start", &rfc3339(T0), "--partitions", "4", "--regions", "2", "--events", "30000",
        "--hours", "1", "--ads", "200", "--duplicate-fraction", "0.03", "--late-fraction", "0.05", "--malformed-fraction", "0.01",
        "--seed", "34", "--watermark-tick",
    ]);
    // The fault: events more than two minutes behind their ingest time are "too old".
    let faulty = work.path().join("faulty.toml");
    std::fs::write(&faulty, adsproc::jobs::aggregation::rules::DEFAULT_JOB_FILE.replace("max_past = \"7d\"", "max_past = \"2m\"")).unwrap();
    assert_ne!(std::fs::read_to_string(&faulty).unwrap(), adsproc::jobs::aggregation::rules::DEFAULT_JOB_FILE);
    let ckpt = work.path().join("ckpt");
    adsproc(&["stream", "--job", "aggregation", "--brokers", &broker.addr, "--checkpoint", ckpt.to_str().unwrap(), "--job-file",
        faulty.to_str().unwrap(), "--checkpoint-interval", "1s", "--stop-when-caught-up"]);
    load(&broker, &pg.url);
    let before = metrics_table(&pg.url, "ad_metrics");

    // What the fault and the live lateness rule touched: the windows of the events the live job
    // dead-lettered as too old or late.
    let touched: BTreeSet<(String, String, i64)> = read_all(&broker.addr, "ad-events-dlq")
        .iter()
        .map(|(_, _, _, v)| serde_json::from_slice::<DeadLetter>(v).unwrap())
        .filter(|d| matches!(d.reason_code(), "event_time_too_old" | "late"))
        .filter_map(|d| window_of(&d.payload))
        .collect();
    assert!(touched.len() > 50, "the fault touched {} windows: too few to show anything", touched.len());

    let archive = work.path().join("archive");
    adsproc(&["archive", "--topic", "ad-events", "--brokers", &broker.addr, "--sink", archive.to_str().unwrap(), "--until-caught-up"]);
    let (from, to) = (T0, T0 + HOUR);
    // The README's workflow: recompute into a scratch root, see who is affected, restate,
    // verify.
    let fresh = work.path().join("fresh");
    backfill(&archive, &fresh, from, to, &["--complete"]);
    let impact = work.path().join("impact.json");
    let range = ["--from", &rfc3339(from), "--to", &rfc3339(to)];
    let diff = |extra: &[&str]| {
        let mut args = vec!["diff", "--old", &pg.url, "--new", fresh.to_str().unwrap(), "--table", "ad-metrics"];
        args.extend_from_slice(&range);
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_adsproc")).args(&args).output().unwrap()
    };
    let before_restating = diff(&["--json", impact.to_str().unwrap()]);
    assert_eq!(before_restating.status.code(), Some(1), "the live table differs from the fix: {}", String::from_utf8_lossy(&before_restating.stderr));
    let impact: serde_json::Value = serde_json::from_slice(&std::fs::read(&impact).unwrap()).unwrap();
    let restated = adsproc(&["backfill", "--job", "aggregation", "--quiet", "--complete", "--source", archive.to_str().unwrap(), "--sink",
        &format!("kafka://{}", broker.addr), "--from", &rfc3339(from), "--to", &rfc3339(to), "--max-rate", "20000"]);
    assert!(restated.contains("[balanced]") && restated.contains("Kafka topics ad-metrics"), "{restated}");
    load(&broker, &pg.url);
    let after = metrics_table(&pg.url, "ad_metrics");

    let expected: BTreeMap<uuid::Uuid, AdMetric> = read_table::<AdMetric>(&fresh, "ad-metrics").into_iter().map(|m| (m.record_uuid, m)).collect();

    // In the range, the table is the fixed job's backfill row for row; outside it, untouched.
    let in_range: BTreeMap<_, _> = after.iter().filter(|(_, m)| (from..to).contains(&m.window_start)).map(|(u, m)| (*u, m.clone())).collect();
    let missing = expected.keys().filter(|u| !in_range.contains_key(u)).count();
    let wrong: Vec<_> = expected.iter().filter(|(u, m)| in_range.get(u).is_some_and(|a| a != *m)).take(3).collect();
    assert!(missing == 0 && wrong.is_empty() && in_range.len() == expected.len(),
        "the table ({} rows in range) is not the fixed backfill ({} rows): {missing} missing, e.g. {wrong:?}", in_range.len(), expected.len());
    for (u, m) in after.iter().filter(|(_, m)| !(from..to).contains(&m.window_start)) {
        assert_eq!(before.get(u), Some(m), "a row outside the restated range changed");
    }

    // Exactly the affected rows changed: each changed row is a window the fault touched, and
    // the fault changed some.
    let changed: Vec<&AdMetric> = after.values().filter(|m| before.get(&m.record_uuid) != Some(m)).collect();
    let stray: Vec<_> = changed.iter().filter(|m| !touched.contains(&(m.region.to_string(), m.ad_id.to_string(), m.window_start))).take(3).collect();
    assert!(stray.is_empty(), "rows of windows no rejected event belongs to changed: {stray:?}");
    assert!(changed.len() > 50, "only {} rows changed", changed.len());
    // The diff before the restatement predicted exactly these rows, and after it finds none.
    assert_eq!(impact["total"]["removed"], 0);
    assert_eq!(impact["total"]["added"].as_u64().unwrap() + impact["total"]["changed"].as_u64().unwrap(), changed.len() as u64, "{impact}");
    let verified = diff(&[]);
    assert_eq!(verified.status.code(), Some(0), "after the restatement: {}", String::from_utf8_lossy(&verified.stdout));
    assert!(changed.iter().all(|m| before.get(&m.record_uuid).is_none_or(|b| m.impressions + m.clicks > b.impressions + b.clicks)),
        "a restatement of a rule that rejected valid events can only add counts");

    // Each record_uuid sits in one partition of the topic, live and restated values alike.
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    for (p, _, k, _) in read_all(&broker.addr, "ad-metrics") {
        let prev = partition_of.insert(String::from_utf8(k).unwrap(), p);
        assert!(prev.is_none_or(|q| q == p), "a record_uuid in partitions {prev:?} and {p}");
    }
    println!("{} rows, {} changed by the restatement, {} windows touched by the fault", after.len(), changed.len(), touched.len());
}
