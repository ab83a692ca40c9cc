//! The attribution job: orders joined to the ad clicks and impressions that led to them
//! (contract §5). Rules: `jobs/attribution.toml`; semantics: `docs/attribution.md`.

pub mod audit;
pub mod candidate;
pub mod candidate_snapshot;
pub mod candidates;
pub mod event_id;
pub mod operator;
pub mod orders;
pub mod plan;
pub mod rules;

use arrow::array::RecordBatch;

use crate::contract::attributed_orders::{self, AttributedOrder};
use crate::contract::format::Format;
use crate::contract::record_uuid;
use crate::contract::schema::col as ad_col;
use crate::contract::table::{OutputTable, TableKind};
use crate::contract::time::readable;
use crate::core::config::ConfigError;
use crate::core::job::{BackfillRange, Input, Job, OutputRecord, ReadRange, Route, RowFilter, RunSettings};
use crate::core::key_group::split_rows_by_pair;
use operator::{AttributionOperator, AttributionState};
use rules::AttributionRules;

/// The inputs, by index.
pub const ORDERS: usize = 0;
pub const AD_EVENTS: usize = 1;

pub struct Attribution;

impl Job for Attribution {
    const NAME: &'static str = "attribution";
    const ABOUT: &'static str = "join orders to the ad click or impression that led to them (latest click within 7 d, else impression within 24 h)";
    const DEFAULT_JOB_FILE: &'static str = rules::DEFAULT_JOB_FILE;
    const EAGER_INPUTS: &'static [usize] = &[ORDERS];

    type Rules = AttributionRules;
    type Record = AttributedOrder;
    type Audit = audit::Audit;
    type State = AttributionState;
    type Operator = AttributionOperator;

    fn parse_rules(job_file: &str) -> Result<AttributionRules, ConfigError> {
        AttributionRules::from_toml(job_file)
    }

    fn inputs(rules: &AttributionRules) -> Vec<Input> {
        vec![
            Input { topic: rules.orders_topic.clone(), format: Format::Orders, dead_letters: true, region: None },
            // Invalid ad events are the aggregation job's dead letters, not this job's.
            Input { topic: rules.ad_events_topic.clone(), format: Format::AdEvents, dead_letters: false, region: None },
        ]
    }

    fn set_topic(rules: &mut AttributionRules, input: usize, topic: &str) {
        match input {
            ORDERS => rules.orders_topic = topic.to_string(),
            _ => rules.ad_events_topic = topic.to_string(),
        }
    }

    fn outputs(rules: &AttributionRules) -> Vec<OutputTable> {
        vec![OutputTable { name: rules.output_table.clone(), kind: TableKind::AttributedOrders }]
    }

    fn set_output(rules: &mut AttributionRules, _table: usize, name: &str) {
        rules.output_table = name.to_string();
    }

    /// Ad events by (user, store); orders to every group (see `operator`).
    fn route(_rules: &AttributionRules, input: usize, batch: &RecordBatch, key_groups: usize) -> Route {
        match input {
            ORDERS => Route::Broadcast,
            _ => Route::Keyed(split_rows_by_pair(batch.column(ad_col::USER_ID), batch.column(ad_col::STORE_ID), key_groups)),
        }
    }

    fn operator(rules: &AttributionRules, settings: RunSettings) -> AttributionOperator {
        AttributionOperator::new(rules.clone(), settings)
    }

    fn restore(rules: &AttributionRules, settings: RunSettings, state: AttributionState) -> AttributionOperator {
        AttributionOperator::restore(rules.clone(), settings, state)
    }

    fn reading(rules: &AttributionRules, range: BackfillRange) -> anyhow::Result<Vec<ReadRange>> {
        plan::reading(rules, range)
    }

    fn read_filter(_rules: &AttributionRules, range: BackfillRange, input: usize, eager: &[Vec<RecordBatch>]) -> Option<RowFilter> {
        (input == AD_EVENTS).then(|| plan::read_filter(range, &eager[0]))
    }
}

/// An attributed order counts once, with its amount (its latest status's: a cancelled order
/// still counts; its status change shows as a changed record).
impl crate::core::diff::DiffRecord for AttributedOrder {
    fn advertiser(&self) -> Option<&str> {
        self.advertiser_id.as_deref()
    }

    fn campaign(&self) -> Option<&str> {
        self.campaign_id.as_deref()
    }

    fn measures(&self) -> crate::core::diff::Measures {
        crate::core::diff::Measures { attributed_orders: 1, amount_cents: self.amount_cents, ..Default::default() }
    }
}

impl OutputRecord for AttributedOrder {
    fn record_uuid(&self) -> uuid::Uuid {
        self.record_uuid
    }

    fn derived_uuid(&self) -> uuid::Uuid {
        record_uuid::attributed_order(&self.order_id)
    }

    /// By (user_id, store_id), as its order was routed; an attributed order has both.
    fn key_group(&self, key_groups: usize) -> usize {
        if key_groups > 1 {
            crate::core::key_group::group_of_pair(crate::core::key_group::pair_key(&self.user_id, &self.store_id), key_groups)
        } else {
            0
        }
    }

    fn partition_time(&self) -> i64 {
        self.order_time
    }

    fn from_batch(_table: usize, batch: &RecordBatch) -> anyhow::Result<Vec<Self>> {
        attributed_orders::rows(batch)
    }

    fn readable(&self) -> serde_json::Value {
        serde_json::json!({
            "order_id": self.order_id,
            "user_id": self.user_id,
            "store_id": self.store_id,
            "region": self.region,
            "order_time": readable(self.order_time),
            "status": self.status,
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "ad_id": self.ad_id,
            "campaign_id": self.campaign_id,
            "advertiser_id": self.advertiser_id,
            "attributed_event_id": self.attributed_event_id,
            "attribution_type": self.attribution_type.as_str(),
            "ad_event_time": readable(self.ad_event_time),
        })
    }
}
