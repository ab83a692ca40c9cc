//! An ad event's JSON object re-created from its fields: the payload a dead letter carries
//! when the message's own bytes were not kept.
//!
//! The archive keeps a message's fields, not its bytes, so a backfill re-creates the payload:
//! the contract's nine fields in byte order of their names, compact, an absent one as `null`,
//! strings as `serde_json` writes them. That is what `serde_json` writes for a map of the
//! fields, and what `adsproc produce` sends. The stream decoder keeps a message's bytes only
//! when they may differ from this re-creation (see `flat_json::parse_predicting`), so a dead letter's
//! payload is the message as received either way; for messages sent in this form, that saves
//! copying every payload into each poll's batch.

use super::columns as c;
use super::outputs::json_str;

/// An ad event's fields, as the canonical batch holds them (None: null).
#[derive(Debug, Clone, Copy, Default)]
pub struct EventFields<'a> {
    pub ad_id: Option<&'a str>,
    pub advertiser_id: Option<&'a str>,
    pub campaign_id: Option<&'a str>,
    pub event_id: Option<&'a str>,
    pub event_time: Option<i64>,
    pub event_type: Option<&'a str>,
    pub region: Option<&'a str>,
    pub store_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
}

enum Value<'a> {
    Str(Option<&'a str>),
    Int(Option<i64>),
}

/// The fields in the order written: byte order of their names, as serde_json orders a map.
fn in_written_order<'a>(f: &EventFields<'a>) -> [(&'static str, Value<'a>); 9] {
    use Value::{Int, Str};
    [
        (c::AD_ID, Str(f.ad_id)),
        (c::ADVERTISER_ID, Str(f.advertiser_id)),
        (c::CAMPAIGN_ID, Str(f.campaign_id)),
        (c::EVENT_ID, Str(f.event_id)),
        (c::EVENT_TIME, Int(f.event_time)),
        (c::EVENT_TYPE, Str(f.event_type)),
        (c::REGION, Str(f.region)),
        (c::STORE_ID, Str(f.store_id)),
        (c::USER_ID, Str(f.user_id)),
    ]
}

/// The field names in the order [`write`] writes them.
#[cfg(test)]
pub(crate) fn names_in_written_order() -> [&'static str; 9] {
    in_written_order(&EventFields::default()).map(|(name, _)| name)
}

/// The fields as serde_json writes a map of them: what [`write`] must produce, computed
/// independently of it, for the tests here and `core::batch_view`'s.
#[cfg(test)]
pub(crate) fn serde_json_map_of(f: &EventFields<'_>) -> String {
    use serde_json::{Map, Value};
    let s = |v: Option<&str>| v.map_or(Value::Null, |v| Value::String(v.into()));
    let mut m = Map::new();
    for (name, value) in [
        (c::EVENT_ID, s(f.event_id)),
        (c::EVENT_TYPE, s(f.event_type)),
        (c::AD_ID, s(f.ad_id)),
        (c::CAMPAIGN_ID, s(f.campaign_id)),
        (c::ADVERTISER_ID, s(f.advertiser_id)),
        (c::USER_ID, s(f.user_id)),
        (c::STORE_ID, s(f.store_id)),
        (c::EVENT_TIME, f.event_time.map_or(Value::Null, Value::from)),
        (c::REGION, s(f.region)),
    ] {
        m.insert(name.to_string(), value);
    }
    Value::Object(m).to_string()
}

/// Appends the fields' JSON object to `out`. The names need no escaping.
pub fn write(out: &mut Vec<u8>, f: &EventFields<'_>) {
    for (i, (name, value)) in in_written_order(f).into_iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"{\"" } else { b",\"" });
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match value {
            Value::Str(Some(v)) => json_str(out, v),
            Value::Int(Some(t)) => out.extend_from_slice(itoa::Buffer::new().format(t).as_bytes()),
            Value::Str(None) | Value::Int(None) => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The re-creation is serde_json's map of the fields, byte for byte.
        #[test]
        fn write_is_serde_jsons_map_of_the_fields(
            strings in proptest::array::uniform8(proptest::option::of("(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}\u{2028}]){0,12}")),
            event_time in proptest::option::of(any::<i64>()),
        ) {
            let [ad_id, advertiser_id, campaign_id, event_id, event_type, region, store_id, user_id] = strings.each_ref().map(|s| s.as_deref());
            let f = EventFields { ad_id, advertiser_id, campaign_id, event_id, event_time, event_type, region, store_id, user_id };
            let mut out = Vec::new();
            write(&mut out, &f);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json_map_of(&f));
        }
    }
}
