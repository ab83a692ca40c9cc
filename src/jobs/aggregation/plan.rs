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

use super::rules::AggregationRules;
use crate::contract::time::{ceil_to, floor_to, rfc3339};
use crate::core::job::{BackfillRange, ReadRange};

#[derive(Debug, thiserror::Error)]
#[error("--{flag} {at} is not aligned to the job's {window_ms} ms windows; the nearest window boundaries are {before} and {after}")]
pub struct NotAligned {
    flag: &'static str,
    at: String,
    window_ms: i64,
    before: String,
    after: String,
}

fn check_aligned(flag: &'static str, t: i64, window_ms: i64) -> Result<(), NotAligned> {
    if t % window_ms == 0 {
        return Ok(());
    }
    Err(NotAligned { flag, at: rfc3339(t), window_ms, before: rfc3339(floor_to(t, window_ms)), after: rfc3339(ceil_to(t, window_ms)) })
}

/// The one input's read range: the warm-up and the tail above; hours that can hold a counted
/// event of the range are `[from − max_future, read_to)`.
pub fn reading(rules: &AggregationRules, r: BackfillRange) -> anyhow::Result<Vec<ReadRange>> {
    check_aligned("from", r.from, rules.window_ms)?;
    check_aligned("to", r.to, rules.window_ms)?;
    let tail = if r.complete { rules.ad_events.max_past_ms } else { rules.out_of_orderness_ms + rules.allowed_lateness_ms };
    Ok(vec![ReadRange {
        read_from: r.from - rules.warm_up_ms(),
        read_to: r.to + tail,
        relevant_from: r.from - rules.ad_events.max_future_ms,
        warm_up_note: "dedupe against earlier arrivals is limited to what the archive holds",
        tail_note: "events still to be archived could change windows near --to",
    }])
}
