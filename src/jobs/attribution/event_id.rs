//! An ad event's `event_id` as the candidate state keeps it.
//!
//! The contract's ids are UUID text (§1): in canonical form (lowercase, hyphenated) one is kept
//! as its 16 bytes, in place, instead of a 36-byte string on the heap. The candidate state holds
//! every valid ad event of the click window, so this is one allocation less per ad event and
//! under half the bytes in memory and in checkpoints. Any other text is kept as it is: only the
//! canonical form maps back to the very same text, and output must repeat the id as it came.

use std::cmp::Ordering;
use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash)]
pub enum EventId {
    /// Canonical UUID text, as its bytes.
    Uuid([u8; 16]),
    /// Any other text (never canonical UUID text, so equal ids have the same variant).
    Text(Box<str>),
}

const CANONICAL_LEN: usize = 36;
const HYPHENS: [usize; 4] = [8, 13, 18, 23];
/// Where the 32 hex digits of canonical UUID text are.
const DIGITS: [usize; 32] = {
    let mut out = [0; 32];
    let (mut i, mut at) = (0, 0);
    while i < 32 {
        if at == 8 || at == 13 || at == 18 || at == 23 {
            at += 1;
        }
        out[i] = at;
        i += 1;
        at += 1;
    }
    out
};
/// A lowercase hex digit's value, 0x10 for any other byte.
const HEX: [u8; 256] = {
    let mut t = [0x10u8; 256];
    let mut c = 0;
    while c < 16 {
        t[b"0123456789abcdef"[c] as usize] = c as u8;
        c += 1;
    }
    t
};

impl EventId {
    pub fn new(s: &str) -> Self {
        match canonical_uuid(s.as_bytes()) {
            Some(b) => EventId::Uuid(b),
            None => EventId::Text(s.into()),
        }
    }

    /// The id's text, in a buffer for the UUID form.
    fn with_text<T>(&self, f: impl FnOnce(&str) -> T) -> T {
        match self {
            EventId::Uuid(b) => {
                let mut buf = [0u8; CANONICAL_LEN];
                f(uuid::Uuid::from_bytes(*b).hyphenated().encode_lower(&mut buf))
            }
            EventId::Text(s) => f(s),
        }
    }
}

/// The bytes of `s` if it is a UUID in canonical form. Without a branch per byte: it runs
/// once per ad event read.
fn canonical_uuid(s: &[u8]) -> Option<[u8; 16]> {
    let s: &[u8; CANONICAL_LEN] = s.try_into().ok()?;
    let mut out = [0u8; 16];
    let mut bad = 0u8;
    for (i, b) in out.iter_mut().enumerate() {
        let (hi, lo) = (HEX[s[DIGITS[2 * i]] as usize], HEX[s[DIGITS[2 * i + 1]] as usize]);
        bad |= hi | lo;
        *b = (hi << 4) | (lo & 0x0f);
    }
    let hyphens = HYPHENS.iter().all(|&i| s[i] == b'-');
    (bad & 0x10 == 0 && hyphens).then_some(out)
}

/// The order of the ids' text (the match rule's tie-break): for two canonical UUIDs that is the
/// order of their bytes, as hex digits sort like the nibbles they stand for.
impl Ord for EventId {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (EventId::Uuid(a), EventId::Uuid(b)) => a.cmp(b),
            (EventId::Text(a), EventId::Text(b)) => a.cmp(b),
            _ => self.with_text(|a| other.with_text(|b| a.cmp(b))),
        }
    }
}

impl PartialOrd for EventId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_text(|s| f.write_str(s))
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_text(|s| write!(f, "{s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_canonical_uuid_text_is_kept_as_bytes_and_every_id_reads_back_as_it_came() {
        let canonical = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
        assert!(matches!(EventId::new(canonical), EventId::Uuid(_)));
        for other in [
            "0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D",
            "0a1b2c3d4e5f4a6b8c7d9e0f1a2b3c4d",
            "{0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d}",
            "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4g",
            "0a1b2c3d-4e5f-4a6b-8c7d_9e0f1a2b3c4d",
            "click-1",
            "",
        ] {
            assert!(matches!(EventId::new(other), EventId::Text(_)), "{other}");
            assert_eq!(EventId::new(other).to_string(), other);
        }
        assert_eq!(EventId::new(canonical).to_string(), canonical);
    }

    fn id_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u128>().prop_map(|v| uuid::Uuid::from_u128(v).hyphenated().to_string()),
            any::<u128>().prop_map(|v| uuid::Uuid::from_u128(v).hyphenated().to_string().to_uppercase()),
            "[0-9a-f-]{0,40}",
            ".{0,8}",
        ]
    }

    proptest! {
        #[test]
        fn ids_compare_and_print_as_their_text(a in id_text(), b in id_text()) {
            let (x, y) = (EventId::new(&a), EventId::new(&b));
            prop_assert_eq!(x.to_string(), a.clone());
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(x == y, a == b);
        }
    }
}
