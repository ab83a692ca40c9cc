//! What the union forwards: a record of one of the tables, as its region's job wrote it.

use std::sync::Arc;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::contract::attributed_orders::AttributedOrder;
use crate::contract::outputs::AdMetric;
use crate::contract::table::TableKind;
use crate::core::job::OutputRecord;

/// A record of the union's table `table` (an index into its rules' tables, which says the
/// kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnionRecord {
    pub table: usize,
    pub value: Value,
    /// The bytes it was read as, forwarded as they are (they parsed as `value`).
    #[serde(skip)]
    pub raw: Option<Arc<[u8]>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Metric(AdMetric),
    Order(AttributedOrder),
}

impl UnionRecord {
    /// A record's JSON as a record of `kind`, or why it is not one.
    pub fn parse(table: usize, kind: TableKind, json: &[u8]) -> Result<Self, String> {
        let value = match kind {
            TableKind::AdMetrics => Value::Metric(serde_json::from_slice(json).map_err(|e| e.to_string())?),
            TableKind::AttributedOrders => Value::Order(serde_json::from_slice(json).map_err(|e| e.to_string())?),
        };
        Ok(Self { table, value, raw: Some(Arc::from(json)) })
    }
}

impl OutputRecord for UnionRecord {
    fn record_uuid(&self) -> Uuid {
        match &self.value {
            Value::Metric(m) => m.record_uuid,
            Value::Order(o) => o.record_uuid,
        }
    }

    fn derived_uuid(&self) -> Uuid {
        match &self.value {
            Value::Metric(m) => m.derived_uuid(),
            Value::Order(o) => o.derived_uuid(),
        }
    }

    /// By `record_uuid`: the union's output is keyed by it alone.
    fn key_group(&self, key_groups: usize) -> usize {
        crate::core::key_group::group_of_uuid(&self.record_uuid(), key_groups)
    }

    fn table(&self) -> usize {
        self.table
    }

    fn partition_time(&self) -> i64 {
        match &self.value {
            Value::Metric(m) => m.partition_time(),
            Value::Order(o) => o.partition_time(),
        }
    }

    /// Exactly the bytes its region's job wrote.
    fn write_json(&self, out: &mut Vec<u8>) {
        if let Some(raw) = &self.raw {
            out.extend_from_slice(raw);
            return;
        }
        match &self.value {
            Value::Metric(m) => m.write_json(out),
            Value::Order(o) => o.write_json(out),
        }
    }

    fn from_batch(table: usize, batch: &RecordBatch) -> anyhow::Result<Vec<Self>> {
        // A union table's kind is its rules'; a batch says it by its columns.
        let value = |b: &RecordBatch| -> anyhow::Result<Vec<Value>> {
            if b.schema().column_with_name("window_start").is_some() {
                Ok(AdMetric::from_batch(0, b)?.into_iter().map(Value::Metric).collect())
            } else {
                Ok(AttributedOrder::from_batch(0, b)?.into_iter().map(Value::Order).collect())
            }
        };
        Ok(value(batch)?.into_iter().map(|value| Self { table, value, raw: None }).collect())
    }

    fn readable(&self) -> serde_json::Value {
        match &self.value {
            Value::Metric(m) => m.readable(),
            Value::Order(o) => o.readable(),
        }
    }
}
