use std::path::PathBuf;
use std::process::ExitCode;

use crate::connector::archive::ParquetArchive;
use crate::connector::parquet_sink::HiveParquetSink;
use crate::connector::store::{is_s3, open, parse_key_value};
use crate::contract::time::{rfc3339, to_datetime};
use crate::runtime::backfill::{run as run_backfill, BackfillOptions, BackfillReport};
use crate::runtime::progress;

/// Recompute a time range from the Parquet archive (Kappa+ backfill).
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Recompute the job's output for the event-time windows in [--from, --to) from the Parquet \
archive of its input topic, with the same rules as the live job. Reads a warm-up before --from so that every \
dedupe decision matches the live job's, and a tail after --to for late arrivals. Writes Parquet in the Hive \
layout under --sink: ad-metrics/ partitioned by window hour and dlq/ by ingest hour. Every record_uuid equals \
the live job's for the same window, so the output upserts over it.",
    after_help = "Examples:\n  adsproc backfill --job aggregation --source ./archive --sink ./out \\\n      --from 2026-01-01T00:00:00Z --to 2026-01-02T00:00:00Z\n\n  # restatement after a bug fix: count every valid event, however late\n  adsproc backfill --job aggregation --source s3://ads-archive/raw --sink s3://ads-out/restated \\\n      --from 2026-01-01T00:00:00Z --to 2026-01-08T00:00:00Z --complete --max-rate 50000\n\nS3 settings come from AWS_* variables or --store-option (endpoint=..., allow_http=true, region=...).\nExit status: 0 on success, 2 on an error (bad arguments, unreadable input, failed writes)."
)]
pub struct Args {
    /// Job to run.
    #[arg(long, value_enum)]
    job: super::JobName,
    /// Archive root: the directory or s3:// prefix that holds `<topic>/dt=…/hr=…`.
    #[arg(long)]
    source: String,
    /// Output root; `ad-metrics/` and `dlq/` are written below it.
    #[arg(long)]
    sink: String,
    /// First window to recompute (RFC 3339, on a window boundary).
    #[arg(long, value_parser = super::parse_time)]
    from: i64,
    /// End of the range, exclusive (RFC 3339, on a window boundary).
    #[arg(long, value_parser = super::parse_time)]
    to: i64,
    /// Count every valid event however late it arrived, instead of the live job's lateness rule.
    #[arg(long)]
    complete: bool,
    /// Job definition file (default: the built-in jobs/aggregation.toml).
    #[arg(long)]
    job_file: Option<PathBuf>,
    /// Input topic name in the archive (default: the job file's input_topic).
    #[arg(long)]
    topic: Option<String>,
    /// Key groups processed in parallel (default: one per core).
    #[arg(long)]
    parallelism: Option<usize>,
    /// Throttle output to at most this many records per second.
    #[arg(long, value_parser = positive_rate)]
    max_rate: Option<f64>,
    /// Object store setting, key=value (repeatable), for s3:// locations.
    #[arg(long = "store-option", value_parser = parse_key_value)]
    store_options: Vec<(String, String)>,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    report_json: Option<PathBuf>,
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("'{s}' is not a positive number of records per second")),
    }
}

fn compact(ms: i64) -> String {
    to_datetime(ms).format("%Y%m%dT%H%MZ").to_string()
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let rules = super::load_rules(a.job_file.as_deref())?;
    if !a.store_options.is_empty() && !is_s3(&a.source) && !is_s3(&a.sink) {
        anyhow::bail!("--store-option applies to s3:// locations, and neither --source nor --sink is one");
    }
    let rt = super::tokio_runtime()?;
    let source_loc = open(&a.source, &a.store_options, false).map_err(|e| anyhow::anyhow!("--source: {e:#}"))?;
    let sink_loc = open(&a.sink, &a.store_options, true).map_err(|e| anyhow::anyhow!("--sink: {e:#}"))?;
    let topic = a.topic.clone().unwrap_or_else(|| rules.input_topic.clone());
    let source = ParquetArchive::new(source_loc, &topic, rt.handle().clone());
    let run_name = format!("backfill-{}-{}{}", compact(a.from), compact(a.to), if a.complete { "-complete" } else { "" });
    let mut sink = HiveParquetSink::new(sink_loc, rt.handle().clone(), run_name);
    let options = BackfillOptions {
        from: a.from,
        to: a.to,
        complete: a.complete,
        parallelism: a.parallelism.unwrap_or_else(rayon::current_num_threads).max(1),
        max_rate: a.max_rate,
    };
    let progress = progress::for_stderr(a.quiet);
    let report = run_backfill(&rules, &source, &mut sink, &options, progress.as_ref())?;
    print_report(&report, &topic, a.complete);
    if let Some(path) = &a.report_json {
        std::fs::write(path, report_json(&report).to_string())?;
    }
    Ok(if report.audit.balances() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print_report(r: &BackfillReport, topic: &str, complete: bool) {
    for w in &r.plan.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "backfill of {topic} windows [{}, {}){}",
        rfc3339(r.plan.from),
        rfc3339(r.plan.to),
        if complete { " with --complete" } else { "" }
    );
    println!(
        "  read ingest [{}, {}): {} hour partitions, {} files, {:.1} MiB",
        rfc3339(r.plan.read_from),
        rfc3339(r.plan.read_to),
        r.plan.hours.len(),
        r.files,
        r.bytes as f64 / (1 << 20) as f64
    );
    print!("  {}", r.audit);
    println!("  wrote {} ad-metrics records and {} dead letters: {}", r.metrics_written, r.dead_letters_written, r.sink);
    println!("  {:.2} s, {:.0} events/s", r.elapsed.as_secs_f64(), r.events_per_second());
}

fn report_json(r: &BackfillReport) -> serde_json::Value {
    serde_json::json!({
        "from": rfc3339(r.plan.from),
        "to": rfc3339(r.plan.to),
        "files": r.files,
        "bytes": r.bytes,
        "audit": r.audit,
        "metrics_written": r.metrics_written,
        "dead_letters_written": r.dead_letters_written,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "events_per_s": r.events_per_second(),
        "warnings": r.plan.warnings,
    })
}
