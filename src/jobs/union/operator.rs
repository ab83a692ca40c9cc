//! The union operator: forwards every record whose value differs from the last one forwarded
//! for its `record_uuid` (keyed state: a 64-bit hash of that value and when its record_uuid
//! last arrived), and dead-letters what is not a record of its table. It has no event time
//! and no lateness: a region that was away delivers its records late, and they are forwarded
//! as they come, in each source partition's order, so the last value forwarded for a
//! `record_uuid` is the last its source topic holds (contract §6).

use std::sync::Arc;

use arrow::array::{Array, AsArray, BinaryArray, FixedSizeBinaryArray, Int32Array, Int64Array, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::audit::Audit;
use super::record::UnionRecord;
use super::rules::UnionRules;
use crate::contract::outputs::DeadLetter;
use crate::contract::record_uuid;
use crate::contract::records::col;
use crate::core::job::{Emit, EpochInput, Operator, OutputRecord, RunSettings, StateSize};

/// What a key group remembers of a record_uuid: the last value forwarded (its xxh3 hash) and
/// the ingest time its record_uuid last arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Last {
    value: u64,
    seen: i64,
}

/// A key group's state, as a checkpoint stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnionState {
    /// `(record_uuid, value hash, last seen)`, by record_uuid.
    pub last: Vec<(u128, u64, i64)>,
    pub ingest_watermark: i64,
    pub audit: Audit,
}

impl StateSize for UnionState {
    fn encoded_len_bound(&self) -> usize {
        64 + self.last.len() * (19 + 10 + 10)
    }
}

/// A `records` batch's columns, typed once per batch.
struct Columns<'a> {
    uuid: &'a FixedSizeBinaryArray,
    payload: &'a BinaryArray,
    partition: &'a Int32Array,
    offset: &'a Int64Array,
    timestamp: &'a TimestampMillisecondArray,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a RecordBatch) -> Self {
        Self {
            uuid: batch.column(col::RECORD_UUID).as_fixed_size_binary(),
            payload: batch.column(col::PAYLOAD).as_binary::<i32>(),
            partition: batch.column(col::KAFKA_PARTITION).as_primitive::<Int32Type>(),
            offset: batch.column(col::KAFKA_OFFSET).as_primitive::<Int64Type>(),
            timestamp: batch.column(col::KAFKA_TIMESTAMP).as_primitive::<TimestampMillisecondType>(),
        }
    }
}

pub struct UnionOperator {
    rules: UnionRules,
    settings: RunSettings,
    last: FxHashMap<u128, Last>,
    ingest_watermark: i64,
    /// When state was last swept of record_uuids not seen for `forget_after`.
    swept: i64,
    out: Vec<UnionRecord>,
    dead: Vec<DeadLetter>,
    audit: Audit,
}

impl UnionOperator {
    pub fn new(rules: UnionRules, settings: RunSettings) -> Self {
        Self { rules, settings, last: FxHashMap::default(), ingest_watermark: i64::MIN, swept: i64::MIN, out: Vec::new(), dead: Vec::new(), audit: Audit::default() }
    }

    pub fn restore(rules: UnionRules, settings: RunSettings, state: UnionState) -> Self {
        let mut op = Self::new(rules, settings);
        op.last = state.last.into_iter().map(|(k, value, seen)| (k, Last { value, seen })).collect();
        op.ingest_watermark = state.ingest_watermark;
        op.swept = state.ingest_watermark;
        op.audit = state.audit;
        op
    }

    fn row(&mut self, input: usize, cols: &Columns<'_>, row: usize) {
        self.audit.read += 1;
        let tables = self.rules.tables.len();
        let (region, table) = (input / tables, input % tables);
        let (payload, ts, uuid) = (cols.payload.value(row), cols.timestamp.value(row), cols.uuid);
        let parsed = if uuid.is_null(row) {
            Err("no record_uuid".to_string())
        } else {
            let key = u128::from_be_bytes(uuid.value(row).try_into().expect("16 bytes"));
            let hash = xxhash_rust::xxh3::xxh3_64(payload);
            if let Some(last) = self.last.get_mut(&key).filter(|l| l.value == hash) {
                last.seen = last.seen.max(ts);
                self.audit.replicas += 1;
                return;
            }
            UnionRecord::parse(table, self.rules.tables[table].kind, payload).and_then(|r| {
                if r.record_uuid().as_u128() == key {
                    self.last.insert(key, Last { value: hash, seen: ts });
                    Ok(r)
                } else {
                    Err("record_uuid read twice differently".into())
                }
            })
        };
        match parsed {
            Ok(r) => {
                self.audit.forwarded += 1;
                self.out.push(r);
            }
            Err(why) => {
                self.audit.invalid += 1;
                let source = &self.rules.tables[table].source;
                let (partition, offset) = (cols.partition.value(row), cols.offset.value(row));
                let region = &self.rules.regions[region];
                self.dead.push(DeadLetter {
                    // Region and topic: two regions' topics of one name hold different records.
                    record_uuid: record_uuid::dead_letter(&format!("{region}/{source}"), partition, offset),
                    topic: Arc::from(source.as_str()),
                    partition: Some(partition),
                    offset: Some(offset),
                    kafka_timestamp: Some(ts),
                    reason: format!("not_a_record: not a record of {} from region {region}: {why}", self.rules.tables[table].target),
                    payload: String::from_utf8_lossy(payload).into_owned(),
                });
            }
        }
    }
}

impl Operator for UnionOperator {
    type Record = UnionRecord;
    type Audit = Audit;
    type State = UnionState;

    fn process_epoch(&mut self, epoch: &[EpochInput<'_>]) {
        for (input, part) in epoch.iter().enumerate() {
            for (batch, rows) in part.selections() {
                let cols = Columns::of(batch);
                match rows {
                    Some(rows) => rows.iter().for_each(|&r| self.row(input, &cols, r as usize)),
                    None => (0..batch.num_rows()).for_each(|r| self.row(input, &cols, r)),
                }
            }
        }
    }

    fn advance_ingest_watermark(&mut self, t: i64) {
        self.ingest_watermark = self.ingest_watermark.max(t);
        // Hourly, the record_uuids not seen for forget_after are forgotten.
        if self.ingest_watermark >= self.swept.saturating_add(3_600_000) {
            let horizon = self.ingest_watermark.saturating_sub(self.rules.forget_after_ms);
            self.last.retain(|_, l| l.seen >= horizon);
            self.swept = self.ingest_watermark;
        }
    }

    fn finish(&mut self) {}

    fn ingest_watermark(&self) -> i64 {
        self.ingest_watermark
    }

    fn audit(&self) -> &Audit {
        &self.audit
    }

    fn drain(&mut self) -> (Vec<UnionRecord>, Vec<DeadLetter>) {
        (std::mem::take(&mut self.out), std::mem::take(&mut self.dead))
    }

    fn drain_tables(&mut self, _before: i64) -> (Vec<(usize, RecordBatch)>, Vec<DeadLetter>) {
        // The union forwards records; a backfill of it (Parquet tables) is refused by its
        // reading plan, so nothing is ever drained as tables.
        debug_assert!(self.settings.emit == Emit::Updates, "the union job has no backfill");
        let (records, dead) = self.drain();
        assert!(records.is_empty(), "the union job has no table output");
        (Vec::new(), dead)
    }

    fn final_before(&self) -> i64 {
        self.ingest_watermark
    }

    fn first_emitted(&self) -> Option<i64> {
        self.out.iter().map(OutputRecord::partition_time).min()
    }

    fn snapshot(&self) -> UnionState {
        assert!(self.out.is_empty() && self.dead.is_empty(), "snapshot before drain");
        let mut last: Vec<(u128, u64, i64)> = self.last.iter().map(|(k, l)| (*k, l.value, l.seen)).collect();
        last.sort_unstable_by_key(|(k, _, _)| *k);
        UnionState { last, ingest_watermark: self.ingest_watermark, audit: self.audit.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::format::{decode, Format};
    use crate::contract::raw::RawMessage;
    use crate::jobs::union::rules::UnionRules;

    fn rules() -> UnionRules {
        let mut r = UnionRules::from_toml(super::super::rules::DEFAULT_JOB_FILE).unwrap();
        r.regions = vec!["region-a".into(), "region-b".into()];
        r
    }

    fn metric(ad: &str, impressions: i64) -> Vec<u8> {
        let m = crate::contract::outputs::AdMetric {
            record_uuid: record_uuid::ad_metric("region-a", ad, 60_000),
            region: "region-a".into(),
            ad_id: ad.into(),
            campaign_id: None,
            advertiser_id: None,
            window_start: 60_000,
            window_end: 120_000,
            impressions,
            clicks: 0,
        };
        let mut v = Vec::new();
        m.write_json(&mut v);
        v
    }

    fn batch(payloads: &[Vec<u8>], first_offset: i64) -> RecordBatch {
        let messages: Vec<RawMessage> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| RawMessage { partition: 0, offset: first_offset + i as i64, timestamp: 1_000 + i as i64, payload: p.clone() })
            .collect();
        decode(Format::Records, &messages)
    }

    impl UnionRecord {
        fn write_json_string(&self) -> String {
            let mut v = Vec::new();
            self.write_json(&mut v);
            String::from_utf8(v).unwrap()
        }
    }

    fn run(op: &mut UnionOperator, input: usize, b: &RecordBatch) -> (Vec<UnionRecord>, Vec<DeadLetter>) {
        let mut epoch = vec![EpochInput::EMPTY; 4];
        let batches = [b.clone()];
        epoch[input] = EpochInput { batches: &batches, rows: None };
        op.process_epoch(&epoch);
        op.drain()
    }

    #[test]
    fn replicas_of_the_last_forwarded_value_are_collapsed_across_restores() {
        let mut op = UnionOperator::new(rules(), RunSettings::stream(0, 1));
        let (out, dead) = run(&mut op, 0, &batch(&[metric("ad-1", 1), metric("ad-1", 1), metric("ad-1", 2), metric("ad-2", 5)], 0));
        assert_eq!(out.iter().map(|r| r.write_json_string()).collect::<Vec<_>>(), [metric("ad-1", 1), metric("ad-1", 2), metric("ad-2", 5)].map(|v| String::from_utf8(v).unwrap()));
        assert!(dead.is_empty());
        // Through a checkpoint: a replica of the last value stays collapsed, an older value is a change.
        let mut op = UnionOperator::restore(rules(), RunSettings::stream(0, 1), op.snapshot());
        let (out, _) = run(&mut op, 0, &batch(&[metric("ad-1", 2), metric("ad-2", 5), metric("ad-1", 1)], 4));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].write_json_string(), String::from_utf8(metric("ad-1", 1)).unwrap());
        let a = op.audit().clone();
        assert_eq!((a.read, a.forwarded, a.replicas, a.invalid), (7, 4, 3, 0));
    }

    #[test]
    fn what_is_not_a_record_of_its_table_is_a_dead_letter_named_by_region() {
        let mut op = UnionOperator::new(rules(), RunSettings::stream(0, 1));
        let order_json = br#"{"record_uuid":"0b7d1b3e-4c52-5e0f-9d0c-3f1c6f0a9e11","order_id":"o"}"#.to_vec();
        // Input 2 is region b's ad-metrics.
        let (out, dead) = run(&mut op, 2, &batch(&[b"not json".to_vec(), order_json], 0));
        assert!(out.is_empty());
        assert_eq!(dead.len(), 2);
        assert!(dead.iter().all(|d| d.reason.starts_with("not_a_record: not a record of ad-metrics-all from region region-b")), "{dead:?}");
        assert_eq!(dead[0].record_uuid, record_uuid::dead_letter("region-b/ad-metrics", 0, 0));
        assert!(crate::core::job::JobAudit::balances(op.audit()));
    }

    #[test]
    fn state_is_forgotten_after_forget_after() {
        let mut op = UnionOperator::new(rules(), RunSettings::stream(0, 1));
        run(&mut op, 0, &batch(&[metric("ad-1", 1)], 0));
        op.advance_ingest_watermark(1_000 + 2 * 86_400_000 + 3_600_000);
        assert!(op.snapshot().last.is_empty());
        let (out, _) = run(&mut op, 0, &batch(&[metric("ad-1", 1)], 1));
        assert_eq!(out.len(), 1, "a replica after forget_after is forwarded once more");
    }
}
