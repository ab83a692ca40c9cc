//! Which ingest hours a backfill of [from, to) must read, and why.
//!
//! Warm-up: a valid event of a window at or after `from` was ingested at most `max_future`
//! before its event time, so at or after `from − max_future`. Its dedupe decision depends on
//! arrivals of the same event_id counted less than the TTL before it. Reading from
//! `from − max_future − ttl` therefore reproduces every dedupe decision the live job made for
//! the range (exactly so when retries of an event carry its event time, as client retries do).
//!
//! Tail: by the lateness rule an event of a window ending at or before `to` counts only if it
//! was ingested before `to + out_of_orderness + allowed_lateness`; with `--complete` any valid
//! event counts, and validity bounds its ingest time to `to + max_past`.

use super::{ArchiveSource, BackfillOptions, HourPartition};
use crate::contract::time::{ceil_to, floor_to, rfc3339, HOUR_MS};
use crate::core::config::AggregationRules;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("--from {from} is not before --to {to}")]
    EmptyRange { from: String, to: String },
    #[error("--{flag} {at} is not aligned to the job's {window_ms} ms windows; the nearest window boundaries are {before} and {after}")]
    NotAligned { flag: &'static str, at: String, window_ms: i64, before: String, after: String },
    #[error("the archive at {source_desc} has no ad-event files for ingest hours {first} to {last}, which could hold events of [{from}, {to}){bounds}")]
    NoData { source_desc: String, first: String, last: String, from: String, to: String, bounds: String },
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub from: i64,
    pub to: i64,
    /// Ingest-time range read, [read_from, read_to), before rounding to hours.
    pub read_from: i64,
    pub read_to: i64,
    pub hours: Vec<HourPartition>,
    pub archive_bounds: Option<(i64, i64)>,
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn files(&self) -> u64 {
        self.hours.iter().map(|h| h.files.len() as u64).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.hours.iter().flat_map(|h| &h.files).map(|f| f.size).sum()
    }
}

// A plan error is built once per run, on the way out: its size does not matter.
#[allow(clippy::result_large_err)]
fn check_aligned(flag: &'static str, t: i64, window_ms: i64) -> Result<(), PlanError> {
    if t % window_ms == 0 {
        return Ok(());
    }
    Err(PlanError::NotAligned {
        flag,
        at: rfc3339(t),
        window_ms,
        before: rfc3339(floor_to(t, window_ms)),
        after: rfc3339(ceil_to(t, window_ms)),
    })
}

pub fn plan(rules: &AggregationRules, source: &dyn ArchiveSource, o: &BackfillOptions) -> anyhow::Result<Plan> {
    if o.from >= o.to {
        return Err(PlanError::EmptyRange { from: rfc3339(o.from), to: rfc3339(o.to) }.into());
    }
    check_aligned("from", o.from, rules.window_ms)?;
    check_aligned("to", o.to, rules.window_ms)?;
    let read_from = o.from - rules.warm_up_ms();
    let tail = if o.complete { rules.max_past_ms } else { rules.out_of_orderness_ms + rules.allowed_lateness_ms };
    let read_to = o.to + tail;
    let hours = source.hours(floor_to(read_from, HOUR_MS), ceil_to(read_to, HOUR_MS))?;
    let archive_bounds = source.bounds()?;

    // Hours that can hold a counted event of the range: [from − max_future, read_to).
    let first_relevant = floor_to(o.from - rules.max_future_ms, HOUR_MS);
    let has_data = hours.iter().any(|h| h.hour >= first_relevant && !h.files.is_empty());
    if !has_data {
        let bounds = match archive_bounds {
            Some((a, b)) => format!(" (the archive holds ingest hours {} to {})", rfc3339(a), rfc3339(b)),
            None => " (the archive is empty)".to_string(),
        };
        return Err(PlanError::NoData {
            source_desc: source.describe(),
            first: rfc3339(first_relevant),
            last: rfc3339(ceil_to(read_to, HOUR_MS) - HOUR_MS),
            from: rfc3339(o.from),
            to: rfc3339(o.to),
            bounds,
        }
        .into());
    }
    let mut warnings = Vec::new();
    if let Some((first, last)) = archive_bounds {
        if first > floor_to(read_from, HOUR_MS) {
            warnings.push(format!(
                "the archive starts at {}, after the warm-up start {}: dedupe against earlier arrivals is limited to what the archive holds",
                rfc3339(first),
                rfc3339(read_from)
            ));
        }
        if last + HOUR_MS < read_to {
            warnings.push(format!(
                "the archive ends with ingest hour {}, before {}: events still to be archived could change windows near --to",
                rfc3339(last),
                rfc3339(read_to)
            ));
        }
    }
    Ok(Plan { from: o.from, to: o.to, read_from, read_to, hours, archive_bounds, warnings })
}
