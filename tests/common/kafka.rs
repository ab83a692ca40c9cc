//! A real Kafka-protocol broker for tests (Nisshi, via scripts/broker.sh), the adsproc binary
//! as a child process, and an upsert view of an output topic read read_committed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use adsproc::contract::outputs::{AdMetric, DeadLetter};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

pub struct Broker {
    pub dir: tempfile::TempDir,
    pub addr: String,
}

fn script(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new(root.join("scripts/broker.sh")).args(args).output().expect("run scripts/broker.sh");
    assert!(o.status.success(), "scripts/broker.sh {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

impl Broker {
    /// `storage`: "memory" or "sqlite" (survives [`restart`](Self::restart)).
    pub fn start(storage: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = script(&["start", dir.path().to_str().unwrap(), storage]);
        Self { dir, addr }
    }

    pub fn restart(&self) {
        let addr = script(&["restart", self.dir.path().to_str().unwrap()]);
        assert_eq!(addr, self.addr);
    }

    /// Stops the broker (until [`restart`](Self::restart)): a region that goes away.
    pub fn stop(&self) {
        script(&["stop", self.dir.path().to_str().unwrap()]);
    }

    /// SIGKILLs the broker and starts it again on its port and storage: a crash.
    pub fn crash(&self) {
        let addr = script(&["crash", self.dir.path().to_str().unwrap()]);
        assert_eq!(addr, self.addr);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/broker.sh"))
            .args(["stop", self.dir.path().to_str().unwrap()])
            .output();
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_adsproc"))
}

/// Runs adsproc to completion; panics with its output on failure. Returns stdout + stderr.
pub fn adsproc(args: &[&str]) -> String {
    let o = Command::new(bin()).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "adsproc {args:?} failed:\n{text}");
    text
}

/// Starts adsproc in the background, its output to `log`.
pub fn spawn(args: &[&str], log: &Path) -> Child {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(bin()).args(args).stdout(Stdio::from(f.try_clone().unwrap())).stderr(Stdio::from(f)).spawn().unwrap()
}

/// [`spawn`] with environment variables set.
pub fn spawn_with_env(args: &[&str], log: &Path, env: &[(&str, &str)]) -> Child {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(args).envs(env.iter().copied()).stdout(Stdio::from(f.try_clone().unwrap())).stderr(Stdio::from(f));
    cmd.spawn().unwrap()
}

/// Starts `adsproc stream --job <job>` as process `instance` of the default group, with a short
/// checkpoint interval and session timeout (so that a lost process's key groups move within
/// seconds), its output to `<dir>/stream-<instance>.log`.
pub fn stream_process(job: &str, addr: &str, checkpoint: &Path, instance: &str, dir: &Path) -> (Child, PathBuf) {
    let log = dir.join(format!("stream-{instance}.log"));
    let args = [
        "stream", "--job", job, "--brokers", addr, "--checkpoint", checkpoint.to_str().unwrap(), "--checkpoint-interval", "300ms",
        "--instance", instance, "-X", "session.timeout.ms=6000",
    ];
    (spawn(&args, &log), log)
}

/// How many partitions a topic has (0 if it does not exist).
pub fn read_all_partitions(addr: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", addr).set("allow.auto.create.topics", "false").create().unwrap();
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map(|md| md.topics().iter().filter(|t| t.name() == topic && t.error().is_none()).map(|t| t.partitions().len()).sum())
        .unwrap_or(0)
}

/// Every record of a topic, read_committed, in offset order per partition.
pub fn read_all(addr: &str, topic: &str) -> Vec<(i32, i64, Vec<u8>, Vec<u8>)> {
    let settings = adsproc::connector::kafka::KafkaSettings::new(addr, &[]);
    adsproc::connector::kafka::topic_dump::read_to_end(&settings, topic, Duration::from_secs(120)).unwrap()
}

/// What an upsert store keyed by record_uuid keeps of `ad-metrics`: the last value of each key
/// in offset order. Checks that every record is keyed by its own record_uuid.
pub fn metrics_upsert(addr: &str, topic: &str) -> (BTreeMap<String, AdMetric>, usize) {
    let records = read_all(addr, topic);
    let n = records.len();
    let mut last = BTreeMap::new();
    for (_, _, key, value) in records {
        let m: AdMetric = serde_json::from_slice(&value).expect("ad-metrics value is the contract's JSON");
        assert_eq!(String::from_utf8(key).unwrap(), m.record_uuid.to_string(), "keyed by record_uuid");
        last.insert(m.record_uuid.to_string(), m);
    }
    (last, n)
}

pub fn dead_letters(addr: &str, topic: &str) -> BTreeMap<String, DeadLetter> {
    read_all(addr, topic)
        .into_iter()
        .map(|(_, _, k, v)| (String::from_utf8(k).unwrap(), serde_json::from_slice(&v).expect("dlq value is JSON")))
        .collect()
}

/// What an upsert store keyed by record_uuid keeps of an output topic: the last value of each
/// key in offset order (a key is always in one partition), and how many records the topic
/// holds. Checks that every record is keyed by its own record_uuid, derived as documented.
pub fn upsert<R: adsproc::core::job::OutputRecord>(addr: &str, topic: &str) -> (BTreeMap<uuid::Uuid, R>, usize) {
    let records = read_all(addr, topic);
    let n = records.len();
    let mut last = BTreeMap::new();
    for (_, _, key, value) in records {
        let r: R = serde_json::from_slice(&value).unwrap_or_else(|e| panic!("a record of {topic} that is not the contract's JSON: {e}"));
        assert_eq!(String::from_utf8(key).unwrap(), r.record_uuid().to_string(), "keyed by record_uuid");
        assert_eq!(r.record_uuid(), r.derived_uuid(), "the record_uuid its identity derives");
        last.insert(r.record_uuid(), r);
    }
    (last, n)
}

/// Waits until `topic` exists (a producer started in the background creates it).
pub fn wait_for_topic(addr: &str, topic: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read_all_partitions(addr, topic) == 0 {
        assert!(std::time::Instant::now() < deadline, "topic {topic} was not created within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}
