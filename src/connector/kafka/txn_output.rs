//! The two-phase-commit sink: a transactional producer whose transaction also commits the
//! key groups' checkpoint numbers (as the group's offsets on the key-group topic).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaSettings;

const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an output transaction may stay open before the broker aborts it
/// (`transaction.timeout.ms`): at least twice the checkpoint interval, since a transaction
/// stays open for about one interval plus the checkpoint that commits it, and not below
/// librdkafka's default of a minute. A timeout shorter than the interval would have the broker
/// abort every transaction before its commit: each commit would fail and the job would restart
/// from the same checkpoint, forever, without an output. So a `-X transaction.timeout.ms`
/// below twice the interval is an error. (Brokers refuse timeouts above their
/// `transaction.max.timeout.ms`, 15 minutes by default: intervals over 7.5 minutes need it
/// raised.)
pub fn transaction_timeout(checkpoint_interval: Duration, overrides: &[(String, String)]) -> anyhow::Result<Duration> {
    let least = checkpoint_interval * 2;
    let Some((_, v)) = overrides.iter().rev().find(|(k, _)| k == "transaction.timeout.ms") else {
        return Ok(least.max(Duration::from_secs(60)));
    };
    let ms: u64 = v.parse().with_context(|| format!("-X transaction.timeout.ms={v} is not a number of milliseconds"))?;
    let set = Duration::from_millis(ms);
    anyhow::ensure!(
        set >= least,
        "-X transaction.timeout.ms={v} is less than twice --checkpoint-interval ({}): a transaction stays open for about an \
         interval plus the checkpoint that commits it, and the broker aborts one open longer than the timeout, failing its \
         commit. Raise it to at least {} or shorten the interval",
        humantime::format_duration(checkpoint_interval),
        least.as_millis()
    );
    Ok(set)
}

/// A producer without a polling thread of its own: the job loop serves it (every send polls
/// without waiting, and committing flushes), which matters with one producer per key group on
/// two cores.
pub struct TxnOutput {
    producer: BaseProducer<DefaultProducerContext>,
    open: bool,
    unpolled: u32,
}

impl TxnOutput {
    /// Creates the producer and fences any earlier one with the same transactional id,
    /// aborting its open transaction.
    pub fn new(settings: &KafkaSettings, transactional_id: &str, transaction_timeout: Duration) -> anyhow::Result<Self> {
        let timeout_ms = transaction_timeout.as_millis().to_string();
        let producer: BaseProducer<DefaultProducerContext> = settings
            .config(&[
                ("transactional.id", transactional_id),
                ("client.id", transactional_id),
                ("enable.idempotence", "true"),
                // Records are readable only once their transaction commits, and committing
                // sends what lingers at once (`deliver_all`), so lingering costs no latency;
                // larger batches cost the producers' threads and the broker less per record.
                // 100 ms instead of 5, 9 alternating pairs on the 1M bench: sustained median
                // 358k -> 378k messages/s (faster in 8), job CPU ~3.8 -> ~3.55 s. 1 s instead
                // of 100 ms: Nisshi's CPU per produce request does not shrink with the request
                // (it copies its storage's version map), and a stream job of eight key groups
                // sent 56 small ones a second; the 1M attribution bench, 4 alternating pairs:
                // broker CPU 0.31-0.34 -> 0.26-0.32 s. A full batch still goes at once.
                ("linger.ms", "1000"),
                ("batch.num.messages", "10000"),
                ("queue.buffering.max.messages", "1000000"),
                // See `transaction_timeout`.
                ("transaction.timeout.ms", &timeout_ms),
                // Output records are JSON with repeated field names and ids; LZ4 costs the
                // job little and the broker less work per record (measured on Nisshi, 1M input
                // messages: broker CPU 1.22 s → 1.06 s on average over 8 runs each).
                // Overridable with `-X compression.type=…`.
                ("compression.type", "lz4"),
                // Nothing reads a successful delivery's report (a failed one still makes the
                // commit fail, as the transaction turns abortable): without them librdkafka
                // queues and this thread serves no event per record. 8 alternating pairs on
                // the 1M bench: sustained median 360k → 369k messages/s (faster in 6), job
                // CPU 3.78 → 3.61 s. `deliver_all` waits on the in-flight count, which
                // acknowledgements alone bring to zero.
                ("delivery.report.only.error", "true"),
            ])
            .create()
            .context("cannot create the transactional producer")?;
        producer
            .init_transactions(TXN_TIMEOUT)
            .with_context(|| format!("cannot initialise transactions for {transactional_id:?}"))?;
        Ok(Self { producer, open: false, unpolled: 0 })
    }

    pub fn begin(&mut self) -> anyhow::Result<()> {
        if !self.open {
            self.producer.begin_transaction().context("cannot begin a transaction")?;
            self.open = true;
        }
        Ok(())
    }

    /// Sends one record in the open transaction, waiting while the local queue is full.
    pub fn send(&mut self, topic: &str, partition: i32, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let mut record = BaseRecord::to(topic).partition(partition).key(key).payload(value);
        self.unpolled += 1;
        if self.unpolled >= 1024 {
            self.producer.poll(Duration::ZERO);
            self.unpolled = 0;
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e).with_context(|| format!("cannot produce to {topic:?}")),
            }
        }
    }

    /// Commits the open transaction together with the offsets `seqs` (key group → checkpoint
    /// number) on the key-group topic.
    pub fn commit(&mut self, group_topic: &str, seqs: &BTreeMap<u32, u64>, cgm: &ConsumerGroupMetadata) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (g, seq) in seqs {
            tpl.add_partition_offset(group_topic, *g as i32, Offset::Offset(*seq as i64))?;
        }
        self.deliver_all()?;
        if tpl.count() > 0 {
            self.producer.send_offsets_to_transaction(&tpl, cgm, TXN_TIMEOUT).context("cannot add the checkpoint offsets to the transaction")?;
        }
        self.producer.commit_transaction(TXN_TIMEOUT).context("cannot commit the transaction")?;
        self.open = false;
        Ok(())
    }

    /// Commits the open transaction's records, with no consumer offsets (a backfill's output).
    pub fn commit_records(&mut self) -> anyhow::Result<()> {
        if self.open {
            self.deliver_all()?;
            self.producer.commit_transaction(TXN_TIMEOUT).context("cannot commit the transaction")?;
            self.open = false;
        }
        Ok(())
    }

    /// Sends what is lingering and waits until every record sent is delivered, serving the
    /// delivery reports. Not `Producer::flush`: rust-rdkafka's `BaseProducer::poll(t)` always
    /// waits out all of `t`, so its flush (which polls 100 ms at a time) cost a tenth of a
    /// second per commit.
    fn deliver_all(&mut self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + TXN_TIMEOUT;
        while self.producer.in_flight_count() > 0 {
            if std::time::Instant::now() >= deadline {
                anyhow::bail!("{} records still undelivered after {TXN_TIMEOUT:?}", self.producer.in_flight_count());
            }
            // librdkafka's flush, unlike a poll, has the producer's threads send what is
            // lingering at once. With the event API it serves nothing itself, so a failed
            // delivery's report is served by the poll after each slice.
            // SAFETY: a live producer handle; rd_kafka_flush takes no ownership.
            unsafe { rdkafka::bindings::rd_kafka_flush(self.producer.client().native_ptr(), 10) };
            self.producer.poll(Duration::ZERO);
        }
        self.unpolled = 0;
        Ok(())
    }

    pub fn abort(&mut self) -> anyhow::Result<()> {
        if self.open {
            // abort_transaction waits for the delivery reports of what is still in flight, and
            // nothing else serves this producer's event queue: serve it here first (seen on a
            // rebalance: "messages remaining: the event queue must be polled"). A flush that
            // times out is not fatal: the abort then reports what is left.
            if let Err(e) = self.deliver_all() {
                tracing::warn!("flushing before an abort: {e}");
            }
            self.producer.abort_transaction(TXN_TIMEOUT).context("cannot abort the transaction")?;
            self.open = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(v: &str) -> Vec<(String, String)> {
        vec![("transaction.timeout.ms".to_string(), v.to_string())]
    }

    #[test]
    fn the_transaction_timeout_outlasts_two_checkpoint_intervals() {
        let s = Duration::from_secs;
        assert_eq!(transaction_timeout(s(10), &[]).unwrap(), s(60));
        // The seed system's two-minute interval: a minute would abort every transaction.
        assert_eq!(transaction_timeout(s(120), &[]).unwrap(), s(240));
        assert_eq!(transaction_timeout(s(10), &x("20000")).unwrap(), s(20));
        let short = transaction_timeout(s(120), &x("60000")).unwrap_err().to_string();
        assert!(short.contains("-X transaction.timeout.ms=60000 is less than twice --checkpoint-interval (2m)"), "{short}");
        assert!(short.contains("at least 240000"), "{short}");
        assert!(transaction_timeout(s(10), &x("1m")).unwrap_err().to_string().contains("not a number of milliseconds"));
    }
}
