//! Layer 4: connectors. Object stores, the Parquet archive (read and written) and the
//! Hive-partitioned Parquet sinks; the Kafka connector joins them with the stream runtime.

pub mod archive;
pub mod checkpoint_store;
pub mod hive_overwrite;
pub mod kafka;
pub mod load;
pub mod metrics_http;
pub mod output_tables;
pub mod parquet_sink;
pub mod postgres;
pub mod store;
