//! A Kafka record of an output topic as a row of its serving table, or the reason it cannot be
//! one. A record that does not fit (not the table's JSON, text PostgreSQL cannot store, a time
//! outside PostgreSQL's range) becomes a dead letter of the load, never a failed batch.

use std::sync::LazyLock;

use chrono::{DateTime, NaiveDate};
use postgres::binary_copy::BinaryCopyInWriter;
use uuid::Uuid;

use crate::contract::attributed_orders::AttributedOrder;
use crate::contract::outputs::AdMetric;
use crate::contract::table::TableKind;

/// One record, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Metric(AdMetric),
    Order(AttributedOrder),
}

/// A record's value as a row of a `kind` table, or why it is not one (`code: detail`).
pub fn parse(kind: TableKind, value: Option<&[u8]>) -> Result<Row, String> {
    let value = value.ok_or("no-value: the record has no value (a tombstone)")?;
    let row = match kind {
        TableKind::AdMetrics => Row::Metric(serde_json::from_slice(value).map_err(|e| reason(value, e))?),
        TableKind::AttributedOrders => Row::Order(serde_json::from_slice(value).map_err(|e| reason(value, e))?),
    };
    row.check()?;
    Ok(row)
}

fn reason(value: &[u8], e: serde_json::Error) -> String {
    match serde_json::from_slice::<serde::de::IgnoredAny>(value) {
        Err(_) => format!("not-json: {e}"),
        Ok(_) => format!("not-a-record: {e}"),
    }
}

/// PostgreSQL's `timestamp with time zone` starts at 4714-11-24 BC and ends at 294276 AD,
/// after the last time chrono represents (262143 AD), so chrono's range bounds it above.
fn pg_time(column: &str, ms: i64) -> Result<(), String> {
    static MIN_MS: LazyLock<i64> = LazyLock::new(|| {
        NaiveDate::from_ymd_opt(-4713, 11, 24).expect("within chrono's range").and_hms_opt(0, 0, 0).expect("valid time").and_utc().timestamp_millis()
    });
    if ms >= *MIN_MS && DateTime::from_timestamp_millis(ms).is_some() {
        Ok(())
    } else {
        Err(format!("time-out-of-range: {column} = {ms} ms is outside PostgreSQL's timestamp range"))
    }
}

/// PostgreSQL's text cannot hold a NUL character.
fn pg_text(column: &str, s: &str) -> Result<(), String> {
    if s.contains('\0') {
        Err(format!("nul-in-text: {column} holds a NUL character, which PostgreSQL's text cannot store"))
    } else {
        Ok(())
    }
}

impl Row {
    pub fn record_uuid(&self) -> Uuid {
        match self {
            Self::Metric(m) => m.record_uuid,
            Self::Order(o) => o.record_uuid,
        }
    }

    fn check(&self) -> Result<(), String> {
        match self {
            Self::Metric(m) => {
                pg_text("region", &m.region)?;
                pg_text("ad_id", &m.ad_id)?;
                pg_text("campaign_id", m.campaign_id.as_deref().unwrap_or_default())?;
                pg_text("advertiser_id", m.advertiser_id.as_deref().unwrap_or_default())?;
                pg_time("window_start", m.window_start)?;
                pg_time("window_end", m.window_end)?;
            }
            Self::Order(o) => {
                for (c, s) in [
                    ("order_id", o.order_id.as_str()),
                    ("user_id", &o.user_id),
                    ("store_id", &o.store_id),
                    ("region", &o.region),
                    ("status", &o.status),
                    ("currency", &o.currency),
                    ("ad_id", &o.ad_id),
                    ("campaign_id", o.campaign_id.as_deref().unwrap_or_default()),
                    ("advertiser_id", o.advertiser_id.as_deref().unwrap_or_default()),
                    ("attributed_event_id", &o.attributed_event_id),
                ] {
                    pg_text(c, s)?;
                }
                pg_time("order_time", o.order_time)?;
                pg_time("ad_event_time", o.ad_event_time)?;
            }
        }
        Ok(())
    }

    /// Writes the row in the column order of [`super::table::columns`].
    pub fn write(&self, w: &mut BinaryCopyInWriter) -> Result<(), postgres::Error> {
        let t = |ms: i64| DateTime::from_timestamp_millis(ms).expect("checked by parse");
        match self {
            Self::Metric(m) => w.write(&[
                &m.record_uuid,
                &&*m.region,
                &&*m.ad_id,
                &m.campaign_id.as_deref(),
                &m.advertiser_id.as_deref(),
                &t(m.window_start),
                &t(m.window_end),
                &m.impressions,
                &m.clicks,
            ]),
            Self::Order(o) => w.write(&[
                &o.record_uuid,
                &o.order_id,
                &o.user_id,
                &o.store_id,
                &o.region,
                &t(o.order_time),
                &o.status,
                &o.amount_cents,
                &o.currency,
                &o.ad_id,
                &o.campaign_id,
                &o.advertiser_id,
                &o.attributed_event_id,
                &o.attribution_type.as_str(),
                &t(o.ad_event_time),
            ]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::columns;
    use super::*;

    #[test]
    fn serving_columns_are_the_contract_tables_columns() {
        for kind in [TableKind::AdMetrics, TableKind::AttributedOrders] {
            let contract: Vec<String> = kind.schema().fields().iter().map(|f| f.name().clone()).collect();
            let serving: Vec<&str> = columns(kind).iter().map(|c| c.name).collect();
            assert_eq!(serving, contract, "{kind:?}");
        }
    }

    #[test]
    fn records_that_do_not_fit_have_a_reason() {
        let ok = br#"{"record_uuid":"0b7d1b3e-4c52-5e0f-9d0c-3f1c6f0a9e11","region":"region-a","ad_id":"ad-1","campaign_id":null,"advertiser_id":"adv","window_start":60000,"window_end":120000,"impressions":3,"clicks":1}"#;
        assert!(matches!(parse(TableKind::AdMetrics, Some(ok)), Ok(Row::Metric(m)) if m.impressions == 3));
        let code = |v: &[u8]| parse(TableKind::AdMetrics, Some(v)).unwrap_err().split(':').next().unwrap().to_string();
        assert_eq!(parse(TableKind::AdMetrics, None).unwrap_err().split(':').next().unwrap(), "no-value");
        assert_eq!(code(b"{not json"), "not-json");
        assert_eq!(code(br#"{"record_uuid":"0b7d1b3e-4c52-5e0f-9d0c-3f1c6f0a9e11"}"#), "not-a-record");
        assert_eq!(code(&String::from_utf8_lossy(ok).replace("ad-1", "ad\\u0000x").into_bytes()), "nul-in-text");
        assert_eq!(code(&String::from_utf8_lossy(ok).replace(":60000", ":9000000000000000").into_bytes()), "time-out-of-range");
        // Before 4714-11-24 BC (-210866803200000 ms), PostgreSQL's first timestamp; at it, fine.
        assert_eq!(code(&String::from_utf8_lossy(ok).replace(":60000", ":-210866803200001").into_bytes()), "time-out-of-range");
        assert!(parse(TableKind::AdMetrics, Some(&String::from_utf8_lossy(ok).replace(":60000", ":-210866803200000").into_bytes())).is_ok());
        // An attributed order is not a metric.
        assert_eq!(code(br#"{"record_uuid":"0b7d1b3e-4c52-5e0f-9d0c-3f1c6f0a9e11","order_id":"o"}"#), "not-a-record");
    }
}
