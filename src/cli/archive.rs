use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::connector::kafka::reader::TopicReader;
use crate::connector::kafka::{admin, archiver, KafkaSettings};
use crate::connector::store::{open, parse_key_value};
use crate::contract::format::Format;
use crate::runtime::stream::driver::Source;

/// Archive a Kafka topic into Parquet (the contract's archiver).
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Consume a topic read_committed and write it to <sink>/<topic>/dt=…/hr=…/ as Parquet, partitioned \
by ingest hour (the Kafka timestamp), with _kafka_partition, _kafka_offset and _kafka_timestamp. Messages that are \
not JSON objects are not archived (contract §3). Resumes after what the archive already holds. Partitions added to \
the topic while it runs are archived too (it looks every 30 s, and once more before --until-caught-up stops); \
messages that retention deleted before they were archived are named in a warning.",
    after_help = "Examples:\n  adsproc archive --topic ad-events --brokers 127.0.0.1:9092 --sink ./archive --until-caught-up\n  adsproc archive --topic orders --brokers 127.0.0.1:9092 --sink ./archive --until-caught-up\n  adsproc archive --topic live-orders --format orders --brokers kafka:9092 --sink s3://ads-archive/raw --flush-interval 5m"
)]
pub struct Args {
    /// The topic to archive.
    #[arg(long)]
    topic: String,
    /// The topic's contract format: ad-events or orders. Default: the topic's name, when it is
    /// one of those.
    #[arg(long, value_parser = parse_format)]
    format: Option<Format>,
    /// Kafka bootstrap servers, host:port[,host:port…].
    #[arg(long)]
    brokers: String,
    /// Archive root (directory or s3:// prefix).
    #[arg(long)]
    sink: String,
    /// Stop once every partition has been read to its end.
    #[arg(long)]
    until_caught_up: bool,
    /// How often to write files while running continuously.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    flush_interval: Duration,
    /// librdkafka property, key=value (repeatable), as in kcat.
    #[arg(short = 'X', value_parser = parse_key_value)]
    kafka_options: Vec<(String, String)>,
    /// Object store setting, key=value (repeatable), for an s3:// sink.
    #[arg(long = "store-option", value_parser = parse_key_value)]
    store_options: Vec<(String, String)>,
    /// Serve Prometheus metrics on this address (host:port) at /metrics, with /healthz and
    /// /readyz: consumer lag, messages read, rows archived, time since the last flush.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
}

pub fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
        format!("'{s}' is not a format; possible values: {}", names.join(", "))
    })
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let format = match a.format.or_else(|| Format::parse(&a.topic)) {
        Some(f) => f,
        None => anyhow::bail!("--format is needed: {:?} is not a contract topic name (ad-events, orders)", a.topic),
    };
    let settings = KafkaSettings::new(&a.brokers, &a.kafka_options);
    let partitions = admin::partitions(&settings, &a.topic)?.with_context(|| format!("topic {:?} does not exist on {}", a.topic, a.brokers))?;
    let rt = super::tokio_runtime()?;
    let location = open(&a.sink, &a.store_options, true)?;
    let partitions = partitions.into_iter().map(|p| Source::new(0, p)).collect();
    let mut reader = TopicReader::new(&settings, &[(a.topic.clone(), format)], partitions, "adsproc-archiver")?;
    let metrics = super::serve_metrics("archive", a.metrics_addr.as_deref())?;
    let s = archiver::run(&mut reader, format, &location, rt.handle(), a.until_caught_up, a.flush_interval, metrics.as_deref())?;
    println!("archived {} messages of {} as {} rows in {} files under {}", s.messages, a.topic, s.rows, s.files, a.sink);
    Ok(ExitCode::SUCCESS)
}
