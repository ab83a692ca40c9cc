//! One window start's windows: a hash table from (ad, region) to [`Acc`] that can be asked to
//! prefetch a key's slot.
//!
//! Counting an event is one lookup in the table of its minute, and nearly every lookup is a
//! cache miss: a `--complete` backfill holds millions of windows, each counted ~3 times, and
//! a window's second event comes after many others. A general-purpose map waits for each miss
//! in turn; [`WindowTable::add_all`](super::windows::WindowTable::add_all) names the key it
//! will count some events ahead, so that their misses overlap (as the dedupe does with
//! [`KeyTable`](crate::core::key_table::KeyTable)).
//!
//! Open addressing with linear probing, a power-of-two number of 48-byte slots, the home slot
//! from the top bits of the key times a large odd constant (the ids are small dense integers,
//! and multiplication carries their low bits up). A slot whose region is `EMPTY` (u32::MAX)
//! is empty: the interner hands out ids below [`ABSENT`](crate::core::batch_view::ABSENT), one
//! below it.

use crate::core::prefetch::prefetch;
use super::windows::{Acc, WindowKey};

/// The region of an empty slot.
const EMPTY: u32 = u32::MAX;
/// Grows past this load (in eighths): linear probing's runs lengthen quickly above it.
const MAX_LOAD_EIGHTHS: usize = 6;

/// A slot: a window, or empty when its region is `EMPTY`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub key: WindowKey,
    pub acc: Acc,
}

const VACANT: Window = Window { key: (0, EMPTY), acc: Acc::new() };

impl Window {
    /// Whether this slot holds no window.
    #[inline]
    fn is_vacant(&self) -> bool {
        self.key.1 == EMPTY
    }
}

#[derive(Debug, Clone, Default)]
pub struct WindowMap {
    /// Empty (no allocation) or a power of two long, at least 8.
    slots: Vec<Window>,
    used: usize,
}

#[inline]
fn hash(key: WindowKey) -> u64 {
    ((u64::from(key.0) << 32) | u64::from(key.1)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl WindowMap {
    /// A table that holds `n` windows without growing.
    pub fn with_capacity(n: usize) -> Self {
        let mut m = Self::default();
        if n > 0 {
            m.slots = vec![VACANT; slots_for(n)];
        }
        m
    }

    pub fn len(&self) -> usize {
        self.used
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// The top bits of the key's hash, as many as index the slots (of which there are some).
    #[inline]
    fn home(&self, key: WindowKey) -> usize {
        debug_assert!(self.slots.len() >= 8);
        (hash(key) >> (64 - self.slots.len().trailing_zeros())) as usize
    }

    /// Asks the CPU to fetch `key`'s home slot (both of its cache lines) ahead of a lookup. A
    /// hint only: nothing is read, so a stale or empty table costs nothing but the hint.
    #[inline]
    pub fn prefetch(&self, key: WindowKey) {
        if !self.slots.is_empty() {
            let p = self.slots.as_ptr().wrapping_add(self.home(key)).cast::<u8>();
            prefetch(p);
            prefetch(p.wrapping_add(size_of::<Window>() - 1));
        }
    }

    /// The slot holding `key`, or the empty slot where it would go.
    #[inline]
    fn find(&self, key: WindowKey) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let slot = &self.slots[i];
            if slot.key == key || slot.is_vacant() {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    /// `key`'s window, a new one if it has none.
    #[inline]
    pub fn get_or_new(&mut self, key: WindowKey) -> &mut Acc {
        debug_assert!(key.1 != EMPTY, "an interned region is never u32::MAX");
        if (self.used + 1) * 8 > self.slots.len() * MAX_LOAD_EIGHTHS {
            self.grow();
        }
        let i = self.find(key);
        let slot = &mut self.slots[i];
        if slot.is_vacant() {
            *slot = Window { key, acc: Acc::new() };
            self.used += 1;
        }
        &mut slot.acc
    }

    pub fn get_mut(&mut self, key: &WindowKey) -> Option<&mut Acc> {
        if self.slots.is_empty() {
            return None;
        }
        let i = self.find(*key);
        let slot = &mut self.slots[i];
        (!slot.is_vacant()).then_some(&mut slot.acc)
    }

    /// Sets `key`'s window to `acc`, replacing any it had.
    pub fn insert(&mut self, key: WindowKey, acc: Acc) {
        *self.get_or_new(key) = acc;
    }

    pub fn iter(&self) -> Iter<'_> {
        self.slots.iter().filter_map(|s| (!s.is_vacant()).then_some((&s.key, &s.acc)))
    }

    /// The windows, in slot order, as a dense vector: the slots moved down over the empty ones
    /// without a branch per slot (whether a slot is empty is a coin toss at this load, and
    /// mispredicting it cost more than the moves).
    pub fn into_windows(mut self) -> Vec<Window> {
        let mut n = 0;
        for i in 0..self.slots.len() {
            let s = self.slots[i];
            self.slots[n] = s;
            n += usize::from(!s.is_vacant());
        }
        self.slots.truncate(n);
        self.slots
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        let larger = vec![VACANT; (self.slots.len() * 2).max(8)];
        let old = std::mem::replace(&mut self.slots, larger);
        // The keys are distinct, so each one's `find` is the empty slot where it goes.
        for w in old.into_iter().filter(|w| !w.is_vacant()) {
            let i = self.find(w.key);
            self.slots[i] = w;
        }
    }
}

/// Slots for `n` windows: a power of two at most [`MAX_LOAD_EIGHTHS`] full.
fn slots_for(n: usize) -> usize {
    (n * 8).div_ceil(MAX_LOAD_EIGHTHS).next_power_of_two().max(8)
}

impl Extend<(WindowKey, Acc)> for WindowMap {
    fn extend<I: IntoIterator<Item = (WindowKey, Acc)>>(&mut self, iter: I) {
        for (k, a) in iter {
            self.insert(k, a);
        }
    }
}

impl IntoIterator for WindowMap {
    type Item = (WindowKey, Acc);
    type IntoIter = std::iter::FilterMap<std::vec::IntoIter<Window>, fn(Window) -> Option<(WindowKey, Acc)>>;

    fn into_iter(self) -> Self::IntoIter {
        self.slots.into_iter().filter_map(|s| (!s.is_vacant()).then_some((s.key, s.acc)))
    }
}

pub type Iter<'a> = std::iter::FilterMap<std::slice::Iter<'a, Window>, fn(&'a Window) -> Option<(&'a WindowKey, &'a Acc)>>;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Counts into the window (here: sets its campaign), creating it if absent.
        Count(WindowKey, u32),
        Insert(WindowKey, u32),
        Get(WindowKey),
        Prefetch(WindowKey),
    }

    fn key() -> impl Strategy<Value = WindowKey> {
        // Few distinct keys, so that probe runs collide and wrap, and ids up to the largest
        // reserved one.
        (prop_oneof![0u32..40, Just(u32::MAX - 2)], prop_oneof![0u32..3, Just(u32::MAX - 1)])
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (key(), any::<u32>()).prop_map(|(k, v)| Op::Count(k, v)),
            (key(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            key().prop_map(Op::Get),
            key().prop_map(Op::Prefetch),
        ]
    }

    fn with_campaign(campaign: u32) -> Acc {
        let mut acc = Acc::new();
        acc.campaign = campaign;
        acc
    }

    fn sorted(mut v: Vec<(WindowKey, u32)>) -> Vec<(WindowKey, u32)> {
        v.sort_unstable();
        v
    }

    proptest! {
        /// Whatever the starting capacity and however the table grows, it holds what a
        /// `HashMap` given the same operations holds.
        #[test]
        fn it_is_a_map(capacity in 0usize..20, ops in proptest::collection::vec(op(), 0..300)) {
            let mut m = WindowMap::with_capacity(capacity);
            let mut model: HashMap<WindowKey, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Count(k, v) => {
                        let acc = m.get_or_new(k);
                        let had = model.contains_key(&k);
                        prop_assert_eq!(acc.campaign, if had { model[&k] } else { ABSENT_CAMPAIGN });
                        acc.campaign = v;
                        model.insert(k, v);
                    }
                    Op::Insert(k, v) => {
                        m.insert(k, with_campaign(v));
                        model.insert(k, v);
                    }
                    Op::Get(k) => prop_assert_eq!(m.get_mut(&k).map(|a| a.campaign), model.get(&k).copied()),
                    Op::Prefetch(k) => m.prefetch(k),
                }
                prop_assert_eq!(m.len(), model.len());
            }
            let expected = sorted(model.into_iter().collect());
            prop_assert_eq!(sorted(m.iter().map(|(k, a)| (*k, a.campaign)).collect()), expected.clone());
            prop_assert_eq!(sorted(m.clone().into_iter().map(|(k, a)| (k, a.campaign)).collect()), expected.clone());
            prop_assert_eq!(sorted(m.into_windows().into_iter().map(|w| (w.key, w.acc.campaign)).collect()), expected);
        }
    }

    /// What a new window's campaign is before any event sets it.
    const ABSENT_CAMPAIGN: u32 = crate::core::batch_view::ABSENT;

    #[test]
    fn a_window_is_one_slot_of_48_bytes() {
        assert_eq!(size_of::<Window>(), 48);
    }

    #[test]
    fn a_reserved_table_holds_its_windows_without_growing() {
        for n in [1, 7, 100, 1215, 5000] {
            let mut m = WindowMap::with_capacity(n);
            let slots = m.slots.len();
            for ad in 0..n as u32 {
                m.get_or_new((ad, 0));
            }
            assert_eq!((m.len(), m.slots.len()), (n, slots), "{n} windows");
        }
    }
}
