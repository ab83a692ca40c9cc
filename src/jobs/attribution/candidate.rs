//! A candidate ad event: what the keyed state keeps of a valid ad event with a user and store.

use super::event_id::EventId;

/// A candidate ad event. Ad, campaign and advertiser are interned ids (`batch_view::ABSENT`
/// for none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub event_id: EventId,
    pub event_time: i64,
    pub ingest: i64,
    pub click: bool,
    pub ad: u32,
    pub campaign: u32,
    pub advertiser: u32,
}
