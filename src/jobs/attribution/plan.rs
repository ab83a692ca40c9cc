//! What a backfill of [from, to) reads: the orders whose first arrival's order_time is in the
//! range, with their later arrivals, and the ad events they can match (docs/attribution.md,
//! "Backfill").
//!
//! Orders. A first arrival with order_time in [from, to) was ingested in
//! `[from − max_future, to + max_past)` (validity); its later arrivals until its latest
//! order_time + max_past, so before `to + max_past` when they keep its order_time. Whether an
//! arrival is an order's first depends on the arrivals of its life before it: the one that
//! keeps the life open (its latest order_time) was ingested at or after
//! `ingest − max_past − max_future`. Reading from `from − max_past − 2·max_future` sees it.
//!
//! Ad events. An order of the range matches events with event_time in
//! `(from − window, to)`, ingested before the order's ingest + join_wait, so before
//! `to + max_past + join_wait`, and at or after `event_time − max_future`. An event's earlier
//! arrivals (which make a later one a duplicate) carry its event time when they are client
//! retries: they are in the same range. Only the ad events of the range's orders' users and
//! stores are decoded beyond those two columns ([`read_filter`]).

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::TimestampMillisecondType;

use super::rules::AttributionRules;
use super::{AD_EVENTS, ORDERS};
use crate::contract::columns as c;
use crate::contract::orders::col;
use crate::core::batch_view::Strings;
use crate::core::job::{BackfillRange, ReadRange, RowFilter};
use crate::core::key_group::{any_strings, pair_key};

pub fn reading(rules: &AttributionRules, r: BackfillRange) -> anyhow::Result<Vec<ReadRange>> {
    let (past, future) = (rules.order_max_past_ms, rules.order_max_future_ms);
    let mut reads = vec![ReadRange { read_from: 0, read_to: 0, relevant_from: 0, warm_up_note: "", tail_note: "" }; 2];
    reads[ORDERS] = ReadRange {
        read_from: r.from - past - 2 * future,
        read_to: r.to + past,
        relevant_from: r.from - future,
        warm_up_note: "an order whose earlier arrivals are not archived is taken as first arriving at its earliest archived arrival",
        tail_note: "status updates still to be archived could change orders near --to",
    };
    let ad_from = r.from - rules.longest_window_ms() - rules.ad_events.max_future_ms;
    reads[AD_EVENTS] = ReadRange {
        read_from: ad_from,
        read_to: r.to + past + rules.join_wait_ms,
        relevant_from: ad_from,
        warm_up_note: "orders early in the range cannot match ad events from before the archive's start",
        tail_note: "orders ingested near the archive's end are decided without the ad events still to be archived",
    };
    Ok(reads)
}

/// The ad events of the (user, store) of an order row whose order_time is in the range: a
/// superset of the pairs of the range's first arrivals. `orders`: every decoded order batch.
fn present(a: &arrow::array::StringArray, row: usize) -> Option<&str> {
    (!arrow::array::Array::is_null(a, row)).then(|| a.value(row)).filter(|s| !s.is_empty())
}

pub fn read_filter(r: BackfillRange, orders: &[RecordBatch]) -> RowFilter {
    let mut pairs: HashSet<u128> = HashSet::new();
    for b in orders {
        let times = b.column(col::ORDER_TIME).as_primitive::<TimestampMillisecondType>();
        let (users, stores) = (b.column(col::USER_ID).as_string::<i32>(), b.column(col::STORE_ID).as_string::<i32>());
        for row in 0..b.num_rows() {
            let in_range = !arrow::array::Array::is_null(times, row) && (r.from..r.to).contains(&times.value(row));
            if let (true, Some(u), Some(s)) = (in_range, present(users, row), present(stores, row)) {
                pairs.insert(pair_key(u, s));
            }
        }
    }
    let describe = format!("the ad events of the {} (user, store) pairs of the range's orders", pairs.len());
    let pairs = Arc::new(pairs);
    RowFilter {
        columns: vec![c::USER_ID, c::STORE_ID],
        keep: Arc::new(move |batch: &RecordBatch| {
            let column = |name: &str| batch.column_by_name(name).expect("the filter's columns are read");
            let (users, stores) = (any_strings(column(c::USER_ID)), any_strings(column(c::STORE_ID)));
            let (users, stores) = (Strings::new(&users), Strings::new(&stores));
            (0..batch.num_rows())
                .map(|row| Some(matches!((users.present(row), stores.present(row)), (Some(u), Some(s)) if pairs.contains(&pair_key(u, s)))))
                .collect::<BooleanArray>()
        }),
        describe,
    }
}
