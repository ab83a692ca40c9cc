//! The attribution job's definition (`jobs/attribution.toml`).

use std::time::Duration;

use serde::Deserialize;

use crate::contract::time::MINUTE_MS;
use crate::core::ad_event_rules::{AdEventRules, ValidationSection};
use crate::core::config::{check_name, ms, ConfigError};

/// The job file shipped in the repository, compiled in as the default.
pub const DEFAULT_JOB_FILE: &str = include_str!("../../../jobs/attribution.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    job: JobSection,
    orders: OrdersSection,
    ad_events: ValidationSection,
    attribution: AttributionSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobSection {
    name: String,
    orders_topic: String,
    ad_events_topic: String,
    output_table: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrdersSection {
    #[serde(with = "humantime_serde")]
    max_future: Duration,
    #[serde(with = "humantime_serde")]
    max_past: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttributionSection {
    #[serde(with = "humantime_serde")]
    click_window: Duration,
    #[serde(with = "humantime_serde")]
    impression_window: Duration,
    #[serde(with = "humantime_serde")]
    join_wait: Duration,
}

/// The rules of the attribution job, all times in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributionRules {
    pub orders_topic: String,
    pub ad_events_topic: String,
    pub output_table: String,
    /// An order's `order_time` may be this far after its ingest time...
    pub order_max_future_ms: i64,
    /// ...and this far before it; also how long an order's state outlives its latest
    /// order_time.
    pub order_max_past_ms: i64,
    /// When an ad event is valid (the aggregation job's rules).
    pub ad_events: AdEventRules,
    pub click_window_ms: i64,
    pub impression_window_ms: i64,
    pub join_wait_ms: i64,
}

impl AttributionRules {
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let f: JobFile = toml::from_str(text)?;
        check_name(&f.job.name, "attribution")?;
        let rules = Self {
            orders_topic: f.job.orders_topic,
            ad_events_topic: f.job.ad_events_topic,
            output_table: f.job.output_table,
            order_max_future_ms: ms(f.orders.max_future),
            order_max_past_ms: ms(f.orders.max_past),
            ad_events: AdEventRules::from_section(f.ad_events, "ad_events")?,
            click_window_ms: ms(f.attribution.click_window),
            impression_window_ms: ms(f.attribution.impression_window),
            join_wait_ms: ms(f.attribution.join_wait),
        };
        if rules.orders_topic == rules.ad_events_topic {
            return Err(ConfigError::Rule("job.orders_topic and job.ad_events_topic must differ".into()));
        }
        if rules.order_max_past_ms < MINUTE_MS {
            return Err(ConfigError::Rule("orders.max_past must be at least 1m".into()));
        }
        if rules.click_window_ms <= 0 || rules.impression_window_ms <= 0 {
            return Err(ConfigError::Rule("attribution.click_window and attribution.impression_window must be positive".into()));
        }
        Ok(rules)
    }

    pub fn defaults() -> Self {
        Self::from_toml(DEFAULT_JOB_FILE).expect("the shipped job file is valid")
    }

    /// The longer of the two attribution windows: how far before an order its ad events are
    /// looked for.
    pub fn longest_window_ms(&self) -> i64 {
        self.click_window_ms.max(self.impression_window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::time::{DAY_MS, HOUR_MS};

    #[test]
    fn shipped_defaults_are_the_contracts() {
        let r = AttributionRules::defaults();
        assert_eq!((r.orders_topic.as_str(), r.ad_events_topic.as_str(), r.output_table.as_str()), ("orders", "ad-events", "attributed-orders"));
        assert_eq!(r.order_max_future_ms, 5 * MINUTE_MS);
        assert_eq!(r.order_max_past_ms, 7 * DAY_MS);
        assert_eq!(r.click_window_ms, 7 * DAY_MS);
        assert_eq!(r.impression_window_ms, 24 * HOUR_MS);
        assert_eq!(r.join_wait_ms, MINUTE_MS);
    }

    /// "The messages of ad-events that the aggregation job counts as valid": the shipped files
    /// agree on when an ad event is valid.
    #[test]
    fn ad_events_are_valid_by_the_aggregation_jobs_rules() {
        let aggregation = crate::jobs::aggregation::rules::AggregationRules::defaults();
        assert_eq!(AttributionRules::defaults().ad_events, aggregation.ad_events);
    }

    #[test]
    fn rules_are_checked_with_clear_errors() {
        let typo = DEFAULT_JOB_FILE.replace("join_wait = ", "join_wiat = ");
        assert!(AttributionRules::from_toml(&typo).unwrap_err().to_string().contains("join_wiat"));
        let other = DEFAULT_JOB_FILE.replace("name = \"attribution\"", "name = \"aggregation\"");
        assert!(AttributionRules::from_toml(&other).unwrap_err().to_string().contains("must define 'attribution'"));
        let same = DEFAULT_JOB_FILE.replace("orders_topic = \"orders\"", "orders_topic = \"ad-events\"");
        assert!(AttributionRules::from_toml(&same).unwrap_err().to_string().contains("must differ"));
    }
}
