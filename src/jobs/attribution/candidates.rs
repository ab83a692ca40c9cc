//! Keyed state of candidate ad events: per eater and store (`user_id`, `store_id`), the first
//! valid arrival of each event, kept as long as an order could still match it.
//!
//! Dedupe is per (user, store, event_id): the first valid arrival, in (ingest time, partition,
//! offset) order, of an event at a user and store is the candidate; a later one is a duplicate
//! while that candidate lives. State is partitioned by (user, store), so this is dedupe by
//! event_id for every real client retry (which repeats its user and store), and a message that
//! reuses an event_id for another user or store is another event at every parallelism, as the
//! aggregation job keys its dedupe by ad (docs/attribution.md).
//!
//! A candidate of event time `t` can match an order only if the order's `order_time` is in
//! `[t, t + window)` (the click or the impression window); an order not yet decided was
//! ingested at or after `W − join_wait` (W the ingest watermark), so its order_time is at least
//! `W − join_wait − max_past` (validity). So a candidate *lives* until
//! `t + window + max_past + join_wait` and is dropped once the watermark passes that. An
//! arrival ingested at or after that is a new candidate, whatever the state holds: the rule is
//! the arrival's own, so when the state is collected cannot change it. Client retries come
//! seconds to minutes after their event (contract §1), long before.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// A candidate ad event. Ad, campaign and advertiser are interned ids (`batch_view::ABSENT`
/// for none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub event_id: Box<str>,
    pub event_time: i64,
    pub ingest: i64,
    pub click: bool,
    pub ad: u32,
    pub campaign: u32,
    pub advertiser: u32,
}

/// How long candidates live, from the job's rules.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub click_window_ms: i64,
    pub impression_window_ms: i64,
    /// An undecided order's earliest possible order_time trails the watermark by this much
    /// (the orders' max_past plus the join wait).
    pub order_lag_ms: i64,
}

impl Lifetimes {
    fn window(&self, click: bool) -> i64 {
        if click {
            self.click_window_ms
        } else {
            self.impression_window_ms
        }
    }

    /// The watermark at which `c` can match no order any more.
    pub fn expires_at(&self, c: &Candidate) -> i64 {
        c.event_time.saturating_add(self.window(c.click)).saturating_add(self.order_lag_ms)
    }
}

#[derive(Debug, Clone, Default)]
struct Pair {
    candidates: Vec<Candidate>,
    /// The earliest expiry among them: the pair's entry in [`CandidateStore::expiry`].
    earliest: i64,
}

/// The candidates of one key group.
#[derive(Debug, Clone)]
pub struct CandidateStore {
    lifetimes: Lifetimes,
    pairs: HashMap<u128, Pair>,
    /// (earliest expiry, pair) of every pair.
    expiry: BTreeSet<(i64, u128)>,
    len: usize,
}

/// The best candidate for an order, by the match rule of contract §5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'a> {
    pub candidate: &'a Candidate,
}

impl CandidateStore {
    pub fn new(lifetimes: Lifetimes) -> Self {
        Self { lifetimes, pairs: HashMap::new(), expiry: BTreeSet::new(), len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds an arrival of `pair`, unless an earlier arrival of its event is a candidate there
    /// that lives at its ingest time: whether it was added. Arrivals must come in (ingest
    /// time, partition, offset) order.
    pub fn add(&mut self, pair: u128, c: Candidate) -> bool {
        let expires = self.lifetimes.expires_at(&c);
        let lifetimes = self.lifetimes;
        let p = self.pairs.entry(pair).or_insert_with(|| Pair { candidates: Vec::new(), earliest: i64::MAX });
        if p.candidates.iter().any(|x| x.event_id == c.event_id && lifetimes.expires_at(x) > c.ingest) {
            return false;
        }
        p.candidates.push(c);
        if expires < p.earliest {
            if p.earliest != i64::MAX {
                self.expiry.remove(&(p.earliest, pair));
            }
            p.earliest = expires;
            self.expiry.insert((expires, pair));
        }
        self.len += 1;
        true
    }

    /// Drops the candidates that can match no order at ingest watermark `w` or later.
    pub fn expire(&mut self, w: i64) {
        while let Some(&(at, pair)) = self.expiry.first() {
            if at > w {
                break;
            }
            self.expiry.pop_first();
            let p = self.pairs.get_mut(&pair).expect("an expiry entry names a pair");
            let before = p.candidates.len();
            let lifetimes = self.lifetimes;
            p.candidates.retain(|c| lifetimes.expires_at(c) > w);
            self.len -= before - p.candidates.len();
            match p.candidates.iter().map(|c| lifetimes.expires_at(c)).min() {
                Some(next) => {
                    p.earliest = next;
                    self.expiry.insert((next, pair));
                }
                None => {
                    self.pairs.remove(&pair);
                }
            }
        }
    }

    /// The candidate an order of `pair` placed at `order_time` and ingested so that only
    /// events ingested before `ingested_before` count: the latest click within the click
    /// window before the order, else the latest impression within the impression window;
    /// ties to the smallest event_id.
    pub fn best(&self, pair: u128, order_time: i64, ingested_before: i64) -> Option<&Candidate> {
        let p = self.pairs.get(&pair)?;
        let pick = |click: bool| {
            let window = self.lifetimes.window(click);
            p.candidates
                .iter()
                .filter(|c| {
                    c.click == click && c.ingest < ingested_before && c.event_time <= order_time && c.event_time > order_time.saturating_sub(window)
                })
                .max_by(|a, b| a.event_time.cmp(&b.event_time).then_with(|| b.event_id.cmp(&a.event_id)))
        };
        pick(true).or_else(|| pick(false))
    }

    /// Every pair's candidates, for a snapshot (in no particular order).
    pub fn entries(&self) -> Vec<(u128, Vec<Candidate>)> {
        let mut out: Vec<(u128, Vec<Candidate>)> = self.pairs.iter().map(|(k, p)| (*k, p.candidates.clone())).collect();
        out.sort_unstable_by_key(|(k, _)| *k);
        out
    }

    pub fn restore(lifetimes: Lifetimes, entries: Vec<(u128, Vec<Candidate>)>) -> Self {
        let mut s = Self::new(lifetimes);
        for (pair, candidates) in entries {
            for c in candidates {
                s.add(pair, c);
            }
        }
        s
    }

    /// A bound on the snapshot's encoded size.
    pub fn encoded_len_bound(&self) -> usize {
        self.pairs.values().flat_map(|p| &p.candidates).map(|c| c.event_id.len() + 60).sum::<usize>() + self.pairs.len() * 30
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn store() -> CandidateStore {
        CandidateStore::new(Lifetimes { click_window_ms: 7 * DAY, impression_window_ms: DAY, order_lag_ms: 7 * DAY + 60_000 })
    }

    fn c(id: &str, event_time: i64, click: bool) -> Candidate {
        Candidate { event_id: id.into(), event_time, ingest: event_time, click, ad: 1, campaign: 2, advertiser: 3 }
    }

    #[test]
    fn a_click_beats_a_later_impression_and_ties_go_to_the_smallest_event_id() {
        let mut s = store();
        assert!(s.add(7, c("b", 100, true)));
        assert!(s.add(7, c("a", 100, true)));
        assert!(s.add(7, c("z", 150, false)));
        assert!(!s.add(7, c("a", 120, true)), "a later arrival of an event is no candidate");
        // Once the candidate's life is over, an arrival of its id is a new event.
        let lag = 7 * DAY + 60_000;
        assert!(!s.add(7, Candidate { ingest: 100 + 7 * DAY + lag - 1, ..c("a", 100 + 7 * DAY, true) }));
        let mut fresh = store();
        fresh.add(7, c("a", 100, true));
        assert!(fresh.add(7, Candidate { ingest: 100 + 7 * DAY + lag, ..c("a", 100 + 7 * DAY, true) }));
        assert_eq!(s.len(), 3);
        assert_eq!(&*s.best(7, 200, i64::MAX).unwrap().event_id, "a");
        // Only the impression is ingested in time: it wins.
        let mut late_clicks = store();
        late_clicks.add(7, Candidate { ingest: 500, ..c("a", 100, true) });
        late_clicks.add(7, c("z", 150, false));
        assert_eq!(&*late_clicks.best(7, 200, 300).unwrap().event_id, "z");
        // Another pair, or an order before the events, matches nothing.
        assert!(s.best(8, 200, i64::MAX).is_none());
        assert!(s.best(7, 99, i64::MAX).is_none());
        // An event at the order's own time counts; one a window before it does not.
        assert_eq!(&*s.best(7, 100, i64::MAX).unwrap().event_id, "a");
        assert!(s.best(7, 100 + 7 * DAY, i64::MAX).is_none());
        assert_eq!(&*s.best(7, 99 + 7 * DAY, i64::MAX).unwrap().event_id, "a");
    }

    #[test]
    fn candidates_expire_per_type_and_a_restore_keeps_them() {
        let mut s = store();
        s.add(1, c("click", 0, true));
        s.add(1, c("imp", 0, false));
        s.add(2, c("imp2", 10, false));
        let lag = 7 * DAY + 60_000;
        s.expire(DAY + lag - 1);
        assert_eq!(s.len(), 3);
        s.expire(DAY + lag);
        assert_eq!(s.len(), 2, "the impression of pair 1 is gone");
        let restored = CandidateStore::restore(s.lifetimes, s.entries());
        assert_eq!(restored.entries(), s.entries());
        s.expire(DAY + lag + 10);
        assert_eq!(s.entries(), vec![(1, vec![c("click", 0, true)])]);
        s.expire(7 * DAY + lag);
        assert!(s.is_empty() && s.entries().is_empty());
    }
}
