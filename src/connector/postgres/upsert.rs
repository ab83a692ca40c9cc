//! The batch upsert: a batch of records, its dead letters and the consumed positions that led
//! to it, committed in one database transaction. The rows are copied (binary `COPY`) into a
//! session-local staging table and merged with one `INSERT … ON CONFLICT (record_uuid) DO
//! UPDATE`, which leaves a row whose value did not change untouched (no dead tuple, no WAL).
//! After any crash the table is the last value per `record_uuid` of the topic up to the stored
//! offsets, and a restart resumes from there: the Kafka consumer group's own offsets are never
//! used, so they cannot disagree with the table.

use std::collections::BTreeMap;

use anyhow::Context;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use postgres::Client;

use super::rows::Row;
use super::table::{columns, TableName, OFFSETS_TABLE};
use crate::contract::table::TableKind;
use crate::runtime::crash_point::CrashPoint;

/// A record the table cannot take: where it was, why, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    pub payload: Option<Vec<u8>>,
}

/// What one transaction writes.
#[derive(Debug, Default)]
pub struct Batch {
    /// At most one row per `record_uuid`: the last in offset order.
    pub rows: Vec<Row>,
    pub rejected: Vec<Rejected>,
    /// Per partition, the first offset not yet in the table.
    pub next_offsets: BTreeMap<i32, i64>,
}

/// What a transaction did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Applied {
    /// Rows inserted or changed; the others held that value already.
    pub written: u64,
}

pub struct Upserter {
    client: Client,
    table: TableName,
    topic: String,
    types: Vec<Type>,
    copy: String,
    merge: String,
}

impl Upserter {
    /// Takes the table for this load (one load per table at a time: a second is refused) and
    /// makes its staging table. The table must exist ([`super::table::prepare`]).
    pub fn new(mut client: Client, table: TableName, kind: TableKind, topic: &str) -> anyhow::Result<Self> {
        let locked: bool = client.query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&format!("adsproc load {}", table.key())])?.get(0);
        anyhow::ensure!(locked, "another adsproc load is writing table {table}: one load per table at a time");
        let cols = columns(kind);
        let defs: Vec<String> = cols.iter().map(|c| format!("\"{}\" {}", c.name, c.ty.sql())).collect();
        client
            .batch_execute(&format!("CREATE TEMP TABLE adsproc_staging ({}) ON COMMIT DELETE ROWS", defs.join(", ")))
            .context("cannot create the staging table")?;
        let names: Vec<String> = cols.iter().map(|c| format!("\"{}\"", c.name)).collect();
        let names = names.join(", ");
        let set: Vec<String> = cols[1..].iter().map(|c| format!("\"{0}\" = EXCLUDED.\"{0}\"", c.name)).collect();
        let current: Vec<String> = cols[1..].iter().map(|c| format!("t.\"{}\"", c.name)).collect();
        let new: Vec<String> = cols[1..].iter().map(|c| format!("EXCLUDED.\"{}\"", c.name)).collect();
        let merge = format!(
            "INSERT INTO {table} AS t ({names}) SELECT {names} FROM adsproc_staging ON CONFLICT (record_uuid) DO UPDATE SET {} \
             WHERE ({}) IS DISTINCT FROM ({})",
            set.join(", "),
            current.join(", "),
            new.join(", ")
        );
        let copy = format!("COPY adsproc_staging ({names}) FROM STDIN (FORMAT binary)");
        Ok(Self { client, table, topic: topic.to_string(), types: cols.iter().map(|c| c.ty.wire()).collect(), copy, merge })
    }

    /// Per partition, the first offset not in the table yet (partitions never loaded: absent).
    pub fn stored_offsets(&mut self) -> anyhow::Result<BTreeMap<i32, i64>> {
        let rows = self.client.query(
            &format!("SELECT \"partition\", next_offset FROM {OFFSETS_TABLE} WHERE table_name = $1 AND topic = $2"),
            &[&self.table.key(), &self.topic],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Writes the batch; its rows are sorted by `record_uuid` first, so that the merge walks
    /// the primary key's index in order (on 1M rows, 4.4 → 3.3 s for the server).
    pub fn apply(&mut self, mut batch: Batch) -> anyhow::Result<Applied> {
        batch.rows.sort_unstable_by_key(Row::record_uuid);
        let t0 = std::time::Instant::now();
        let mut tx = self.client.transaction()?;
        let mut applied = Applied::default();
        let mut t_copy = t0;
        if !batch.rows.is_empty() {
            let sink = tx.copy_in(&self.copy)?;
            let mut writer = BinaryCopyInWriter::new(sink, &self.types);
            for r in &batch.rows {
                r.write(&mut writer).with_context(|| format!("cannot copy record {} into the staging table", r.record_uuid()))?;
            }
            writer.finish()?;
            t_copy = std::time::Instant::now();
            applied.written = tx.execute(&self.merge, &[]).with_context(|| format!("cannot upsert into {}", self.table))?;
        }
        if !batch.rejected.is_empty() {
            let insert = tx.prepare(&format!(
                "INSERT INTO {} (topic, \"partition\", \"offset\", reason, payload) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                self.table.dead_letters()
            ))?;
            for d in &batch.rejected {
                tx.execute(&insert, &[&self.topic, &d.partition, &d.offset, &d.reason, &d.payload])?;
            }
        }
        let parts: Vec<i32> = batch.next_offsets.keys().copied().collect();
        let offsets: Vec<i64> = batch.next_offsets.values().copied().collect();
        tx.execute(
            &format!(
                "INSERT INTO {OFFSETS_TABLE} (table_name, topic, \"partition\", next_offset) SELECT $1, $2, p, o FROM unnest($3::int[], $4::bigint[]) AS u(p, o) \
                 ON CONFLICT (table_name, topic, \"partition\") DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
            ),
            &[&self.table.key(), &self.topic, &parts, &offsets],
        )?;
        CrashPoint::LoadBeforeCommit.reached();
        let t_merge = std::time::Instant::now();
        tx.commit().context("cannot commit the batch")?;
        tracing::debug!(
            "batch of {} rows: copy {:?}, merge and offsets {:?}, commit {:?}",
            batch.rows.len(),
            t_copy - t0,
            t_merge - t_copy,
            t_merge.elapsed()
        );
        CrashPoint::LoadAfterCommit.reached();
        Ok(applied)
    }
}
