//! PostgreSQL as the serving store (the seed system's Pinot, upserting on `record_uuid`): the
//! tables `adsproc load` writes, checked against the contract before anything is written, and
//! the batch upsert that commits rows and the consumed offsets in one database transaction.

pub mod read;
pub mod rows;
pub mod table;
pub mod upsert;

/// A database URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}
