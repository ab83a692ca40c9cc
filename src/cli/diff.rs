use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use uuid::Uuid;

use crate::connector::output_tables::read_table;
use crate::connector::postgres::{read as pg, table::TableName};
use crate::connector::store::{is_s3, open, parse_key_value};
use crate::contract::attributed_orders::AttributedOrder;
use crate::contract::outputs::AdMetric;
use crate::contract::table::TableKind;
use crate::contract::time::{rfc3339, to_datetime};
use crate::core::diff::{Delta, DiffRecord, Measures, TableDiff};

/// Compare two versions of an output table record by record: who a restatement affects.
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Compare two versions of an output table on record_uuid — the live job's output and a backfill's, \
say, before the backfill is restated into the serving store — and roll the differences up per advertiser, campaign \
and hour: records added, removed and changed, and the change of impressions and clicks (ad-metrics) or of attributed \
orders and their amount (attributed-orders). Each side is a backfill's output root (a directory or s3:// prefix \
holding <table>/dt=…/hr=…) or a PostgreSQL database that `adsproc load` filled. Prints a summary; --json and \
--html write the full report (the HTML is one self-contained file with charts).",
    after_help = "Examples:\n  adsproc diff --old ./live-archive --new ./restated --table ad-metrics --html impact.html\n  adsproc diff --old postgres://adsproc@127.0.0.1/serving --pg-table ad_metrics_all --new ./restated \\\n      --table ad-metrics --from 2026-01-01T00:00:00Z --to 2026-01-02T00:00:00Z --json impact.json\n\nExit status: 0 when the versions are the same, 1 when they differ, 2 on an error (as diff(1))."
)]
pub struct Args {
    /// The version in place (e.g. the live job's): an output root (directory or s3://…) or a
    /// postgres:// URL of a database `adsproc load` wrote.
    #[arg(long)]
    old: String,
    /// The version to compare with it (e.g. a backfill's output), in the same forms.
    #[arg(long)]
    new: String,
    /// The table: its directory under an output root (ad-metrics, attributed-orders,
    /// ad-metrics-all, ...).
    #[arg(long, default_value = "ad-metrics")]
    table: String,
    /// The records' kind (ad-metrics or attributed-orders). Default: from --table's name.
    #[arg(long, value_parser = super::parse_kind)]
    kind: Option<TableKind>,
    /// For a postgres:// side: its table (name or schema.name). Default: --table with `_` for `-`.
    #[arg(long)]
    pg_table: Option<String>,
    /// Compare only records whose partition time (window start, order time) is at or after this.
    #[arg(long, value_parser = super::parse_time)]
    from: Option<i64>,
    /// ...and before this.
    #[arg(long, value_parser = super::parse_time)]
    to: Option<i64>,
    /// Rows of the "most affected" lists.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the report as one self-contained HTML page with charts.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Object store setting, key=value (repeatable), for s3:// locations.
    #[arg(long = "store-option", value_parser = parse_key_value)]
    store_options: Vec<(String, String)>,
}

/// 9999-12-31: "no end".
const END_OF_TIME: i64 = 253_402_300_799_999;

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let kind = match a.kind.or_else(|| super::kind_of(&a.table)) {
        Some(k) => k,
        None => anyhow::bail!("--kind is needed: the name {:?} does not say whether it holds ad-metrics or attributed-orders", a.table),
    };
    let (from, to) = (a.from.unwrap_or(0), a.to.unwrap_or(END_OF_TIME));
    anyhow::ensure!(from < to, "--from must be before --to");
    if !a.store_options.is_empty() && !is_s3(&a.old) && !is_s3(&a.new) {
        anyhow::bail!("--store-option applies to s3:// locations, and neither --old nor --new is one");
    }
    // Paths to write are checked before the (possibly long) reading.
    let json_out = super::create_output(a.json.as_deref(), "--json")?;
    let html_out = super::create_output(a.html.as_deref(), "--html")?;
    let report = match kind {
        TableKind::AdMetrics => compare::<AdMetric>(&a, kind, from, to)?,
        TableKind::AttributedOrders => compare::<AttributedOrder>(&a, kind, from, to)?,
    };
    print!("{}", summary(&report, a.top));
    if let Some(mut f) = json_out {
        use std::io::Write;
        f.write_all(serde_json::to_string_pretty(&report.json).expect("serializes").as_bytes()).context("cannot write --json")?;
    }
    if let Some(mut f) = html_out {
        use std::io::Write;
        f.write_all(super::diff_html::render(&report.json).as_bytes()).context("cannot write --html")?;
    }
    Ok(if report.diff.total.affected() == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

struct Report {
    diff: TableDiff,
    json: serde_json::Value,
}

/// The records of one side, one per record_uuid.
fn side<R: DiffRecord + Readable>(a: &Args, rt: &tokio::runtime::Handle, which: &str, from: i64, to: i64) -> anyhow::Result<HashMap<Uuid, R>> {
    let flag = if which == "old" { &a.old } else { &a.new };
    if flag.starts_with("postgres://") || flag.starts_with("postgresql://") {
        let name = match &a.pg_table {
            Some(t) => TableName::parse(t).map_err(|e| anyhow::anyhow!("--pg-table: {e}"))?,
            None => TableName::for_topic(&a.table).map_err(|e| anyhow::anyhow!("--{which}: {e}"))?,
        };
        let rows = R::from_postgres(flag, &name, from, to).with_context(|| format!("--{which}"))?;
        return Ok(rows.into_iter().map(|r| (r.record_uuid(), r)).collect());
    }
    let loc = open(flag, &a.store_options, false).map_err(|e| anyhow::anyhow!("--{which}: {e:#}"))?;
    let (rows, files) = read_table::<R>(&loc, rt, &a.table, from, to).with_context(|| format!("--{which}"))?;
    anyhow::ensure!(files > 0, "--{which} {flag}: no {} files (expected {flag}/{}/dt=…/hr=…/*.parquet)", a.table, a.table);
    // An earlier layout could hold a record in two files of a partition: the newer file's
    // wins, as the union's backfill merges its regions' tables.
    let merged = crate::jobs::union::merge::newest_per_uuid(rows.into_iter().map(|r| (r.written, r.file, r.record)));
    Ok(merged.records.into_iter().map(|r| (r.record_uuid(), r)).collect())
}

/// Reading a table's records from PostgreSQL.
trait Readable: Sized {
    fn from_postgres(url: &str, table: &TableName, from: i64, to: i64) -> anyhow::Result<Vec<Self>>;
}

impl Readable for AdMetric {
    fn from_postgres(url: &str, table: &TableName, from: i64, to: i64) -> anyhow::Result<Vec<Self>> {
        pg::ad_metrics(url, table, from, to)
    }
}

impl Readable for AttributedOrder {
    fn from_postgres(url: &str, table: &TableName, from: i64, to: i64) -> anyhow::Result<Vec<Self>> {
        pg::attributed_orders(url, table, from, to)
    }
}

/// The measures a table's report shows: (JSON field, label).
fn shown(kind: TableKind) -> &'static [(&'static str, &'static str)] {
    match kind {
        TableKind::AdMetrics => &[("impressions", "impressions"), ("clicks", "clicks")],
        TableKind::AttributedOrders => &[("attributed_orders", "attributed orders"), ("amount_cents", "amount (cents)")],
    }
}

fn get(m: &Measures, field: &str) -> i64 {
    match field {
        "impressions" => m.impressions,
        "clicks" => m.clicks,
        "attributed_orders" => m.attributed_orders,
        _ => m.amount_cents,
    }
}

fn compare<R: DiffRecord + Readable>(a: &Args, kind: TableKind, from: i64, to: i64) -> anyhow::Result<Report> {
    let rt = super::tokio_runtime()?;
    let old = side::<R>(a, rt.handle(), "old", from, to)?;
    let new = side::<R>(a, rt.handle(), "new", from, to)?;
    let diff = TableDiff::of(&old, &new);
    let delta_json = |d: &Delta| {
        let mut v = serde_json::json!({ "added": d.added, "removed": d.removed, "changed": d.changed, "unchanged": d.unchanged });
        for (field, _) in shown(kind) {
            v[format!("delta_{field}")] = get(&d.delta, field).into();
        }
        v
    };
    let json = serde_json::json!({
        "table": a.table,
        "kind": kind.name(),
        "old": { "source": a.old, "records": diff.old_records, "measures": diff.old },
        "new": { "source": a.new, "records": diff.new_records, "measures": diff.new },
        "range": { "from": a.from.map(rfc3339), "to": a.to.map(rfc3339) },
        "measures": shown(kind).iter().map(|(f, l)| serde_json::json!({ "field": f, "label": l })).collect::<Vec<_>>(),
        "total": delta_json(&diff.total),
        "by_hour": diff.by_hour().iter().map(|(h, d)| { let mut v = delta_json(d); v["hour"] = rfc3339(*h).into(); v }).collect::<Vec<_>>(),
        "top_advertisers": diff.top_advertisers(a.top).iter().map(|(adv, d)| { let mut v = delta_json(d); v["advertiser_id"] = adv.clone().into(); v }).collect::<Vec<_>>(),
        "top_campaigns": diff.top_campaigns(a.top).iter().map(|((adv, camp), d)| {
            let mut v = delta_json(d);
            v["advertiser_id"] = adv.clone().into();
            v["campaign_id"] = camp.clone().into();
            v
        }).collect::<Vec<_>>(),
        "groups": diff.groups.iter().map(|((adv, camp, h), d)| {
            let mut v = delta_json(d);
            v["advertiser_id"] = adv.clone().into();
            v["campaign_id"] = camp.clone().into();
            v["hour"] = rfc3339(*h).into();
            v
        }).collect::<Vec<_>>(),
    });
    Ok(Report { diff, json })
}

fn signed(n: i64) -> String {
    if n > 0 {
        format!("+{n}")
    } else {
        n.to_string()
    }
}

fn records(d: &Delta) -> String {
    format!("{} records (+{} -{} ~{})", d.affected(), d.added, d.removed, d.changed)
}

/// The summary a person reads: totals, the most affected advertisers and campaigns, and the
/// hours with differences.
fn summary(r: &Report, top: usize) -> String {
    let j = &r.json;
    let d = &r.diff;
    let kind = TableKind::parse(j["kind"].as_str().unwrap_or_default()).unwrap_or(TableKind::AdMetrics);
    let mut s = format!(
        "{}: old {} ({} records) -> new {} ({} records)\n",
        j["table"].as_str().unwrap_or_default(),
        j["old"]["source"].as_str().unwrap_or_default(),
        d.old_records,
        j["new"]["source"].as_str().unwrap_or_default(),
        d.new_records
    );
    s += &format!("  records: {} added, {} removed, {} changed, {} unchanged\n", d.total.added, d.total.removed, d.total.changed, d.total.unchanged);
    for (field, label) in shown(kind) {
        s += &format!("  {label}: {} -> {} ({})\n", get(&d.old, field), get(&d.new, field), signed(get(&d.total.delta, field)));
    }
    if d.total.affected() == 0 {
        s += "  no differences\n";
        return s;
    }
    let line = |name: String, delta: &Delta| {
        let measures: Vec<String> = shown(kind).iter().map(|(f, l)| format!("{} {l}", signed(get(&delta.delta, f)))).collect();
        format!("  {name:<40} {}  {}\n", measures.join(", "), records(delta))
    };
    s += "most affected advertisers:\n";
    for (adv, delta) in d.top_advertisers(top) {
        s += &line(if adv.is_empty() { "(no advertiser)".into() } else { adv }, &delta);
    }
    s += "most affected campaigns:\n";
    for ((adv, camp), delta) in d.top_campaigns(top) {
        s += &line(format!("{adv} / {camp}"), &delta);
    }
    s += "hours with differences:\n";
    for (hour, delta) in d.by_hour() {
        s += &line(to_datetime(hour).format("%Y-%m-%dT%H:%MZ").to_string(), &delta);
    }
    s
}
