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

use smallvec::SmallVec;

use super::candidate::Candidate;
use super::candidate_snapshot::CandidateSnapshot;
use super::event_id::EventId;
use crate::core::key_table::KeyTable;
use crate::core::prefetch::prefetch;

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

/// Width of an expiry bucket. Expiry is checked per bucket of pairs rather than per pair in an
/// ordered set: adding a pair is a push, not a tree insert (a tenth of the stream job's time
/// went to the set's upkeep).
const BUCKET_MS: i64 = 60_000;

fn bucket(t: i64) -> i64 {
    t.div_euclid(BUCKET_MS)
}

/// No node: the end of a pair's list.
const NIL: u32 = u32::MAX;

/// A candidate and the next (older) one of its pair.
#[derive(Debug, Clone)]
struct Node {
    c: Candidate,
    next: u32,
}

const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

/// The candidates of a store, in chunks of a fixed size: growing never moves a candidate (a
/// doubling vector copied them all, into fresh pages), and a freed slot is reused.
#[derive(Debug, Clone, Default)]
struct Nodes {
    chunks: Vec<Vec<Node>>,
    free: Vec<u32>,
}

impl Nodes {
    fn get(&self, i: u32) -> &Node {
        &self.chunks[(i >> CHUNK_BITS) as usize][i as usize & (CHUNK - 1)]
    }

    fn get_mut(&mut self, i: u32) -> &mut Node {
        &mut self.chunks[(i >> CHUNK_BITS) as usize][i as usize & (CHUNK - 1)]
    }

    /// The index the next [`alloc`](Self::alloc) returns.
    fn next_index(&self) -> u32 {
        match (self.free.last(), self.chunks.last()) {
            (Some(&i), _) => i,
            (None, Some(last)) if last.len() < CHUNK => ((self.chunks.len() - 1) * CHUNK + last.len()) as u32,
            (None, _) => (self.chunks.len() * CHUNK) as u32,
        }
    }

    fn alloc(&mut self, node: Node) -> u32 {
        if let Some(i) = self.free.pop() {
            *self.get_mut(i) = node;
            return i;
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let n = self.chunks.len() - 1;
        let last = self.chunks.last_mut().expect("just ensured");
        last.push(node);
        u32::try_from(n * CHUNK + last.len() - 1).expect("fewer than 2^32 candidates in a key group")
    }

    /// Frees slot `i`, dropping its candidate's id.
    fn free(&mut self, i: u32) {
        self.get_mut(i).c.event_id = EventId::Uuid([0; 16]);
        self.free.push(i);
    }
}

/// The candidates of one key group.
///
/// Pairs are keys of a [`KeyTable`] (open addressing, 32-byte slots, prefetchable): the value
/// is the pair's newest node and the earliest expiry among its candidates, whose bucket of
/// `expiry` lists the pair. A pair's candidates are a list of nodes, newest
/// first. Nearly every ad event is a pair's first: a general-purpose map kept each pair's
/// candidates in its 96-byte entry, and doubled it whole as it grew (a fifth of the stream
/// job's CPU samples were those inserts and rehashes, and most of its fresh memory).
#[derive(Debug, Clone)]
pub struct CandidateStore {
    lifetimes: Lifetimes,
    /// Pair → [newest node, earliest expiry as u64].
    pairs: KeyTable,
    nodes: Nodes,
    /// Pairs by the bucket of their earliest expiry. A pair whose earliest expiry moved to an
    /// earlier bucket is listed in both; the later entry is skipped when its bucket is due.
    expiry: BTreeMap<i64, Vec<u128>>,
    len: usize,
    /// Bytes of the ids kept as text, for the snapshot's size bound.
    text_bytes: usize,
}

fn text_len(c: &Candidate) -> usize {
    match &c.event_id {
        EventId::Text(t) => t.len(),
        EventId::Uuid(_) => 0,
    }
}

impl CandidateStore {
    pub fn new(lifetimes: Lifetimes) -> Self {
        Self { lifetimes, pairs: KeyTable::default(), nodes: Nodes::default(), expiry: BTreeMap::new(), len: 0, text_bytes: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Starts fetching the table slot of `pair`, for an [`add`](Self::add) a few arrivals on.
    pub fn prefetch(&self, pair: u128) {
        self.pairs.prefetch(pair);
    }

    /// Adds an arrival of `pair`, unless an earlier arrival of its event is a candidate there
    /// that lives at its ingest time: whether it was added. Arrivals must come in (ingest
    /// time, partition, offset) order.
    pub fn add(&mut self, pair: u128, c: Candidate) -> bool {
        let lifetimes = self.lifetimes;
        let expires = lifetimes.expires_at(&c);
        let text = text_len(&c);
        let Self { pairs, nodes, expiry, .. } = self;
        let at = nodes.next_index();
        match pairs.get_or_insert(pair, [u64::from(at), expires as u64]) {
            None => {
                nodes.alloc(Node { c, next: NIL });
                expiry.entry(bucket(expires)).or_default().push(pair);
            }
            Some(v) => {
                let mut i = v[0] as u32;
                while i != NIL {
                    let n = nodes.get(i);
                    if n.c.event_id == c.event_id && lifetimes.expires_at(&n.c) > c.ingest {
                        return false;
                    }
                    i = n.next;
                }
                v[0] = u64::from(nodes.alloc(Node { c, next: v[0] as u32 }));
                let earliest = v[1] as i64;
                if expires < earliest {
                    v[1] = expires as u64;
                    if bucket(earliest) != bucket(expires) {
                        expiry.entry(bucket(expires)).or_default().push(pair);
                    }
                }
            }
        }
        self.len += 1;
        self.text_bytes += text;
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
                let Some(v) = self.pairs.get_mut(pair) else { continue };
                let earliest = v[1] as i64;
                if bucket(earliest) != b || earliest > w {
                    if bucket(earliest) == b {
                        keep.push(pair);
                    }
                    // Else a stale entry: the pair is listed in its earliest's bucket too.
                    continue;
                }
                let (mut prev, mut i, mut next) = (NIL, v[0] as u32, i64::MAX);
                while i != NIL {
                    let n = self.nodes.get(i);
                    let (after, expires, text) = (n.next, lifetimes.expires_at(&n.c), text_len(&n.c));
                    if expires > w {
                        next = next.min(expires);
                        prev = i;
                    } else {
                        if prev == NIL {
                            v[0] = u64::from(after);
                        } else {
                            self.nodes.get_mut(prev).next = after;
                        }
                        self.text_bytes -= text;
                        self.len -= 1;
                        self.nodes.free(i);
                    }
                    i = after;
                }
                if next == i64::MAX {
                    self.pairs.remove(pair);
                    continue;
                }
                v[1] = next as u64;
                if bucket(next) == b {
                    keep.push(pair);
                } else {
                    self.expiry.entry(bucket(next)).or_default().push(pair);
                }
            }
        }
        if !keep.is_empty() {
            self.expiry.entry(bucket(w)).or_default().extend(keep);
        }
    }

    /// A pair's candidates, newest first.
    fn candidates(&self, head: u32) -> impl Iterator<Item = &Candidate> + '_ {
        let mut i = head;
        std::iter::from_fn(move || {
            (i != NIL).then(|| {
                let n = self.nodes.get(i);
                i = n.next;
                &n.c
            })
        })
    }

    /// The candidate an order of `pair` placed at `order_time` and ingested so that only
    /// events ingested before `ingested_before` count: the latest click within the click
    /// window before the order, else the latest impression within the impression window;
    /// ties to the smallest event_id (between arrivals of one event, to the newest).
    pub fn best(&self, pair: u128, order_time: i64, ingested_before: i64) -> Option<&Candidate> {
        let head = self.pairs.get(pair)?[0] as u32;
        let rank = |a: &Candidate, b: &Candidate| a.event_time.cmp(&b.event_time).then_with(|| b.event_id.cmp(&a.event_id));
        let pick = |click: bool| {
            let window = self.lifetimes.window(click);
            self.candidates(head)
                .filter(|c| {
                    c.click == click && c.ingest < ingested_before && c.event_time <= order_time && c.event_time > order_time.saturating_sub(window)
                })
                // Newest first: an equal one found later is older and loses.
                .reduce(|best, c| if rank(c, best).is_gt() { c } else { best })
        };
        pick(true).or_else(|| pick(false))
    }

    /// Every pair's candidates, for a checkpoint (pairs in no particular order; a pair's
    /// candidates in the order they were added).
    pub fn snapshot(&self) -> CandidateSnapshot {
        CandidateSnapshot::encode(self.pairs_oldest_first(), self.encoded_len_bound())
    }

    /// [`Self::snapshot`] as postcard encodes it, written straight after `out`'s end.
    pub fn encode_snapshot_into(&self, out: &mut Vec<u8>) {
        CandidateSnapshot::encode_postcard_into(self.pairs_oldest_first(), self.encoded_len_bound(), out);
    }

    /// Every pair with its candidates, oldest first. The pairs come in slot order, their nodes
    /// in no order: each pair's newest node is fetched a few pairs ahead (without, the reads of
    /// the nodes were half a checkpoint).
    fn pairs_oldest_first(&self) -> impl Iterator<Item = (u128, smallvec::IntoIter<[&Candidate; 4]>)> {
        let mut ahead = self.pairs.iter().skip(8);
        self.pairs.iter().map(move |(k, v)| {
            if let Some((_, next)) = ahead.next() {
                prefetch(self.nodes.get(next[0] as u32));
            }
            let mut oldest_first: SmallVec<[&Candidate; 4]> = self.candidates(v[0] as u32).collect();
            oldest_first.reverse();
            (k, oldest_first.into_iter())
        })
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
