//! Reads every partition of a job's input topics from given positions, read_committed, with one
//! consumer and without a consumer group: positions are the caller's (they live in
//! checkpoints), never committed here. Each message is decoded by its topic's format.

use std::collections::{BTreeMap, BTreeSet};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaSettings;
use arrow::array::RecordBatch;

use rayon::prelude::*;

use crate::contract::format::{Decoder, Format};
use crate::runtime::stream::driver::Source;

/// Reaching a partition's end is how the reader knows it is caught up, not an error worth a
/// log line.
pub struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for QuietEof {}

/// Polls smaller than twice this are decoded on one thread.
const MIN_DECODE_SLICE: usize = 2048;

/// The consumer's queue, read in batches (see [`TopicReader::poll`]). Declared before the
/// consumer in [`TopicReader`] so that it is released first.
struct ConsumerQueue(NonNull<rd::rd_kafka_queue_t>);

// SAFETY: librdkafka's queues are thread-safe; the handle is owned by one reader.
unsafe impl Send for ConsumerQueue {}

impl Drop for ConsumerQueue {
    fn drop(&mut self) {
        // SAFETY: the handle came from rd_kafka_queue_get_consumer and is released once.
        unsafe { rd::rd_kafka_queue_destroy(self.0.as_ptr()) }
    }
}

/// A message (or a partition's end, or an error) taken from librdkafka, handed back on drop.
/// Poll results are dropped inside [`TopicReader::poll`], before the consumer can be.
struct Taken(NonNull<rd::rd_kafka_message_t>);

// SAFETY: a consumed message is not touched by librdkafka until it is destroyed; the decoder
// reads consecutive slices of a poll's messages on several threads, only reads, and destroys
// each slice on the thread that decoded it (librdkafka's reference counts are thread-safe).
unsafe impl Send for Taken {}
unsafe impl Sync for Taken {}

impl Taken {
    fn msg(&self) -> &rd::rd_kafka_message_t {
        // SAFETY: valid until dropped.
        unsafe { self.0.as_ref() }
    }

    fn payload(&self) -> &[u8] {
        let m = self.msg();
        if m.payload.is_null() {
            return &[];
        }
        // SAFETY: librdkafka's payload pointer and length, valid while the message lives.
        unsafe { std::slice::from_raw_parts(m.payload as *const u8, m.len) }
    }

    /// The Kafka timestamp in ms; 0 when the message has none (as `Timestamp::to_millis`
    /// gives for rust-rdkafka's messages).
    fn timestamp_ms(&self) -> i64 {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a valid message and an out-parameter.
        let t = unsafe { rd::rd_kafka_message_timestamp(self.0.as_ptr(), &mut kind) };
        if t == -1 || kind == rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE {
            0
        } else {
            t
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        // SAFETY: taken from rd_kafka_consume_batch_queue and destroyed once.
        unsafe { rd::rd_kafka_message_destroy(self.0.as_ptr()) }
    }
}

/// Offsets `from..to` of a partition, deleted before they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRange {
    pub source: Source,
    pub from: i64,
    pub to: i64,
}

pub struct TopicReader {
    queue: ConsumerQueue,
    consumer: BaseConsumer<QuietEof>,
    /// A client of its own for metadata and offset lookups. The broker answers the requests of
    /// one connection in order, and the consumer's connection mostly holds a fetch waiting up
    /// to `fetch.wait.max.ms` for data: a lookup sent there waited behind it (75-100 ms per
    /// topic against Nisshi, so each look for new partitions held the job loop up ~0.2 s, and
    /// `--stop-when-caught-up` took that long to confirm the end).
    lookups: BaseConsumer,
    /// The topics read and their formats, by input index.
    topics: Vec<(String, Format)>,
    /// librdkafka's topic handles seen so far and their input: a message names its topic by
    /// its handle.
    handles: Vec<(usize, usize)>,
    partitions: Vec<Source>,
    /// Partitions whose end the last poll reached, and since when.
    at_end: BTreeMap<Source, Instant>,
    /// Partitions not being fetched (see [`Self::pause_only`]).
    paused: BTreeSet<Source>,
    /// Per partition, the offset of the next message to deliver, where known: set by a seek,
    /// by each delivered message and by each end of partition (see [`Self::pause_only`]).
    next: BTreeMap<Source, i64>,
    /// Whether the partitions have been assigned (by the first [`seek`](Self::seek)).
    assigned: bool,
    /// Positions set by a seek that no message or end of partition has confirmed yet (see
    /// [`Self::confirm_position`]).
    sought: BTreeMap<Source, i64>,
}

impl TopicReader {
    /// A reader of `topics` (name and format, by input index) whose partitions are
    /// `partitions` (input index, partition).
    pub fn new(settings: &KafkaSettings, topics: &[(String, Format)], partitions: Vec<Source>, client_id: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer<QuietEof> = settings
            .config(&[
                ("group.id", &format!("{client_id}-reader")),
                ("client.id", client_id),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
                ("isolation.level", "read_committed"),
                ("auto.offset.reset", "earliest"),
                ("fetch.wait.max.ms", "100"),
                // librdkafka stops fetching a partition whose local queue is above
                // queued.min.messages and, by default, waits a whole second before fetching it
                // again: a job slower than the network then idles most of that second
                // (measured: 11 s instead of 5.6 s for 1M messages).
                ("fetch.queue.backoff.ms", "10"),
            ])
            .create_with_context(QuietEof)
            .context("cannot create the Kafka reader")?;
        // The topics' leaders in the client's metadata cache before the first assign: without
        // them librdkafka starts each partition's offset query only after a fixed 500 ms retry
        // (`rd_kafka_toppar_offset_retry`), half a second before the first message on start-up.
        // A reader that knows no partition yet (another region's, down at start) assigns none
        // and waits for nothing: partition discovery finds them once its cluster answers.
        for (topic, _) in topics.iter().filter(|_| !partitions.is_empty()) {
            consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).with_context(|| format!("cannot read the metadata of {topic:?}"))?;
        }
        let lookups: BaseConsumer = settings
            .config(&[("client.id", &format!("{client_id}-lookups"))])
            .create()
            .context("cannot create the Kafka reader's metadata client")?;
        // SAFETY: a live consumer with a group.id has a consumer queue (rust-rdkafka forwards
        // its main queue there); the handle is released before the consumer (field order).
        let queue = NonNull::new(unsafe { rd::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) })
            .map(ConsumerQueue)
            .context("the Kafka reader has no consumer queue")?;
        let mut partitions = partitions;
        partitions.sort_unstable();
        Ok(Self {
            queue,
            consumer,
            lookups,
            topics: topics.to_vec(),
            handles: Vec::new(),
            partitions,
            at_end: BTreeMap::new(),
            paused: BTreeSet::new(),
            next: BTreeMap::new(),
            assigned: false,
            sought: BTreeMap::new(),
        })
    }

    pub fn partitions(&self) -> &[Source] {
        &self.partitions
    }

    /// The name of input `input`'s topic.
    pub fn topic(&self, input: usize) -> &str {
        &self.topics[input].0
    }

    fn name(&self, s: Source) -> &str {
        &self.topics[s.input as usize].0
    }

    /// The topics' partitions that this reader does not read, from fresh metadata. Kafka adds
    /// partitions to a live topic (it never removes any), and a reader that kept the list it
    /// started with would never read the new ones.
    pub fn unread_partitions(&self) -> anyhow::Result<Vec<Source>> {
        self.unread_partitions_within(Duration::from_secs(10))
    }

    /// The same, waiting at most `timeout` for each topic's metadata.
    pub fn unread_partitions_within(&self, timeout: Duration) -> anyhow::Result<Vec<Source>> {
        let mut new = Vec::new();
        for (input, (topic, _)) in self.topics.iter().enumerate() {
            let md = self
                .lookups
                .fetch_metadata(Some(topic), timeout)
                .with_context(|| format!("cannot read the metadata of {topic:?}"))?;
            let Some(t) = md.topics().iter().find(|t| t.name() == topic) else { continue };
            new.extend(t.partitions().iter().map(|p| Source::new(input, p.id())).filter(|p| !self.partitions.contains(p)));
        }
        new.sort_unstable();
        Ok(new)
    }

    /// Starts reading more partitions, each at its offset in `offsets` or else from its
    /// beginning, without touching the positions of the others (before the first
    /// [`seek`](Self::seek), that seek assigns them). Returns, as `seek` does, the offsets
    /// deleted before they were read.
    pub fn add_partitions(&mut self, new: &[Source], offsets: &BTreeMap<Source, i64>) -> anyhow::Result<Vec<LostRange>> {
        let new: Vec<Source> = new.iter().copied().filter(|p| !self.partitions.contains(p)).collect();
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let mut offsets: BTreeMap<Source, i64> = offsets.iter().filter(|(p, _)| new.contains(p)).map(|(p, o)| (*p, *o)).collect();
        // Before the first seek, that seek checks them with the others.
        let lost = if self.assigned { self.skip_deleted(&mut offsets) } else { Vec::new() };
        let mut tpl = TopicPartitionList::new();
        for p in &new {
            tpl.add_partition_offset(self.name(*p), p.partition, offsets.get(p).map_or(Offset::Beginning, |o| Offset::Offset(*o)))?;
            if let Some(o) = offsets.get(p) {
                self.next.insert(*p, *o);
                self.sought.insert(*p, *o);
            }
        }
        if self.assigned {
            self.consumer.incremental_assign(&tpl).with_context(|| format!("cannot assign new partitions {new:?} (input:partition)"))?;
        }
        self.partitions.extend(new);
        self.partitions.sort_unstable();
        Ok(lost)
    }

    /// Reads every partition from `offsets` (from its beginning where absent). Returns, per
    /// partition, the offsets between its position and its first retained message: deleted
    /// (retention, DeleteRecords) before they were read, so they never will be. Those are
    /// logged as lost, and the partition is read from its first retained message. A position
    /// beyond the partition's end is an error when the first message comes
    /// (`confirm_position`); asking the broker for the end instead would not do on
    /// Nisshi 0.7.0, which lists a partition's end as its last batch's base offset + 1.
    pub fn seek(&mut self, offsets: &BTreeMap<Source, i64>) -> anyhow::Result<Vec<LostRange>> {
        let mut offsets: BTreeMap<Source, i64> = offsets.iter().filter(|(p, _)| self.partitions.contains(p)).map(|(p, o)| (*p, *o)).collect();
        let lost = self.skip_deleted(&mut offsets);
        let mut tpl = TopicPartitionList::new();
        for p in &self.partitions {
            let o = offsets.get(p).map_or(Offset::Beginning, |o| Offset::Offset(*o));
            tpl.add_partition_offset(self.name(*p), p.partition, o)?;
        }
        self.next = offsets;
        self.sought = self.next.clone();
        self.pause_only(&BTreeSet::new())?;
        if self.assigned {
            // The same partitions at new positions: moved, not removed from the assignment and
            // added again. librdkafka 2.12.1 aborts the process when a removal overlaps an
            // earlier one whose partitions are still stopping (a second FETCH_STOP for the same
            // partition; confluentinc/librdkafka#5573, fixed after 2.15), which a reassignment
            // followed by another or by closing the consumer could do.
            self.seek_assigned(tpl)?;
        } else {
            self.consumer.assign(&tpl).with_context(|| format!("cannot assign partitions of {:?}", self.topic_names()))?;
            self.assigned = true;
        }
        self.at_end.clear();
        Ok(lost)
    }

    /// Moves the positions in `offsets` that are below their partition's first retained
    /// offset up to it, and logs and returns what was skipped. Only a diagnosis: the reader is
    /// right without it (librdkafka moves such a position up as well), so a failed request
    /// does not stop it.
    fn skip_deleted(&self, offsets: &mut BTreeMap<Source, i64>) -> Vec<LostRange> {
        let lost = self.deleted_before(offsets).unwrap_or_else(|e| {
            tracing::warn!("cannot check {:?} for messages deleted before they were read: {e:#}", self.topic_names());
            Vec::new()
        });
        for l in &lost {
            tracing::warn!(
                "{:?} partition {}: offsets {}..{} were deleted (retention or DeleteRecords) before they were read; \
                 their messages are lost to this reader (a backfill restates their results if the archive holds them)",
                self.name(l.source),
                l.source.partition,
                l.from,
                l.to
            );
            offsets.insert(l.source, l.to);
        }
        lost
    }

    fn topic_names(&self) -> Vec<&str> {
        self.topics.iter().map(|(t, _)| t.as_str()).collect()
    }

    /// The input whose topic `name` is.
    fn input_named(&self, name: &str) -> Option<usize> {
        self.topics.iter().position(|(t, _)| t == name)
    }

    /// The positions in `offsets` below their partition's first retained offset (one
    /// ListOffsets request for all of them).
    fn deleted_before(&self, offsets: &BTreeMap<Source, i64>) -> anyhow::Result<Vec<LostRange>> {
        let mut tpl = TopicPartitionList::new();
        for p in offsets.keys() {
            tpl.add_partition_offset(self.name(*p), p.partition, Offset::Beginning)?;
        }
        if tpl.count() == 0 {
            return Ok(Vec::new());
        }
        let first = self
            .lookups
            .offsets_for_times(tpl, Duration::from_secs(30))
            .with_context(|| format!("cannot list the offsets of {:?}", self.topic_names()))?;
        let mut lost = Vec::new();
        for e in first.elements() {
            let (topic, p) = (e.topic(), e.partition());
            e.error().with_context(|| format!("cannot list the offsets of {topic:?} partition {p}"))?;
            let Offset::Offset(first) = e.offset() else {
                anyhow::bail!("{topic:?} partition {p}: the broker listed no first offset ({:?})", e.offset())
            };
            let source = Source::new(self.input_named(topic).context("a topic this reader reads")?, p);
            if offsets[&source] < first {
                lost.push(LostRange { source, from: offsets[&source], to: first });
            }
        }
        Ok(lost)
    }

    /// Up to `max` messages, waiting at most `wait` for the first, decoded straight from the
    /// client's buffers into canonical batches: consecutive slices of the poll, in order,
    /// decoded in parallel (decoding is most of a poll's cost, and the job's other stages
    /// wait for it).
    ///
    /// Messages are taken with librdkafka's batch consume: one call per poll instead of one
    /// per message, which halves the reading thread's CPU (measured against this broker:
    /// 0.56-0.62 s → 0.30-0.33 s per 1M messages).
    pub fn poll(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<(usize, RecordBatch)>> {
        let mut taken = Vec::with_capacity(max.min(65_536));
        self.take(&mut taken, max, Duration::ZERO);
        if taken.is_empty() {
            // Wait only for the first message; then take what is already fetched.
            self.take(&mut taken, 1, wait);
            if !taken.is_empty() {
                self.take(&mut taken, max, Duration::ZERO);
            }
        }
        let mut held: Vec<(usize, Taken)> = Vec::with_capacity(taken.len());
        // Messages come in runs per partition: bookkeeping once per run.
        let mut run: Option<(Source, i64)> = None;
        for m in taken {
            let (err, partition, offset) = (m.msg().err, m.msg().partition, m.msg().offset);
            let input = self.input_of(&m);
            if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                let p = Source::new(input.context("a message of a topic this reader does not read")?, partition);
                match run {
                    Some((rp, _)) if rp == p => {}
                    _ => {
                        self.end_run(run);
                        self.at_end.remove(&p);
                        self.confirm_position(p, offset)?;
                    }
                }
                run = Some((p, offset));
                held.push((p.input as usize, m));
                continue;
            }
            self.end_run(run.take());
            match input {
                Some(input) if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                    // Its offset is the partition's end: the next message to come.
                    let p = Source::new(input, partition);
                    self.confirm_position(p, offset)?;
                    self.next.insert(p, offset);
                    self.at_end.entry(p).or_insert_with(Instant::now);
                }
                _ if RDKafkaErrorCode::from(err) == RDKafkaErrorCode::UnknownTopicOrPartition => {
                    let topic = input.map_or_else(|| format!("{:?}", self.topic_names()), |i| format!("{:?}", self.topic(i)));
                    anyhow::bail!("topic {topic} does not exist")
                }
                // Transient broker errors are retried by librdkafka; report and go on.
                _ => tracing::warn!("reading {:?}: {}", self.topic_names(), RDKafkaErrorCode::from(err)),
            }
        }
        self.end_run(run);
        let slice = held.len().div_ceil(rayon::current_num_threads()).max(MIN_DECODE_SLICE);
        // Each slice is moved to its decoding thread and its messages are handed back to
        // librdkafka there: destroying them (an op, a buffer reference and a free each) was 7 %
        // of the job loop's thread. librdkafka's reference counts are atomic (or locked), so
        // any thread may destroy a message.
        let mut slices: Vec<Vec<(usize, Taken)>> = Vec::with_capacity(held.len().div_ceil(slice));
        let mut held = held.into_iter();
        while held.len() > 0 {
            slices.push(held.by_ref().take(slice).collect());
        }
        let formats: Vec<Format> = self.topics.iter().map(|(_, f)| *f).collect();
        let decoded: Vec<Vec<(usize, RecordBatch)>> = slices
            .into_par_iter()
            .map(|slice| {
                // Sized exactly: a builder that outgrows its buffer copies it into a fresh one
                // (see `MessageDecoder::with_capacity_for`).
                let mut sizes = vec![(0usize, 0usize); formats.len()];
                for (input, m) in &slice {
                    sizes[*input].0 += 1;
                    sizes[*input].1 += m.msg().len;
                }
                let mut decoders: Vec<Option<Decoder>> =
                    sizes.iter().zip(&formats).map(|(&(n, bytes), f)| (n > 0).then(|| f.decoder(n, bytes))).collect();
                for (input, m) in &slice {
                    let d = decoders[*input].as_mut().expect("sized for every input present");
                    d.append(m.msg().partition, m.msg().offset, m.timestamp_ms(), m.payload());
                }
                drop(slice);
                decoders.into_iter().enumerate().filter_map(|(i, d)| d.map(|d| (i, d.finish()))).collect()
            })
            .collect();
        Ok(decoded.into_iter().flatten().collect())
    }

    /// The input of a message's topic, from librdkafka's topic handle (cached by address).
    fn input_of(&mut self, m: &Taken) -> Option<usize> {
        let rkt = m.msg().rkt;
        if rkt.is_null() {
            return None;
        }
        if let Some(&(_, input)) = self.handles.iter().find(|(h, _)| *h == rkt as usize) {
            return Some(input);
        }
        // SAFETY: a message's topic handle is valid while the message lives; the name is a
        // NUL-terminated string owned by the handle.
        let name = unsafe { std::ffi::CStr::from_ptr(rd::rd_kafka_topic_name(rkt)) }.to_string_lossy().into_owned();
        let input = self.input_named(&name)?;
        self.handles.push((rkt as usize, input));
        Some(input)
    }

    /// Takes up to `max` − `into.len()` more messages, waiting up to `wait` for them all.
    fn take(&mut self, into: &mut Vec<Taken>, max: usize, wait: Duration) {
        let room = max.saturating_sub(into.len());
        if room == 0 {
            return;
        }
        let mut ptrs: Vec<*mut rd::rd_kafka_message_t> = Vec::with_capacity(room);
        let timeout = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: room slots of spare capacity; librdkafka fills the first n and returns n
        // (or -1 on error, when it fills none).
        let n = unsafe { rd::rd_kafka_consume_batch_queue(self.queue.0.as_ptr(), timeout, ptrs.as_mut_ptr(), room) };
        // SAFETY: those n slots were written.
        unsafe { ptrs.set_len(n.clamp(0, room as isize) as usize) };
        into.extend(ptrs.into_iter().filter_map(NonNull::new).map(Taken));
    }

    /// The first message (or end) of a partition after a seek must be at or after the position
    /// sought: librdkafka never delivers a message before it. Earlier means the broker did
    /// not have the position, and librdkafka's offset reset started the partition over: the
    /// topic was deleted and created again since the position was stored. Its messages below
    /// the position would then be skipped as already processed (the stream job's key groups
    /// ignore messages before their positions), so this is an error, not a warning.
    fn confirm_position(&mut self, p: Source, at: i64) -> anyhow::Result<()> {
        if let Some(sought) = self.sought.remove(&p) {
            anyhow::ensure!(
                at >= sought,
                "{:?} partition {}: read from offset {at} after seeking to {sought}, so the partition no longer holds that \
                 position (the topic was deleted and created again?) and its messages below it would be skipped as already \
                 read; to start over, use a new --group and --checkpoint (stream) or a new --sink (archive)",
                self.name(p),
                p.partition
            );
        }
        Ok(())
    }

    /// Records the end of a run of delivered messages of one partition.
    fn end_run(&mut self, run: Option<(Source, i64)>) {
        if let Some((p, last)) = run {
            self.next.insert(p, last + 1);
        }
    }

    /// Stops fetching `partitions` and fetches every other one. A paused partition resumes
    /// from the message after the last one it delivered (librdkafka drops what it had
    /// fetched beyond that).
    pub fn pause_only(&mut self, partitions: &BTreeSet<Source>) -> anyhow::Result<()> {
        let list = |ps: &mut dyn Iterator<Item = &Source>| {
            let mut tpl = TopicPartitionList::new();
            for p in ps {
                tpl.add_partition(self.name(*p), p.partition);
            }
            tpl
        };
        let resume = list(&mut self.paused.difference(partitions));
        let pause = list(&mut partitions.difference(&self.paused));
        if resume.count() > 0 {
            self.consumer.resume(&resume).with_context(|| format!("cannot resume partitions of {:?}", self.topic_names()))?;
            self.reposition(&resume)?;
        }
        if pause.count() > 0 {
            self.consumer.pause(&pause).with_context(|| format!("cannot pause partitions of {:?}", self.topic_names()))?;
        }
        self.paused = partitions.clone();
        Ok(())
    }

    /// Points resumed partitions at the next message the reader has not delivered. librdkafka
    /// resumes a partition after the last message it handed out, but in the version bundled
    /// here (2.12.1) a batch that hands out a partition's end moves that position one past it
    /// (confluentinc/librdkafka#4844, fixed upstream by #5213): without this, a partition
    /// paused at its end would skip the next message produced to it.
    fn reposition(&mut self, resumed: &TopicPartitionList) -> anyhow::Result<()> {
        let mut at = TopicPartitionList::new();
        for e in resumed.elements() {
            let Some(input) = self.input_named(e.topic()) else { continue };
            if let Some(o) = self.next.get(&Source::new(input, e.partition())) {
                at.add_partition_offset(e.topic(), e.partition(), Offset::Offset(*o))?;
            }
        }
        if at.count() == 0 {
            return Ok(());
        }
        self.seek_assigned(at)
    }

    /// Moves assigned partitions to the positions in `to`.
    fn seek_assigned(&self, to: TopicPartitionList) -> anyhow::Result<()> {
        let done = self
            .consumer
            .seek_partitions(to, Duration::from_secs(30))
            .with_context(|| format!("cannot seek partitions of {:?}", self.topic_names()))?;
        for e in done.elements() {
            if let Err(err) = e.error() {
                anyhow::bail!("cannot seek partition {} of {:?}: {err}", e.partition(), e.topic());
            }
        }
        Ok(())
    }

    pub fn paused(&self) -> &BTreeSet<Source> {
        &self.paused
    }

    /// Partitions that have been at their end for at least `for_at_least`.
    pub fn idle_partitions(&self, for_at_least: Duration) -> BTreeSet<Source> {
        self.at_end.iter().filter(|(_, since)| since.elapsed() >= for_at_least).map(|(p, _)| *p).collect()
    }

    /// Messages behind each partition's end ([`super::consumer_lag`]).
    pub fn lag(&self) -> Vec<(String, i32, i64)> {
        super::consumer_lag(&self.consumer)
    }

    /// Whether every partition has reached its end since it last delivered.
    pub fn caught_up(&self) -> bool {
        self.partitions.iter().all(|p| self.at_end.contains_key(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    /// A position beyond a partition's log, as after the topic was deleted and created again.
    /// Kafka answers the fetch with OFFSET_OUT_OF_RANGE and librdkafka's offset reset starts the
    /// partition over; librdkafka's mock cluster does the same (Nisshi 0.7.0 answers nothing
    /// at all, so the reader just waits there).
    #[test]
    fn a_position_the_partition_does_not_hold_is_an_error_not_a_restart() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let settings = KafkaSettings::new(&cluster.bootstrap_servers(), &[]);
        let producer: BaseProducer = settings.config(&[]).create().unwrap();
        for _ in 0..3 {
            producer.send(BaseRecord::<(), str>::to("t").payload("{}").partition(0)).unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        let read = |from: i64| -> anyhow::Result<usize> {
            let mut reader = TopicReader::new(&settings, &[("t".to_string(), Format::AdEvents)], vec![Source::new(0, 0)], "reader-test")?;
            reader.seek(&BTreeMap::from([(Source::new(0, 0), from)]))?;
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut n = 0;
            while !reader.caught_up() && Instant::now() < deadline {
                n += reader.poll(100, Duration::from_millis(100))?.iter().map(|(_, b)| b.num_rows()).sum::<usize>();
            }
            Ok(n)
        };
        assert_eq!(read(1).unwrap(), 2);
        assert_eq!(read(3).unwrap(), 0, "at the end is a position the partition holds");
        let err = format!("{:#}", read(100).unwrap_err());
        assert!(err.contains("\"t\" partition 0: read from offset 0 after seeking to 100"), "{err}");
    }
}
