//! Output-table records read back as an input (the union job's): each message's
//! `record_uuid` (from its JSON) and its bytes, with its Kafka position. The union forwards
//! records as they are and compares them byte for byte, so nothing else is decoded here.

use std::sync::{Arc, OnceLock};

use arrow::array::{BinaryBuilder, FixedSizeBinaryBuilder, Int32Builder, Int64Builder, RecordBatch, TimestampMillisecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;

use super::columns as c;
use super::schema::utc_millis;

pub mod col {
    /// FixedSizeBinary(16); null when the message has no readable `record_uuid`.
    pub const RECORD_UUID: usize = 0;
    /// The message's value, as it was.
    pub const PAYLOAD: usize = 1;
    pub const KAFKA_PARTITION: usize = 2;
    pub const KAFKA_OFFSET: usize = 3;
    pub const KAFKA_TIMESTAMP: usize = 4;
}

pub fn canonical_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("record_uuid", DataType::FixedSizeBinary(16), true),
                Field::new("payload", DataType::Binary, false),
                Field::new(c::KAFKA_PARTITION, DataType::Int32, false),
                Field::new(c::KAFKA_OFFSET, DataType::Int64, false),
                Field::new(c::KAFKA_TIMESTAMP, utc_millis(), false),
            ]))
        })
        .clone()
}

#[derive(Deserialize)]
struct Identity {
    record_uuid: uuid::Uuid,
}

/// The `record_uuid` of a record's JSON. adsproc's jobs write it first, as
/// `{"record_uuid":"<36 characters>"`, which is read without a JSON parser (a whole parse just to
/// find it was a fifth of the union's time); any other layout is parsed.
pub fn record_uuid_of(payload: &[u8]) -> Option<uuid::Uuid> {
    const PREFIX: &[u8] = br#"{"record_uuid":""#;
    if let Some(rest) = payload.strip_prefix(PREFIX) {
        if rest.len() > 36 && rest[36] == b'"' {
            if let Ok(u) = uuid::Uuid::try_parse_ascii(&rest[..36]) {
                return Some(u);
            }
        }
    }
    serde_json::from_slice::<Identity>(payload).ok().map(|id| id.record_uuid)
}

pub struct RecordDecoder {
    uuid: FixedSizeBinaryBuilder,
    payload: BinaryBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
}

impl RecordDecoder {
    pub fn with_capacity(n: usize, payload_bytes: usize) -> Self {
        Self {
            uuid: FixedSizeBinaryBuilder::with_capacity(n, 16),
            payload: BinaryBuilder::with_capacity(n, payload_bytes),
            partition: Int32Builder::with_capacity(n),
            offset: Int64Builder::with_capacity(n),
            timestamp: TimestampMillisecondBuilder::with_capacity(n),
        }
    }

    pub fn append(&mut self, partition: i32, offset: i64, timestamp: i64, payload: &[u8]) {
        match record_uuid_of(payload) {
            Some(id) => self.uuid.append_value(id.as_bytes()).expect("16 bytes"),
            None => self.uuid.append_null(),
        }
        self.payload.append_value(payload);
        self.partition.append_value(partition);
        self.offset.append_value(offset);
        self.timestamp.append_value(timestamp);
    }

    pub fn finish(mut self) -> RecordBatch {
        RecordBatch::try_new(
            canonical_schema(),
            vec![
                Arc::new(self.uuid.finish()),
                Arc::new(self.payload.finish()),
                Arc::new(self.partition.finish()),
                Arc::new(self.offset.finish()),
                Arc::new(self.timestamp.finish().with_timezone("UTC")),
            ],
        )
        .expect("columns match the schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_uuid_is_found_in_any_layout() {
        let u = "0b7d1b3e-4c52-5e0f-9d0c-3f1c6f0a9e11";
        let want = Some(uuid::Uuid::parse_str(u).unwrap());
        assert_eq!(record_uuid_of(format!(r#"{{"record_uuid":"{u}","x":1}}"#).as_bytes()), want);
        assert_eq!(record_uuid_of(format!(r#"{{ "x": 1, "record_uuid": "{u}" }}"#).as_bytes()), want);
        assert_eq!(record_uuid_of(format!(r#"{{"record_uuid":"{u}x"}}"#).as_bytes()), None);
        assert_eq!(record_uuid_of(br#"{"record_uuid":"not-a-uuid-but-thirty-six-characters!"}"#), None);
        assert_eq!(record_uuid_of(b"not json"), None);
    }
}
