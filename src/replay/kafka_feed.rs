//! The Kafka feed of a scenario: its messages produced to fresh topics on a real broker, the
//! stream runtime (the same loop `adsproc stream` runs) until caught up, its committed output
//! read back. This is the whole stream path — consumer, key groups, checkpoints, transactions.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::scenario::{Produced, Scenario};
use crate::connector::checkpoint_store::ObjectCheckpoints;
use crate::connector::kafka::broker::{job_topics, KafkaBroker, StreamTopics, LOCAL};
use crate::connector::kafka::topic_dump::read_to_end;
use crate::connector::kafka::txn_output::transaction_timeout;
use crate::connector::kafka::{admin, KafkaSettings};
use crate::connector::store::{open, tokio_runtime};
use crate::contract::format::Format;
use crate::contract::time::DAY_MS;
use crate::core::job::{Job, OutputRecord};
use crate::runtime::stream::job::{run, StreamOptions};

/// A message that moves the watermark past every result of a scenario, in each format: valid,
/// so that it reaches no dead-letter output, and of ids no scenario uses.
fn tick(format: Format, partition: i32, at: i64) -> String {
    match format {
        Format::AdEvents => format!(
            r#"{{"event_id":"tick-{partition}","event_type":"impression","ad_id":"tick","event_time":{at},"region":"tick","user_id":"tick","store_id":"tick"}}"#
        ),
        Format::Orders => format!(
            r#"{{"order_id":"tick-{partition}","user_id":"tick-orders","store_id":"tick","order_time":{at},"status":"placed","amount_cents":0,"currency":"XXX","region":"tick"}}"#
        ),
        // The union job has no replay scenarios (its inputs are other clusters' outputs); a
        // record without a record_uuid is what it would dead-letter.
        Format::Records => format!(r#"{{"tick":{partition},"at":{at}}}"#),
    }
}

pub(crate) fn run_kafka_feed<J: Job>(s: &Scenario, rules: &J::Rules, brokers: &str) -> anyhow::Result<Produced<J::Record>> {
    let settings = KafkaSettings::new(brokers, &[]);
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let prefix = format!("replay-{}-{nonce}", s.name);
    // Fresh topics named after the job's, so that each run starts empty.
    let mut rules = rules.clone();
    let by_input = s.by_input::<J>(&rules)?;
    for (i, input) in J::inputs(&rules).iter().enumerate() {
        J::set_topic(&mut rules, i, &format!("{prefix}-{}", input.topic));
    }
    for (t, table) in J::outputs(&rules).iter().enumerate() {
        J::set_output(&mut rules, t, &format!("{prefix}-{}", table.name));
    }
    let (inputs, outputs, dlq) = job_topics::<J>(&rules, None)?;

    let producer: ThreadedProducer<DefaultProducerContext> =
        settings.config(&[("enable.idempotence", "true"), ("linger.ms", "0")]).create().context("cannot create a producer")?;
    let last = s.messages.iter().map(|(_, m)| m.timestamp).max().unwrap_or(0);
    for ((topic, format), msgs) in inputs.iter().zip(&by_input) {
        let n = msgs.iter().map(|m| m.partition).max().unwrap_or(0) + 1;
        let partitions = admin::ensure_topic(&settings, topic, n)?;
        for m in msgs {
            producer
                .send(BaseRecord::<(), [u8]>::to(topic).partition(m.partition).timestamp(m.timestamp).payload(&m.payload))
                .map_err(|(e, _)| e)?;
        }
        // One message per partition a day later, so that the watermark passes every result of
        // the scenario (it is outside the compared range).
        let tick_at = last + DAY_MS;
        for p in &partitions {
            producer.send(BaseRecord::<(), str>::to(topic).partition(*p).timestamp(tick_at).payload(&tick(*format, *p, tick_at))).map_err(|(e, _)| e)?;
        }
    }
    producer.flush(Duration::from_secs(30))?;

    let ckpt_dir = tempfile::tempdir()?;
    let rt = tokio_runtime()?;
    let store = ObjectCheckpoints::new(open(ckpt_dir.path().to_str().context("utf-8 path")?, &[], true)?, rt.handle().clone());
    let opts = StreamOptions {
        key_groups: 2,
        checkpoint_interval: Duration::from_millis(200),
        min_checkpoint_pause: Duration::from_millis(100),
        idle_timeout: Duration::from_secs(3600),
        partition_discovery_interval: Some(Duration::from_secs(30)),
        stop_when_caught_up: true,
        max_poll: s.poll_size,
        max_waiting_per_partition: s.poll_size,
        metrics: None,
    };
    let topics = StreamTopics {
        clusters: inputs.iter().map(|_| (LOCAL.to_string(), settings.clone())).collect(),
        inputs,
        outputs: outputs.clone(),
        dlq: dlq.clone(),
        group: format!("{prefix}-group"),
        instance: "0".into(),
        key_groups: opts.key_groups,
        // The rule `adsproc stream` applies, so that the replay runs the job as deployed.
        transaction_timeout: transaction_timeout(opts.checkpoint_interval, &[])?,
    };
    let (mut broker, partitions) = KafkaBroker::connect(&settings, &topics)?;
    let summary = run::<J>(&rules, &partitions, &mut broker, &store, &opts, &AtomicBool::new(false))?;
    drop(broker);

    let mut records = Vec::new();
    for topic in &outputs {
        for (_, _, _, v) in read_to_end(&settings, topic, Duration::from_secs(60))? {
            let r: J::Record = serde_json::from_slice(&v).with_context(|| format!("a record of {topic} that is not the contract's JSON"))?;
            records.push(r);
        }
    }
    // Each record's own table: records read from one topic are of that table.
    debug_assert!(records.iter().all(|r| r.table() < outputs.len()));
    let mut dead = Vec::new();
    for (_, topic) in &dlq {
        for (_, _, _, v) in read_to_end(&settings, topic, Duration::from_secs(60))? {
            dead.push(serde_json::from_slice(&v).context("a dead letter that is not JSON")?);
        }
    }
    // Dead letters name the topic they rejected a message of: the scenario's, not the fresh one.
    for d in &mut dead {
        let d: &mut crate::contract::outputs::DeadLetter = d;
        if let Some(original) = d.topic.strip_prefix(&format!("{prefix}-")) {
            d.topic = original.into();
        }
    }
    Ok(Produced::new(records, dead, &summary.audit))
}
