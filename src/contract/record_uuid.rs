//! Deterministic `record_uuid`s (see `docs/record-uuid.md`).
//!
//! A record's UUID is a UUIDv5 (SHA-1, RFC 9562) in the adsproc namespace of the JSON array
//! that names the record's identity: `["ad-metrics", region, ad_id, "<window_start ms>"]`. JSON
//! array encoding is unambiguous for any strings (no separator can be forged), is easy to
//! reproduce in any language, and keeps the table name in the identity so two tables never
//! share a UUID. Counts are deliberately not part of the identity: a corrected window replaces
//! the earlier value under the same UUID in an upsert store.

use uuid::Uuid;

/// `Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:adsproc:record-uuid:v1")`, written out so that the
/// namespace is a literal other implementations can copy.
pub const NAMESPACE: Uuid = Uuid::from_u128(0x837d1c1b_bc06_5853_a752_229cddd62ee8);

fn derive(parts: &[&str]) -> Uuid {
    let name = serde_json::to_string(parts).expect("a list of strings always serializes");
    Uuid::new_v5(&NAMESPACE, name.as_bytes())
}

/// Identity of an `ad-metrics` record: region, ad and the window's start.
pub fn ad_metric(region: &str, ad_id: &str, window_start_ms: i64) -> Uuid {
    derive(&["ad-metrics", region, ad_id, &window_start_ms.to_string()])
}

/// Identity of a dead-letter record: the source position of the rejected message, so a
/// message rejected by the stream job and again by a backfill is one record downstream.
pub fn dead_letter(topic: &str, partition: i32, offset: i64) -> Uuid {
    derive(&["dlq", topic, &partition.to_string(), &offset.to_string()])
}

/// A rejected row without a source position (possible only in a hand-made archive): its
/// identity is its content.
pub fn dead_letter_unpositioned(topic: &str, payload: &str) -> Uuid {
    derive(&["dlq", topic, payload])
}

#[cfg(test)]
mod tests {
    use super::*;

    // Literal UUIDs computed independently with Python's `uuid.uuid5` over
    // `json.dumps(parts, separators=(",", ":"), ensure_ascii=False)`. A change here breaks
    // upserts over everything already written: never "fix" these expectations.
    #[test]
    fn namespace_is_the_documented_v5_name() {
        assert_eq!(NAMESPACE, Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:adsproc:record-uuid:v1"));
        assert_eq!(NAMESPACE.to_string(), "837d1c1b-bc06-5853-a752-229cddd62ee8");
    }

    #[test]
    fn ad_metric_uuids_are_pinned() {
        assert_eq!(
            ad_metric("region-a", "ad-42", 1_767_225_600_000).to_string(),
            "b4c49980-570d-5ea3-877e-ded1d6c0ef0a"
        );
        assert_eq!(
            ad_metric("region-b", "ad|x\"y", -60_000).to_string(),
            "cdfeabfd-7c56-5829-9b9c-5c6fbb79f355"
        );
    }

    #[test]
    fn dead_letter_uuids_are_pinned() {
        assert_eq!(dead_letter("ad-events", 3, 1234).to_string(), "5a574b9a-50e4-58a0-8a1c-6660ec369ae0");
    }

    #[test]
    fn identity_parts_cannot_be_forged_by_separators() {
        assert_ne!(ad_metric("a|b", "c", 0), ad_metric("a", "b|c", 0));
        assert_ne!(ad_metric("a\",\"b", "c", 0), ad_metric("a", "b\",\"c", 0));
    }
}
