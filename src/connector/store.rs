//! Object store locations: `s3://bucket/prefix`, `file:///dir` or a plain directory path.
//!
//! S3 settings come from the usual `AWS_*` environment variables (`AWS_ENDPOINT`,
//! `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`, …) and from `--store-option key=value`, which takes
//! the same keys in lower case (`endpoint=http://127.0.0.1:9000`). Retries are bounded so an
//! unreachable endpoint fails within seconds with the address in the message, instead of
//! retrying for minutes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};

/// A store and the prefix inside it that a URL names.
#[derive(Clone, Debug)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    pub url: String,
}

impl Location {
    pub fn child(&self, rel: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }
}

/// Whether a location string names S3 (and so takes `--store-option`s).
pub fn is_s3(url: &str) -> bool {
    url.starts_with("s3://")
}

/// Opens a location; `options` apply to S3 locations only. `create` makes a missing local directory (for sinks); a missing source
/// directory is an error that says so.
pub fn open(url: &str, options: &[(String, String)], create: bool) -> anyhow::Result<Location> {
    if let Some(rest) = url.strip_prefix("s3://") {
        if rest.is_empty() || rest.starts_with('/') {
            bail!("'{url}' names no bucket: use s3://<bucket>/<prefix>");
        }
        // Timeouts go in as settings, not as a ClientOptions value, which would replace the
        // client settings (allow_http, …) that the environment or --store-option give.
        let mut b = AmazonS3Builder::from_env()
            .with_url(url)
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), "5s")
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "120s");
        for (k, v) in options {
            let key: AmazonS3ConfigKey = k
                .to_ascii_lowercase()
                .parse()
                .with_context(|| format!("--store-option {k}: not an S3 setting (e.g. endpoint, region, allow_http, access_key_id)"))?;
            b = b.with_config(key, v.clone());
        }
        let b = b
            .with_retry(RetryConfig {
                backoff: BackoffConfig { init_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(2), base: 2.0 },
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
            });
        let store = b.build().with_context(|| format!("cannot configure S3 for '{url}'"))?;
        let prefix = Path::parse(rest.split_once('/').map(|(_, p)| p).unwrap_or(""))
            .with_context(|| format!("'{url}' has an invalid path"))?;
        return Ok(Location { store: Arc::new(store), prefix, url: url.to_string() });
    }
    if url.contains("://") && !url.starts_with("file://") {
        bail!("'{url}': unsupported URL scheme; use s3://bucket/prefix, file:///dir or a directory path");
    }
    let dir = std::path::PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
    if !dir.exists() {
        if create {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
        } else {
            bail!("directory {} does not exist", dir.display());
        }
    }
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let store = LocalFileSystem::new_with_prefix(&dir).with_context(|| format!("cannot open {}", dir.display()))?;
    Ok(Location { store: Arc::new(store), prefix: Path::default(), url: url.to_string() })
}

/// The async runtime object stores run on: two workers, for the round trips of S3 and the
/// blocking file operations of a local directory.
pub fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// Parses `key=value`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("'{s}' is not key=value"))
}
