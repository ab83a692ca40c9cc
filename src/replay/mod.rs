//! Replay fixtures: recorded scenarios run through each runtime's feeding of the job core.
//!
//! A scenario directory holds `scenario.toml` (range and settings), `input.jsonl` (Kafka
//! messages: partition, offset, timestamp and value) and `expected/` (the final value of every
//! ad-metrics record in the range, and the dead letters). The backfill runtime reads the
//! messages as the archiver would have stored them; the stream driver gets them as polls, in
//! two different partition interleavings; with a broker, the messages also go through Kafka and
//! the whole stream runtime ([`kafka_feed`]). Every run must match the expected output exactly.

pub mod kafka_feed;
pub mod memory;
pub mod scenario;

pub use scenario::{run_scenario, Outcome, Scenario};
