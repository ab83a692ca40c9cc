//! Output records of contract §4 and their Arrow/JSON forms.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, StringBuilder, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::columns as c;
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
        Field::new(c::RECORD_UUID, DataType::Utf8, false),
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
        Field::new(c::RECORD_UUID, DataType::Utf8, false),
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

/// Column indices of [`ad_metrics_schema`].
pub mod ad_metrics_col {
    pub const RECORD_UUID: usize = 0;
    pub const REGION: usize = 1;
    pub const AD_ID: usize = 2;
    pub const CAMPAIGN_ID: usize = 3;
    pub const ADVERTISER_ID: usize = 4;
    pub const WINDOW_START: usize = 5;
    pub const WINDOW_END: usize = 6;
    pub const IMPRESSIONS: usize = 7;
    pub const CLICKS: usize = 8;
}

/// Builds an `ad-metrics` batch row by row from borrowed values: the columnar output path,
/// with no record struct or reference count per row.
pub struct AdMetricsBuilder {
    uuid: StringBuilder,
    region: StringBuilder,
    ad_id: StringBuilder,
    campaign_id: StringBuilder,
    advertiser_id: StringBuilder,
    window_start: Vec<i64>,
    window_end: Vec<i64>,
    impressions: Vec<i64>,
    clicks: Vec<i64>,
}

impl AdMetricsBuilder {
    /// `bytes`: total length of the region, ad_id, campaign_id and advertiser_id values, so no
    /// buffer of millions of rows grows by copying.
    pub fn with_capacity(rows: usize, bytes: [usize; 4]) -> Self {
        let strings = |bytes: usize| StringBuilder::with_capacity(rows, bytes);
        Self {
            uuid: strings(rows * 36),
            region: strings(bytes[0]),
            ad_id: strings(bytes[1]),
            campaign_id: strings(bytes[2]),
            advertiser_id: strings(bytes[3]),
            window_start: Vec::with_capacity(rows),
            window_end: Vec::with_capacity(rows),
            impressions: Vec::with_capacity(rows),
            clicks: Vec::with_capacity(rows),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &mut self,
        record_uuid: &Uuid,
        region: &str,
        ad_id: &str,
        campaign_id: Option<&str>,
        advertiser_id: Option<&str>,
        window_start: i64,
        window_end: i64,
        impressions: i64,
        clicks: i64,
    ) {
        let mut buf = [0u8; 36];
        self.uuid.append_value(record_uuid.hyphenated().encode_lower(&mut buf));
        self.region.append_value(region);
        self.ad_id.append_value(ad_id);
        self.campaign_id.append_option(campaign_id);
        self.advertiser_id.append_option(advertiser_id);
        self.window_start.push(window_start);
        self.window_end.push(window_end);
        self.impressions.push(impressions);
        self.clicks.push(clicks);
    }

    pub fn finish(mut self) -> RecordBatch {
        let utc = |v: Vec<i64>| -> ArrayRef { Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC")) };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.uuid.finish()),
            Arc::new(self.region.finish()),
            Arc::new(self.ad_id.finish()),
            Arc::new(self.campaign_id.finish()),
            Arc::new(self.advertiser_id.finish()),
            utc(self.window_start),
            utc(self.window_end),
            Arc::new(Int64Array::from(self.impressions)),
            Arc::new(Int64Array::from(self.clicks)),
        ];
        RecordBatch::try_new(ad_metrics_schema(), columns).expect("columns match the schema")
    }
}

/// The records of an `ad-metrics` batch (as built by [`AdMetricsBuilder`]).
pub fn ad_metrics_rows(batch: &RecordBatch) -> anyhow::Result<Vec<AdMetric>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use ad_metrics_col as c;
    anyhow::ensure!(batch.schema() == ad_metrics_schema(), "not an ad-metrics batch: {:?}", batch.schema());
    let s = |i: usize| batch.column(i).as_string::<i32>();
    let t = |i: usize| batch.column(i).as_primitive::<TimestampMillisecondType>();
    let n = |i: usize| batch.column(i).as_primitive::<Int64Type>();
    let opt = |a: &StringArray, row: usize| (!a.is_null(row)).then(|| Arc::<str>::from(a.value(row)));
    (0..batch.num_rows())
        .map(|row| {
            Ok(AdMetric {
                record_uuid: Uuid::parse_str(s(c::RECORD_UUID).value(row))?,
                region: s(c::REGION).value(row).into(),
                ad_id: s(c::AD_ID).value(row).into(),
                campaign_id: opt(s(c::CAMPAIGN_ID), row),
                advertiser_id: opt(s(c::ADVERTISER_ID), row),
                window_start: t(c::WINDOW_START).value(row),
                window_end: t(c::WINDOW_END).value(row),
                impressions: n(c::IMPRESSIONS).value(row),
                clicks: n(c::CLICKS).value(row),
            })
        })
        .collect()
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
