//! PostgreSQL as the serving store (the seed system's Pinot, upserting on `record_uuid`): the
//! tables `adsproc load` writes, checked against the contract before anything is written, and
//! the batch upsert that commits rows and the consumed offsets in one database transaction.

pub mod rows;
pub mod table;
pub mod upsert;
