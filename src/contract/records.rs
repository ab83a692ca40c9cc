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
        match serde_json::from_slice::<Identity>(payload) {
            Ok(id) => self.uuid.append_value(id.record_uuid.as_bytes()).expect("16 bytes"),
            Err(_) => self.uuid.append_null(),
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
