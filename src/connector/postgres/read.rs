//! A loaded table read back (what `adsproc load` wrote), for `adsproc diff`.

use anyhow::Context;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::table::TableName;
use crate::contract::attributed_orders::{AttributedOrder, AttributionType};
use crate::contract::outputs::AdMetric;

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(if ms < 0 { DateTime::<Utc>::MIN_UTC } else { DateTime::<Utc>::MAX_UTC })
}

/// The `ad-metrics` records of `table` whose window starts in `[from, to)`.
pub fn ad_metrics(url: &str, table: &TableName, from: i64, to: i64) -> anyhow::Result<Vec<AdMetric>> {
    let sql = format!(
        "SELECT record_uuid, region, ad_id, campaign_id, advertiser_id, window_start, window_end, impressions, clicks FROM {table} \
         WHERE window_start >= $1 AND window_start < $2"
    );
    let rows = super::connect(url, "adsproc diff")?.query(&sql, &[&at(from), &at(to)]).with_context(|| format!("cannot read {table}"))?;
    Ok(rows
        .iter()
        .map(|r| AdMetric {
            record_uuid: r.get::<_, Uuid>(0),
            region: r.get::<_, String>(1).into(),
            ad_id: r.get::<_, String>(2).into(),
            campaign_id: r.get::<_, Option<String>>(3).map(Into::into),
            advertiser_id: r.get::<_, Option<String>>(4).map(Into::into),
            window_start: ms(r.get(5)),
            window_end: ms(r.get(6)),
            impressions: r.get(7),
            clicks: r.get(8),
        })
        .collect())
}

/// The `attributed-orders` records of `table` whose `order_time` is in `[from, to)`.
pub fn attributed_orders(url: &str, table: &TableName, from: i64, to: i64) -> anyhow::Result<Vec<AttributedOrder>> {
    let sql = format!(
        "SELECT record_uuid, order_id, user_id, store_id, region, order_time, status, amount_cents, currency, ad_id, campaign_id, \
         advertiser_id, attributed_event_id, attribution_type, ad_event_time FROM {table} WHERE order_time >= $1 AND order_time < $2"
    );
    let rows = super::connect(url, "adsproc diff")?.query(&sql, &[&at(from), &at(to)]).with_context(|| format!("cannot read {table}"))?;
    rows.iter()
        .map(|r| {
            let kind: String = r.get(13);
            Ok(AttributedOrder {
                record_uuid: r.get(0),
                order_id: r.get(1),
                user_id: r.get(2),
                store_id: r.get(3),
                region: r.get(4),
                order_time: ms(r.get(5)),
                status: r.get(6),
                amount_cents: r.get(7),
                currency: r.get(8),
                ad_id: r.get(9),
                campaign_id: r.get(10),
                advertiser_id: r.get(11),
                attributed_event_id: r.get(12),
                attribution_type: AttributionType::parse(&kind)
                    .ok_or_else(|| anyhow::anyhow!("{table}: attribution_type {kind:?} is neither click nor impression"))?,
                ad_event_time: ms(r.get(14)),
            })
        })
        .collect()
}
