//! The topic reader (of the stream job and the archiver) against a real broker: what it
//! delivers around a partition's end, where librdkafka's batch consume needs help (see
//! `TopicReader::reposition`), and partitions it did not know when it started.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use adsproc::connector::kafka::reader::{LostRange, TopicReader};
use adsproc::connector::kafka::{admin, archiver, KafkaSettings};
use adsproc::contract::format::Format;
use adsproc::contract::schema::col;
use adsproc::runtime::stream::driver::Source;
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type};
use common::kafka::Broker;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

fn offsets(batches: &[(usize, RecordBatch)]) -> Vec<i64> {
    batches.iter().flat_map(|(_, b)| b.column(col::KAFKA_OFFSET).as_primitive::<Int64Type>().values().to_vec()).collect()
}

/// A reader of the ad-events topic `topic`, knowing its partitions `partitions`.
fn reader(settings: &KafkaSettings, topic: &str, partitions: &[i32], client: &str) -> TopicReader {
    TopicReader::new(settings, &[(topic.to_string(), Format::AdEvents)], sources(partitions), client).unwrap()
}

fn sources(partitions: &[i32]) -> Vec<Source> {
    partitions.iter().map(|p| Source::new(0, *p)).collect()
}

/// Positions of partitions of the one topic.
fn at<const N: usize>(entries: [(i32, i64); N]) -> BTreeMap<Source, i64> {
    entries.into_iter().map(|(p, o)| (Source::new(0, p), o)).collect()
}

fn produce(producer: &BaseProducer, n: usize) {
    produce_to(producer, "t", 0, n);
}

fn produce_to(producer: &BaseProducer, topic: &str, partition: i32, n: usize) {
    for i in 0..n {
        let payload = format!("{{\"event_id\":\"e{i}\"}}");
        producer.send(BaseRecord::<(), str>::to(topic).payload(&payload).partition(partition)).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// (partition, offset) of every delivered row.
fn positions(batches: &[(usize, RecordBatch)]) -> Vec<(i32, i64)> {
    batches
        .iter()
        .flat_map(|(_, b)| {
            let ps = b.column(col::KAFKA_PARTITION).as_primitive::<Int32Type>().values().to_vec();
            ps.into_iter().zip(b.column(col::KAFKA_OFFSET).as_primitive::<Int64Type>().values().to_vec())
        })
        .collect()
}

/// A broker whose topic `topic` holds `counts[p]` messages in partition p, and its settings.
fn topic_with(topic: &str, counts: &[usize]) -> (Broker, KafkaSettings) {
    let broker = Broker::start("memory");
    let settings = KafkaSettings::new(&broker.addr, &[]);
    admin::ensure_topic(&settings, topic, counts.len() as i32).unwrap();
    let producer: BaseProducer = settings.config(&[]).create().unwrap();
    for (p, n) in counts.iter().enumerate() {
        produce_to(&producer, topic, p as i32, *n);
    }
    (broker, settings)
}

/// Polls until at least `n` rows came and every partition is at its end, or 20 s pass:
/// (partition, offset) of each row, sorted.
fn read_to_end(reader: &mut TopicReader, n: usize) -> Vec<(i32, i64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while !(got.len() >= n && reader.caught_up()) && Instant::now() < deadline {
        got.extend(positions(&reader.poll(1000, Duration::from_millis(100)).unwrap()));
    }
    got.sort_unstable();
    got
}

/// Polls until `done` holds for what was delivered so far, or 20 s pass.
fn poll_until(reader: &mut TopicReader, mut done: impl FnMut(&[i64], &TopicReader) -> bool) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while !done(&got, reader) && Instant::now() < deadline {
        got.extend(offsets(&reader.poll(1000, Duration::from_millis(100)).unwrap()));
    }
    got
}

/// A partition paused at its end and resumed after a message arrived delivers that message.
/// With librdkafka 2.12.1's batch consume alone, the end moved the resume position one past
/// it, and the message at the old end was never delivered.
#[test]
fn a_partition_paused_at_its_end_resumes_at_the_next_message() {
    let broker = Broker::start("memory");
    let settings = KafkaSettings::new(&broker.addr, &[]);
    admin::ensure_topic(&settings, "t", 1).unwrap();
    let producer: BaseProducer = settings.config(&[]).create().unwrap();
    produce(&producer, 5);

    let mut reader = reader(&settings, "t", &[0], "reader-test");
    reader.seek(&at([(0, 0)])).unwrap();
    let first = poll_until(&mut reader, |got, r| got.len() >= 5 && r.caught_up());
    assert_eq!(first, vec![0, 1, 2, 3, 4]);
    assert!(reader.caught_up());

    reader.pause_only(&BTreeSet::from([Source::new(0, 0)])).unwrap();
    produce(&producer, 1);
    std::thread::sleep(Duration::from_millis(300));
    reader.pause_only(&BTreeSet::new()).unwrap();
    let after = poll_until(&mut reader, |got, _| !got.is_empty());
    assert_eq!(after, vec![5], "the message produced at the partition's end while it was paused");
}

/// Partitions added to a topic while it is read (Kafka adds them to live topics) are found
/// in the metadata and read from their beginning, and the partitions already read keep their
/// positions. Nisshi 0.7.0 has no CreatePartitions, so the reader is started knowing only
/// partition 0 of a topic of three: what it finds is what a reader started before the other
/// two were added would find.
#[test]
fn partitions_the_reader_did_not_know_are_found_and_read_from_their_beginning() {
    let (_broker, settings) = topic_with("grown", &[3, 3, 3]);
    let mut reader = reader(&settings, "grown", &[0], "reader-test");
    reader.seek(&at([(0, 1)])).unwrap();
    assert_eq!(read_to_end(&mut reader, 2), vec![(0, 1), (0, 2)]);

    let new = reader.unread_partitions().unwrap();
    assert_eq!(new, sources(&[1, 2]));
    // Partition 2 from a known position (as a restored checkpoint gives), 1 from its start.
    reader.add_partitions(&new, &at([(2, 2)])).unwrap();
    assert_eq!(reader.partitions(), sources(&[0, 1, 2]));
    assert!(reader.unread_partitions().unwrap().is_empty());
    let producer: BaseProducer = settings.config(&[]).create().unwrap();
    produce_to(&producer, "grown", 0, 1);
    let got = read_to_end(&mut reader, 5);
    assert_eq!(got, vec![(0, 3), (1, 0), (1, 1), (1, 2), (2, 2)], "each partition from where it should start, nothing twice");
}

/// The archiver, caught up with the partitions it started with, looks once more and archives
/// the partition it did not know, from its beginning, before it stops.
#[test]
fn the_archiver_archives_partitions_it_did_not_know_when_it_started() {
    let (_broker, settings) = topic_with("grown", &[3, 4]);
    let dir = tempfile::tempdir().unwrap();
    let location = adsproc::connector::store::open(dir.path().to_str().unwrap(), &[], true).unwrap();
    let rt = adsproc::cli::tokio_runtime().unwrap();
    let mut reader = reader(&settings, "grown", &[0], "archiver-test");
    let summary = archiver::run(&mut reader, Format::AdEvents, &location, rt.handle(), true, Duration::from_secs(60), None).unwrap();
    assert_eq!(summary.messages, 7);
    assert_eq!(archiver::archived_positions(&location, "grown", rt.handle()).unwrap(), at([(0, 3), (1, 4)]));
}

/// [`topic_with`], and then partition `p`'s messages below `offset` deleted (DeleteRecords),
/// as retention deletes them.
fn trimmed_topic(counts: &[usize], p: i32, offset: i64) -> (Broker, KafkaSettings) {
    let (broker, settings) = topic_with("trimmed", counts);
    let client: AdminClient<DefaultClientContext> = settings.config(&[]).create().unwrap();
    let mut below = TopicPartitionList::new();
    below.add_partition_offset("trimmed", p, Offset::Offset(offset)).unwrap();
    futures::executor::block_on(client.delete_records(&below, &AdminOptions::new())).unwrap();
    (broker, settings)
}

/// Positions before a partition's first retained message (messages deleted by retention;
/// here by DeleteRecords): reported as lost, and the reader goes on from what is left.
#[test]
fn positions_before_what_a_partition_retains_are_reported_as_lost() {
    let (_broker, settings) = trimmed_topic(&[10, 3], 0, 6);
    let mut reader = reader(&settings, "trimmed", &[0, 1], "reader-test");
    let lost = reader.seek(&at([(0, 2), (1, 1)])).unwrap();
    assert_eq!(lost, vec![LostRange { source: Source::new(0, 0), from: 2, to: 6 }]);
    assert_eq!(read_to_end(&mut reader, 6), vec![(0, 6), (0, 7), (0, 8), (0, 9), (1, 1), (1, 2)]);
    // From the first retained message on, nothing is lost.
    assert!(reader.seek(&at([(0, 6), (1, 0)])).unwrap().is_empty());
}

/// The same for a partition added while the reader runs, at a position a checkpoint or an
/// earlier archiver run kept: it was not part of any seek.
#[test]
fn an_added_partition_positioned_before_what_it_retains_is_reported_as_lost() {
    let (_broker, settings) = trimmed_topic(&[2, 10], 1, 7);
    let mut reader = reader(&settings, "trimmed", &[0], "reader-test");
    assert!(reader.seek(&at([(0, 0)])).unwrap().is_empty());
    assert_eq!(read_to_end(&mut reader, 2), vec![(0, 0), (0, 1)]);
    let lost = reader.add_partitions(&sources(&[1]), &at([(1, 3)])).unwrap();
    assert_eq!(lost, vec![LostRange { source: Source::new(0, 1), from: 3, to: 7 }]);
    assert_eq!(read_to_end(&mut reader, 3), vec![(1, 7), (1, 8), (1, 9)]);
}

/// A second seek and the reader's end right after it, ten times. A seek used to reassign the
/// partitions (remove, add again); librdkafka 2.12.1 aborted the process (SIGABRT, an assertion
/// on a second FETCH_STOP: confluentinc/librdkafka#5573) in about a third of such runs, when
/// closing the consumer removed the partitions while the reassignment's removal was still
/// stopping them. Seeks after the first now move the positions of an unchanged assignment.
#[test]
fn seeking_again_and_closing_at_once_does_not_abort() {
    let (_broker, settings) = topic_with("reseek", &[3, 3]);
    for round in 0..10 {
        let mut reader = reader(&settings, "reseek", &[0, 1], "reader-test");
        reader.seek(&at([(0, 0), (1, 0)])).unwrap();
        assert_eq!(read_to_end(&mut reader, 6).len(), 6, "round {round}");
        reader.seek(&at([(0, 1), (1, 2)])).unwrap();
        if round == 0 {
            // The new positions are where it reads from.
            assert_eq!(read_to_end(&mut reader, 3), vec![(0, 1), (0, 2), (1, 2)]);
        }
    }
}
