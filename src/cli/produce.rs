use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::connector::kafka::{admin, KafkaSettings};
use crate::connector::store::parse_key_value;
use crate::contract::time::{rfc3339, HOUR_MS};

/// Publish synthetic events to a Kafka topic (the `gen` workload, live).
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Publish the synthetic workload of `adsproc gen` (same knobs, same seed, same messages) to a \
Kafka topic, each message to its generated partition with its generated ingest time as the Kafka timestamp, so \
that a person can watch `adsproc stream` work and a test can compare it with a backfill of the archive.",
    after_help = "Examples:\n  adsproc produce --brokers 127.0.0.1:9092 --events 100000 --hours 2\n  adsproc produce --brokers 127.0.0.1:9092 --events 50000 --not-json-fraction 0.001 --watermark-tick"
)]
pub struct Args {
    #[arg(long)]
    brokers: String,
    #[command(flatten)]
    knobs: super::gen::Knobs,
    /// Fraction of messages replaced by bytes that are not JSON.
    #[arg(long, default_value_t = 0.0)]
    not_json_fraction: f64,
    /// End with one valid message per partition stamped an hour after the workload, so that a
    /// stream job's watermark passes every window of it.
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
    let settings = KafkaSettings::new(&a.brokers, &a.kafka_options);
    let parts = admin::ensure_topic(&settings, &spec.topic, spec.partitions as i32)?;
    anyhow::ensure!(
        parts.len() as u32 >= spec.partitions,
        "topic {:?} has {} partitions, fewer than --partitions {}",
        spec.topic,
        parts.len(),
        spec.partitions
    );
    let producer: ThreadedProducer<DefaultProducerContext> = settings
        .config(&[("enable.idempotence", "true"), ("linger.ms", "20"), ("batch.num.messages", "10000"), ("queue.buffering.max.messages", "1000000")])
        .create()
        .context("cannot create the producer")?;
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut send = |partition: i32, timestamp: i64, payload: &[u8]| -> anyhow::Result<()> {
        let mut rec: BaseRecord<'_, (), [u8]> = BaseRecord::to(&spec.topic).partition(partition).timestamp(timestamp).payload(payload);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(e).with_context(|| format!("cannot produce to {:?}", spec.topic)),
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
            send(row.partition, ts, payload.as_bytes())?;
        }
    }
    let end = spec.start + i64::from(spec.hours) * HOUR_MS;
    if a.watermark_tick {
        for p in 0..spec.partitions as i32 {
            let t = end + HOUR_MS;
            let tick = format!(
                r#"{{"event_id":"watermark-tick-{p}","event_type":"impression","ad_id":"adsproc-watermark-tick","event_time":{t},"region":"tick"}}"#
            );
            send(p, t, tick.as_bytes())?;
        }
    }
    producer.flush(Duration::from_secs(60)).context("not every message was acknowledged within 60 s")?;
    println!(
        "sent {sent} messages to {} on {} (ingest times {} to {}) in {:.1} s",
        spec.topic,
        a.brokers,
        rfc3339(spec.start),
        rfc3339(end),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// A deterministic number in [0, 1) per message.
fn unit(seed: u64, hour: u32, index: u64) -> f64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(&index.to_le_bytes(), seed ^ (u64::from(hour) << 40));
    (h >> 11) as f64 / (1u64 << 53) as f64
}
