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

impl AdMetric {
    /// Appends the record's JSON form to `out`: byte for byte what `serde_json::to_writer`
    /// writes (fields in declaration order, serde_json's escapes), without serde's machinery.
    /// The stream job encodes every record on its loop's thread, and serde_json's string
    /// formatting alone was an eighth of that thread's CPU samples; the values are mostly
    /// short ids that need no escaping, which this copies as they are.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut uuid = Uuid::encode_buffer();
        out.extend_from_slice(b"{\"record_uuid\":\"");
        out.extend_from_slice(self.record_uuid.hyphenated().encode_lower(&mut uuid).as_bytes());
        out.extend_from_slice(b"\",\"region\":");
        json_str(out, &self.region);
        out.extend_from_slice(b",\"ad_id\":");
        json_str(out, &self.ad_id);
        out.extend_from_slice(b",\"campaign_id\":");
        json_opt_str(out, self.campaign_id.as_deref());
        out.extend_from_slice(b",\"advertiser_id\":");
        json_opt_str(out, self.advertiser_id.as_deref());
        let mut n = itoa::Buffer::new();
        for (name, v) in [
            (&b",\"window_start\":"[..], self.window_start),
            (b",\"window_end\":", self.window_end),
            (b",\"impressions\":", self.impressions),
            (b",\"clicks\":", self.clicks),
        ] {
            out.extend_from_slice(name);
            out.extend_from_slice(n.format(v).as_bytes());
        }
        out.push(b'}');
    }
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string as serde_json writes it: copied between quotes when nothing in it needs an
/// escape, else serde_json's own escaping.
pub(crate) fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
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

/// Column indices of [`dead_letter_schema`].
pub mod dead_letter_col {
    pub const RECORD_UUID: usize = 0;
    pub const TOPIC: usize = 1;
    pub const PARTITION: usize = 2;
    pub const OFFSET: usize = 3;
    pub const KAFKA_TIMESTAMP: usize = 4;
    pub const REASON: usize = 5;
    pub const PAYLOAD: usize = 6;
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

/// An `ad-metrics` batch of records, in the order given.
pub fn ad_metrics_batch(records: &[AdMetric]) -> RecordBatch {
    let len = |f: fn(&AdMetric) -> usize| records.iter().map(f).sum::<usize>();
    let bytes = [
        len(|m| m.region.len()),
        len(|m| m.ad_id.len()),
        len(|m| m.campaign_id.as_deref().map_or(0, str::len)),
        len(|m| m.advertiser_id.as_deref().map_or(0, str::len)),
    ];
    let mut b = AdMetricsBuilder::with_capacity(records.len(), bytes);
    for m in records {
        b.append(&m.record_uuid, &m.region, &m.ad_id, m.campaign_id.as_deref(), m.advertiser_id.as_deref(), m.window_start, m.window_end, m.impressions, m.clicks);
    }
    b.finish()
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The index modules name the columns the schemas put there: the sink's writer settings
    /// and the row readers go by index.
    #[test]
    fn column_indices_match_the_schemas() {
        use ad_metrics_col as a;
        use dead_letter_col as l;
        let check = |schema: SchemaRef, columns: &[(usize, &str)]| {
            assert_eq!(schema.fields().len(), columns.len(), "every column has an index");
            for &(i, name) in columns {
                assert_eq!(schema.field(i).name(), name);
            }
        };
        check(
            ad_metrics_schema(),
            &[
                (a::RECORD_UUID, "record_uuid"),
                (a::REGION, "region"),
                (a::AD_ID, "ad_id"),
                (a::CAMPAIGN_ID, "campaign_id"),
                (a::ADVERTISER_ID, "advertiser_id"),
                (a::WINDOW_START, "window_start"),
                (a::WINDOW_END, "window_end"),
                (a::IMPRESSIONS, "impressions"),
                (a::CLICKS, "clicks"),
            ],
        );
        check(
            dead_letter_schema(),
            &[
                (l::RECORD_UUID, "record_uuid"),
                (l::TOPIC, "topic"),
                (l::PARTITION, "partition"),
                (l::OFFSET, "offset"),
                (l::KAFKA_TIMESTAMP, "kafka_timestamp"),
                (l::REASON, "reason"),
                (l::PAYLOAD, "payload"),
            ],
        );
    }

    fn text() -> impl Strategy<Value = Arc<str>> {
        prop_oneof![3 => "[a-z0-9-]{0,12}", 1 => any::<String>(), 1 => "[\"\\\\\\x00-\\x1f\\x7f/é]{0,4}"].prop_map(Arc::from)
    }

    proptest! {
        /// The hand-written JSON is serde_json's, byte for byte, for values that need no
        /// escaping and for quotes, backslashes, control characters and any Unicode.
        #[test]
        fn ad_metric_json_is_serde_jsons(
            uuid in any::<u128>(),
            region in text(),
            ad_id in text(),
            campaign_id in proptest::option::of(text()),
            advertiser_id in proptest::option::of(text()),
            ints in any::<[i64; 4]>(),
        ) {
            let m = AdMetric {
                record_uuid: Uuid::from_u128(uuid),
                region,
                ad_id,
                campaign_id,
                advertiser_id,
                window_start: ints[0],
                window_end: ints[1],
                impressions: ints[2],
                clicks: ints[3],
            };
            let mut ours = b"prefix".to_vec();
            m.write_json(&mut ours);
            let theirs = serde_json::to_vec(&m).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&ours[6..]), String::from_utf8_lossy(&theirs));
        }
    }
}
