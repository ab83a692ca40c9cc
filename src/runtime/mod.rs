//! Layer 3: runtimes. They own what the core must not: which messages form an epoch, when
//! the ingest watermark advances, parallelism over key groups, throttling and progress.
//! Sources and sinks are traits here, implemented by [`crate::connector`].

pub mod backfill;
pub mod crash_point;
pub mod metrics;
pub mod progress;
pub mod stream;
pub mod throttle;
