//! [`Broker`] over Kafka: the key-group membership, the source reader and one transactional
//! output per owned key group, with the contract's JSON records keyed by `record_uuid`.
//!
//! Key group `g` writes to partition `g mod n` of each output topic (a record_uuid belongs to
//! one key (an ad, an order's eater and store), hence to one key group, hence always to the
//! same partition, which is what a compacted topic or an upsert store needs). With at least as
//! many partitions as key groups, no two producers ever write the same partition.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::membership::Membership;
use super::regions::ClusterReaders;
use super::txn_output::TxnOutput;
use super::{admin, KafkaSettings};
use crate::contract::format::Format;
use crate::contract::outputs::DeadLetter;
use crate::core::job::{Job, OutputRecord};
use crate::runtime::stream::driver::{GroupRecords, Source};
use crate::runtime::stream::job::Broker;
use anyhow::Context;
use arrow::array::RecordBatch;

/// The region name of the job's own cluster (`--brokers`) among its inputs' clusters.
pub const LOCAL: &str = "local";

/// A topic written to, with its partition count.
type OutTopic = (String, i32);

pub struct KafkaBroker {
    pub settings: KafkaSettings,
    /// Prefix of the transactional ids: `<prefix>-kg-<g>`.
    pub transactional_prefix: String,
    pub transaction_timeout: Duration,
    pub membership: Membership,
    pub reader: ClusterReaders,
    pub outputs: BTreeMap<u32, TxnOutput>,
    /// The output tables' topics, by table index.
    pub output_topics: Vec<OutTopic>,
    /// The dead-letter topic of each dead-lettered input, by the input's topic name.
    pub dlq_topics: BTreeMap<String, OutTopic>,
    /// Where each checkpoint's transaction writes its marker (see `KafkaBroker`'s `prepare_commits`).
    pub checkpoint_topic: OutTopic,
    /// The record being sent, encoded (reused).
    value: Vec<u8>,
}

/// Names and sizes of what a stream job uses on the broker.
#[derive(Debug, Clone)]
pub struct StreamTopics {
    /// The input topics and their formats, by input index.
    pub inputs: Vec<(String, Format)>,
    /// The cluster of each input, by input index: its region ("local" for the job's own
    /// cluster) and client settings.
    pub clusters: Vec<(String, KafkaSettings)>,
    /// The output tables' topics, by table index.
    pub outputs: Vec<String>,
    /// Per input topic that the job dead-letters: (input topic, dead-letter topic).
    pub dlq: Vec<(String, String)>,
    /// Consumer group; also names the key-group topic and prefixes transactional ids.
    pub group: String,
    pub instance: String,
    pub key_groups: u32,
    /// How long an output transaction may stay open (see [`super::txn_output::transaction_timeout`]).
    pub transaction_timeout: Duration,
}

/// A job's topics on the broker: its inputs (name, format), its output tables' topics, and per
/// dead-lettered input its dead-letter topic (`<topic>-dlq`, or `dlq_override` for a job that
/// dead-letters one input).
pub fn job_topics<J: Job>(rules: &J::Rules, dlq_override: Option<&str>) -> anyhow::Result<JobTopics> {
    let inputs = J::inputs(rules);
    let dead_lettered: Vec<&str> = inputs.iter().filter(|i| i.dead_letters).map(|i| i.topic.as_str()).collect();
    let dlq: Vec<(String, String)> = match dlq_override {
        Some(d) => {
            anyhow::ensure!(
                dead_lettered.len() == 1,
                "--dlq-topic names the dead-letter topic of a job that dead-letters one input; the {} job dead-letters {}",
                J::NAME,
                dead_lettered.len()
            );
            vec![(dead_lettered[0].to_string(), d.to_string())]
        }
        None => dead_lettered.iter().map(|t| (t.to_string(), format!("{t}-dlq"))).collect(),
    };
    let outputs = J::outputs(rules).into_iter().map(|o| o.name).collect();
    Ok((inputs.into_iter().map(|i| (i.topic, i.format)).collect(), outputs, dlq))
}

/// Inputs (topic, format), output topics, and (input topic, dead-letter topic) pairs.
pub type JobTopics = (Vec<(String, Format)>, Vec<String>, Vec<(String, String)>);

impl StreamTopics {
    pub fn key_group_topic(&self) -> String {
        format!("{}.key-groups", self.group)
    }

    /// One marker record per checkpoint and key group: see `KafkaBroker`'s `prepare_commits`.
    pub fn checkpoint_topic(&self) -> String {
        format!("{}.checkpoints", self.group)
    }
}

/// How long a start-up waits for another region's cluster to answer before it goes on without
/// it (and finds its topics later, by partition discovery).
const REMOTE_TIMEOUT: Duration = Duration::from_secs(3);

impl KafkaBroker {
    /// Checks the input topics, creates the output and key-group topics if missing (one output
    /// partition per key group), and joins the group. Returns the broker and the inputs'
    /// partitions.
    pub fn connect(settings: &KafkaSettings, t: &StreamTopics) -> anyhow::Result<(Self, Vec<Source>)> {
        let mut partitions = Vec::new();
        for (input, (topic, _)) in t.inputs.iter().enumerate() {
            let (region, on) = &t.clusters[input];
            // Another region gets a few seconds: the others wait for its answer at start.
            let found = match if region == LOCAL { admin::partitions(on, topic) } else { admin::partitions_within(on, topic, REMOTE_TIMEOUT) } {
                // Another region that does not answer must not keep the others from flowing:
                // its partitions are found by partition discovery once it does.
                Err(e) if region != LOCAL => {
                    tracing::warn!("region {region} does not answer ({e:#}): its {topic:?} is read once it does");
                    Ok(Some(Vec::new()))
                }
                other => other,
            };
            let ps = match found.with_context(|| format!("region {region}"))? {
                Some(ps) => ps,
                // Another region's output that does not exist yet (that region does not run the
                // job, or not yet): read once partition discovery finds it.
                None if region != LOCAL => {
                    tracing::warn!("region {region} has no topic {topic:?} yet: it is read from its beginning once it exists");
                    Vec::new()
                }
                None => anyhow::bail!("input topic {topic:?} does not exist on {}", on.brokers),
            };
            partitions.extend(ps.into_iter().map(|p| Source::new(input, p)));
        }
        let kg_topic = t.key_group_topic();
        let kg = admin::ensure_topic(settings, &kg_topic, t.key_groups as i32)?;
        anyhow::ensure!(
            kg.len() as u32 == t.key_groups,
            "topic {kg_topic:?} has {} partitions but there are {} key groups: key groups are fixed once checkpoints exist",
            kg.len(),
            t.key_groups
        );
        let out = |topic: &str| -> anyhow::Result<(String, i32)> {
            let n = admin::ensure_topic(settings, topic, t.key_groups as i32)?.len() as i32;
            if (n as u32) < t.key_groups {
                tracing::warn!("{topic:?} has {n} partitions for {} key groups: processes will share output partitions", t.key_groups);
            }
            Ok((topic.to_string(), n))
        };
        let output_topics = t.outputs.iter().map(|o| out(o)).collect::<anyhow::Result<Vec<_>>>()?;
        let dlq_topics = t.dlq.iter().map(|(input, dlq)| Ok((input.clone(), out(dlq)?))).collect::<anyhow::Result<_>>()?;
        let checkpoint_topic = out(&t.checkpoint_topic())?;
        let client_id = format!("{}-{}", t.group, t.instance);
        let broker = KafkaBroker {
            settings: settings.clone(),
            transactional_prefix: t.group.clone(),
            transaction_timeout: t.transaction_timeout,
            reader: ClusterReaders::new(
                &t.inputs.iter().zip(&t.clusters).map(|((topic, f), (region, on))| (topic.clone(), *f, region.clone(), on.clone())).collect::<Vec<_>>(),
                &partitions,
                &client_id,
            )?,
            membership: Membership::join(settings, &t.group, &kg_topic, &client_id)?,
            outputs: BTreeMap::new(),
            output_topics,
            dlq_topics,
            checkpoint_topic,
            value: Vec::new(),
        };
        Ok((broker, partitions))
    }

    fn output(&mut self, g: u32) -> anyhow::Result<&mut TxnOutput> {
        output_of(&mut self.outputs, g)
    }

    fn sender(&mut self) -> Sender<'_> {
        Sender { outputs: &mut self.outputs, output_topics: &self.output_topics, dlq_topics: &self.dlq_topics, value: &mut self.value }
    }
}

/// The output half of the broker, borrowed apart from the reader.
struct Sender<'a> {
    outputs: &'a mut BTreeMap<u32, TxnOutput>,
    output_topics: &'a [OutTopic],
    dlq_topics: &'a BTreeMap<String, OutTopic>,
    value: &'a mut Vec<u8>,
}

impl Sender<'_> {
    fn record<R: OutputRecord>(&mut self, g: u32, r: &R) -> anyhow::Result<()> {
        self.value.clear();
        r.write_json(self.value);
        send_encoded(self.outputs, self.value, &self.output_topics[r.table()], g, &r.record_uuid())
    }

    fn dead_letter(&mut self, g: u32, d: &DeadLetter) -> anyhow::Result<()> {
        let topic = self.dlq_topics.get(&*d.topic).with_context(|| format!("a dead letter of {:?}, which has no dead-letter topic", d.topic))?;
        send_json(self.outputs, self.value, topic, g, &d.record_uuid, d)
    }

    fn all<R: OutputRecord>(&mut self, records: &[GroupRecords<R>]) -> anyhow::Result<()> {
        for (g, out, dead) in records {
            for r in out {
                self.record(*g, r)?;
            }
            for d in dead {
                self.dead_letter(*g, d)?;
            }
        }
        Ok(())
    }
}

fn output_of(outputs: &mut BTreeMap<u32, TxnOutput>, g: u32) -> anyhow::Result<&mut TxnOutput> {
    outputs.get_mut(&g).with_context(|| format!("key group {g} is not owned here"))
}

/// Sends one contract record of key group `g` to its partition of `topic`, keyed by its
/// `record_uuid`: encoded into the reused `value` buffer, the key on the stack (the producer
/// copies both), so that nothing is allocated per record. (Output records, nearly all of the
/// output, are encoded by [`OutputRecord::write_json`] instead.)
fn send_json(
    outputs: &mut BTreeMap<u32, TxnOutput>,
    value: &mut Vec<u8>,
    topic: &(String, i32),
    g: u32,
    record_uuid: &uuid::Uuid,
    record: &impl serde::Serialize,
) -> anyhow::Result<()> {
    value.clear();
    serde_json::to_writer(&mut *value, record)?;
    send_encoded(outputs, value, topic, g, record_uuid)
}

fn send_encoded(
    outputs: &mut BTreeMap<u32, TxnOutput>,
    value: &[u8],
    (topic, n): &(String, i32),
    g: u32,
    record_uuid: &uuid::Uuid,
) -> anyhow::Result<()> {
    let mut key = uuid::Uuid::encode_buffer();
    output_of(outputs, g)?.send(topic, g as i32 % n, record_uuid.hyphenated().encode_lower(&mut key).as_bytes(), value)
}

impl<R: OutputRecord> Broker<R> for KafkaBroker {
    fn poll_membership(&mut self, wait: Duration) -> anyhow::Result<Option<BTreeSet<u32>>> {
        self.membership.poll(wait)
    }

    fn take_ownership(&mut self, owned: &BTreeSet<u32>) -> anyhow::Result<()> {
        for out in self.outputs.values_mut() {
            out.abort()?;
        }
        self.outputs.retain(|g, _| owned.contains(g));
        let new: Vec<u32> = owned.iter().copied().filter(|g| !self.outputs.contains_key(g)).collect();
        // init_transactions is a blocking round trip (and, when it fences a predecessor, an
        // abort): open the producers side by side.
        let opened: Vec<(u32, anyhow::Result<TxnOutput>)> = std::thread::scope(|s| {
            let handles: Vec<_> = new
                .iter()
                .map(|g| {
                    let id = format!("{}-kg-{g}", self.transactional_prefix);
                    let (settings, timeout) = (&self.settings, self.transaction_timeout);
                    (*g, s.spawn(move || TxnOutput::new(settings, &id, timeout)))
                })
                .collect();
            handles.into_iter().map(|(g, h)| (g, h.join().expect("producer thread panicked"))).collect()
        });
        for (g, out) in opened {
            self.outputs.insert(g, out?);
        }
        Ok(())
    }

    fn committed(&self, groups: &BTreeSet<u32>) -> anyhow::Result<Vec<(u32, Option<u64>)>> {
        self.membership.committed(groups)
    }

    fn seek(&mut self, offsets: &BTreeMap<Source, i64>) -> anyhow::Result<()> {
        // The reader logs what was lost to retention; the job goes on with what is left.
        self.reader.seek(offsets).map(drop)
    }

    fn unread_partitions(&mut self) -> anyhow::Result<Vec<Source>> {
        self.reader.unread_partitions()
    }

    fn add_partitions(&mut self, new: &[Source], offsets: &BTreeMap<Source, i64>) -> anyhow::Result<()> {
        // As for seek: the reader logs what was lost to retention.
        self.reader.add_partitions(new, offsets).map(drop)
    }

    fn poll(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<(usize, RecordBatch)>> {
        self.reader.poll(max, wait)
    }

    fn idle_partitions(&self, for_at_least: Duration) -> BTreeSet<Source> {
        self.reader.idle_partitions(for_at_least)
    }

    fn lag(&self) -> Vec<(String, i32, i64)> {
        self.reader.lag()
    }

    fn caught_up(&self) -> bool {
        self.reader.caught_up()
    }

    fn pause_only(&mut self, partitions: &BTreeSet<Source>) -> anyhow::Result<()> {
        self.reader.pause_only(partitions)
    }

    fn paused(&self) -> &BTreeSet<Source> {
        self.reader.paused()
    }

    fn begin(&mut self, g: u32) -> anyhow::Result<()> {
        self.output(g)?.begin()
    }

    fn send_record(&mut self, g: u32, r: &R) -> anyhow::Result<()> {
        self.sender().record(g, r)
    }

    fn send_dead_letter(&mut self, g: u32, d: &DeadLetter) -> anyhow::Result<()> {
        self.sender().dead_letter(g, d)
    }

    /// Sends on this thread while another reads and decodes the poll: the producers and the
    /// consumer are separate librdkafka clients.
    fn send_and_poll(&mut self, records: &[GroupRecords<R>], max: usize, wait: Duration) -> anyhow::Result<Vec<(usize, RecordBatch)>> {
        if records.iter().all(|(_, m, d)| m.is_empty() && d.is_empty()) {
            return self.reader.poll(max, wait);
        }
        let Self { reader, outputs, output_topics, dlq_topics, value, .. } = self;
        let mut sender = Sender { outputs, output_topics, dlq_topics, value };
        std::thread::scope(|s| {
            let polling = s.spawn(|| reader.poll(max, wait));
            let sent = sender.all(records);
            let polled = polling.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            sent?;
            polled
        })
    }

    /// Each group's transaction also carries a marker record, `{"key_group": g,
    /// "checkpoint": n}` on partition g of `<group>.checkpoints`, so that no checkpoint's
    /// transaction is empty. Nisshi 0.7.0 commits a transaction's offsets only if the
    /// transaction produced a record (AddOffsetsToTxn leaves the transaction's state where the
    /// producer's previous commit left it, and its EndTxn then skips the offsets): a
    /// checkpoint without output (no window fired, nothing dead-lettered, an attribution job
    /// waiting for orders) lost its number, and a restart restored an older checkpoint, or
    /// found it pruned and could not start. Apache Kafka needs no marker; it costs a record
    /// per group and checkpoint.
    fn prepare_commits(&mut self, seqs: &BTreeMap<u32, u64>) -> anyhow::Result<()> {
        let (marker_topic, n) = self.checkpoint_topic.clone();
        for (g, seq) in seqs {
            let marker = format!(r#"{{"key_group":{g},"checkpoint":{seq}}}"#);
            self.output(*g)?.send(&marker_topic, *g as i32 % n, format!("kg-{g}").as_bytes(), marker.as_bytes())?;
        }
        Ok(())
    }

    fn commit_group(&mut self, g: u32, seq: u64) -> anyhow::Result<()> {
        let topic = self.membership.topic().to_string();
        let cgm = self.membership.group_metadata()?;
        self.output(g)?.commit(&topic, &BTreeMap::from([(g, seq)]), &cgm).with_context(|| format!("key group {g}"))
    }
}
