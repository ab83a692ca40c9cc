//! `backfill --job union`: the regions' Hive tables (each region's backfill output) merged into
//! the union's tables, one record per record_uuid; a region's restatement replaces its earlier
//! values in its table, and so in the union.

mod common;

use std::collections::BTreeMap;

use adsproc::contract::attributed_orders::AttributedOrder;
use adsproc::contract::outputs::AdMetric;
use adsproc::contract::time::rfc3339;
use adsproc::core::job::OutputRecord;
use common::kafka::adsproc;
use common::parquet_out::read_table;
use common::{HOUR, T0};

fn by_uuid<R: OutputRecord>(records: Vec<R>) -> BTreeMap<uuid::Uuid, R> {
    let n = records.len();
    let map: BTreeMap<uuid::Uuid, R> = records.into_iter().map(|r| (r.record_uuid(), r)).collect();
    assert_eq!(map.len(), n, "a record_uuid written twice");
    map
}

#[test]
fn the_union_backfill_merges_the_regions_tables_after_a_restatement() {
    let work = tempfile::tempdir().unwrap();
    let root = |name: &str| work.path().join(name).to_str().unwrap().to_string();
    let range = ["--from".to_string(), rfc3339(T0), "--to".to_string(), rfc3339(T0 + 2 * HOUR)];
    for (r, first) in [("a", "0"), ("b", "1")] {
        adsproc(&["gen", "--out", &root(&format!("archive-{r}")), "--events", "20000", "--hours", "2", "--ads", "100", "--regions", "1",
            "--first-region", first, "--orders", "600", "--order-hours", "2", "--late-fraction", "0.05", "--seed", first, "--start", &rfc3339(T0)]);
        let (archive, sink) = (root(&format!("archive-{r}")), root(&format!("tables-{r}")));
        for job in ["aggregation", "attribution"] {
            let mut args = vec!["backfill", "--job", job, "--quiet", "--source", &archive, "--sink", &sink];
            args.extend(range.iter().map(String::as_str));
            adsproc(&args);
        }
    }
    // Region a restates its windows (--complete counts late events the first run dropped) into
    // the same table: its partitions are replaced, each record_uuid once, with the new values.
    let first_a = by_uuid(read_table::<AdMetric>(work.path().join("tables-a").as_path(), "ad-metrics"));
    let (archive_a, tables_a) = (root("archive-a"), root("tables-a"));
    let mut args = vec!["backfill", "--job", "aggregation", "--quiet", "--complete", "--source", &archive_a, "--sink", &tables_a];
    args.extend(range.iter().map(String::as_str));
    adsproc(&args);
    let restated_a = by_uuid(read_table::<AdMetric>(work.path().join("tables-a").as_path(), "ad-metrics"));
    // (--complete can only add windows: a late event's window may have had no counted event.)
    let lost = first_a.keys().filter(|u| !restated_a.contains_key(u)).count();
    assert_eq!(lost, 0, "windows of the first run missing after the restatement");
    let changed = restated_a.iter().filter(|(u, m)| first_a.get(u) != Some(*m)).count();
    assert!(changed > 0, "the restatement changed some of region a's windows");

    let (tables_b, out) = (root("tables-b"), root("union"));
    let mut args = vec!["backfill", "--job", "union", "--source", &tables_a, "--source", &tables_b, "--sink", &out];
    args.extend(range.iter().map(String::as_str));
    adsproc(&args);

    // Expected: region a's restated metrics and region b's.
    let mut expected = restated_a;
    expected.extend(by_uuid(read_table::<AdMetric>(work.path().join("tables-b").as_path(), "ad-metrics")));
    let got = by_uuid(read_table::<AdMetric>(work.path().join("union").as_path(), "ad-metrics-all"));
    let differ = expected.iter().filter(|(u, m)| got.get(u) != Some(*m)).count();
    assert!(got.len() == expected.len() && differ == 0, "{} records, {} expected, {differ} differ", got.len(), expected.len());

    let mut orders = by_uuid(read_table::<AttributedOrder>(work.path().join("tables-a").as_path(), "attributed-orders"));
    orders.extend(by_uuid(read_table::<AttributedOrder>(work.path().join("tables-b").as_path(), "attributed-orders")));
    assert!(orders.len() > 100);
    assert_eq!(by_uuid(read_table::<AttributedOrder>(work.path().join("union").as_path(), "attributed-orders-all")), orders);
}
