//! The aggregation job's accounting: every event read lands in exactly one bucket.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::core::reason::{self, CountsByReason};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// Every row handed to the operator.
    pub read: u64,
    /// Distinct valid events counted in an emitted window.
    pub counted: u64,
    /// Later arrivals of an event_id already counted.
    pub duplicates: u64,
    /// Rejected by validation (dead-lettered).
    pub invalid: u64,
    /// Valid but beyond allowed lateness (dead-lettered).
    pub dropped_late: u64,
    /// Read only as context for the requested range: warm-up before it, or arrivals after it
    /// whose window lies outside it. Nothing is emitted for them.
    pub outside_range: u64,
    /// Rejections by reason code.
    #[serde(deserialize_with = "reason::deserialize_counts")]
    pub rejected_by_reason: CountsByReason,
}

impl Audit {
    pub fn merge(&mut self, other: &Audit) {
        self.read += other.read;
        self.counted += other.counted;
        self.duplicates += other.duplicates;
        self.invalid += other.invalid;
        self.dropped_late += other.dropped_late;
        self.outside_range += other.outside_range;
        reason::merge_counts(&mut self.rejected_by_reason, &other.rejected_by_reason);
    }

    /// The audit identity: nothing read is unaccounted for.
    pub fn balances(&self) -> bool {
        self.read == self.counted + self.duplicates + self.invalid + self.dropped_late + self.outside_range
    }
}

impl crate::core::job::JobAudit for Audit {
    fn merge(&mut self, other: &Self) {
        Audit::merge(self, other);
    }

    fn balances(&self) -> bool {
        Audit::balances(self)
    }

    fn read(&self) -> u64 {
        self.read
    }

    fn line(&self) -> String {
        format!(
            "read {} counted {} duplicates {} invalid {} late {}",
            self.read, self.counted, self.duplicates, self.invalid, self.dropped_late
        )
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "events read {} = counted {} + duplicates {} + invalid {} + dropped-late {} + outside range {}  [{}]",
            self.read,
            self.counted,
            self.duplicates,
            self.invalid,
            self.dropped_late,
            self.outside_range,
            if self.balances() { "balanced" } else { "NOT BALANCED" }
        )?;
        reason::write_counts(f, &self.rejected_by_reason)?;
        Ok(())
    }
}
