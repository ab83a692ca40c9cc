//! When an ad event is valid (contract §1): the rules of a job file's ad-event `validation`
//! section, and the one validator every job applies. The attribution job's candidates are "the
//! messages of ad-events that the aggregation job counts as valid": one function, so the two
//! jobs cannot drift apart.

use std::time::Duration;

use serde::Deserialize;

use super::batch_view::{BatchView, ABSENT, CLICK, OTHER_TYPE};
use super::config::{ms, ConfigError};
use super::reason::Reject;
use crate::contract::columns as c;
use crate::contract::raw::NOT_JSON;
use crate::contract::time::MINUTE_MS;

/// A job file's ad-event validation section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSection {
    required_fields: Vec<String>,
    #[serde(with = "humantime_serde")]
    max_future: Duration,
    #[serde(with = "humantime_serde")]
    max_past: Duration,
}

/// Optional string fields that a job file may additionally require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionalField {
    CampaignId,
    AdvertiserId,
    UserId,
    StoreId,
}

impl OptionalField {
    fn name(self) -> &'static str {
        match self {
            OptionalField::CampaignId => c::CAMPAIGN_ID,
            OptionalField::AdvertiserId => c::ADVERTISER_ID,
            OptionalField::UserId => c::USER_ID,
            OptionalField::StoreId => c::STORE_ID,
        }
    }
}

/// The ad-event validity rules, times in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdEventRules {
    pub also_required: Vec<OptionalField>,
    pub max_future_ms: i64,
    pub max_past_ms: i64,
}

const ALWAYS_REQUIRED: [&str; 5] = [c::EVENT_ID, c::EVENT_TYPE, c::AD_ID, c::EVENT_TIME, c::REGION];

impl AdEventRules {
    /// The rules of a validation section; `section` names it in errors (e.g. `validation`).
    pub fn from_section(v: ValidationSection, section: &str) -> Result<Self, ConfigError> {
        for r in ALWAYS_REQUIRED {
            if !v.required_fields.iter().any(|x| x == r) {
                return Err(ConfigError::Rule(format!(
                    "{section}.required_fields must include '{r}': the job cannot key, dedupe or window an event without it"
                )));
            }
        }
        let mut also_required = Vec::new();
        for name in &v.required_fields {
            let field = match name.as_str() {
                n if ALWAYS_REQUIRED.contains(&n) => continue,
                c::CAMPAIGN_ID => OptionalField::CampaignId,
                c::ADVERTISER_ID => OptionalField::AdvertiserId,
                c::USER_ID => OptionalField::UserId,
                c::STORE_ID => OptionalField::StoreId,
                other => return Err(ConfigError::Rule(format!("{section}.required_fields names '{other}', which is not an ad-event field"))),
            };
            also_required.push(field);
        }
        let rules = Self { also_required, max_future_ms: ms(v.max_future), max_past_ms: ms(v.max_past) };
        if rules.max_past_ms < MINUTE_MS {
            return Err(ConfigError::Rule(format!("{section}.max_past must be at least 1m")));
        }
        Ok(rules)
    }
}

/// A valid ad event's fields as validation read them: dictionary values as interned ids.
#[derive(Debug, Clone, Copy)]
pub struct ValidEvent {
    pub click: bool,
    pub ad: u32,
    pub region: u32,
    pub campaign: u32,
    pub advertiser: u32,
    pub event_time: i64,
    pub ingest: i64,
}

/// Validates one row of a resolved view (contract §1, in the order of the dead-letter codes).
/// A valid row's fields are handed to `on_valid` and its `event_id` returned.
///
/// Handed over in place rather than returned beside the event_id: returned, the fields went
/// through the stack, written a field at a time and read back a word at a time, which the CPU
/// cannot forward from store to load (a fifth of the aggregation's admission samples). Inlined
/// into each job's admission loop, so `on_valid` writes straight into the job's candidate.
#[inline(always)]
pub fn validate<'b>(
    rules: &AdEventRules,
    v: &BatchView<'b>,
    row: usize,
    ingest: Option<i64>,
    on_valid: impl FnOnce(ValidEvent),
) -> Result<&'b str, Reject> {
    if !BatchView::null(v.decode_error, row) {
        let e = v.decode_error.value(row);
        return Err(match e.strip_prefix(NOT_JSON) {
            Some(why) => Reject::NotJson(why.to_string()),
            None => Reject::WrongType(e.to_string()),
        });
    }
    let Some(event_id) = v.event_id.present(row) else {
        return Err(Reject::MissingField(c::EVENT_ID));
    };
    let click = match v.event_type.key(row) {
        None => return Err(Reject::MissingField(c::EVENT_TYPE)),
        Some(k) if v.event_type_codes[k] == OTHER_TYPE => {
            return Err(match v.event_type.str(row) {
                None | Some("") => Reject::MissingField(c::EVENT_TYPE),
                Some(t) => Reject::UnknownEventType(t.to_string()),
            });
        }
        Some(k) => v.event_type_codes[k] == CLICK,
    };
    let ad = v.ad.resolved(row);
    if ad == ABSENT {
        return Err(Reject::MissingField(c::AD_ID));
    }
    let Some(event_time) = BatchView::opt(v.event_time, row) else {
        return Err(Reject::MissingField(c::EVENT_TIME));
    };
    let region = v.region.resolved(row);
    if region == ABSENT {
        return Err(Reject::MissingField(c::REGION));
    }
    let Some(ingest) = ingest else {
        return Err(Reject::MissingField(c::KAFKA_TIMESTAMP));
    };
    let campaign = v.campaign.resolved(row);
    let advertiser = v.advertiser.resolved(row);
    for &f in &rules.also_required {
        let present = match f {
            OptionalField::CampaignId => campaign != ABSENT,
            OptionalField::AdvertiserId => advertiser != ABSENT,
            OptionalField::UserId => v.user_id.present(row).is_some(),
            OptionalField::StoreId => v.store_id.present(row).is_some(),
        };
        if !present {
            return Err(Reject::MissingField(f.name()));
        }
    }
    if event_time > ingest.saturating_add(rules.max_future_ms) {
        return Err(Reject::InFuture { event_time, ingest });
    }
    if event_time < ingest.saturating_sub(rules.max_past_ms) {
        return Err(Reject::TooOld { event_time, ingest });
    }
    on_valid(ValidEvent { click, ad, region, campaign, advertiser, event_time, ingest });
    Ok(event_id)
}
