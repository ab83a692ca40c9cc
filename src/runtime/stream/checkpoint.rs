//! Checkpoint files: one key group's snapshot, checksummed.
//!
//! A checkpoint is named by its key group and sequence number; the consumer group's committed
//! offset on the key-group topic *is* that sequence number, committed in the same Kafka
//! transaction as the outputs computed since the previous checkpoint. So on start a group
//! restores exactly the snapshot its committed outputs were computed from: a crash after the
//! snapshot was written but before the transaction committed leaves the committed number on
//! the previous checkpoint, whose state and source positions match what the outside world saw.
//!
//! Layout: `"ADSPCKPT"`, format version (u32 LE), payload length (u64 LE), CRC-32 of the
//! payload (u32 LE), payload (postcard-encoded [`GroupSnapshot`] of the job's state). A file
//! whose length, checksum or version does not match is reported as corrupt, never used; one of
//! another job is refused when restored.

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use super::driver::{GroupHead, GroupSnapshot};
use crate::core::job::{append_state, StateSize};

const MAGIC: &[u8; 8] = b"ADSPCKPT";
/// 2: dedupe entries hold the counted arrival's ingest time only.
/// 3: dedupe entries as one byte string of fixed-width entries.
/// 4: any job's state; the job's name and input topics; clocks per (input, partition).
const VERSION: u32 = 4;
const HEADER: usize = 8 + 4 + 8 + 4;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("not an adsproc checkpoint (bad magic bytes)")]
    NotACheckpoint,
    #[error("checkpoint format version {0}, this adsproc reads version {VERSION}")]
    Version(u32),
    #[error("truncated: {got} bytes, the header promises {want}")]
    Truncated { got: usize, want: usize },
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}: the file is corrupt")]
    Checksum { stored: u32, computed: u32 },
    #[error("undecodable snapshot: {0}")]
    Decode(String),
}

/// Encodes the snapshot straight after a header whose length and checksum are filled in last,
/// into a buffer sized for its bytes: no copy of the payload and no doubling on the way (each a
/// pass over fresh memory, which the kernel zeroes). The interned strings come before the
/// dedupe entries, so they count too: with 10,000 ads they ran past a fixed margin, and the
/// buffer doubled as the entries, most of a snapshot's bytes, were appended.
pub fn encode<S: Serialize + StateSize>(snap: &GroupSnapshot<S>) -> Vec<u8> {
    encode_with(&snap.head(), |out| append_state(&snap.operator, out))
}

/// [`encode`] of the snapshot whose fields before the operator state are `head`; `operator`
/// appends the state's postcard bytes (and reserves room for them).
pub fn encode_with(head: &GroupHead<'_>, operator: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(head_len_bound(head));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.resize(HEADER, 0);
    let mut out = postcard::to_extend(head, out).expect("snapshots serialize");
    operator(&mut out);
    let len = (out.len() - HEADER) as u64;
    let crc = crc32fast::hash(&out[HEADER..]);
    out[12..20].copy_from_slice(&len.to_le_bytes());
    out[20..24].copy_from_slice(&crc.to_le_bytes());
    out
}

/// At least the header's and `head`'s encoded length.
fn head_len_bound(head: &GroupHead<'_>) -> usize {
    // Varints take at most 5 bytes (u32) or 10 (i64): a string is its bytes and a length, a
    // partition's clock with its key 37 bytes. The rest (names, counts) fits in 4 KiB.
    let names: usize = head.job.len() + head.topics.iter().map(|t| t.len() + 5).sum::<usize>();
    HEADER + 4096 + names + head.clocks.len() * 40
}

pub fn decode<S: DeserializeOwned>(bytes: &[u8]) -> Result<GroupSnapshot<S>, CheckpointError> {
    if bytes.len() < HEADER {
        return Err(if bytes.starts_with(&MAGIC[..bytes.len().min(8)]) {
            CheckpointError::Truncated { got: bytes.len(), want: HEADER }
        } else {
            CheckpointError::NotACheckpoint
        });
    }
    if &bytes[..8] != MAGIC {
        return Err(CheckpointError::NotACheckpoint);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(CheckpointError::Version(version));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")) as usize;
    let stored = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let want = HEADER.saturating_add(len);
    if bytes.len() != want {
        return Err(CheckpointError::Truncated { got: bytes.len(), want });
    }
    let payload = &bytes[HEADER..];
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(CheckpointError::Checksum { stored, computed });
    }
    postcard::from_bytes(payload).map_err(|e| CheckpointError::Decode(e.to_string()))
}

/// Where a runtime keeps checkpoints. Sequence numbers start at 1.
pub trait CheckpointStore {
    /// Writes checkpoints, `(key group, seq, bytes)`, all of them before it returns Ok. An
    /// object store's puts are round trips, and a checkpoint writes every owned group's.
    fn put_all(&self, checkpoints: Vec<(u32, u64, Vec<u8>)>) -> anyhow::Result<()>;
    /// The checkpoint's bytes; an error naming the location if it is missing.
    fn get(&self, key_group: u32, seq: u64) -> anyhow::Result<Vec<u8>>;
    /// Deletes the group's checkpoints numbered below `keep_from`.
    fn prune(&self, key_group: u32, keep_from: u64) -> anyhow::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::raw::RawMessage;
    use crate::jobs::aggregation::operator::OperatorState;
    use crate::jobs::aggregation::rules::AggregationRules;
    use crate::jobs::aggregation::Aggregation;
    use crate::runtime::stream::driver::{Source, StreamDriver};

    fn driver(partitions: &[i32]) -> StreamDriver<Aggregation> {
        StreamDriver::new(AggregationRules::defaults(), partitions.iter().map(|p| Source::new(0, *p)))
    }

    fn snapshot() -> GroupSnapshot<OperatorState> {
        let mut d = driver(&[0]);
        let payload = br#"{"event_id":"e1","event_type":"click","ad_id":"ad-1","event_time":1767225600000,"region":"r"}"#;
        d.on_poll(0, &[RawMessage { partition: 0, offset: 0, timestamp: 1767225601000, payload: payload.to_vec() }]);
        d.on_poll(0, &[RawMessage { partition: 0, offset: 1, timestamp: 1767225602000, payload: b"nope".to_vec() }]);
        d.drain();
        d.snapshot_group(0).unwrap()
    }

    #[test]
    fn round_trips_and_detects_every_kind_of_damage() {
        let snap = snapshot();
        assert_eq!(snap.operator.dedupe.len(), 1);
        let bytes = encode(&snap);
        assert_eq!(decode::<OperatorState>(&bytes).unwrap(), snap);

        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(matches!(decode::<OperatorState>(&flipped), Err(CheckpointError::Checksum { .. })));
        assert!(matches!(decode::<OperatorState>(&bytes[..bytes.len() - 3]), Err(CheckpointError::Truncated { .. })));
        assert_eq!(decode::<OperatorState>(b"PAR1 not a checkpoint at all"), Err(CheckpointError::NotACheckpoint));
        // A checkpoint of an earlier format (full dedupe positions, varint dedupe entries, one
        // input per job) is refused, not misread.
        for version in 1..VERSION {
            let mut old = bytes.clone();
            old[8] = version as u8;
            assert_eq!(decode::<OperatorState>(&old), Err(CheckpointError::Version(version)));
        }
    }

    /// The buffer is sized before encoding (a doubling would copy the dedupe entries into fresh
    /// memory); with many long strings the old fixed margin was exceeded.
    #[test]
    fn the_buffer_is_sized_for_the_whole_snapshot() {
        let mut d = driver(&[0, 1, 2]);
        let msgs: Vec<RawMessage> = (0..3_000i64)
            .map(|i| {
                let payload = format!(
                    r#"{{"event_id":"event-{i}","event_type":"impression","ad_id":"ad-with-a-rather-long-name-{i}","campaign_id":"campaign-{i}-{}","advertiser_id":"advertiser-{i}","event_time":{},"region":"region-{}"}}"#,
                    "x".repeat((i % 200) as usize),
                    1_767_225_600_000i64 + i * 1_000,
                    i % 7
                );
                RawMessage { partition: (i % 3) as i32, offset: i, timestamp: 1_767_225_600_000 + i * 1_000, payload: payload.into_bytes() }
            })
            .collect();
        d.on_poll(0, &msgs);
        d.drain();
        let snap = d.snapshot_group(0).unwrap();
        assert!(snap.operator.strings.len() > 8_000 && !snap.operator.windows.is_empty());
        let bytes = encode(&snap);
        let bound = head_len_bound(&snap.head()) + snap.operator.encoded_len_bound();
        assert!(bytes.len() <= bound, "{} bytes, bound {bound}", bytes.len());
        assert_eq!(decode::<OperatorState>(&bytes).unwrap(), snap);
        // The runtime's path, the operator writing its own state: the same bytes.
        assert!(d.encode_group(0).unwrap() == bytes);
    }

    #[test]
    fn a_restored_group_continues_exactly_as_the_original() {
        let msgs: Vec<RawMessage> = (0..40)
            .map(|i| RawMessage {
                partition: i % 2,
                offset: i64::from(i / 2),
                timestamp: 1767225600000 + i64::from(i) * 7_000,
                payload: format!(
                    r#"{{"event_id":"e{}","event_type":"impression","ad_id":"ad-{}","event_time":{},"region":"r"}}"#,
                    i % 13,
                    i % 3,
                    1767225600000 + i64::from(i) * 6_000
                )
                .into_bytes(),
            })
            .collect();
        let mut whole = driver(&[0, 1]);
        let (all, _) = whole.replay(msgs.chunks(5));

        // Same polls, but stop after 4, checkpoint, restore into a fresh driver, resume from
        // the checkpoint's offsets (re-reading what was pending), go on.
        let mut first = driver(&[0, 1]);
        let mut out = Vec::new();
        for poll in msgs.chunks(5).take(4) {
            first.on_poll(0, poll);
            out.extend(first.drain().0);
        }
        let snap = decode::<OperatorState>(&encode(&first.snapshot_group(0).unwrap())).unwrap();
        let mut second = StreamDriver::<Aggregation>::with_key_groups(AggregationRules::defaults(), [0, 1].map(|p| Source::new(0, p)), 1);
        second.restore_group(snap).unwrap();
        let resume = second.resume_offsets();
        let rest: Vec<RawMessage> = msgs[20..].iter().cloned().chain(msgs[..20].iter().cloned())
            .filter(|m| m.offset >= resume[&Source::new(0, m.partition)])
            .collect::<Vec<_>>();
        let mut rest = rest;
        rest.sort_by_key(|m| (m.offset, m.partition));
        let (tail, _) = second.replay(rest.chunks(5));
        out.extend(tail);
        // Poll boundaries differ after the restart, so updates may be emitted in other steps;
        // what an upsert store keeps, and the accounting, must be the same.
        let last = |v: &[crate::contract::outputs::AdMetric]| -> std::collections::BTreeMap<uuid::Uuid, (i64, i64)> {
            v.iter().map(|m| (m.record_uuid, (m.impressions, m.clicks))).collect()
        };
        assert!(resume.values().any(|o| *o > 0), "the checkpoint is mid-stream");
        assert_eq!(last(&out), last(&all));
        assert_eq!(second.audit(), whole.audit());
    }
}
