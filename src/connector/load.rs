//! `adsproc load`: an output topic into its serving table (PostgreSQL), upserting every record
//! on `record_uuid`, exactly once. The Kafka consumer reads read_committed from the positions
//! the database holds; each batch's rows, dead letters and next positions are one database
//! transaction ([`Upserter::apply`]), so the table is always the last value per `record_uuid`
//! of the topic up to the stored positions.
//!
//! Nisshi hands the records of aborted transactions to read_committed consumers too. A load is
//! an upsert in offset order, and every job writes a `record_uuid` to one partition, where the
//! value its committed transaction re-emits follows any leaked one: the last value is right,
//! and a leaked one is in the table at most until the next batch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::kafka::reader::QuietEof;
use super::kafka::{admin, KafkaSettings};
use super::postgres::{connect, describe_database, rows};
use super::postgres::table::{self, Prepared, TableName};
use super::postgres::upsert::{Batch, Rejected, Upserter};
use crate::contract::table::TableKind;

pub struct LoadSettings {
    pub kafka: KafkaSettings,
    pub topic: String,
    pub kind: TableKind,
    pub table: TableName,
    /// A libpq-style URL or key=value string.
    pub database: String,
    /// Records per transaction, at most.
    pub batch_rows: usize,
    /// How long a batch waits to fill before it is written anyway.
    pub linger: Duration,
    pub stop_when_caught_up: bool,
    /// Set by SIGINT/SIGTERM: the batch in hand is committed, then the load stops.
    pub shutdown: Arc<AtomicBool>,
    /// Where to record what the load does (`--metrics-addr`).
    pub metrics: Option<Arc<crate::runtime::metrics::Metrics>>,
}

/// What a load did.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub records: u64,
    /// Rows inserted or changed (a record whose value the table held already changes nothing).
    pub written: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub transactions: u64,
    pub seconds: f64,
    pub created: bool,
}

impl LoadReport {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.seconds.max(1e-9)
    }
}

pub fn run(s: &LoadSettings) -> anyhow::Result<LoadReport> {
    let started = Instant::now();
    let mut client = connect(&s.database, "adsproc load")?;
    let created = table::prepare(&mut client, &s.table, s.kind)? == Prepared::Created;
    if created {
        tracing::info!("created table {} and its dead-letter table {}", s.table, s.table.dead_letters());
    }
    let mut upserter = Upserter::new(client, s.table.clone(), s.kind, &s.topic)?;
    let stored = upserter.stored_offsets()?;
    let Some(parts) = wait_for_topic(s)? else { return Ok(LoadReport { created, ..LoadReport::default() }) };
    let consumer: BaseConsumer<QuietEof> = s
        .kafka
        .config(&[
            ("group.id", &format!("adsproc-load-{}", s.table.key())),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
            ("isolation.level", "read_committed"),
            ("auto.offset.reset", "earliest"),
            // As the stream job's reader (connector::kafka::reader): librdkafka's default waits a
            // second before fetching a partition whose local queue was full, and the load idled
            // most of it (1M records: 7.0 s → 4.5 s).
            ("fetch.queue.backoff.ms", "10"),
            ("fetch.wait.max.ms", "100"),
        ])
        .create_with_context(QuietEof)
        .context("cannot create a Kafka consumer")?;
    // The topic's leaders in the client's cache before the assign: without them librdkafka
    // starts each partition's offset query only after a 500 ms retry.
    consumer.fetch_metadata(Some(&s.topic), Duration::from_secs(10)).with_context(|| format!("cannot read the metadata of {:?}", s.topic))?;
    let mut known: BTreeSet<i32> = BTreeSet::new();
    assign(&consumer, s, &parts, &stored, &mut known)?;
    tracing::info!(
        "loading {} ({} partitions) into {} on {}, from {}",
        s.topic,
        parts.len(),
        s.table,
        describe_database(&s.database),
        if stored.is_empty() { "the beginning".to_string() } else { format!("the stored offsets {stored:?}") }
    );

    // The database writes one batch while the next is consumed and parsed: the server's
    // COPY and merge are most of a batch's time, and the two overlap.
    let (to_writer, batches) = std::sync::mpsc::sync_channel::<Batch>(1);
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    if let Some(m) = &s.metrics {
        m.set_ready(true);
    }
    let writer = {
        let written = written.clone();
        let metrics = s.metrics.clone();
        let table = s.table.key();
        let target = format!("{} on {}", s.table, describe_database(&s.database));
        std::thread::Builder::new().name("load-writer".into()).spawn(move || -> anyhow::Result<()> {
            for batch in batches {
                let t = Instant::now();
                let applied = upserter.apply(batch).with_context(|| format!("cannot write a batch to {target}"))?;
                written.fetch_add(applied.written, Ordering::Relaxed);
                if let Some(m) = &metrics {
                    m.written(&table, applied.written);
                    m.transaction("committed", 1);
                    m.checkpointed(t.elapsed(), None);
                }
            }
            Ok(())
        })?
    };
    let mut report = LoadReport { created, ..LoadReport::default() };
    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    let mut last_log = Instant::now();
    let mut last_discovery = Instant::now();
    loop {
        let stopping = s.shutdown.load(Ordering::Relaxed);
        let (batch, records) = if stopping { (Batch::default(), 0) } else { fill(&consumer, s, &known, &mut at_end) };
        if let Some(m) = &s.metrics {
            m.beat();
            m.messages_read.inc_by(records);
            for d in &batch.rejected {
                m.dead_lettered(d.reason.split(':').next().unwrap_or(""), 1);
            }
            m.sample_lag(|| super::kafka::consumer_lag(&consumer));
        }
        if !batch.next_offsets.is_empty() {
            report.records += records;
            report.rejected += batch.rejected.len() as u64;
            for d in &batch.rejected {
                *report.rejected_by_reason.entry(d.reason.split(':').next().unwrap_or("").to_string()).or_default() += 1;
            }
            report.transactions += 1;
            if to_writer.send(batch).is_err() {
                break; // the writer failed: its error is reported below
            }
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            report.seconds = started.elapsed().as_secs_f64();
            tracing::info!(
                "{} records loaded ({:.0}/s), {} rows written, {} rejected",
                report.records,
                report.rate(),
                written.load(Ordering::Relaxed),
                report.rejected
            );
        }
        if stopping {
            break;
        }
        let caught_up = at_end.len() == known.len();
        if caught_up && (s.stop_when_caught_up || last_discovery.elapsed() >= Duration::from_secs(30)) {
            last_discovery = Instant::now();
            // Partitions added to the topic: loaded from their beginning (Kafka never removes any).
            if let Some(now) = admin::partitions(&s.kafka, &s.topic)? {
                let new: Vec<i32> = now.iter().copied().filter(|p| !known.contains(p)).collect();
                if !new.is_empty() {
                    tracing::info!("topic {} has new partitions {new:?}: loading them from their beginning", s.topic);
                    assign(&consumer, s, &new, &stored, &mut known)?;
                    continue;
                }
            }
            if s.stop_when_caught_up {
                break;
            }
        }
    }
    drop(to_writer);
    writer.join().map_err(|_| anyhow::anyhow!("the database writer panicked"))??;
    if s.shutdown.load(Ordering::Relaxed) {
        tracing::info!("stopped: every record consumed is committed");
    }
    report.written = written.load(Ordering::Relaxed);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The topic's partitions, waiting for it to be created (a load may start before the job that
/// writes its topic). None: stopped while waiting.
fn wait_for_topic(s: &LoadSettings) -> anyhow::Result<Option<Vec<i32>>> {
    let mut said = false;
    loop {
        if let Some(p) = admin::partitions(&s.kafka, &s.topic)? {
            return Ok(Some(p));
        }
        if s.stop_when_caught_up {
            anyhow::bail!("topic {:?} does not exist on {}", s.topic, s.kafka.brokers);
        }
        if !said {
            tracing::info!("waiting for topic {} to be created on {}", s.topic, s.kafka.brokers);
            said = true;
        }
        if s.shutdown.load(Ordering::Relaxed) {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Starts reading `parts` at their stored offsets (else from their beginning), and says so when
/// retention deleted records that were never loaded.
fn assign(consumer: &BaseConsumer<QuietEof>, s: &LoadSettings, parts: &[i32], stored: &BTreeMap<i32, i64>, known: &mut BTreeSet<i32>) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for &p in parts {
        let at = stored.get(&p).copied();
        if let Ok((low, _)) = consumer.fetch_watermarks(&s.topic, p, Duration::from_secs(10)) {
            if low > at.unwrap_or(0) {
                tracing::warn!(
                    "{} partition {p}: offsets {}..{low} were deleted by retention before they were loaded",
                    s.topic,
                    at.unwrap_or(0)
                );
            }
        }
        tpl.add_partition_offset(&s.topic, p, at.map_or(Offset::Beginning, Offset::Offset))?;
        known.insert(p);
    }
    consumer.incremental_assign(&tpl).context("cannot assign the topic's partitions")?;
    Ok(())
}

/// One batch: up to `batch_rows` records or `linger`, or until every partition is read to its
/// end. Within it, the last record per `record_uuid` (offset order) stands for the others.
fn fill(consumer: &BaseConsumer<QuietEof>, s: &LoadSettings, known: &BTreeSet<i32>, at_end: &mut BTreeSet<i32>) -> (Batch, u64) {
    let mut batch = Batch::default();
    let mut index: HashMap<uuid::Uuid, usize> = HashMap::new();
    let mut records = 0u64;
    let deadline = Instant::now() + s.linger;
    while (records as usize) < s.batch_rows && !s.shutdown.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline || (at_end.len() == known.len() && records > 0) {
            break;
        }
        match consumer.poll(deadline - now) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                records += 1;
                batch.next_offsets.insert(m.partition(), m.offset() + 1);
                match rows::parse(s.kind, m.payload()) {
                    Ok(row) => match index.get(&row.record_uuid()) {
                        Some(&i) => batch.rows[i] = row,
                        None => {
                            index.insert(row.record_uuid(), batch.rows.len());
                            batch.rows.push(row);
                        }
                    },
                    Err(reason) => batch.rejected.push(Rejected { partition: m.partition(), offset: m.offset(), reason, payload: m.payload().map(<[u8]>::to_vec) }),
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
                if at_end.len() == known.len() {
                    break;
                }
            }
            Some(Err(e)) => tracing::warn!("reading {}: {e}", s.topic),
            None => {}
        }
    }
    (batch, records)
}
