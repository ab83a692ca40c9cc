//! Keyed window state: tumbling event-time windows per (ad, region).
//!
//! Windows are grouped by start time so that firing and purging at a watermark touch only the
//! windows concerned; each start's windows are a [`WindowMap`], whose slots can be prefetched.
//! A window "fires" when the event-time watermark passes its end; until it is purged
//! (watermark past end + allowed lateness) late events still update it, and the update is
//! re-emitted under the same record_uuid.

use std::collections::{BTreeMap, VecDeque};

use crate::core::batch_view::ABSENT;
use crate::core::dedupe::Position;
use super::window_map::WindowMap;

/// (ad id, region id), interned.
pub type WindowKey = (u32, u32);

/// One window's counts. 40 bytes: a backfill with `--complete` holds every window of its range
/// (millions) until the end, and on the VMs measured here every megabyte of state costs ~2 ms
/// of CPU just to be faulted in. Hence counts in `u32` (a window would need 4·10⁹ distinct
/// events of one ad in one minute to overflow; they saturate) and the position of the arrival
/// that set the metadata flattened into the struct instead of a padded tuple.
///
/// Checkpoints keep the wider layout (`AccWire`), so snapshots are unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "AccWire", into = "AccWire")]
pub struct Acc {
    impressions: u32,
    clicks: u32,
    /// campaign_id/advertiser_id come from the earliest counted arrival that carried them, so
    /// the choice does not depend on delivery order.
    pub campaign: u32,
    pub advertiser: u32,
    /// That arrival's [`Position`]: (ingest, partition, offset).
    meta_ingest: i64,
    meta_offset: i64,
    meta_partition: i32,
    dirty: bool,
}

/// [`Acc`] as checkpoints store it.
#[derive(serde::Serialize, serde::Deserialize)]
struct AccWire {
    impressions: i64,
    clicks: i64,
    meta_pos: Position,
    campaign: u32,
    advertiser: u32,
}

impl From<AccWire> for Acc {
    fn from(w: AccWire) -> Self {
        let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        let (meta_ingest, meta_partition, meta_offset) = w.meta_pos;
        Self {
            impressions: count(w.impressions),
            clicks: count(w.clicks),
            campaign: w.campaign,
            advertiser: w.advertiser,
            meta_ingest,
            meta_offset,
            meta_partition,
            dirty: false,
        }
    }
}

impl From<Acc> for AccWire {
    fn from(a: Acc) -> Self {
        Self { impressions: a.impressions(), clicks: a.clicks(), meta_pos: a.meta_pos(), campaign: a.campaign, advertiser: a.advertiser }
    }
}

impl Acc {
    pub(super) const fn new() -> Self {
        Self {
            impressions: 0,
            clicks: 0,
            campaign: ABSENT,
            advertiser: ABSENT,
            meta_ingest: i64::MAX,
            meta_offset: i64::MAX,
            meta_partition: i32::MAX,
            dirty: false,
        }
    }

    pub fn impressions(&self) -> i64 {
        self.impressions.into()
    }

    pub fn clicks(&self) -> i64 {
        self.clicks.into()
    }

    pub fn meta_pos(&self) -> Position {
        (self.meta_ingest, self.meta_partition, self.meta_offset)
    }
}

/// A window's state as emitted.
pub type WindowValue = (i64, WindowKey, Acc);

/// Windows by start, each start's windows in no particular order: what a purge removes, moved
/// out of the table as it is (no copy of millions of windows at the end of a backfill).
pub type WindowsByStart = BTreeMap<i64, WindowMap>;

/// How many windows the starts' maps hold together.
pub fn window_count<'a>(starts: impl IntoIterator<Item = &'a WindowMap>) -> usize {
    starts.into_iter().map(|m| m.len()).sum()
}

/// A counted event, as the window table takes it: its window, whether a click, and the
/// campaign, advertiser and arrival position that may become the window's metadata.
#[derive(Debug, Clone, Copy)]
pub struct Counted {
    pub start: i64,
    pub key: WindowKey,
    pub click: bool,
    pub campaign: u32,
    pub advertiser: u32,
    pub pos: Position,
}

/// Events counted per run of [`WindowTable::add_all`], whose windows' slots are prefetched
/// one run ahead.
const RUN: usize = 16;

/// The open starts' maps in start order, in one deque. Consecutive events mostly share their
/// start or go to a neighbouring one, so a lookup first tries the position it is given (the
/// last one found) and its neighbours, and only then searches. In a BTreeMap every change of
/// start was a search from the root: ~1 % of a backfill's CPU samples between the prefetch and
/// the count.
#[derive(Debug, Default)]
struct Starts(VecDeque<(i64, WindowMap)>);

impl Starts {
    /// Where `start` is (Ok) or would go (Err), looked for at `near` and its neighbours first.
    #[inline]
    fn find(&self, start: i64, near: usize) -> Result<usize, usize> {
        for i in [near, near.wrapping_add(1), near.wrapping_sub(1)] {
            if self.0.get(i).is_some_and(|(s, _)| *s == start) {
                return Ok(i);
            }
        }
        self.0.binary_search_by_key(&start, |(s, _)| *s)
    }

    fn get_mut(&mut self, start: i64) -> Option<&mut WindowMap> {
        let i = self.find(start, 0).ok()?;
        Some(&mut self.0[i].1)
    }

    /// The position of `start`'s map, a new one (holding `capacity(the maps before it)`
    /// windows) inserted if it has none.
    fn position_or_insert(&mut self, start: i64, near: usize, capacity: impl FnOnce(&Self, usize) -> usize) -> usize {
        match self.find(start, near) {
            Ok(i) => i,
            Err(i) => {
                let map = WindowMap::with_capacity(capacity(self, i));
                self.0.insert(i, (start, map));
                i
            }
        }
    }

    /// The maps of starts in `from..limit`.
    fn range(&self, from: i64, limit: i64) -> impl Iterator<Item = &(i64, WindowMap)> {
        let lo = self.0.partition_point(|(s, _)| *s < from);
        let hi = self.0.partition_point(|(s, _)| *s < limit).max(lo);
        self.0.range(lo..hi)
    }
}

#[derive(Debug, Default)]
pub struct WindowTable {
    by_start: Starts,
    /// Every window starting before this has fired.
    fired_before: Option<i64>,
    dirty: Vec<(i64, WindowKey)>,
}

impl WindowTable {
    pub fn len(&self) -> usize {
        window_count(self.by_start.0.iter().map(|(_, m)| m))
    }

    pub fn is_empty(&self) -> bool {
        self.by_start.0.is_empty()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn add(&mut self, start: i64, key: WindowKey, click: bool, campaign: u32, advertiser: u32, pos: Position) {
        self.count(&[Counted { start, key, click, campaign, advertiser, pos }]);
    }

    /// Adds counted events in turn, as [`Self::add`] each, a run of `RUN` (16) at a time: the
    /// slots of the next run's windows are prefetched before this run's are counted, so that
    /// their cache misses overlap instead of each count waiting for its own.
    pub fn add_all(&mut self, events: impl IntoIterator<Item = Counted>) {
        let mut events = events.into_iter().fuse();
        let mut run = Vec::with_capacity(RUN);
        let mut ahead: Vec<Counted> = events.by_ref().take(RUN).collect();
        self.prefetch(&ahead);
        while !ahead.is_empty() {
            std::mem::swap(&mut run, &mut ahead);
            ahead.clear();
            ahead.extend(events.by_ref().take(RUN));
            self.prefetch(&ahead);
            self.count(&run);
        }
    }

    /// Prefetches the slots of windows that exist (a new one has no slot yet).
    fn prefetch(&self, events: &[Counted]) {
        let mut map: Option<(i64, Option<&WindowMap>)> = None;
        let mut near = 0;
        for e in events {
            if map.is_none_or(|(start, _)| start != e.start) {
                let found = self.by_start.find(e.start, near).ok();
                near = found.unwrap_or(near);
                map = Some((e.start, found.map(|i| &self.by_start.0[i].1)));
            }
            if let Some((_, Some(m))) = map {
                m.prefetch(e.key);
            }
        }
    }

    /// A start's windows are looked up only when the start changes: consecutive events mostly
    /// share their minute (86 % of the bench's rows), and the search per event was ~30 % of the
    /// samples of the loop that adds them.
    fn count(&mut self, events: &[Counted]) {
        let mut current: Option<(i64, &mut WindowMap)> = None;
        let mut near = 0;
        for &Counted { start, key, click, campaign, advertiser, pos } in events {
            if current.as_ref().is_none_or(|c| c.0 != start) {
                // A new start gets as many windows at once as the fullest of the four before it
                // has: grown by doubling instead, the maps' rehashing was 1.4 % of a backfill's
                // CPU samples.
                let capacity = |s: &Starts, at: usize| s.0.range(at.saturating_sub(4)..at).map(|(_, m)| m.len()).max().unwrap_or(0);
                near = self.by_start.position_or_insert(start, near, capacity);
                current = Some((start, &mut self.by_start.0[near].1));
            }
            let windows = &mut current.as_mut().expect("set above").1;
            let acc = windows.get_or_new(key);
            if click {
                acc.clicks = acc.clicks.saturating_add(1);
            } else {
                acc.impressions = acc.impressions.saturating_add(1);
            }
            if (campaign != ABSENT || advertiser != ABSENT) && pos < acc.meta_pos() {
                (acc.meta_ingest, acc.meta_partition, acc.meta_offset) = pos;
                acc.campaign = campaign;
                acc.advertiser = advertiser;
            }
            if self.fired_before.is_some_and(|f| start < f) && !acc.dirty {
                acc.dirty = true;
                self.dirty.push((start, key));
            }
        }
    }

    /// Fires windows starting before `limit` that have not fired; returns their values.
    pub fn fire_before(&mut self, limit: i64) -> Vec<WindowValue> {
        let from = self.fired_before.unwrap_or(i64::MIN);
        if limit <= from {
            return Vec::new();
        }
        self.fired_before = Some(limit);
        // Sized first: a backlog fires hundreds of starts at once, and growing by doubling
        // copies into fresh memory each time.
        let mut out = Vec::with_capacity(window_count(self.by_start.range(from, limit).map(|(_, m)| m)));
        for (start, m) in self.by_start.range(from, limit) {
            out.extend(m.iter().map(|(k, a)| (*start, *k, *a)));
        }
        out
    }

    /// Windows updated after they fired, since the last call.
    pub fn take_updates(&mut self) -> Vec<WindowValue> {
        let mut out = Vec::with_capacity(self.dirty.len());
        for (start, key) in self.dirty.drain(..) {
            if let Some(acc) = self.by_start.get_mut(start).and_then(|m| m.get_mut(&key)) {
                acc.dirty = false;
                out.push((start, key, *acc));
            }
        }
        out
    }

    /// Every open window and the firing frontier, for snapshots. Taken between epochs, when no
    /// update is pending.
    pub fn entries(&self) -> (Vec<WindowValue>, Option<i64>) {
        debug_assert!(self.dirty.is_empty(), "snapshot with unemitted updates");
        let all = self.by_start.0.iter().flat_map(|(s, m)| m.iter().map(move |(k, a)| (*s, *k, *a))).collect();
        (all, self.fired_before)
    }

    pub fn restore(entries: Vec<WindowValue>, fired_before: Option<i64>) -> Self {
        let mut t = WindowTable { fired_before, ..Default::default() };
        // A snapshot lists its windows start by start, so the last position is the place to
        // look first.
        let mut at = 0;
        for (s, k, a) in entries {
            at = t.by_start.position_or_insert(s, at, |_, _| 0);
            t.by_start.0[at].1.insert(k, Acc { dirty: false, ..a });
        }
        t
    }

    /// Removes and returns every window starting before `limit`.
    pub fn purge_before(&mut self, limit: i64) -> WindowsByStart {
        let n = self.by_start.0.partition_point(|(s, _)| *s < limit);
        self.by_start.0.drain(..n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_small() {
        assert_eq!(std::mem::size_of::<Acc>(), 40);
    }

    fn counted() -> impl proptest::strategy::Strategy<Value = Counted> {
        use proptest::prelude::*;
        let id = prop_oneof![Just(ABSENT), 0u32..3];
        (0i64..4, 0u32..3, any::<bool>(), id.clone(), id, (0i64..5, 0i32..2, 0i64..5)).prop_map(
            |(minute, ad, click, campaign, advertiser, pos)| Counted {
                start: minute * 60_000,
                key: (ad, 0),
                click,
                campaign,
                advertiser,
                pos,
            },
        )
    }

    fn sorted(mut v: Vec<WindowValue>) -> Vec<WindowValue> {
        v.sort_by_key(|(s, k, _)| (*s, *k));
        v
    }

    proptest::proptest! {
        /// A batch keeps its current minute's windows at hand; the result, including updates
        /// to windows that fired, is what adding the events one at a time gives.
        #[test]
        fn a_batch_adds_as_its_events_one_by_one(
            before in proptest::collection::vec(counted(), 0..20),
            batch in proptest::collection::vec(counted(), 0..60),
            fire in 0i64..5,
        ) {
            let (mut one, mut all) = (WindowTable::default(), WindowTable::default());
            for t in [&mut one, &mut all] {
                t.add_all(before.iter().copied());
                t.fire_before(fire * 60_000);
            }
            for e in &batch {
                one.add(e.start, e.key, e.click, e.campaign, e.advertiser, e.pos);
            }
            all.add_all(batch.iter().copied());
            proptest::prop_assert_eq!(sorted(one.take_updates()), sorted(all.take_updates()));
            proptest::prop_assert_eq!(sorted(one.entries().0), sorted(all.entries().0));
        }
    }

    /// Checkpoints written before the compact layout restore unchanged, and new ones are
    /// byte for byte what the wide layout wrote.
    #[test]
    fn checkpoints_keep_the_wide_layout() {
        #[derive(serde::Serialize)]
        struct Wide {
            impressions: i64,
            clicks: i64,
            meta_pos: Position,
            campaign: u32,
            advertiser: u32,
        }
        let mut t = WindowTable::default();
        t.add(60_000, (1, 2), false, 7, ABSENT, (5_000, 3, 42));
        t.add(60_000, (1, 2), true, 8, 9, (4_000, 1, 7));
        t.add(60_000, (1, 2), false, ABSENT, ABSENT, (1_000, 0, 1));
        let (entries, _) = t.entries();
        let acc = entries[0].2;
        let wide = Wide { impressions: 2, clicks: 1, meta_pos: (4_000, 1, 7), campaign: 8, advertiser: 9 };
        let bytes = postcard::to_stdvec(&acc).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&wide).unwrap());
        assert_eq!(postcard::from_bytes::<Acc>(&bytes).unwrap(), acc);
    }
}
