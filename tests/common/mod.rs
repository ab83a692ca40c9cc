//! Test support: a deliberately naive, row-at-a-time reference model of the aggregation rules,
//! written from the rules' text and sharing no code with the job core, plus helpers.
#![allow(dead_code)]

pub mod attribution;
pub mod broker_log;
pub mod exactly_once;
pub mod kafka;
pub mod moto;
pub mod parquet_out;
pub mod postgres;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use adsproc::contract::outputs::AdMetric;
use adsproc::contract::raw::RawMessage;
use adsproc::gen::Row;

pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;

/// 2026-01-01T00:00:00Z
pub const T0: i64 = 1_767_225_600_000;

/// (region, ad_id, window_start) → (campaign_id, advertiser_id, impressions, clicks)
pub type Windows = BTreeMap<(String, String, i64), (Option<String>, Option<String>, i64, i64)>;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub windows: Windows,
    /// (partition, offset) of every dead letter in scope.
    pub dead: BTreeSet<(i32, i64)>,
}

fn present(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// The rules, one message at a time in (ingest, partition, offset) order: validity, then the
/// lateness rule, then dedupe by (ad_id, event_id) with a 24 h TTL from the counted arrival,
/// then counting; windows and dead letters restricted to [from, to).
pub fn reference(rows: &[Row], from: i64, to: i64, complete: bool) -> Expected {
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by_key(|r| (r.ingest, r.partition, r.offset));
    let mut counted_at: HashMap<(String, String), i64> = HashMap::new();
    let mut out = Expected::default();
    for r in sorted {
        let reject = |out: &mut Expected| {
            if r.ingest >= from && r.ingest < to {
                out.dead.insert((r.partition, r.offset));
            }
        };
        let (Some(id), Some(ty), Some(ad), Some(et), Some(region)) =
            (present(&r.event_id), present(&r.event_type), present(&r.ad_id), r.event_time, present(&r.region))
        else {
            reject(&mut out);
            continue;
        };
        if ty != "impression" && ty != "click" {
            reject(&mut out);
            continue;
        }
        if et > r.ingest + 5 * MINUTE || et < r.ingest - 7 * DAY {
            reject(&mut out);
            continue;
        }
        let mut ws = et / MINUTE * MINUTE;
        if ws > et {
            ws -= MINUTE;
        }
        if !complete && r.ingest >= ws + MINUTE + 10_000 + 10 * MINUTE {
            reject(&mut out);
            continue;
        }
        let key = (ad.to_string(), id.to_string());
        if let Some(&t0) = counted_at.get(&key) {
            if r.ingest - t0 < DAY {
                continue; // duplicate
            }
        }
        counted_at.insert(key, r.ingest);
        if ws < from || ws >= to {
            continue;
        }
        let w = out.windows.entry((region.to_string(), ad.to_string(), ws)).or_insert((None, None, 0, 0));
        if ty == "click" {
            w.3 += 1;
        } else {
            w.2 += 1;
        }
        let (c, a) = (present(&r.campaign_id), present(&r.advertiser_id));
        if w.0.is_none() && w.1.is_none() && (c.is_some() || a.is_some()) {
            w.0 = c.map(str::to_string);
            w.1 = a.map(str::to_string);
        }
    }
    out
}

/// What an upsert store keeps: the last value of every record_uuid, in emission order.
pub fn upsert_view(metrics: &[AdMetric], from: i64, to: i64) -> Windows {
    let mut last: BTreeMap<uuid::Uuid, &AdMetric> = BTreeMap::new();
    for m in metrics {
        assert_eq!(m.record_uuid, adsproc::contract::record_uuid::ad_metric(&m.region, &m.ad_id, m.window_start));
        last.insert(m.record_uuid, m);
    }
    last.values()
        .filter(|m| m.window_start >= from && m.window_start < to)
        .map(|m| {
            (
                (m.region.to_string(), m.ad_id.to_string(), m.window_start),
                (m.campaign_id.as_deref().map(str::to_string), m.advertiser_id.as_deref().map(str::to_string), m.impressions, m.clicks),
            )
        })
        .collect()
}

/// A row as the Kafka message the archiver consumed.
pub fn to_message(r: &Row) -> RawMessage {
    let s = |v: &Option<String>| v.clone().map(serde_json::Value::String).unwrap_or(serde_json::Value::Null);
    let value = serde_json::json!({
        "event_id": s(&r.event_id), "event_type": s(&r.event_type), "ad_id": s(&r.ad_id),
        "campaign_id": s(&r.campaign_id), "advertiser_id": s(&r.advertiser_id), "user_id": s(&r.user_id),
        "store_id": s(&r.store_id), "event_time": r.event_time, "region": s(&r.region),
    });
    RawMessage { partition: r.partition, offset: r.offset, timestamp: r.ingest, payload: value.to_string().into_bytes() }
}

/// First line of each difference between two window maps, for assertion messages.
pub fn diff(expected: &Windows, actual: &Windows) -> String {
    let mut out = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => out.push(format!("missing {k:?} = {v:?}")),
            Some(a) if a != v => out.push(format!("{k:?}: expected {v:?}, got {a:?}")),
            _ => {}
        }
    }
    for (k, v) in actual {
        if !expected.contains_key(k) {
            out.push(format!("unexpected {k:?} = {v:?}"));
        }
    }
    let n = out.len();
    out.truncate(10);
    format!("{n} differences: {}", out.join("; "))
}
