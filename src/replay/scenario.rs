use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use super::memory::{MemoryArchive, MemorySink};
use crate::contract::outputs::{AdMetric, DeadLetter};
use crate::contract::raw::{decode_messages, to_archive_rows, RawMessage};
use crate::contract::record_uuid;
use crate::contract::time::{floor_to, parse_rfc3339, rfc3339, HOUR_MS};
use crate::core::audit::Audit;
use crate::core::config::{AggregationRules, DEFAULT_JOB_FILE};
use crate::runtime::backfill::{self, BackfillOptions};
use crate::runtime::progress::Silent;
use crate::runtime::stream::driver::StreamDriver;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    description: String,
    from: String,
    to: String,
    #[serde(default)]
    complete: bool,
    /// Messages per partition per poll in the stream feed.
    #[serde(default = "default_poll")]
    poll_size: usize,
    /// Replaces lines of the default job file, e.g. `allowed_lateness = "1m"`.
    #[serde(default)]
    job_overrides: Vec<String>,
}

fn default_poll() -> usize {
    2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    partition: i32,
    offset: i64,
    /// RFC 3339 or epoch ms.
    timestamp: serde_json::Value,
    /// A JSON value sent as its text, or a string sent as raw bytes (for non-JSON messages).
    value: serde_json::Value,
}

/// One expected ad-metrics record, written for people: window_start in RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedMetric {
    window_start: String,
    region: String,
    ad_id: String,
    campaign_id: Option<String>,
    advertiser_id: Option<String>,
    impressions: i64,
    clicks: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedDead {
    partition: i32,
    offset: i64,
    reason: String,
    /// The reason the backfill gives when the archive cannot carry what the stream saw: a
    /// wrongly typed field is archived as null. `not_json` messages are never archived.
    #[serde(default)]
    archived_reason: Option<String>,
}

pub struct Scenario {
    pub name: String,
    pub description: String,
    pub rules: AggregationRules,
    pub from: i64,
    pub to: i64,
    pub complete: bool,
    pub poll_size: usize,
    pub messages: Vec<RawMessage>,
    expected_metrics: BTreeSet<ExpectedMetric>,
    expected_dead: BTreeSet<ExpectedDead>,
}

fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Vec<T>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with("//"))
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}: invalid line", path.display(), i + 1)))
        .collect()
}

impl Scenario {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(dir.join("scenario.toml")).with_context(|| format!("{} is not a scenario: no scenario.toml", dir.display()))?;
        let f: ScenarioFile = toml::from_str(&text).with_context(|| format!("{}/scenario.toml", dir.display()))?;
        let mut job = DEFAULT_JOB_FILE.to_string();
        for o in &f.job_overrides {
            let key = o.split('=').next().unwrap_or("").trim();
            let Some(line) = job.lines().find(|l| l.trim_start().starts_with(&format!("{key} ="))) else {
                bail!("job override '{o}': the job file has no '{key}' setting");
            };
            job = job.replace(line, o);
        }
        let rules = AggregationRules::from_toml(&job)?;
        let mut messages = Vec::new();
        for l in read_jsonl::<InputLine>(&dir.join("input.jsonl"))? {
            let timestamp = match &l.timestamp {
                serde_json::Value::Number(n) => n.as_i64().context("timestamp must be an integer")?,
                serde_json::Value::String(s) => parse_rfc3339(s).map_err(anyhow::Error::msg)?,
                other => bail!("timestamp {other} is neither RFC 3339 nor epoch ms"),
            };
            let payload = match l.value {
                serde_json::Value::String(s) => s.into_bytes(),
                v => v.to_string().into_bytes(),
            };
            messages.push(RawMessage { partition: l.partition, offset: l.offset, timestamp, payload });
        }
        Ok(Self {
            name,
            description: f.description,
            rules,
            from: parse_rfc3339(&f.from).map_err(anyhow::Error::msg)?,
            to: parse_rfc3339(&f.to).map_err(anyhow::Error::msg)?,
            complete: f.complete,
            poll_size: f.poll_size.max(1),
            messages,
            expected_metrics: read_jsonl(&dir.join("expected/ad-metrics.jsonl"))?.into_iter().collect(),
            expected_dead: read_jsonl(&dir.join("expected/dlq.jsonl"))?.into_iter().collect(),
        })
    }

    /// The archive the contract's archiver would have written: JSON objects only, by ingest
    /// hour, one file per partition.
    fn archive(&self) -> MemoryArchive {
        let mut by_file: BTreeMap<(i64, i32), Vec<RawMessage>> = BTreeMap::new();
        for m in &self.messages {
            by_file.entry((floor_to(m.timestamp, HOUR_MS), m.partition)).or_default().push(m.clone());
        }
        let mut archive = MemoryArchive::default();
        for ((hour, p), mut msgs) in by_file {
            msgs.sort_by_key(|m| m.offset);
            let rows = to_archive_rows(&decode_messages(&msgs));
            if rows.num_rows() > 0 {
                archive.hours.entry(hour).or_default().insert(format!("p{p}.parquet"), rows);
            }
        }
        archive
    }

    /// Polls as a consumer would fetch them: per partition in offset order, `poll_size`
    /// messages of each partition in turn, partitions visited in `order`.
    fn polls(&self, reverse: bool) -> Vec<Vec<RawMessage>> {
        let mut per_partition: BTreeMap<i32, Vec<RawMessage>> = BTreeMap::new();
        for m in &self.messages {
            per_partition.entry(m.partition).or_default().push(m.clone());
        }
        let mut queues: Vec<std::collections::VecDeque<RawMessage>> = per_partition
            .into_values()
            .map(|mut v| {
                v.sort_by_key(|m| m.offset);
                v.into()
            })
            .collect();
        if reverse {
            queues.reverse();
        }
        let mut polls = Vec::new();
        while queues.iter().any(|q| !q.is_empty()) {
            let mut poll = Vec::new();
            for q in queues.iter_mut() {
                for _ in 0..self.poll_size {
                    if let Some(m) = q.pop_front() {
                        poll.push(m);
                    }
                }
            }
            polls.push(poll);
        }
        polls
    }
}

/// What one feed produced.
pub(crate) struct Produced {
    pub metrics: Vec<AdMetric>,
    pub dead: Vec<DeadLetter>,
    pub audit: Audit,
}

impl Produced {
    /// The stream job emits every window and every dead letter; compare the scenario's range.
    fn in_range(mut self, s: &Scenario) -> Self {
        self.metrics.retain(|m| (s.from..s.to).contains(&m.window_start));
        self.dead.retain(|d| d.kafka_timestamp.is_none_or(|t| (s.from..s.to).contains(&t)));
        self
    }
}

pub struct Outcome {
    pub name: String,
    pub description: String,
    /// (feed, differences); empty differences mean the feed matched.
    pub feeds: Vec<(String, Vec<String>)>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.feeds.iter().all(|(_, d)| d.is_empty())
    }
}

fn run_backfill_feed(s: &Scenario) -> anyhow::Result<Produced> {
    let archive = s.archive();
    let mut sink = MemorySink::default();
    let options = BackfillOptions { from: s.from, to: s.to, complete: s.complete, parallelism: 2, max_rate: None };
    let report = backfill::run(&s.rules, &archive, &mut sink, &options, &Silent)?;
    Ok(Produced { metrics: sink.metrics, dead: sink.dead, audit: report.audit })
}

fn run_stream_feed(s: &Scenario, reverse: bool) -> Produced {
    let partitions: BTreeSet<i32> = s.messages.iter().map(|m| m.partition).collect();
    let mut driver = StreamDriver::new(s.rules.clone(), partitions);
    let (metrics, dead) = driver.replay(s.polls(reverse));
    Produced { metrics, dead, audit: driver.audit() }.in_range(s)
}

fn compare(s: &Scenario, p: &Produced, archived_only: bool) -> Vec<String> {
    let mut diffs = Vec::new();
    // The last value of each record_uuid, as an upsert store keeps it.
    let mut last: BTreeMap<uuid::Uuid, &AdMetric> = BTreeMap::new();
    for m in &p.metrics {
        let want = record_uuid::ad_metric(&m.region, &m.ad_id, m.window_start);
        if m.record_uuid != want {
            diffs.push(format!("record_uuid {} of {}/{}/{} should be {want}", m.record_uuid, m.region, m.ad_id, rfc3339(m.window_start)));
        }
        last.insert(m.record_uuid, m);
    }
    let actual: BTreeSet<ExpectedMetric> = last
        .values()
        .map(|m| ExpectedMetric {
            window_start: rfc3339(m.window_start).replace(".000Z", "Z"),
            region: m.region.to_string(),
            ad_id: m.ad_id.to_string(),
            campaign_id: m.campaign_id.as_deref().map(str::to_string),
            advertiser_id: m.advertiser_id.as_deref().map(str::to_string),
            impressions: m.impressions,
            clicks: m.clicks,
        })
        .collect();
    let expected: BTreeSet<ExpectedMetric> = s
        .expected_metrics
        .iter()
        .map(|e| ExpectedMetric { window_start: parse_rfc3339(&e.window_start).map(|t| rfc3339(t).replace(".000Z", "Z")).unwrap_or_else(|_| e.window_start.clone()), ..e.clone() })
        .collect();
    for e in expected.difference(&actual) {
        diffs.push(format!("- ad-metrics expected {}", metric_line(e)));
    }
    for a in actual.difference(&expected) {
        diffs.push(format!("+ ad-metrics actual   {}", metric_line(a)));
    }
    let actual_dead: BTreeSet<ExpectedDead> = p
        .dead
        .iter()
        .map(|d| ExpectedDead {
            partition: d.partition.unwrap_or(-1),
            offset: d.offset.unwrap_or(-1),
            reason: d.reason_code().to_string(),
            archived_reason: None,
        })
        .collect();
    let expected_dead: BTreeSet<ExpectedDead> = s
        .expected_dead
        .iter()
        .filter(|d| !(archived_only && d.reason == "not_json"))
        .map(|d| ExpectedDead {
            reason: if archived_only { d.archived_reason.clone().unwrap_or_else(|| d.reason.clone()) } else { d.reason.clone() },
            archived_reason: None,
            ..d.clone()
        })
        .collect();
    for e in expected_dead.difference(&actual_dead) {
        diffs.push(format!("- dead letter expected p{} o{} {}", e.partition, e.offset, e.reason));
    }
    for a in actual_dead.difference(&expected_dead) {
        let full = p.dead.iter().find(|d| d.partition == Some(a.partition) && d.offset == Some(a.offset)).map(|d| d.reason.as_str()).unwrap_or("");
        diffs.push(format!("+ dead letter actual   p{} o{} {full}", a.partition, a.offset));
    }
    if !p.audit.balances() {
        diffs.push(format!("audit does not balance: {}", p.audit));
    }
    diffs
}

fn metric_line(m: &ExpectedMetric) -> String {
    format!(
        "{} {} {} impressions={} clicks={} campaign={} advertiser={}",
        m.window_start,
        m.region,
        m.ad_id,
        m.impressions,
        m.clicks,
        m.campaign_id.as_deref().unwrap_or("null"),
        m.advertiser_id.as_deref().unwrap_or("null")
    )
}

/// Runs a scenario through every feed and compares each with the expected output. With
/// `brokers`, also through the stream runtime against that Kafka broker.
pub fn run_scenario(dir: &Path, brokers: Option<&str>) -> anyhow::Result<Outcome> {
    let s = Scenario::load(dir)?;
    let mut feeds = Vec::new();
    let backfill = run_backfill_feed(&s)?;
    feeds.push(("backfill".to_string(), compare(&s, &backfill, true)));
    if !s.complete {
        for (name, reverse) in [("stream", false), ("stream, partitions reversed", true)] {
            let p = run_stream_feed(&s, reverse);
            feeds.push((name.to_string(), compare(&s, &p, false)));
        }
        if let Some(b) = brokers {
            let p = super::kafka_feed::run_kafka_feed(&s, b).with_context(|| format!("scenario {} on Kafka at {b}", s.name))?;
            feeds.push(("stream on Kafka".to_string(), compare(&s, &p.in_range(&s), false)));
        }
    }
    Ok(Outcome { name: s.name.clone(), description: s.description.clone(), feeds })
}

/// Scenario directories under `root` (those holding a scenario.toml), sorted.
pub fn scenarios_under(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if root.join("scenario.toml").exists() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("cannot read {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("scenario.toml").exists())
        .collect();
    out.sort();
    Ok(out)
}
