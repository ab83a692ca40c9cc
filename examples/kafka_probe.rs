//! Measurements for scripts/bench-stream.sh, against a broker:
//!
//!   kafka_probe read-rate BROKERS TOPIC[,TOPIC…]
//!       reads the whole topics read_committed, as plain consumers copying each payload (one
//!       per topic, side by side), and prints `messages seconds rate`, timed from the first
//!       message to the last partition's end;
//!   kafka_probe window-latency BROKERS TOPIC SECONDS [DELAYS_FILE]
//!       tails an ad-metrics topic read_committed for SECONDS and prints, over the windows it
//!       saw appear, the delay from each window's end to the moment its first record was
//!       readable: `windows p50_ms p99_ms max_ms`; with DELAYS_FILE, also appends each delay
//!       to it, one per line, to pool several runs;
//!   kafka_probe delays DELAYS_FILE
//!       prints the same summary of the delays in such a file.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use adsproc::connector::kafka::{admin, KafkaSettings};
use adsproc::contract::outputs::AdMetric;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

fn consumer(brokers: &str, topic: &str, from: Offset) -> (BaseConsumer, usize) {
    let settings = KafkaSettings::new(brokers, &[]);
    // The stream job creates its output topics when it starts: wait for them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let parts = loop {
        match admin::partitions(&settings, topic).unwrap() {
            Some(p) => break p,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            None => panic!("topic {topic} does not exist after 30 s"),
        }
    };
    let c: BaseConsumer = settings
        .config(&[
            ("group.id", "kafka-probe"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
            ("isolation.level", "read_committed"),
            // The fetch settings adsproc's reader uses: librdkafka's default backoff idles a
            // second whenever the local queue fills, and a plain consumer timed with it read
            // 500k messages in 0.8 s or 1.8 s by luck, so the comparison was not fair to it.
            ("fetch.wait.max.ms", "100"),
            ("fetch.queue.backoff.ms", "10"),
        ])
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, from).unwrap();
    }
    c.assign(&tpl).unwrap();
    (c, parts.len())
}

fn read_rate(brokers: &str, topics: &str) {
    let first = std::sync::Mutex::new(None::<Instant>);
    let read: Vec<(u64, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = topics.split(',').map(|t| s.spawn(|| read_topic(brokers, t, &first))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = first.lock().unwrap().map_or(0.0, |s| s.elapsed().as_secs_f64());
    let (count, bytes) = read.iter().fold((0, 0), |a, r| (a.0 + r.0, a.1 + r.1));
    eprintln!("{bytes} payload bytes");
    println!("{count} {secs:.3} {:.0}", count as f64 / secs);
}

/// Reads one topic to its end; (messages, payload bytes). `first`: when any consumer got its
/// first message.
fn read_topic(brokers: &str, topic: &str, first: &std::sync::Mutex<Option<Instant>>) -> (u64, usize) {
    let (c, n) = consumer(brokers, topic, Offset::Beginning);
    let mut at_end = HashSet::new();
    let (mut count, mut bytes) = (0u64, 0usize);
    let mut started: Option<Instant> = None;
    while at_end.len() < n {
        match c.poll(Duration::from_secs(5)) {
            Some(Ok(m)) => {
                if started.is_none() {
                    started = Some(Instant::now());
                    first.lock().unwrap().get_or_insert_with(Instant::now);
                }
                let payload = m.payload().unwrap_or_default().to_vec();
                if std::env::var("PROBE_DEBUG").is_ok() && count < 5 {
                    eprintln!("p{} o{} len {} {:?}", m.partition(), m.offset(), payload.len(), String::from_utf8_lossy(&payload[..payload.len().min(120)]));
                }
                bytes += payload.len();
                count += 1;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            _ => {}
        }
    }
    (count, bytes)
}

fn window_latency(brokers: &str, topic: &str, seconds: u64, delays_file: Option<&str>) {
    let (c, _) = consumer(brokers, topic, Offset::End);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut seen = HashSet::new();
    let mut delays: Vec<i64> = Vec::new();
    while Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
            let Ok(r) = serde_json::from_slice::<AdMetric>(m.payload().unwrap_or_default()) else { continue };
            if seen.insert(r.record_uuid) {
                delays.push(now - r.window_end);
            }
        }
    }
    if let Some(path) = delays_file {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("delays file");
        for d in &delays {
            writeln!(f, "{d}").expect("write delays");
        }
    }
    print_delays(delays);
}

/// `windows p50_ms p99_ms max_ms` (nearest rank; -1 for none).
fn print_delays(mut delays: Vec<i64>) {
    delays.sort_unstable();
    let q = |p: f64| delays.get(((delays.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(-1);
    println!("{} {} {} {}", delays.len(), q(0.5), q(0.99), delays.last().copied().unwrap_or(-1));
}

fn pooled_delays(path: &str) {
    let text = std::fs::read_to_string(path).expect("delays file");
    print_delays(text.lines().map(|l| l.trim().parse().expect("a delay in ms per line")).collect());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("read-rate") => read_rate(&args[2], &args[3]),
        Some("window-latency") => window_latency(&args[2], &args[3], args[4].parse().expect("seconds"), args.get(5).map(String::as_str)),
        Some("delays") => pooled_delays(&args[2]),
        _ => {
            eprintln!(
                "usage: kafka_probe read-rate BROKERS TOPIC | window-latency BROKERS TOPIC SECONDS [DELAYS_FILE] | delays DELAYS_FILE"
            );
            std::process::exit(2);
        }
    }
}
