//! The attribution operator (contract §5), one per key group, pure.
//!
//! Ad events are routed by (user, store): each group keeps the candidates of its pairs
//! ([`CandidateStore`]). Orders are few, and every group takes all of them (broadcast): a
//! group *owns* an order when its first arrival's (user, store) is one of its pairs, and keeps
//! the order's whole state; the others keep only its key and latest order_time. So a later
//! arrival that names another user or store (it still updates the order, by the contract)
//! reaches the owner, and every group agrees on which arrival is an order's first. Each message
//! is counted, and each invalid order dead-lettered, by exactly one group: a valid arrival by
//! its order's owner, an invalid one by the group of its own (user, store) (group 0 without).
//!
//! An order's *life*: its first valid arrival decides the attribution and the identity fields;
//! a later valid arrival ingested at most `max_past` after the life's latest order_time updates
//! `status`, `amount_cents` and `currency`; a valid arrival after that (it can only be valid
//! with a later order_time) starts a new life. Decided per arrival, so the runtime's epochs and
//! the garbage collection of state cannot change it.
//!
//! The decision for an order is taken once the ingest watermark has passed its first arrival's
//! ingest time + `join_wait`: every ad event ingested before that has been seen, and later ones
//! are never matched. [`Emit::Updates`] (the stream job) emits an attributed order's record at
//! its decision and again, under the same `record_uuid`, at every later arrival;
//! [`Emit::FinalOnly`] (a backfill) emits it once, when its life can no longer change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

use super::audit::Audit;
use super::candidate_snapshot::CandidateSnapshot;
use super::candidate::Candidate;
use super::candidates::{CandidateStore, Lifetimes};
use super::event_id::EventId;
use super::orders::{validate as validate_order, ValidOrder};
use super::rules::AttributionRules;
use super::{AD_EVENTS, ORDERS};
use crate::contract::attributed_orders::{self, AttributedOrder, AttributionType};
use crate::contract::orders::OrdersView;
use crate::contract::outputs::DeadLetter;
use crate::contract::record_uuid;
use crate::core::ad_event_rules;
use crate::core::batch_view::{BatchView, ABSENT};
use crate::core::interner::Interner;
use crate::core::job::{append_postcard, Emit, EpochInput, Operator, RunSettings, StateSize};
use crate::core::key_group::{group_of_pair, pair_key};
use crate::core::reason::Reject;

/// The key of an order: the xxh3-128 hash of its order_id.
pub fn order_key(order_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(order_id.as_bytes())
}

/// The ad event an order was attributed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    pub event_id: String,
    pub ad_id: String,
    pub campaign_id: Option<String>,
    pub advertiser_id: Option<String>,
    pub click: bool,
    pub event_time: i64,
}

/// An order's life, as its owning group keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    // Identity: the life's first arrival.
    pub order_id: String,
    pub user_id: String,
    pub store_id: String,
    pub region: String,
    pub order_time: i64,
    pub ingest: i64,
    pub pair: u128,
    // The latest arrival's.
    pub status: String,
    pub amount_cents: i64,
    pub currency: String,
    /// Whether a backfill emits it (its order_time is in the range).
    pub in_range: bool,
    /// None: awaiting decision; Some(None): not attributed.
    pub decision: Option<Option<Match>>,
}

impl Owned {
    fn decide_at(&self, rules: &AttributionRules) -> i64 {
        self.ingest.saturating_add(rules.join_wait_ms)
    }

    fn awaiting(&self) -> bool {
        self.in_range && self.decision.is_none()
    }

    fn record(&self) -> Option<AttributedOrder> {
        let m = self.decision.as_ref()?.as_ref()?;
        Some(AttributedOrder {
            record_uuid: record_uuid::attributed_order(&self.order_id),
            order_id: self.order_id.clone(),
            user_id: self.user_id.clone(),
            store_id: self.store_id.clone(),
            region: self.region.clone(),
            order_time: self.order_time,
            status: self.status.clone(),
            amount_cents: self.amount_cents,
            currency: self.currency.clone(),
            ad_id: m.ad_id.clone(),
            campaign_id: m.campaign_id.clone(),
            advertiser_id: m.advertiser_id.clone(),
            attributed_event_id: m.event_id.clone(),
            attribution_type: if m.click { AttributionType::Click } else { AttributionType::Impression },
            ad_event_time: m.event_time,
        })
    }
}

/// What every group keeps of an order's current life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    /// The latest order_time of the life's arrivals: the life takes arrivals ingested until
    /// this + max_past.
    pub max_order_time: i64,
    /// The life's whole state, in the group that owns it. Boxed: every group keeps every
    /// order, and inline the others' entries were the size of an owned life too (~90 MB of
    /// the 1M-message stream benchmark's 20,000 orders in 8 groups, all fresh pages).
    pub owned: Option<Box<Owned>>,
}

/// A key group's state, as a checkpoint stores it. `AttributionOperator::encode_snapshot`
/// writes these fields one by one, in this order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributionState {
    /// Interned strings in id order; candidates refer to them by id.
    pub strings: Vec<String>,
    pub candidates: CandidateSnapshot,
    pub orders: Vec<(u128, OrderState)>,
    /// Lives replaced by a newer one before their decision, decided when due.
    pub retired: Vec<(u128, Box<Owned>)>,
    pub ingest_watermark: i64,
    pub audit: Audit,
}

impl StateSize for AttributionState {
    fn encoded_len_bound(&self) -> usize {
        let strings: usize = self.strings.iter().map(|s| s.len() + 5).sum();
        let candidates = self.candidates.encoded_len() + 10;
        let owned = |o: &Owned| o.order_id.len() + o.user_id.len() + o.store_id.len() + o.region.len() + o.status.len() + o.currency.len() + 400;
        let orders: usize = self.orders.iter().map(|(_, s)| 40 + s.owned.as_deref().map_or(0, owned)).sum();
        let retired: usize = self.retired.iter().map(|(_, o)| 20 + owned(o)).sum();
        4096 + strings + candidates + orders + retired
    }
}

/// An index entry of a life awaiting its decision: (decide at, order key, first ingest).
type Due = (i64, u128, i64);

pub struct AttributionOperator {
    rules: AttributionRules,
    settings: RunSettings,
    strings: Interner,
    candidates: CandidateStore,
    orders: HashMap<u128, OrderState>,
    retired: HashMap<(u128, i64), Box<Owned>>,
    /// (GC at, order key): a life is dropped once the watermark passes it (and it is decided).
    expiry: BTreeSet<(i64, u128)>,
    pending: BTreeSet<Due>,
    /// [`Emit::FinalOnly`]: the owned lives in range whose final record is not yet out, by
    /// order_time (what [`Operator::final_before`] waits for).
    held: BTreeMap<i64, u32>,
    ingest_watermark: i64,
    audit: Audit,
    emitted: Vec<AttributedOrder>,
    dead: Vec<DeadLetter>,
    orders_topic: Arc<str>,
}

impl AttributionOperator {
    pub fn new(rules: AttributionRules, settings: RunSettings) -> Self {
        let lifetimes = Lifetimes {
            click_window_ms: rules.click_window_ms,
            impression_window_ms: rules.impression_window_ms,
            order_lag_ms: rules.order_max_past_ms.saturating_add(rules.join_wait_ms),
        };
        Self {
            orders_topic: rules.orders_topic.as_str().into(),
            rules,
            settings,
            strings: Interner::default(),
            candidates: CandidateStore::new(lifetimes),
            orders: HashMap::new(),
            retired: HashMap::new(),
            expiry: BTreeSet::new(),
            pending: BTreeSet::new(),
            held: BTreeMap::new(),
            ingest_watermark: i64::MIN,
            audit: Audit::default(),
            emitted: Vec::new(),
            dead: Vec::new(),
        }
    }

    pub fn restore(rules: AttributionRules, settings: RunSettings, state: AttributionState) -> Self {
        let mut op = Self::new(rules, settings);
        for s in &state.strings {
            op.strings.intern(s);
        }
        op.candidates = CandidateStore::restore(op.candidates_lifetimes(), &state.candidates);
        for (key, o) in state.orders {
            op.expiry.insert((o.max_order_time.saturating_add(op.rules.order_max_past_ms), key));
            if let Some(owned) = &o.owned {
                op.index(key, owned);
            }
            op.orders.insert(key, o);
        }
        for (key, owned) in state.retired {
            op.index(key, &owned);
            op.retired.insert((key, owned.ingest), owned);
        }
        op.ingest_watermark = state.ingest_watermark;
        op.audit = state.audit;
        op
    }

    fn candidates_lifetimes(&self) -> Lifetimes {
        Lifetimes {
            click_window_ms: self.rules.click_window_ms,
            impression_window_ms: self.rules.impression_window_ms,
            order_lag_ms: self.rules.order_max_past_ms.saturating_add(self.rules.join_wait_ms),
        }
    }

    /// Indexes an owned life: awaiting its decision, and (a backfill) holding its hour open.
    fn index(&mut self, key: u128, o: &Owned) {
        if o.awaiting() {
            self.pending.insert((o.decide_at(&self.rules), key, o.ingest));
        }
        if self.settings.emit == Emit::FinalOnly && o.in_range {
            *self.held.entry(o.order_time).or_default() += 1;
        }
    }

    fn in_range(&self, t: i64) -> bool {
        self.settings.range.is_none_or(|(from, to)| (from..to).contains(&t))
    }

    fn mine(&self, pair: Option<u128>) -> bool {
        let groups = self.settings.key_groups as usize;
        let g = match pair {
            Some(p) if groups > 1 => group_of_pair(p, groups),
            _ => 0,
        };
        g == self.settings.key_group as usize
    }

    /// The state but its candidates (left empty).
    fn snapshot_but_candidates(&self) -> AttributionState {
        assert!(self.emitted.is_empty() && self.dead.is_empty(), "snapshot before drain");
        let mut orders: Vec<(u128, OrderState)> = self.orders.iter().map(|(k, s)| (*k, s.clone())).collect();
        orders.sort_unstable_by_key(|(k, _)| *k);
        let mut retired: Vec<(u128, Box<Owned>)> = self.retired.iter().map(|((k, _), o)| (*k, o.clone())).collect();
        retired.sort_unstable_by_key(|(k, o)| (*k, o.ingest));
        AttributionState {
            strings: self.strings.names().map(str::to_string).collect(),
            candidates: CandidateSnapshot::default(),
            orders,
            retired,
            ingest_watermark: self.ingest_watermark,
            audit: self.audit.clone(),
        }
    }

    /// Sizes of the keyed state: (candidates, orders, of which owned).
    pub fn state_size(&self) -> (usize, usize, usize) {
        (self.candidates.len(), self.orders.len(), self.orders.values().filter(|o| o.owned.is_some()).count())
    }

    fn ad_events(&mut self, input: &EpochInput<'_>) {
        // (position, pair, candidate) of the valid arrivals with a user and a store.
        let mut arrivals: Vec<((i64, i32, i64), u128, Candidate)> = Vec::with_capacity(input.num_rows());
        for (batch, rows) in input.selections() {
            let mut view = BatchView::new(batch);
            view.resolve(rows, &mut self.strings);
            let n = rows.map_or(batch.num_rows(), <[u32]>::len);
            let row_at = |j: usize| rows.map_or(j, |r| r[j] as usize);
            // A group's rows are scattered over the batch: the strings of the row a few on
            // are fetched meanwhile (the first read of each event_id was a twentieth of the
            // job's samples).
            const AHEAD: usize = 4;
            for j in 0..n {
                if j + AHEAD < n {
                    let next = row_at(j + AHEAD);
                    view.event_id.prefetch(next);
                    view.user_id.prefetch(next);
                    view.store_id.prefetch(next);
                }
                let row = row_at(j);
                self.audit.ad_events_read += 1;
                let ingest = BatchView::opt(view.ingest, row);
                let mut valid = None;
                let Ok(event_id) = ad_event_rules::validate(&self.rules.ad_events, &view, row, ingest, |e| valid = Some(e)) else {
                    self.audit.not_candidates += 1;
                    continue;
                };
                let (Some(e), Some(user), Some(store)) = (valid, view.user_id.present(row), view.store_id.present(row)) else {
                    self.audit.not_candidates += 1;
                    continue;
                };
                let pos = (e.ingest, BatchView::opt(view.partition, row).unwrap_or(-1), BatchView::opt(view.offset, row).unwrap_or(-1));
                let candidate = Candidate {
                    event_id: EventId::new(event_id),
                    event_time: e.event_time,
                    ingest: e.ingest,
                    click: e.click,
                    ad: e.ad,
                    campaign: e.campaign,
                    advertiser: e.advertiser,
                };
                arrivals.push((pos, pair_key(user, store), candidate));
            }
        }
        // The epoch's arrivals as a set: the earliest position of an event wins. Positions are
        // unique, so a stable sort gives the same order as an unstable one; it also merges the
        // runs the rows come in (a poll hands out each partition's messages in order), where
        // pdqsort partitioned them all over again (2.3 % of the stream job's samples, 1.0 %).
        arrivals.sort_by_key(|a| a.0);
        // Nearly every add is a cache miss in a large table: the slot of the arrival a few
        // ahead is fetched meanwhile.
        const AHEAD: usize = 8;
        let mut rest = arrivals.into_iter();
        while let Some((_, pair, c)) = rest.next() {
            if let Some(next) = rest.as_slice().get(AHEAD - 1) {
                self.candidates.prefetch(next.1);
            }
            if self.candidates.add(pair, c) {
                self.audit.candidates += 1;
            } else {
                self.audit.ad_event_duplicates += 1;
            }
        }
    }

    fn orders(&mut self, input: &EpochInput<'_>) {
        // Every group reads every order (see the module's doc); valid arrivals are applied in
        // position order, which every group and both runtimes agree on.
        let mut valid: Vec<ValidOrder> = Vec::new();
        let views: Vec<OrdersView> = input.batches.iter().map(OrdersView::new).collect();
        for ((_, rows), v) in input.selections().zip(&views) {
            let n = arrow::array::Array::len(v.order_id);
            let mut each = |row: usize| match validate_order(&self.rules, v, row) {
                Ok(o) => valid.push(o),
                Err(reject) => self.reject(v, row, reject),
            };
            match rows {
                Some(rows) => rows.iter().for_each(|&r| each(r as usize)),
                None => (0..n).for_each(&mut each),
            }
        }
        valid.sort_unstable_by_key(|o| o.pos);
        for o in valid {
            self.arrive(o);
        }
    }

    /// An invalid order, counted and dead-lettered by the group of its own (user, store).
    fn reject(&mut self, v: &OrdersView, row: usize, reject: Reject) {
        let present = |a| OrdersView::str(a, row).filter(|s: &&str| !s.is_empty());
        let pair = present(v.user_id).zip(present(v.store_id)).map(|(u, s)| pair_key(u, s));
        if !self.mine(pair) {
            return;
        }
        self.audit.orders_read += 1;
        let ingest = OrdersView::int(v.ingest, row);
        if ingest.is_some_and(|t| !self.in_range_ingest(t)) {
            self.audit.outside_range += 1;
            return;
        }
        self.audit.invalid += 1;
        *self.audit.rejected_by_reason.entry(reject.code()).or_default() += 1;
        let (partition, offset) = (OrdersView::int(v.partition, row), OrdersView::int(v.offset, row));
        let payload = v.payload(row);
        let record_uuid = match (partition, offset) {
            (Some(p), Some(o)) => record_uuid::dead_letter(&self.orders_topic, p, o),
            _ => record_uuid::dead_letter_unpositioned(&self.orders_topic, &payload),
        };
        self.dead.push(DeadLetter {
            record_uuid,
            topic: self.orders_topic.clone(),
            partition,
            offset,
            kafka_timestamp: ingest,
            reason: reject.to_string(),
            payload,
        });
    }

    /// A backfill dead-letters the messages ingested in its range (as the aggregation job).
    fn in_range_ingest(&self, t: i64) -> bool {
        self.in_range(t)
    }

    /// A valid arrival, in position order.
    fn arrive(&mut self, a: ValidOrder) {
        let key = order_key(a.order_id);
        let max_past = self.rules.order_max_past_ms;
        let ingest = a.pos.0;
        if let Some(st) = self.orders.get_mut(&key) {
            if ingest <= st.max_order_time.saturating_add(max_past) {
                // An update of the current life.
                if a.order_time > st.max_order_time {
                    self.expiry.remove(&(st.max_order_time.saturating_add(max_past), key));
                    st.max_order_time = a.order_time;
                    self.expiry.insert((a.order_time.saturating_add(max_past), key));
                }
                let Some(o) = st.owned.as_mut() else { return };
                o.status = a.status.to_string();
                o.amount_cents = a.amount_cents;
                o.currency = a.currency.to_string();
                self.audit.orders_read += 1;
                if o.in_range {
                    self.audit.updates += 1;
                } else {
                    self.audit.outside_range += 1;
                }
                if self.settings.emit == Emit::Updates {
                    self.emitted.extend(o.record());
                }
                return;
            }
            // Its life is over: this arrival starts a new one.
            self.retire(key);
        }
        let pair = pair_key(a.user_id, a.store_id);
        let owned = self.mine(Some(pair)).then(|| Box::new(Owned {
            order_id: a.order_id.to_string(),
            user_id: a.user_id.to_string(),
            store_id: a.store_id.to_string(),
            region: a.region.to_string(),
            order_time: a.order_time,
            ingest,
            pair,
            status: a.status.to_string(),
            amount_cents: a.amount_cents,
            currency: a.currency.to_string(),
            in_range: self.in_range(a.order_time),
            decision: None,
        }));
        if let Some(o) = &owned {
            self.audit.orders_read += 1;
            if o.in_range {
                self.audit.awaiting_decision += 1;
            } else {
                self.audit.outside_range += 1;
            }
            self.index(key, o);
        }
        self.expiry.insert((a.order_time.saturating_add(max_past), key));
        self.orders.insert(key, OrderState { max_order_time: a.order_time, owned });
    }

    /// Ends an order's current life: its final record goes out ([`Emit::FinalOnly`]), or, if
    /// it awaits its decision, it is kept aside until then.
    fn retire(&mut self, key: u128) {
        let Some(st) = self.orders.remove(&key) else { return };
        self.expiry.remove(&(st.max_order_time.saturating_add(self.rules.order_max_past_ms), key));
        let Some(o) = st.owned else { return };
        if o.awaiting() {
            self.retired.insert((key, o.ingest), o);
            return;
        }
        self.release(o);
    }

    /// A decided life whose value can no longer change.
    fn release(&mut self, o: Box<Owned>) {
        if self.settings.emit == Emit::FinalOnly && o.in_range {
            if let Some(n) = self.held.get_mut(&o.order_time) {
                *n -= 1;
                if *n == 0 {
                    self.held.remove(&o.order_time);
                }
            }
            self.emitted.extend(o.record());
        }
    }

    fn decide(&mut self, (_, key, ingest): Due) {
        let current = self.orders.get_mut(&key).and_then(|s| s.owned.as_mut()).filter(|o| o.ingest == ingest && o.decision.is_none());
        let (o, retired) = match current {
            Some(o) => (o, false),
            None => match self.retired.get_mut(&(key, ingest)) {
                Some(o) => (o, true),
                None => return,
            },
        };
        let found = self.candidates.best(o.pair, o.order_time, o.ingest.saturating_add(self.rules.join_wait_ms));
        let name = |id: u32| (id != ABSENT).then(|| self.strings.name(id).to_string());
        let m = found.map(|c| Match {
            event_id: c.event_id.to_string(),
            ad_id: name(c.ad).unwrap_or_default(),
            campaign_id: name(c.campaign),
            advertiser_id: name(c.advertiser),
            click: c.click,
            event_time: c.event_time,
        });
        self.audit.awaiting_decision -= 1;
        if m.is_some() {
            self.audit.attributed += 1;
        } else {
            self.audit.not_attributed += 1;
        }
        o.decision = Some(m);
        if self.settings.emit == Emit::Updates {
            self.emitted.extend(o.record());
        }
        if retired {
            let o = self.retired.remove(&(key, ingest)).expect("found above");
            self.release(o);
        }
    }

    /// Drops the lives the watermark has passed (keeping one that awaits its decision). An
    /// entry whose life was extended since, or replaced, is stale: the life's own entry is
    /// later.
    fn collect(&mut self, w: i64) {
        let max_past = self.rules.order_max_past_ms;
        while let Some(&(at, key)) = self.expiry.first() {
            if at >= w {
                break;
            }
            self.expiry.pop_first();
            let Some(st) = self.orders.get(&key) else { continue };
            if st.max_order_time.saturating_add(max_past) >= w {
                continue;
            }
            if let Some(o) = st.owned.as_ref().filter(|o| o.awaiting()) {
                // Decided at most join_wait later: look again then.
                self.expiry.insert((o.decide_at(&self.rules), key));
                continue;
            }
            let st = self.orders.remove(&key).expect("present");
            if let Some(o) = st.owned {
                self.release(o);
            }
        }
    }

    /// The records emitted and not drained whose order_time is before `before`, sorted by
    /// (order_time, order_id); the rest stay.
    fn take_before(&mut self, before: i64) -> Vec<AttributedOrder> {
        let (mut now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.emitted).into_iter().partition(|r| r.order_time < before);
        self.emitted = later;
        now.sort_by(|a, b| (a.order_time, &a.order_id).cmp(&(b.order_time, &b.order_id)));
        now
    }
}

impl Operator for AttributionOperator {
    fn state_sizes(&self) -> Vec<(&'static str, u64)> {
        vec![("candidate_ad_events", self.candidates.len() as u64), ("orders", self.orders.len() as u64), ("retired_orders", self.retired.len() as u64)]
    }

    type Record = AttributedOrder;
    type Audit = Audit;
    type State = AttributionState;

    fn process_epoch(&mut self, epoch: &[EpochInput<'_>]) {
        let [_, _] = epoch else { panic!("the attribution job has two inputs, given {}", epoch.len()) };
        self.ad_events(&epoch[AD_EVENTS]);
        self.orders(&epoch[ORDERS]);
    }

    fn advance_ingest_watermark(&mut self, t: i64) {
        if t <= self.ingest_watermark {
            return;
        }
        self.ingest_watermark = t;
        while let Some(&due) = self.pending.first() {
            if due.0 > t {
                break;
            }
            self.pending.pop_first();
            self.decide(due);
        }
        self.candidates.expire(t);
        self.collect(t);
    }

    fn finish(&mut self) {
        while let Some(due) = self.pending.pop_first() {
            self.decide(due);
        }
        let end = self.ingest_watermark;
        let max_past = self.rules.order_max_past_ms;
        let keys: Vec<u128> = self.orders.keys().copied().collect();
        for key in keys {
            let st = self.orders.remove(&key).expect("listed");
            if let Some(o) = st.owned {
                if o.in_range && st.max_order_time.saturating_add(max_past) >= end {
                    self.audit.open_at_end += 1;
                }
                self.release(o);
            }
        }
        self.expiry.clear();
    }

    fn ingest_watermark(&self) -> i64 {
        self.ingest_watermark
    }

    fn audit(&self) -> &Audit {
        &self.audit
    }

    fn drain(&mut self) -> (Vec<AttributedOrder>, Vec<DeadLetter>) {
        (std::mem::take(&mut self.emitted), std::mem::take(&mut self.dead))
    }

    fn drain_tables(&mut self, before: i64) -> (Vec<(usize, RecordBatch)>, Vec<DeadLetter>) {
        let records = self.take_before(before);
        let tables = if records.is_empty() { Vec::new() } else { vec![(0, attributed_orders::to_batch(&records))] };
        (tables, std::mem::take(&mut self.dead))
    }

    /// No record of an order_time before this will come: every life in range not yet out is
    /// held, and a first arrival still to come is valid only with an order_time at least
    /// `max_past` before the watermark.
    fn final_before(&self) -> i64 {
        let future = self.ingest_watermark.saturating_sub(self.rules.order_max_past_ms);
        self.held.keys().next().map_or(future, |&t| t.min(future))
    }

    fn first_emitted(&self) -> Option<i64> {
        self.emitted.iter().map(|r| r.order_time).min()
    }

    fn snapshot(&self) -> AttributionState {
        AttributionState { candidates: self.candidates.snapshot(), ..self.snapshot_but_candidates() }
    }

    fn encode_snapshot(&self, out: &mut Vec<u8>) {
        let state = self.snapshot_but_candidates();
        out.reserve(state.encoded_len_bound());
        // Field by field, as postcard writes the struct, with the candidates' bytes written in
        // place (tests/attribution_properties.rs holds them equal at every restart).
        let AttributionState { strings, candidates: _, orders, retired, ingest_watermark, audit } = &state;
        append_postcard(strings, out);
        self.candidates.encode_snapshot_into(out);
        append_postcard(&(orders, retired, ingest_watermark, audit), out);
    }
}
