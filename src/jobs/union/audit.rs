//! The union job's accounting: every record read is forwarded, collapsed as a replica of the
//! value last forwarded for its record_uuid, or dead-lettered.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    pub read: u64,
    pub forwarded: u64,
    /// Records equal to the last value forwarded for their record_uuid.
    pub replicas: u64,
    /// Not a record of their table (dead-lettered).
    pub invalid: u64,
}

impl crate::core::job::JobAudit for Audit {
    fn merge(&mut self, o: &Self) {
        self.read += o.read;
        self.forwarded += o.forwarded;
        self.replicas += o.replicas;
        self.invalid += o.invalid;
    }

    fn balances(&self) -> bool {
        self.read == self.forwarded + self.replicas + self.invalid
    }

    fn read(&self) -> u64 {
        self.read
    }

    fn line(&self) -> String {
        format!("read {} forwarded {} replicas {} invalid {}", self.read, self.forwarded, self.replicas, self.invalid)
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "records read {} = forwarded {} + replicas {} + invalid {}  [{}]",
            self.read,
            self.forwarded,
            self.replicas,
            self.invalid,
            if crate::core::job::JobAudit::balances(self) { "balanced" } else { "NOT BALANCED" }
        )
    }
}
