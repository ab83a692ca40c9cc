//! The output tables of contract §4: their schemas and their Hive partitioning.

use arrow::datatypes::SchemaRef;

use super::columns as c;
use super::{attributed_orders, outputs};

/// The shape of an output table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableKind {
    /// `ad-metrics`: partitioned by the window's start hour, rows ordered by
    /// (window_start, region, ad_id).
    AdMetrics,
    /// `attributed-orders`: partitioned by the order's `order_time` hour, rows ordered by
    /// (order_time, order_id).
    AttributedOrders,
}

impl TableKind {
    pub const ALL: [TableKind; 2] = [TableKind::AdMetrics, TableKind::AttributedOrders];

    /// The contract's name of the table, which also names the kind in job files and on the
    /// command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::AdMetrics => c::AD_METRICS_TABLE,
            Self::AttributedOrders => c::ATTRIBUTED_ORDERS_TABLE,
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn schema(self) -> SchemaRef {
        match self {
            Self::AdMetrics => outputs::ad_metrics_schema(),
            Self::AttributedOrders => attributed_orders::schema(),
        }
    }

    /// The timestamp column whose hour partitions the table.
    pub fn partition_column(self) -> usize {
        match self {
            Self::AdMetrics => outputs::ad_metrics_col::WINDOW_START,
            Self::AttributedOrders => attributed_orders::col::ORDER_TIME,
        }
    }
}

/// An output table of a job: a Kafka topic and a Parquet table of this name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputTable {
    pub name: String,
    pub kind: TableKind,
}
