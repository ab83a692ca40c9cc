//! The stream decoder alone: nanoseconds per message to decode generated ad events (the shape
//! `adsproc produce` sends) into canonical batches, on one thread, best of 15 passes.
//!
//!     cargo run --release --example decode_bench
//!
//! The stream bench (`scripts/bench-stream.sh`) measures the whole job on a shared broker, where
//! a change of a few percent in one part is lost in the noise; this isolates the part that is a
//! quarter of the job's CPU.

use std::time::Instant;

use adsproc::contract::raw::MessageDecoder;
use adsproc::gen::GenSpec;

fn main() {
    let spec = GenSpec {
        events: 200_000,
        start: 1_767_225_600_000,
        hours: 1,
        ads: 10_000,
        zipf_exponent: 1.1,
        regions: 2,
        first_region: 0,
        partitions: 8,
        files_per_hour: 1,
        click_fraction: 0.05,
        duplicate_fraction: 0.025,
        late_fraction: 0.015,
        malformed_fraction: 0.01,
        seed: 3,
        topic: "ad-events".into(),
        orders: 0,
        order_hours: 0,
        order_partitions: 1,
        orders_topic: "orders".into(),
    };
    let payloads: Vec<Vec<u8>> = spec.hour_rows(0).iter().map(|r| r.to_json().into_bytes()).collect();
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let mut best = f64::MAX;
    for _ in 0..15 {
        let started = Instant::now();
        let mut rows = 0;
        // Half of a 20 000-message poll per slice, as the stream reader decodes on two cores.
        for slice in payloads.chunks(10_000) {
            let mut d = MessageDecoder::with_capacity_for(slice.len(), slice.iter().map(Vec::len).sum());
            for (i, p) in slice.iter().enumerate() {
                d.append(1, i as i64, 0, p);
            }
            rows += d.finish().num_rows();
        }
        best = best.min(started.elapsed().as_nanos() as f64 / rows as f64);
    }
    println!("{} messages of {} bytes on average: {best:.0} ns per message (best of 15)", payloads.len(), bytes / payloads.len());
}
