//! The `attributed-orders` table (contract §4, §5): one record per attributed order, its JSON
//! form (Kafka) and its Arrow form (Parquet).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringBuilder, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimestampMillisecondType};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::columns as c;
use super::schema::utc_millis;

/// How the matched ad event led to the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttributionType {
    Click,
    Impression,
}

impl AttributionType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Click => c::CLICK,
            Self::Impression => c::IMPRESSION,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            c::CLICK => Some(Self::Click),
            c::IMPRESSION => Some(Self::Impression),
            _ => None,
        }
    }
}

/// One `attributed-orders` record. Identity fields (`order_id`, `user_id`, `store_id`,
/// `region`, `order_time`) are the order's first valid arrival's; `status`, `amount_cents` and
/// `currency` its latest valid arrival's; the ad fields the matched event's. Times are epoch ms,
/// as the contract's JSON form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributedOrder {
    pub record_uuid: Uuid,
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
    pub attribution_type: AttributionType,
    pub ad_event_time: i64,
}

/// Column positions of [`schema`].
pub mod col {
    pub const RECORD_UUID: usize = 0;
    pub const ORDER_ID: usize = 1;
    pub const USER_ID: usize = 2;
    pub const STORE_ID: usize = 3;
    pub const REGION: usize = 4;
    pub const ORDER_TIME: usize = 5;
    pub const STATUS: usize = 6;
    pub const AMOUNT_CENTS: usize = 7;
    pub const CURRENCY: usize = 8;
    pub const AD_ID: usize = 9;
    pub const CAMPAIGN_ID: usize = 10;
    pub const ADVERTISER_ID: usize = 11;
    pub const ATTRIBUTED_EVENT_ID: usize = 12;
    pub const ATTRIBUTION_TYPE: usize = 13;
    pub const AD_EVENT_TIME: usize = 14;
}

pub fn schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let s = |name: &str| Field::new(name, DataType::Utf8, false);
            Arc::new(Schema::new(vec![
                s(c::RECORD_UUID),
                s(c::ORDER_ID),
                s(c::USER_ID),
                s(c::STORE_ID),
                s(c::REGION),
                Field::new(c::ORDER_TIME, utc_millis(), false),
                s(c::STATUS),
                Field::new(c::AMOUNT_CENTS, DataType::Int64, false),
                s(c::CURRENCY),
                s(c::AD_ID),
                Field::new(c::CAMPAIGN_ID, DataType::Utf8, true),
                Field::new(c::ADVERTISER_ID, DataType::Utf8, true),
                s("attributed_event_id"),
                s("attribution_type"),
                Field::new("ad_event_time", utc_millis(), false),
            ]))
        })
        .clone()
}

/// The records as one batch of [`schema`], in the order given.
pub fn to_batch(records: &[AttributedOrder]) -> RecordBatch {
    let strings = |f: &dyn Fn(&AttributedOrder) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(records.len(), records.len() * 24);
        for r in records {
            b.append_option(f(r));
        }
        Arc::new(b.finish())
    };
    let times = |f: &dyn Fn(&AttributedOrder) -> i64| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from_iter_values(records.iter().map(f)).with_timezone("UTC"))
    };
    let mut uuid = StringBuilder::with_capacity(records.len(), records.len() * 36);
    let mut buf = [0u8; 36];
    for r in records {
        uuid.append_value(r.record_uuid.hyphenated().encode_lower(&mut buf));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(uuid.finish()),
        strings(&|r| Some(&r.order_id)),
        strings(&|r| Some(&r.user_id)),
        strings(&|r| Some(&r.store_id)),
        strings(&|r| Some(&r.region)),
        times(&|r| r.order_time),
        strings(&|r| Some(&r.status)),
        Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.amount_cents))),
        strings(&|r| Some(&r.currency)),
        strings(&|r| Some(&r.ad_id)),
        strings(&|r| r.campaign_id.as_deref()),
        strings(&|r| r.advertiser_id.as_deref()),
        strings(&|r| Some(&r.attributed_event_id)),
        strings(&|r| Some(r.attribution_type.as_str())),
        times(&|r| r.ad_event_time),
    ];
    RecordBatch::try_new(schema(), columns).expect("columns match the schema")
}

/// The records of a batch of [`schema`].
pub fn rows(batch: &RecordBatch) -> anyhow::Result<Vec<AttributedOrder>> {
    anyhow::ensure!(batch.schema() == schema(), "not an attributed-orders batch: {:?}", batch.schema());
    let s = |i: usize| batch.column(i).as_string::<i32>();
    let t = |i: usize| batch.column(i).as_primitive::<TimestampMillisecondType>();
    let opt = |i: usize, row: usize| (!s(i).is_null(row)).then(|| s(i).value(row).to_string());
    (0..batch.num_rows())
        .map(|row| {
            let text = |i: usize| s(i).value(row).to_string();
            Ok(AttributedOrder {
                record_uuid: Uuid::parse_str(s(col::RECORD_UUID).value(row))?,
                order_id: text(col::ORDER_ID),
                user_id: text(col::USER_ID),
                store_id: text(col::STORE_ID),
                region: text(col::REGION),
                order_time: t(col::ORDER_TIME).value(row),
                status: text(col::STATUS),
                amount_cents: batch.column(col::AMOUNT_CENTS).as_primitive::<Int64Type>().value(row),
                currency: text(col::CURRENCY),
                ad_id: text(col::AD_ID),
                campaign_id: opt(col::CAMPAIGN_ID, row),
                advertiser_id: opt(col::ADVERTISER_ID, row),
                attributed_event_id: text(col::ATTRIBUTED_EVENT_ID),
                attribution_type: AttributionType::parse(s(col::ATTRIBUTION_TYPE).value(row))
                    .ok_or_else(|| anyhow::anyhow!("attribution_type {:?}", s(col::ATTRIBUTION_TYPE).value(row)))?,
                ad_event_time: t(col::AD_EVENT_TIME).value(row),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AttributedOrder {
        AttributedOrder {
            record_uuid: crate::contract::record_uuid::attributed_order("order-0001"),
            order_id: "order-0001".into(),
            user_id: "user-1".into(),
            store_id: "store-1".into(),
            region: "region-a".into(),
            order_time: 1_767_225_600_000,
            status: "completed".into(),
            amount_cents: 2_350,
            currency: "EUR".into(),
            ad_id: "ad-7".into(),
            campaign_id: None,
            advertiser_id: Some("adv-1".into()),
            attributed_event_id: "e-1".into(),
            attribution_type: AttributionType::Click,
            ad_event_time: 1_767_225_000_000,
        }
    }

    #[test]
    fn the_json_form_names_every_field_of_the_contract() {
        let v: serde_json::Value = serde_json::to_value(record()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut contract = vec![
            "record_uuid", "order_id", "user_id", "store_id", "region", "order_time", "status", "amount_cents", "currency", "ad_id",
            "campaign_id", "advertiser_id", "attributed_event_id", "attribution_type", "ad_event_time",
        ];
        contract.sort_unstable();
        assert_eq!(keys, contract);
        assert_eq!(v["attribution_type"], "click");
        assert_eq!(v["order_time"], 1_767_225_600_000i64);
        assert_eq!(v["campaign_id"], serde_json::Value::Null);
    }

    #[test]
    fn the_arrow_form_round_trips() {
        let mut other = record();
        other.attribution_type = AttributionType::Impression;
        other.campaign_id = Some("c".into());
        let records = vec![record(), other];
        let batch = to_batch(&records);
        for (i, f) in schema().fields().iter().enumerate() {
            assert_eq!(batch.schema().field(i).name(), f.name());
        }
        assert_eq!(schema().field(col::ATTRIBUTED_EVENT_ID).name(), "attributed_event_id");
        assert_eq!(schema().field(col::AD_EVENT_TIME).name(), "ad_event_time");
        assert_eq!(rows(&batch).unwrap(), records);
    }
}
