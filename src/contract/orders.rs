//! The `orders` topic (contract §2): its canonical columnar form, the lenient decoding of its
//! Kafka messages, and its archive (contract §3).
//!
//! As for ad events, a malformed message never stops a job or vanishes: a message that is not a
//! JSON object becomes a row with only its position, payload and `_decode_error`; a field of
//! the wrong type becomes null and is named in `_decode_error`, so validation dead-letters the
//! row with a precise reason. Orders are a small share of the traffic (a fiftieth of the ad
//! events in the workloads here), so they are decoded through `serde_json::Value` and keep
//! their bytes, without the ad events' fast paths.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Builder, Int64Array, Int64Builder, RecordBatch, StringArray, StringBuilder,
    TimestampMillisecondArray, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::Value;

use super::columns as c;
use super::raw::NOT_JSON;
use super::schema::{conform, utc_millis, ColumnTypeError, MissingColumns};

/// Column positions in [`canonical_schema`].
pub mod col {
    pub const ORDER_ID: usize = 0;
    pub const USER_ID: usize = 1;
    pub const STORE_ID: usize = 2;
    pub const ORDER_TIME: usize = 3;
    pub const STATUS: usize = 4;
    pub const AMOUNT_CENTS: usize = 5;
    pub const CURRENCY: usize = 6;
    pub const REGION: usize = 7;
    pub const KAFKA_PARTITION: usize = 8;
    pub const KAFKA_OFFSET: usize = 9;
    pub const KAFKA_TIMESTAMP: usize = 10;
    pub const DECODE_ERROR: usize = 11;
    pub const RAW_PAYLOAD: usize = 12;
}

/// The string fields of an order, in contract order, with their canonical positions.
const STRING_FIELDS: [(&str, usize); 6] = [
    (c::ORDER_ID, col::ORDER_ID),
    (c::USER_ID, col::USER_ID),
    (c::STORE_ID, col::STORE_ID),
    (c::STATUS, col::STATUS),
    (c::CURRENCY, col::CURRENCY),
    (c::REGION, col::REGION),
];

/// Orders as the core reads them: the contract's fields, the Kafka position, and the decoder's
/// extras (`_decode_error`, `_raw_payload`).
pub fn canonical_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(c::ORDER_ID, DataType::Utf8, true),
                Field::new(c::USER_ID, DataType::Utf8, true),
                Field::new(c::STORE_ID, DataType::Utf8, true),
                Field::new(c::ORDER_TIME, utc_millis(), true),
                Field::new(c::STATUS, DataType::Utf8, true),
                Field::new(c::AMOUNT_CENTS, DataType::Int64, true),
                Field::new(c::CURRENCY, DataType::Utf8, true),
                Field::new(c::REGION, DataType::Utf8, true),
                Field::new(c::KAFKA_PARTITION, DataType::Int32, true),
                Field::new(c::KAFKA_OFFSET, DataType::Int64, true),
                Field::new(c::KAFKA_TIMESTAMP, utc_millis(), true),
                Field::new(c::DECODE_ERROR, DataType::Utf8, true),
                Field::new(c::RAW_PAYLOAD, DataType::Utf8, true),
            ]))
        })
        .clone()
}

/// The archive's columns (contract §3): the canonical ones less the in-memory extras.
pub fn archive_schema() -> SchemaRef {
    let s = canonical_schema();
    Arc::new(Schema::new(s.fields()[..col::DECODE_ERROR].to_vec()))
}

/// Brings an archived (or any) batch of orders into [`canonical_schema`].
pub fn normalize(batch: &RecordBatch) -> Result<(RecordBatch, MissingColumns), ColumnTypeError> {
    conform(batch, canonical_schema(), col::DECODE_ERROR)
}

/// Builds a canonical batch of orders message by message.
pub struct OrderDecoder {
    strings: [StringBuilder; STRING_FIELDS.len()],
    order_time: TimestampMillisecondBuilder,
    amount: Int64Builder,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    decode_error: StringBuilder,
    raw: StringBuilder,
}

impl OrderDecoder {
    pub fn with_capacity(n: usize, payload_bytes: usize) -> Self {
        Self {
            strings: std::array::from_fn(|_| StringBuilder::with_capacity(n, n * 16)),
            order_time: TimestampMillisecondBuilder::with_capacity(n),
            amount: Int64Builder::with_capacity(n),
            partition: Int32Builder::with_capacity(n),
            offset: Int64Builder::with_capacity(n),
            timestamp: TimestampMillisecondBuilder::with_capacity(n),
            decode_error: StringBuilder::new(),
            raw: StringBuilder::with_capacity(n, payload_bytes),
        }
    }

    pub fn len(&self) -> usize {
        arrow::array::ArrayBuilder::len(&self.partition)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn append(&mut self, partition: i32, offset: i64, timestamp: i64, payload: &[u8]) {
        self.partition.append_value(partition);
        self.offset.append_value(offset);
        self.timestamp.append_value(timestamp);
        self.raw.append_value(String::from_utf8_lossy(payload));
        let object = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(map)) => map,
            Ok(other) => return self.append_not_json(&format!("a JSON {}, not an object", kind(&other))),
            Err(e) => return self.append_not_json(&e.to_string()),
        };
        let mut errors: Vec<String> = Vec::new();
        for ((name, _), builder) in STRING_FIELDS.iter().zip(&mut self.strings) {
            match object.get(*name) {
                None | Some(Value::Null) => builder.append_null(),
                Some(Value::String(s)) => builder.append_value(s),
                Some(other) => {
                    errors.push(format!("{name} is a {}, expected a string", kind(other)));
                    builder.append_null();
                }
            }
        }
        let integer = |name: &str, what: &str, errors: &mut Vec<String>| match object.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
            Some(other) => {
                let found = if other.is_number() { "a non-integer number".to_string() } else { format!("a {}", kind(other)) };
                errors.push(format!("{name} is {found}, expected {what}"));
                None
            }
        };
        self.order_time.append_option(integer(c::ORDER_TIME, "integer epoch milliseconds", &mut errors));
        self.amount.append_option(integer(c::AMOUNT_CENTS, "an integer", &mut errors));
        if errors.is_empty() {
            self.decode_error.append_null();
        } else {
            self.decode_error.append_value(errors.join("; "));
        }
    }

    fn append_not_json(&mut self, why: &str) {
        for b in &mut self.strings {
            b.append_null();
        }
        self.order_time.append_null();
        self.amount.append_null();
        self.decode_error.append_value(format!("{NOT_JSON}{why}"));
    }

    pub fn finish(mut self) -> RecordBatch {
        let [order_id, user_id, store_id, status, currency, region] = self.strings.each_mut().map(|b| Arc::new(b.finish()) as ArrayRef);
        let columns: Vec<ArrayRef> = vec![
            order_id,
            user_id,
            store_id,
            Arc::new(self.order_time.finish().with_timezone("UTC")),
            status,
            Arc::new(self.amount.finish()),
            currency,
            region,
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish().with_timezone("UTC")),
            Arc::new(self.decode_error.finish()),
            Arc::new(self.raw.finish()),
        ];
        RecordBatch::try_new(canonical_schema(), columns).expect("built to the canonical schema")
    }
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

/// What the contract's archiver writes for a decoded batch of orders: the archive columns,
/// without the messages that were not JSON objects.
pub fn to_archive_rows(batch: &RecordBatch) -> RecordBatch {
    let errors = batch.column(col::DECODE_ERROR).as_string::<i32>();
    let keep: BooleanArray = (0..batch.num_rows()).map(|r| Some(!super::raw::is_not_json(errors, r))).collect();
    let kept = arrow::compute::filter_record_batch(batch, &keep).expect("same length");
    RecordBatch::try_new(archive_schema(), kept.columns()[..col::DECODE_ERROR].to_vec()).expect("archive columns are a prefix")
}

/// An order's typed view of one canonical batch.
pub struct OrdersView<'a> {
    pub order_id: &'a StringArray,
    pub user_id: &'a StringArray,
    pub store_id: &'a StringArray,
    pub order_time: &'a TimestampMillisecondArray,
    pub status: &'a StringArray,
    pub amount_cents: &'a Int64Array,
    pub currency: &'a StringArray,
    pub region: &'a StringArray,
    pub partition: &'a arrow::array::Int32Array,
    pub offset: &'a Int64Array,
    pub ingest: &'a TimestampMillisecondArray,
    pub decode_error: &'a StringArray,
    pub raw: &'a StringArray,
}

impl<'a> OrdersView<'a> {
    /// `batch` must have [`canonical_schema`].
    pub fn new(batch: &'a RecordBatch) -> Self {
        assert_eq!(batch.schema(), canonical_schema(), "canonical orders only");
        let s = |i: usize| batch.column(i).as_string::<i32>();
        Self {
            order_id: s(col::ORDER_ID),
            user_id: s(col::USER_ID),
            store_id: s(col::STORE_ID),
            order_time: batch.column(col::ORDER_TIME).as_primitive(),
            status: s(col::STATUS),
            amount_cents: batch.column(col::AMOUNT_CENTS).as_primitive(),
            currency: s(col::CURRENCY),
            region: s(col::REGION),
            partition: batch.column(col::KAFKA_PARTITION).as_primitive(),
            offset: batch.column(col::KAFKA_OFFSET).as_primitive(),
            ingest: batch.column(col::KAFKA_TIMESTAMP).as_primitive(),
            decode_error: s(col::DECODE_ERROR),
            raw: s(col::RAW_PAYLOAD),
        }
    }

    pub fn str(a: &'a StringArray, row: usize) -> Option<&'a str> {
        (!a.is_null(row)).then(|| a.value(row))
    }

    pub fn int<T: arrow::datatypes::ArrowPrimitiveType>(a: &arrow::array::PrimitiveArray<T>, row: usize) -> Option<T::Native> {
        (!a.is_null(row)).then(|| a.value(row))
    }

    /// The message as received when its bytes were kept (a consumed message), else the row's
    /// fields as a JSON object in byte order of their names (an archived row; `serde_json`'s
    /// map order), absent ones as null.
    pub fn payload(&self, row: usize) -> String {
        if !self.raw.is_null(row) {
            return self.raw.value(row).to_string();
        }
        let mut m = serde_json::Map::new();
        let s = |a: &StringArray| if a.is_null(row) { Value::Null } else { Value::String(a.value(row).to_string()) };
        m.insert(c::ORDER_ID.into(), s(self.order_id));
        m.insert(c::USER_ID.into(), s(self.user_id));
        m.insert(c::STORE_ID.into(), s(self.store_id));
        m.insert(c::ORDER_TIME.into(), Self::int(self.order_time, row).map_or(Value::Null, Value::from));
        m.insert(c::STATUS.into(), s(self.status));
        m.insert(c::AMOUNT_CENTS.into(), Self::int(self.amount_cents, row).map_or(Value::Null, Value::from));
        m.insert(c::CURRENCY.into(), s(self.currency));
        m.insert(c::REGION.into(), s(self.region));
        Value::Object(m).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(payloads: &[&str]) -> RecordBatch {
        let mut d = OrderDecoder::with_capacity(payloads.len(), 0);
        for (i, p) in payloads.iter().enumerate() {
            d.append(3, i as i64, 1_000 + i as i64, p.as_bytes());
        }
        d.finish()
    }

    #[test]
    fn every_message_is_one_row_and_wrong_types_are_named() {
        let b = decode(&[
            r#"{"order_id":"o1","user_id":"u","store_id":"s","order_time":5,"status":"placed","amount_cents":1250,"currency":"EUR","region":"r"}"#,
            r#"{"order_id":7,"amount_cents":12.5,"order_time":"soon","status":null}"#,
            "not json",
            "[1]",
        ]);
        assert_eq!(b.num_rows(), 4);
        let v = OrdersView::new(&b);
        assert_eq!(OrdersView::str(v.order_id, 0), Some("o1"));
        assert_eq!(OrdersView::int(v.amount_cents, 0), Some(1250));
        assert_eq!(OrdersView::int(v.order_time, 0), Some(5));
        assert!(v.decode_error.is_null(0));
        assert_eq!(
            v.decode_error.value(1),
            "order_id is a number, expected a string; order_time is a string, expected integer epoch milliseconds; \
             amount_cents is a non-integer number, expected an integer"
        );
        assert!(v.order_id.is_null(1) && v.amount_cents.is_null(1));
        assert!(v.decode_error.value(2).starts_with(NOT_JSON));
        assert_eq!(v.decode_error.value(3), "not_json: a JSON array, not an object");
        assert_eq!(v.payload(2), "not json");
        assert_eq!(OrdersView::int(v.ingest, 3), Some(1_003));
        assert_eq!(to_archive_rows(&b).num_rows(), 2, "messages that are not JSON objects are not archived");
    }

    #[test]
    fn an_archived_row_payload_is_its_fields_in_name_order() {
        let b = decode(&[r#"{"region":"r","order_id":"o1","amount_cents":-3,"currency":"eur"}"#]);
        let archived = normalize(&to_archive_rows(&b)).unwrap().0;
        let v = OrdersView::new(&archived);
        assert_eq!(
            v.payload(0),
            r#"{"amount_cents":-3,"currency":"eur","order_id":"o1","order_time":null,"region":"r","status":null,"store_id":null,"user_id":null}"#
        );
    }

    #[test]
    fn archives_of_other_types_normalize_or_name_the_column() {
        let batch = RecordBatch::try_from_iter(vec![
            (c::ORDER_ID, Arc::new(arrow::array::LargeStringArray::from(vec!["o"])) as ArrayRef),
            (c::AMOUNT_CENTS, Arc::new(arrow::array::Int32Array::from(vec![5])) as ArrayRef),
        ])
        .unwrap();
        let (out, missing) = normalize(&batch).unwrap();
        assert_eq!(out.schema(), canonical_schema());
        assert!(missing.contains(&c::STATUS.to_string()) && !missing.contains(&c::ORDER_ID.to_string()));
        let bad = RecordBatch::try_from_iter(vec![(c::AMOUNT_CENTS, Arc::new(StringArray::from(vec!["5"])) as ArrayRef)]).unwrap();
        let e = normalize(&bad).unwrap_err();
        assert_eq!(e.column, c::AMOUNT_CENTS);
    }
}
