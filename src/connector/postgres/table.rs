//! The serving tables: one per output table kind, with the contract's columns and types, a
//! dead-letter table beside it, and the offsets table that makes a load exactly once.

use std::fmt;

use anyhow::Context;
use postgres::types::Type;
use postgres::{Client, GenericClient};

use crate::contract::table::TableKind;

/// A column of a serving table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: PgType,
}

/// The types the contract's columns map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgType {
    Uuid,
    Text,
    Int8,
    /// Epoch milliseconds in JSON, `timestamp(ms, UTC)` in Parquet.
    Timestamptz,
}

impl PgType {
    pub fn sql(self) -> &'static str {
        match self {
            Self::Uuid => "uuid",
            Self::Text => "text",
            Self::Int8 => "bigint",
            Self::Timestamptz => "timestamp with time zone",
        }
    }

    pub fn wire(self) -> Type {
        match self {
            Self::Uuid => Type::UUID,
            Self::Text => Type::TEXT,
            Self::Int8 => Type::INT8,
            Self::Timestamptz => Type::TIMESTAMPTZ,
        }
    }
}

const fn col(name: &'static str, ty: PgType) -> Column {
    Column { name, ty }
}

/// Contract §4's `ad-metrics` columns, in its order.
pub const AD_METRICS: &[Column] = &[
    col("record_uuid", PgType::Uuid),
    col("region", PgType::Text),
    col("ad_id", PgType::Text),
    col("campaign_id", PgType::Text),
    col("advertiser_id", PgType::Text),
    col("window_start", PgType::Timestamptz),
    col("window_end", PgType::Timestamptz),
    col("impressions", PgType::Int8),
    col("clicks", PgType::Int8),
];

/// Contract §4's `attributed-orders` columns, in its order.
pub const ATTRIBUTED_ORDERS: &[Column] = &[
    col("record_uuid", PgType::Uuid),
    col("order_id", PgType::Text),
    col("user_id", PgType::Text),
    col("store_id", PgType::Text),
    col("region", PgType::Text),
    col("order_time", PgType::Timestamptz),
    col("status", PgType::Text),
    col("amount_cents", PgType::Int8),
    col("currency", PgType::Text),
    col("ad_id", PgType::Text),
    col("campaign_id", PgType::Text),
    col("advertiser_id", PgType::Text),
    col("attributed_event_id", PgType::Text),
    col("attribution_type", PgType::Text),
    col("ad_event_time", PgType::Timestamptz),
];

pub fn columns(kind: TableKind) -> &'static [Column] {
    match kind {
        TableKind::AdMetrics => AD_METRICS,
        TableKind::AttributedOrders => ATTRIBUTED_ORDERS,
    }
}

/// A table name as given on the command line: `name` or `schema.name`, each an unquoted SQL
/// identifier (letters, digits, `_`; PostgreSQL keeps 63 bytes). Quoted when written into SQL,
/// so a name is never read as anything but a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    schema: Option<String>,
    name: String,
}

impl TableName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('.').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 58 // leaves room for the dead-letter table's "_dlq"
                && p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        match parts.as_slice() {
            [n] if ok(n) => Ok(Self { schema: None, name: n.to_string() }),
            [s, n] if ok(s) && ok(n) => Ok(Self { schema: Some(s.to_string()), name: n.to_string() }),
            _ => Err(format!(
                "{s:?} is not a table name adsproc writes: use lower-case letters, digits and _ (at most 58), optionally schema.name"
            )),
        }
    }

    /// The default for a topic: its name with `-` as `_` (`ad-metrics-all` → `ad_metrics_all`).
    pub fn for_topic(topic: &str) -> Result<Self, String> {
        Self::parse(&topic.replace(['-', '.'], "_").to_ascii_lowercase())
            .map_err(|e| format!("no default table name for topic {topic:?} ({e}); pass --table"))
    }

    /// The dead-letter table beside it: `<name>_dlq`.
    pub fn dead_letters(&self) -> Self {
        Self { schema: self.schema.clone(), name: format!("{}_dlq", self.name) }
    }

    /// Its key in the offsets table: `name` or `schema.name`, unquoted.
    pub fn key(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

impl fmt::Display for TableName {
    /// The quoted SQL form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "\"{s}\".\"{}\"", self.name),
            None => write!(f, "\"{}\"", self.name),
        }
    }
}

/// Where a load's consumed positions live, updated in the transaction of the rows they led to.
pub const OFFSETS_TABLE: &str = "adsproc_load_offsets";

fn create_sql(table: &TableName, cols: &[Column]) -> String {
    let body: Vec<String> = cols.iter().map(|c| format!("\"{}\" {}", c.name, c.ty.sql())).collect();
    format!("CREATE TABLE {table} ({}, PRIMARY KEY (record_uuid))", body.join(", "))
}

/// What [`prepare`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    Created,
    Existing,
}

/// Creates the table, its dead-letter table and the offsets table if missing, or checks that
/// an existing table can take the contract's records. A table created here starts with no
/// stored offsets (any left from a dropped table of that name are removed), so it is filled
/// from the topic's beginning.
pub fn prepare(client: &mut Client, table: &TableName, kind: TableKind) -> anyhow::Result<Prepared> {
    let cols = columns(kind);
    let mut tx = client.transaction()?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {OFFSETS_TABLE} (table_name text NOT NULL, topic text NOT NULL, \"partition\" integer NOT NULL, \
         next_offset bigint NOT NULL, updated_at timestamp with time zone NOT NULL DEFAULT now(), PRIMARY KEY (table_name, topic, \"partition\"))"
    ))
    .context("cannot create the offsets table")?;
    let exists: bool = tx.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.to_string()])?.get(0);
    let prepared = if exists {
        check(&mut tx, table, kind)?;
        Prepared::Existing
    } else {
        tx.batch_execute(&create_sql(table, cols)).with_context(|| format!("cannot create table {table}"))?;
        tx.execute(&format!("DELETE FROM {OFFSETS_TABLE} WHERE table_name = $1"), &[&table.key()])?;
        Prepared::Created
    };
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} (topic text NOT NULL, \"partition\" integer NOT NULL, \"offset\" bigint NOT NULL, \
         reason text NOT NULL, payload bytea, loaded_at timestamp with time zone NOT NULL DEFAULT now(), PRIMARY KEY (topic, \"partition\", \"offset\"))",
        table.dead_letters()
    ))
    .with_context(|| format!("cannot create the dead-letter table {}", table.dead_letters()))?;
    tx.commit()?;
    Ok(prepared)
}

/// Why an existing table cannot take the records: each problem named, with the fix.
#[derive(Debug, thiserror::Error)]
#[error("table {table} cannot take {kind} records: {}", problems.join("; "))]
pub struct IncompatibleTable {
    pub table: String,
    pub kind: &'static str,
    pub problems: Vec<String>,
}

fn check(tx: &mut impl GenericClient, table: &TableName, kind: TableKind) -> anyhow::Result<()> {
    let cols = columns(kind);
    let found = tx.query(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef \
         FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped",
        &[&table.to_string()],
    )?;
    let mut problems = Vec::new();
    for c in cols {
        match found.iter().find(|r| r.get::<_, String>(0) == c.name) {
            None => problems.push(format!("column {} ({}) is missing", c.name, c.ty.sql())),
            Some(r) => {
                let ty: String = r.get(1);
                if ty != c.ty.sql() {
                    problems.push(format!("column {} is {ty}, not {}", c.name, c.ty.sql()));
                }
            }
        }
    }
    for r in &found {
        let name: String = r.get(0);
        let (not_null, has_default): (bool, bool) = (r.get(2), r.get(3));
        if not_null && !has_default && !cols.iter().any(|c| c.name == name) {
            problems.push(format!("column {name} is NOT NULL without a default, and records have no such field"));
        }
    }
    let unique: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = $1::text::regclass AND i.indisunique AND i.indnatts = 1 AND i.indpred IS NULL AND a.attname = 'record_uuid')",
            &[&table.to_string()],
        )?
        .get(0);
    if !unique {
        problems.push("record_uuid has no primary key or unique index of its own, which an upsert needs".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(IncompatibleTable { table: table.to_string(), kind: kind.name(), problems }.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_identifiers_and_quoted() {
        assert_eq!(TableName::for_topic("ad-metrics-all").unwrap().to_string(), "\"ad_metrics_all\"");
        assert_eq!(TableName::parse("serving.ad_metrics").unwrap().to_string(), "\"serving\".\"ad_metrics\"");
        assert_eq!(TableName::parse("x").unwrap().dead_letters().to_string(), "\"x_dlq\"");
        for bad in ["", "Ad", "a;drop table x", "a.b.c", "1abc", "a\"b", &"a".repeat(59)] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn created_tables_have_the_contract_columns() {
        let sql = create_sql(&TableName::parse("m").unwrap(), AD_METRICS);
        assert_eq!(
            sql,
            "CREATE TABLE \"m\" (\"record_uuid\" uuid, \"region\" text, \"ad_id\" text, \"campaign_id\" text, \"advertiser_id\" text, \
             \"window_start\" timestamp with time zone, \"window_end\" timestamp with time zone, \"impressions\" bigint, \
             \"clicks\" bigint, PRIMARY KEY (record_uuid))"
        );
    }
}
