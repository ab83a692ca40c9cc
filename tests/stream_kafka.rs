//! The stream job against a real Kafka-protocol broker (Nisshi on loopback): equivalence with a
//! backfill of the archived topic, record for record.

mod common;

use std::collections::BTreeMap;

use adsproc::contract::time::rfc3339;
use common::kafka::*;
use common::parquet_out::{backfill, read_dead, read_metrics};
use common::{diff, Windows, HOUR, T0};

fn produce(addr: &str, extra: &[&str]) -> String {
    let mut args = vec!["produce", "--brokers", addr, "--start", "2026-01-01T00:00:00Z", "--partitions", "4", "--regions", "2"];
    args.extend_from_slice(extra);
    adsproc(&args)
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
    let (ckpt, archive, out) = (work.path().join("ckpt"), work.path().join("archive"), work.path().join("out"));
    produce(
        &broker.addr,
        &["--events", "30000", "--hours", "2", "--ads", "300", "--duplicate-fraction", "0.05", "--late-fraction", "0.03",
          "--malformed-fraction", "0.02", "--not-json-fraction", "0.002", "--seed", "11", "--watermark-tick"],
    );
    let log = adsproc(&["stream", "--job", "aggregation", "--brokers", &broker.addr, "--checkpoint", ckpt.to_str().unwrap(),
        "--checkpoint-interval", "1s", "--stop-when-caught-up"]);
    assert!(log.contains("[balanced]"), "{log}");
    adsproc(&["archive", "--topic", "ad-events", "--brokers", &broker.addr, "--sink", archive.to_str().unwrap(), "--until-caught-up"]);
    let (from, to) = (T0, T0 + 2 * HOUR);
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
}
