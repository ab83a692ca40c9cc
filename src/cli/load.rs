use std::process::ExitCode;
use std::time::Duration;


use crate::connector::kafka::KafkaSettings;
use crate::connector::load::{self, LoadSettings};
use crate::connector::postgres::table::TableName;
use crate::connector::store::parse_key_value;
use crate::contract::table::TableKind;

/// Load an output topic into a PostgreSQL table, upserting on record_uuid, exactly once.
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Consume an output topic (read_committed) and upsert every record on record_uuid into a PostgreSQL \
table: the serving store, as Pinot's upsert tables are in the seed system. The table is created with the contract's \
columns if it is missing, and checked if it exists. Each batch's rows and the consumed offsets are committed in one \
database transaction (table adsproc_load_offsets), so after any crash the table is exactly the last value per \
record_uuid of the topic up to the stored offsets, and a restart resumes from there. A record the table cannot take \
(not the table's JSON, a NUL in a text, a time outside PostgreSQL's range) goes to <table>_dlq with its reason and \
bytes. One load per table at a time. Prints records/s when it stops.",
    after_help = "Examples:\n  adsproc load --brokers 127.0.0.1:9092 --topic ad-metrics-all --into postgres://adsproc@127.0.0.1:5432/serving\n  adsproc load --brokers 127.0.0.1:9092 --topic attributed-orders-all --into postgres://u:pw@db/serving --table serving.orders\n  adsproc load --brokers 127.0.0.1:9092 --topic ad-metrics --into postgres://adsproc@127.0.0.1/postgres --stop-when-caught-up"
)]
pub struct Args {
    /// Kafka bootstrap servers, host:port[,host:port…].
    #[arg(long)]
    brokers: String,
    /// The topic to load: an ad-metrics or attributed-orders table (`-all`: the union's).
    #[arg(long)]
    topic: String,
    /// The database, as a URL (postgres://user[:password]@host[:port]/database) or libpq's
    /// key=value form.
    #[arg(long, value_name = "POSTGRES_URL")]
    into: String,
    /// The table (name or schema.name). Default: the topic's name with `_` for `-`, e.g.
    /// ad_metrics_all.
    #[arg(long)]
    table: Option<String>,
    /// The records' table: ad-metrics or attributed-orders. Default: from the topic's name.
    #[arg(long, value_parser = super::parse_kind)]
    kind: Option<TableKind>,
    /// Records per database transaction, at most.
    #[arg(long, default_value_t = 50_000)]
    batch_rows: usize,
    /// How long a batch waits to fill before it is committed anyway: the delay between a
    /// record reaching Kafka and the table.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    linger: Duration,
    /// Stop once every partition has been loaded to its end.
    #[arg(long)]
    stop_when_caught_up: bool,
    /// librdkafka property, key=value (repeatable), as in kcat.
    #[arg(short = 'X', value_parser = parse_key_value)]
    kafka_options: Vec<(String, String)>,
    /// Serve Prometheus metrics on this address (host:port) at /metrics, with /healthz and
    /// /readyz (the table is checked): consumer lag, records loaded, rows written, dead letters
    /// by reason, transactions, time since the last commit.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
}


pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let kind = match a.kind.or_else(|| super::kind_of(&a.topic)) {
        Some(k) => k,
        None => anyhow::bail!("--kind is needed: the name {:?} does not say whether it holds ad-metrics or attributed-orders", a.topic),
    };
    let table = match &a.table {
        Some(t) => TableName::parse(t),
        None => TableName::for_topic(&a.topic),
    }
    .map_err(|e| anyhow::anyhow!("--table: {e}"))?;
    anyhow::ensure!(a.batch_rows > 0, "--batch-rows must be at least 1");
    let shutdown = super::stop_on_signals()?;
    let settings = LoadSettings {
        kafka: KafkaSettings::new(&a.brokers, &a.kafka_options),
        topic: a.topic.clone(),
        kind,
        table: table.clone(),
        database: a.into.clone(),
        batch_rows: a.batch_rows,
        linger: a.linger,
        stop_when_caught_up: a.stop_when_caught_up,
        shutdown,
        metrics: super::serve_metrics("load", a.metrics_addr.as_deref())?,
    };
    let r = load::run(&settings)?;
    let reasons: Vec<String> = r.rejected_by_reason.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "loaded {} records of {} into {} in {:.2} s: {:.0} records/s; {} rows written (the others held their value already), {} to {}{}",
        r.records,
        a.topic,
        table,
        r.seconds,
        r.rate(),
        r.written,
        r.rejected,
        table.dead_letters(),
        if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) }
    );
    Ok(ExitCode::SUCCESS)
}
