//! Key groups: the unit of parallelism and of state ownership.
//!
//! A job partitions its state by a key: the aggregation by `ad_id`, so all windows of an ad and
//! all arrivals of its events sit in one group; the attribution by the eater and the store
//! (`user_id`, `store_id`), so an order and the ad events it can match sit in one group. A group
//! can run on any thread or process and move between them with its state. Rows whose key is
//! missing are invalid or irrelevant; they go to group 0.

use std::borrow::Cow;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int32Type};

use rayon::prelude::*;

use super::batch_view::Strings;
use crate::contract::schema::col;

/// The key of an eater at a store: the xxh3-128 hash of the user's length, the user and the
/// store (the length makes the split between the two unambiguous). A collision between two
/// pairs would need ~2⁶⁴ pairs.
pub fn pair_key(user: &str, store: &str) -> u128 {
    // Hashed in one call over the bytes laid out on the stack: xxh3 gives the same hash as its
    // streaming form fed the same bytes, and its short-input path is several times faster than
    // the streaming state (set up and buffered per pair; twice per ad event in the stream job).
    const ROOM: usize = 120;
    let (user, store) = (user.as_bytes(), store.as_bytes());
    let n = 8 + user.len() + store.len();
    if n > ROOM {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&(user.len() as u64).to_le_bytes());
        h.update(user);
        h.update(store);
        return h.digest128();
    }
    let mut buf = [0u8; ROOM];
    buf[..8].copy_from_slice(&(user.len() as u64).to_le_bytes());
    buf[8..8 + user.len()].copy_from_slice(user);
    buf[8 + user.len()..n].copy_from_slice(store);
    xxhash_rust::xxh3::xxh3_128(&buf[..n])
}

/// The key group of a pair's key.
pub fn group_of_pair(key: u128, groups: usize) -> usize {
    ((key >> 64) as u64 % groups as u64) as usize
}

/// A string column of any Arrow string type (a file's, before normalization) as [`Strings`]:
/// plain strings and views as they are, others cast to views.
pub fn any_strings(array: &ArrayRef) -> Cow<'_, ArrayRef> {
    match array.data_type() {
        DataType::Utf8 | DataType::Utf8View => Cow::Borrowed(array),
        _ => Cow::Owned(arrow::compute::cast(array, &DataType::Utf8View).expect("a string column casts to views")),
    }
}

/// Rows per key group of a batch whose `users` and `stores` columns (plain strings or views)
/// key it by pair; rows missing either go to group 0.
pub fn split_rows_by_pair(users: &ArrayRef, stores: &ArrayRef, groups: usize) -> Vec<Vec<u32>> {
    let n = users.len();
    let mut out: Vec<Vec<u32>> = (0..groups).map(|_| Vec::with_capacity(n / groups + 1)).collect();
    let (users, stores) = (Strings::new(users), Strings::new(stores));
    // The rows' groups are hashed on rayon threads: the stream runtime routes each poll on its
    // loop's thread, while the cores would otherwise wait (a hash of two strings per row).
    const CHUNK: usize = 8192;
    let mut group_of_row = vec![0u32; n];
    group_of_row.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, out)| {
        for (i, g) in out.iter_mut().enumerate() {
            let row = chunk * CHUNK + i;
            *g = match (users.present(row), stores.present(row)) {
                (Some(u), Some(s)) if groups > 1 => group_of_pair(pair_key(u, s), groups) as u32,
                _ => 0,
            };
        }
    });
    for (row, &g) in group_of_row.iter().enumerate() {
        out[g as usize].push(row as u32);
    }
    out
}

/// The key group of a record keyed by its `record_uuid` alone (the union's output). A
/// name-based UUID's bytes are already a hash, so its high half spreads evenly.
pub fn group_of_uuid(uuid: &uuid::Uuid, groups: usize) -> usize {
    ((uuid.as_u128() >> 64) as u64 % groups as u64) as usize
}

pub fn group_of(ad_id: &str, groups: usize) -> usize {
    (xxhash_rust::xxh3::xxh3_64(ad_id.as_bytes()) % groups as u64) as usize
}

/// Rows of a canonical batch per key group: `result[g]` lists the row indices of group `g`.
pub fn split_rows(batch: &RecordBatch, groups: usize) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = (0..groups).map(|_| Vec::with_capacity(batch.num_rows() / groups + 1)).collect();
    let dict = batch.column(col::AD_ID).as_dictionary::<Int32Type>();
    let values = dict.values().as_string::<i32>();
    let value_group: Vec<u32> = values
        .iter()
        .map(|v| v.map(|s| group_of(s, groups) as u32).unwrap_or(0))
        .collect();
    let keys = dict.keys();
    for row in 0..batch.num_rows() {
        let g = if keys.is_null(row) { 0 } else { value_group[keys.value(row) as usize] };
        out[g as usize].push(row as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The key as checkpoints and key-group assignments have always computed it.
    fn streamed(user: &str, store: &str) -> u128 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&(user.len() as u64).to_le_bytes());
        h.update(user.as_bytes());
        h.update(store.as_bytes());
        h.digest128()
    }

    proptest! {
        /// Short pairs take the one-call path, long ones the streaming one: both the same key.
        #[test]
        fn the_key_is_the_streamed_hash_of_the_pair(user in ".{0,90}", store in ".{0,90}") {
            prop_assert_eq!(pair_key(&user, &store), streamed(&user, &store));
        }
    }

    #[test]
    fn the_key_at_the_edge_of_the_stack_buffer() {
        for len in 100..=130 {
            let user = "u".repeat(len / 2);
            let store = "s".repeat(len - len / 2);
            assert_eq!(pair_key(&user, &store), streamed(&user, &store), "{len} bytes");
        }
        assert_eq!(pair_key("", ""), streamed("", ""));
    }
}
