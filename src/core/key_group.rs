//! Key groups: the unit of parallelism and of state ownership.
//!
//! State is partitioned by a hash of `ad_id`, so all windows of an ad and all arrivals of its
//! events sit in one group: a group can run on any thread or process and move between them
//! with its state. Rows whose ad_id is missing are invalid; they go to group 0.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int32Type;

use crate::contract::schema::col;

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
