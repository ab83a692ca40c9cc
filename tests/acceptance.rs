//! Acceptance: a generated archive in the contract's layout, the real `adsproc backfill`
//! command, its Parquet output read back, every window compared with the naive reference
//! model; and the same messages fed to the stream driver as polls.

mod common;

use common::parquet_out::*;


use adsproc::jobs::aggregation::rules::AggregationRules;
use adsproc::jobs::aggregation::Aggregation;
use adsproc::runtime::stream::driver::Source;
use adsproc::gen::{GenSpec, Row};
use adsproc::runtime::stream::driver::StreamDriver;
use common::*;

fn spec(seed: u64) -> GenSpec {
    GenSpec {
        events: 120_000,
        start: T0,
        hours: 5,
        ads: 300,
        zipf_exponent: 1.1,
        regions: 2,
        first_region: 0,
        partitions: 4,
        files_per_hour: 3,
        click_fraction: 0.1,
        duplicate_fraction: 0.05,
        late_fraction: 0.05,
        malformed_fraction: 0.02,
        seed,
        topic: "ad-events".into(),
        orders: 0,
        order_hours: 0,
        order_partitions: 1,
        orders_topic: "orders".into(),
    }
}

/// Every dead letter's payload holds its row's fields as they are in the archive ("the original
/// payload" of the contract): the backfill rebuilds it from the columns.
fn assert_payloads_are_the_rows(out: &std::path::Path, rows: &[Row]) {
    let by_position: std::collections::HashMap<(i32, i64), &Row> = rows.iter().map(|r| ((r.partition, r.offset), r)).collect();
    let payloads = read_dead_payloads(out);
    let mut with_user = 0;
    for (position, payload) in &payloads {
        let r = by_position[position];
        let expected = serde_json::json!({
            "event_id": r.event_id, "event_type": r.event_type, "ad_id": r.ad_id, "campaign_id": r.campaign_id,
            "advertiser_id": r.advertiser_id, "user_id": r.user_id, "store_id": r.store_id, "event_time": r.event_time,
            "region": r.region,
        });
        assert_eq!(payload, &expected, "payload of the dead letter at {position:?}");
        with_user += usize::from(r.user_id.is_some());
    }
    assert!(with_user > 100, "too few dead letters with a user_id to show their payloads are complete: {with_user}");
}

fn all_rows(spec: &GenSpec) -> Vec<Row> {
    (0..spec.hours).flat_map(|h| spec.hour_rows(h)).collect()
}

#[test]
fn backfill_of_a_generated_archive_matches_the_reference_in_both_lateness_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    let spec = spec(7);
    let loc = adsproc::connector::store::open(archive.to_str().unwrap(), &[], true).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    spec.write(&loc, rt.handle()).unwrap();
    let rows = all_rows(&spec);
    let (from, to) = (T0 + HOUR, T0 + 4 * HOUR);
    for (name, extra, complete) in [("default", vec![], false), ("complete", vec!["--complete"], true)] {
        let out = tmp.path().join(name);
        backfill(&archive, &out, from, to, &extra);
        let expected = reference(&rows, from, to, complete);
        assert!(expected.windows.len() > 1_000, "the workload is too small to mean anything");
        let actual = read_metrics(&out);
        assert!(actual == expected.windows, "{name}: {}", diff(&expected.windows, &actual));
        assert_eq!(read_dead(&out), expected.dead, "{name}: dead letters");
        assert_payloads_are_the_rows(&out, &rows);
        // Re-running replaces the run's files rather than adding to them.
        backfill(&archive, &out, from, to, &extra);
        assert!(read_metrics(&out) == expected.windows);
    }
}

#[test]
fn stream_driver_over_the_same_messages_matches_the_reference() {
    let spec = spec(11);
    let rows = all_rows(&spec);
    let (from, to) = (T0 + HOUR, T0 + 4 * HOUR);
    let expected = reference(&rows, from, to, false);
    let mut per_partition: Vec<Vec<&Row>> = vec![Vec::new(); spec.partitions as usize];
    for r in &rows {
        per_partition[r.partition as usize].push(r);
    }
    for v in &mut per_partition {
        v.sort_by_key(|r| r.offset);
    }
    let mut cursors = vec![0usize; per_partition.len()];
    let mut polls = Vec::new();
    // Partitions advance at different speeds, as consumers fetch them.
    let sizes = [500, 137, 900, 61];
    while cursors.iter().zip(&per_partition).any(|(c, v)| *c < v.len()) {
        for (p, v) in per_partition.iter().enumerate() {
            let end = (cursors[p] + sizes[p % sizes.len()]).min(v.len());
            if end > cursors[p] {
                polls.push(v[cursors[p]..end].iter().map(|r| to_message(r)).collect::<Vec<_>>());
            }
            cursors[p] = end;
        }
    }
    let mut driver = StreamDriver::<Aggregation>::new(AggregationRules::defaults(), (0..spec.partitions as i32).map(|p| Source::new(0, p)));
    let (metrics, _) = driver.replay(polls);
    let actual = upsert_view(&metrics, from, to);
    assert!(actual == expected.windows, "{}", diff(&expected.windows, &actual));
    assert!(driver.audit().balances());
}
