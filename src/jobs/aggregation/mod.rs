//! The aggregation job: validate, dedupe by `event_id` with keyed state and a TTL, and count
//! distinct impressions and clicks per (region, ad_id, one-minute event-time window).
//! Rules: `jobs/aggregation.toml`; semantics: `docs/semantics.md`.

pub mod audit;
pub mod operator;
pub mod plan;
pub mod rules;
pub mod window_map;
pub mod windows;

use arrow::array::RecordBatch;

use crate::contract::format::Format;
use crate::contract::outputs::{ad_metrics_rows, AdMetric};
use crate::contract::record_uuid;
use crate::contract::table::{OutputTable, TableKind};
use crate::core::config::ConfigError;
use crate::core::job::{BackfillRange, Input, Job, OutputRecord, ReadRange, Route, RunSettings};
use crate::core::key_group;
use operator::{window_ends_fired, AggregationOperator, OperatorState, Settings};
use rules::AggregationRules;

pub struct Aggregation;

impl Job for Aggregation {
    const NAME: &'static str = "aggregation";
    const ABOUT: &'static str = "validate, dedupe, count impressions and clicks per (region, ad_id, minute)";
    const DEFAULT_JOB_FILE: &'static str = rules::DEFAULT_JOB_FILE;
    const COMPLETE_MODE: bool = true;
    /// The name its files had before there were other jobs.
    const FILE_PREFIX: &'static str = "backfill";

    type Rules = AggregationRules;
    type Record = AdMetric;
    type Audit = audit::Audit;
    type State = OperatorState;
    type Operator = AggregationOperator;

    fn parse_rules(job_file: &str) -> Result<AggregationRules, ConfigError> {
        AggregationRules::from_toml(job_file)
    }

    fn inputs(rules: &AggregationRules) -> Vec<Input> {
        vec![Input { topic: rules.input_topic.clone(), format: Format::AdEvents, dead_letters: true, region: None }]
    }

    fn set_topic(rules: &mut AggregationRules, _input: usize, topic: &str) {
        rules.input_topic = topic.to_string();
    }

    fn outputs(rules: &AggregationRules) -> Vec<OutputTable> {
        vec![OutputTable { name: rules.output_table.clone(), kind: TableKind::AdMetrics }]
    }

    fn set_output(rules: &mut AggregationRules, _table: usize, name: &str) {
        rules.output_table = name.to_string();
    }

    /// By `ad_id`: all windows of an ad and all arrivals of its events in one group.
    fn route(_rules: &AggregationRules, _input: usize, batch: &RecordBatch, key_groups: usize) -> Route {
        Route::Keyed(key_group::split_rows(batch, key_groups))
    }

    fn operator(rules: &AggregationRules, settings: RunSettings) -> AggregationOperator {
        AggregationOperator::new(rules.clone(), Settings::of(&settings))
    }

    fn restore(rules: &AggregationRules, settings: RunSettings, state: OperatorState) -> AggregationOperator {
        AggregationOperator::restore(rules.clone(), Settings::of(&settings), state)
    }

    fn firings(rules: &AggregationRules, ingest_watermark: i64) -> Option<i64> {
        Some(window_ends_fired(rules, ingest_watermark))
    }

    fn reading(rules: &AggregationRules, range: BackfillRange) -> anyhow::Result<Vec<ReadRange>> {
        plan::reading(rules, range)
    }
}

impl crate::core::diff::DiffRecord for AdMetric {
    fn advertiser(&self) -> Option<&str> {
        self.advertiser_id.as_deref()
    }

    fn campaign(&self) -> Option<&str> {
        self.campaign_id.as_deref()
    }

    fn measures(&self) -> crate::core::diff::Measures {
        crate::core::diff::Measures { impressions: self.impressions, clicks: self.clicks, ..Default::default() }
    }
}

impl OutputRecord for AdMetric {
    fn record_uuid(&self) -> uuid::Uuid {
        self.record_uuid
    }

    fn derived_uuid(&self) -> uuid::Uuid {
        record_uuid::ad_metric(&self.region, &self.ad_id, self.window_start)
    }

    fn key_group(&self, key_groups: usize) -> usize {
        key_group::group_of(&self.ad_id, key_groups)
    }

    fn partition_time(&self) -> i64 {
        self.window_start
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        AdMetric::write_json(self, out);
    }

    fn from_batch(_table: usize, batch: &RecordBatch) -> anyhow::Result<Vec<Self>> {
        ad_metrics_rows(batch)
    }

    fn readable(&self) -> serde_json::Value {
        serde_json::json!({
            "window_start": crate::contract::time::readable(self.window_start),
            "region": &*self.region,
            "ad_id": &*self.ad_id,
            "campaign_id": self.campaign_id.as_deref(),
            "advertiser_id": self.advertiser_id.as_deref(),
            "impressions": self.impressions,
            "clicks": self.clicks,
        })
    }
}
