//! Layer 2: what every job shares (the jobs themselves are in [`crate::jobs`]). Pure: no I/O,
//! no async, no clocks, no Kafka or Parquet.
//!
//! The core consumes *epochs*: slices of canonical [`RecordBatch`](arrow::array::RecordBatch)es
//! that a runtime hands over together (a Kafka poll, or one ingest hour of an archive), and
//! *ingest watermarks*: promises from the runtime that no message ingested before a time will
//! follow. Every decision that changes a result is taken from the event itself (its event time
//! against its ingest time) or from first arrival in (ingest time, partition, offset) order,
//! never from the order the runtime happened to deliver messages in. That is what makes the
//! stream job and a backfill of the same messages agree record for record.

pub mod ad_event_rules;
pub mod batch_view;
pub mod config;
pub mod dedupe;
pub mod diff;
pub mod interner;
pub mod job;
pub mod key_group;
pub mod key_table;
pub mod prefetch;
pub mod reason;
