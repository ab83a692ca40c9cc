//! The attribution operator held to the naive model of contract §5 (tests/common/attribution.rs)
//! over random workloads: through the stream driver with random interleavings of the two topics'
//! partitions, random poll sizes (epoch boundaries) and key-group counts, and through the
//! backfill runtime with random file splits and parallelism, over all the messages and over a
//! sub-range.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use adsproc::contract::attributed_orders::AttributedOrder;
use adsproc::contract::format::Format;
use adsproc::contract::raw::RawMessage;
use adsproc::contract::time::floor_to;
use adsproc::core::job::JobAudit;
use adsproc::gen::rows_to_batch;
use adsproc::jobs::attribution::rules::AttributionRules;
use adsproc::jobs::attribution::{Attribution, AD_EVENTS, ORDERS};
use adsproc::replay::memory::{MemoryArchive, MemorySink};
use adsproc::runtime::backfill::{self, ArchiveSource, BackfillOptions};
use adsproc::runtime::progress::Silent;
use adsproc::runtime::stream::checkpoint;
use adsproc::runtime::stream::driver::{Source, StreamDriver};
use common::attribution::*;
use proptest::prelude::*;

const T0: i64 = 1_767_225_600_000;
const USERS: [&str; 3] = ["u0", "u1", "u2"];
const STORES: [&str; 2] = ["s0", "s1"];
/// Ingest − event_time of an ad event: valid from −5 min to 7 d.
const AD_DELAYS: [i64; 9] = [-5 * MINUTE - 1, -5 * MINUTE, 0, 1_000, 10 * MINUTE, 2 * HOUR, 2 * DAY, 7 * DAY, 7 * DAY + 1];
/// order_time − the anchor event's event_time: around the windows' edges.
const ORDER_AFTER_EVENT: [i64; 12] = [-1, 0, 1, HOUR, DAY - 1, DAY, DAY + 1, 3 * DAY, 7 * DAY - 1, 7 * DAY, 7 * DAY + 1, 8 * DAY];
/// Ingest − order_time of an order: valid from −5 min to 7 d.
const ORDER_DELAYS: [i64; 9] = [-5 * MINUTE - 1, -5 * MINUTE, 0, 1_000, MINUTE, HOUR, DAY, 7 * DAY, 7 * DAY + 1];
/// An order's ingest − its anchor event's ingest: around the join wait.
const AROUND_JOIN_WAIT: [i64; 8] = [-MINUTE - 1, -MINUTE, -MINUTE + 1, -1, 0, 1, MINUTE, 2 * MINUTE];
/// Later arrivals of an order after the previous one.
const UPDATE_DELAYS: [i64; 8] = [1_000, MINUTE, HOUR, DAY, 6 * DAY, 7 * DAY, 7 * DAY + 1, 9 * DAY];

#[derive(Debug, Clone)]
struct AdSpec {
    /// None: a client retry of the ad event at this index (mod the ones before).
    retry_of: Option<u8>,
    id: u8,
    user: u8,
    store: u8,
    kind: u8,
    minute: u32,
    jitter: u8,
    delay: u8,
    partition: u8,
    damage: u8,
}

fn ad_spec() -> impl Strategy<Value = AdSpec> {
    (prop::option::weighted(0.2, any::<u8>()), 0u8..10, 0u8..3, 0u8..2, 0u8..12, 0u32..14_400, 0u8..5, 0u8..9, 0u8..3, 0u8..30).prop_map(
        |(retry_of, id, user, store, kind, minute, jitter, delay, partition, damage)| AdSpec {
            retry_of,
            id,
            user,
            store,
            kind,
            minute,
            jitter,
            delay,
            partition,
            damage,
        },
    )
}

#[derive(Debug, Clone)]
struct OrderSpec {
    /// Some: a later arrival of the order at this index (mod the ones before).
    update_of: Option<u8>,
    /// With `update_of`: whether it keeps the first arrival's user, store and order_time.
    same: bool,
    id: u8,
    anchor: u8,
    anchored: bool,
    after_event: u8,
    join_wait_mode: bool,
    delay: u8,
    user: u8,
    store: u8,
    minute: u32,
    status: u8,
    amount: u8,
    currency: u8,
    partition: u8,
    damage: u8,
}

fn order_spec() -> impl Strategy<Value = OrderSpec> {
    (
        (prop::option::weighted(0.35, any::<u8>()), any::<bool>(), 0u8..6, any::<u8>(), prop::bool::weighted(0.8), 0u8..12, any::<bool>(), 0u8..9),
        (0u8..3, 0u8..2, 0u32..14_400, 0u8..7, 0u8..5, 0u8..6, 0u8..3, 0u8..30),
    )
        .prop_map(|((update_of, same, id, anchor, anchored, after_event, join_wait_mode, delay), (user, store, minute, status, amount, currency, partition, damage))| {
            OrderSpec {
                update_of,
                same,
                id,
                anchor,
                anchored,
                after_event,
                join_wait_mode,
                delay,
                user,
                store,
                minute,
                status,
                amount,
                currency,
                partition,
                damage,
            }
        })
}

/// The workload: ad events and orders with offsets per partition. `clean`: client retries
/// repeat their event, status updates keep their order's user, store and order_time, and ids
/// are never reused (the cases a backfill of a sub-range reproduces exactly).
fn workload(ads: &[AdSpec], orders: &[OrderSpec], clean: bool) -> (Vec<AdEvent>, Vec<Order>) {
    let mut events: Vec<AdEvent> = Vec::new();
    for (i, s) in ads.iter().enumerate() {
        let ingest = T0 + i64::from(s.minute) * MINUTE + [0, 1, 999, 30_000, 59_999][s.jitter as usize];
        if let (Some(of), false) = (s.retry_of, events.is_empty()) {
            let mut e = events[of as usize % events.len()].clone();
            e.ingest = e.ingest.max(ingest - 2 * DAY) + i64::from(s.jitter) * 1_000 + 1_000;
            e.partition = i32::from(s.partition);
            if !clean {
                // A conflicting duplicate: the same event_id, other fields.
                e.user_id = Some(USERS[s.user as usize].to_string());
                e.event_time = Some(e.ingest - AD_DELAYS[s.delay as usize]);
            }
            events.push(e);
            continue;
        }
        let id = if clean { format!("e{i}") } else { format!("e{}", s.id) };
        let kind = match s.kind {
            0..=6 => Some("impression"),
            7..=9 => Some("click"),
            10 => Some("view"),
            _ => None,
        };
        let mut e = AdEvent {
            event_id: Some(id),
            event_type: kind.map(str::to_string),
            ad_id: Some(format!("ad-{}", s.id % 4)),
            campaign_id: (s.id % 3 != 0).then(|| format!("c-{}", s.id % 2)),
            advertiser_id: Some("adv".into()),
            user_id: Some(USERS[s.user as usize].to_string()),
            store_id: Some(STORES[s.store as usize].to_string()),
            event_time: Some(ingest - AD_DELAYS[s.delay as usize]),
            region: Some("region-a".into()),
            partition: i32::from(s.partition),
            offset: 0,
            ingest,
        };
        match s.damage {
            0 => e.user_id = None,
            1 => e.store_id = None,
            2 => e.user_id = Some(String::new()),
            3 => e.ad_id = None,
            4 => e.event_id = None,
            5 => e.region = None,
            _ => {}
        }
        events.push(e);
    }
    let mut placed: Vec<Order> = Vec::new();
    for (i, s) in orders.iter().enumerate() {
        if let (Some(of), false) = (s.update_of, placed.is_empty()) {
            let prev = placed[of as usize % placed.len()].clone();
            let mut o = prev.clone();
            o.ingest = prev.ingest + UPDATE_DELAYS[s.delay as usize % UPDATE_DELAYS.len()];
            o.status = Some(["completed", "cancelled", "placed", "shipped", "completed", "completed", "placed"][s.status as usize].to_string());
            o.amount_cents = Some([0, 1250, -5, 990, 4100][s.amount as usize]);
            o.currency = Some(["EUR", "USD", "eur", "EUR", "EURO", "GBP"][s.currency as usize].to_string());
            o.partition = i32::from(s.partition);
            if !(clean || s.same) {
                o.user_id = Some(USERS[s.user as usize].to_string());
                o.store_id = Some(STORES[s.store as usize].to_string());
                o.order_time = Some(o.ingest - ORDER_DELAYS[s.delay as usize]);
            }
            placed.push(o);
            continue;
        }
        let anchor = (!events.is_empty() && s.anchored).then(|| &events[s.anchor as usize % events.len()]);
        let (user, store, order_time, ingest) = match anchor {
            Some(e) if e.event_time.is_some() => {
                let ot = e.event_time.unwrap() + ORDER_AFTER_EVENT[s.after_event as usize];
                let ingest =
                    if s.join_wait_mode { e.ingest + AROUND_JOIN_WAIT[s.delay as usize % 8] } else { ot + ORDER_DELAYS[s.delay as usize] };
                (e.user_id.clone(), e.store_id.clone(), ot, ingest)
            }
            _ => {
                let ingest = T0 + i64::from(s.minute) * MINUTE;
                (Some(USERS[s.user as usize].to_string()), Some(STORES[s.store as usize].to_string()), ingest - ORDER_DELAYS[s.delay as usize], ingest)
            }
        };
        let id = if clean { format!("o{i}") } else { format!("o{}", s.id) };
        let mut o = Order {
            order_id: Some(id),
            user_id: user,
            store_id: store,
            order_time: Some(order_time),
            status: Some("placed".into()),
            amount_cents: Some([0, 1250, -5, 990, 4100][s.amount as usize]),
            currency: Some(["EUR", "USD", "eur", "EUR", "EURO", "GBP"][s.currency as usize].to_string()),
            region: Some("region-a".into()),
            partition: i32::from(s.partition),
            offset: 0,
            ingest,
        };
        match s.damage {
            0 => o.order_id = None,
            1 => o.user_id = None,
            2 => o.store_id = Some(String::new()),
            3 => o.region = None,
            4 => o.order_time = None,
            5 => o.amount_cents = None,
            6 => o.status = Some("shipped".into()),
            _ => {}
        }
        placed.push(o);
    }
    // Every day of the workload has messages of both topics (a backfill refuses a range
    // without input): an ad event without a user, an order without a status.
    for day in 0..11 {
        let at = T0 + day * DAY + 12 * HOUR;
        events.push(AdEvent {
            event_id: Some(format!("background-{day}")),
            event_type: Some("click".into()),
            ad_id: Some("ad-0".into()),
            campaign_id: None,
            advertiser_id: None,
            user_id: None,
            store_id: Some("s0".into()),
            event_time: Some(at),
            region: Some("region-a".into()),
            partition: 2,
            offset: 0,
            ingest: at,
        });
        placed.push(Order {
            order_id: Some(format!("background-{day}")),
            user_id: Some("u0".into()),
            store_id: Some("s0".into()),
            order_time: Some(at),
            status: None,
            amount_cents: Some(1),
            currency: Some("EUR".into()),
            region: Some("region-a".into()),
            partition: 2,
            offset: 0,
            ingest: at,
        });
    }
    // Offsets in arrival order per partition, as Kafka assigns them.
    events.sort_by_key(|e| (e.partition, e.ingest));
    let mut next = [0i64; 3];
    for e in &mut events {
        e.offset = next[e.partition as usize];
        next[e.partition as usize] += 1;
    }
    placed.sort_by_key(|o| (o.partition, o.ingest));
    let mut next = [0i64; 3];
    for o in &mut placed {
        o.offset = next[o.partition as usize];
        next[o.partition as usize] += 1;
    }
    (events, placed)
}

fn messages(ads: &[AdEvent], orders: &[Order]) -> [Vec<RawMessage>; 2] {
    let mut by_input: [Vec<RawMessage>; 2] = Default::default();
    by_input[ORDERS] = orders.iter().map(order_message).collect();
    by_input[AD_EVENTS] = ads.iter().map(common::to_message).collect();
    by_input
}

/// Through the stream driver, one process owning `groups` key groups: polls of `poll` messages
/// of one partition of one topic at a time, partitions taken in the order `order` gives. After
/// each poll whose number `restarts` names, the process "dies": the outputs
/// so far are kept (committed with the checkpoint), each group's snapshot goes through a
/// checkpoint file's bytes into a new driver, and every partition is read again from the
/// driver's resume offsets, as the Kafka runtime does after a crash.
fn stream(ads: &[AdEvent], orders: &[Order], groups: u32, poll: usize, order: &[u8], restarts: &[u16]) -> (Vec<AttributedOrder>, Vec<(i32, i64)>) {
    let inputs = messages(ads, orders);
    let mut partitions: Vec<(Source, Vec<RawMessage>)> = Vec::new();
    for (input, msgs) in inputs.iter().enumerate() {
        for p in 0..3 {
            let mut q: Vec<RawMessage> = msgs.iter().filter(|m| m.partition == p).cloned().collect();
            q.sort_by_key(|m| m.offset);
            partitions.push((Source::new(input, p), q));
        }
    }
    let sources: Vec<Source> = partitions.iter().map(|(s, _)| *s).collect();
    let new_driver = || StreamDriver::<Attribution>::with_key_groups(AttributionRules::defaults(), sources.iter().copied(), groups);
    let mut driver = new_driver();
    for g in 0..groups {
        driver.start_group(g);
    }
    // Per partition, the index of the next message to poll.
    let mut next = vec![0usize; partitions.len()];
    let (mut records, mut dead) = (Vec::new(), Vec::new());
    let mut turn = 0;
    while partitions.iter().zip(&next).any(|((_, q), n)| *n < q.len()) {
        let mut i = order[turn % order.len()] as usize % partitions.len();
        while next[i] >= partitions[i].1.len() {
            i = (i + 1) % partitions.len();
        }
        turn += 1;
        let (source, q) = &partitions[i];
        let end = (next[i] + poll).min(q.len());
        driver.on_poll(source.input as usize, &q[next[i]..end]);
        next[i] = end;
        let (m, d) = driver.drain();
        records.extend(m);
        dead.extend(d);
        if restarts.contains(&(turn as u16)) {
            // The operator writes its checkpoint in place (candidates and all): the very bytes
            // of its state's encoding.
            let snapshots: Vec<Vec<u8>> = (0..groups).map(|g| driver.encode_group(g).unwrap()).collect();
            for (g, bytes) in snapshots.iter().enumerate() {
                assert!(*bytes == checkpoint::encode(&driver.snapshot_group(g as u32).unwrap()), "group {g}'s checkpoint bytes");
            }
            driver = new_driver();
            for bytes in snapshots {
                driver.restore_group(checkpoint::decode(&bytes).unwrap()).unwrap();
            }
            let resume = driver.resume_offsets();
            for (n, (source, q)) in next.iter_mut().zip(&partitions) {
                *n = resume.get(source).map_or(0, |&o| q.partition_point(|m| m.offset < o));
            }
        }
    }
    driver.finish();
    let (m, d) = driver.drain();
    records.extend(m);
    dead.extend(d);
    let audit = driver.audit();
    assert!(audit.balances(), "{audit}");
    assert_eq!(audit.awaiting_decision, 0, "every order decided at the end");
    let mut dead: Vec<(i32, i64)> = dead.iter().map(|d| (d.partition.unwrap(), d.offset.unwrap())).collect();
    dead.sort_unstable();
    (records, dead)
}

/// The archive of each topic, each ingest hour's rows spread over files by `assign`.
fn archives(ads: &[AdEvent], orders: &[Order], assign: &[u8]) -> [MemoryArchive; 2] {
    let mut ad_files: BTreeMap<(i64, String), Vec<adsproc::gen::Row>> = BTreeMap::new();
    for (i, e) in ads.iter().enumerate() {
        ad_files.entry((floor_to(e.ingest, HOUR), format!("f{}.parquet", assign[i % assign.len()]))).or_default().push(e.clone());
    }
    let mut ad_archive = MemoryArchive::new(Format::AdEvents);
    for ((hour, name), mut rows) in ad_files {
        rows.sort_by_key(|r| (r.partition, r.offset));
        ad_archive.hours.entry(hour).or_default().insert(name, rows_to_batch(&rows.iter().collect::<Vec<_>>()));
    }
    let mut order_files: BTreeMap<(i64, String), Vec<&Order>> = BTreeMap::new();
    for (i, o) in orders.iter().enumerate() {
        order_files.entry((floor_to(o.ingest, HOUR), format!("f{}.parquet", assign[(i + 1) % assign.len()]))).or_default().push(o);
    }
    let mut order_archive = MemoryArchive::new(Format::Orders);
    for ((hour, name), mut rows) in order_files {
        rows.sort_by_key(|r| (r.partition, r.offset));
        order_archive.hours.entry(hour).or_default().insert(name, adsproc::gen::orders::order_rows_to_batch(&rows));
    }
    let mut out = [MemoryArchive::new(Format::Orders), MemoryArchive::new(Format::AdEvents)];
    out[ORDERS] = order_archive;
    out[AD_EVENTS] = ad_archive;
    out
}

fn backfill(ads: &[AdEvent], orders: &[Order], assign: &[u8], parallelism: usize, from: i64, to: i64) -> (Vec<AttributedOrder>, BTreeSet<(i32, i64)>) {
    let archives = archives(ads, orders, assign);
    let sources: Vec<&dyn ArchiveSource> = archives.iter().map(|a| a as &dyn ArchiveSource).collect();
    let mut sink = MemorySink::<AttributedOrder>::default();
    let options = BackfillOptions::new(from, to, false, parallelism);
    let report = backfill::run::<Attribution>(&AttributionRules::defaults(), &sources, &mut sink, &options, &Silent).unwrap();
    assert!(report.audit.balances(), "{}", report.audit);
    assert_eq!(report.audit.awaiting_decision, 0);
    let mut uuids = BTreeSet::new();
    for r in &sink.records {
        assert!(uuids.insert(r.record_uuid) || orders.iter().filter(|o| o.order_id.as_deref() == Some(&r.order_id)).count() > 1, "a record_uuid twice: {r:?}");
    }
    let dead: Vec<(i32, i64)> = sink.dead.iter().map(|d| (d.partition.unwrap(), d.offset.unwrap())).collect();
    let set: BTreeSet<(i32, i64)> = dead.iter().copied().collect();
    assert_eq!(set.len(), dead.len(), "a dead letter written twice");
    (sink.records, set)
}

const EVERYTHING: (i64, i64) = (T0 - 30 * DAY, T0 + 60 * DAY);

proptest! {
    // PROPTEST_CASES=n runs n cases instead (e.g. 20000 in release for a long search).
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(384), ..ProptestConfig::default() })]

    #[test]
    fn the_stream_driver_equals_the_model_whatever_the_interleaving_and_epochs(
        ads in prop::collection::vec(ad_spec(), 0..40),
        orders in prop::collection::vec(order_spec(), 1..24),
        poll in 1usize..6,
        order_a in prop::collection::vec(0u8..6, 1..8),
        order_b in prop::collection::vec(0u8..6, 1..8),
        groups in 1u32..4,
        restarts in prop::collection::vec(1u16..40, 0..3),
    ) {
        let (ads, orders) = workload(&ads, &orders, false);
        let expected = model(&ads, &orders, i64::MIN, i64::MAX);
        let (records, dead) = stream(&ads, &orders, groups, poll, &order_a, &restarts);
        let actual = upsert_view(&records);
        prop_assert!(actual == expected.records, "{}", diff(&expected.records, &actual));
        prop_assert_eq!(dead, expected.dead.iter().copied().collect::<Vec<_>>(), "every invalid order dead-lettered once");
        let (other, _) = stream(&ads, &orders, 1, 1 + poll % 3, &order_b, &[]);
        prop_assert!(upsert_view(&other) == actual);
    }

    #[test]
    fn a_backfill_of_everything_equals_the_model_whatever_the_files_and_parallelism(
        ads in prop::collection::vec(ad_spec(), 0..40),
        orders in prop::collection::vec(order_spec(), 1..24),
        assign in prop::collection::vec(0u8..3, 1..6),
        parallelism in 1usize..5,
    ) {
        let (ads, orders) = workload(&ads, &orders, false);
        let expected = model(&ads, &orders, EVERYTHING.0, EVERYTHING.1);
        let (records, dead) = backfill(&ads, &orders, &assign, parallelism, EVERYTHING.0, EVERYTHING.1);
        let actual = upsert_view(&records);
        if std::env::var("DEBUG_ORDERS").is_ok() && actual != expected.records {
            let mut sorted = orders.clone();
            sorted.sort_by_key(|o| (o.ingest, o.partition, o.offset));
            for o in sorted.iter().filter(|o| o.order_id.as_deref() == Some("o0")) { eprintln!("ORDER {} valid={} {:?}", o.ingest - T0, valid_order(o), o); }
            for e in ads.iter().filter(|e| e.user_id.as_deref() == Some("u2")) { eprintln!("AD {:?}", e); }
            eprintln!("parallelism {parallelism}");
        }
        prop_assert!(actual == expected.records, "{}", diff(&expected.records, &actual));
        prop_assert_eq!(dead, expected.dead);
    }

    /// Client retries repeat their event and status updates keep their order's identity: a
    /// backfill of one day, which reads a week of ad events before it and of orders after it,
    /// gives the model's records of that day exactly.
    #[test]
    fn a_backfill_of_a_day_equals_the_model_restricted_to_it(
        ads in prop::collection::vec(ad_spec(), 0..40),
        orders in prop::collection::vec(order_spec(), 1..24),
        assign in prop::collection::vec(0u8..3, 1..6),
        parallelism in 1usize..5,
        day in 7i64..10,
    ) {
        let (ads, orders) = workload(&ads, &orders, true);
        let (from, to) = (T0 + day * DAY, T0 + (day + 1) * DAY);
        let expected = model(&ads, &orders, from, to);
        let (records, dead) = backfill(&ads, &orders, &assign, parallelism, from, to);
        let actual = upsert_view(&records);
        prop_assert!(actual == expected.records, "{}", diff(&expected.records, &actual));
        prop_assert_eq!(dead, expected.dead);
    }
}

/// The workloads reach every branch the model has: attributed by click and by impression, not
/// attributed, updates, later lives, invalid orders, duplicates (a property test over
/// workloads that never attribute would check little).
#[test]
fn the_workloads_reach_every_case() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut clicks, mut impressions, mut none, mut dead, mut cases) = (0, 0, 0, 0, 0);
    for _ in 0..200 {
        let ads = prop::collection::vec(ad_spec(), 0..40).new_tree(&mut runner).unwrap().current();
        let orders = prop::collection::vec(order_spec(), 1..24).new_tree(&mut runner).unwrap().current();
        let (ads, orders) = workload(&ads, &orders, false);
        let e = model(&ads, &orders, i64::MIN, i64::MAX);
        clicks += e.records.values().filter(|r| r.click).count();
        impressions += e.records.values().filter(|r| !r.click).count();
        let valid_ids: BTreeSet<&str> = orders.iter().filter(|o| valid_order(o)).filter_map(|o| o.order_id.as_deref()).collect();
        none += valid_ids.len() - e.records.len().min(valid_ids.len());
        dead += e.dead.len();
        cases += 1;
    }
    // Every workload has 11 invalid background orders.
    assert!(clicks > 50 && impressions > 25 && none > 200 && dead > 2200 + 200, "{cases} workloads: {clicks} clicks, {impressions} impressions, {none} unattributed, {dead} dead letters");
}
