//! adsproc: exactly-once ad event processing, live and in backfill, with one job
//! implementation for both modes.
//!
//! The module tree is the architecture; each layer uses only the layers above it here:
//!
//! 1. [`contract`] — the external formats (events, archive, outputs, dead letters, UUIDs).
//! 2. [`core`] — what every job shares: the `Job`/`Operator` seam, key groups, keyed-state
//!    tables, ad-event validation. Pure: no I/O, no async, no clocks.
//! 3. [`jobs`] — one module per job (aggregation, attribution), pure like the core.
//! 4. [`runtime`] — feeding any job: epochs, watermarks, parallelism, checkpoints, throttling,
//!    progress. Sources and sinks are traits here; the runtime knows no file format or broker.
//! 5. [`connector`] — object stores, the Parquet archive and sinks, Kafka.
//! 6. [`gen`], [`replay`] and [`cli`] — synthetic workloads, recorded scenarios and the
//!    command line that wires it all.

pub mod contract;
pub mod core;
pub mod jobs;
pub mod runtime;
pub mod connector;
pub mod gen;
pub mod replay;
pub mod cli;
