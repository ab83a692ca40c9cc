use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::connector::checkpoint_store::ObjectCheckpoints;
use crate::connector::kafka::broker::{job_topics, KafkaBroker, StreamTopics, LOCAL};
use crate::connector::kafka::txn_output::transaction_timeout;
use crate::connector::kafka::KafkaSettings;
use crate::connector::store::{open, parse_key_value};
use crate::core::job::Job;
use crate::jobs::JobVisitor;
use crate::runtime::stream::job::{run as run_stream, StreamOptions};

/// Run a job live from Kafka, exactly once.
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Run a job live from Kafka. Reads its input topics read_committed (aggregation: ad-events; \
attribution: orders and ad-events) and writes its output topics (ad-metrics; attributed-orders) and the \
dead-letter topic through a transactional producer. Every --checkpoint-interval (and as soon as windows \
fire, see --min-checkpoint-pause) it writes each key group's state and source positions to --checkpoint, then \
commits one transaction holding the outputs since the last checkpoint and the checkpoint numbers (as the group's offsets on the key-group topic). After a crash it restores \
the committed checkpoints: nothing lost, nothing repeated. Several processes with one --group and distinct \
--instance ids share the key groups; a group's state moves with it.",
    after_help = "Examples:\n  adsproc stream --job aggregation --brokers 127.0.0.1:9092 --checkpoint ./checkpoints\n  adsproc stream --job aggregation --brokers kafka:9092 --checkpoint s3://ads-state/agg \\\n      --instance 2 -X security.protocol=ssl --checkpoint-interval 5s\n  adsproc stream --job attribution --brokers 127.0.0.1:9092 --checkpoint ./checkpoints-attribution\n\nSIGINT or SIGTERM: finish a final checkpoint, commit, exit 0.\nExit status: 0 on a clean stop, 2 on an error."
)]
pub struct Args {
    /// Job to run.
    #[arg(long, value_parser = super::job_names())]
    job: String,
    /// Kafka bootstrap servers, host:port[,host:port…].
    #[arg(long)]
    brokers: String,
    /// Where checkpoints go: a directory, file:// or s3:// URL.
    #[arg(long)]
    checkpoint: String,
    /// Time between checkpoints, i.e. between output transactions.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    checkpoint_interval: Duration,
    /// Also checkpoint as soon as the watermark fires windows, once this long has passed since
    /// the last checkpoint: their on-time results are then readable about out-of-orderness
    /// after the window's end instead of up to one interval later. Live, that is one more
    /// checkpoint per window size; reading a backlog, checkpoints come this often instead of
    /// every interval. Default: half of --checkpoint-interval; set it to the interval to
    /// checkpoint on the interval only.
    #[arg(long, value_parser = humantime::parse_duration)]
    min_checkpoint_pause: Option<Duration>,
    /// Input topic, for a job with one input (default: the job file's).
    #[arg(long)]
    topic: Option<String>,
    /// Output topic, for a job with one output table (default: the job file's, e.g.
    /// ad-metrics).
    #[arg(long, alias = "metrics-topic")]
    output_topic: Option<String>,
    /// Dead-letter topic, for a job that dead-letters one input (default: <input topic>-dlq).
    #[arg(long)]
    dlq_topic: Option<String>,
    /// Consumer group; also names the key-group topic and prefixes transactional ids
    /// (default: adsproc-<job>).
    #[arg(long)]
    group: Option<String>,
    /// This process's id within the group; must be stable across restarts (it is the
    /// transactional id, which lets a restarted process abort what its predecessor left open).
    #[arg(long, default_value = "0")]
    instance: String,
    /// Number of key groups (state shards), fixed for the life of the checkpoints. Created as
    /// the partitions of `<group>.key-groups`; output topics are created with as many
    /// partitions, one per key group.
    #[arg(long, default_value_t = 8)]
    key_groups: u32,
    /// A partition read to its end for this long no longer holds the watermark back.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// How often to look for partitions added to the input topic; they are read from their
    /// beginning. Events written to a new partition before it is found can arrive after their
    /// windows fired, and correct them; once a window is past allowed lateness they go to the
    /// dead letters instead. Keep it well under the allowed lateness. 0s: never.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    partition_discovery_interval: Duration,
    /// Exit after a final checkpoint once every partition has been read to its end.
    #[arg(long)]
    stop_when_caught_up: bool,
    /// Watermark alignment: a partition with more rows than this waiting for the slower
    /// partitions is paused until it has half as many. Bounds the rows held in memory to about
    /// this many per partition (each holds its decoded fields, ~0.15 KB, and its payload's bytes
    /// unless the fields re-create them, ~0.25 KB more for a 250-byte payload), though a poll's
    /// decoded batch is kept whole while any of its rows waits (at the end of the 1M-message
    /// bench's backlog, 40 rows waiting kept 31 MB); lower it for many partitions on little
    /// memory. On the 1M-message bench, 20 000 ran ~10 % slower than 50 000 and 5 000 slower
    /// still.
    #[arg(long, default_value_t = NonZeroUsize::new(50_000).expect("not zero"))]
    max_waiting_per_partition: NonZeroUsize,
    /// Serve Prometheus metrics on this address (host:port) at /metrics, with /healthz
    /// (liveness) and /readyz (owns its key groups, restored): consumer lag, records and dead
    /// letters, watermark delay, checkpoints, transactions, state size.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// librdkafka property for every client, key=value (repeatable), as in kcat.
    #[arg(short = 'X', value_parser = parse_key_value)]
    kafka_options: Vec<(String, String)>,
    /// Job definition file (default: the built-in jobs/<job>.toml). The stream job and every
    /// backfill of its range must run with the same rules.
    #[arg(long)]
    job_file: Option<PathBuf>,
    /// Object store setting, key=value (repeatable), for an s3:// checkpoint location.
    #[arg(long = "store-option", value_parser = parse_key_value)]
    store_options: Vec<(String, String)>,
    /// A region whose cluster the job reads, region=HOST:PORT[,…] (repeatable; the union job:
    /// one per region, the local cluster may be one of them). -X settings apply to these
    /// clusters too.
    #[arg(long = "input", value_parser = parse_key_value, value_name = "REGION=BROKERS")]
    regions: Vec<(String, String)>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    super::with_job(&a.job.clone(), Stream(a))
}

struct Stream(Args);

impl JobVisitor for Stream {
    type Output = anyhow::Result<ExitCode>;
    fn visit<J: Job>(self) -> Self::Output {
        run_job::<J>(self.0)
    }
}

/// Applies `--topic` and `--output-topic` to the job's rules: each names the one input or
/// output of a job that has one.
fn rename<J: Job>(rules: &mut J::Rules, topic: Option<&str>, output_topic: Option<&str>) -> anyhow::Result<()> {
    let names = |v: Vec<String>| v.join(" and ");
    if let Some(t) = topic {
        let inputs = J::inputs(rules);
        anyhow::ensure!(
            inputs.len() == 1,
            "--topic names the input topic of a job with one input; the {} job reads {}: their names are in its job file",
            J::NAME,
            names(inputs.into_iter().map(|i| i.topic).collect())
        );
        J::set_topic(rules, 0, t);
    }
    if let Some(t) = output_topic {
        let outputs = J::outputs(rules);
        anyhow::ensure!(
            outputs.len() == 1,
            "--output-topic names the output topic of a job with one output; the {} job writes {}: their names are in its job file",
            J::NAME,
            names(outputs.into_iter().map(|o| o.name).collect())
        );
        J::set_output(rules, 0, t);
    }
    Ok(())
}

fn run_job<J: Job>(a: Args) -> anyhow::Result<ExitCode> {
    let mut rules = super::load_rules::<J>(a.job_file.as_deref())?;
    rename::<J>(&mut rules, a.topic.as_deref(), a.output_topic.as_deref())?;
    let mut regions: Vec<String> = Vec::new();
    for (name, _) in &a.regions {
        anyhow::ensure!(!regions.contains(name), "--input {name}=… is given twice");
        regions.push(name.clone());
    }
    if !regions.is_empty() || J::inputs(&rules).iter().any(|i| i.region.is_some()) {
        J::set_regions(&mut rules, &regions)?;
    }
    let (inputs, outputs, dlq) = job_topics::<J>(&rules, a.dlq_topic.as_deref())?;
    anyhow::ensure!(a.key_groups > 0, "--key-groups must be at least 1");
    anyhow::ensure!(!a.checkpoint_interval.is_zero(), "--checkpoint-interval must be positive");
    let transaction_timeout = transaction_timeout(a.checkpoint_interval, &a.kafka_options)?;
    let settings = KafkaSettings::new(&a.brokers, &a.kafka_options);
    let group = a.group.clone().unwrap_or_else(|| format!("adsproc-{}", J::NAME));
    let described = format!(
        "{} → {}",
        inputs.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(", "),
        outputs.join(", ")
    );
    let clusters = J::inputs(&rules)
        .iter()
        .map(|i| match &i.region {
            None => Ok((LOCAL.to_string(), settings.clone())),
            Some(r) => a
                .regions
                .iter()
                .find(|(name, _)| name == r)
                .map(|(name, brokers)| (name.clone(), KafkaSettings::new(brokers, &a.kafka_options)))
                .with_context(|| format!("no --input {r}=… names the cluster of region {r}")),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let topics =
        StreamTopics { inputs, clusters, outputs, dlq, group: group.clone(), instance: a.instance.clone(), key_groups: a.key_groups, transaction_timeout };
    let rt = super::tokio_runtime()?;
    let store = ObjectCheckpoints::new(open(&a.checkpoint, &a.store_options, true)?, rt.handle().clone());
    let metrics = super::serve_metrics("stream", a.metrics_addr.as_deref())?;
    let (mut broker, partitions) = KafkaBroker::connect(&settings, &topics)?;

    let shutdown = super::stop_on_signals()?;
    let opts = StreamOptions {
        key_groups: a.key_groups,
        checkpoint_interval: a.checkpoint_interval,
        min_checkpoint_pause: a.min_checkpoint_pause.unwrap_or(a.checkpoint_interval / 2),
        idle_timeout: a.idle_timeout,
        partition_discovery_interval: Some(a.partition_discovery_interval).filter(|i| !i.is_zero()),
        stop_when_caught_up: a.stop_when_caught_up,
        // Larger polls cost memory (0.15-0.4 KB a message while it is decoded and processed) and
        // save per-poll work: 6 pairs on the 1M bench, 20 000 -> 50 000 gave sustained median
        // 436k -> 481k messages/s (faster in 5) for ~70 MB more peak RSS.
        max_poll: 50_000,
        max_waiting_per_partition: a.max_waiting_per_partition.get(),
        metrics,
    };
    tracing::info!("stream: the {} job, {described} ({} source partitions) on {}, group {group}, instance {}", J::NAME, partitions.len(), a.brokers, a.instance);
    let summary = run_stream::<J>(&rules, &partitions, &mut broker, &store, &opts, &shutdown)?;
    eprintln!(
        "stopped after {} checkpoints: {} records and {} dead letters committed by this process",
        summary.checkpoints, summary.records_sent, summary.dead_letters_sent
    );
    if summary.messages_polled > 0 {
        let secs = summary.busy.as_secs_f64();
        eprintln!(
            "polled {} messages in {secs:.3} s from the first message to the last commit ({:.0} messages/s)",
            summary.messages_polled,
            summary.messages_polled as f64 / secs.max(1e-9)
        );
    }
    eprint!("{}", summary.audit);
    Ok(ExitCode::SUCCESS)
}
