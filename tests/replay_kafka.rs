//! Every recorded scenario under fixtures/ through the whole stream runtime against a real
//! Kafka-protocol broker (Nisshi on loopback): produced to a fresh topic, consumed
//! read_committed, processed in two key groups with checkpoints, written transactionally,
//! read back.

mod common;

use std::path::Path;

use adsproc::replay::scenario::{run_scenario, scenarios_under};
use common::kafka::Broker;

#[test]
fn every_fixture_matches_its_expected_output_through_kafka() {
    let broker = Broker::start("memory");
    let dirs = scenarios_under(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").as_path()).unwrap();
    assert!(dirs.len() >= 8, "fixtures are missing: {dirs:?}");
    let mut failures = Vec::new();
    let mut kafka_feeds = 0;
    for dir in dirs {
        let outcome = run_scenario(&dir, Some(&broker.addr)).unwrap();
        for (feed, diffs) in &outcome.feeds {
            kafka_feeds += usize::from(feed == "stream on Kafka");
            if !diffs.is_empty() {
                failures.push(format!("{} [{feed}]:\n  {}", outcome.name, diffs.join("\n  ")));
            }
        }
    }
    // Every scenario but the --complete restatement (a backfill-only mode) ran on Kafka.
    assert!(kafka_feeds >= 7, "only {kafka_feeds} scenarios ran through Kafka");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
