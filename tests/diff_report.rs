//! `adsproc diff` over the fixture fixtures/diff/late_events (two versions of an ad-metrics
//! table, explained in its README): the summary a person reads is the expected one, the JSON
//! agrees with sums taken here, the HTML report renders in a real headless browser (Debian's
//! Chromium) with the charts the figures call for, and a PostgreSQL table that holds the old
//! version gives the same report as its Parquet form.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use adsproc::contract::outputs::{ad_metrics_batch, AdMetric};
use adsproc::contract::time::{floor_to, hive_hour_dir, parse_rfc3339, HOUR_MS};
use common::postgres::Postgres;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/diff/late_events")
}

/// The fixture's records: one JSON object per line, without record_uuid and window_end.
fn records(file: &str) -> Vec<AdMetric> {
    std::fs::read_to_string(fixture().join(file))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            let start = parse_rfc3339(&s("window_start")).unwrap();
            AdMetric {
                record_uuid: adsproc::contract::record_uuid::ad_metric(&s("region"), &s("ad_id"), start),
                region: s("region").into(),
                ad_id: s("ad_id").into(),
                campaign_id: Some(s("campaign_id").into()),
                advertiser_id: Some(s("advertiser_id").into()),
                window_start: start,
                window_end: start + 60_000,
                impressions: v["impressions"].as_i64().unwrap(),
                clicks: v["clicks"].as_i64().unwrap(),
            }
        })
        .collect()
}

/// Writes records as a backfill's output root: `<root>/ad-metrics/dt=…/hr=…/data.parquet`.
fn write_table(root: &Path, records: &[AdMetric]) {
    let mut by_hour: BTreeMap<i64, Vec<AdMetric>> = BTreeMap::new();
    for r in records {
        by_hour.entry(floor_to(r.window_start, HOUR_MS)).or_default().push(r.clone());
    }
    for (hour, rows) in by_hour {
        let dir = root.join("ad-metrics").join(hive_hour_dir(hour));
        std::fs::create_dir_all(&dir).unwrap();
        let batch = ad_metrics_batch(&rows);
        let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(dir.join("data.parquet")).unwrap(), batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
}

/// The fixture's two versions, written as output roots `old` and `new` in a fresh directory.
fn fixture_tables() -> (tempfile::TempDir, Vec<AdMetric>, Vec<AdMetric>) {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (records("old.jsonl"), records("new.jsonl"));
    write_table(&tmp.path().join("old"), &old);
    write_table(&tmp.path().join("new"), &new);
    (tmp, old, new)
}

fn diff(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adsproc")).arg("diff").args(args).current_dir(dir).output().unwrap()
}

fn chromium() -> String {
    let o = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ensure-chromium.sh")).output().unwrap();
    assert!(o.status.success(), "scripts/ensure-chromium.sh: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// The page's DOM after its scripts ran, from headless Chromium (flags as this machine needs
/// them: no sandbox as root, no background network).
fn rendered(page: &Path, profile: &Path) -> String {
    let o = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "chromium: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The opening tag of the element with this id, in a DOM dump.
fn tag<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no element {id} in the rendered page"));
    let start = dom[..at].rfind('<').unwrap();
    &dom[start..start + dom[start..].find('>').unwrap()]
}

#[test]
fn the_report_of_a_restatement_says_who_is_affected_and_renders_in_a_browser() {
    let (tmp, old, new) = fixture_tables();

    // The summary, as a person reads it.
    let o = diff(tmp.path(), &["--old", "old", "--new", "new", "--json", "report.json", "--html", "report.html"]);
    assert_eq!(o.status.code(), Some(1), "the versions differ: {}", String::from_utf8_lossy(&o.stderr));
    let summary = String::from_utf8(o.stdout).unwrap();
    let expected_path = fixture().join("expected.txt");
    if std::env::var_os("ADSPROC_BLESS").is_some() {
        std::fs::write(&expected_path, &summary).unwrap();
    }
    assert_eq!(summary, std::fs::read_to_string(&expected_path).unwrap(), "the summary (ADSPROC_BLESS=1 rewrites expected.txt)");

    // The JSON agrees with sums taken here, by record_uuid.
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(tmp.path().join("report.json")).unwrap()).unwrap();
    let sum = |v: &[AdMetric], f: fn(&AdMetric) -> i64| v.iter().map(f).sum::<i64>();
    assert_eq!(report["total"]["delta_impressions"], sum(&new, |m| m.impressions) - sum(&old, |m| m.impressions));
    assert_eq!(report["total"]["delta_clicks"], sum(&new, |m| m.clicks) - sum(&old, |m| m.clicks));
    let uuids = |v: &[AdMetric]| v.iter().map(|m| m.record_uuid).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(report["total"]["added"], uuids(&new).difference(&uuids(&old)).count());
    assert_eq!(report["total"]["removed"], uuids(&old).difference(&uuids(&new)).count());
    let groups = report["groups"].as_array().unwrap();
    let acme: i64 = groups.iter().filter(|g| g["advertiser_id"] == "acme").map(|g| g["delta_impressions"].as_i64().unwrap()).sum();
    assert_eq!(acme, 5, "acme gains 5 impressions");

    // The page, rendered by Chromium: its script drew one column per hour with a difference
    // (00 and 01; hour 02 has none) and one bar per affected advertiser, largest first.
    let dom = rendered(&tmp.path().join("report.html"), &tmp.path().join("chromium-profile"));
    assert!(tag(&dom, "summary").contains("table"));
    assert!(dom.contains("data-rendered=\"true\""), "the report's script ran:\n{dom}");
    assert!(tag(&dom, "chart-hours-impressions").contains("data-bars=\"2\""), "{dom}");
    assert!(tag(&dom, "chart-hours-clicks").contains("data-bars=\"2\""), "{dom}");
    assert!(tag(&dom, "chart-advertisers").contains("data-bars=\"2\""), "{dom}");
    let acme_bar = dom.find("data-advertiser=\"acme\"").expect("acme's bar");
    let globex_bar = dom.find("data-advertiser=\"globex\"").expect("globex's bar");
    assert!(acme_bar < globex_bar, "the most affected advertiser first");
    assert!(!dom.contains("data-advertiser=\"initech\""), "an unaffected advertiser has no bar");
    assert!(dom.contains("data-hour=\"2026-01-01T00:00:00.000Z\" data-value=\"-2\""), "hour 00 loses 2 impressions:\n{dom}");
    assert!(dom.contains("acme / campaign-2"), "the campaigns table");

    // The same version against itself: no differences, exit 0.
    let o = diff(tmp.path(), &["--old", "old", "--new", "old"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no differences"));

    // A --html path that cannot be written fails before any reading, naming it.
    let o = diff(tmp.path(), &["--old", "old", "--new", "new", "--html", "no/such/dir/r.html"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--html no/such/dir/r.html"));
}

#[test]
fn a_loaded_postgres_table_gives_the_same_report_as_its_parquet_form() {
    let (tmp, old, _) = fixture_tables();
    // The old version in PostgreSQL, in the table `adsproc load` creates.
    let pg = Postgres::start();
    let mut client = pg.client();
    let table = adsproc::connector::postgres::table::TableName::parse("ad_metrics").unwrap();
    adsproc::connector::postgres::table::prepare(&mut client, &table, adsproc::contract::table::TableKind::AdMetrics).unwrap();
    for m in &old {
        let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap();
        client
            .execute(
                "INSERT INTO ad_metrics (record_uuid, region, ad_id, campaign_id, advertiser_id, window_start, window_end, impressions, clicks) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[&m.record_uuid, &&*m.region, &&*m.ad_id, &m.campaign_id.as_deref(), &m.advertiser_id.as_deref(), &at(m.window_start), &at(m.window_end), &m.impressions, &m.clicks],
            )
            .unwrap();
    }
    let from_parquet = diff(tmp.path(), &["--old", "old", "--new", "new", "--json", "a.json"]);
    let from_pg = diff(tmp.path(), &["--old", &pg.url, "--new", "new", "--json", "b.json"]);
    assert_eq!(from_pg.status.code(), Some(1), "{}", String::from_utf8_lossy(&from_pg.stderr));
    let json = |f: &str| {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(tmp.path().join(f)).unwrap()).unwrap();
        v["old"]["source"] = serde_json::Value::Null;
        v
    };
    assert_eq!(json("b.json"), json("a.json"), "the report from PostgreSQL equals the one from Parquet");
    let strip = |o: &Output| String::from_utf8_lossy(&o.stdout).lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(strip(&from_pg), strip(&from_parquet));
}
