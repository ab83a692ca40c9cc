//! Layer 5: the command line. Parses arguments, wires connectors to runtimes, prints results.

mod archive;
mod backfill;
mod diff;
mod diff_html;
mod gen;
mod help_files;
mod load;
mod produce;
mod replay;
mod stream;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::contract::time::parse_rfc3339;
use crate::core::job::Job;

#[derive(Parser, Debug)]
#[command(
    name = "adsproc",
    version,
    about = "Exactly-once ad event processing: the same jobs live from Kafka and in backfill from Parquet archives",
    long_about = "adsproc runs the jobs of an ads pipeline with exactly-once results: `aggregation` counts ad \
impressions and clicks per region, ad and one-minute event-time window (validation, dedupe by event_id, a \
dead-letter output); `attribution` joins orders to the ad clicks and impressions that led to them. One \
implementation of each job runs in two modes: `stream` (from Kafka) and `backfill` (from the Parquet archives of \
the same topics). Both give every output record a deterministic record_uuid, so a backfill upserts cleanly over \
what the live job wrote.",
    after_help = "Start here:\n  adsproc demo                       generate a day of events and backfill it\n  adsproc backfill --help            restate or recompute a time range\n  adsproc replay fixtures/duplicates run a recorded scenario through both runtimes"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (as RUST_LOG): error, warn, info, debug.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    /// Log lines as text for people, or as JSON objects (one per line) for a log pipeline.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    Backfill(backfill::Args),
    Gen(gen::Args),
    Replay(replay::Args),
    Stream(stream::Args),
    Produce(produce::Args),
    Archive(archive::Args),
    Load(load::Args),
    Demo(gen::DemoArgs),
    Diff(diff::Args),
    Completions(help_files::CompletionsArgs),
    Man(help_files::ManArgs),
}

/// `--job`: one of the registered jobs (`crate::jobs`).
pub fn job_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(crate::jobs::ABOUT.iter().map(|(name, about)| clap::builder::PossibleValue::new(*name).help(*about)))
}

/// The job's rules: from `job_file`, or the job file compiled in (`jobs/<name>.toml`).
pub fn load_rules<J: Job>(job_file: Option<&std::path::Path>) -> anyhow::Result<J::Rules> {
    Ok(load_rules_and_text::<J>(job_file)?.0)
}

/// The rules and the text they were read from (a backfill stamps its output with its digest).
pub fn load_rules_and_text<J: Job>(job_file: Option<&std::path::Path>) -> anyhow::Result<(J::Rules, String)> {
    let text = match job_file {
        Some(p) => std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("cannot read job file {}: {e}", p.display()))?,
        None => J::DEFAULT_JOB_FILE.to_string(),
    };
    let rules = J::parse_rules(&text).map_err(|e| match job_file {
        Some(p) => anyhow::anyhow!("{}: {e}", p.display()),
        None => anyhow::Error::from(e),
    })?;
    Ok((rules, text))
}

/// Calls `visitor` with the job `name` names (checked by clap against [`job_names`]).
pub fn with_job<V: crate::jobs::JobVisitor<Output = anyhow::Result<ExitCode>>>(name: &str, visitor: V) -> anyhow::Result<ExitCode> {
    crate::jobs::with_job(name, visitor).unwrap_or_else(|| anyhow::bail!("no job is named {name:?}"))
}

/// `--kind`: a table kind by its contract name.
fn parse_kind(s: &str) -> Result<crate::contract::table::TableKind, String> {
    use crate::contract::table::TableKind;
    TableKind::parse(s).ok_or_else(|| {
        let names: Vec<&str> = TableKind::ALL.iter().map(|k| k.name()).collect();
        format!("'{s}' is not a table kind; possible values: {}", names.join(", "))
    })
}

/// The table kind a topic or table name says: `ad-metrics…` or `attributed-orders…`.
fn kind_of(name: &str) -> Option<crate::contract::table::TableKind> {
    crate::contract::table::TableKind::ALL.into_iter().find(|k| name.starts_with(k.name()))
}

/// Opens a file a command writes at its end, now, before any work: a path that cannot be
/// written fails at once, named with its flag, rather than after the work.
fn create_output(path: Option<&std::path::Path>, flag: &str) -> anyhow::Result<Option<std::fs::File>> {
    path.map(|p| std::fs::File::create(p).map_err(|e| anyhow::anyhow!("{flag} {}: cannot write it: {e}", p.display()))).transpose()
}

/// A flag SIGINT and SIGTERM set: the long-running commands check it and stop cleanly.
fn stop_on_signals() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use anyhow::Context;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("cannot install signal handlers")?;
    }
    Ok(stop)
}

/// `--metrics-addr`: the metrics of `command`, served on `addr` (bound before any work).
fn serve_metrics(command: &str, addr: Option<&str>) -> anyhow::Result<Option<std::sync::Arc<crate::runtime::metrics::Metrics>>> {
    let Some(addr) = addr else { return Ok(None) };
    let metrics = std::sync::Arc::new(crate::runtime::metrics::Metrics::new(command));
    crate::connector::metrics_http::serve(addr, metrics.clone())?;
    Ok(Some(metrics))
}

pub fn parse_time(s: &str) -> Result<i64, String> {
    parse_rfc3339(s)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(crate::runtime::progress::LogWriter::make).with_target(false);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
    let result = match cli.command {
        Command::Backfill(a) => backfill::run(a),
        Command::Gen(a) => gen::run(a),
        Command::Replay(a) => replay::run(a),
        Command::Stream(a) => stream::run(a),
        Command::Produce(a) => produce::run(a),
        Command::Archive(a) => archive::run(a),
        Command::Load(a) => load::run(a),
        Command::Demo(a) => gen::demo(a),
        Command::Diff(a) => diff::run(a),
        Command::Completions(a) => help_files::completions(a, Cli::command()),
        Command::Man(a) => help_files::man(a, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", condensed(&e));
            ExitCode::from(2)
        }
    }
}

/// The error chain without the repetitions of nested errors that quote their source.
fn condensed(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if parts.last().is_some_and(|p| p.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

pub use crate::connector::store::tokio_runtime;

/// The whole command-line interface, for tests and for generated help files.
pub fn command() -> clap::Command {
    Cli::command()
}
