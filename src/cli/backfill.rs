use std::path::PathBuf;
use std::process::ExitCode;

use crate::connector::archive::ParquetArchive;
use crate::connector::kafka::table_sink::KafkaTableSink;
use crate::connector::kafka::KafkaSettings;
use crate::connector::hive_overwrite::RunInfo;
use crate::connector::parquet_sink::HiveParquetSink;
use crate::connector::store::{is_s3, open, parse_key_value};
use crate::contract::time::{rfc3339, to_datetime};
use crate::core::job::{Job, JobAudit, OutputRecord};
use crate::jobs::JobVisitor;
use crate::runtime::backfill::{run as run_backfill, ArchiveSource, BackfillOptions, BackfillReport, Interrupted, OutputSink};
use crate::runtime::progress;

/// Recompute a time range from the Parquet archive (Kappa+ backfill).
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Recompute a job's output for [--from, --to) from the Parquet archives of its input topics, with \
the same rules as the live job. Reads what the rules need around the range (a warm-up before --from so that every \
dedupe decision matches the live job's, a tail after --to for late arrivals and later status updates). Writes \
Parquet in the Hive layout under --sink: the job's tables (ad-metrics/ by window hour, attributed-orders/ by \
order_time hour) and dlq/ by ingest hour. Every record_uuid equals the live job's for the same record, so the \
output upserts over it.\n\nOver a sink that holds output already, the run replaces every partition hour its range \
touches (Hive's INSERT OVERWRITE; an hour covered in part keeps its rows outside the range), each partition as one \
atomic write of one file, on a local directory and on S3: however the run ends, each partition is entirely the old \
output or entirely the new. _adsproc/runs/<run>.json says which run wrote what. SIGINT/SIGTERM stop it between \
hours (exit 130).\n\nThe aggregation job recomputes the windows that start in the range (--from and --to on \
window boundaries); the attribution job the orders whose first arrival's order_time is in it, reading the orders \
archive first and then only the ad events of those orders' users and stores.",
    after_help = "Examples:\n  adsproc backfill --job aggregation --source ./archive --sink ./out \\\n      --from 2026-01-01T00:00:00Z --to 2026-01-02T00:00:00Z\n\n  # restatement after a bug fix: count every valid event, however late\n  adsproc backfill --job aggregation --source s3://ads-archive/raw --sink s3://ads-out/restated \\\n      --from 2026-01-01T00:00:00Z --to 2026-01-08T00:00:00Z --complete --max-rate 50000\n\n  # the orders of a day, joined to the ad events that led to them\n  adsproc backfill --job attribution --source ./archive --sink ./out \\\n      --from 2026-01-07T00:00:00Z --to 2026-01-08T00:00:00Z\n\nS3 settings come from AWS_* variables or --store-option (endpoint=..., allow_http=true, region=...).\nExit status: 0 on success, 1 when the audit does not balance, 2 on an error (bad arguments, unreadable input,\nfailed writes)."
)]
pub struct Args {
    /// Job to run.
    #[arg(long, value_parser = super::job_names())]
    job: String,
    /// Archive root: the directory or s3:// prefix that holds `<topic>/dt=…/hr=…` for each of
    /// the job's input topics. The union job: repeatable, one per region, each the root of that
    /// region's output tables (a backfill's --sink).
    #[arg(long, required = true)]
    source: Vec<String>,
    /// Output root; the job's tables and `dlq/` are written below it. Or `kafka://HOST:PORT[,…]`:
    /// the job's output topics (and `<topic>-dlq`), in transactions, each record in the
    /// partition the live job writes it to, so that it replaces the live value downstream.
    #[arg(long)]
    sink: String,
    /// Start of the range (RFC 3339; for the aggregation job on a window boundary).
    #[arg(long, value_parser = super::parse_time)]
    from: i64,
    /// End of the range, exclusive (RFC 3339; for the aggregation job on a window boundary).
    #[arg(long, value_parser = super::parse_time)]
    to: i64,
    /// Aggregation only: count every valid event however late it arrived, instead of the live
    /// job's lateness rule (a restatement).
    #[arg(long)]
    complete: bool,
    /// Job definition file (default: the built-in jobs/<job>.toml).
    #[arg(long)]
    job_file: Option<PathBuf>,
    /// Input topic name in the archive, for a job with one input (default: the job file's).
    #[arg(long)]
    topic: Option<String>,
    /// Key groups processed in parallel (default: one per core).
    #[arg(long)]
    parallelism: Option<usize>,
    /// Throttle output to at most this many records per second.
    #[arg(long, value_parser = positive_rate)]
    max_rate: Option<f64>,
    /// With a kafka:// sink: partitions of output topics that do not exist yet (the stream
    /// job's --key-groups, which creates them with one partition per key group).
    #[arg(long, default_value_t = 8)]
    key_groups: u32,
    /// With a kafka:// sink: librdkafka property, key=value (repeatable), as in kcat.
    #[arg(short = 'X', value_parser = parse_key_value)]
    kafka_options: Vec<(String, String)>,
    /// Object store setting, key=value (repeatable), for s3:// locations.
    #[arg(long = "store-option", value_parser = parse_key_value)]
    store_options: Vec<(String, String)>,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    /// Also write the report as JSON to this file (checked before any work).
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// Make an hour missing inside an archive (between its first and last hour) an error
    /// instead of a warning: its messages would go uncounted.
    #[arg(long)]
    fail_on_gap: bool,
    /// Serve Prometheus metrics on this address (host:port) at /metrics, with /healthz and
    /// /readyz, while the backfill runs: messages read and records written so far.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
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

/// Who writes a Parquet sink: stamped on each partition file and in the run's manifest.
fn run_info(job: &str, prefix: &str, a: &Args, job_file_text: &str) -> RunInfo {
    use sha2::Digest;
    let started = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let mode = if a.complete { "complete" } else { "default" };
    RunInfo {
        id: format!("{prefix}-{}-{}{}-{started}", compact(a.from), compact(a.to), if a.complete { "-complete" } else { "" }),
        job: job.to_string(),
        mode: mode.to_string(),
        from: a.from,
        to: a.to,
        job_file_sha256: format!("{:x}", sha2::Sha256::digest(job_file_text.as_bytes())),
        file_prefix: prefix.to_string(),
    }
}

/// After a run that did not finish: the sink's manifest says why; an interrupted run exits
/// 130 with what it leaves behind, any other failure is the error.
fn ended_early(sink: &mut dyn OutputSink, e: anyhow::Error) -> anyhow::Result<ExitCode> {
    if let Some(i) = e.downcast_ref::<Interrupted>() {
        sink.abandon("interrupted", &i.to_string());
        eprintln!(
            "adsproc backfill: {i}. Every output partition is either as it was or completely this run's (none is half \
written); run the same backfill again to finish the range."
        );
        return Ok(ExitCode::from(130));
    }
    sink.abandon("failed", &format!("{e:#}"));
    Err(e)
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if a.job == crate::jobs::union::Union::NAME {
        // The union reads the regions' output tables, not the topics' archives.
        return run_union(a);
    }
    anyhow::ensure!(
        a.source.len() == 1,
        "--source is given {} times: the {} job reads one archive root (several are for the union job's regions)",
        a.source.len(),
        a.job
    );
    super::with_job(&a.job.clone(), Backfill(a))
}

/// `backfill --job union`: the regions' output tables (each --source a region's backfill
/// output) merged into the union's tables under --sink, one record per record_uuid in the
/// range: the newest file's where two disagree.
fn run_union(a: Args) -> anyhow::Result<ExitCode> {
    use crate::contract::attributed_orders::{self, AttributedOrder};
    use crate::contract::outputs::{ad_metrics_batch, AdMetric};
    use crate::contract::table::TableKind;
    use crate::jobs::union::Union;

    anyhow::ensure!(!a.complete, "--complete applies to the aggregation job's lateness rule; the union job has none");
    anyhow::ensure!(
        a.topic.is_none() && a.max_rate.is_none() && a.metrics_addr.is_none(),
        "--topic, --max-rate and --metrics-addr do not apply to the union job's backfill"
    );
    anyhow::ensure!(!a.sink.starts_with("kafka://"), "the union job's backfill writes Parquet tables; its topics are written by the union stream job");
    anyhow::ensure!(a.from < a.to, "--from must be before --to");
    let (rules, job_file_text) = super::load_rules_and_text::<Union>(a.job_file.as_deref())?;
    let report = super::create_output(a.report_json.as_deref(), "--report-json")?;
    anyhow::ensure!(report.is_none(), "--report-json is not written by the union job's backfill");
    let rt = super::tokio_runtime()?;
    let sources = a
        .source
        .iter()
        .map(|s| open(s, &a.store_options, false).map_err(|e| anyhow::anyhow!("--source {s}: {e:#}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sink_loc = open(&a.sink, &a.store_options, true).map_err(|e| anyhow::anyhow!("--sink: {e:#}"))?;
    let started = std::time::Instant::now();
    let mut sink = HiveParquetSink::new(sink_loc, rt.handle().clone(), run_info(Union::NAME, Union::FILE_PREFIX, &a, &job_file_text), Union::outputs(&rules), Vec::new())
        .map_err(|e| anyhow::anyhow!("--sink: {e:#}"))?;
    println!("backfill of the union job, [{}, {}) from {} regions' tables", rfc3339(a.from), rfc3339(a.to), sources.len());
    let mut written = 0;
    for (t, table) in rules.tables.iter().enumerate() {
        let batch = match table.kind {
            TableKind::AdMetrics => merged_table::<AdMetric>(
                &sources,
                rt.handle(),
                &table.source,
                &a,
                |x, y| (x.window_start, &x.region, &x.ad_id).cmp(&(y.window_start, &y.region, &y.ad_id)),
                ad_metrics_batch,
            )?,
            TableKind::AttributedOrders => merged_table::<AttributedOrder>(
                &sources,
                rt.handle(),
                &table.source,
                &a,
                |x, y| (x.order_time, &x.order_id).cmp(&(y.order_time, &y.order_id)),
                attributed_orders::to_batch,
            )?,
        };
        println!("  wrote {} {} records", batch.num_rows(), table.target);
        written += batch.num_rows();
        if batch.num_rows() > 0 {
            sink.write(t, batch)?;
        }
    }
    let sink_said = sink.finish()?;
    println!("  {written} records in {:.2} s: {sink_said}", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// One table of every region's root, merged (newest file per record_uuid), in the table's
/// order (`order`: how the table's Parquet files are sorted), as one batch.
fn merged_table<R: OutputRecord>(
    sources: &[crate::connector::store::Location],
    rt: &tokio::runtime::Handle,
    table: &str,
    a: &Args,
    order: fn(&R, &R) -> std::cmp::Ordering,
    to_batch: fn(&[R]) -> arrow::array::RecordBatch,
) -> anyhow::Result<arrow::array::RecordBatch> {
    let mut rows = Vec::new();
    let mut files = 0;
    for s in sources {
        let (r, f) = crate::connector::output_tables::read_table::<R>(s, rt, table, a.from, a.to)?;
        rows.extend(r.into_iter().map(|r| (r.written, r.file, r.record)));
        files += f;
    }
    let mut merged = crate::jobs::union::merge::newest_per_uuid(rows);
    merged.records.sort_by(order);
    println!("  {table}: {} rows in {files} files, {} replicas, {} conflicts (newest file kept)", merged.read, merged.replicas, merged.conflicts);
    Ok(to_batch(&merged.records))
}

struct Backfill(Args);

impl JobVisitor for Backfill {
    type Output = anyhow::Result<ExitCode>;
    fn visit<J: Job>(self) -> Self::Output {
        run_job::<J>(self.0)
    }
}

fn run_job<J: Job>(a: Args) -> anyhow::Result<ExitCode> {
    // First, so that a signal during the set-up (opening an S3 sink takes a while) stops the
    // run at its first check instead of killing it.
    let stop = super::stop_on_signals()?;
    let (mut rules, job_file_text) = super::load_rules_and_text::<J>(a.job_file.as_deref())?;
    let inputs = J::inputs(&rules);
    if let Some(topic) = &a.topic {
        anyhow::ensure!(
            inputs.len() == 1,
            "--topic names the input topic of a job with one input; the {} job reads {}: their names are in its job file",
            J::NAME,
            inputs.iter().map(|i| i.topic.as_str()).collect::<Vec<_>>().join(" and ")
        );
        J::set_topic(&mut rules, 0, topic);
    }
    anyhow::ensure!(!a.complete || J::COMPLETE_MODE, "--complete applies to the aggregation job's lateness rule; the {} job has none", J::NAME);
    let kafka_sink = a.sink.strip_prefix("kafka://").map(str::to_string);
    anyhow::ensure!(kafka_sink.as_deref() != Some(""), "--sink kafka:// needs the brokers, e.g. kafka://127.0.0.1:9092");
    anyhow::ensure!(a.kafka_options.is_empty() || kafka_sink.is_some(), "-X sets Kafka client properties, for a kafka:// sink; --sink {} is not one", a.sink);
    anyhow::ensure!(a.key_groups > 0, "--key-groups must be at least 1");
    if !a.store_options.is_empty() && !is_s3(&a.source[0]) && !is_s3(&a.sink) {
        anyhow::bail!("--store-option applies to s3:// locations, and neither --source nor --sink is one");
    }
    let rt = super::tokio_runtime()?;
    let source_loc = open(&a.source[0], &a.store_options, false).map_err(|e| anyhow::anyhow!("--source: {e:#}"))?;
    let archives: Vec<ParquetArchive> =
        J::inputs(&rules).iter().map(|i| ParquetArchive::new(source_loc.clone(), &i.topic, i.format, rt.handle().clone())).collect();
    let sources: Vec<&dyn ArchiveSource> = archives.iter().map(|a| a as &dyn ArchiveSource).collect();
    let report_out = super::create_output(a.report_json.as_deref(), "--report-json")?;
    // After --topic: the topics as this run names them.
    let dead_letters: Vec<String> = J::inputs(&rules).iter().filter(|i| i.dead_letters).map(|i| i.topic.clone()).collect();
    let run_name = format!("{}-{}-{}{}", J::FILE_PREFIX, compact(a.from), compact(a.to), if a.complete { "-complete" } else { "" });
    let mut sink: Box<dyn OutputSink> = match &kafka_sink {
        Some(brokers) => {
            let settings = KafkaSettings::new(brokers, &a.kafka_options);
            // One id per job and range: a re-run of the range fences a stuck earlier run.
            let id = format!("adsproc-{run_name}");
            Box::new(KafkaTableSink::<J::Record>::new(&settings, &id, &J::outputs(&rules), &dead_letters, a.key_groups).map_err(|e| anyhow::anyhow!("--sink: {e:#}"))?)
        }
        None => {
            let sink_loc = open(&a.sink, &a.store_options, true).map_err(|e| anyhow::anyhow!("--sink: {e:#}"))?;
            let run = run_info(J::NAME, J::FILE_PREFIX, &a, &job_file_text);
            Box::new(HiveParquetSink::new(sink_loc, rt.handle().clone(), run, J::outputs(&rules), dead_letters).map_err(|e| anyhow::anyhow!("--sink: {e:#}"))?)
        }
    };
    let options = BackfillOptions {
        from: a.from,
        to: a.to,
        complete: a.complete,
        parallelism: a.parallelism.unwrap_or_else(rayon::current_num_threads).max(1),
        max_rate: a.max_rate,
        fail_on_gap: a.fail_on_gap,
        stop: Some(stop),
    };
    let mut progress = progress::for_stderr(a.quiet);
    if let Some(metrics) = super::serve_metrics("backfill", a.metrics_addr.as_deref())? {
        progress = Box::new(progress::WithMetrics::new(progress, metrics));
    }
    let report = match run_backfill::<J>(&rules, &sources, sink.as_mut(), &options, progress.as_ref()) {
        Ok(report) => report,
        Err(e) => {
            progress.end();
            return ended_early(sink.as_mut(), e);
        }
    };
    let tables: Vec<String> = J::outputs(&rules).into_iter().map(|t| t.name).collect();
    print_report::<J>(&report, &tables, a.complete);
    if let (Some(mut file), Some(path)) = (report_out, &a.report_json) {
        use std::io::Write;
        file.write_all(report_json::<J>(&report, &tables).to_string().as_bytes()).map_err(|e| anyhow::anyhow!("--report-json {}: {e}", path.display()))?;
    }
    Ok(if report.audit.balances() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print_report<J: Job>(r: &BackfillReport<J::Audit>, tables: &[String], complete: bool) {
    for w in &r.plan.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "backfill of the {} job, [{}, {}){}",
        J::NAME,
        rfc3339(r.plan.from),
        rfc3339(r.plan.to),
        if complete { " with --complete" } else { "" }
    );
    for input in &r.plan.inputs {
        let files = input.hours.iter().map(|h| h.files.len()).sum::<usize>();
        let bytes: u64 = input.hours.iter().flat_map(|h| &h.files).map(|f| f.size).sum();
        println!(
            "  read {} ingest [{}, {}): {} hour partitions, {files} files, {:.1} MiB",
            input.topic,
            rfc3339(input.read_from),
            rfc3339(input.read_to),
            input.hours.len(),
            bytes as f64 / (1 << 20) as f64
        );
    }
    for f in &r.filtered {
        println!("  decoded {} of the {} rows of {} read: {}", f.decoded, f.in_files, r.plan.inputs[f.input].topic, f.describe);
    }
    print!("  {}", r.audit);
    let written: Vec<String> = tables.iter().zip(&r.records_written).map(|(t, n)| format!("{n} {t} records")).collect();
    println!("  wrote {} and {} dead letters: {}", written.join(", "), r.dead_letters_written, r.sink);
    println!("  {:.2} s, {:.0} messages/s", r.elapsed.as_secs_f64(), r.events_per_second());
}

fn report_json<J: Job>(r: &BackfillReport<J::Audit>, tables: &[String]) -> serde_json::Value {
    serde_json::json!({
        "job": J::NAME,
        "from": rfc3339(r.plan.from),
        "to": rfc3339(r.plan.to),
        "inputs": r.plan.inputs.iter().enumerate().map(|(n, i)| {
            let filtered = r.filtered.iter().find(|f| f.input == n);
            serde_json::json!({
                "topic": i.topic,
                "read_from": rfc3339(i.read_from),
                "read_to": rfc3339(i.read_to),
                "hours": i.hours.len(),
                "files": i.hours.iter().map(|h| h.files.len()).sum::<usize>(),
                "rows_in_files": filtered.map(|f| f.in_files),
                "rows_decoded": filtered.map(|f| f.decoded),
                "filter": filtered.map(|f| f.describe.clone()),
            })
        }).collect::<Vec<_>>(),
        "files": r.files,
        "bytes": r.bytes,
        "audit": r.audit,
        "records_written": tables.iter().zip(&r.records_written).map(|(t, n)| (t.clone(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
        "dead_letters_written": r.dead_letters_written,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "messages_per_s": r.events_per_second(),
        "warnings": r.plan.warnings,
    })
}
