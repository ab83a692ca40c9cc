//! The `orders` topic of the synthetic workload, correlated with its ad events.
//!
//! An order follows an ad event of the workload most of the time: the same user at the store
//! the ad promotes, minutes to days after the event (so some orders fall outside the click and
//! impression windows); the others are by eaters who saw no ad of their store. Orders reach
//! Kafka seconds after they are placed, so an order placed right after a click whose event
//! arrived late reaches Kafka before it. Status updates (completed, cancelled) follow minutes
//! to days later on any partition, client retries repeat a message seconds later, and a share
//! of the messages is malformed. Every message is a pure function of (seed, hour, index), as
//! the ad events are.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use rand::Rng;
use rand_distr::Zipf;

use super::{rng_for, GenSpec, Row};
use crate::contract::orders::archive_schema;
use crate::contract::time::{DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS};

/// One order message as archived (and, as JSON, as produced).
#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub order_id: Option<String>,
    pub user_id: Option<String>,
    pub store_id: Option<String>,
    pub order_time: Option<i64>,
    pub status: Option<String>,
    pub amount_cents: Option<i64>,
    pub currency: Option<String>,
    pub region: Option<String>,
    pub partition: i32,
    pub offset: i64,
    pub ingest: i64,
}

impl OrderRow {
    /// The message as a producer sends it: the contract's JSON object (absent values as null).
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "order_id": self.order_id,
            "user_id": self.user_id,
            "store_id": self.store_id,
            "order_time": self.order_time,
            "status": self.status,
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "region": self.region,
        })
        .to_string()
    }
}

/// Archive columns (contract §3) for orders of one hour.
pub fn order_rows_to_batch(rows: &[&OrderRow]) -> RecordBatch {
    let s = |f: &dyn Fn(&OrderRow) -> Option<&str>| -> ArrayRef { Arc::new(StringArray::from_iter(rows.iter().map(|r| f(r)))) };
    let columns: Vec<ArrayRef> = vec![
        s(&|r| r.order_id.as_deref()),
        s(&|r| r.user_id.as_deref()),
        s(&|r| r.store_id.as_deref()),
        Arc::new(TimestampMillisecondArray::from_iter(rows.iter().map(|r| r.order_time)).with_timezone("UTC")),
        s(&|r| r.status.as_deref()),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.amount_cents))),
        s(&|r| r.currency.as_deref()),
        s(&|r| r.region.as_deref()),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.partition))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
        Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.ingest)).with_timezone("UTC")),
    ];
    RecordBatch::try_new(archive_schema(), columns).expect("columns match the orders archive schema")
}

/// Share of order messages that are status updates of an earlier order.
const UPDATES: f64 = 0.3;
/// ... client retries of an earlier message.
const RETRIES: f64 = 0.03;
/// ... orders by eaters who saw no ad of the store.
const WITHOUT_AD: f64 = 0.15;

impl GenSpec {
    /// The first hour with orders (orders span the last `order_hours` hours).
    fn first_order_hour(&self) -> u32 {
        self.hours - self.order_hours.min(self.hours)
    }

    fn orders_per_hour(&self, hour: u32) -> u64 {
        let first = self.first_order_hour();
        if hour < first || self.orders == 0 {
            return 0;
        }
        let span = u64::from(self.hours - first);
        let i = u64::from(hour - first);
        self.orders / span + u64::from(i < self.orders % span)
    }

    /// The order first placed as message `index` of `hour`.
    fn placed(&self, hour: u32, index: u64, zipf: &Zipf<f64>) -> OrderRow {
        let mut r = rng_for(self.seed, hour, index, 3);
        let ingest = self.start + i64::from(hour) * HOUR_MS + r.random_range(0..HOUR_MS);
        // Orders reach Kafka seconds after they are placed.
        let order_time = ingest - r.random_range(0..10 * SECOND_MS);
        let followed = if r.random_bool(1.0 - WITHOUT_AD) { self.followed_event(hour, order_time, &mut r, zipf) } else { None };
        let (user, store, region) = match &followed {
            Some(e) => (e.user_id.clone(), e.store_id.clone(), e.region.clone()),
            None => (
                Some(format!("user-{}", r.random_range(0..1_000_000u32))),
                Some(format!("store-{:06}", r.random_range(0..self.ads.max(2) / 2))),
                Some(format!("region-{}", (b'a' + ((self.first_region + r.random_range(0..self.regions)) % 26) as u8) as char)),
            ),
        };
        let id: u128 = r.random();
        OrderRow {
            order_id: Some(format!("order-{}", uuid::Uuid::from_u128(id))),
            user_id: user,
            store_id: store,
            order_time: Some(order_time),
            status: Some("placed".into()),
            amount_cents: Some(r.random_range(500..12_000)),
            currency: Some(if region.as_deref() == Some("region-a") { "USD" } else { "EUR" }.into()),
            region,
            partition: r.random_range(0..self.order_partitions) as i32,
            offset: 0,
            ingest,
        }
    }

    /// An ad event of the workload placed before `order_time`: an hour back mostly, up to nine
    /// days (past the click window) sometimes. None if that is before the workload.
    fn followed_event(&self, hour: u32, order_time: i64, r: &mut impl Rng, zipf: &Zipf<f64>) -> Option<Row> {
        let back_ms = match r.random_range(0..100) {
            0..50 => r.random_range(0..HOUR_MS),
            50..75 => r.random_range(HOUR_MS..DAY_MS),
            75..95 => r.random_range(DAY_MS..7 * DAY_MS),
            _ => r.random_range(7 * DAY_MS..9 * DAY_MS),
        };
        let target = order_time - back_ms;
        let event_hour = (target - self.start).div_euclid(HOUR_MS);
        if event_hour < 0 || event_hour > i64::from(hour) {
            return None;
        }
        let event_hour = event_hour as u32;
        let n = self.per_hour(event_hour);
        if n == 0 {
            return None;
        }
        let e = self.event(event_hour, r.random_range(0..n), zipf);
        // Quick orders: seconds after the event, so that an event that arrived late reaches
        // Kafka after the order that followed it.
        Some(e).filter(|e| e.event_time.is_some_and(|t| t <= order_time))
    }

    /// Order message number `index` of `hour`: an order placed, a status update or client
    /// retry of an earlier one, or a malformed message.
    fn order_message(&self, hour: u32, index: u64, zipf: &Zipf<f64>) -> OrderRow {
        let mut r = rng_for(self.seed, hour, index, 4);
        let hour_start = self.start + i64::from(hour) * HOUR_MS;
        let u: f64 = r.random();
        if u < UPDATES + RETRIES {
            // An earlier order of the last two days (or of this hour, at an earlier index).
            let first = self.first_order_hour();
            let back = r.random_range(0..48u32).min(hour - first);
            let from_hour = hour - back;
            let n = self.orders_per_hour(from_hour);
            let j = if back == 0 { r.random_range(0..index.max(1)) } else { r.random_range(0..n.max(1)) };
            let mut o = self.placed(from_hour, j, zipf);
            let later = if u < UPDATES {
                o.status = Some(if r.random_bool(0.8) { "completed" } else { "cancelled" }.into());
                if r.random_bool(0.2) {
                    o.amount_cents = o.amount_cents.map(|a| a + r.random_range(-300..300)).map(|a| a.max(0));
                }
                r.random_range(MINUTE_MS..3 * HOUR_MS)
            } else {
                r.random_range(SECOND_MS..30 * SECOND_MS)
            };
            o.ingest = (o.ingest + later).clamp(hour_start, hour_start + HOUR_MS - 1).max(o.ingest);
            o.partition = r.random_range(0..self.order_partitions) as i32;
            return o;
        }
        let mut o = self.placed(hour, index, zipf);
        if u < UPDATES + RETRIES + self.malformed_fraction {
            match r.random_range(0..8) {
                0 => o.order_id = None,
                1 => o.status = Some("shipped".into()),
                2 => o.amount_cents = Some(-o.amount_cents.unwrap_or(1)),
                3 => o.currency = Some("euro".into()),
                4 => o.order_time = o.order_time.map(|t| t + DAY_MS),
                5 => o.order_time = o.order_time.map(|t| t - 8 * DAY_MS),
                6 => o.user_id = None,
                _ => o.region = None,
            }
        }
        o
    }

    /// All order messages of one ingest hour, in arrival order, with offsets (hour in the high
    /// bits, as for ad events).
    pub fn order_rows(&self, hour: u32) -> Vec<OrderRow> {
        let zipf = Zipf::new(f64::from(self.ads), self.zipf_exponent).expect("valid Zipf parameters");
        let mut rows: Vec<OrderRow> = (0..self.orders_per_hour(hour)).map(|i| self.order_message(hour, i, &zipf)).collect();
        rows.sort_by_key(|r| (r.ingest, r.partition));
        let mut next = vec![0i64; self.order_partitions as usize];
        for row in &mut rows {
            let n = &mut next[row.partition as usize];
            row.offset = (i64::from(hour) << 32) | *n;
            *n += 1;
        }
        rows
    }
}
