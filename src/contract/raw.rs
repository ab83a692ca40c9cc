//! Kafka messages of the `ad-events` topic as bytes, and their lenient decoding into the
//! canonical columnar form.
//!
//! Real traffic holds malformed messages; none may stop a job or vanish. A message that is not
//! a JSON object becomes a dead letter here. A JSON object decodes field by field: a field of
//! the wrong type becomes null and its name goes into `_decode_error`, so the validator can
//! reject the row with a precise reason while the other fields stay visible in the payload.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Builder, StringArray, Int64Builder, RecordBatch, StringBuilder, StringDictionaryBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::Int32Type;
use serde_json::Value;

use super::columns as c;
use super::schema::canonical_input_schema;

/// One consumed message: its position, its Kafka timestamp (the ingest time) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub payload: Vec<u8>,
}

/// `_decode_error` of a message that was not a JSON object starts with this.
pub const NOT_JSON: &str = "not_json: ";

/// Decodes a poll's messages into one canonical batch, one row per message in order. A message
/// that is not a JSON object becomes a row with only its position and payload, and
/// `_decode_error` = [`NOT_JSON`] + why: the validator dead-letters it like any other invalid
/// row, so every message has exactly one row and one fate.
pub fn decode_messages(messages: &[RawMessage]) -> RecordBatch {
    let mut b = Builders::with_capacity(messages.len());
    for m in messages {
        match serde_json::from_slice::<Value>(&m.payload) {
            Ok(Value::Object(obj)) => b.append(m, &obj),
            Ok(other) => b.append_not_json(m, &format!("a JSON {}, not an object", kind(&other))),
            Err(e) => b.append_not_json(m, &e.to_string()),
        }
    }
    b.finish()
}

/// Whether a decoded row is a message that was not a JSON object.
pub fn is_not_json(decode_error: &StringArray, row: usize) -> bool {
    !decode_error.is_null(row) && decode_error.value(row).starts_with(NOT_JSON)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

struct Builders {
    event_id: StringBuilder,
    event_type: StringDictionaryBuilder<Int32Type>,
    ad_id: StringDictionaryBuilder<Int32Type>,
    campaign_id: StringDictionaryBuilder<Int32Type>,
    advertiser_id: StringDictionaryBuilder<Int32Type>,
    user_id: StringBuilder,
    store_id: StringBuilder,
    event_time: TimestampMillisecondBuilder,
    region: StringDictionaryBuilder<Int32Type>,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    decode_error: StringBuilder,
    raw: StringBuilder,
}

impl Builders {
    fn with_capacity(n: usize) -> Self {
        Self {
            event_id: StringBuilder::with_capacity(n, n * 36),
            event_type: StringDictionaryBuilder::new(),
            ad_id: StringDictionaryBuilder::new(),
            campaign_id: StringDictionaryBuilder::new(),
            advertiser_id: StringDictionaryBuilder::new(),
            user_id: StringBuilder::with_capacity(n, n * 16),
            store_id: StringBuilder::with_capacity(n, n * 16),
            event_time: TimestampMillisecondBuilder::with_capacity(n),
            region: StringDictionaryBuilder::new(),
            partition: Int32Builder::with_capacity(n),
            offset: Int64Builder::with_capacity(n),
            timestamp: TimestampMillisecondBuilder::with_capacity(n),
            decode_error: StringBuilder::new(),
            raw: StringBuilder::with_capacity(n, n * 256),
        }
    }

    fn append(&mut self, m: &RawMessage, obj: &serde_json::Map<String, Value>) {
        let mut errors: Vec<String> = Vec::new();
        let mut string = |name: &str| -> Option<&str> {
            match obj.get(name) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.as_str()),
                Some(other) => {
                    errors.push(format!("{name} is a {}, expected a string", kind(other)));
                    None
                }
            }
        };
        self.event_id.append_option(string(c::EVENT_ID));
        self.event_type.append_option(string(c::EVENT_TYPE));
        self.ad_id.append_option(string(c::AD_ID));
        self.campaign_id.append_option(string(c::CAMPAIGN_ID));
        self.advertiser_id.append_option(string(c::ADVERTISER_ID));
        self.user_id.append_option(string(c::USER_ID));
        self.store_id.append_option(string(c::STORE_ID));
        self.region.append_option(string(c::REGION));
        let event_time = match obj.get(c::EVENT_TIME) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
            Some(other) => {
                errors.push(format!(
                    "event_time is {}, expected integer epoch milliseconds",
                    if matches!(other, Value::Number(_)) { "a non-integer number".to_string() } else { format!("a {}", kind(other)) }
                ));
                None
            }
        };
        self.event_time.append_option(event_time);
        self.partition.append_value(m.partition);
        self.offset.append_value(m.offset);
        self.timestamp.append_value(m.timestamp);
        if errors.is_empty() {
            self.decode_error.append_null();
        } else {
            self.decode_error.append_value(errors.join("; "));
        }
        self.raw.append_value(String::from_utf8_lossy(&m.payload));
    }

    fn append_not_json(&mut self, m: &RawMessage, why: &str) {
        self.event_id.append_null();
        self.event_type.append_null();
        self.ad_id.append_null();
        self.campaign_id.append_null();
        self.advertiser_id.append_null();
        self.user_id.append_null();
        self.store_id.append_null();
        self.region.append_null();
        self.event_time.append_null();
        self.partition.append_value(m.partition);
        self.offset.append_value(m.offset);
        self.timestamp.append_value(m.timestamp);
        self.decode_error.append_value(format!("{NOT_JSON}{why}"));
        self.raw.append_value(String::from_utf8_lossy(&m.payload));
    }

    fn finish(mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.ad_id.finish()),
            Arc::new(self.campaign_id.finish()),
            Arc::new(self.advertiser_id.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.store_id.finish()),
            Arc::new(self.event_time.finish().with_timezone("UTC")),
            Arc::new(self.region.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish().with_timezone("UTC")),
            Arc::new(self.decode_error.finish()),
            Arc::new(self.raw.finish()),
        ];
        RecordBatch::try_new(canonical_input_schema(), columns).expect("built to the canonical schema")
    }
}

/// What the contract's archiver writes for a decoded batch: the archive columns only (wrongly
/// typed values were already nulled by the decoder, as a typed Parquet column cannot hold them),
/// and no row for a message that was not a JSON object (the contract does not archive those).
pub fn to_archive_rows(batch: &RecordBatch) -> RecordBatch {
    let schema = super::schema::archive_schema();
    let n = schema.fields().len();
    let errors = batch.column(super::schema::col::DECODE_ERROR).as_string::<i32>();
    let keep: BooleanArray = (0..batch.num_rows()).map(|r| Some(!is_not_json(errors, r))).collect();
    let kept = arrow::compute::filter_record_batch(batch, &keep).expect("same length");
    RecordBatch::try_new(schema, kept.columns()[..n].to_vec()).expect("archive columns are a prefix")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::schema::col;

    fn msg(offset: i64, payload: &str) -> RawMessage {
        RawMessage { partition: 1, offset, timestamp: 5, payload: payload.as_bytes().to_vec() }
    }

    #[test]
    fn non_objects_are_dead_letters_and_wrong_types_are_named() {
        let msgs = [
            msg(0, "{\"event_id\":\"e\",\"ad_id\":7,\"event_time\":\"soon\"}"),
            msg(1, "not json"),
            msg(2, "[1,2]"),
        ];
        let batch = decode_messages(&msgs);
        assert_eq!(batch.num_rows(), 3);
        let err = batch.column(col::DECODE_ERROR).as_any().downcast_ref::<StringArray>().unwrap();
        assert!(is_not_json(err, 1) && is_not_json(err, 2) && !is_not_json(err, 0));
        assert_eq!(err.value(2), "not_json: a JSON array, not an object");
        let raw = batch.column(col::RAW_PAYLOAD).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(raw.value(2), "[1,2]");
        assert_eq!(to_archive_rows(&batch).num_rows(), 1);
        assert_eq!(
            err.value(0),
            "ad_id is a number, expected a string; event_time is a string, expected integer epoch milliseconds"
        );
        assert!(batch.column(col::AD_ID).is_null(0));
    }
}
