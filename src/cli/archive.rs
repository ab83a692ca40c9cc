use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::connector::kafka::reader::TopicReader;
use crate::connector::kafka::{admin, archiver, KafkaSettings};
use crate::connector::store::{open, parse_key_value};

/// Archive a Kafka topic into Parquet (the contract's archiver).
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Consume a topic read_committed and write it to <sink>/<topic>/dt=…/hr=…/ as Parquet, partitioned \
by ingest hour (the Kafka timestamp), with _kafka_partition, _kafka_offset and _kafka_timestamp. Messages that are \
not JSON objects are not archived (contract §3). Resumes after what the archive already holds. Partitions added to \
the topic while it runs are archived too (it looks every 30 s, and once more before --until-caught-up stops); \
messages that retention deleted before they were archived are named in a warning.",
    after_help = "Examples:\n  adsproc archive --topic ad-events --brokers 127.0.0.1:9092 --sink ./archive --until-caught-up\n  adsproc archive --topic ad-events --brokers kafka:9092 --sink s3://ads-archive/raw --flush-interval 5m"
)]
pub struct Args {
    #[arg(long)]
    topic: String,
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
    #[arg(short = 'X', value_parser = parse_key_value)]
    kafka_options: Vec<(String, String)>,
    #[arg(long = "store-option", value_parser = parse_key_value)]
    store_options: Vec<(String, String)>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let settings = KafkaSettings::new(&a.brokers, &a.kafka_options);
    let partitions = admin::partitions(&settings, &a.topic)?.with_context(|| format!("topic {:?} does not exist on {}", a.topic, a.brokers))?;
    let rt = super::tokio_runtime()?;
    let location = open(&a.sink, &a.store_options, true)?;
    let mut reader = TopicReader::new(&settings, &a.topic, partitions, "adsproc-archiver")?;
    let s = archiver::run(&mut reader, &location, &a.topic, rt.handle(), a.until_caught_up, a.flush_interval)?;
    println!("archived {} messages of {} as {} rows in {} files under {}", s.messages, a.topic, s.rows, s.files, a.sink);
    Ok(ExitCode::SUCCESS)
}
