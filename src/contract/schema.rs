//! The canonical in-memory form of raw ad events that the job core consumes.
//!
//! Archive files and decoded Kafka polls both normalize to this schema, so the core has one
//! input shape. Low-cardinality strings are dictionary-encoded: the core then validates and
//! interns each distinct value once per batch instead of once per row, which is what makes the
//! columnar hot path fast. Files written by other archivers may use plain strings, views,
//! other timestamp units or narrower integers; those are cast here. A column of a type that
//! cannot stand for the field is an error that names it; a missing column becomes all-null, so
//! its rows reach the dead-letter output with a reason instead of vanishing.

use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::columns as c;

pub fn utc_millis() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

pub fn dict_utf8() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// Columns the core reads, in order. Their positions are fixed: see [`col`].
///
/// The core also takes [`canonical_viewed_schema`], the same with views for the strings that
/// are (nearly) unique per row.
pub fn canonical_input_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(c::EVENT_ID, DataType::Utf8, true),
                Field::new(c::EVENT_TYPE, dict_utf8(), true),
                Field::new(c::AD_ID, dict_utf8(), true),
                Field::new(c::CAMPAIGN_ID, dict_utf8(), true),
                Field::new(c::ADVERTISER_ID, dict_utf8(), true),
                Field::new(c::USER_ID, DataType::Utf8, true),
                Field::new(c::STORE_ID, DataType::Utf8, true),
                Field::new(c::EVENT_TIME, utc_millis(), true),
                Field::new(c::REGION, dict_utf8(), true),
                Field::new(c::KAFKA_PARTITION, DataType::Int32, true),
                Field::new(c::KAFKA_OFFSET, DataType::Int64, true),
                Field::new(c::KAFKA_TIMESTAMP, utc_millis(), true),
                Field::new(c::DECODE_ERROR, DataType::Utf8, true),
                Field::new(c::RAW_PAYLOAD, DataType::Utf8, true),
            ]))
        })
        .clone()
}

/// The canonical columns that a batch may hold as views (`Utf8View`) instead of plain strings:
/// those whose values are (nearly) unique per row.
pub const VIEWABLE: [usize; 3] = [col::EVENT_ID, col::USER_ID, col::STORE_ID];

/// [`canonical_input_schema`] with views for the [`VIEWABLE`] columns: what archive files
/// decode to. A Parquet reader asked for views points them into the pages it decoded instead of
/// copying every value into one string buffer, which it regrows page by page: that copy and
/// regrowth were the largest part of a backfill's memmove. The stream decoder builds plain
/// strings: built as views, or viewed after, its batches made the stream job slower.
pub fn canonical_viewed_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let s = canonical_input_schema();
            let fields = s.fields().iter().enumerate().map(|(i, f)| {
                if VIEWABLE.contains(&i) {
                    f.as_ref().clone().with_data_type(DataType::Utf8View)
                } else {
                    f.as_ref().clone()
                }
            });
            Arc::new(Schema::new(fields.collect::<Vec<_>>()))
        })
        .clone()
}

/// A canonical batch (plain form) with its [`VIEWABLE`] columns cast to views: the viewed form
/// of the same rows, for tests that feed the core both.
#[cfg(test)]
pub fn viewed(batch: &RecordBatch) -> RecordBatch {
    let schema = canonical_viewed_schema();
    let columns = schema.fields().iter().zip(batch.columns()).map(|(f, a)| cast(a, f.data_type()).unwrap()).collect();
    RecordBatch::try_new(schema, columns).unwrap()
}

/// Whether the core takes batches of this schema: one of the two canonical forms.
pub fn is_canonical(schema: &SchemaRef) -> bool {
    *schema == canonical_input_schema() || *schema == canonical_viewed_schema()
}

/// Column positions in the canonical schema.
pub mod col {
    pub const EVENT_ID: usize = 0;
    pub const EVENT_TYPE: usize = 1;
    pub const AD_ID: usize = 2;
    pub const CAMPAIGN_ID: usize = 3;
    pub const ADVERTISER_ID: usize = 4;
    pub const USER_ID: usize = 5;
    pub const STORE_ID: usize = 6;
    pub const EVENT_TIME: usize = 7;
    pub const REGION: usize = 8;
    pub const KAFKA_PARTITION: usize = 9;
    pub const KAFKA_OFFSET: usize = 10;
    pub const KAFKA_TIMESTAMP: usize = 11;
    pub const DECODE_ERROR: usize = 12;
    pub const RAW_PAYLOAD: usize = 13;
}

/// The archive's columns (contract §3): the canonical ones less the in-memory extras.
pub fn archive_schema() -> SchemaRef {
    let s = canonical_input_schema();
    Arc::new(Schema::new(s.fields()[..col::DECODE_ERROR].to_vec()))
}

#[derive(Debug, thiserror::Error)]
#[error("column '{column}' has type {found}, which cannot hold the contract's {expected}")]
pub struct ColumnTypeError {
    pub column: String,
    pub found: DataType,
    pub expected: String,
}

/// Which columns of the target schema were absent from the input (filled with nulls).
pub type MissingColumns = Vec<String>;

/// Brings any batch that carries the ad-event columns into a canonical schema: the viewed one
/// ([`canonical_viewed_schema`]) if any of its [`VIEWABLE`] columns is a view, else the plain
/// one.
pub fn normalize(batch: &RecordBatch) -> Result<(RecordBatch, MissingColumns), ColumnTypeError> {
    let plain = canonical_input_schema();
    let viewed =
        VIEWABLE.iter().any(|&i| batch.column_by_name(plain.field(i).name()).is_some_and(|a| a.data_type() == &DataType::Utf8View));
    let target = if viewed { canonical_viewed_schema() } else { plain };
    conform(batch, target, col::DECODE_ERROR)
}

/// Brings `batch` into `target`, column by column by name: a column of the target's type is
/// kept, one of another type cast losslessly (`castable`) or refused by name, a missing one
/// filled with nulls. Missing columns among the first `archived` of the target (the ones an
/// archive holds; the rest are in-memory extras) are reported.
pub fn conform(batch: &RecordBatch, target: SchemaRef, archived: usize) -> Result<(RecordBatch, MissingColumns), ColumnTypeError> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    let mut missing = Vec::new();
    for (i, field) in target.fields().iter().enumerate() {
        let name = field.name();
        let Ok(idx) = batch.schema().index_of(name) else {
            if i < archived {
                missing.push(name.clone());
            }
            columns.push(new_null_array(field.data_type(), batch.num_rows()));
            continue;
        };
        let array = batch.column(idx);
        if array.data_type() == field.data_type() {
            columns.push(array.clone());
            continue;
        }
        let refused = || ColumnTypeError { column: name.clone(), found: array.data_type().clone(), expected: expected_name(field.data_type()) };
        if !castable(array.data_type(), field.data_type()) {
            return Err(refused());
        }
        columns.push(cast(array, field.data_type()).map_err(|_| refused())?);
    }
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    let out = RecordBatch::try_new_with_options(target, columns, &options).expect("columns built to the target schema");
    Ok((out, missing))
}

fn is_stringy(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_stringy(v),
        _ => false,
    }
}

fn is_integer(t: &DataType) -> bool {
    t.is_integer()
}

/// Only lossless, meaning-preserving conversions: never a string parsed as a number or a time.
fn castable(from: &DataType, to: &DataType) -> bool {
    if matches!(from, DataType::Null) {
        return true;
    }
    match to {
        DataType::Utf8 | DataType::Utf8View => is_stringy(from),
        DataType::Dictionary(_, _) => is_stringy(from),
        DataType::Timestamp(_, _) => matches!(from, DataType::Timestamp(_, _) | DataType::Int64),
        DataType::Int32 | DataType::Int64 => is_integer(from),
        _ => false,
    }
}

fn expected_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::Utf8View | DataType::Dictionary(_, _) => "string".into(),
        DataType::Timestamp(_, _) => "timestamp(millisecond, UTC) or int64 epoch ms".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};

    #[test]
    fn missing_columns_become_nulls_and_are_reported() {
        let batch = RecordBatch::try_from_iter(vec![(
            c::EVENT_ID,
            Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
        )])
        .unwrap();
        let (out, missing) = normalize(&batch).unwrap();
        assert_eq!(out.schema(), canonical_input_schema());
        assert_eq!(out.column(col::AD_ID).null_count(), 2);
        assert!(missing.contains(&c::AD_ID.to_string()));
        assert!(!missing.contains(&c::EVENT_ID.to_string()));
    }

    #[test]
    fn epoch_ms_integers_are_accepted_for_times() {
        let batch = RecordBatch::try_from_iter(vec![(
            c::EVENT_TIME,
            Arc::new(Int64Array::from(vec![1_000])) as ArrayRef,
        )])
        .unwrap();
        let (out, _) = normalize(&batch).unwrap();
        assert_eq!(out.column(col::EVENT_TIME).data_type(), &utc_millis());
    }

    #[test]
    fn a_wrong_column_type_names_the_column() {
        let batch = RecordBatch::try_from_iter(vec![(
            c::EVENT_TIME,
            Arc::new(Float64Array::from(vec![1.5])) as ArrayRef,
        )])
        .unwrap();
        let err = normalize(&batch).unwrap_err();
        assert_eq!(err.column, c::EVENT_TIME);
        assert!(err.to_string().contains("Float64"), "{err}");
    }
}
