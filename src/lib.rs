//! adsproc: exactly-once ad event processing, live and in backfill, with one job
//! implementation for both modes.
//!
//! The module tree is the architecture; each layer uses only the layers above it here:
//!
//! 1. [`contract`] — the external formats (events, archive, outputs, dead letters, UUIDs).
//! 2. [`core`] — the jobs: pure functions of their input, no I/O, no async, no clocks.
//! 3. [`runtime`] — feeding the core: epochs, watermarks, parallelism, throttling, progress.
//!    Sources and sinks are traits here; the runtime knows no file format or broker.
//! 4. [`connector`] — object stores, the Parquet archive and the Parquet sinks.
//! 5. [`gen`] and [`cli`] — synthetic workloads and the command line that wires it all.

pub mod contract;
pub mod core;
pub mod runtime;
pub mod connector;
pub mod gen;
pub mod replay;
pub mod cli;
