//! Keyed window state: tumbling event-time windows per (ad, region).
//!
//! Windows are grouped by start time so that firing and purging at a watermark touch only the
//! windows concerned. A window "fires" when the event-time watermark passes its end; until it
//! is purged (watermark past end + allowed lateness) late events still update it, and the
//! update is re-emitted under the same record_uuid.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use super::batch_view::ABSENT;
use super::dedupe::Position;

/// (ad id, region id), interned.
pub type WindowKey = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Acc {
    pub impressions: i64,
    pub clicks: i64,
    /// campaign_id/advertiser_id come from the earliest counted arrival that carried them, so
    /// the choice does not depend on delivery order.
    pub meta_pos: Position,
    pub campaign: u32,
    pub advertiser: u32,
    #[serde(skip)]
    dirty: bool,
}

impl Acc {
    fn new() -> Self {
        Self { impressions: 0, clicks: 0, meta_pos: (i64::MAX, i32::MAX, i64::MAX), campaign: ABSENT, advertiser: ABSENT, dirty: false }
    }
}

/// A window's state as emitted.
pub type WindowValue = (i64, WindowKey, Acc);

/// Windows by start, each start's windows in no particular order: what a purge removes, moved
/// out of the table as it is (no copy of millions of windows at the end of a backfill).
pub type WindowsByStart = BTreeMap<i64, FxHashMap<WindowKey, Acc>>;

#[derive(Debug, Default)]
pub struct WindowTable {
    by_start: BTreeMap<i64, FxHashMap<WindowKey, Acc>>,
    /// Every window starting before this has fired.
    fired_before: Option<i64>,
    dirty: Vec<(i64, WindowKey)>,
}

impl WindowTable {
    pub fn len(&self) -> usize {
        self.by_start.values().map(|m| m.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn add(&mut self, start: i64, key: WindowKey, click: bool, campaign: u32, advertiser: u32, pos: Position) {
        let acc = self.by_start.entry(start).or_default().entry(key).or_insert_with(Acc::new);
        if click {
            acc.clicks += 1;
        } else {
            acc.impressions += 1;
        }
        if (campaign != ABSENT || advertiser != ABSENT) && pos < acc.meta_pos {
            acc.meta_pos = pos;
            acc.campaign = campaign;
            acc.advertiser = advertiser;
        }
        if self.fired_before.is_some_and(|f| start < f) && !acc.dirty {
            acc.dirty = true;
            self.dirty.push((start, key));
        }
    }

    /// Fires windows starting before `limit` that have not fired; returns their values.
    pub fn fire_before(&mut self, limit: i64) -> Vec<WindowValue> {
        let from = self.fired_before.unwrap_or(i64::MIN);
        if limit <= from {
            return Vec::new();
        }
        self.fired_before = Some(limit);
        let mut out = Vec::new();
        for (start, m) in self.by_start.range(from..limit) {
            out.extend(m.iter().map(|(k, a)| (*start, *k, *a)));
        }
        out
    }

    /// Windows updated after they fired, since the last call.
    pub fn take_updates(&mut self) -> Vec<WindowValue> {
        let mut out = Vec::with_capacity(self.dirty.len());
        for (start, key) in self.dirty.drain(..) {
            if let Some(acc) = self.by_start.get_mut(&start).and_then(|m| m.get_mut(&key)) {
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
        let all = self.by_start.iter().flat_map(|(s, m)| m.iter().map(move |(k, a)| (*s, *k, *a))).collect();
        (all, self.fired_before)
    }

    pub fn restore(entries: Vec<WindowValue>, fired_before: Option<i64>) -> Self {
        let mut t = WindowTable { fired_before, ..Default::default() };
        for (s, k, a) in entries {
            t.by_start.entry(s).or_default().insert(k, Acc { dirty: false, ..a });
        }
        t
    }

    /// Removes and returns every window starting before `limit`.
    pub fn purge_before(&mut self, limit: i64) -> WindowsByStart {
        let keep = self.by_start.split_off(&limit);
        std::mem::replace(&mut self.by_start, keep)
    }
}
