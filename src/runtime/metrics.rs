//! What a long-running command tells the person running it, as Prometheus metrics (served by
//! `connector::metrics_http` with `--metrics-addr`), and its liveness and readiness.
//!
//! One set of metric families serves `stream`, `archive` and `load`; each fills the ones that
//! apply to it. The runtime and connectors record; nothing here does I/O.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub struct Metrics {
    registry: Registry,
    /// Messages read from the input topics.
    pub messages_read: Counter,
    /// Records written, by job (the stream jobs) or table (the load).
    pub records_written: Family<Labels, Counter>,
    /// Dead letters written, by reason code.
    pub dead_letters: Family<Labels, Counter>,
    /// The job's audit, bucket by bucket (counted, duplicates, dropped late, ...): the figures
    /// of its checkpointed state.
    pub audit: Family<Labels, Gauge>,
    /// Messages behind the end of each input partition.
    pub consumer_lag: Family<Labels, Gauge>,
    /// Wall clock minus the ingest watermark, in seconds.
    pub watermark_delay_seconds: Gauge<f64, AtomicU64>,
    pub checkpoint_duration_seconds: Histogram,
    /// Bytes of the last checkpoint's snapshots, all key groups.
    pub checkpoint_bytes: Gauge,
    /// Seconds since the last checkpoint (or commit) completed.
    pub checkpoint_age_seconds: Gauge<f64, AtomicU64>,
    /// Transactions (Kafka, or the database's for the load), by outcome: committed, aborted.
    pub transactions: Family<Labels, Counter>,
    /// Entries of the job's keyed state, by kind (dedupe entries, open windows, join state).
    pub state_entries: Family<Labels, Gauge>,
    pub owned_key_groups: Gauge,
    last_checkpoint_ms: AtomicI64,
    heartbeat_ms: AtomicI64,
    lag_sampled_ms: AtomicI64,
    ready: AtomicBool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

impl Metrics {
    /// `command`: the adsproc command (a `command` label on every series).
    pub fn new(command: &str) -> Self {
        let registry = Registry::with_prefix_and_labels("adsproc", [(std::borrow::Cow::Borrowed("command"), std::borrow::Cow::Owned(command.to_string()))].into_iter());
        let mut m = Metrics {
            messages_read: Counter::default(),
            records_written: Family::default(),
            dead_letters: Family::default(),
            audit: Family::default(),
            consumer_lag: Family::default(),
            watermark_delay_seconds: Gauge::default(),
            checkpoint_duration_seconds: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            checkpoint_bytes: Gauge::default(),
            checkpoint_age_seconds: Gauge::default(),
            transactions: Family::default(),
            state_entries: Family::default(),
            owned_key_groups: Gauge::default(),
            last_checkpoint_ms: AtomicI64::new(now_ms()),
            heartbeat_ms: AtomicI64::new(now_ms()),
            lag_sampled_ms: AtomicI64::new(0),
            ready: AtomicBool::new(false),
            registry,
        };
        m.registry.register("messages_read", "Messages read from the input topics", m.messages_read.clone());
        m.registry.register("records_written", "Records written, by job or table", m.records_written.clone());
        m.registry.register("dead_letters", "Dead letters written, by reason code", m.dead_letters.clone());
        m.registry.register("audit", "The job's audit of its owned key groups, by bucket (every message read lands in one)", m.audit.clone());
        m.registry.register("consumer_lag_messages", "Messages behind the end of each input partition", m.consumer_lag.clone());
        m.registry.register("watermark_delay_seconds", "Wall clock minus the ingest watermark", m.watermark_delay_seconds.clone());
        m.registry.register("checkpoint_duration_seconds", "Time to snapshot, write and commit a checkpoint", m.checkpoint_duration_seconds.clone());
        m.registry.register("checkpoint_bytes", "Bytes of the last checkpoint's snapshots", m.checkpoint_bytes.clone());
        m.registry.register("checkpoint_age_seconds", "Seconds since the last checkpoint or commit completed", m.checkpoint_age_seconds.clone());
        m.registry.register("transactions", "Transactions by outcome", m.transactions.clone());
        m.registry.register("state_entries", "Entries of the job's keyed state, by kind", m.state_entries.clone());
        m.registry.register("owned_key_groups", "Key groups this process owns", m.owned_key_groups.clone());
        m
    }

    /// The process is making progress: called from its main loop.
    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Ready to do its work (the stream job: owns its key groups, restored; the load: the
    /// table is checked).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Alive: its main loop went round within `within_ms`.
    pub fn alive(&self, within_ms: i64) -> bool {
        now_ms() - self.heartbeat_ms.load(Ordering::Relaxed) <= within_ms
    }

    /// A checkpoint (the load: a batch's commit; the archiver: a flush) completed in `took`,
    /// its snapshots `bytes` long where it has any.
    pub fn checkpointed(&self, took: std::time::Duration, bytes: Option<u64>) {
        self.checkpoint_duration_seconds.observe(took.as_secs_f64());
        if let Some(bytes) = bytes {
            self.checkpoint_bytes.set(bytes as i64);
        }
        self.last_checkpoint_ms.store(now_ms(), Ordering::Relaxed);
        self.beat();
    }

    /// The ingest watermark is at `w` (epoch ms): how far behind the clock.
    pub fn watermark(&self, w: i64) {
        self.watermark_delay_seconds.set((now_ms() - w) as f64 / 1000.0);
    }

    pub fn transaction(&self, outcome: &str, n: u64) {
        self.transactions.get_or_create(&labels(&[("outcome", outcome)])).inc_by(n);
    }

    pub fn written(&self, output: &str, n: u64) {
        self.records_written.get_or_create(&labels(&[("to", output)])).inc_by(n);
    }

    pub fn dead_lettered(&self, reason: &str, n: u64) {
        self.dead_letters.get_or_create(&labels(&[("reason", reason)])).inc_by(n);
    }

    /// Takes the consumer lag from `lags` (topic, partition, messages), at most once a second:
    /// the loops that call it go round far more often.
    pub fn sample_lag(&self, lags: impl FnOnce() -> Vec<(String, i32, i64)>) {
        let now = now_ms();
        if now - self.lag_sampled_ms.load(Ordering::Relaxed) < 1000 {
            return;
        }
        self.lag_sampled_ms.store(now, Ordering::Relaxed);
        for (topic, partition, lag) in lags() {
            self.lag(&topic, partition, lag);
        }
    }

    pub fn lag(&self, topic: &str, partition: i32, messages: i64) {
        self.consumer_lag.get_or_create(&labels(&[("topic", topic), ("partition", &partition.to_string())])).set(messages);
    }

    pub fn state(&self, kind: &str, entries: u64) {
        self.state_entries.get_or_create(&labels(&[("kind", kind)])).set(entries as i64);
    }

    /// The job's audit (any serializable audit): each numeric leaf becomes a bucket, nested
    /// maps (dead letters by reason) joined with `.`.
    pub fn set_audit(&self, audit: &impl serde::Serialize) {
        fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, i64)>) {
            match v {
                serde_json::Value::Number(n) => out.push((prefix.to_string(), n.as_i64().unwrap_or_default())),
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        walk(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
                    }
                }
                _ => {}
            }
        }
        let mut buckets = Vec::new();
        walk("", &serde_json::to_value(audit).unwrap_or_default(), &mut buckets);
        for (bucket, n) in buckets {
            self.audit.get_or_create(&labels(&[("bucket", &bucket)])).set(n);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        // The age is the scrape's: how long ago, as of now.
        let age = (now_ms() - self.last_checkpoint_ms.load(Ordering::Relaxed)) as f64 / 1000.0;
        self.checkpoint_age_seconds.set(age.max(0.0));
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_holds_every_family_with_its_labels() {
        let m = Metrics::new("stream");
        m.messages_read.inc_by(5);
        m.written("ad-metrics", 3);
        m.dead_lettered("late", 2);
        m.lag("ad-events", 1, 42);
        m.transaction("committed", 1);
        m.set_audit(&serde_json::json!({"read": 5, "counted": 3, "dead_lettered": {"late": 2}}));
        m.checkpointed(std::time::Duration::from_millis(20), Some(1234));
        let text = m.encode();
        for line in [
            "adsproc_messages_read_total{command=\"stream\"} 5",
            "adsproc_records_written_total{command=\"stream\",to=\"ad-metrics\"} 3",
            "adsproc_dead_letters_total{command=\"stream\",reason=\"late\"} 2",
            "adsproc_consumer_lag_messages{command=\"stream\",topic=\"ad-events\",partition=\"1\"} 42",
            "adsproc_audit{command=\"stream\",bucket=\"dead_lettered.late\"} 2",
            "adsproc_checkpoint_bytes{command=\"stream\"} 1234",
            "adsproc_transactions_total{command=\"stream\",outcome=\"committed\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(m.alive(1000) && !m.ready());
    }
}
