//! The strict reading of a job's output after kills, shared by every broker test that claims
//! exactly once: from the broker's storage (broker_log), so that committed records are told
//! from aborted ones, and record by record on `record_uuid`.
#![allow(dead_code)]

use std::collections::BTreeMap;

use adsproc::contract::outputs::DeadLetter;
use adsproc::core::job::OutputRecord;
use uuid::Uuid;

use super::broker_log::{held, Held};
use super::kafka::Broker;

/// What the strict reading found in one output topic.
pub struct Committed<R> {
    /// The last committed value of each `record_uuid`: what an upsert store keeps.
    pub last: BTreeMap<Uuid, R>,
    pub committed: usize,
    /// Records of transactions that never committed (a killed run's open transaction).
    pub aborted: usize,
}

/// Reads `topic` from the broker's storage and checks, for every record, committed or not,
/// that it is keyed by its `record_uuid` and that this is the uuid its identity derives (so a
/// window or an order has exactly one uuid, even across restores); that a uuid stays in one
/// partition; that `successor(previous, next)` accepts every pair of consecutive *committed*
/// values of a uuid (e.g. a count never decreases: a committed double count is caught even
/// when a later value overwrote it); and that the last value of each uuid among all records,
/// which is what an upsert consumer of Nisshi keeps with the aborted records included, is the
/// last committed one.
pub fn committed_output<R: OutputRecord>(
    broker: &Broker,
    topic: &str,
    successor: impl Fn(&R, &R) -> Result<(), String>,
) -> Committed<R> {
    let records = held(broker, topic);
    let mut last: BTreeMap<Uuid, (i32, R)> = BTreeMap::new();
    let mut last_any: BTreeMap<Uuid, R> = BTreeMap::new();
    let mut problems = Vec::new();
    let (mut committed, mut aborted) = (0, 0);
    for h in &records {
        let r: R = parse(topic, h);
        let uuid = r.record_uuid();
        assert_eq!(String::from_utf8_lossy(&h.key), uuid.to_string(), "{topic} {}@{}: keyed by its record_uuid", h.partition, h.offset);
        assert_eq!(uuid, r.derived_uuid(), "{topic} {}@{}: the record_uuid its identity derives: {r:?}", h.partition, h.offset);
        last_any.insert(uuid, r.clone());
        if !h.committed {
            aborted += 1;
            continue;
        }
        committed += 1;
        if let Some((p, previous)) = last.get(&uuid) {
            assert_eq!(*p, h.partition, "{topic}: record_uuid {uuid} in two partitions");
            if let Err(e) = successor(previous, &r) {
                problems.push(format!("{topic} {}@{}: {e}\n  before: {previous:?}\n  after:  {r:?}", h.partition, h.offset));
            }
        }
        last.insert(uuid, (h.partition, r));
    }
    assert!(problems.is_empty(), "{} committed values of {topic} break the rule, e.g.:\n{}", problems.len(), problems[..problems.len().min(5)].join("\n"));
    let last: BTreeMap<Uuid, R> = last.into_iter().map(|(u, (_, r))| (u, r)).collect();
    let stale: Vec<_> = last_any.iter().filter(|(u, r)| last.get(u) != Some(r)).take(5).collect();
    assert!(stale.is_empty(), "an upsert of all of {topic} (aborted records included) does not end on the committed values: {stale:?}");
    Committed { last, committed, aborted }
}

/// The committed dead letters of `topic`, each `record_uuid` exactly once (a dead letter
/// written twice would count a bad message twice), and every aborted one re-written by a
/// committed transaction (none lost).
pub fn committed_dead_letters(broker: &Broker, topic: &str) -> BTreeMap<Uuid, DeadLetter> {
    let mut out = BTreeMap::new();
    let mut aborted = Vec::new();
    for h in held(broker, topic) {
        let d: DeadLetter = parse(topic, &h);
        assert_eq!(String::from_utf8_lossy(&h.key), d.record_uuid.to_string(), "{topic} {}@{}: keyed by its record_uuid", h.partition, h.offset);
        if !h.committed {
            aborted.push(d);
        } else if let Some(first) = out.insert(d.record_uuid, d.clone()) {
            panic!("{topic}: dead letter {} committed twice:\n  {first:?}\n  {d:?}", d.record_uuid);
        }
    }
    let lost: Vec<_> = aborted.iter().filter(|d| out.get(&d.record_uuid) != Some(*d)).take(5).collect();
    assert!(lost.is_empty(), "{topic}: dead letters of aborted transactions that no committed one re-wrote: {lost:?}");
    out
}

/// Every message `adsproc produce` said it sent (its last line: "sent N messages to ...") is
/// held by the broker, once, across `topics`: "lose nothing" is measured against what was
/// sent, not against what happened to arrive.
pub fn assert_held_as_sent(broker: &Broker, produce_output: &str, topics: &[&str]) -> usize {
    let sent: usize = produce_output
        .rsplit("sent ")
        .next()
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("produce reports what it sent: {produce_output}"));
    let held: usize = topics.iter().map(|t| held(broker, t).len()).sum();
    assert_eq!(held, sent, "the broker holds every message produce sent to {topics:?}, once");
    sent
}

fn parse<T: serde::de::DeserializeOwned>(topic: &str, h: &Held) -> T {
    serde_json::from_slice(&h.value)
        .unwrap_or_else(|e| panic!("{topic} {}@{} is not the contract's JSON ({e}): {}", h.partition, h.offset, String::from_utf8_lossy(&h.value)))
}
