//! The attribution job's accounting: every order and every ad event read lands in exactly one
//! bucket, and each message is counted by exactly one key group (see `operator`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::core::job::JobAudit;
use crate::core::reason::{self, CountsByReason};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// Order messages read.
    pub orders_read: u64,
    /// First arrivals of orders in range, attributed to an ad event (one record each).
    pub attributed: u64,
    /// First arrivals of orders in range that no ad event matched (no record).
    pub not_attributed: u64,
    /// Later valid arrivals (status updates, client retries) of orders in range.
    pub updates: u64,
    /// Invalid orders (dead-lettered).
    pub invalid: u64,
    /// Arrivals of orders outside a backfill's range (read as context), and invalid ones
    /// ingested outside it.
    pub outside_range: u64,
    /// First arrivals waiting for their decision (the ad events' watermark).
    pub awaiting_decision: u64,
    /// Orders in range whose state was still open when a backfill's input ended: a later
    /// status update (beyond what was read) could still change them. Not a bucket.
    pub open_at_end: u64,
    /// Ad-event messages read.
    pub ad_events_read: u64,
    /// Candidates: the first valid arrival of an event at a (user, store).
    pub candidates: u64,
    /// Later valid arrivals of a candidate's event.
    pub ad_event_duplicates: u64,
    /// Ad events that are no candidate: invalid (the aggregation job dead-letters them), or
    /// without a user or a store.
    pub not_candidates: u64,
    /// Dead-lettered orders by reason code.
    #[serde(deserialize_with = "reason::deserialize_counts")]
    pub rejected_by_reason: CountsByReason,
}

impl Audit {
    pub fn orders_balance(&self) -> bool {
        self.orders_read == self.attributed + self.not_attributed + self.updates + self.invalid + self.outside_range + self.awaiting_decision
    }

    pub fn ad_events_balance(&self) -> bool {
        self.ad_events_read == self.candidates + self.ad_event_duplicates + self.not_candidates
    }
}

impl JobAudit for Audit {
    fn merge(&mut self, o: &Self) {
        self.orders_read += o.orders_read;
        self.attributed += o.attributed;
        self.not_attributed += o.not_attributed;
        self.updates += o.updates;
        self.invalid += o.invalid;
        self.outside_range += o.outside_range;
        self.awaiting_decision += o.awaiting_decision;
        self.open_at_end += o.open_at_end;
        self.ad_events_read += o.ad_events_read;
        self.candidates += o.candidates;
        self.ad_event_duplicates += o.ad_event_duplicates;
        self.not_candidates += o.not_candidates;
        reason::merge_counts(&mut self.rejected_by_reason, &o.rejected_by_reason);
    }

    fn balances(&self) -> bool {
        self.orders_balance() && self.ad_events_balance()
    }

    fn read(&self) -> u64 {
        self.orders_read + self.ad_events_read
    }

    fn line(&self) -> String {
        format!(
            "orders read {} attributed {} not attributed {} updates {} invalid {} awaiting {}; ad events read {} candidates {}",
            self.orders_read,
            self.attributed,
            self.not_attributed,
            self.updates,
            self.invalid,
            self.awaiting_decision,
            self.ad_events_read,
            self.candidates
        )
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = |ok: bool| if ok { "balanced" } else { "NOT BALANCED" };
        writeln!(
            f,
            "orders read {} = attributed {} + not attributed {} + updates {} + invalid {} + outside range {} + awaiting decision {}  [{}]",
            self.orders_read,
            self.attributed,
            self.not_attributed,
            self.updates,
            self.invalid,
            self.outside_range,
            self.awaiting_decision,
            mark(self.orders_balance())
        )?;
        writeln!(
            f,
            "  ad events read {} = candidates {} + duplicates {} + not candidates {}  [{}]",
            self.ad_events_read,
            self.candidates,
            self.ad_event_duplicates,
            self.not_candidates,
            mark(self.ad_events_balance())
        )?;
        reason::write_counts(f, &self.rejected_by_reason)?;
        if self.open_at_end > 0 {
            writeln!(f, "  orders still open when the input ended: {} (a later status update could change them)", self.open_at_end)?;
        }
        Ok(())
    }
}
