//! A real PostgreSQL server for tests (Debian's package, via scripts/postgres.sh): initdb into a
//! temporary directory, started on a free 127.0.0.1 port, stopped on drop.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub url: String,
}

fn script(args: &[&str]) -> String {
    let o = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh")).args(args).output().expect("run scripts/postgres.sh");
    assert!(o.status.success(), "scripts/postgres.sh {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

impl Postgres {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = script(&["start", dir.path().to_str().unwrap()]);
        Self { dir, url }
    }

    /// A database of its own on this server (each region of a test has one), and its URL.
    pub fn database(&self, name: &str) -> String {
        self.client().batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        self.url.replace("/postgres", &format!("/{name}"))
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh")).args(["destroy", self.dir.path().to_str().unwrap()]).output();
    }
}

/// Every row of an ad-metrics table as the contract's JSON values, by record_uuid.
pub fn metrics_table(url: &str, table: &str) -> std::collections::BTreeMap<uuid::Uuid, adsproc::contract::outputs::AdMetric> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.query(
        &format!(
            "SELECT record_uuid, region, ad_id, campaign_id, advertiser_id, (extract(epoch from window_start) * 1000)::bigint, \
             (extract(epoch from window_end) * 1000)::bigint, impressions, clicks FROM {table}"
        ),
        &[],
    )
    .unwrap()
    .into_iter()
    .map(|r| {
        let m = adsproc::contract::outputs::AdMetric {
            record_uuid: r.get(0),
            region: r.get::<_, String>(1).into(),
            ad_id: r.get::<_, String>(2).into(),
            campaign_id: r.get::<_, Option<String>>(3).map(Into::into),
            advertiser_id: r.get::<_, Option<String>>(4).map(Into::into),
            window_start: r.get(5),
            window_end: r.get(6),
            impressions: r.get(7),
            clicks: r.get(8),
        };
        (m.record_uuid, m)
    })
    .collect()
}
