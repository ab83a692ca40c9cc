//! When an order is valid (contract §5), in the order of the dead-letter codes: the first rule
//! a message breaks is its reason.

use super::rules::AttributionRules;
use crate::contract::columns as c;
use crate::contract::orders::OrdersView;
use crate::contract::raw::NOT_JSON;
use crate::core::reason::Reject;

/// A valid order arrival's fields, borrowed from its batch.
#[derive(Debug, Clone, Copy)]
pub struct ValidOrder<'a> {
    pub order_id: &'a str,
    pub user_id: &'a str,
    pub store_id: &'a str,
    pub region: &'a str,
    pub order_time: i64,
    pub status: &'a str,
    pub amount_cents: i64,
    pub currency: &'a str,
    /// (ingest time, partition, offset): arrivals are ordered by it.
    pub pos: (i64, i32, i64),
}

fn present(a: &arrow::array::StringArray, row: usize) -> Option<&str> {
    OrdersView::str(a, row).filter(|s| !s.is_empty())
}

pub fn validate<'a>(rules: &AttributionRules, v: &OrdersView<'a>, row: usize) -> Result<ValidOrder<'a>, Reject> {
    if let Some(e) = OrdersView::str(v.decode_error, row) {
        return Err(match e.strip_prefix(NOT_JSON) {
            Some(why) => Reject::NotJson(why.to_string()),
            None => Reject::WrongType(e.to_string()),
        });
    }
    let required = |a, name| present(a, row).ok_or(Reject::MissingField(name));
    let order_id = required(v.order_id, c::ORDER_ID)?;
    let user_id = required(v.user_id, c::USER_ID)?;
    let store_id = required(v.store_id, c::STORE_ID)?;
    let region = required(v.region, c::REGION)?;
    let status = required(v.status, c::STATUS)?;
    if ![c::PLACED, c::COMPLETED, c::CANCELLED].contains(&status) {
        return Err(Reject::InvalidStatus(status.to_string()));
    }
    let amount_cents = OrdersView::int(v.amount_cents, row).ok_or(Reject::MissingField(c::AMOUNT_CENTS))?;
    if amount_cents < 0 {
        return Err(Reject::NegativeAmount(amount_cents));
    }
    let currency = required(v.currency, c::CURRENCY)?;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Reject::InvalidCurrency(currency.to_string()));
    }
    let order_time = OrdersView::int(v.order_time, row).ok_or(Reject::MissingField(c::ORDER_TIME))?;
    let ingest = OrdersView::int(v.ingest, row).ok_or(Reject::MissingField(c::KAFKA_TIMESTAMP))?;
    if order_time > ingest.saturating_add(rules.order_max_future_ms) {
        return Err(Reject::OrderTimeInFuture { order_time, ingest });
    }
    if order_time < ingest.saturating_sub(rules.order_max_past_ms) {
        return Err(Reject::OrderTimeTooOld { order_time, ingest });
    }
    let partition = OrdersView::int(v.partition, row).unwrap_or(-1);
    let offset = OrdersView::int(v.offset, row).unwrap_or(-1);
    Ok(ValidOrder { order_id, user_id, store_id, region, order_time, status, amount_cents, currency, pos: (ingest, partition, offset) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::orders::OrderDecoder;

    fn reasons(payloads: &[&str]) -> Vec<Result<(), String>> {
        let mut d = OrderDecoder::with_capacity(payloads.len(), 0);
        for (i, p) in payloads.iter().enumerate() {
            d.append(0, i as i64, 1_767_225_600_000, p.as_bytes());
        }
        let batch = d.finish();
        let v = OrdersView::new(&batch);
        let rules = AttributionRules::defaults();
        (0..batch.num_rows()).map(|r| validate(&rules, &v, r).map(|_| ()).map_err(|e| e.to_string())).collect()
    }

    fn order(overrides: &[(&str, &str)]) -> String {
        let mut m: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"order_id":"o","user_id":"u","store_id":"s","order_time":1767225600000,"status":"placed","amount_cents":100,"currency":"EUR","region":"r"}"#,
        )
        .unwrap();
        for (k, v) in overrides {
            m.insert(k.to_string(), serde_json::from_str(v).unwrap());
        }
        serde_json::Value::Object(m).to_string()
    }

    #[test]
    fn each_rule_has_its_reason() {
        let cases: Vec<(String, &str)> = vec![
            (order(&[]), ""),
            ("{".to_string(), "not_json"),
            (order(&[("amount_cents", "\"100\"")]), "wrong_type: amount_cents is a string, expected an integer"),
            (order(&[("amount_cents", "1.5")]), "wrong_type: amount_cents is a non-integer number"),
            (order(&[("order_id", "\"\"")]), "missing_field: order_id"),
            (order(&[("user_id", "null")]), "missing_field: user_id"),
            (order(&[("store_id", "\"\"")]), "missing_field: store_id"),
            (order(&[("region", "null")]), "missing_field: region"),
            (order(&[("status", "\"shipped\"")]), "invalid_status: status \"shipped\""),
            (order(&[("status", "null")]), "missing_field: status"),
            (order(&[("amount_cents", "-1")]), "negative_amount"),
            (order(&[("amount_cents", "null")]), "missing_field: amount_cents"),
            (order(&[("currency", "\"eur\"")]), "invalid_currency"),
            (order(&[("currency", "\"EURO\"")]), "invalid_currency"),
            (order(&[("currency", "null")]), "missing_field: currency"),
            (order(&[("order_time", "null")]), "missing_field: order_time"),
            (order(&[("order_time", "1767225900001")]), "order_time_in_future"),
            (order(&[("order_time", "1767225900000")]), ""),
            (order(&[("order_time", "1766620799999")]), "order_time_too_old"),
            (order(&[("order_time", "1766620800000")]), ""),
            (order(&[("amount_cents", "0"), ("status", "\"cancelled\"")]), ""),
        ];
        let payloads: Vec<&str> = cases.iter().map(|(p, _)| p.as_str()).collect();
        for ((payload, want), got) in cases.iter().zip(reasons(&payloads)) {
            match got {
                Ok(()) => assert_eq!(*want, "", "{payload} is valid"),
                Err(reason) => assert!(!want.is_empty() && reason.starts_with(want), "{payload}: {reason}, want {want}"),
            }
        }
    }
}
