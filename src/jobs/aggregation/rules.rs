//! The aggregation job's definition (`jobs/aggregation.toml`).

use std::time::Duration;

use serde::Deserialize;

use crate::contract::columns as c;
use crate::contract::time::{HOUR_MS, MINUTE_MS};

/// The job file shipped in the repository, compiled in as the default.
pub const DEFAULT_JOB_FILE: &str = include_str!("../../jobs/aggregation.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid job file: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid job file: {0}")]
    Rule(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    job: JobSection,
    validation: ValidationSection,
    dedupe: DedupeSection,
    window: WindowSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobSection {
    name: String,
    input_topic: String,
    output_table: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidationSection {
    required_fields: Vec<String>,
    #[serde(with = "humantime_serde")]
    max_future: Duration,
    #[serde(with = "humantime_serde")]
    max_past: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DedupeSection {
    #[serde(with = "humantime_serde")]
    ttl: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowSection {
    #[serde(with = "humantime_serde")]
    size: Duration,
    #[serde(with = "humantime_serde")]
    out_of_orderness: Duration,
    #[serde(with = "humantime_serde")]
    allowed_lateness: Duration,
}

/// Optional string fields that a job file may additionally require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionalField {
    CampaignId,
    AdvertiserId,
    UserId,
    StoreId,
}

/// The rules of the aggregation job, all times in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregationRules {
    pub input_topic: String,
    pub output_table: String,
    pub also_required: Vec<OptionalField>,
    pub max_future_ms: i64,
    pub max_past_ms: i64,
    pub dedupe_ttl_ms: i64,
    pub window_ms: i64,
    pub out_of_orderness_ms: i64,
    pub allowed_lateness_ms: i64,
}

const ALWAYS_REQUIRED: [&str; 5] = [c::EVENT_ID, c::EVENT_TYPE, c::AD_ID, c::EVENT_TIME, c::REGION];

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl AggregationRules {
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let f: JobFile = toml::from_str(text)?;
        if f.job.name != "aggregation" {
            return Err(ConfigError::Rule(format!("job.name is '{}'; this file must define 'aggregation'", f.job.name)));
        }
        for r in ALWAYS_REQUIRED {
            if !f.validation.required_fields.iter().any(|x| x == r) {
                return Err(ConfigError::Rule(format!(
                    "validation.required_fields must include '{r}': the job cannot key, dedupe or window an event without it"
                )));
            }
        }
        let mut also_required = Vec::new();
        for name in &f.validation.required_fields {
            let field = match name.as_str() {
                n if ALWAYS_REQUIRED.contains(&n) => continue,
                c::CAMPAIGN_ID => OptionalField::CampaignId,
                c::ADVERTISER_ID => OptionalField::AdvertiserId,
                c::USER_ID => OptionalField::UserId,
                c::STORE_ID => OptionalField::StoreId,
                other => return Err(ConfigError::Rule(format!("validation.required_fields names '{other}', which is not an ad-event field"))),
            };
            also_required.push(field);
        }
        let rules = Self {
            input_topic: f.job.input_topic,
            output_table: f.job.output_table,
            also_required,
            max_future_ms: ms(f.validation.max_future),
            max_past_ms: ms(f.validation.max_past),
            dedupe_ttl_ms: ms(f.dedupe.ttl),
            window_ms: ms(f.window.size),
            out_of_orderness_ms: ms(f.window.out_of_orderness),
            allowed_lateness_ms: ms(f.window.allowed_lateness),
        };
        if rules.window_ms < 1_000 || HOUR_MS % rules.window_ms != 0 {
            return Err(ConfigError::Rule("window.size must divide one hour evenly (e.g. 1m, 5m, 1h)".into()));
        }
        // The dedupe state resolves arrivals within one epoch (at most one ingest hour in a
        // backfill) as a set; that is exact only if no TTL expiry happens twice inside one.
        if rules.dedupe_ttl_ms < HOUR_MS {
            return Err(ConfigError::Rule("dedupe.ttl must be at least 1h".into()));
        }
        if rules.max_past_ms < MINUTE_MS {
            return Err(ConfigError::Rule("validation.max_past must be at least 1m".into()));
        }
        Ok(rules)
    }

    pub fn defaults() -> Self {
        Self::from_toml(DEFAULT_JOB_FILE).expect("the shipped job file is valid")
    }

    /// Ingest-time span before `from` whose arrivals can change a dedupe decision for an
    /// event in a window at or after `from` (see docs/backfill.md, "Warm-up").
    pub fn warm_up_ms(&self) -> i64 {
        self.max_future_ms + self.dedupe_ttl_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_defaults_are_the_issue_defaults() {
        let r = AggregationRules::defaults();
        assert_eq!(r.max_future_ms, 5 * MINUTE_MS);
        assert_eq!(r.max_past_ms, 7 * 24 * HOUR_MS);
        assert_eq!(r.dedupe_ttl_ms, 24 * HOUR_MS);
        assert_eq!(r.window_ms, MINUTE_MS);
        assert_eq!(r.out_of_orderness_ms, 10_000);
        assert_eq!(r.allowed_lateness_ms, 10 * MINUTE_MS);
        assert!(r.also_required.is_empty());
    }

    #[test]
    fn rules_are_checked_with_clear_errors() {
        let no_region = DEFAULT_JOB_FILE.replace(", \"region\"]", "]");
        let e = AggregationRules::from_toml(&no_region).unwrap_err().to_string();
        assert!(e.contains("must include 'region'"), "{e}");
        let typo = DEFAULT_JOB_FILE.replace("ttl = ", "tll = ");
        let e = AggregationRules::from_toml(&typo).unwrap_err().to_string();
        assert!(e.contains("tll"), "{e}");
        let odd = DEFAULT_JOB_FILE.replace("size = \"1m\"", "size = \"7m\"");
        assert!(AggregationRules::from_toml(&odd).is_err());
    }
}
