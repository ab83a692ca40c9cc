//! Why an event was rejected. The text before the first `:` is a stable code for dashboards.

use std::fmt;

use crate::contract::time::rfc3339;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// The message was not a JSON object at all (the archiver never archives these).
    NotJson(String),
    WrongType(String),
    MissingField(&'static str),
    UnknownEventType(String),
    InFuture { event_time: i64, ingest: i64 },
    TooOld { event_time: i64, ingest: i64 },
    Late { window_end: i64, ingest: i64 },
    /// Counts by the lateness rule, but its window was already purged: the runtime's ingest
    /// watermark had passed the message's own timestamp (non-monotonic Kafka timestamps).
    AfterPurge { window_end: i64, ingest: i64 },
    /// An order's status is none of placed, completed, cancelled.
    InvalidStatus(String),
    NegativeAmount(i64),
    /// An order's currency is not three upper-case ASCII letters.
    InvalidCurrency(String),
    OrderTimeInFuture { order_time: i64, ingest: i64 },
    OrderTimeTooOld { order_time: i64, ingest: i64 },
}

/// Every reason code, so that counts by code survive a checkpoint as `&'static str`.
pub const CODES: [&str; 12] = [
    "not_json",
    "wrong_type",
    "missing_field",
    "unknown_event_type",
    "event_time_in_future",
    "event_time_too_old",
    "late",
    "invalid_status",
    "negative_amount",
    "invalid_currency",
    "order_time_in_future",
    "order_time_too_old",
];

pub fn static_code(code: &str) -> Option<&'static str> {
    CODES.iter().copied().find(|c| *c == code)
}

/// Rejections counted by reason code, as every job's audit keeps them.
pub type CountsByReason = std::collections::BTreeMap<&'static str, u64>;

/// Deserializes [`CountsByReason`] (`#[serde(deserialize_with)]`): a code this build does not
/// know is an error, not a new bucket.
pub fn deserialize_counts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<CountsByReason, D::Error> {
    use serde::Deserialize;
    let m = std::collections::BTreeMap::<String, u64>::deserialize(d)?;
    m.into_iter()
        .map(|(k, v)| static_code(&k).map(|c| (c, v)).ok_or_else(|| serde::de::Error::custom(format!("unknown reason code {k:?}"))))
        .collect()
}

pub fn merge_counts(into: &mut CountsByReason, from: &CountsByReason) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

/// One line per reason, as the audits print them.
pub fn write_counts(f: &mut fmt::Formatter<'_>, counts: &CountsByReason) -> fmt::Result {
    for (code, n) in counts {
        writeln!(f, "  dead-lettered {code}: {n}")?;
    }
    Ok(())
}

impl Reject {
    pub fn code(&self) -> &'static str {
        match self {
            Reject::NotJson(_) => "not_json",
            Reject::WrongType(_) => "wrong_type",
            Reject::MissingField(_) => "missing_field",
            Reject::UnknownEventType(_) => "unknown_event_type",
            Reject::InFuture { .. } => "event_time_in_future",
            Reject::TooOld { .. } => "event_time_too_old",
            Reject::Late { .. } => "late",
            Reject::AfterPurge { .. } => "late",
            Reject::InvalidStatus(_) => "invalid_status",
            Reject::NegativeAmount(_) => "negative_amount",
            Reject::InvalidCurrency(_) => "invalid_currency",
            Reject::OrderTimeInFuture { .. } => "order_time_in_future",
            Reject::OrderTimeTooOld { .. } => "order_time_too_old",
        }
    }

    pub fn is_late(&self) -> bool {
        matches!(self, Reject::Late { .. } | Reject::AfterPurge { .. })
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.code())?;
        match self {
            Reject::NotJson(e) | Reject::WrongType(e) => write!(f, "{e}"),
            Reject::MissingField(name) => write!(f, "{name} is missing, null or empty"),
            Reject::UnknownEventType(t) => write!(f, "event_type {t:?} is neither impression nor click"),
            Reject::InFuture { event_time, ingest } => write!(
                f,
                "event_time {} is {} ms after ingest time {}",
                rfc3339(*event_time),
                event_time - ingest,
                rfc3339(*ingest)
            ),
            Reject::TooOld { event_time, ingest } => write!(
                f,
                "event_time {} is {} ms before ingest time {}",
                rfc3339(*event_time),
                ingest - event_time,
                rfc3339(*ingest)
            ),
            Reject::Late { window_end, ingest } => write!(
                f,
                "ingested at {}, {} ms after its window ended at {}: beyond out-of-orderness and allowed lateness",
                rfc3339(*ingest),
                ingest - window_end,
                rfc3339(*window_end)
            ),
            Reject::AfterPurge { window_end, ingest } => write!(
                f,
                "ingested at {} but delivered after the watermark purged its window (ended {}): the partition's timestamps went backwards",
                rfc3339(*ingest),
                rfc3339(*window_end)
            ),
            Reject::InvalidStatus(s) => write!(f, "status {s:?} is none of placed, completed, cancelled"),
            Reject::NegativeAmount(a) => write!(f, "amount_cents {a} is negative"),
            Reject::InvalidCurrency(c) => write!(f, "currency {c:?} is not three upper-case letters (ISO 4217)"),
            Reject::OrderTimeInFuture { order_time, ingest } => write!(
                f,
                "order_time {} is {} ms after ingest time {}",
                rfc3339(*order_time),
                order_time - ingest,
                rfc3339(*ingest)
            ),
            Reject::OrderTimeTooOld { order_time, ingest } => write!(
                f,
                "order_time {} is {} ms before ingest time {}",
                rfc3339(*order_time),
                ingest - order_time,
                rfc3339(*ingest)
            ),
        }
    }
}
