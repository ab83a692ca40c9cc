//! The backfill's archive decoding alone: milliseconds to decode archive files into canonical
//! batches (`decode_parquet`, what a backfill does per file), on one thread, the files already
//! in memory, best of 5 passes.
//!
//!     cargo run --release --example archive_decode_bench -- target/bench-archive-10000000/ad-events/dt=2026-01-01/hr=0*/*.parquet
//!
//! Decoding is a quarter of the backfill's CPU, shared with everything else on two cores; this
//! isolates it, for comparing archive writer settings or reader changes.

use std::time::{Duration, Instant};

use adsproc::connector::archive::decode_parquet;
use bytes::Bytes;

fn main() -> anyhow::Result<()> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(!paths.is_empty(), "usage: archive_decode_bench FILE.parquet...");
    let files: Vec<Bytes> = paths.iter().map(|p| std::fs::read(p).map(Bytes::from)).collect::<Result<_, _>>()?;
    let bytes: usize = files.iter().map(Bytes::len).sum();
    let mut best = Duration::MAX;
    let mut rows = 0;
    for _ in 0..5 {
        let t = Instant::now();
        rows = 0;
        for f in &files {
            rows += decode_parquet(f.clone(), adsproc::contract::format::Format::AdEvents, None, "bench")?.batches.iter().map(|b| b.num_rows()).sum::<usize>();
        }
        best = best.min(t.elapsed());
    }
    println!(
        "{} files, {:.1} MiB, {rows} rows: best {:.1} ms ({:.0} ns per row)",
        files.len(),
        bytes as f64 / (1 << 20) as f64,
        best.as_secs_f64() * 1e3,
        best.as_nanos() as f64 / rows.max(1) as f64
    );
    Ok(())
}
