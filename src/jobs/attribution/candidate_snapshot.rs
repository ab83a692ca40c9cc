//! The candidate state in a checkpoint: one byte string, written straight from the store.
//!
//! The candidates are most of the job's state (every valid ad event of the click window). As
//! a list of structs a checkpoint cloned each one (and its id) only to serialize and drop it:
//! on the stream benchmark that was a fifth of the job's CPU. Written as bytes from the store,
//! a checkpoint allocates one buffer; varints and 16-byte UUIDs keep it near half the size.
//!
//! Layout, per pair: key (16 bytes LE), candidate count (varint); per candidate: flags (bit 0
//! click, bit 1 UUID id), event_time (zigzag varint), ingest − event_time (zigzag varint), ad,
//! campaign, advertiser (varints), then the id: 16 bytes, or its length (varint) and UTF-8.

use super::candidate::Candidate;
use super::event_id::EventId;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct CandidateSnapshot(Vec<u8>);

const CLICK: u8 = 1;
const UUID: u8 = 2;

impl CandidateSnapshot {
    /// `pairs`: every pair with its candidates, in the order they were added.
    pub fn encode<'a, C>(pairs: impl Iterator<Item = (u128, C)>, capacity: usize) -> Self
    where
        C: ExactSizeIterator<Item = &'a Candidate>,
    {
        let mut out = Vec::with_capacity(capacity);
        Self::encode_into(pairs, &mut out);
        Self(out)
    }

    /// The bytes postcard writes for the snapshot of `pairs` ([`Self::encode`]), a byte string:
    /// its length as a varint, then the bytes. Written in place after `out`'s end, which
    /// spares a checkpoint the snapshot's own buffer and the copy of it (the candidates are
    /// most of an attribution checkpoint: tens of MB of fresh memory each). `bound` is at
    /// least the bytes' length: the length's varint takes that one's width, and the bytes are
    /// moved only in the rare case where their own length is narrower.
    pub fn encode_postcard_into<'a, C>(pairs: impl Iterator<Item = (u128, C)>, bound: usize, out: &mut Vec<u8>)
    where
        C: ExactSizeIterator<Item = &'a Candidate>,
    {
        let width = varint_width(bound as u64);
        let at = out.len();
        out.reserve(width + bound);
        out.resize(at + width, 0);
        Self::encode_into(pairs, out);
        let len = out.len() - at - width;
        let mut prefix = Vec::with_capacity(10);
        put_varint(&mut prefix, len as u64);
        if prefix.len() < width {
            out.copy_within(at + width.., at + prefix.len());
            out.truncate(out.len() - (width - prefix.len()));
        }
        out[at..at + prefix.len()].copy_from_slice(&prefix);
    }

    fn encode_into<'a, C>(pairs: impl Iterator<Item = (u128, C)>, out: &mut Vec<u8>)
    where
        C: ExactSizeIterator<Item = &'a Candidate>,
    {
        for (key, candidates) in pairs {
            out.extend_from_slice(&key.to_le_bytes());
            put_varint(out, candidates.len() as u64);
            for c in candidates {
                let flags = if c.click { CLICK } else { 0 } | if matches!(c.event_id, EventId::Uuid(_)) { UUID } else { 0 };
                out.push(flags);
                put_varint(out, zigzag(c.event_time));
                put_varint(out, zigzag(c.ingest.wrapping_sub(c.event_time)));
                for id in [c.ad, c.campaign, c.advertiser] {
                    put_varint(out, id as u64);
                }
                match &c.event_id {
                    EventId::Uuid(b) => out.extend_from_slice(b),
                    EventId::Text(s) => {
                        put_varint(out, s.len() as u64);
                        out.extend_from_slice(s.as_bytes());
                    }
                }
            }
        }
    }

    /// At most the encoded size of a candidate with an id of `id_len` bytes, and of a pair.
    pub const fn bound(id_len: usize) -> usize {
        1 + 10 + 10 + 3 * 5 + 10 + id_len
    }
    pub const PAIR_BOUND: usize = 16 + 10;

    pub fn encoded_len(&self) -> usize {
        self.0.len()
    }

    /// Calls `f` with every pair's candidates, in the order they were encoded.
    pub fn decode(&self, mut f: impl FnMut(u128, Vec<Candidate>)) -> Result<(), String> {
        let mut r = Reader { bytes: &self.0, at: 0 };
        while r.at < self.0.len() {
            let key = u128::from_le_bytes(r.take(16)?.try_into().expect("16 bytes"));
            let n = r.varint()?;
            let mut candidates = Vec::with_capacity(n.min(1024) as usize);
            for _ in 0..n {
                let flags = r.take(1)?[0];
                let event_time = unzigzag(r.varint()?);
                let ingest = event_time.wrapping_add(unzigzag(r.varint()?));
                let mut ids = [0u32; 3];
                for id in &mut ids {
                    *id = u32::try_from(r.varint()?).map_err(|_| format!("an interned id past u32 at byte {}", r.at))?;
                }
                let event_id = if flags & UUID != 0 {
                    EventId::Uuid(r.take(16)?.try_into().expect("16 bytes"))
                } else {
                    let len = r.varint()? as usize;
                    let text = std::str::from_utf8(r.take(len)?).map_err(|e| format!("an event_id that is not UTF-8: {e}"))?;
                    EventId::Text(text.into())
                };
                candidates.push(Candidate {
                    event_id,
                    event_time,
                    ingest,
                    click: flags & CLICK != 0,
                    ad: ids[0],
                    campaign: ids[1],
                    advertiser: ids[2],
                });
            }
            f(key, candidates);
        }
        Ok(())
    }
}

impl std::fmt::Debug for CandidateSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CandidateSnapshot({} bytes)", self.0.len())
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn varint_width(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| format!("candidates truncated at byte {}", self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("a varint longer than 10 bytes at byte {}", self.at))
    }
}

impl serde::Serialize for CandidateSnapshot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for CandidateSnapshot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = CandidateSnapshot;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "the candidates as bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<CandidateSnapshot, E> {
                let s = CandidateSnapshot(bytes.to_vec());
                // A checkpoint is checksummed, so this is a bug's or another version's bytes:
                // refused here rather than half restored.
                s.decode(|_, _| ()).map_err(E::custom)?;
                Ok(s)
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn candidate() -> impl Strategy<Value = Candidate> {
        (
            prop_oneof![any::<u128>().prop_map(|v| uuid::Uuid::from_u128(v).to_string()), ".{0,40}"],
            any::<i64>(),
            any::<i64>(),
            any::<bool>(),
            any::<[u32; 3]>(),
        )
            .prop_map(|(id, event_time, ingest, click, [ad, campaign, advertiser])| Candidate {
                event_id: EventId::new(&id),
                event_time,
                ingest,
                click,
                ad,
                campaign,
                advertiser,
            })
    }

    proptest! {
        #[test]
        fn candidates_decode_as_encoded(pairs in prop::collection::vec((any::<u128>(), prop::collection::vec(candidate(), 0..4)), 0..6)) {
            let bound: usize = pairs.iter().map(|(_, c)| CandidateSnapshot::PAIR_BOUND + c.iter().map(|c| CandidateSnapshot::bound(c.event_id.to_string().len())).sum::<usize>()).sum();
            let snap = CandidateSnapshot::encode(pairs.iter().map(|(k, c)| (*k, c.iter())), 0);
            prop_assert!(snap.encoded_len() <= bound);
            let mut back = Vec::new();
            snap.decode(|k, c| back.push((k, c))).unwrap();
            prop_assert_eq!(&back, &pairs);
            let bytes = postcard::to_allocvec(&snap).unwrap();
            prop_assert_eq!(postcard::from_bytes::<CandidateSnapshot>(&bytes).unwrap(), snap.clone());
            // In place, after what came before, as postcard writes it: with the bound, and
            // with bounds whose varints are wider than the length's (the bytes then move).
            for slack in [0, 1 << 7, 1 << 14, 1 << 30] {
                let mut out = vec![7u8; 3];
                CandidateSnapshot::encode_postcard_into(pairs.iter().map(|(k, c)| (*k, c.iter())), bound + slack, &mut out);
                prop_assert_eq!(&out[..3], &[7u8; 3]);
                prop_assert_eq!(&out[3..], &bytes[..]);
            }
            if snap.encoded_len() > 0 {
                let cut = CandidateSnapshot(snap.0[..snap.0.len() - 1].to_vec());
                prop_assert!(postcard::from_bytes::<CandidateSnapshot>(&postcard::to_allocvec(&cut).unwrap()).is_err());
            }
        }
    }
}
