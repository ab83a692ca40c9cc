//! The aggregation operator: validate → lateness → dedupe → tumbling-window count.
//!
//! One implementation for both modes. The runtime chooses only *how results leave*:
//! [`Emit::Updates`] (the stream job: a window's result when the watermark passes its end,
//! then a corrected result for every late update, all under one record_uuid) or
//! [`Emit::FinalOnly`] (a backfill: each window once, when it can no longer change). The last
//! value of every record_uuid is the same either way, and so is every dead letter.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::RecordBatch;

use super::audit::Audit;
use super::rules::AggregationRules;
use super::window_map::Window;
use super::windows::{window_count, Acc, Counted, WindowKey, WindowTable, WindowValue, WindowsByStart};
use crate::contract::outputs::{AdMetric, AdMetricsBuilder, DeadLetter};
use crate::contract::record_uuid;
use crate::contract::time::{floor_to, HOUR_MS};
use crate::core::ad_event_rules;
use crate::core::batch_view::{BatchView, ABSENT};
use crate::core::dedupe::{self, DedupeState, Position};
use crate::core::interner::Interner;
use crate::core::job::{Emit, EpochInput, Operator, RunSettings, StateSize};
use crate::core::reason::Reject;

/// How many windows ahead [`AggregationOperator::drain_batch`] prefetches the names of the
/// windows' strings.
const NAMES_AHEAD: usize = 16;

/// How late an event may be ingested and still count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lateness {
    /// The job's rule: out-of-orderness + allowed lateness after the window's end.
    Bounded,
    /// `--complete`: every valid event counts, however late (a restatement).
    Unbounded,
}

/// What part of the results this operator is responsible for emitting. A backfill of
/// [from, to) reads context around its range; it emits the windows that start in [from, to)
/// and dead letters for messages ingested in [from, to), so adjacent backfills partition both
/// outputs exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub window_starts: Range<i64>,
    pub reject_ingest: Range<i64>,
}

impl Scope {
    pub fn everything() -> Self {
        Self { window_starts: i64::MIN..i64::MAX, reject_ingest: i64::MIN..i64::MAX }
    }

    pub fn range(from: i64, to: i64) -> Self {
        Self { window_starts: from..to, reject_ingest: from..to }
    }
}

/// An operator's keyed state between epochs: what a checkpoint stores.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OperatorState {
    /// Interned strings in id order; window keys refer to them by id.
    pub strings: Vec<String>,
    /// Dedupe keys with the ingest time of their counted arrival.
    pub dedupe: dedupe::Entries,
    pub windows: Vec<WindowValue>,
    pub fired_before: Option<i64>,
    pub epoch: u32,
    pub ingest_watermark: i64,
    pub purged_before: i64,
    pub last_expiry: i64,
    pub audit: Audit,
}

impl StateSize for OperatorState {
    /// Varints take at most 5 bytes (u32) or 10 (i64): a string is its bytes and a length, a
    /// window at most 75 bytes. The rest (audit, watermarks) fits in 4 KiB.
    fn encoded_len_bound(&self) -> usize {
        let strings: usize = self.strings.iter().map(|s| s.len() + 5).sum();
        4096 + strings + self.dedupe.encoded_len() + self.windows.len() * 80
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub emit: Emit,
    pub lateness: Lateness,
    pub scope: Scope,
}

impl Settings {
    /// A runtime's settings as this job reads them: `complete` lifts the lateness rule, a
    /// range scopes what is emitted.
    pub fn of(run: &RunSettings) -> Self {
        Self {
            emit: run.emit,
            lateness: if run.complete { Lateness::Unbounded } else { Lateness::Bounded },
            scope: run.range.map_or_else(Scope::everything, |(from, to)| Scope::range(from, to)),
        }
    }
}

/// Window results as the window table hands them out: updates as a list, purges as the
/// removed part of the table itself.
enum Emitted {
    Values(Vec<WindowValue>),
    Purged(WindowsByStart),
}

impl Emitted {
    fn len(&self) -> usize {
        match self {
            Emitted::Values(v) => v.len(),
            Emitted::Purged(p) => window_count(p.values()),
        }
    }
}

struct Candidate {
    window_start: i64,
    ad: u32,
    region: u32,
    click: bool,
    campaign: u32,
    advertiser: u32,
}

/// The event-time watermark at ingest watermark `t`: no on-time event can be earlier.
fn event_watermark(rules: &AggregationRules, t: i64) -> i64 {
    t.saturating_sub(rules.out_of_orderness_ms)
}

/// How many window ends, counted from the Unix epoch, the event-time watermark has passed at
/// ingest watermark `t`: it grows by one exactly when
/// [`AggregationOperator::advance_ingest_watermark`] fires the windows of another window end
/// (emits their on-time results, in [`Emit::Updates`] mode), so a runtime can tell whether
/// windows fired between two watermarks (the stream job checkpoints then) without restating
/// the firing rule.
pub fn window_ends_fired(rules: &AggregationRules, t: i64) -> i64 {
    event_watermark(rules, t).div_euclid(rules.window_ms)
}

pub struct AggregationOperator {
    rules: AggregationRules,
    settings: Settings,
    topic: std::sync::Arc<str>,
    strings: Interner,
    dedupe: DedupeState,
    windows: WindowTable,
    epoch: u32,
    ingest_watermark: i64,
    purged_before: i64,
    last_expiry: i64,
    audit: Audit,
    /// Window results emitted and not yet drained, in emission order.
    metrics: Vec<Emitted>,
    dead: Vec<DeadLetter>,
    /// An epoch's candidates and their dedupe arrivals, kept between epochs: tens of megabytes
    /// per backfill hour that would otherwise be fresh memory, which the kernel zeroes, every
    /// epoch.
    scratch: (Vec<Candidate>, Vec<(u128, Position)>),
}

impl AggregationOperator {
    pub fn new(rules: AggregationRules, settings: Settings) -> Self {
        Self {
            topic: rules.input_topic.as_str().into(),
            rules,
            settings,
            strings: Interner::default(),
            dedupe: DedupeState::default(),
            windows: WindowTable::default(),
            epoch: 0,
            ingest_watermark: i64::MIN,
            purged_before: i64::MIN,
            last_expiry: i64::MIN,
            audit: Audit::default(),
            metrics: Vec::new(),
            dead: Vec::new(),
            scratch: Default::default(),
        }
    }

    pub fn rules(&self) -> &AggregationRules {
        &self.rules
    }

    /// Sizes of the keyed state: (dedupe entries, open windows).
    pub fn state_size(&self) -> (usize, usize) {
        (self.dedupe.len(), self.windows.len())
    }

    /// Processes one epoch: canonical batches delivered together. `rows[i]`, when given,
    /// selects the rows of `batches[i]` that belong to this operator's key group.
    pub fn process_batches(&mut self, batches: &[RecordBatch], rows: Option<&[Vec<u32>]>) {
        self.epoch += 1;
        let (mut cands, mut arrivals) = std::mem::take(&mut self.scratch);
        for (bi, batch) in batches.iter().enumerate() {
            let mut view = BatchView::new(batch);
            view.resolve(rows.map(|sel| sel[bi].as_slice()), &mut self.strings);
            match rows {
                Some(sel) => {
                    cands.reserve(sel[bi].len());
                    arrivals.reserve(sel[bi].len());
                    for &row in &sel[bi] {
                        self.admit(&mut view, row as usize, &mut cands, &mut arrivals);
                    }
                }
                None => {
                    cands.reserve(batch.num_rows());
                    arrivals.reserve(batch.num_rows());
                    for row in 0..batch.num_rows() {
                        self.admit(&mut view, row, &mut cands, &mut arrivals);
                    }
                }
            }
        }
        let counted = self.dedupe.resolve(self.epoch, self.rules.dedupe_ttl_ms, &arrivals);
        let (scope, audit) = (&self.settings.scope.window_starts, &mut self.audit);
        self.windows.add_all(cands.iter().zip(&arrivals).zip(counted).filter_map(|((cand, arrival), counted)| {
            if !scope.contains(&cand.window_start) {
                audit.outside_range += 1;
                None
            } else if !counted {
                audit.duplicates += 1;
                None
            } else {
                audit.counted += 1;
                Some(Counted {
                    start: cand.window_start,
                    key: (cand.ad, cand.region),
                    click: cand.click,
                    campaign: cand.campaign,
                    advertiser: cand.advertiser,
                    pos: arrival.1,
                })
            }
        }));
        cands.clear();
        arrivals.clear();
        self.scratch = (cands, arrivals);
        if self.settings.emit == Emit::Updates {
            let updates = self.windows.take_updates();
            self.metrics.push(Emitted::Values(updates));
        }
    }

    /// Validates one row and applies the lateness rule; a survivor becomes a dedupe candidate.
    #[inline]
    fn admit(&mut self, v: &mut BatchView, row: usize, cands: &mut Vec<Candidate>, arrivals: &mut Vec<(u128, Position)>) {
        self.audit.read += 1;
        let ingest = BatchView::opt(v.ingest, row);
        let event_id = match self.validate(v, row, ingest, cands) {
            Ok(event_id) => event_id,
            Err(reject) => return self.reject(v, row, ingest, reject),
        };
        let ingest = ingest.expect("validated");
        if self.settings.lateness == Lateness::Bounded {
            let window_start = cands.last().expect("validate pushed it").window_start;
            let window_end = window_start + self.rules.window_ms;
            let late = if ingest >= window_end + self.rules.out_of_orderness_ms + self.rules.allowed_lateness_ms {
                Some(Reject::Late { window_end, ingest })
            } else if window_start < self.purged_before {
                Some(Reject::AfterPurge { window_end, ingest })
            } else {
                None
            };
            if let Some(late) = late {
                cands.pop();
                return self.reject(v, row, Some(ingest), late);
            }
        }
        let p = BatchView::opt(v.partition, row).unwrap_or(-1);
        let o = BatchView::opt(v.offset, row).unwrap_or(-1);
        let seed = v.ad.seed(row);
        arrivals.push((dedupe::key_of(seed, event_id), (ingest, p, o)));
        debug_assert_eq!(cands.len(), arrivals.len(), "a candidate per arrival");
    }

    /// Validates one row (`core::ad_event_rules`); a valid row's candidate is pushed onto
    /// `cands` in place and its event_id returned.
    fn validate<'b>(
        &mut self,
        v: &mut BatchView<'b>,
        row: usize,
        ingest: Option<i64>,
        cands: &mut Vec<Candidate>,
    ) -> Result<&'b str, Reject> {
        let window_ms = self.rules.window_ms;
        ad_event_rules::validate(&self.rules.ad_events, v, row, ingest, |e| {
            let window_start = floor_to(e.event_time, window_ms);
            cands.push(Candidate { window_start, ad: e.ad, region: e.region, click: e.click, campaign: e.campaign, advertiser: e.advertiser });
        })
    }

    fn reject(&mut self, v: &BatchView, row: usize, ingest: Option<i64>, reject: Reject) {
        if ingest.is_some_and(|t| !self.settings.scope.reject_ingest.contains(&t)) {
            self.audit.outside_range += 1;
            return;
        }
        if reject.is_late() {
            self.audit.dropped_late += 1;
        } else {
            self.audit.invalid += 1;
        }
        *self.audit.rejected_by_reason.entry(reject.code()).or_default() += 1;
        let (partition, offset, kafka_timestamp) = v.position(row);
        let payload = v.payload(row);
        let record_uuid = match (partition, offset) {
            (Some(p), Some(o)) => record_uuid::dead_letter(&self.topic, p, o),
            _ => record_uuid::dead_letter_unpositioned(&self.topic, &payload),
        };
        self.dead.push(DeadLetter {
            record_uuid,
            topic: self.topic.clone(),
            partition,
            offset,
            kafka_timestamp,
            reason: reject.to_string(),
            payload,
        });
    }

    fn name(&self, id: u32) -> Option<&Arc<str>> {
        (id != ABSENT).then(|| self.strings.name(id))
    }

    /// The operator a snapshot describes, under the given rules and settings.
    pub fn restore(rules: AggregationRules, settings: Settings, state: OperatorState) -> Self {
        let mut op = Self::new(rules, settings);
        for s in &state.strings {
            op.strings.intern(s);
        }
        op.dedupe = DedupeState::restore(state.dedupe.iter());
        op.windows = WindowTable::restore(state.windows, state.fired_before);
        op.epoch = state.epoch;
        op.ingest_watermark = state.ingest_watermark;
        op.purged_before = state.purged_before;
        op.last_expiry = state.last_expiry;
        op.audit = state.audit;
        op
    }

    /// The earliest window start among the results emitted and not yet drained.
    pub fn first_emitted_start(&self) -> Option<i64> {
        self.metrics
            .iter()
            .filter_map(|e| match e {
                Emitted::Values(v) => v.iter().map(|w| w.0).min(),
                Emitted::Purged(p) => p.keys().next().copied(),
            })
            .min()
    }

    /// Takes the records emitted so far for windows starting before `before` as one
    /// `ad-metrics` batch (None when there are none), rows ordered by (window_start, region,
    /// ad_id), and every dead letter: the columnar path to a table. Draining a bounded range at
    /// a time keeps a writer's buffers to that range's size.
    pub fn drain_batch(&mut self, before: i64) -> (Option<RecordBatch>, Vec<DeadLetter>) {
        let dead = std::mem::take(&mut self.dead);
        // One table of everything emitted, later emissions of a window replacing earlier ones
        // (the upsert a table of final values needs); purges move whole starts in.
        let mut all = WindowsByStart::new();
        for e in std::mem::take(&mut self.metrics) {
            match e {
                Emitted::Purged(p) => {
                    for (start, windows) in p {
                        match all.entry(start) {
                            std::collections::btree_map::Entry::Vacant(v) => {
                                v.insert(windows);
                            }
                            std::collections::btree_map::Entry::Occupied(mut o) => o.get_mut().extend(windows),
                        }
                    }
                }
                Emitted::Values(v) => {
                    for (start, key, acc) in v {
                        all.entry(start).or_default().insert(key, acc);
                    }
                }
            }
        }
        let later = all.split_off(&before);
        if !later.is_empty() {
            self.metrics.push(Emitted::Purged(later));
        }
        let all: Vec<(i64, Vec<Window>)> = all.into_iter().map(|(start, windows)| (start, windows.into_windows())).collect();
        let rows = all.iter().map(|(_, w)| w.len()).sum::<usize>();
        if rows == 0 {
            return (None, dead);
        }
        self.strings.update_ranks();
        let (s, rank) = (&self.strings, self.strings.ranks());
        let text = |id: u32| self.name(id).map_or(0, |n| n.len());
        let opt = |id: u32| self.name(id).map(|n| &**n);
        // The windows name their strings in no order related to where those are in memory, so
        // the names are fetched ahead: an entry NAMES_AHEAD windows ahead (where the string
        // is), the string itself half as far ahead (its entry arrived meanwhile).
        let entries_ahead = |ad: u32, acc: &Acc| {
            s.prefetch_entry(ad);
            s.prefetch_entry(acc.campaign);
            s.prefetch_entry(acc.advertiser);
        };
        let mut bytes = [0usize; 4];
        for (_, windows) in &all {
            windows.iter().take(NAMES_AHEAD).for_each(|w| entries_ahead(w.key.0, &w.acc));
            for (i, &Window { key: (ad, region), acc }) in windows.iter().enumerate() {
                if let Some(w) = windows.get(i + NAMES_AHEAD) {
                    entries_ahead(w.key.0, &w.acc);
                }
                bytes[0] += text(region);
                bytes[1] += text(ad);
                bytes[2] += text(acc.campaign);
                bytes[3] += text(acc.advertiser);
            }
        }
        let mut b = AdMetricsBuilder::with_capacity(rows, bytes);
        let mut order: Vec<(u32, u32, WindowKey, Acc)> = Vec::new();
        for (start, windows) in all {
            let mut decimal = itoa::Buffer::new();
            let start_decimal = decimal.format(start);
            // Within a start, (region, ad_id) order by rank: no string comparison.
            order.clear();
            order.extend(windows.into_iter().map(|Window { key: k, acc: a }| (rank[k.1 as usize], rank[k.0 as usize], k, a)));
            order.sort_unstable_by_key(|w| (w.0, w.1));
            for (i, &(_, _, (ad, region), acc)) in order.iter().enumerate() {
                if let Some((_, _, (ad, _), acc)) = order.get(i + NAMES_AHEAD) {
                    entries_ahead(*ad, acc);
                }
                if let Some(&(_, _, (ad, _), acc)) = order.get(i + NAMES_AHEAD / 2) {
                    s.prefetch_bytes(ad);
                    s.prefetch_bytes(acc.campaign);
                    s.prefetch_bytes(acc.advertiser);
                }
                let (region, ad) = (s.name(region), s.name(ad));
                b.append(
                    &record_uuid::ad_metric_of_start(region, ad, start_decimal),
                    region,
                    ad,
                    opt(acc.campaign),
                    opt(acc.advertiser),
                    start,
                    start + self.rules.window_ms,
                    acc.impressions(),
                    acc.clicks(),
                );
            }
        }
        (Some(b.finish()), dead)
    }
}

impl Operator for AggregationOperator {
    fn state_sizes(&self) -> Vec<(&'static str, u64)> {
        vec![("dedupe_entries", self.dedupe.len() as u64), ("open_windows", self.windows.len() as u64)]
    }

    type Record = AdMetric;
    type Audit = Audit;
    type State = OperatorState;

    fn process_epoch(&mut self, epoch: &[EpochInput<'_>]) {
        let [input] = epoch else { panic!("the aggregation job has one input, given {}", epoch.len()) };
        self.process_batches(input.batches, input.rows);
    }

    /// The runtime's promise that no message ingested before `t` will follow. Fires windows
    /// the event-time watermark (`t` − out-of-orderness) has passed, purges those past allowed
    /// lateness, and expires dedupe state no future arrival can hit.
    fn advance_ingest_watermark(&mut self, t: i64) {
        if t <= self.ingest_watermark {
            return;
        }
        self.ingest_watermark = t;
        let event_wm = event_watermark(&self.rules, t);
        // Window [s, s + size) has ended once event_wm >= s + size.
        let fire_limit = event_wm.saturating_sub(self.rules.window_ms).saturating_add(1);
        if self.settings.emit == Emit::Updates {
            let fired = self.windows.fire_before(fire_limit);
            self.metrics.push(Emitted::Values(fired));
        }
        let purge_limit = match self.settings.lateness {
            Lateness::Bounded => fire_limit.saturating_sub(self.rules.allowed_lateness_ms),
            // Every valid arrival from now on has event_time >= t - max_past, so windows that
            // end at or before that are final: without this a long --complete backfill would
            // hold every window of its range until the end.
            Lateness::Unbounded => t.saturating_sub(self.rules.ad_events.max_past_ms).saturating_sub(self.rules.window_ms).saturating_add(1),
        };
        if purge_limit > self.purged_before {
            let purged = self.windows.purge_before(purge_limit);
            if self.settings.emit == Emit::FinalOnly {
                self.metrics.push(Emitted::Purged(purged));
            }
            self.purged_before = purge_limit;
        }
        let ttl = self.rules.dedupe_ttl_ms;
        if t.saturating_sub(self.last_expiry) >= ttl / 4 {
            self.dedupe.expire(t, ttl);
            self.last_expiry = t;
        }
    }

    /// End of a bounded input: every open window's value is final.
    fn finish(&mut self) {
        let rest = match self.settings.emit {
            Emit::Updates => {
                let mut v = self.windows.fire_before(i64::MAX);
                v.extend(self.windows.take_updates());
                Emitted::Values(v)
            }
            Emit::FinalOnly => Emitted::Purged(self.windows.purge_before(i64::MAX)),
        };
        self.metrics.push(rest);
    }

    fn ingest_watermark(&self) -> i64 {
        self.ingest_watermark
    }

    fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Makes room in the dedupe state once: one allocation instead of a table that doubles its
    /// way there. It holds at most a TTL's worth of the rows to come (plus the quarter-TTL
    /// between expiries).
    fn reserve(&mut self, rows: f64, rows_per_hour: f64) {
        let ttl_hours = (self.rules.dedupe_ttl_ms as f64 * 1.25 / HOUR_MS as f64).ceil() + 1.0;
        self.dedupe.reserve(rows.min(rows_per_hour * ttl_hours) as usize);
    }

    /// Takes the records emitted so far, in emission order.
    fn drain(&mut self) -> (Vec<AdMetric>, Vec<DeadLetter>) {
        let emitted = std::mem::take(&mut self.metrics);
        // Sized up front: grown as it was filled, the vector of records (112 bytes each)
        // doubled into fresh memory on the way.
        let mut metrics = Vec::with_capacity(emitted.iter().map(Emitted::len).sum());
        let metric = |(start, (ad, region), acc): WindowValue| {
            let (region, ad) = (self.strings.name(region).clone(), self.strings.name(ad).clone());
            AdMetric {
                record_uuid: record_uuid::ad_metric(&region, &ad, start),
                region,
                ad_id: ad,
                campaign_id: self.name(acc.campaign).cloned(),
                advertiser_id: self.name(acc.advertiser).cloned(),
                window_start: start,
                window_end: start + self.rules.window_ms,
                impressions: acc.impressions(),
                clicks: acc.clicks(),
            }
        };
        for e in emitted {
            match e {
                Emitted::Values(v) => metrics.extend(v.into_iter().map(metric)),
                Emitted::Purged(p) => metrics.extend(p.into_iter().flat_map(|(s, m)| m.into_iter().map(move |(k, a)| metric((s, k, a))))),
            }
        }
        (metrics, std::mem::take(&mut self.dead))
    }

    fn drain_tables(&mut self, before: i64) -> (Vec<(usize, RecordBatch)>, Vec<DeadLetter>) {
        let (metrics, dead) = self.drain_batch(before);
        (metrics.map(|b| (0, b)).into_iter().collect(), dead)
    }

    /// Windows starting before this have been purged: in [`Emit::FinalOnly`] mode their final
    /// values have been emitted and nothing will follow them.
    fn final_before(&self) -> i64 {
        self.purged_before
    }

    fn first_emitted(&self) -> Option<i64> {
        self.first_emitted_start()
    }

    /// The keyed state between epochs, for a checkpoint. Everything emitted must have been
    /// drained: a snapshot describes the state *after* its outputs.
    fn snapshot(&self) -> OperatorState {
        assert!(self.metrics.is_empty() && self.dead.is_empty(), "snapshot before drain");
        let (windows, fired_before) = self.windows.entries();
        OperatorState {
            strings: self.strings.names().map(str::to_string).collect(),
            dedupe: self.dedupe.snapshot(),
            windows,
            fired_before,
            epoch: self.epoch,
            ingest_watermark: self.ingest_watermark,
            purged_before: self.purged_before,
            last_expiry: self.last_expiry,
            audit: self.audit.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::schema::normalize;
    use crate::core::ad_event_rules::OptionalField;
    use crate::gen::{rows_to_batch, Row};

    const T0: i64 = 1_767_225_600_000;
    const WEEK: i64 = 7 * 24 * 3_600_000;

    fn event(id: &str, event_time: i64, offset: i64, ingest: i64) -> RecordBatch {
        let row = Row {
            event_id: Some(id.into()),
            event_type: Some("impression".into()),
            ad_id: Some("ad-1".into()),
            campaign_id: None,
            advertiser_id: None,
            user_id: None,
            store_id: None,
            event_time: Some(event_time),
            region: Some("r".into()),
            partition: 0,
            offset,
            ingest,
        };
        normalize(&rows_to_batch(&[&row])).unwrap().0
    }

    fn impressions(batch: Option<RecordBatch>) -> Vec<(i64, i64)> {
        let rows = batch.map(|b| crate::contract::outputs::ad_metrics_rows(&b).unwrap()).unwrap_or_default();
        rows.iter().map(|m| (m.window_start, m.impressions)).collect()
    }

    /// With --complete a window is final once the watermark is past its end by max_past: the
    /// last valid arrival can come exactly then, and the first invalid one right after.
    #[test]
    fn complete_mode_emits_a_window_once_no_valid_event_can_reach_it() {
        let settings = Settings { emit: Emit::FinalOnly, lateness: Lateness::Unbounded, scope: Scope::everything() };
        let mut op = AggregationOperator::new(AggregationRules::defaults(), settings);
        let last_event_time = T0 + 59_999;
        op.process_batches(&[event("a", T0 + 5_000, 0, T0 + 10_000)], None);
        // The latest valid arrival for the window [T0, T0 + 1 min) is ingested at its last
        // millisecond + max_past; up to that instant the window must stay open.
        op.advance_ingest_watermark(last_event_time + WEEK);
        assert_eq!(impressions(op.drain_batch(i64::MAX).0), vec![]);
        op.process_batches(&[event("b", last_event_time, 1, last_event_time + WEEK)], None);
        op.advance_ingest_watermark(last_event_time + WEEK + 1);
        assert_eq!(impressions(op.drain_batch(i64::MAX).0), vec![(T0, 2)]);
        // One millisecond later the same event time is too old: dead-lettered, never counted.
        op.process_batches(&[event("c", last_event_time, 2, last_event_time + WEEK + 1)], None);
        let (metrics, dead) = op.drain_batch(i64::MAX);
        assert_eq!(impressions(metrics), vec![]);
        assert_eq!(dead.iter().map(|d| d.reason_code()).collect::<Vec<_>>(), vec!["event_time_too_old"]);
        op.finish();
        assert_eq!(impressions(op.drain_batch(i64::MAX).0), vec![]);
    }

    /// A field required by the job file counts as present only when neither null nor empty,
    /// as `event_id` does, from plain strings and from views alike.
    #[test]
    fn required_user_and_store_ids_must_be_present_and_non_empty() {
        use crate::contract::schema::viewed;
        let mut rules = AggregationRules::defaults();
        rules.ad_events.also_required = vec![OptionalField::UserId, OptionalField::StoreId];
        let ids = [(Some("u"), Some("s")), (None, Some("s")), (Some(""), Some("s")), (Some("u"), None), (Some("u"), Some(""))];
        let rows: Vec<Row> = ids
            .iter()
            .enumerate()
            .map(|(i, (user, store))| Row {
                event_id: Some(format!("e{i}")),
                event_type: Some("impression".into()),
                ad_id: Some("ad-1".into()),
                campaign_id: None,
                advertiser_id: None,
                user_id: user.map(Into::into),
                store_id: store.map(Into::into),
                event_time: Some(T0 + 5_000),
                region: Some("r".into()),
                partition: 0,
                offset: i as i64,
                ingest: T0 + 10_000,
            })
            .collect();
        let plain = normalize(&rows_to_batch(&rows.iter().collect::<Vec<_>>())).unwrap().0;
        let viewed = viewed(&plain);
        for batch in [plain, viewed] {
            let settings = Settings { emit: Emit::FinalOnly, lateness: Lateness::Bounded, scope: Scope::everything() };
            let mut op = AggregationOperator::new(rules.clone(), settings);
            op.process_batches(&[batch], None);
            op.finish();
            let (metrics, dead) = op.drain_batch(i64::MAX);
            assert_eq!(impressions(metrics), vec![(T0, 1)]);
            let reasons: Vec<_> = dead.iter().map(|d| (d.offset, d.reason.as_str())).collect();
            assert_eq!(
                reasons,
                vec![
                    (Some(1), "missing_field: user_id is missing, null or empty"),
                    (Some(2), "missing_field: user_id is missing, null or empty"),
                    (Some(3), "missing_field: store_id is missing, null or empty"),
                    (Some(4), "missing_field: store_id is missing, null or empty"),
                ]
            );
        }
    }

    /// `window_ends_fired` grows exactly when the operator fires windows: the stream job's
    /// checkpoint trigger relies on it.
    #[test]
    fn window_ends_fired_counts_the_operators_firings() {
        let rules = AggregationRules::defaults();
        let settings = Settings { emit: Emit::Updates, lateness: Lateness::Bounded, scope: Scope::everything() };
        let mut op = AggregationOperator::new(rules.clone(), settings);
        let minutes = 4;
        let batches: Vec<RecordBatch> = (0..minutes).map(|i| event(&format!("e{i}"), T0 + 60_000 * i + 5_000, i, T0)).collect();
        op.process_batches(&batches, None);
        // The windows end at window ends number T0 / window + 1, + 2, …
        let first = T0 / rules.window_ms;
        let mut fired = 0;
        for k in 1..=1_400 {
            for t in [T0 + 250 * k - 1, T0 + 250 * k] {
                op.advance_ingest_watermark(t);
                fired += impressions(op.drain_batch(i64::MAX).0).len() as i64;
                assert_eq!(fired, (window_ends_fired(&rules, t) - first).clamp(0, minutes), "at ingest watermark T0 + {} ms", t - T0);
            }
        }
        assert_eq!(fired, minutes);
        // Counted from the epoch, before it too (div_euclid, not truncation).
        assert_eq!(window_ends_fired(&rules, rules.out_of_orderness_ms - 1), -1);
        assert_eq!(window_ends_fired(&rules, rules.out_of_orderness_ms), 0);
    }

    #[test]
    fn drain_batch_takes_only_windows_before_its_limit_in_output_order() {
        let settings = Settings { emit: Emit::FinalOnly, lateness: Lateness::Unbounded, scope: Scope::everything() };
        let mut op = AggregationOperator::new(AggregationRules::defaults(), settings);
        let batches: Vec<RecordBatch> =
            (0..4).map(|i| event(&format!("e{i}"), T0 + 3_600_000 * (i % 2) + 60_000 * i, i, T0 + 2 * 3_600_000)).collect();
        op.process_batches(&batches, None);
        op.finish();
        assert_eq!(op.first_emitted_start(), Some(T0));
        assert_eq!(impressions(op.drain_batch(T0 + 3_600_000).0), vec![(T0, 1), (T0 + 120_000, 1)]);
        assert_eq!(op.first_emitted_start(), Some(T0 + 3_600_000 + 60_000));
        assert_eq!(impressions(op.drain_batch(i64::MAX).0), vec![(T0 + 3_600_000 + 60_000, 1), (T0 + 3_600_000 + 180_000, 1)]);
        assert_eq!(op.first_emitted_start(), None);
    }
}
