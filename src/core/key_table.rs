//! A hash table from 128-bit hash keys to 16 bytes, built for one access pattern: millions of
//! random probes, each a likely cache miss, whose keys are known a few probes ahead.
//!
//! Open addressing with linear probing, a slot of 32 bytes (two per cache line), and the home
//! slot chosen from the key's low 64 bits by multiplication (`(lo * capacity) >> 64`), so the
//! capacity can be any number, not only a power of two: a table reserved for n keys takes
//! n / `TARGET_LOAD` slots. Keys are already uniform hashes, so they are not hashed again.
//!
//! What a general-purpose map cannot offer is [`KeyTable::prefetch`]: the caller names the key
//! it will probe next-but-k, the CPU fetches that slot's cache line meanwhile, and k probes'
//! misses overlap instead of each waiting its turn.
//!
//! An all-zero slot is empty, so a table is allocated zeroed: the allocator hands out fresh
//! pages as they are (the kernel zeroes them on first touch anyway) instead of writing every
//! byte up front; one byte per page is written at once, so that probes never read the shared
//! zero page (`zeroed_slots`). The one real key that is zero lives beside the slots.

use super::prefetch::prefetch;

/// Load a reserved table is sized for.
const TARGET_LOAD: f64 = 0.7;
/// Load at which a table grows; linear probing gets long probe runs above it.
const MAX_LOAD: f64 = 0.8;

type Slot = [u64; 4];

#[derive(Debug, Default, Clone)]
pub struct KeyTable {
    /// `[key low, key high, value 0, value 1]`; all zero = empty.
    slots: Vec<Slot>,
    /// Occupied slots.
    used: usize,
    /// Occupied slots at which the table grows: [`MAX_LOAD`] of them.
    limit: usize,
    zero: Option<[u64; 2]>,
}

fn split(key: u128) -> (u64, u64) {
    (key as u64, (key >> 64) as u64)
}

/// `n` empty slots whose pages the process has already written to.
///
/// A zeroed allocation this large is fresh pages, mapped on first touch. When that first touch
/// is a read, as every probe's is, the kernel maps the shared zero page, and the write that
/// follows faults again to replace it and flushes the TLB of every core running one of the
/// process's threads: an interprocessor interrupt per page, which in a VM is a VM exit. That was
/// most of the stream job's time growing its dedupe tables (5 % of its samples). One write per
/// page up front makes each page's first touch a write: one fault, no flush.
fn zeroed_slots(n: usize) -> Vec<Slot> {
    const PAGE: usize = 4096;
    let mut slots = vec![[0u64; 4]; n];
    let base = slots.as_mut_ptr().cast::<u8>();
    for offset in (0..n * size_of::<Slot>()).step_by(PAGE) {
        // SAFETY: in bounds of the allocation, which is initialized; storing the zero already
        // there changes no value. Volatile, so that the compiler, which knows the allocation
        // is zeroed, keeps the store.
        unsafe { std::ptr::write_volatile(base.add(offset), 0) };
    }
    slots
}

impl KeyTable {
    pub fn len(&self) -> usize {
        self.used + usize::from(self.zero.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn home(&self, lo: u64) -> usize {
        ((lo as u128 * self.slots.len() as u128) >> 64) as usize
    }

    /// Makes room for `additional` more keys without growing on the way.
    pub fn reserve(&mut self, additional: usize) {
        let needed = self.len() + additional;
        if needed > self.limit {
            self.rebuild((needed as f64 / TARGET_LOAD).ceil() as usize);
        }
    }

    fn rebuild(&mut self, capacity: usize) {
        let old = std::mem::replace(&mut self.slots, zeroed_slots(capacity.max(8)));
        self.limit = (self.slots.len() as f64 * MAX_LOAD) as usize;
        self.used = 0;
        for s in old {
            if s[0] | s[1] != 0 {
                let i = self.vacant_slot(s[0], s[1]);
                self.slots[i] = s;
                self.used += 1;
            }
        }
    }

    /// The first empty slot of `key`'s probe run; the key must not be in the table.
    fn vacant_slot(&self, lo: u64, hi: u64) -> usize {
        let mut i = self.home(lo);
        loop {
            let s = &self.slots[i];
            if s[0] | s[1] == 0 {
                return i;
            }
            debug_assert!((s[0], s[1]) != (lo, hi));
            i += 1;
            if i == self.slots.len() {
                i = 0;
            }
        }
    }

    /// Starts fetching the cache line `key` is probed at first.
    #[inline]
    pub fn prefetch(&self, key: u128) {
        if !self.slots.is_empty() {
            prefetch(&self.slots[self.home(key as u64)]);
        }
    }

    /// The value of `key`, or None after inserting `value` for it.
    #[inline]
    pub fn get_or_insert(&mut self, key: u128, value: [u64; 2]) -> Option<&mut [u64; 2]> {
        if key == 0 {
            return match self.zero {
                Some(ref mut v) => Some(v),
                None => {
                    self.zero = Some(value);
                    None
                }
            };
        }
        if self.used >= self.limit {
            self.rebuild(self.slots.len() * 2);
        }
        let (lo, hi) = split(key);
        let mut i = self.home(lo);
        loop {
            let s = self.slots[i];
            if s[0] == lo && s[1] == hi {
                return self.slots[i].last_chunk_mut::<2>();
            }
            if s[0] | s[1] == 0 {
                self.slots[i] = [lo, hi, value[0], value[1]];
                self.used += 1;
                return None;
            }
            i += 1;
            if i == self.slots.len() {
                i = 0;
            }
        }
    }

    pub fn get(&self, key: u128) -> Option<[u64; 2]> {
        if key == 0 {
            return self.zero;
        }
        self.find(key).map(|i| [self.slots[i][2], self.slots[i][3]])
    }

    pub fn get_mut(&mut self, key: u128) -> Option<&mut [u64; 2]> {
        if key == 0 {
            return self.zero.as_mut();
        }
        let i = self.find(key)?;
        Some(self.slots[i].last_chunk_mut::<2>().expect("a slot holds a value"))
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&mut self, key: u128) -> bool {
        if key == 0 {
            return self.zero.take().is_some();
        }
        match self.find(key) {
            Some(i) => {
                self.remove_at(i);
                true
            }
            None => false,
        }
    }

    /// The slot of a key other than zero.
    fn find(&self, key: u128) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let (lo, hi) = split(key);
        let mut i = self.home(lo);
        loop {
            let s = &self.slots[i];
            if s[0] == lo && s[1] == hi {
                return Some(i);
            }
            if s[0] | s[1] == 0 {
                return None;
            }
            i += 1;
            if i == self.slots.len() {
                i = 0;
            }
        }
    }

    /// Keeps the entries `keep` accepts. Removal shifts later entries of the probe run back
    /// (Knuth's algorithm R), so lookups never meet a gap inside a run and no tombstones build up.
    pub fn retain(&mut self, mut keep: impl FnMut(u128, [u64; 2]) -> bool) {
        if self.zero.is_some_and(|v| !keep(0, v)) {
            self.zero = None;
        }
        let n = self.slots.len();
        for i in 0..n {
            // A removal may shift another entry into slot i: look at it again. An entry shifted
            // here from the table's start (a run that wraps) was kept already; asking again
            // gives the same answer.
            loop {
                let s = self.slots[i];
                if s[0] | s[1] == 0 || keep(s[0] as u128 | (s[1] as u128) << 64, [s[2], s[3]]) {
                    break;
                }
                self.remove_at(i);
            }
        }
    }

    fn remove_at(&mut self, mut hole: usize) {
        let n = self.slots.len();
        let mut j = hole;
        loop {
            j = if j + 1 == n { 0 } else { j + 1 };
            let s = self.slots[j];
            if s[0] | s[1] == 0 {
                break;
            }
            let home = self.home(s[0]);
            // The entry at j may move to the hole unless its home lies cyclically in (hole, j]:
            // then the hole is before its home and a lookup would never look there.
            let home_after_hole = if hole <= j { hole < home && home <= j } else { home > hole || home <= j };
            if !home_after_hole {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = [0; 4];
        self.used -= 1;
    }

    pub fn iter(&self) -> impl Iterator<Item = (u128, [u64; 2])> + '_ {
        self.zero
            .map(|v| (0, v))
            .into_iter()
            .chain(self.slots.iter().filter(|s| s[0] | s[1] != 0).map(|s| (s[0] as u128 | (s[1] as u128) << 64, [s[2], s[3]])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u128, u64),
        Get(u128),
        /// Removes keys whose value is below the threshold.
        RetainAtLeast(u64),
        Remove(u128),
        /// Adds to the key's value in place.
        Bump(u128, u64),
        Reserve(usize),
    }

    /// Few distinct keys, some with equal low words (same home slot), and zero: long runs,
    /// collisions, wrap-around at the table's end and the zero key are all exercised.
    fn key() -> impl Strategy<Value = u128> {
        prop_oneof![
            Just(0u128),
            (0u64..40).prop_map(|k| k as u128 * 0x9e37_79b9_7f4a_7c15),
            (0u64..8, 0u64..4).prop_map(|(lo, hi)| (hi as u128) << 64 | (u64::MAX - lo) as u128),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (key(), 0u64..100).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => key().prop_map(Op::Get),
            1 => (0u64..100).prop_map(Op::RetainAtLeast),
            2 => key().prop_map(Op::Remove),
            2 => (key(), 1u64..10).prop_map(|(k, d)| Op::Bump(k, d)),
            1 => (0usize..50).prop_map(Op::Reserve),
        ]
    }

    proptest! {
        /// The table behaves as a HashMap under any sequence of operations.
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec(op(), 1..300)) {
            let mut t = KeyTable::default();
            let mut m: HashMap<u128, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let got = t.get_or_insert(k, [v, !v]).map(|x| *x);
                        let want = m.get(&k).map(|&old| [old, !old]);
                        m.entry(k).or_insert(v);
                        prop_assert_eq!(got, want);
                    }
                    Op::Get(k) => prop_assert_eq!(t.get(k), m.get(&k).map(|&v| [v, !v])),
                    Op::RetainAtLeast(min) => {
                        t.retain(|_, v| v[0] >= min);
                        m.retain(|_, v| *v >= min);
                    }
                    Op::Reserve(n) => t.reserve(n),
                    Op::Remove(k) => prop_assert_eq!(t.remove(k), m.remove(&k).is_some()),
                    Op::Bump(k, d) => {
                        if let Some(v) = t.get_mut(k) {
                            *v = [v[0] + d, !(v[0] + d)];
                        }
                        if let Some(v) = m.get_mut(&k) {
                            *v += d;
                        }
                    }
                }
                prop_assert_eq!(t.len(), m.len());
            }
            for (&k, &v) in &m {
                prop_assert_eq!(t.get(k), Some([v, !v]));
            }
            let mut all: Vec<(u128, u64)> = t.iter().map(|(k, v)| (k, v[0])).collect();
            let mut want: Vec<(u128, u64)> = m.into_iter().collect();
            all.sort_unstable();
            want.sort_unstable();
            prop_assert_eq!(all, want);
        }
    }

    #[test]
    fn values_can_be_changed_in_place() {
        let mut t = KeyTable::default();
        assert_eq!(t.get_or_insert(7, [1, 2]), None);
        *t.get_or_insert(7, [9, 9]).expect("present") = [3, 4];
        assert_eq!(t.get(7), Some([3, 4]));
        assert_eq!(t.get(8), None);
    }

    #[test]
    fn a_reserved_table_does_not_grow_on_the_way() {
        let mut t = KeyTable::default();
        t.reserve(1000);
        let capacity = t.slots.len();
        for k in 1..=1000u128 {
            t.get_or_insert(k.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834), [0, 0]);
        }
        assert_eq!(t.slots.len(), capacity);
        assert_eq!(t.len(), 1000);
    }
}
