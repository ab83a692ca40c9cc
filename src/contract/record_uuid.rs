//! Deterministic `record_uuid`s (see `docs/record-uuid.md`).
//!
//! A record's UUID is a UUIDv5 (SHA-1, RFC 9562) in the adsproc namespace of the JSON array
//! that names the record's identity: `["ad-metrics", region, ad_id, "<window_start ms>"]`. JSON
//! array encoding is unambiguous for any strings (no separator can be forged), is easy to
//! reproduce in any language, and keeps the table name in the identity so two tables never
//! share a UUID. Counts are deliberately not part of the identity: a corrected window replaces
//! the earlier value under the same UUID in an upsert store.

use std::cell::RefCell;
use std::fmt::Write as _;

use sha1::digest::generic_array::GenericArray;
use sha1::{Digest, Sha1};
use uuid::Uuid;

/// `Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:adsproc:record-uuid:v1")`, written out so that the
/// namespace is a literal other implementations can copy.
pub const NAMESPACE: Uuid = Uuid::from_u128(0x837d1c1b_bc06_5853_a752_229cddd62ee8);

/// Whether JSON (as `serde_json` writes it) escapes any byte of `s`: `"`, `\\` and control
/// characters. Identity strings (regions, ad ids, topics) almost never need it.
///
/// Every ad-metrics record checks its four name parts (~40 bytes): byte by byte that was ~2 %
/// of a backfill's CPU samples, so whole 8-byte words are tested at once ("SWAR"), and
/// `tests::needs_escape_is_its_byte_by_byte_definition` holds it to [`needs_escape_bytewise`].
fn needs_escape(s: &str) -> bool {
    let mut words = s.as_bytes().chunks_exact(8);
    for w in &mut words {
        if word_needs_escape(u64::from_le_bytes(w.try_into().expect("8 bytes"))) {
            return true;
        }
    }
    needs_escape_bytewise(words.remainder())
}

fn needs_escape_bytewise(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Whether any byte of `w` is below 0x20, `"` or `\\`. `(x - 0x01…) & !x & 0x80…` is non-zero
/// iff some byte of `x` is zero (its lowest such byte always sets its flag; a borrow can only
/// add flags above a zero byte), and likewise `(x - 0x20…) & !x & 0x80…` iff some byte is
/// below 0x20: a byte that has its top bit set is masked out by `!x`, and any other byte below
/// 0x20 borrows into its top bit.
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let control = w.wrapping_sub(0x20 * ONES) & !w & HIGH;
    (control | zero_byte(w ^ (b'"' as u64 * ONES)) | zero_byte(w ^ (b'\\' as u64 * ONES))) != 0
}

/// Appends `s` as a JSON string literal, escaping exactly as `serde_json` does (`"`, `\\` and
/// control characters; nothing else), so the name is the documented JSON array.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    if !needs_escape(s) {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// The UUIDv5 of the JSON array of `parts`: `Uuid::new_v5(&NAMESPACE, json_array)`. Output
/// paths derive millions of these. When no part needs escaping (nearly always) and the name
/// is short, the JSON is written straight into the hash's stack buffer; otherwise it is built
/// in a reused string.
fn derive(parts: &[&str]) -> Uuid {
    // `[`, `]`, the commas, and each part in quotes.
    let len = 2 + parts.len().saturating_sub(1) + parts.iter().map(|p| p.len() + 2).sum::<usize>();
    if NAME_AT + len <= STACK_NAME_END && !parts.iter().any(|p| needs_escape(p)) {
        let mut buf = [0u8; 64 * STACK_BLOCKS];
        let mut at = NAME_AT;
        let mut put = |bytes: &[u8]| {
            buf[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(b"[");
        for (i, p) in parts.iter().enumerate() {
            put(if i == 0 { b"\"" } else { b",\"" });
            put(p.as_bytes());
            put(b"\"");
        }
        put(b"]");
        return v5_on_stack(&mut buf, at);
    }
    thread_local! {
        static NAME: RefCell<String> = RefCell::new(String::with_capacity(128));
    }
    NAME.with(|name| {
        let mut name = name.borrow_mut();
        name.clear();
        name.push('[');
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                name.push(',');
            }
            push_json_string(&mut name, p);
        }
        name.push(']');
        v5(name.as_bytes())
    })
}

/// Padded messages up to this many SHA-1 blocks are hashed from a stack buffer.
const STACK_BLOCKS: usize = 3;
/// Where the name starts in that buffer: after the namespace.
const NAME_AT: usize = 16;
/// Where the longest name that fits must end: the padding takes at least a 0x80 byte and the
/// 8-byte length.
const STACK_NAME_END: usize = 64 * STACK_BLOCKS - 9;

/// `Uuid::new_v5(&NAMESPACE, name)`.
fn v5(name: &[u8]) -> Uuid {
    if NAME_AT + name.len() <= STACK_NAME_END {
        let mut buf = [0u8; 64 * STACK_BLOCKS];
        buf[NAME_AT..NAME_AT + name.len()].copy_from_slice(name);
        return v5_on_stack(&mut buf, NAME_AT + name.len());
    }
    let mut h = Sha1::new();
    h.update(NAMESPACE.as_bytes());
    h.update(name);
    uuid_of_sha1(h.finalize().into())
}

/// The UUIDv5 of the name in `buf[NAME_AT..end]`, the rest of `buf` zero. The padded message
/// is laid out in place and handed to SHA-1's compression function (which uses the CPU's SHA
/// extensions when present) block by block: for names this short the general hasher's
/// buffering and finalization cost more than the compression itself.
fn v5_on_stack(buf: &mut [u8; 64 * STACK_BLOCKS], end: usize) -> Uuid {
    debug_assert!(end <= STACK_NAME_END && buf[end..].iter().all(|&b| b == 0));
    buf[..NAME_AT].copy_from_slice(NAMESPACE.as_bytes());
    // The message, a 0x80 byte, zeros, and the message's length in bits (8 bytes, big endian).
    buf[end] = 0x80;
    let padded = (end + 9).div_ceil(64) * 64;
    buf[padded - 8..padded].copy_from_slice(&(end as u64 * 8).to_be_bytes());
    let mut state = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];
    for block in buf[..padded].chunks_exact(64) {
        sha1::compress(&mut state, std::slice::from_ref(GenericArray::from_slice(block)));
    }
    let mut digest = [0u8; 20];
    for (o, w) in digest.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    uuid_of_sha1(digest)
}

fn uuid_of_sha1(digest: [u8; 20]) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// Identity of an `ad-metrics` record: region, ad and the window's start.
pub fn ad_metric(region: &str, ad_id: &str, window_start_ms: i64) -> Uuid {
    ad_metric_of_start(region, ad_id, itoa::Buffer::new().format(window_start_ms))
}

/// [`ad_metric`] with the window's start already written in decimal (as `i64::to_string`
/// writes it): a writer formats each start once for its thousands of windows.
pub fn ad_metric_of_start(region: &str, ad_id: &str, window_start_decimal: &str) -> Uuid {
    derive(&["ad-metrics", region, ad_id, window_start_decimal])
}

/// Identity of an `attributed-orders` record: the order. Its first arrival decides the
/// attribution and every later arrival (a status update) replaces the record's value, so the
/// order alone names it; the matched ad event is part of the value, not the identity.
pub fn attributed_order(order_id: &str) -> Uuid {
    derive(&["attributed-orders", order_id])
}

/// Identity of a dead-letter record: the source position of the rejected message, so a
/// message rejected by the stream job and again by a backfill is one record downstream.
pub fn dead_letter(topic: &str, partition: i32, offset: i64) -> Uuid {
    derive(&["dlq", topic, itoa::Buffer::new().format(partition), itoa::Buffer::new().format(offset)])
}

/// A rejected row without a source position (possible only in a hand-made archive): its
/// identity is its content.
pub fn dead_letter_unpositioned(topic: &str, payload: &str) -> Uuid {
    derive(&["dlq", topic, payload])
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy;

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
        assert_eq!(ad_metric("region-a", "ad-42", 1_767_225_600_000).to_string(), "b4c49980-570d-5ea3-877e-ded1d6c0ef0a");
        assert_eq!(ad_metric("region-b", "ad|x\"y", -60_000).to_string(), "cdfeabfd-7c56-5829-9b9c-5c6fbb79f355");
        assert_eq!(ad_metric_of_start("region-a", "ad-42", "1767225600000").to_string(), "b4c49980-570d-5ea3-877e-ded1d6c0ef0a");
    }

    #[test]
    fn attributed_order_uuids_are_pinned() {
        assert_eq!(attributed_order("order-0001").to_string(), "3e8fd355-a60a-53f4-aae7-916a75056a17");
        assert_eq!(attributed_order("9f1c2d3e-0000-4000-8000-00000000abcd").to_string(), "a7c5c86d-deaf-5680-8868-3b28861ddd63");
        assert_eq!(attributed_order("o|\"x\"").to_string(), "4a13192f-8ce6-5144-ab51-f345d3245c52");
    }

    #[test]
    fn dead_letter_uuids_are_pinned() {
        assert_eq!(dead_letter("ad-events", 3, 1234).to_string(), "5a574b9a-50e4-58a0-8a1c-6660ec369ae0");
    }

    #[test]
    fn the_name_is_serde_json_s_encoding_of_the_parts() {
        let nasty = ["", "plain", "quote\"d", "back\\slash", "tab\tnew\nline\r", "\u{1}\u{1f}\u{7f}", "ü€😀", "a/b", "\u{8}\u{c}"];
        for a in nasty {
            for b in nasty {
                let parts = ["ad-metrics", a, b];
                let json = serde_json::to_string(&parts).unwrap();
                assert_eq!(derive(&parts), Uuid::new_v5(&NAMESPACE, json.as_bytes()), "{json}");
            }
        }
    }

    /// Names of every length up to past the stack buffer, hashed as given and built from parts,
    /// so that the padding's edge cases (the length field spilling into another block) are all
    /// met.
    #[test]
    fn v5_is_uuid_new_v5_for_every_name_length() {
        for n in 0..=64 * (STACK_BLOCKS + 1) {
            let name: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
            assert_eq!(v5(&name), Uuid::new_v5(&NAMESPACE, &name), "length {n}");
            let part = "x".repeat(n);
            let json = serde_json::to_string(&["ad-metrics", &part]).unwrap();
            assert_eq!(derive(&["ad-metrics", &part]), Uuid::new_v5(&NAMESPACE, json.as_bytes()), "{json}");
        }
    }

    proptest::proptest! {
        /// Strings of bytes around each boundary (0x1f/0x20, `"`, `\\`, 0x7f/0x80 and UTF-8),
        /// at every offset within and across words.
        #[test]
        fn needs_escape_is_its_byte_by_byte_definition(
            s in proptest::collection::vec(proptest::prop_oneof![
                proptest::sample::select(vec!['\0', '\u{1f}', ' ', '!', '"', '#', '[', '\\', ']', '\u{7f}', '\u{80}', 'é', '€', 'a']),
                proptest::char::any(),
            ], 0..40).prop_map(|c| c.into_iter().collect::<String>()),
        ) {
            proptest::prop_assert_eq!(needs_escape(&s), needs_escape_bytewise(s.as_bytes()));
        }

        #[test]
        fn any_strings_derive_as_new_v5_of_their_json(a in ".*", b in "\\PC*") {
            let parts = ["dlq", a.as_str(), b.as_str()];
            let json = serde_json::to_string(&parts).unwrap();
            proptest::prop_assert_eq!(derive(&parts), Uuid::new_v5(&NAMESPACE, json.as_bytes()));
        }
    }

    #[test]
    fn identity_parts_cannot_be_forged_by_separators() {
        assert_ne!(ad_metric("a|b", "c", 0), ad_metric("a", "b|c", 0));
        assert_ne!(ad_metric("a\",\"b", "c", 0), ad_metric("a", "b\",\"c", 0));
    }
}
