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

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::candidate::Candidate;
use super::candidate_snapshot::CandidateSnapshot;
use super::event_id::EventId;

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
    /// Most pairs (an eater at a store) hold one candidate: it is kept in place, without a
    /// heap allocation of its own.
    candidates: SmallVec<[Candidate; 1]>,
    /// The earliest expiry among them; the pair is listed in that one's bucket of
    /// [`CandidateStore::expiry`].
    earliest: i64,
}

/// Width of an expiry bucket. Expiry is checked per bucket of pairs rather than per pair in an
/// ordered set: adding a pair is a push, not a tree insert (a tenth of the stream job's time
/// went to the set's upkeep).
const BUCKET_MS: i64 = 60_000;

fn bucket(t: i64) -> i64 {
    t.div_euclid(BUCKET_MS)
}

/// The candidates of one key group.
#[derive(Debug, Clone)]
pub struct CandidateStore {
    lifetimes: Lifetimes,
    pairs: FxHashMap<u128, Pair>,
    /// Pairs by the bucket of their earliest expiry. A pair whose earliest expiry moved to an
    /// earlier bucket is listed in both; the later entry is skipped when its bucket is due.
    expiry: BTreeMap<i64, Vec<u128>>,
    len: usize,
    /// Bytes of the ids kept as text, for the snapshot's size bound.
    text_bytes: usize,
}

impl CandidateStore {
    pub fn new(lifetimes: Lifetimes) -> Self {
        Self { lifetimes, pairs: FxHashMap::default(), expiry: BTreeMap::new(), len: 0, text_bytes: 0 }
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
        let p = self.pairs.entry(pair).or_insert_with(|| Pair { candidates: SmallVec::new(), earliest: i64::MAX });
        if p.candidates.iter().any(|x| x.event_id == c.event_id && lifetimes.expires_at(x) > c.ingest) {
            return false;
        }
        if let EventId::Text(t) = &c.event_id {
            self.text_bytes += t.len();
        }
        p.candidates.push(c);
        if expires < p.earliest {
            let listed = p.earliest != i64::MAX && bucket(p.earliest) == bucket(expires);
            p.earliest = expires;
            if !listed {
                self.expiry.entry(bucket(expires)).or_default().push(pair);
            }
        }
        self.len += 1;
        true
    }

    /// Drops the candidates that can match no order at ingest watermark `w` or later.
    pub fn expire(&mut self, w: i64) {
        let lifetimes = self.lifetimes;
        // Pairs with candidates left that expire later in the bucket of `w`: listed there
        // again once the due buckets are done.
        let mut keep = Vec::new();
        while let Some(entry) = self.expiry.first_entry() {
            let b = *entry.key();
            if b > bucket(w) {
                break;
            }
            for pair in entry.remove() {
                let Some(p) = self.pairs.get_mut(&pair) else { continue };
                if bucket(p.earliest) != b || p.earliest > w {
                    if bucket(p.earliest) == b {
                        keep.push(pair);
                    }
                    // Else a stale entry: the pair is listed in its earliest's bucket too.
                    continue;
                }
                let before = p.candidates.len();
                let mut text_bytes = 0;
                p.candidates.retain(|c| {
                    let alive = lifetimes.expires_at(c) > w;
                    if let (false, EventId::Text(t)) = (alive, &c.event_id) {
                        text_bytes += t.len();
                    }
                    alive
                });
                self.len -= before - p.candidates.len();
                self.text_bytes -= text_bytes;
                match p.candidates.iter().map(|c| lifetimes.expires_at(c)).min() {
                    Some(next) => {
                        p.earliest = next;
                        if bucket(next) == b {
                            keep.push(pair);
                        } else {
                            self.expiry.entry(bucket(next)).or_default().push(pair);
                        }
                    }
                    None => {
                        self.pairs.remove(&pair);
                    }
                }
            }
        }
        if !keep.is_empty() {
            self.expiry.entry(bucket(w)).or_default().extend(keep);
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

    /// Every pair's candidates, for a checkpoint (in no particular order).
    pub fn snapshot(&self) -> CandidateSnapshot {
        CandidateSnapshot::encode(self.pairs.iter().map(|(k, p)| (*k, p.candidates.as_slice())), self.encoded_len_bound())
    }

    pub fn restore(lifetimes: Lifetimes, snapshot: &CandidateSnapshot) -> Self {
        let mut s = Self::new(lifetimes);
        snapshot
            .decode(|pair, candidates| {
                for c in candidates {
                    s.add(pair, c);
                }
            })
            .expect("checked when the checkpoint was read");
        s
    }

    /// A bound on the snapshot's encoded size.
    pub fn encoded_len_bound(&self) -> usize {
        self.pairs.len() * CandidateSnapshot::PAIR_BOUND + self.len * CandidateSnapshot::bound(16) + self.text_bytes
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
        Candidate { event_id: EventId::new(id), event_time, ingest: event_time, click, ad: 1, campaign: 2, advertiser: 3 }
    }

    /// The store's candidates by pair, sorted.
    fn entries(s: &CandidateStore) -> Vec<(u128, Vec<Candidate>)> {
        let mut out = Vec::new();
        s.snapshot().decode(|k, c| out.push((k, c))).unwrap();
        out.sort_unstable_by_key(|(k, _)| *k);
        out
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
        assert_eq!(s.best(7, 200, i64::MAX).unwrap().event_id.to_string(), "a");
        // Only the impression is ingested in time: it wins.
        let mut late_clicks = store();
        late_clicks.add(7, Candidate { ingest: 500, ..c("a", 100, true) });
        late_clicks.add(7, c("z", 150, false));
        assert_eq!(late_clicks.best(7, 200, 300).unwrap().event_id.to_string(), "z");
        // Another pair, or an order before the events, matches nothing.
        assert!(s.best(8, 200, i64::MAX).is_none());
        assert!(s.best(7, 99, i64::MAX).is_none());
        // An event at the order's own time counts; one a window before it does not.
        assert_eq!(s.best(7, 100, i64::MAX).unwrap().event_id.to_string(), "a");
        assert!(s.best(7, 100 + 7 * DAY, i64::MAX).is_none());
        assert_eq!(s.best(7, 99 + 7 * DAY, i64::MAX).unwrap().event_id.to_string(), "a");
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
        let restored = CandidateStore::restore(s.lifetimes, &s.snapshot());
        assert_eq!(entries(&restored), entries(&s));
        s.expire(DAY + lag + 10);
        assert_eq!(entries(&s), vec![(1, vec![c("click", 0, true)])]);
        s.expire(7 * DAY + lag);
        assert!(s.is_empty() && entries(&s).is_empty() && s.expiry.is_empty());
    }

    /// The store against a list of every arrival ever added, filtered on each question.
    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// (pair, id, event time and ingest ahead of the watermark, click)
            Add(u128, u8, i64, i64, bool),
            /// Watermark step.
            Expire(i64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0u128..4, 0u8..6, -3_000_000i64..3_000_000, 0i64..600_000, any::<bool>()).prop_map(|(p, id, et, lag, click)| Op::Add(p, id, et, lag, click)),
                1 => (0i64..5_000_000).prop_map(Op::Expire),
            ]
        }

        proptest! {
            #[test]
            fn the_store_keeps_exactly_the_living_first_arrivals(ops in prop::collection::vec(op(), 1..80)) {
                // Short windows so that candidates expire, by many buckets and within one.
                let lifetimes = Lifetimes { click_window_ms: 400_000, impression_window_ms: 90_000, order_lag_ms: 30_000 };
                let mut store = CandidateStore::new(lifetimes);
                let mut model: Vec<(u128, Candidate)> = Vec::new();
                let mut w = 0i64;
                for op in ops {
                    match op {
                        Op::Add(pair, id, et, lag, click) => {
                            let ingest = w + lag;
                            let c = Candidate { event_id: EventId::new(&format!("e{id}")), event_time: w + et, ingest, click, ad: 1, campaign: 2, advertiser: 3 };
                            let dup = model.iter().any(|(p, x)| *p == pair && x.event_id == c.event_id && lifetimes.expires_at(x) > ingest);
                            prop_assert_eq!(store.add(pair, c.clone()), !dup);
                            if !dup {
                                model.push((pair, c));
                            }
                        }
                        Op::Expire(step) => {
                            w += step;
                            store.expire(w);
                            model.retain(|(_, c)| lifetimes.expires_at(c) > w);
                        }
                    }
                    let mut want: Vec<(u128, Vec<Candidate>)> = Vec::new();
                    for (p, c) in &model {
                        match want.iter_mut().find(|(k, _)| k == p) {
                            Some((_, v)) => v.push(c.clone()),
                            None => want.push((*p, vec![c.clone()])),
                        }
                    }
                    want.sort_unstable_by_key(|(k, _)| *k);
                    prop_assert_eq!(entries(&store), want);
                    prop_assert_eq!(store.len(), model.len());
                    prop_assert!(store.snapshot().encoded_len() <= store.encoded_len_bound());
                }
                let restored = CandidateStore::restore(lifetimes, &store.snapshot());
                prop_assert_eq!(entries(&restored), entries(&store));
                store.expire(i64::MAX);
                prop_assert!(store.is_empty() && store.pairs.is_empty() && store.expiry.is_empty());
            }
        }
    }
}
