use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::connector::kafka::{admin, KafkaSettings};
use crate::connector::store::parse_key_value;
use crate::contract::time::{rfc3339, HOUR_MS};

/// Publish synthetic ad events and orders to Kafka (the `gen` workload, live).
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Publish the synthetic workload of `adsproc gen` (same knobs, same seed, same messages) to the \
ad-events and orders topics, each message to its generated partition with its generated ingest time as the Kafka \
timestamp, hour by hour (an hour's ad events, then its orders), so that a person can watch `adsproc stream` work \
and a test can compare it with a backfill of the archive. --orders 0 publishes ad events only.",
    after_help = "Examples:\n  adsproc produce --brokers 127.0.0.1:9092 --events 100000 --hours 2\n  adsproc produce --brokers 127.0.0.1:9092 --events 50000 --not-json-fraction 0.001 --watermark-tick\n  adsproc produce --brokers 127.0.0.1:9092 --events 200000 --hours 48 --orders 4000 --order-hours 24"
)]
pub struct Args {
    /// Kafka bootstrap servers, host:port[,host:port…].
    #[arg(long)]
    brokers: String,
    #[command(flatten)]
    knobs: super::gen::Knobs,
    /// Fraction of messages (of both topics) replaced by bytes that are not JSON.
    #[arg(long, default_value_t = 0.0)]
    not_json_fraction: f64,
    /// Fraction of orders sent with a field of the wrong JSON type (an amount as text), which
    /// an archive cannot hold (its columns are typed).
    #[arg(long, default_value_t = 0.0)]
    wrong_type_fraction: f64,
    /// End with one valid message per partition of each topic stamped an hour after the
    /// workload, so that a stream job's watermark passes every result of it.
    #[arg(long)]
    watermark_tick: bool,
    /// Send at most this many messages per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Live traffic: stamp each message with the wall clock when it is sent (event times keep
    /// their generated distance before it), instead of the generated ingest time. With
    /// --rate, for watching the stream job and measuring its latency.
    #[arg(long)]
    live: bool,
    /// librdkafka property, key=value (repeatable).
    #[arg(short = 'X', value_parser = parse_key_value)]
    kafka_options: Vec<(String, String)>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let spec = a.knobs.spec()?;
    anyhow::ensure!((0.0..=1.0).contains(&a.not_json_fraction), "--not-json-fraction must be between 0 and 1");
    anyhow::ensure!((0.0..=1.0).contains(&a.wrong_type_fraction), "--wrong-type-fraction must be between 0 and 1");
    let settings = KafkaSettings::new(&a.brokers, &a.kafka_options);
    let mut topics = vec![(spec.topic.clone(), spec.partitions)];
    if spec.orders > 0 {
        topics.push((spec.orders_topic.clone(), spec.order_partitions));
    }
    for (topic, n) in &topics {
        let parts = admin::ensure_topic(&settings, topic, *n as i32)?;
        anyhow::ensure!(parts.len() as u32 >= *n, "topic {topic:?} has {} partitions, fewer than the {n} asked for", parts.len());
    }
    let producer: ThreadedProducer<Deliveries> = settings
        .config(&[("enable.idempotence", "true"), ("linger.ms", "20"), ("batch.num.messages", "10000"), ("queue.buffering.max.messages", "1000000")])
        .create_with_context(Deliveries::default())
        .context("cannot create the producer")?;
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut send = |topic: &str, partition: i32, timestamp: i64, payload: &[u8]| -> anyhow::Result<()> {
        let mut rec: BaseRecord<'_, (), [u8]> = BaseRecord::to(topic).partition(partition).timestamp(timestamp).payload(payload);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(e).with_context(|| format!("cannot produce to {topic:?}")),
            }
        }
        sent += 1;
        if let Some(rate) = a.rate {
            let due = Duration::from_secs_f64(sent as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(())
    };
    for hour in 0..spec.hours {
        for (i, row) in spec.hour_rows(hour).iter().enumerate() {
            let junk = a.not_json_fraction > 0.0 && unit(spec.seed, hour, i as u64) < a.not_json_fraction;
            let (payload, ts) = if a.live {
                let now = chrono::Utc::now().timestamp_millis();
                let mut live = row.clone();
                live.event_time = row.event_time.map(|t| now - (row.ingest - t));
                (if junk { format!("not json #{hour}-{i} {{") } else { live.to_json() }, now)
            } else {
                (if junk { format!("not json #{hour}-{i} {{") } else { row.to_json() }, row.ingest)
            };
            send(&spec.topic, row.partition, ts, payload.as_bytes())?;
        }
        for (i, row) in spec.order_rows(hour).iter().enumerate() {
            // Salted apart from the ad events' choices of the same hour and index.
            let u = unit(spec.seed ^ 0x0D0E_0D0E, hour, i as u64);
            let live_now = a.live.then(|| chrono::Utc::now().timestamp_millis());
            let mut row = row.clone();
            if let Some(now) = live_now {
                row.order_time = row.order_time.map(|t| now - (row.ingest - t));
                row.ingest = now;
            }
            let payload = if u < a.not_json_fraction {
                format!("not json order #{hour}-{i} {{")
            } else if u < a.not_json_fraction + a.wrong_type_fraction {
                row.to_json().replacen("\"amount_cents\":", "\"amount_cents\":\"", 1).replacen(",\"currency\"", "\",\"currency\"", 1)
            } else {
                row.to_json()
            };
            send(&spec.orders_topic, row.partition, row.ingest, payload.as_bytes())?;
        }
    }
    let end = spec.start + i64::from(spec.hours) * HOUR_MS;
    if a.watermark_tick {
        let t = end + HOUR_MS;
        for p in 0..spec.partitions as i32 {
            let tick = format!(
                r#"{{"event_id":"watermark-tick-{p}","event_type":"impression","ad_id":"adsproc-watermark-tick","event_time":{t},"region":"tick"}}"#
            );
            send(&spec.topic, p, t, tick.as_bytes())?;
        }
        if spec.orders > 0 {
            for p in 0..spec.order_partitions as i32 {
                let tick = format!(
                    r#"{{"order_id":"watermark-tick-{p}","user_id":"adsproc-watermark-tick","store_id":"adsproc-watermark-tick","order_time":{t},"status":"placed","amount_cents":0,"currency":"XXX","region":"tick"}}"#
                );
                send(&spec.orders_topic, p, t, tick.as_bytes())?;
            }
        }
    }
    producer.flush(Duration::from_secs(60)).context("not every message was acknowledged within 60 s")?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = producer.context().first_error.lock().expect("not poisoned").clone().unwrap_or_default();
        anyhow::bail!("{failed} of {sent} messages were not delivered (the first: {first})");
    }
    println!(
        "sent {sent} messages to {} on {} (ingest times {} to {}) in {:.1} s",
        topics.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(" and "),
        a.brokers,
        rfc3339(spec.start),
        rfc3339(end),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Counts the messages the broker did not take: a send only queues a message, and its
/// delivery report says whether it arrived.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_error.lock().expect("not poisoned");
            first.get_or_insert_with(|| format!("{e} on {}[{}]", rdkafka::Message::topic(m), rdkafka::Message::partition(m)));
        }
    }
}

/// A deterministic number in [0, 1) per message.
fn unit(seed: u64, hour: u32, index: u64) -> f64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(&index.to_le_bytes(), seed ^ (u64::from(hour) << 40));
    (h >> 11) as f64 / (1u64 << 53) as f64
}
