use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use super::memory::{MemoryArchive, MemorySink};
use crate::contract::format::decode;
use crate::contract::outputs::DeadLetter;
use crate::contract::raw::RawMessage;
use crate::contract::time::{floor_to, parse_rfc3339, readable, HOUR_MS};
use crate::core::job::{Job, JobAudit, OutputRecord};
use crate::jobs::{with_job, JobVisitor};
use crate::runtime::backfill::{self, ArchiveSource, BackfillOptions};
use crate::runtime::progress::Silent;
use crate::runtime::stream::driver::{Source, StreamDriver};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    description: String,
    /// The job the scenario runs (default: aggregation).
    #[serde(default = "default_job")]
    job: String,
    from: String,
    to: String,
    #[serde(default)]
    complete: bool,
    /// Messages per partition per poll in the stream feed.
    #[serde(default = "default_poll")]
    poll_size: usize,
    /// Replaces lines of the job's default job file, e.g. `allowed_lateness = "1m"`.
    #[serde(default)]
    job_overrides: Vec<String>,
}

fn default_job() -> String {
    "aggregation".into()
}

fn default_poll() -> usize {
    2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    /// The topic (default: the job's first input).
    #[serde(default)]
    topic: Option<String>,
    partition: i32,
    offset: i64,
    /// RFC 3339 or epoch ms.
    timestamp: serde_json::Value,
    /// A JSON value sent as its text, or a string sent as raw bytes (for non-JSON messages).
    value: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedDead {
    /// The topic of the rejected message (default: the job's first dead-lettered input).
    #[serde(default)]
    topic: Option<String>,
    partition: i32,
    offset: i64,
    reason: String,
    /// The reason the backfill gives when the archive cannot carry what the stream saw: a
    /// wrongly typed field is archived as null. `not_json` messages are never archived.
    #[serde(default)]
    archived_reason: Option<String>,
}

/// A recorded scenario: messages, a range and settings, and the expected output.
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub job: String,
    /// The job file, with the scenario's overrides applied.
    pub job_file: String,
    pub from: i64,
    pub to: i64,
    pub complete: bool,
    pub poll_size: usize,
    /// (topic, message); a message without a topic is of the job's first input.
    pub messages: Vec<(Option<String>, RawMessage)>,
    /// Per output table, the expected records in their readable form (see
    /// [`OutputRecord::readable`]) as canonical JSON text.
    expected: BTreeMap<String, BTreeSet<String>>,
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

/// A readable record as compared: canonical JSON text, RFC 3339 times written as
/// [`readable`] writes them.
fn canonical(mut v: serde_json::Value) -> String {
    if let serde_json::Value::Object(m) = &mut v {
        for value in m.values_mut() {
            if let Some(t) = value.as_str().and_then(|s| parse_rfc3339(s).ok()) {
                *value = serde_json::Value::String(readable(t));
            }
        }
    }
    v.to_string()
}

/// The job's default job file with `overrides` (`key = value` lines) in place of its lines.
fn overridden(default: &str, overrides: &[String]) -> anyhow::Result<String> {
    let mut job = default.to_string();
    for o in overrides {
        let key = o.split('=').next().unwrap_or("").trim();
        let Some(line) = job.lines().find(|l| l.trim_start().starts_with(&format!("{key} ="))) else {
            bail!("job override '{o}': the job file has no '{key}' setting");
        };
        job = job.replace(line, o);
    }
    Ok(job)
}

struct DefaultJobFile;

impl JobVisitor for DefaultJobFile {
    type Output = (&'static str, Vec<String>);
    fn visit<J: Job>(self) -> Self::Output {
        let rules = J::parse_rules(J::DEFAULT_JOB_FILE).expect("the shipped job file is valid");
        (J::DEFAULT_JOB_FILE, J::outputs(&rules).into_iter().map(|t| t.name).collect())
    }
}

impl Scenario {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(dir.join("scenario.toml")).with_context(|| format!("{} is not a scenario: no scenario.toml", dir.display()))?;
        let f: ScenarioFile = toml::from_str(&text).with_context(|| format!("{}/scenario.toml", dir.display()))?;
        let (default_file, tables) =
            with_job(&f.job, DefaultJobFile).with_context(|| format!("{}/scenario.toml: no job is named {:?}", dir.display(), f.job))?;
        let job_file = overridden(default_file, &f.job_overrides)?;
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
            messages.push((l.topic, RawMessage { partition: l.partition, offset: l.offset, timestamp, payload }));
        }
        let mut expected = BTreeMap::new();
        for table in tables {
            let lines: Vec<serde_json::Value> = read_jsonl(&dir.join(format!("expected/{table}.jsonl")))?;
            expected.insert(table, lines.into_iter().map(canonical).collect());
        }
        Ok(Self {
            name,
            description: f.description,
            job: f.job,
            job_file,
            from: parse_rfc3339(&f.from).map_err(anyhow::Error::msg)?,
            to: parse_rfc3339(&f.to).map_err(anyhow::Error::msg)?,
            complete: f.complete,
            poll_size: f.poll_size.max(1),
            messages,
            expected,
            expected_dead: read_jsonl(&dir.join("expected/dlq.jsonl"))?.into_iter().collect(),
        })
    }

    /// The messages of each of the job's inputs (by input index), in offset order per
    /// partition.
    pub(crate) fn by_input<J: Job>(&self, rules: &J::Rules) -> anyhow::Result<Vec<Vec<RawMessage>>> {
        let inputs = J::inputs(rules);
        let mut out: Vec<Vec<RawMessage>> = inputs.iter().map(|_| Vec::new()).collect();
        for (topic, m) in &self.messages {
            let i = match topic {
                None => 0,
                Some(t) => inputs.iter().position(|i| &i.topic == t).with_context(|| {
                    format!("scenario {}: a message of topic {t:?}, which the {} job does not read", self.name, J::NAME)
                })?,
            };
            out[i].push(m.clone());
        }
        for msgs in &mut out {
            msgs.sort_by_key(|m| (m.partition, m.offset));
        }
        Ok(out)
    }

    /// The archive the contract's archiver would have written of each input: JSON objects
    /// only, by ingest hour, one file per partition.
    fn archives<J: Job>(&self, rules: &J::Rules) -> anyhow::Result<Vec<MemoryArchive>> {
        let inputs = J::inputs(rules);
        let mut archives = Vec::new();
        for (input, msgs) in inputs.iter().zip(self.by_input::<J>(rules)?) {
            let mut by_file: BTreeMap<(i64, i32), Vec<RawMessage>> = BTreeMap::new();
            for m in msgs {
                by_file.entry((floor_to(m.timestamp, HOUR_MS), m.partition)).or_default().push(m);
            }
            let mut archive = MemoryArchive::new(input.format);
            for ((hour, p), msgs) in by_file {
                let rows = input.format.to_archive_rows(&decode(input.format, &msgs));
                if rows.num_rows() > 0 {
                    archive.hours.entry(hour).or_default().insert(format!("p{p}.parquet"), rows);
                }
            }
            archives.push(archive);
        }
        Ok(archives)
    }

    /// Polls as a consumer would fetch them: per partition in offset order, `poll_size`
    /// messages of each partition in turn (the partitions of every input, visited in order, or
    /// reversed), one poll per input a round.
    fn polls<J: Job>(&self, rules: &J::Rules, reverse: bool) -> anyhow::Result<Vec<(usize, Vec<RawMessage>)>> {
        let mut queues: Vec<(usize, std::collections::VecDeque<RawMessage>)> = Vec::new();
        for (input, msgs) in self.by_input::<J>(rules)?.into_iter().enumerate() {
            let mut per_partition: BTreeMap<i32, Vec<RawMessage>> = BTreeMap::new();
            for m in msgs {
                per_partition.entry(m.partition).or_default().push(m);
            }
            queues.extend(per_partition.into_values().map(|v| (input, v.into())));
        }
        if reverse {
            queues.reverse();
        }
        let mut polls = Vec::new();
        while queues.iter().any(|(_, q)| !q.is_empty()) {
            let mut round: BTreeMap<usize, Vec<RawMessage>> = BTreeMap::new();
            for (input, q) in queues.iter_mut() {
                for _ in 0..self.poll_size {
                    if let Some(m) = q.pop_front() {
                        round.entry(*input).or_default().push(m);
                    }
                }
            }
            let mut round: Vec<(usize, Vec<RawMessage>)> = round.into_iter().collect();
            if reverse {
                round.reverse();
            }
            polls.extend(round);
        }
        Ok(polls)
    }

    /// The readable form of what a feed produced, as compared with the expected records.
    fn compare<R: OutputRecord>(&self, tables: &[String], dead_topic: &str, p: &Produced<R>, archived_only: bool) -> Vec<String> {
        let mut diffs = Vec::new();
        // The last value of each record_uuid, as an upsert store keeps it.
        let mut last: BTreeMap<uuid::Uuid, &R> = BTreeMap::new();
        for r in &p.records {
            if r.record_uuid() != r.derived_uuid() {
                diffs.push(format!("record_uuid {} of {} should be {}", r.record_uuid(), r.readable(), r.derived_uuid()));
            }
            last.insert(r.record_uuid(), r);
        }
        for (t, table) in tables.iter().enumerate() {
            let actual: BTreeSet<String> = last.values().filter(|r| r.table() == t).map(|r| canonical(r.readable())).collect();
            let expected = &self.expected[table];
            for e in expected.difference(&actual) {
                diffs.push(format!("- {table} expected {e}"));
            }
            for a in actual.difference(expected) {
                diffs.push(format!("+ {table} actual   {a}"));
            }
        }
        let actual_dead: BTreeSet<ExpectedDead> = p
            .dead
            .iter()
            .map(|d| ExpectedDead {
                topic: Some(d.topic.to_string()),
                partition: d.partition.unwrap_or(-1),
                offset: d.offset.unwrap_or(-1),
                reason: d.reason_code().to_string(),
                archived_reason: None,
            })
            .collect();
        let expected_dead: BTreeSet<ExpectedDead> = self
            .expected_dead
            .iter()
            .filter(|d| !(archived_only && d.reason == "not_json"))
            .map(|d| ExpectedDead {
                topic: Some(d.topic.clone().unwrap_or_else(|| dead_topic.to_string())),
                reason: if archived_only { d.archived_reason.clone().unwrap_or_else(|| d.reason.clone()) } else { d.reason.clone() },
                archived_reason: None,
                ..d.clone()
            })
            .collect();
        for e in expected_dead.difference(&actual_dead) {
            diffs.push(format!("- dead letter expected {} p{} o{} {}", e.topic.as_deref().unwrap_or(""), e.partition, e.offset, e.reason));
        }
        for a in actual_dead.difference(&expected_dead) {
            let full = p
                .dead
                .iter()
                .find(|d| d.partition == Some(a.partition) && d.offset == Some(a.offset) && Some(&*d.topic) == a.topic.as_deref())
                .map(|d| d.reason.as_str())
                .unwrap_or("");
            diffs.push(format!("+ dead letter actual   {} p{} o{} {full}", a.topic.as_deref().unwrap_or(""), a.partition, a.offset));
        }
        if !p.balanced {
            diffs.push(format!("audit does not balance: {}", p.audit));
        }
        diffs
    }
}

/// What one feed produced.
pub(crate) struct Produced<R> {
    pub records: Vec<R>,
    pub dead: Vec<DeadLetter>,
    pub balanced: bool,
    pub audit: String,
}

impl<R: OutputRecord> Produced<R> {
    pub(crate) fn new<A: JobAudit>(records: Vec<R>, dead: Vec<DeadLetter>, audit: &A) -> Self {
        Self { records, dead, balanced: audit.balances(), audit: audit.to_string() }
    }

    /// The stream job emits every record and every dead letter; compare the scenario's range.
    pub(crate) fn in_range(mut self, s: &Scenario) -> Self {
        self.records.retain(|r| (s.from..s.to).contains(&r.partition_time()));
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

fn run_backfill_feed<J: Job>(s: &Scenario, rules: &J::Rules) -> anyhow::Result<Produced<J::Record>> {
    let archives = s.archives::<J>(rules)?;
    let sources: Vec<&dyn ArchiveSource> = archives.iter().map(|a| a as &dyn ArchiveSource).collect();
    let mut sink = MemorySink::default();
    let options = BackfillOptions::new(s.from, s.to, s.complete, 2);
    let report = backfill::run::<J>(rules, &sources, &mut sink, &options, &Silent)?;
    Ok(Produced::new(sink.records, sink.dead, &report.audit))
}

fn run_stream_feed<J: Job>(s: &Scenario, rules: &J::Rules, reverse: bool) -> anyhow::Result<Produced<J::Record>> {
    let sources: BTreeSet<Source> = s
        .by_input::<J>(rules)?
        .iter()
        .enumerate()
        .flat_map(|(i, msgs)| msgs.iter().map(move |m| Source::new(i, m.partition)))
        .collect();
    let mut driver = StreamDriver::<J>::new(rules.clone(), sources);
    let (records, dead) = driver.replay_inputs(s.polls::<J>(rules, reverse)?);
    Ok(Produced::new(records, dead, &driver.audit()).in_range(s))
}

struct RunScenario<'a> {
    scenario: &'a Scenario,
    brokers: Option<&'a str>,
}

impl JobVisitor for RunScenario<'_> {
    type Output = anyhow::Result<Vec<(String, Vec<String>)>>;
    fn visit<J: Job>(self) -> Self::Output {
        let s = self.scenario;
        let rules = J::parse_rules(&s.job_file).with_context(|| format!("scenario {}: the job file with its overrides", s.name))?;
        let tables: Vec<String> = J::outputs(&rules).into_iter().map(|t| t.name).collect();
        let dead_topic = J::inputs(&rules).into_iter().find(|i| i.dead_letters).map(|i| i.topic).unwrap_or_default();
        let mut feeds = Vec::new();
        let backfill = run_backfill_feed::<J>(s, &rules)?;
        feeds.push(("backfill".to_string(), s.compare(&tables, &dead_topic, &backfill, true)));
        if !s.complete {
            for (name, reverse) in [("stream", false), ("stream, partitions reversed", true)] {
                let p = run_stream_feed::<J>(s, &rules, reverse)?;
                feeds.push((name.to_string(), s.compare(&tables, &dead_topic, &p, false)));
            }
            if let Some(b) = self.brokers {
                let p = super::kafka_feed::run_kafka_feed::<J>(s, &rules, b).with_context(|| format!("scenario {} on Kafka at {b}", s.name))?;
                feeds.push(("stream on Kafka".to_string(), s.compare(&tables, &dead_topic, &p.in_range(s), false)));
            }
        }
        Ok(feeds)
    }
}

/// Runs a scenario through every feed and compares each with the expected output. With
/// `brokers`, also through the stream runtime against that Kafka broker.
pub fn run_scenario(dir: &Path, brokers: Option<&str>) -> anyhow::Result<Outcome> {
    let s = Scenario::load(dir)?;
    let feeds = with_job(&s.job, RunScenario { scenario: &s, brokers }).expect("the job was found when the scenario loaded")?;
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
