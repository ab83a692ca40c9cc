//! Layer 1: the external formats of `../shared/CONTRACTS.md`, and nothing else.
//!
//! Everything other teams produce or consume is described here: the columns of the raw
//! ad-event topic and its archive, the output records, the dead-letter record and the
//! `record_uuid` derivation. No other layer names a contract field by string literal.

pub mod canonical_payload;
pub mod columns;
mod dictionary_column;
mod flat_json;
pub mod outputs;
pub mod raw;
pub mod record_uuid;
pub mod schema;
mod short_str;
pub mod time;
