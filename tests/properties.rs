//! Property tests: the final value of every record_uuid is independent of partition
//! interleaving, file order and parallelism, in the default mode and with --complete, and
//! equals the naive reference model of tests/common.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use adsproc::contract::time::floor_to;
use adsproc::jobs::aggregation::rules::AggregationRules;
use adsproc::jobs::aggregation::Aggregation;
use adsproc::runtime::backfill::ArchiveSource;
use adsproc::runtime::stream::driver::Source;
use adsproc::gen::{rows_to_batch, Row};
use adsproc::replay::memory::{MemoryArchive, MemorySink};
use adsproc::runtime::backfill::{self, BackfillOptions};
use adsproc::runtime::progress::Silent;
use adsproc::runtime::stream::driver::StreamDriver;
use adsproc::contract::outputs::AdMetric;
use common::*;
use proptest::prelude::*;

const FROM: i64 = T0 + HOUR;
const TO: i64 = T0 + 2 * HOUR;

/// A message of a small world: few ids (so duplicates are frequent), few ads, two regions,
/// three partitions, three hours of ingest, delays from a little ahead to far too late.
#[derive(Debug, Clone)]
struct Spec {
    id: u8,
    ad: u8,
    region: u8,
    kind: u8,
    ingest_s: i64,
    delay: i64,
    partition: i32,
    nulls: u8,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u8..24,
        0u8..3,
        0u8..2,
        0u8..20,
        0i64..3 * 3600,
        prop_oneof![
            4 => -2_000i64..12_000,
            2 => 12_000i64..700_000,
            1 => 600_000i64..2 * 3_600_000,
            1 => prop_oneof![Just(-400_000i64), Just(8 * 86_400_000i64)],
        ],
        0i32..3,
        0u8..40,
    )
        .prop_map(|(id, ad, region, kind, ingest_s, delay, partition, nulls)| Spec { id, ad, region, kind, ingest_s, delay, partition, nulls })
}

/// Messages of the small world; a reused id may carry different content (a conflicting
/// duplicate), the hardest case for order independence.
fn rows(specs: &[Spec]) -> Vec<Row> {
    let mut rows: Vec<Row> = specs
        .iter()
        .map(|s| {
            let ingest = T0 + s.ingest_s * 1_000 + i64::from(s.id % 5);
            let ty = match s.kind {
                0..=11 => Some("impression".to_string()),
                12..=17 => Some("click".to_string()),
                18 => Some("view".to_string()),
                _ => None,
            };
            Row {
                event_id: (s.nulls != 1).then(|| format!("e-{}", s.id)),
                event_type: ty,
                ad_id: (s.nulls != 2).then(|| format!("ad-{}", s.ad)),
                campaign_id: (s.nulls != 3).then(|| format!("c-{}", s.kind % 4)),
                advertiser_id: (s.nulls != 3 && s.nulls != 4).then(|| "adv".to_string()),
                user_id: Some("u".into()),
                store_id: Some("s".into()),
                event_time: (s.nulls != 5).then_some(ingest - s.delay),
                region: (s.nulls != 6).then(|| format!("region-{}", s.region)),
                partition: s.partition,
                offset: 0,
                ingest,
            }
        })
        .collect();
    // Offsets in arrival order per partition, as Kafka assigns them.
    rows.sort_by_key(|r| (r.partition, r.ingest));
    let mut next = [0i64; 3];
    for r in &mut rows {
        r.offset = next[r.partition as usize];
        next[r.partition as usize] += 1;
    }
    rows
}

/// The archive, with each hour's rows spread over files by `assign` (file order is the
/// files' name order, which the assignment scrambles).
fn archive(rows: &[Row], assign: &[u8]) -> MemoryArchive {
    let mut files: BTreeMap<(i64, String), Vec<&Row>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        let f = assign[i % assign.len()];
        files.entry((floor_to(r.ingest, HOUR), format!("f{f}.parquet"))).or_default().push(r);
    }
    let mut a = MemoryArchive::default();
    for ((hour, name), mut rs) in files {
        rs.sort_by_key(|r| (r.partition, r.offset));
        a.hours.entry(hour).or_default().insert(name, rows_to_batch(&rs));
    }
    a
}

fn run_backfill(rows: &[Row], assign: &[u8], parallelism: usize, complete: bool) -> (Windows, BTreeSet<(i32, i64)>) {
    let mut sink = MemorySink::<AdMetric>::default();
    let options = BackfillOptions::new(FROM, TO, complete, parallelism);
    let archive = archive(rows, assign);
    let report = backfill::run::<Aggregation>(&AggregationRules::defaults(), &[&archive as &dyn ArchiveSource], &mut sink, &options, &Silent).unwrap();
    assert!(report.audit.balances(), "{}", report.audit);
    let dead = sink.dead.iter().map(|d| (d.partition.unwrap(), d.offset.unwrap())).collect();
    (upsert_view(&sink.records, FROM, TO), dead)
}

fn run_stream(rows: &[Row], poll: usize, order: &[u8]) -> (Windows, BTreeSet<(i32, i64)>) {
    let mut queues: Vec<std::collections::VecDeque<&Row>> = (0..3)
        .map(|p| {
            let mut v: Vec<&Row> = rows.iter().filter(|r| r.partition == p).collect();
            v.sort_by_key(|r| r.offset);
            v.into()
        })
        .collect();
    let mut polls = Vec::new();
    let mut turn = 0;
    while queues.iter().any(|q| !q.is_empty()) {
        // Follow the generated order, skipping partitions already drained.
        let mut p = order[turn % order.len()] as usize % 3;
        while queues[p].is_empty() {
            p = (p + 1) % 3;
        }
        turn += 1;
        polls.push((0..poll).filter_map(|_| queues[p].pop_front()).map(to_message).collect::<Vec<_>>());
    }
    let (metrics, dead) = StreamDriver::<Aggregation>::new(AggregationRules::defaults(), (0..3).map(|p| Source::new(0, p))).replay(polls);
    let dead = dead
        .iter()
        .filter(|d| d.kafka_timestamp.is_some_and(|t| (FROM..TO).contains(&t)))
        .map(|d| (d.partition.unwrap(), d.offset.unwrap()))
        .collect();
    (upsert_view(&metrics, FROM, TO), dead)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn backfill_equals_reference_whatever_the_file_order_and_parallelism(
        specs in prop::collection::vec(spec(), 1..90),
        assign_a in prop::collection::vec(0u8..4, 1..8),
        assign_b in prop::collection::vec(0u8..4, 1..8),
        par_a in 1usize..5,
        par_b in 1usize..5,
        complete in any::<bool>(),
    ) {
        let rows = rows(&specs);
        let expected = reference(&rows, FROM, TO, complete);
        let (a, dead_a) = run_backfill(&rows, &assign_a, par_a, complete);
        prop_assert!(a == expected.windows, "{}", diff(&expected.windows, &a));
        prop_assert_eq!(&dead_a, &expected.dead);
        let (b, dead_b) = run_backfill(&rows, &assign_b, par_b, complete);
        prop_assert!(b == a, "{}", diff(&a, &b));
        prop_assert_eq!(dead_b, dead_a);
    }

    #[test]
    fn stream_equals_backfill_and_reference_whatever_the_partition_interleaving(
        specs in prop::collection::vec(spec(), 1..90),
        poll in 1usize..6,
        order_a in prop::collection::vec(0u8..3, 1..6),
        order_b in prop::collection::vec(0u8..3, 1..6),
    ) {
        let rows = rows(&specs);
        let expected = reference(&rows, FROM, TO, false);
        let (a, dead_a) = run_stream(&rows, poll, &order_a);
        prop_assert!(a == expected.windows, "{}", diff(&expected.windows, &a));
        prop_assert_eq!(&dead_a, &expected.dead);
        let (b, _) = run_stream(&rows, poll, &order_b);
        prop_assert!(b == a, "{}", diff(&a, &b));
        let (backfilled, _) = run_backfill(&rows, &[0, 1], 2, false);
        prop_assert!(backfilled == a, "{}", diff(&backfilled, &a));
    }
}
