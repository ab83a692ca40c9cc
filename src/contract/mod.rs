//! Layer 1: the external formats (docs/contracts.md), and nothing else.
//!
//! Everything other teams produce or consume is described here: the columns of the input topics
//! (`ad-events`, `orders`) and their archives, the output records (`ad-metrics`,
//! `attributed-orders`), the dead-letter record and the `record_uuid` derivation. No other layer
//! names a contract field by string literal.

pub mod attributed_orders;
pub mod canonical_payload;
pub mod columns;
mod dictionary_column;
mod flat_json;
pub mod format;
pub mod orders;
pub mod outputs;
pub mod raw;
pub mod record_uuid;
pub mod records;
pub mod schema;
mod short_str;
pub mod table;
pub mod time;
