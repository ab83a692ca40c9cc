//! `adsproc gen`: a deterministic synthetic archive of the `ad-events` and `orders` topics
//! (orders: [`orders`]).
//!
//! Every message is a pure function of (seed, hour, index), so hours are generated in parallel
//! and a duplicate can re-create the event it repeats without coordination. Knobs cover what
//! real traffic holds: skewed ads (Zipf), client-retry duplicates seconds to minutes later
//! (some across an hour boundary), late arrivals on both sides of the allowed lateness, and
//! malformed rows of every kind the validator knows.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, StringDictionaryBuilder, TimestampMillisecondArray};
use arrow::datatypes::Int32Type;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};
use rayon::prelude::*;
use tokio::runtime::Handle;

pub mod orders;

pub use orders::{order_rows_to_batch, OrderRow};

use crate::connector::archive::write_archive_file;
use crate::connector::store::Location;
use crate::contract::schema::archive_schema;
use crate::contract::time::{HOUR_MS, MINUTE_MS, SECOND_MS};

#[derive(Debug, Clone)]
pub struct GenSpec {
    pub events: u64,
    pub start: i64,
    pub hours: u32,
    pub ads: u32,
    pub zipf_exponent: f64,
    pub regions: u32,
    /// The first region's letter, counted from a: events are in region-(a + first_region) …
    pub first_region: u32,
    pub partitions: u32,
    pub files_per_hour: u32,
    pub click_fraction: f64,
    pub duplicate_fraction: f64,
    pub late_fraction: f64,
    pub malformed_fraction: f64,
    pub seed: u64,
    pub topic: String,
    /// Order messages (placed, status updates, retries, malformed), over the last
    /// `order_hours` hours.
    pub orders: u64,
    pub order_hours: u32,
    pub order_partitions: u32,
    pub orders_topic: String,
}

/// One archived message.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub ad_id: Option<String>,
    pub campaign_id: Option<String>,
    pub advertiser_id: Option<String>,
    pub user_id: Option<String>,
    pub store_id: Option<String>,
    pub event_time: Option<i64>,
    pub region: Option<String>,
    pub partition: i32,
    pub offset: i64,
    pub ingest: i64,
}

fn rng_for(seed: u64, hour: u32, index: u64, salt: u64) -> ChaCha8Rng {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(u64::from(hour) + 1) ^ index.rotate_left(24) ^ salt.rotate_left(48);
    // splitmix64 finalizer: nearby inputs give unrelated seeds.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(x ^ (x >> 31))
}

impl GenSpec {
    fn per_hour(&self, hour: u32) -> u64 {
        let base = self.events / u64::from(self.hours);
        base + u64::from(u64::from(hour) < self.events % u64::from(self.hours))
    }

    /// The original event number `index` of `hour`: what a client sent the first time.
    fn event(&self, hour: u32, index: u64, zipf: &Zipf<f64>) -> Row {
        let mut r = rng_for(self.seed, hour, index, 1);
        let ingest = self.start + i64::from(hour) * HOUR_MS + r.random_range(0..HOUR_MS);
        let ad = zipf.sample(&mut r) as u64;
        let click = r.random_bool(self.click_fraction);
        let delay = if r.random_bool(self.late_fraction) {
            // Late: from just past the watermark to well beyond the allowed lateness.
            r.random_range(15 * SECOND_MS..25 * MINUTE_MS)
        } else {
            // Out of order within the watermark (a device clock a little ahead included).
            r.random_range(-2 * SECOND_MS..8 * SECOND_MS)
        };
        let id: u128 = r.random();
        let region = r.random_range(0..self.regions);
        Row {
            event_id: Some(uuid::Uuid::from_u128(id).to_string()),
            event_type: Some(if click { "click" } else { "impression" }.into()),
            ad_id: Some(format!("ad-{ad:06}")),
            campaign_id: Some(format!("campaign-{:05}", ad / 8)),
            advertiser_id: Some(format!("advertiser-{:04}", ad / 64)),
            user_id: Some(format!("user-{}", r.random_range(0..1_000_000u32))),
            store_id: Some(format!("store-{:06}", ad / 2)),
            event_time: Some(ingest - delay),
            region: Some(format!("region-{}", (b'a' + ((self.first_region + region) % 26) as u8) as char)),
            partition: r.random_range(0..self.partitions) as i32,
            offset: 0,
            ingest,
        }
    }

    /// Message number `index` of `hour`: an original, a retry of an earlier event, or junk.
    fn message(&self, hour: u32, index: u64, zipf: &Zipf<f64>) -> Row {
        let mut r = rng_for(self.seed, hour, index, 2);
        let u: f64 = r.random();
        let hour_start = self.start + i64::from(hour) * HOUR_MS;
        if u < self.duplicate_fraction {
            let from_hour = if hour > 0 && r.random_bool(0.2) { hour - 1 } else { hour };
            let j = r.random_range(0..self.per_hour(from_hour).max(1));
            let mut row = self.event(from_hour, j, zipf);
            let retry = row.ingest + r.random_range(SECOND_MS..5 * MINUTE_MS);
            row.ingest = retry.clamp(hour_start, hour_start + HOUR_MS - 1);
            row.partition = r.random_range(0..self.partitions) as i32;
            return row;
        }
        let mut row = self.event(hour, index, zipf);
        if u < self.duplicate_fraction + self.malformed_fraction {
            match r.random_range(0..7) {
                0 => row.ad_id = None,
                1 => row.event_type = Some("view".into()),
                2 => row.event_time = Some(row.ingest + 26 * HOUR_MS),
                3 => row.event_time = None,
                4 => row.event_id = Some(String::new()),
                5 => row.event_time = Some(row.ingest - 8 * 24 * HOUR_MS),
                _ => row.region = None,
            }
        }
        row
    }

    /// All messages of one ingest hour, in arrival order, with offsets.
    pub fn hour_rows(&self, hour: u32) -> Vec<Row> {
        let zipf = Zipf::new(f64::from(self.ads), self.zipf_exponent).expect("valid Zipf parameters");
        let mut rows: Vec<Row> = (0..self.per_hour(hour)).map(|i| self.message(hour, i, &zipf)).collect();
        rows.sort_by_key(|r| (r.ingest, r.partition));
        // Offsets grow per partition across hours: the hour in the high bits, arrival order below.
        let mut next = vec![0i64; self.partitions as usize];
        for row in &mut rows {
            let n = &mut next[row.partition as usize];
            row.offset = (i64::from(hour) << 32) | *n;
            *n += 1;
        }
        rows
    }

    /// Writes the archive of both topics; returns (files, rows).
    pub fn write(&self, location: &Location, rt: &Handle) -> anyhow::Result<(u64, u64)> {
        self.write_reporting(location, rt, &|_, _| {})
    }

    /// [`write`](Self::write), calling `hour_done(files, messages)` as each hour is written.
    pub fn write_reporting(&self, location: &Location, rt: &Handle, hour_done: &(dyn Fn(u64, u64) + Sync)) -> anyhow::Result<(u64, u64)> {
        anyhow::ensure!(
            self.hours > 0 && self.ads > 0 && self.regions > 0 && self.partitions > 0 && self.files_per_hour > 0 && self.order_partitions > 0,
            "hours, ads, regions, partitions and files per hour must be positive"
        );
        let results: Vec<(u64, u64)> = (0..self.hours)
            .into_par_iter()
            .map(|hour| -> anyhow::Result<(u64, u64)> {
                let rows = self.hour_rows(hour);
                let hour_start = self.start + i64::from(hour) * HOUR_MS;
                let orders = self.order_rows(hour);
                let mut files = 0;
                if !orders.is_empty() {
                    let all: Vec<&OrderRow> = orders.iter().collect();
                    let name = format!("part-000-seed{}.parquet", self.seed);
                    write_archive_file(location, rt, &self.orders_topic, hour_start, &name, &order_rows_to_batch(&all))?;
                    files += 1;
                }
                for f in 0..self.files_per_hour {
                    // A file holds some partitions, in arrival order per partition.
                    let part: Vec<&Row> = rows.iter().filter(|r| r.partition as u32 % self.files_per_hour == f).collect();
                    if part.is_empty() {
                        continue;
                    }
                    let batch = rows_to_batch(&part);
                    write_archive_file(location, rt, &self.topic, hour_start, &format!("part-{f:03}-seed{}.parquet", self.seed), &batch)?;
                    files += 1;
                }
                let messages = (rows.len() + orders.len()) as u64;
                hour_done(files, messages);
                Ok((files, messages))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(results.into_iter().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1)))
    }
}

fn dict(values: impl Iterator<Item = Option<String>>) -> ArrayRef {
    let mut b = StringDictionaryBuilder::<Int32Type>::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

/// Archive columns for rows of one hour.
pub fn rows_to_batch(rows: &[&Row]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.event_id.clone()))),
        dict(rows.iter().map(|r| r.event_type.clone())),
        dict(rows.iter().map(|r| r.ad_id.clone())),
        dict(rows.iter().map(|r| r.campaign_id.clone())),
        dict(rows.iter().map(|r| r.advertiser_id.clone())),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.user_id.clone()))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.store_id.clone()))),
        Arc::new(TimestampMillisecondArray::from_iter(rows.iter().map(|r| r.event_time)).with_timezone("UTC")),
        dict(rows.iter().map(|r| r.region.clone())),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.partition))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
        Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.ingest)).with_timezone("UTC")),
    ];
    RecordBatch::try_new(archive_schema(), columns).expect("columns match the archive schema")
}

impl Row {
    /// The message as a producer sends it: the contract's JSON object (absent values as null).
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "event_id": self.event_id,
            "event_type": self.event_type,
            "ad_id": self.ad_id,
            "campaign_id": self.campaign_id,
            "advertiser_id": self.advertiser_id,
            "user_id": self.user_id,
            "store_id": self.store_id,
            "event_time": self.event_time,
            "region": self.region,
        })
        .to_string()
    }
}
