//! A deliberately naive model of the attribution rules (contract §5), written from the rules'
//! text with plain loops over all messages, sharing no code with the job: what every run of the
//! attribution job is held to.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;

/// An ad event as archived (absent fields as None): the generator's row, the archive's columns.
pub type AdEvent = adsproc::gen::Row;

/// An order as archived: the generator's row.
pub type Order = adsproc::gen::orders::OrderRow;

/// An attributed order as the model computes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attributed {
    pub order_id: String,
    pub user_id: String,
    pub store_id: String,
    pub region: String,
    pub order_time: i64,
    pub status: String,
    pub amount_cents: i64,
    pub currency: String,
    pub ad_id: String,
    pub campaign_id: Option<String>,
    pub advertiser_id: Option<String>,
    pub attributed_event_id: String,
    pub click: bool,
    pub ad_event_time: i64,
}

/// A life of an order: its order_id and its first arrival's order_time (a later life of an
/// order_id starts with a later order_time, so this names it).
pub type Life = (String, i64);

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// The final value of each attributed life.
    pub records: BTreeMap<Life, Attributed>,
    /// (partition, offset) of every invalid order in scope.
    pub dead: BTreeSet<(i32, i64)>,
}

fn present(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// §5 "Valid order".
pub fn valid_order(o: &Order) -> bool {
    let ids = [&o.order_id, &o.user_id, &o.store_id, &o.region].iter().all(|f| present(f).is_some());
    let status = matches!(present(&o.status), Some("placed" | "completed" | "cancelled"));
    let amount = o.amount_cents.is_some_and(|a| a >= 0);
    let currency = present(&o.currency).is_some_and(|c| c.len() == 3 && c.chars().all(|ch| ch.is_ascii_uppercase()));
    let time = o.order_time.is_some_and(|t| t <= o.ingest + 5 * MINUTE && t >= o.ingest - 7 * DAY);
    ids && status && amount && currency && time
}

/// The aggregation job's validity (contract §1), with a user and a store.
fn candidate_fields(e: &AdEvent) -> bool {
    let fields = present(&e.event_id).is_some() && present(&e.ad_id).is_some() && present(&e.region).is_some();
    let kind = matches!(present(&e.event_type), Some("impression" | "click"));
    let time = e.event_time.is_some_and(|t| t <= e.ingest + 5 * MINUTE && t >= e.ingest - 7 * DAY);
    fields && kind && time && present(&e.user_id).is_some() && present(&e.store_id).is_some()
}

/// The model, for the orders whose first arrival's order_time is in [from, to) and the invalid
/// orders ingested in it.
pub fn model(ads: &[AdEvent], orders: &[Order], from: i64, to: i64) -> Expected {
    // Candidates: the first valid arrival of each (user, store, event_id), while it lives:
    // until no order could match it (its event time + its window + the orders' max_past + the
    // join wait; docs/attribution.md).
    let mut sorted_ads: Vec<&AdEvent> = ads.iter().collect();
    sorted_ads.sort_by_key(|e| (e.ingest, e.partition, e.offset));
    let mut lives_until: HashMap<(String, String, String), i64> = HashMap::new();
    let mut candidates: Vec<&AdEvent> = Vec::new();
    for e in sorted_ads {
        if !candidate_fields(e) {
            continue;
        }
        let key = (present(&e.user_id).unwrap().to_string(), present(&e.store_id).unwrap().to_string(), present(&e.event_id).unwrap().to_string());
        if lives_until.get(&key).is_some_and(|&until| until > e.ingest) {
            continue;
        }
        let window = if present(&e.event_type) == Some("click") { 7 * DAY } else { DAY };
        lives_until.insert(key, e.event_time.unwrap() + window + 7 * DAY + MINUTE);
        candidates.push(e);
    }

    // Orders: arrivals in (ingest, partition, offset) order; lives.
    let mut sorted: Vec<&Order> = orders.iter().collect();
    sorted.sort_by_key(|o| (o.ingest, o.partition, o.offset));
    let mut out = Expected::default();
    // order_id → (first arrival, latest arrival, latest order_time) of its current life.
    let mut lives: HashMap<String, (Order, Order, i64)> = HashMap::new();
    let mut ended: Vec<(Order, Order)> = Vec::new();
    for o in sorted {
        if !valid_order(o) {
            if o.ingest >= from && o.ingest < to {
                out.dead.insert((o.partition, o.offset));
            }
            continue;
        }
        let id = o.order_id.clone().unwrap();
        let ot = o.order_time.unwrap();
        match lives.get_mut(&id) {
            Some(life) if o.ingest <= life.2 + 7 * DAY => {
                life.1 = o.clone();
                life.2 = life.2.max(ot);
            }
            _ => {
                if let Some((first, last, _)) = lives.remove(&id) {
                    ended.push((first, last));
                }
                lives.insert(id, (o.clone(), o.clone(), ot));
            }
        }
    }
    ended.extend(lives.into_values().map(|(f, l, _)| (f, l)));
    // Each life's decision; later lives of an order replace earlier ones.
    ended.sort_by_key(|(f, _)| (f.ingest, f.partition, f.offset));
    for (first, last) in ended {
        let ot = first.order_time.unwrap();
        if ot < from || ot >= to {
            continue;
        }
        let (user, store) = (present(&first.user_id).unwrap(), present(&first.store_id).unwrap());
        let eligible = |click: bool, window: i64| {
            candidates
                .iter()
                .filter(|e| present(&e.user_id) == Some(user) && present(&e.store_id) == Some(store))
                .filter(|e| (present(&e.event_type) == Some("click")) == click)
                .filter(|e| e.event_time.unwrap() <= ot && e.event_time.unwrap() > ot - window && e.ingest < first.ingest + MINUTE)
                .fold(None::<&&AdEvent>, |best, e| match best {
                    Some(b) if (b.event_time.unwrap(), std::cmp::Reverse(present(&b.event_id).unwrap()))
                        >= (e.event_time.unwrap(), std::cmp::Reverse(present(&e.event_id).unwrap())) =>
                    {
                        Some(b)
                    }
                    _ => Some(e),
                })
        };
        let Some(e) = eligible(true, 7 * DAY).or_else(|| eligible(false, DAY)) else { continue };
        let s = |v: &Option<String>| v.clone().unwrap();
        out.records.insert(
            (s(&first.order_id), ot),
            Attributed {
                order_id: s(&first.order_id),
                user_id: s(&first.user_id),
                store_id: s(&first.store_id),
                region: s(&first.region),
                order_time: ot,
                status: s(&last.status),
                amount_cents: last.amount_cents.unwrap(),
                currency: s(&last.currency),
                ad_id: s(&e.ad_id),
                campaign_id: present(&e.campaign_id).map(str::to_string),
                advertiser_id: present(&e.advertiser_id).map(str::to_string),
                attributed_event_id: s(&e.event_id),
                click: present(&e.event_type) == Some("click"),
                ad_event_time: e.event_time.unwrap(),
            },
        );
    }
    out
}

/// The message a producer sends for `o`.
pub fn order_message(o: &Order) -> adsproc::contract::raw::RawMessage {
    adsproc::contract::raw::RawMessage { partition: o.partition, offset: o.offset, timestamp: o.ingest, payload: o.to_json().into_bytes() }
}

/// The last value of each life among a run's attributed orders, in emission order, in the
/// model's form; each record's uuid checked against its derivation. For an order with one life
/// (every order but a reused order_id), what an upsert store keyed by record_uuid keeps.
pub fn upsert_view(records: &[adsproc::contract::attributed_orders::AttributedOrder]) -> BTreeMap<Life, Attributed> {
    let mut out = BTreeMap::new();
    for r in records {
        assert_eq!(r.record_uuid, adsproc::contract::record_uuid::attributed_order(&r.order_id), "record_uuid of {}", r.order_id);
        out.insert(
            (r.order_id.clone(), r.order_time),
            Attributed {
                order_id: r.order_id.clone(),
                user_id: r.user_id.clone(),
                store_id: r.store_id.clone(),
                region: r.region.clone(),
                order_time: r.order_time,
                status: r.status.clone(),
                amount_cents: r.amount_cents,
                currency: r.currency.clone(),
                ad_id: r.ad_id.clone(),
                campaign_id: r.campaign_id.clone(),
                advertiser_id: r.advertiser_id.clone(),
                attributed_event_id: r.attributed_event_id.clone(),
                click: r.attribution_type == adsproc::contract::attributed_orders::AttributionType::Click,
                ad_event_time: r.ad_event_time,
            },
        );
    }
    out
}

/// First line of each difference between two record maps, for assertion messages.
pub fn diff(expected: &BTreeMap<Life, Attributed>, actual: &BTreeMap<Life, Attributed>) -> String {
    let mut out = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => out.push(format!("missing {v:?}")),
            Some(a) if a != v => out.push(format!("{k:?}: expected {v:?}, got {a:?}")),
            _ => {}
        }
    }
    for (k, v) in actual {
        if !expected.contains_key(k) {
            out.push(format!("unexpected {v:?}"));
        }
    }
    let n = out.len();
    out.truncate(6);
    format!("{n} differences: {}", out.join("; "))
}
