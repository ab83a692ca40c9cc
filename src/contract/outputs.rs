//! Output records of contract §4 and their Arrow/JSON forms.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, StringBuilder, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::schema::utc_millis;

/// One `ad-metrics` record: distinct valid impressions and clicks of one ad in one region in
/// one event-time window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdMetric {
    pub record_uuid: Uuid,
    pub region: Arc<str>,
    pub ad_id: Arc<str>,
    pub campaign_id: Option<Arc<str>>,
    pub advertiser_id: Option<Arc<str>>,
    /// Epoch ms, as the contract's JSON form.
    pub window_start: i64,
    pub window_end: i64,
    pub impressions: i64,
    pub clicks: i64,
}

/// A rejected input message: where it came from, why, and what it said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub record_uuid: Uuid,
    pub topic: Arc<str>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    /// Ingest time (the Kafka timestamp), epoch ms.
    pub kafka_timestamp: Option<i64>,
    /// A stable code followed by detail, e.g. `late: ingested 612000 ms after the window closed`.
    pub reason: String,
    /// The original message: its bytes when known, else the archived row as JSON.
    pub payload: String,
}

impl DeadLetter {
    /// The reason's stable code (the text before the first `:`).
    pub fn reason_code(&self) -> &str {
        self.reason.split(':').next().unwrap_or(&self.reason)
    }
}

pub fn ad_metrics_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("record_uuid", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("ad_id", DataType::Utf8, false),
        Field::new("campaign_id", DataType::Utf8, true),
        Field::new("advertiser_id", DataType::Utf8, true),
        Field::new("window_start", utc_millis(), false),
        Field::new("window_end", utc_millis(), false),
        Field::new("impressions", DataType::Int64, false),
        Field::new("clicks", DataType::Int64, false),
    ]))
}

pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("record_uuid", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, true),
        Field::new("offset", DataType::Int64, true),
        Field::new("kafka_timestamp", utc_millis(), true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("payload", DataType::Utf8, false),
    ]))
}

fn ts(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter(values).with_timezone("UTC"))
}

/// Hyphenated lower-case UUID text without an allocation per row.
fn uuid_column<'a>(uuids: impl ExactSizeIterator<Item = &'a Uuid>) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(uuids.len(), uuids.len() * 36);
    let mut buf = [0u8; 36];
    for u in uuids {
        b.append_value(u.hyphenated().encode_lower(&mut buf));
    }
    Arc::new(b.finish())
}

pub fn ad_metrics_batch(rows: &[AdMetric]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        uuid_column(rows.iter().map(|r| &r.record_uuid)),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &*r.region))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &*r.ad_id))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.campaign_id.as_deref()))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.advertiser_id.as_deref()))),
        ts(rows.iter().map(|r| Some(r.window_start))),
        ts(rows.iter().map(|r| Some(r.window_end))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.impressions))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.clicks))),
    ];
    RecordBatch::try_new(ad_metrics_schema(), columns).expect("columns match the schema")
}

pub fn dead_letter_batch(rows: &[DeadLetter]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        uuid_column(rows.iter().map(|r| &r.record_uuid)),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &*r.topic))),
        Arc::new(Int32Array::from_iter(rows.iter().map(|r| r.partition))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.offset))),
        ts(rows.iter().map(|r| r.kafka_timestamp)),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.reason.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.payload.as_str()))),
    ];
    RecordBatch::try_new(dead_letter_schema(), columns).expect("columns match the schema")
}
