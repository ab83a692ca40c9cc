//! Every recorded scenario under fixtures/ through the backfill runtime and the stream driver.

use std::path::Path;

use adsproc::replay::scenario::{run_scenario, scenarios_under};

#[test]
fn every_fixture_matches_its_expected_output_in_every_feed() {
    let dirs = scenarios_under(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").as_path()).unwrap();
    assert!(dirs.len() >= 8, "fixtures are missing: {dirs:?}");
    let mut failures = Vec::new();
    for dir in dirs {
        let outcome = run_scenario(&dir, None).unwrap();
        assert!(!outcome.feeds.is_empty());
        for (feed, diffs) in &outcome.feeds {
            if !diffs.is_empty() {
                failures.push(format!("{} [{feed}]:\n  {}", outcome.name, diffs.join("\n  ")));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_wrong_expectation_is_reported_as_a_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/duplicates");
    let dst = tmp.path().join("duplicates");
    std::fs::create_dir_all(dst.join("expected")).unwrap();
    for f in ["scenario.toml", "input.jsonl", "expected/dlq.jsonl"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let metrics = std::fs::read_to_string(src.join("expected/ad-metrics.jsonl")).unwrap();
    std::fs::write(dst.join("expected/ad-metrics.jsonl"), metrics.replace("\"impressions\":2", "\"impressions\":3")).unwrap();
    let outcome = run_scenario(&dst, None).unwrap();
    assert!(!outcome.passed());
    for (_, diffs) in &outcome.feeds {
        assert!(diffs.iter().any(|d| d.starts_with("- ad-metrics expected") && d.contains(r#""impressions":3"#)), "{diffs:?}");
        assert!(diffs.iter().any(|d| d.starts_with("+ ad-metrics actual") && d.contains(r#""impressions":2"#)), "{diffs:?}");
    }
}
