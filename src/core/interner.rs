//! Interned strings: the core keys windows by small integers and resolves names only when it
//! emits a record.
//!
//! A string is found by its xxh3-128 hash in a [`KeyTable`], as dedupe finds an event_id
//! (`dedupe.rs`): two distinct strings share a hash with probability about n²/2¹²⁹, below
//! 10⁻²⁵ for the millions of ids a key group holds. A general-purpose map compares the string
//! itself on every hit, behind a pointer to its own allocation: three cache misses per lookup
//! (control bytes, entry, string) instead of the table's one. Every batch of a backfill interns
//! each of its dictionaries' values anew (a file's dictionary is its own), ~2 million lookups for
//! the bench's 10 million rows, and the map's misses were 5 % of the CPU samples.

use std::sync::Arc;

use super::batch_view::ABSENT;
use super::key_table::KeyTable;
use super::prefetch::prefetch;

#[derive(Debug, Default)]
pub struct Interner {
    ids: KeyTable,
    names: Vec<Arc<str>>,
    /// The ids of `names[..by_name.len()]` in byte order of their strings, and each one's
    /// rank in that order (`ranks[id]`), as of the last [`Self::update_ranks`].
    by_name: Vec<u32>,
    ranks: Vec<u32>,
}

impl Interner {
    /// The key `s` is found by.
    pub fn key(s: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128(s.as_bytes())
    }

    pub fn intern(&mut self, s: &str) -> u32 {
        self.intern_keyed(Self::key(s), s)
    }

    /// [`Self::intern`] with `s`'s key computed already (see [`Self::prefetch`]).
    #[inline]
    pub fn intern_keyed(&mut self, key: u128, s: &str) -> u32 {
        debug_assert_eq!(key, Self::key(s));
        // Ids stay below ABSENT: it and u32::MAX (an empty window slot) are reserved.
        let next = u32::try_from(self.names.len()).ok().filter(|&n| n < ABSENT).expect("fewer than 2^32 - 2 distinct strings");
        match self.ids.get_or_insert(key, [u64::from(next), 0]) {
            Some(&mut [id, _]) => {
                debug_assert_eq!(&*self.names[id as usize], s, "xxh3-128 collision");
                id as u32
            }
            None => {
                self.names.push(Arc::from(s));
                next
            }
        }
    }

    /// Starts fetching where `key` will be looked up, so that a run of lookups overlaps its
    /// cache misses (see [`KeyTable::prefetch`]).
    #[inline]
    pub fn prefetch(&self, key: u128) {
        self.ids.prefetch(key);
    }

    pub fn name(&self, id: u32) -> &Arc<str> {
        &self.names[id as usize]
    }

    /// Starts fetching where `id`'s string is (its entry among the names). Writing records
    /// reads the names of ids in an order unrelated to their memory order, so each read was a
    /// cache miss; see [`Self::prefetch_bytes`]. Unknown ids (such as [`ABSENT`]) are ignored.
    #[inline]
    pub fn prefetch_entry(&self, id: u32) {
        if let Some(name) = self.names.get(id as usize) {
            prefetch(std::ptr::from_ref(name));
        }
    }

    /// Starts fetching `id`'s string itself. It reads the entry, so that should have been
    /// prefetched some time before ([`Self::prefetch_entry`]).
    #[inline]
    pub fn prefetch_bytes(&self, id: u32) {
        if let Some(name) = self.names.get(id as usize) {
            prefetch(name.as_ptr());
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Brings [`Self::ranks`] up to date with the strings interned since the last call.
    ///
    /// A backfill asks for ranks every hour it writes, and its interner has grown a little in
    /// between (a few new ads among tens of thousands of strings). Sorting every string anew
    /// each time was ~3 % of a default-mode backfill's CPU samples, so the sorted order is kept
    /// and only the strings added since the last call are sorted and placed into it by binary
    /// search.
    pub fn update_ranks(&mut self) {
        let names = &self.names;
        if self.by_name.len() < names.len() {
            let mut added: Vec<u32> = (self.by_name.len() as u32..names.len() as u32).collect();
            added.sort_unstable_by(|a, b| names[*a as usize].cmp(&names[*b as usize]));
            let sorted = std::mem::take(&mut self.by_name);
            let mut merged = Vec::with_capacity(names.len());
            let mut from = 0;
            for id in added {
                let name = &names[id as usize];
                // Interned strings are distinct: no ties.
                let at = from + sorted[from..].partition_point(|&s| names[s as usize] < *name);
                merged.extend_from_slice(&sorted[from..at]);
                merged.push(id);
                from = at;
            }
            merged.extend_from_slice(&sorted[from..]);
            self.by_name = merged;
            self.ranks.resize(self.by_name.len(), 0);
            for (rank, &id) in self.by_name.iter().enumerate() {
                self.ranks[id as usize] = rank as u32;
            }
        }
    }

    /// The rank of each id's string in byte order (`ranks()[id]`), as of the last
    /// [`Self::update_ranks`]: comparing ranks orders by name without touching the strings.
    pub fn ranks(&self) -> &[u32] {
        debug_assert_eq!(self.ranks.len(), self.names.len(), "ranks not updated since strings were interned");
        &self.ranks
    }

    /// Every string, in id order: interning them in this order again gives the same ids.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_order_ids_by_name() {
        let mut i = Interner::default();
        let ids: Vec<u32> = ["b", "a", "c", "ab"].iter().map(|s| i.intern(s)).collect();
        i.update_ranks();
        let r = i.ranks();
        assert_eq!([r[ids[1] as usize], r[ids[3] as usize], r[ids[0] as usize], r[ids[2] as usize]], [0, 1, 2, 3]);
    }

    proptest::proptest! {
        /// Strings interned in rounds, ranks asked for after each: the ranks are always those
        /// of sorting every string so far.
        #[test]
        fn ranks_asked_for_between_rounds_are_a_full_sort(rounds in proptest::collection::vec(proptest::collection::vec("[a-c]{0,4}", 0..20), 1..6)) {
            let mut i = Interner::default();
            for round in rounds {
                for s in &round {
                    i.intern(s);
                }
                let mut ids: Vec<u32> = (0..i.len() as u32).collect();
                ids.sort_by(|a, b| i.name(*a).cmp(i.name(*b)));
                let mut want = vec![0; ids.len()];
                for (rank, id) in ids.into_iter().enumerate() {
                    want[id as usize] = rank as u32;
                }
                i.update_ranks();
                proptest::prop_assert_eq!(i.ranks(), &want[..]);
            }
        }
    }

    #[test]
    fn the_same_string_has_one_id_and_ids_count_up() {
        let mut i = Interner::default();
        let words: Vec<String> = (0..10_000).map(|n| format!("ad-{n}")).collect();
        for (n, w) in words.iter().enumerate() {
            assert_eq!(i.intern(w), n as u32);
        }
        for (n, w) in words.iter().enumerate().rev() {
            assert_eq!(i.intern(w), n as u32);
            assert_eq!(&**i.name(n as u32), w.as_str());
        }
        assert_eq!(i.intern(""), 10_000);
        assert_eq!(i.len(), 10_001);
        assert!(i.names().eq(words.iter().map(String::as_str).chain([""])));
    }
}
