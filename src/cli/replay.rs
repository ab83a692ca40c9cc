use std::path::PathBuf;
use std::process::ExitCode;

use crate::replay::scenario::{run_scenario, scenarios_under};

/// Run recorded scenarios through the backfill runtime and the stream driver and diff them
/// against their expected output.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  adsproc replay fixtures/duplicates\n  adsproc replay fixtures          # every scenario below\n  adsproc replay fixtures --brokers 127.0.0.1:9092   # also through Kafka\n\nExit status: 0 when every feed of every scenario matches, 1 on a difference, 2 on an error.")]
pub struct Args {
    /// A scenario directory, or a directory of scenarios.
    path: PathBuf,
    /// Also run each scenario through the stream runtime against this Kafka broker
    /// (host:port), on fresh topics: producer, consumer, key groups, checkpoints, transactions.
    #[arg(long)]
    brokers: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let dirs = scenarios_under(&a.path)?;
    anyhow::ensure!(!dirs.is_empty(), "no scenario (directory with a scenario.toml) at {}", a.path.display());
    let mut failed = 0;
    for dir in &dirs {
        let outcome = run_scenario(dir, a.brokers.as_deref())?;
        for (feed, diffs) in &outcome.feeds {
            if diffs.is_empty() {
                println!("ok    {} [{feed}]", outcome.name);
            } else {
                failed += 1;
                println!("FAIL  {} [{feed}]: {}", outcome.name, outcome.description);
                for d in diffs {
                    println!("        {d}");
                }
            }
        }
    }
    println!("{} scenarios, {failed} failing feeds", dirs.len());
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
