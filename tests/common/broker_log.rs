//! What the broker holds, read from its own storage instead of through a consumer: every
//! record of a topic, and whether the transaction that wrote it committed.
//!
//! Nisshi hands the records of aborted transactions to read_committed consumers (it keeps no
//! aborted-transaction index), so no Kafka client can tell them apart. Its sqlite storage
//! can: each record keeps its producer id and epoch, and a committed transaction leaves a
//! COMMIT control record in every partition it wrote. A transaction cut short by a crash, whose
//! producer the restarted process fenced with a newer epoch, leaves none (seen in broker.db:
//! its status ABORTED, no marker in its partitions); an ABORT marker, were one written, says
//! the same. So a transactional record is committed iff the next control record of its
//! producer id and epoch in its partition is a COMMIT; a record written without a transaction
//! is committed as it is written.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use super::kafka::Broker;

/// One record of a topic as the broker stored it.
#[derive(Debug, Clone)]
pub struct Held {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub committed: bool,
}

/// Kafka's record-batch attribute bits.
const TRANSACTIONAL: i64 = 0x10;
const CONTROL: i64 = 0x20;

fn open(broker: &Broker) -> rusqlite::Connection {
    let path = broker.dir.path().join("broker.db");
    assert!(path.exists(), "{} does not exist: the broker must run with sqlite storage", path.display());
    let db = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    db
}

/// Every data record of `topic` in (partition, offset) order, each marked committed or not.
pub fn held(broker: &Broker, topic: &str) -> Vec<Held> {
    let db = open(broker);
    let mut stmt = db
        .prepare(
            "select tp.partition, r.offset_id, r.attributes, r.producer_id, r.producer_epoch, r.k, r.v
             from record r join topition tp on r.topition = tp.id join topic t on tp.topic = t.id
             where t.name = ?1 order by tp.partition, r.offset_id",
        )
        .unwrap();
    type Row = (i32, i64, i64, Option<i64>, Option<i64>, Option<Vec<u8>>, Option<Vec<u8>>);
    let rows: Vec<Row> = stmt
        .query_map([topic], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // Backwards through each partition: the outcome of a (producer id, epoch)'s transaction is
    // the first control record of that producer and epoch after the record.
    let mut out = Vec::with_capacity(rows.len());
    let mut outcome: HashMap<(Option<i64>, Option<i64>), bool> = HashMap::new();
    let mut partition = None;
    for (p, offset, attributes, pid, epoch, k, v) in rows.into_iter().rev() {
        if partition != Some(p) {
            outcome.clear();
            partition = Some(p);
        }
        if attributes & CONTROL != 0 {
            let key = k.unwrap_or_default();
            assert_eq!(key.len(), 4, "a control record's key is (version, type): {key:?}");
            let kind = i16::from_be_bytes([key[2], key[3]]);
            assert!(kind == 0 || kind == 1, "control record type {kind} (0 abort, 1 commit)");
            outcome.insert((pid, epoch), kind == 1);
            continue;
        }
        let committed = attributes & TRANSACTIONAL == 0 || outcome.get(&(pid, epoch)).copied().unwrap_or(false);
        out.push(Held { partition: p, offset, key: k.unwrap_or_default(), value: v.unwrap_or_default(), committed });
    }
    out.reverse();
    out
}

/// How many transactions the broker ended in each state (COMMITTED, ABORTED, ...).
pub fn transaction_outcomes(broker: &Broker) -> BTreeMap<String, usize> {
    let db = open(broker);
    let mut stmt = db.prepare("select status, count(*) from txn_detail group by status").unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, Option<String>>(0)?.unwrap_or_default(), r.get::<_, i64>(1)? as usize)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}
