//! A dictionary-encoded string column built from borrowed strings, for the decoder's five
//! low-cardinality columns (`event_type`, `ad_id`, `campaign_id`, `advertiser_id`, `region`).
//!
//! Why not arrow's `StringDictionaryBuilder`: it hashes every value with a general byte hasher
//! and confirms a match with a memcmp call against the values it has stored, and those five
//! lookups per message were a sixth of the decoder's time. Contract ids are short: a value of
//! at most 16 bytes is held in the table itself as two machine words and its length (two
//! overlapping loads, `short_str::words`, as the JSON fast path compares keys), so finding it is one
//! multiply-and-fold hash and a comparison of registers. A longer value is found by its xxh3
//! hash and confirmed against the stored values.
//!
//! The finished array is the one `StringDictionaryBuilder` would build from the same appends:
//! values in first-seen order, a null row's key 0 under a null bit. The tests hold it to that.

use std::sync::Arc;

use arrow::array::{ArrayBuilder, DictionaryArray, Int32Array, NullBufferBuilder, StringBuilder};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::Int32Type;

use super::short_str::words;

/// Marks a table slot holding a value over 16 bytes: `a` is then its hash, `b` unused.
const LONG: u32 = u32::MAX;

#[derive(Clone, Copy, Default)]
struct Slot {
    a: u64,
    b: u64,
    /// The value's length (or [`LONG`]); meaningful only when `key_plus_one` is not 0.
    len: u32,
    /// 0: an empty slot.
    key_plus_one: u32,
}

pub(super) struct DictionaryColumn {
    keys: Vec<i32>,
    /// Materialized only once a null is appended: a column without nulls has no null buffer.
    nulls: NullBufferBuilder,
    values: StringBuilder,
    /// A power of two of them.
    slots: Vec<Slot>,
    seeds: [u64; 2],
}

impl DictionaryColumn {
    pub(super) fn with_capacity(rows: usize) -> Self {
        Self {
            keys: Vec::with_capacity(rows),
            nulls: NullBufferBuilder::new(rows),
            values: StringBuilder::new(),
            slots: vec![Slot::default(); 64],
            seeds: seeds(),
        }
    }

    pub(super) fn append_option(&mut self, value: Option<&str>) {
        match value {
            Some(v) => {
                let key = self.key_of(v);
                self.keys.push(key);
                self.nulls.append_non_null();
            }
            None => self.append_null(),
        }
    }

    pub(super) fn append_null(&mut self) {
        self.nulls.append_null();
        self.keys.push(0);
    }

    pub(super) fn finish(mut self) -> DictionaryArray<Int32Type> {
        let keys = Int32Array::new(ScalarBuffer::from(self.keys), self.nulls.finish());
        let mut values = self.values;
        DictionaryArray::try_new(keys, Arc::new(values.finish())).expect("every key indexes a value it was given")
    }

    fn key_of(&mut self, v: &str) -> i32 {
        let bytes = v.as_bytes();
        let (a, b, len) = match words(bytes) {
            Some((a, b)) => (a, b, bytes.len() as u32),
            None => (xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.seeds[0]), 0, LONG),
        };
        let mask = self.slots.len() - 1;
        let mut at = self.home(a, b, len);
        loop {
            let slot = self.slots[at];
            if slot.key_plus_one == 0 {
                return self.insert(at, Slot { a, b, len, key_plus_one: 0 }, v);
            }
            if slot.a == a && slot.b == b && slot.len == len && (len != LONG || self.value(slot.key_plus_one - 1) == v) {
                return (slot.key_plus_one - 1) as i32;
            }
            at = (at + 1) & mask;
        }
    }

    fn home(&self, a: u64, b: u64, len: u32) -> usize {
        let m = u128::from(a ^ self.seeds[0]) * u128::from(b ^ self.seeds[1] ^ u64::from(len));
        let h = (m as u64) ^ ((m >> 64) as u64);
        // The multiply spreads every bit of h into the top bits the slot is taken from.
        (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.slots.len().trailing_zeros())) as usize
    }

    fn insert(&mut self, at: usize, mut slot: Slot, v: &str) -> i32 {
        let key = self.values.len();
        assert!(key < i32::MAX as usize, "dictionary key overflow: more than 2^31 - 1 distinct values in one batch");
        self.values.append_value(v);
        slot.key_plus_one = key as u32 + 1;
        self.slots[at] = slot;
        // Grown at half full, so a probe ends at an empty slot after a few steps.
        if (key + 1) * 2 > self.slots.len() {
            self.grow();
        }
        key as i32
    }

    fn grow(&mut self) {
        let doubled = vec![Slot::default(); self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        let mask = self.slots.len() - 1;
        for slot in old.into_iter().filter(|s| s.key_plus_one != 0) {
            let mut at = self.home(slot.a, slot.b, slot.len);
            while self.slots[at].key_plus_one != 0 {
                at = (at + 1) & mask;
            }
            self.slots[at] = slot;
        }
    }

    fn value(&self, key: u32) -> &str {
        let offsets = self.values.offsets_slice();
        let (start, end) = (offsets[key as usize] as usize, offsets[key as usize + 1] as usize);
        std::str::from_utf8(&self.values.values_slice()[start..end]).expect("stored from a &str")
    }
}

/// Per-process hash seeds, so that no fixed set of ids collides in every run.
fn seeds() -> [u64; 2] {
    use std::hash::BuildHasher;
    static SEEDS: std::sync::OnceLock<[u64; 2]> = std::sync::OnceLock::new();
    *SEEDS.get_or_init(|| {
        let s = std::collections::hash_map::RandomState::new();
        [s.hash_one(1u8) | 1, s.hash_one(2u8) | 1]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, StringDictionaryBuilder};
    use proptest::prelude::*;

    fn arrows(values: &[Option<String>]) -> DictionaryArray<Int32Type> {
        let mut b = StringDictionaryBuilder::<Int32Type>::new();
        values.iter().for_each(|v| b.append_option(v.as_deref()));
        b.finish()
    }

    fn ours(values: &[Option<String>]) -> DictionaryArray<Int32Type> {
        let mut b = DictionaryColumn::with_capacity(0);
        values.iter().for_each(|v| b.append_option(v.as_deref()));
        b.finish()
    }

    fn same(ours: &DictionaryArray<Int32Type>, arrows: &DictionaryArray<Int32Type>) {
        assert_eq!(ours.keys(), arrows.keys());
        assert_eq!(ours.values().as_string::<i32>(), arrows.values().as_string::<i32>());
        assert_eq!(ours.logical_nulls(), arrows.logical_nulls());
    }

    #[test]
    fn values_that_share_their_first_and_last_bytes_stay_apart() {
        // Same first and last eight bytes, different middles or lengths.
        let v: Vec<Option<String>> =
            ["abcdefgh12345678", "abcdefghX2345678", "abcdefgh2345678", "abcdefgh", "abcd", "abcdabcd", "a", "", "\0", "\0\0"]
                .into_iter()
                .chain(["a-long-identifier-over-sixteen", "a-long-identifier-over-sixteen!"])
                .map(|s| Some(s.to_string()))
                .collect();
        let doubled: Vec<_> = v.iter().chain(v.iter().rev()).cloned().collect();
        same(&ours(&doubled), &arrows(&doubled));
        assert_eq!(ours(&doubled).values().len(), v.len());
    }

    #[test]
    fn a_column_without_nulls_has_no_null_buffer() {
        let v = vec![Some("x".to_string()); 3];
        assert!(ours(&v).keys().nulls().is_none());
    }

    proptest! {
        /// Many distinct values (the table grows several times), all lengths around the short
        /// and long boundaries, nulls anywhere: the same array as arrow's builder.
        #[test]
        fn builds_what_arrows_dictionary_builder_builds(
            values in proptest::collection::vec(proptest::option::weighted(0.9, "[ab\\x00é]{0,20}"), 0..600),
        ) {
            same(&ours(&values), &arrows(&values));
        }
    }
}
