//! Keyed dedupe state: (ad_id, event_id) → its counted arrival, with a TTL in ingest time.
//!
//! The key includes the ad because state is partitioned by ad (see `key_group`): a client
//! retry repeats the ad it was for, so this is dedupe by event_id for every real retry, and a
//! message that reuses an event_id for another ad is a different event in every mode and at
//! every parallelism, instead of a duplicate only when the two ads share a key group.
//!
//! The rule: an arrival is counted unless an earlier arrival of the same key, in
//! (ingest time, partition, offset) order, was counted less than the TTL before it. Arrivals
//! of one epoch are resolved as a set, so the order in which files or partitions were read
//! inside an epoch cannot change the outcome; epochs are applied in ingest order. Exact as long
//! as no event_id sees two TTL expiries within one epoch, which the config guarantees by
//! requiring a TTL of at least an hour (a backfill epoch spans one ingest hour).
//!
//! Keys are the xxh3-128 hash of the event_id bytes seeded with the 64-bit hash of the ad_id:
//! 16 bytes instead of two strings per entry. Two distinct keys collide with probability
//! about n²/2¹²⁹ — below 10⁻²⁰ for a billion keys in state.

use rustc_hash::FxHashMap;

use super::key_table::KeyTable;

/// The seed for an ad's keys: computed once per distinct ad_id value of a batch.
pub fn ad_seed(ad_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(ad_id.as_bytes())
}

pub fn key_of(ad_seed: u64, event_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128_with_seed(event_id.as_bytes(), ad_seed)
}

/// Arrival position: ingest time, then partition, then offset.
pub type Position = (i64, i32, i64);

/// 16 bytes, so an entry with its key is 32: the table is the largest state a backfill holds
/// (one entry per distinct event of the TTL), and every byte of it is a page the kernel zeroes.
#[derive(Debug, Clone, Copy)]
struct Counted {
    /// Ingest time of the counted arrival: all that later epochs need (the TTL is in ingest time).
    t: i64,
    epoch: u32,
    /// Index into the current epoch's arrivals of the one counted in this epoch; its full
    /// position is `arrivals[winner].1`.
    winner: u32,
}

impl Counted {
    fn pack(self) -> [u64; 2] {
        [self.t as u64, self.epoch as u64 | (self.winner as u64) << 32]
    }

    fn unpack(v: [u64; 2]) -> Self {
        Self { t: v[0] as i64, epoch: v[1] as u32, winner: (v[1] >> 32) as u32 }
    }
}

/// Dedupe entries as a snapshot holds them: (key, ingest time of the counted arrival), 24
/// bytes each (little-endian), in one byte string. A snapshot holds one entry per distinct
/// event of the TTL. As a `Vec<(u128, i64)>` they took 32 bytes each in memory, and postcard
/// wrote each key as a varint, seven bits at a time (19 bytes for a random hash): encoding
/// 1M entries took ~75 ms, and a checkpoint encodes every owned group's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries(Vec<u8>);

const ENTRY: usize = 24;

impl Entries {
    pub fn len(&self) -> usize {
        self.0.len() / ENTRY
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Their size encoded, the bulk of a snapshot's.
    pub fn encoded_len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u128, i64)> + '_ {
        self.0.chunks_exact(ENTRY).map(|e| {
            let key = u128::from_le_bytes(e[..16].try_into().expect("16 bytes"));
            (key, i64::from_le_bytes(e[16..].try_into().expect("8 bytes")))
        })
    }

    fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n * ENTRY))
    }

    fn push(&mut self, key: u128, t: i64) {
        self.0.extend_from_slice(&key.to_le_bytes());
        self.0.extend_from_slice(&t.to_le_bytes());
    }
}

impl serde::Serialize for Entries {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "dedupe entries of {ENTRY} bytes each")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Entries, E> {
                if bytes.len() % ENTRY != 0 {
                    return Err(E::invalid_length(bytes.len(), &self));
                }
                Ok(Entries(bytes.to_vec()))
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

/// How many arrivals ahead [`DedupeState::resolve`] prefetches the table's slots. A probe of a
/// table of hundreds of megabytes is a cache miss; with the next probes' lines requested
/// meanwhile, their misses overlap instead of queueing.
const PREFETCH_AHEAD: usize = 16;

#[derive(Debug)]
pub struct DedupeState {
    table: KeyTable,
    /// At most the smallest ingest time in the table: when even that one cannot expire yet,
    /// [`Self::expire`] need not scan hundreds of megabytes to find nothing.
    oldest: i64,
    /// Keys renewed in the current epoch after TTL expiry, with the ingest time of the counted
    /// arrival they replaced. Rare (an event_id repeated more than a TTL apart), so kept apart.
    renewed: FxHashMap<u128, i64>,
}

impl Default for DedupeState {
    fn default() -> Self {
        Self { table: KeyTable::default(), oldest: i64::MAX, renewed: FxHashMap::default() }
    }
}

impl DedupeState {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Makes room for `additional` more keys at once: growing a table of millions by doubling
    /// allocates (and faults in) twice its final size and rehashes every key on each step.
    pub fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional);
    }

    /// Resolves one epoch's arrivals. `arrivals[i] = (key, position)`; returns for each whether
    /// it is counted (true) or a duplicate (false).
    pub fn resolve(&mut self, epoch: u32, ttl: i64, arrivals: &[(u128, Position)]) -> Vec<bool> {
        self.renewed.clear();
        let mut counted = vec![false; arrivals.len()];
        for &(key, _) in arrivals.iter().take(PREFETCH_AHEAD) {
            self.table.prefetch(key);
        }
        for (i, &(key, pos)) in arrivals.iter().enumerate() {
            if let Some(&(ahead, _)) = arrivals.get(i + PREFETCH_AHEAD) {
                self.table.prefetch(ahead);
            }
            let i32_ = i as u32;
            let fresh = Counted { t: pos.0, epoch, winner: i32_ };
            self.oldest = self.oldest.min(pos.0);
            let Some(slot) = self.table.get_or_insert(key, fresh.pack()) else {
                counted[i] = true;
                continue;
            };
            let mut c = Counted::unpack(*slot);
            if c.epoch != epoch {
                if pos.0 - c.t >= ttl {
                    self.renewed.insert(key, c.t);
                    *slot = fresh.pack();
                    counted[i] = true;
                }
            } else if pos < arrivals[c.winner as usize].1 {
                let within_previous = self.renewed.get(&key).is_some_and(|&prev| pos.0 - prev < ttl);
                if !within_previous {
                    counted[c.winner as usize] = false;
                    counted[i] = true;
                    c.t = pos.0;
                    c.winner = i32_;
                    *slot = c.pack();
                }
            }
        }
        counted
    }

    /// Forgets ids that no arrival at or after `ingest_watermark` can be a duplicate of.
    pub fn expire(&mut self, ingest_watermark: i64, ttl: i64) {
        let keep = |t: i64| t.saturating_add(ttl) > ingest_watermark;
        if keep(self.oldest) {
            return;
        }
        let mut oldest = i64::MAX;
        self.table.retain(|_, v| {
            let t = Counted::unpack(v).t;
            let kept = keep(t);
            if kept {
                oldest = oldest.min(t);
            }
            kept
        });
        self.oldest = oldest;
    }

    /// Entries for snapshots: (key, ingest time of the counted arrival). Between epochs this is
    /// the whole state: the other fields only matter inside the epoch that set them.
    pub fn entries(&self) -> impl Iterator<Item = (u128, i64)> + '_ {
        self.table.iter().map(|(k, v)| (k, Counted::unpack(v).t))
    }

    /// [`entries`](Self::entries) as a snapshot holds them, in a buffer of their size.
    pub fn snapshot(&self) -> Entries {
        let mut out = Entries::with_capacity(self.len());
        for (key, t) in self.entries() {
            out.push(key, t);
        }
        out
    }

    /// The state a checkpoint's [`entries`](Self::entries) describe. Epoch 0 is never a live
    /// epoch (they start at 1), so no restored entry takes part in in-epoch resolution.
    pub fn restore(entries: impl IntoIterator<Item = (u128, i64)>) -> Self {
        let entries = entries.into_iter();
        let mut state = Self::default();
        state.table.reserve(entries.size_hint().0);
        for (k, t) in entries {
            state.oldest = state.oldest.min(t);
            state.table.get_or_insert(k, Counted { t, epoch: 0, winner: 0 }.pack());
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: i64 = 100;

    #[test]
    fn earliest_position_in_an_epoch_wins_whatever_the_order() {
        let a = (1, (50, 1, 7));
        let b = (1, (50, 0, 9));
        let c = (1, (49, 3, 1));
        for order in [[a, b, c], [c, b, a], [b, c, a]] {
            let mut s = DedupeState::default();
            let won = s.resolve(1, TTL, &order);
            let winners: Vec<_> = order.iter().zip(&won).filter(|(_, w)| **w).map(|(x, _)| x.1).collect();
            assert_eq!(winners, vec![(49, 3, 1)]);
        }
    }

    #[test]
    fn ttl_expiry_counts_again_and_later_epochs_see_the_state() {
        let mut s = DedupeState::default();
        assert_eq!(s.resolve(1, TTL, &[(9, (0, 0, 0))]), vec![true]);
        assert_eq!(s.resolve(2, TTL, &[(9, (99, 0, 1))]), vec![false]);
        // 100 after the counted arrival: expired, so counted again; then 150 is its duplicate,
        // in either order within the epoch.
        assert_eq!(s.resolve(3, TTL, &[(9, (150, 0, 3)), (9, (100, 0, 2))]), vec![false, true]);
        // An arrival within the previous origin's TTL stays a duplicate even if it comes first.
        let mut s = DedupeState::default();
        s.resolve(1, TTL, &[(9, (0, 0, 0))]);
        assert_eq!(s.resolve(2, TTL, &[(9, (120, 0, 3)), (9, (90, 0, 2))]), vec![true, false]);
    }

    /// A reserved table resolves and expires as one grown on the way.
    #[test]
    fn a_reserved_state_resolves_as_a_grown_one() {
        let keys: Vec<u128> = (0..2_000u128).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834)).collect();
        let mut grown = DedupeState::default();
        let mut reserved = DedupeState::default();
        reserved.reserve(3 * keys.len());
        for (epoch, t) in [(1, 0), (2, 60), (3, 130)] {
            let arrivals: Vec<(u128, Position)> = keys.iter().enumerate().map(|(i, &k)| (k, (t + (i % 7) as i64, 0, i as i64))).collect();
            assert_eq!(grown.resolve(epoch, TTL, &arrivals), reserved.resolve(epoch, TTL, &arrivals));
            grown.expire(t, TTL);
            reserved.expire(t, TTL);
            assert_eq!(grown.len(), reserved.len());
        }
        let mut a: Vec<_> = grown.entries().collect();
        let mut b: Vec<_> = reserved.entries().collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
    }

    #[test]
    fn snapshot_entries_round_trip_and_torn_ones_are_refused() {
        let mut s = DedupeState::default();
        s.resolve(1, TTL, &[(0, (5, 0, 0)), (u128::MAX, (-3, 0, 1)), (7 << 64 | 9, (i64::MAX, 0, 2))]);
        let snap = s.snapshot();
        assert_eq!(snap.len(), 3);
        let back: Entries = postcard::from_bytes(&postcard::to_stdvec(&snap).unwrap()).unwrap();
        let mut restored: Vec<_> = DedupeState::restore(back.iter()).entries().collect();
        let mut original: Vec<_> = s.entries().collect();
        restored.sort_unstable();
        original.sort_unstable();
        assert_eq!(restored, original);
        assert_eq!(original, vec![(0, 5), (7 << 64 | 9, i64::MAX), (u128::MAX, -3)]);
        // 25 bytes are not whole entries.
        let mut torn = vec![25u8];
        torn.extend([0u8; 25]);
        assert!(postcard::from_bytes::<Entries>(&torn).is_err());
    }

    #[test]
    fn expire_forgets_only_what_cannot_matter() {
        let mut s = DedupeState::default();
        s.resolve(1, TTL, &[(1, (0, 0, 0)), (2, (50, 0, 1))]);
        // Nothing is old enough yet: the scan is skipped, and must not lose track of the oldest.
        s.expire(99, TTL);
        assert_eq!(s.len(), 2);
        s.expire(100, TTL);
        assert_eq!(s.len(), 1);
        assert_eq!(s.resolve(2, TTL, &[(2, (149, 0, 2))]), vec![false]);
    }
}
