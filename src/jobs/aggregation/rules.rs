//! The aggregation job's definition (`jobs/aggregation.toml`).

use std::time::Duration;

use serde::Deserialize;

use crate::contract::time::HOUR_MS;
use crate::core::ad_event_rules::{AdEventRules, ValidationSection};
use crate::core::config::{check_name, ms, ConfigError};

/// The job file shipped in the repository, compiled in as the default.
pub const DEFAULT_JOB_FILE: &str = include_str!("../../../jobs/aggregation.toml");

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

/// The rules of the aggregation job, all times in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregationRules {
    pub input_topic: String,
    pub output_table: String,
    /// When an ad event is valid (shared with the attribution job's candidates).
    pub ad_events: AdEventRules,
    pub dedupe_ttl_ms: i64,
    pub window_ms: i64,
    pub out_of_orderness_ms: i64,
    pub allowed_lateness_ms: i64,
}

impl AggregationRules {
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let f: JobFile = toml::from_str(text)?;
        check_name(&f.job.name, "aggregation")?;
        let rules = Self {
            input_topic: f.job.input_topic,
            output_table: f.job.output_table,
            ad_events: AdEventRules::from_section(f.validation, "validation")?,
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
        Ok(rules)
    }

    pub fn defaults() -> Self {
        Self::from_toml(DEFAULT_JOB_FILE).expect("the shipped job file is valid")
    }

    /// Ingest-time span before `from` whose arrivals can change a dedupe decision for an
    /// event in a window at or after `from` (see docs/backfill.md, "Warm-up").
    pub fn warm_up_ms(&self) -> i64 {
        self.ad_events.max_future_ms + self.dedupe_ttl_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::time::MINUTE_MS;

    #[test]
    fn shipped_defaults_are_the_issue_defaults() {
        let r = AggregationRules::defaults();
        assert_eq!(r.ad_events.max_future_ms, 5 * MINUTE_MS);
        assert_eq!(r.ad_events.max_past_ms, 7 * 24 * HOUR_MS);
        assert_eq!(r.dedupe_ttl_ms, 24 * HOUR_MS);
        assert_eq!(r.window_ms, MINUTE_MS);
        assert_eq!(r.out_of_orderness_ms, 10_000);
        assert_eq!(r.allowed_lateness_ms, 10 * MINUTE_MS);
        assert!(r.ad_events.also_required.is_empty());
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
