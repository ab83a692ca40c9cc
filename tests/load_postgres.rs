//! `adsproc load` against a real broker (Nisshi) and a real PostgreSQL server: killed at random
//! moments while records flow, the table is after every kill exactly the last value per
//! record_uuid of the topic up to the offsets stored with it, and at the end of the whole
//! topic; records that do not fit are in the dead-letter table, each once; a load that cannot
//! work says why and exits 2.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adsproc::connector::kafka::{admin, KafkaSettings};
use adsproc::contract::outputs::AdMetric;
use common::kafka::{bin, read_all, spawn, Broker};
use common::postgres::{metrics_table, Postgres};
use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const PARTITIONS: i32 = 4;

fn metric(i: u32, round: i64) -> AdMetric {
    let ad: std::sync::Arc<str> = format!("ad-{i}").into();
    let window_start = 1_767_225_600_000 + i64::from(i % 60) * 60_000;
    AdMetric {
        record_uuid: adsproc::contract::record_uuid::ad_metric("region-a", &ad, window_start),
        region: "region-a".into(),
        ad_id: ad,
        campaign_id: if i % 7 == 0 { None } else { Some(format!("c-{}", i % 13).into()) },
        advertiser_id: Some(format!("adv-{}", i % 5).into()),
        window_start,
        window_end: window_start + 60_000,
        impressions: round * 3 + i64::from(i % 3),
        clicks: round,
    }
}

/// Records that a table cannot take, with the reason code each must get.
fn misfit(round: i64) -> (Option<Vec<u8>>, &'static str) {
    let mut v = Vec::new();
    metric(1, round).write_json(&mut v);
    let text = String::from_utf8(v).unwrap();
    match round % 4 {
        0 => (Some(b"{not json".to_vec()), "not-json"),
        1 => (Some(text.replace("\"ad-1\"", "\"ad\\u0000-1\"").into_bytes()), "nul-in-text"),
        2 => (Some(text.replace("\"clicks\":", "\"clicks\":\"many\",\"x\":").into_bytes()), "not-a-record"),
        _ => (None, "no-value"),
    }
}

/// Writes rounds until `stop`: a new value of each of `uuids` records, and one misfit per
/// round. Returns the number of rounds.
fn produce(addr: &str, stop: &dyn Fn(i64) -> bool, uuids: u32, pause: Duration) -> i64 {
    let producer: BaseProducer = KafkaSettings::new(addr, &[]).config(&[("linger.ms", "5")]).create().unwrap();
    let mut round = 0;
    while !stop(round) {
        round += 1;
        for i in 0..uuids {
            let m = metric(i, round);
            let mut v = Vec::new();
            m.write_json(&mut v);
            let key = m.record_uuid.to_string();
            let partition = (m.record_uuid.as_u128() % PARTITIONS as u128) as i32;
            send(&producer, BaseRecord::to("ad-metrics").key(&key).payload(&v).partition(partition));
        }
        let (payload, _) = misfit(round);
        let key = format!("misfit-{round}");
        let record = BaseRecord::<String, Vec<u8>>::to("ad-metrics").key(&key).partition((round % PARTITIONS as i64) as i32);
        send(&producer, match &payload {
            Some(p) => record.payload(p),
            None => record,
        });
        producer.poll(Duration::ZERO);
        std::thread::sleep(pause);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    round
}

fn send<'a>(producer: &BaseProducer, mut record: BaseRecord<'a, String, Vec<u8>>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((e, r)) => {
                assert!(matches!(e, rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)), "{e}");
                producer.poll(Duration::from_millis(10));
                record = r;
            }
        }
    }
}

/// What the table and its dead-letter table must hold after a load that stored `offsets`:
/// the last value per record_uuid of the records below them, and the misfits below them.
fn expected(records: &[(i32, i64, Vec<u8>, Vec<u8>)], offsets: &BTreeMap<i32, i64>) -> (BTreeMap<uuid::Uuid, AdMetric>, BTreeMap<(i32, i64), String>) {
    let mut last = BTreeMap::new();
    let mut misfits = BTreeMap::new();
    for (p, o, key, value) in records {
        if *o >= offsets.get(p).copied().unwrap_or(0) {
            continue;
        }
        if key.starts_with(b"misfit-") {
            let round: i64 = std::str::from_utf8(&key[7..]).unwrap().parse().unwrap();
            misfits.insert((*p, *o), misfit(round).1.to_string());
        } else {
            let m: AdMetric = serde_json::from_slice(value).unwrap();
            last.insert(m.record_uuid, m);
        }
    }
    (last, misfits)
}

fn stored(url: &str, table: &str) -> BTreeMap<i32, i64> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.query("SELECT \"partition\", next_offset FROM adsproc_load_offsets WHERE table_name = $1 AND topic = 'ad-metrics'", &[&table])
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default()
}

fn dead_letter_table(url: &str, table: &str) -> BTreeMap<(i32, i64), String> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let rows = c.query(&format!("SELECT \"partition\", \"offset\", reason FROM {table}_dlq"), &[]).unwrap_or_default();
    rows.iter().map(|r| ((r.get(0), r.get(1)), r.get::<_, String>(2).split(':').next().unwrap().to_string())).collect()
}

/// The records of `ad-metrics` below `offsets` (a topic that is still being written has no
/// end to read to).
fn read_below(addr: &str, offsets: &BTreeMap<i32, i64>) -> Vec<(i32, i64, Vec<u8>, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = KafkaSettings::new(addr, &[]).config(&[("group.id", "test-read-below"), ("enable.auto.commit", "false")]).create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut missing: BTreeSet<i32> = BTreeSet::new();
    for (&p, &o) in offsets {
        if o > 0 {
            tpl.add_partition_offset("ad-metrics", p, rdkafka::Offset::Beginning).unwrap();
            missing.insert(p);
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !missing.is_empty() {
        assert!(Instant::now() < deadline, "partitions {missing:?} did not reach the stored offsets {offsets:?}");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            if m.offset() < offsets[&m.partition()] {
                out.push((m.partition(), m.offset(), m.key().unwrap_or_default().to_vec(), m.payload().unwrap_or_default().to_vec()));
            }
            if m.offset() + 1 >= offsets[&m.partition()] {
                missing.remove(&m.partition());
                let mut done = rdkafka::TopicPartitionList::new();
                done.add_partition("ad-metrics", m.partition());
                consumer.pause(&done).unwrap();
            }
        }
    }
    out
}

fn check_table(addr: &str, url: &str, table_name: &str, context: &str) -> usize {
    let offsets = stored(url, table_name);
    let (rows, misfits) = expected(&read_below(addr, &offsets), &offsets);
    let table = if offsets.is_empty() { BTreeMap::new() } else { metrics_table(url, table_name) };
    let wrong: Vec<_> = rows.iter().filter(|(u, m)| table.get(u) != Some(m)).take(3).collect();
    assert!(wrong.is_empty() && table.len() == rows.len(), "{context}: the table ({} rows) is not the last value per record_uuid below offsets {offsets:?} ({} rows); e.g. {wrong:?}", table.len(), rows.len());
    assert_eq!(dead_letter_table(url, table_name), misfits, "{context}: dead letters");
    rows.len()
}

#[test]
fn sigkills_while_records_flow_leave_the_last_value_per_record_uuid_up_to_the_stored_offsets() {
    let seed: u64 = std::env::var("ADSPROC_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261207);
    println!("seed {seed} (ADSPROC_TEST_SEED reproduces the kill moments)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let broker = Broker::start("memory");
    let pg = Postgres::start();
    admin::ensure_topic(&KafkaSettings::new(&broker.addr, &[]), "ad-metrics", PARTITIONS).unwrap();
    let addr = broker.addr.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let producing = stop.clone();
    let producer = std::thread::spawn(move || produce(&addr, &|_| producing.load(Ordering::Relaxed), 100, Duration::from_millis(50)));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("load.log");
    let args = ["load", "--brokers", &broker.addr, "--topic", "ad-metrics", "--into", &pg.url, "--batch-rows", "700", "--linger", "50ms"];
    let mut kills = 0;
    let mut progress = BTreeSet::new();
    while kills < 12 {
        let mut child = spawn(&args, &log);
        std::thread::sleep(Duration::from_millis(rng.random_range(200..900)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(status.signal(), Some(9), "the load ended on its own ({status}) before it was killed:\n{text}");
        kills += 1;
        let rows = check_table(&broker.addr, &pg.url, "ad_metrics", &format!("after kill {kills}"));
        progress.insert(stored(&pg.url, "ad_metrics").values().sum::<i64>());
        println!("kill {kills}: {rows} record_uuids loaded, offsets {:?}", stored(&pg.url, "ad_metrics"));
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = producer.join().unwrap();
    assert!(progress.len() >= 6, "the kills landed at too few distinct positions: {progress:?}");
    let out = std::process::Command::new(bin()).args(args).arg("--stop-when-caught-up").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("records/s"), "{text}");
    let rows = check_table(&broker.addr, &pg.url, "ad_metrics", "at the end");
    assert_eq!(rows, 100);
    // Every offset of the topic is stored: nothing left behind.
    let ends: BTreeMap<i32, i64> = read_all(&broker.addr, "ad-metrics").iter().fold(BTreeMap::new(), |mut m, (p, o, _, _)| {
        let e = m.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
        m
    });
    assert_eq!(stored(&pg.url, "ad_metrics"), ends);
    assert_eq!(dead_letter_table(&pg.url, "ad_metrics").len() as i64, rounds, "one dead letter per misfit, each once");
    let table = metrics_table(&pg.url, "ad_metrics");
    assert!(table.values().all(|m| m.clicks == rounds), "every record_uuid at its last round's value");
}

fn load_fails(args: &[&str]) -> String {
    let started = Instant::now();
    let out = std::process::Command::new(bin()).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {text}");
    assert!(started.elapsed() < Duration::from_secs(30), "{args:?} took {:?} to fail", started.elapsed());
    text
}

#[test]
fn a_load_that_cannot_work_says_why_and_exits_2() {
    let broker = Broker::start("memory");
    let pg = Postgres::start();
    admin::ensure_topic(&KafkaSettings::new(&broker.addr, &[]), "ad-metrics", 1).unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nowhere = format!("postgres://adsproc@127.0.0.1:{free}/postgres");
    let base = |url: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["load", "--brokers", &broker.addr, "--topic", "ad-metrics", "--into", url, "--stop-when-caught-up"].iter().map(|s| s.to_string()).collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |v: Vec<String>| load_fails(&v.iter().map(String::as_str).collect::<Vec<_>>());

    let text = run(base(&nowhere, &[]));
    assert!(text.contains(&format!("cannot connect to postgres://127.0.0.1:{free}/postgres")), "{text}");

    pg.client()
        .batch_execute("CREATE TABLE wrong (record_uuid uuid, region text, ad_id text, campaign_id text, advertiser_id text, \
             window_start timestamptz, window_end timestamptz, impressions integer, clicks bigint, note text NOT NULL)")
        .unwrap();
    let text = run(base(&pg.url, &["--table", "wrong"]));
    for part in ["table \"wrong\" cannot take ad-metrics records", "column impressions is integer, not bigint", "column note is NOT NULL without a default", "record_uuid has no primary key"] {
        assert!(text.contains(part), "{part:?} not in: {text}");
    }
    pg.client().batch_execute("CREATE TABLE short (record_uuid uuid PRIMARY KEY, impressions bigint)").unwrap();
    let text = run(base(&pg.url, &["--table", "short"]));
    assert!(text.contains("column region (text) is missing"), "{text}");

    let text = run(base(&pg.url, &["--table", "Robert'); DROP TABLE x;--"]));
    assert!(text.contains("--table") && text.contains("is not a table name"), "{text}");
    let text = load_fails(&["load", "--brokers", &broker.addr, "--topic", "clicks", "--into", &pg.url]);
    assert!(text.contains("--kind is needed"), "{text}");
    // A second load of one table is refused while the first runs.
    let dir = tempfile::tempdir().unwrap();
    let mut first = spawn(&["load", "--brokers", &broker.addr, "--topic", "ad-metrics", "--into", &pg.url], &dir.path().join("first.log"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(dir.path().join("first.log")).unwrap_or_default().contains("loading ad-metrics") {
        assert!(Instant::now() < deadline, "the first load did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = run(base(&pg.url, &[]));
    assert!(text.contains("another adsproc load is writing table \"ad_metrics\""), "{text}");
    first.kill().unwrap();
    first.wait().unwrap();
}

/// The load dies at each step of its commit (adsproc::runtime::crash_point), at the first, second
/// and fifth batch: after each crash the table and its dead letters are exactly the topic up to
/// the stored offsets, and a restart completes it.
#[test]
fn a_crash_at_every_step_of_the_commit_leaves_the_table_consistent() {
    use adsproc::runtime::crash_point::CrashPoint;
    let broker = Broker::start("memory");
    let pg = Postgres::start();
    admin::ensure_topic(&KafkaSettings::new(&broker.addr, &[]), "ad-metrics", PARTITIONS).unwrap();
    let rounds = produce(&broker.addr, &|r| r >= 30, 100, Duration::ZERO);
    for point in CrashPoint::LOAD {
        for pass in [1, 2, 5] {
            let table = format!("crash_{}_{pass}", point.name().replace('-', "_"));
            let args = ["load", "--brokers", &broker.addr, "--topic", "ad-metrics", "--into", &pg.url, "--table", &table, "--batch-rows", "400", "--stop-when-caught-up"];
            let out = std::process::Command::new(bin()).args(args).env("ADSPROC_CRASH_AT", format!("{}:{pass}", point.name())).output().unwrap();
            let text = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.signal(), Some(6), "{} pass {pass}: the load did not crash there ({}):\n{text}", point.name(), out.status);
            let rows = check_table(&broker.addr, &pg.url, &table, &format!("after a crash at {} pass {pass}", point.name()));
            assert!(!stored(&pg.url, &table).is_empty() || (*point == CrashPoint::LoadBeforeCommit && pass == 1), "{} pass {pass}: nothing stored", point.name());
            let out = std::process::Command::new(bin()).args(args).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(check_table(&broker.addr, &pg.url, &table, "after the restart"), 100);
            assert_eq!(dead_letter_table(&pg.url, &table).len() as i64, rounds);
            println!("{} pass {pass}: {rows} record_uuids at the crash, all after the restart", point.name());
        }
    }
}

/// attributed-orders through the load: every column lands with its type, and an order's later
/// status reaches the row (the last value per record_uuid).
#[test]
fn attributed_orders_load_with_their_latest_status() {
    use adsproc::contract::attributed_orders::{AttributedOrder, AttributionType};
    let broker = Broker::start("memory");
    let pg = Postgres::start();
    admin::ensure_topic(&KafkaSettings::new(&broker.addr, &[]), "attributed-orders", 2).unwrap();
    let order = |i: u32, status: &str, amount: i64| AttributedOrder {
        record_uuid: adsproc::contract::record_uuid::attributed_order(&format!("o-{i}")),
        order_id: format!("o-{i}"),
        user_id: format!("u-{i}"),
        store_id: "s-1".into(),
        region: "region-b".into(),
        order_time: 1_767_225_600_123 + i64::from(i),
        status: status.into(),
        amount_cents: amount,
        currency: "EUR".into(),
        ad_id: "ad-9".into(),
        campaign_id: (i % 2 == 0).then(|| "c-1".to_string()),
        advertiser_id: Some("adv-1".into()),
        attributed_event_id: format!("e-{i}"),
        attribution_type: if i % 3 == 0 { AttributionType::Impression } else { AttributionType::Click },
        ad_event_time: 1_767_225_000_456,
    };
    let producer: BaseProducer = KafkaSettings::new(&broker.addr, &[]).config(&[]).create().unwrap();
    let mut expected = BTreeMap::new();
    for (status, amount) in [("placed", 1000), ("completed", 1250), ("cancelled", 0)] {
        for i in 0..50u32 {
            if status == "cancelled" && i % 5 != 0 {
                continue;
            }
            let o = order(i, status, amount + i64::from(i));
            let key = o.record_uuid.to_string();
            let value = serde_json::to_vec(&o).unwrap();
            send(&producer, BaseRecord::to("attributed-orders").key(&key).payload(&value).partition((i % 2) as i32));
            expected.insert(o.record_uuid, o);
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let out = std::process::Command::new(bin())
        .args(["load", "--brokers", &broker.addr, "--topic", "attributed-orders", "--into", &pg.url, "--stop-when-caught-up", "--batch-rows", "40"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = pg
        .client()
        .query(
            "SELECT record_uuid, order_id, user_id, store_id, region, (extract(epoch from order_time) * 1000)::bigint, status, amount_cents, \
             currency, ad_id, campaign_id, advertiser_id, attributed_event_id, attribution_type, (extract(epoch from ad_event_time) * 1000)::bigint \
             FROM attributed_orders",
            &[],
        )
        .unwrap();
    let table: BTreeMap<uuid::Uuid, AttributedOrder> = rows
        .iter()
        .map(|r| {
            let o = AttributedOrder {
                record_uuid: r.get(0),
                order_id: r.get(1),
                user_id: r.get(2),
                store_id: r.get(3),
                region: r.get(4),
                order_time: r.get(5),
                status: r.get(6),
                amount_cents: r.get(7),
                currency: r.get(8),
                ad_id: r.get(9),
                campaign_id: r.get(10),
                advertiser_id: r.get(11),
                attributed_event_id: r.get(12),
                attribution_type: AttributionType::parse(r.get(13)).unwrap(),
                ad_event_time: r.get(14),
            };
            (o.record_uuid, o)
        })
        .collect();
    assert_eq!(table, expected);
    assert_eq!(table.values().filter(|o| o.status == "cancelled").count(), 10);
}

/// The database crashes (SIGKILL of the postmaster) while a load writes: the load stops with a
/// clear message and exit 2; once the server is back, a restarted load completes the table
/// exactly, from the offsets that survived the crash with their rows.
#[test]
fn a_database_crash_stops_the_load_and_a_restart_completes_the_table() {
    let broker = Broker::start("memory");
    let pg = Postgres::start();
    admin::ensure_topic(&KafkaSettings::new(&broker.addr, &[]), "ad-metrics", PARTITIONS).unwrap();
    let rounds = produce(&broker.addr, &|r| r >= 40, 400, Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("load.log");
    let args = ["load", "--brokers", &broker.addr, "--topic", "ad-metrics", "--into", &pg.url, "--batch-rows", "300", "--stop-when-caught-up"];
    let mut child = spawn(&args, &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored(&pg.url, "ad_metrics").values().sum::<i64>() < 1000 {
        assert!(Instant::now() < deadline, "the load made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let crash = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh")).args(["kill", pg.dir.path().to_str().unwrap()]).output().unwrap();
    assert!(crash.status.success());
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(text.contains("error: cannot write a batch to \"ad_metrics\" on postgres://127.0.0.1:"), "no clear message: {text}");
    let again = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh")).args(["start", pg.dir.path().to_str().unwrap()]).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let partial = check_table(&broker.addr, &pg.url, "ad_metrics", "after the database crash");
    let out = std::process::Command::new(bin()).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(check_table(&broker.addr, &pg.url, "ad_metrics", "after the restart"), 400);
    assert_eq!(dead_letter_table(&pg.url, "ad_metrics").len() as i64, rounds);
    println!("{partial} record_uuids survived the crash; the message was: {}", text.lines().last().unwrap_or_default());
}
