use std::path::PathBuf;
use std::process::ExitCode;

use crate::connector::store::{is_s3, open, parse_key_value};
use crate::contract::time::{rfc3339, DAY_MS, HOUR_MS};
use crate::gen::GenSpec;

/// Write a deterministic synthetic archive of the ad-events and orders topics.
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Write a deterministic synthetic archive of the ad-events and orders topics, as the contract's \
archiver would have written it (Parquet, Hive layout by ingest hour). Ad events have Zipf-skewed ads, client-retry \
duplicates, late arrivals and malformed rows. Orders follow ad events of the archive (the same user, at the store \
the ad promotes, minutes to days later) or none, and come with status updates, client retries and malformed rows. \
Every message is a function of --seed: the same knobs write the same archive.",
    after_help = "Examples:\n  adsproc gen --out ./archive --events 1000000 --hours 24\n  adsproc gen --out ./archive --events 10000000 --hours 168 --orders 200000 --order-hours 24\n  adsproc gen --out s3://bucket/archive --events 10000000 --duplicate-fraction 0.05 --seed 7"
)]
pub struct Args {
    /// Archive root (directory or s3:// prefix); files go to `<out>/<topic>/dt=…/hr=…/`.
    #[arg(long)]
    out: String,
    #[command(flatten)]
    knobs: Knobs,
    /// Object store setting, key=value (repeatable), for s3:// locations.
    #[arg(long = "store-option", value_parser = parse_key_value)]
    store_options: Vec<(String, String)>,
    /// Delete what --out holds of the two topics first. Without it, gen refuses an --out that
    /// holds files of them: a second archive written over the first would merge with it, two
    /// messages at each offset.
    #[arg(long)]
    replace: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Knobs {
    /// Number of archived messages (duplicates and malformed ones included).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// First ingest hour (RFC 3339, rounded down to the hour).
    #[arg(long, default_value = "2026-01-01T00:00:00Z", value_parser = super::parse_time)]
    start: i64,
    /// Number of ingest hours.
    #[arg(long, default_value_t = 24)]
    hours: u32,
    /// Distinct ads; traffic over them is Zipf-skewed.
    #[arg(long, default_value_t = 10_000)]
    ads: u32,
    /// Zipf exponent of ad popularity.
    #[arg(long, default_value_t = 1.1)]
    zipf_exponent: f64,
    /// Regions the events are spread over (region-a, region-b, …).
    #[arg(long, default_value_t = 2)]
    regions: u32,
    /// Letter of the first region, counted from a: `--regions 1 --first-region 1` is one
    /// region's own traffic, all region-b (for a second region's cluster).
    #[arg(long, default_value_t = 0)]
    first_region: u32,
    /// Kafka partitions of the topic.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Parquet files per ingest hour (each holds a subset of partitions).
    #[arg(long, default_value_t = 4)]
    files_per_hour: u32,
    /// Fraction of ad events that are clicks (the others are impressions).
    #[arg(long, default_value_t = 0.1)]
    click_fraction: f64,
    /// Fraction of messages that are client retries of an earlier event.
    #[arg(long, default_value_t = 0.03)]
    duplicate_fraction: f64,
    /// Fraction of events that arrive late (15 s to 25 min after their event time).
    #[arg(long, default_value_t = 0.02)]
    late_fraction: f64,
    /// Fraction of messages (of both topics) with a missing, wrong or out-of-range field.
    #[arg(long, default_value_t = 0.01)]
    malformed_fraction: f64,
    /// Seed of every random choice: the same seed and knobs give the same messages.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Name of the ad-events topic (its archive's directory).
    #[arg(long, default_value = "ad-events")]
    topic: String,
    /// Order messages (placed orders, status updates, client retries, malformed ones).
    /// Default: one per 50 ad-event messages.
    #[arg(long)]
    orders: Option<u64>,
    /// Orders are placed over the last this many ingest hours (default: all of --hours).
    #[arg(long)]
    order_hours: Option<u32>,
    /// Kafka partitions of the orders topic.
    #[arg(long, default_value_t = 4)]
    order_partitions: u32,
    /// Name of the orders topic (its archive's directory).
    #[arg(long, default_value = "orders")]
    orders_topic: String,
}

impl Knobs {
    pub(crate) fn spec(&self) -> anyhow::Result<GenSpec> {
        for (name, v) in [
            ("--click-fraction", self.click_fraction),
            ("--duplicate-fraction", self.duplicate_fraction),
            ("--late-fraction", self.late_fraction),
            ("--malformed-fraction", self.malformed_fraction),
        ] {
            anyhow::ensure!((0.0..=1.0).contains(&v), "{name} must be between 0 and 1, not {v}");
        }
        anyhow::ensure!(self.duplicate_fraction + self.malformed_fraction <= 1.0, "--duplicate-fraction plus --malformed-fraction exceed 1");
        anyhow::ensure!(self.zipf_exponent > 0.0, "--zipf-exponent must be positive");
        anyhow::ensure!(self.order_hours != Some(0), "--order-hours must be at least 1");
        anyhow::ensure!(self.topic != self.orders_topic, "--topic and --orders-topic must differ");
        Ok(GenSpec {
            events: self.events,
            start: crate::contract::time::floor_to(self.start, HOUR_MS),
            hours: self.hours,
            ads: self.ads,
            zipf_exponent: self.zipf_exponent,
            regions: self.regions,
            first_region: self.first_region,
            partitions: self.partitions,
            files_per_hour: self.files_per_hour,
            click_fraction: self.click_fraction,
            duplicate_fraction: self.duplicate_fraction,
            late_fraction: self.late_fraction,
            malformed_fraction: self.malformed_fraction,
            seed: self.seed,
            topic: self.topic.clone(),
            orders: self.orders.unwrap_or(self.events / 50),
            order_hours: self.order_hours.unwrap_or(self.hours).min(self.hours),
            order_partitions: self.order_partitions,
            orders_topic: self.orders_topic.clone(),
        })
    }
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let spec = a.knobs.spec()?;
    if !a.store_options.is_empty() && !is_s3(&a.out) {
        anyhow::bail!("--store-option applies to s3:// locations, and --out is not one");
    }
    let rt = super::tokio_runtime()?;
    let loc = open(&a.out, &a.store_options, true).map_err(|e| anyhow::anyhow!("--out: {e:#}"))?;
    clear_topics(&loc, rt.handle(), &[&spec.topic, &spec.orders_topic], a.replace, &a.out)?;
    let started = std::time::Instant::now();
    tracing::info!("generating {} hours of {} and {} into {}", spec.hours, spec.topic, spec.orders_topic, a.out);
    let progress = HourProgress::new(u64::from(spec.hours));
    let written = spec.write_reporting(&loc, rt.handle(), &|files, messages| progress.hour_done(files, messages));
    progress.end();
    let (files, rows) = written?;
    println!(
        "wrote {rows} messages in {files} files to {}/{{{},{}}} (ingest hours {} to {}) in {:.1} s",
        a.out.trim_end_matches('/'),
        spec.topic,
        spec.orders_topic,
        rfc3339(spec.start),
        rfc3339(spec.start + i64::from(spec.hours) * HOUR_MS),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Progress of gen, an hour at a time: a bar on a terminal, else a log line every 5 s.
struct HourProgress {
    bar: Option<indicatif::ProgressBar>,
    state: std::sync::Mutex<(u64, u64, u64, std::time::Instant)>,
    hours: u64,
}

impl HourProgress {
    fn new(hours: u64) -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(hours);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} hours | {msg} | ETA {eta}").expect("valid template"),
            );
            bar
        });
        Self { bar, state: std::sync::Mutex::new((0, 0, 0, std::time::Instant::now())), hours }
    }

    fn hour_done(&self, files: u64, messages: u64) {
        let mut s = self.state.lock().expect("not poisoned");
        s.0 += 1;
        s.1 += files;
        s.2 += messages;
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!("{} files, {} messages", s.1, s.2));
                bar.inc(1);
            }
            None if s.3.elapsed() >= std::time::Duration::from_secs(5) => {
                s.3 = std::time::Instant::now();
                tracing::info!("{}/{} hours written, {} files, {} messages", s.0, self.hours, s.1, s.2);
            }
            None => {}
        }
    }

    fn end(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Refuses (or, with `replace`, empties) an archive root that already holds files of `topics`.
fn clear_topics(loc: &crate::connector::store::Location, rt: &tokio::runtime::Handle, topics: &[&str], replace: bool, out: &str) -> anyhow::Result<()> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    for topic in topics {
        let dir = loc.child(topic);
        let held: Vec<_> = rt.block_on(loc.store.list(Some(&dir)).try_collect::<Vec<_>>()).map_err(|e| anyhow::anyhow!("--out: cannot list {out}/{topic}: {e}"))?;
        if held.is_empty() {
            continue;
        }
        anyhow::ensure!(
            replace,
            "--out {out} already holds {} files of {topic}: pass --replace to delete them first, or another --out (two archives written \
into one would merge, with two messages at each offset)",
            held.len()
        );
        for m in held {
            rt.block_on(loc.store.delete(&m.location)).map_err(|e| anyhow::anyhow!("--replace: cannot delete {}: {e}", m.location))?;
        }
    }
    Ok(())
}

/// Generate a day of synthetic ad events and orders into a local archive and backfill it with
/// both jobs (no broker needed).
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Working directory for the archive and the output.
    #[arg(long, default_value = "out/demo")]
    dir: PathBuf,
    /// Messages to generate over the day.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
}

pub fn demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let archive = a.dir.join("archive");
    let output = a.dir.join("output");
    let start = "2026-01-01T00:00:00Z";
    println!("1/3 generating {} ad-event messages and {} orders over one day into {}", a.events, a.events / 50, archive.display());
    let code = run(Args {
        out: archive.display().to_string(),
        knobs: Knobs {
            events: a.events,
            start: super::parse_time(start).expect("valid literal"),
            hours: 24,
            ads: 10_000,
            zipf_exponent: 1.1,
            regions: 2,
            first_region: 0,
            partitions: 8,
            files_per_hour: 4,
            click_fraction: 0.1,
            duplicate_fraction: 0.03,
            late_fraction: 0.02,
            malformed_fraction: 0.01,
            seed: 42,
            topic: "ad-events".into(),
            orders: None,
            order_hours: None,
            order_partitions: 4,
            orders_topic: "orders".into(),
        },
        store_options: vec![],
        // The demo regenerates its own archive on every run.
        replace: true,
    })?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let from = super::parse_time(start).expect("valid literal");
    let backfill = |job: &str| -> anyhow::Result<ExitCode> {
        let argv = [
            "backfill".to_string(),
            "--job".into(),
            job.into(),
            "--source".into(),
            archive.display().to_string(),
            "--sink".into(),
            output.display().to_string(),
            "--from".into(),
            rfc3339(from),
            "--to".into(),
            rfc3339(from + DAY_MS),
        ];
        let parsed = <super::Cli as clap::Parser>::try_parse_from(std::iter::once("adsproc".to_string()).chain(argv))?;
        match parsed.command {
            super::Command::Backfill(b) => super::backfill::run(b),
            _ => unreachable!("parsed a backfill command"),
        }
    };
    println!("2/3 aggregation: backfilling the day's windows into {}", output.display());
    let aggregated = backfill("aggregation")?;
    if aggregated != ExitCode::SUCCESS {
        return Ok(aggregated);
    }
    println!("3/3 attribution: backfilling the day's orders into {}", output.display());
    backfill("attribution")
}
