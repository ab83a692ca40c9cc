//! The fast path of the ad-event decoder: a parser for the one shape producers actually send, a
//! flat JSON object whose values are strings without escapes, integers, `null`s and booleans.
//!
//! Why: even with sonic-rs behind serde's visitors, JSON parsing was a fifth of the stream job's
//! CPU samples, most of it in the generic machinery (a visitor call per key and value, a
//! field-name search per key, number parsing into three types) rather than in reading bytes.
//! This parser reads the common shape in one pass over bytes and gives up — `None` — on
//! anything else: a backslash, a control character, a nested value, a number that is not an
//! integer in the range of i64 (or is `-0`, which serde_json reads as a float), a syntax error.
//! What it gives up on goes to the general path (`raw::parse`), so every message it accepts is
//! read exactly as serde_json reads it, and every other message is read as before:
//! `raw::tests::flat_reads_messages_as_serde_json_does` holds it to that.

use std::borrow::Cow;

use super::columns as c;
use super::raw::{Fields, Scalar};
use super::short_str::same_short;

/// [`parse_predicting`] with the default prediction.
#[cfg(test)]
pub(super) fn parse(text: &str) -> Option<Fields<'_>> {
    parse_predicting(text, &mut KeyOrder::default())
}

/// For each place of a key in an object, the field whose name it held in the last message read
/// there. A producer writes its fields in one order, so a key is nearly always the name its
/// place predicts: one comparison of its bytes then reads it, instead of a scan for its closing
/// quote and a look-up of its name (the keys were about a fifth of the decoder's time). Only
/// a speed-up: a key read by prediction is the key the scan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyOrder([u8; NAMES.len()]);

/// No prediction for a place.
const UNKNOWN: u8 = u8::MAX;

impl Default for KeyOrder {
    /// The order `canonical_payload::write` writes, which is serde_json's (sorted keys).
    fn default() -> Self {
        let mut order = [UNKNOWN; NAMES.len()];
        for (slot, &field) in order.iter_mut().zip(&WRITTEN_ORDER) {
            *slot = field as u8;
        }
        Self(order)
    }
}

/// The contract's fields of `text`, if it is a flat object this parser reads. The keys `order`
/// predicts are read by comparison; `order` is updated where it missed.
///
/// `text` must be the whole payload, already checked to be UTF-8: serde_json accepts invalid
/// UTF-8 inside an ignored string, so a payload that is not UTF-8 is left to the general path.
pub(super) fn parse_predicting<'a>(text: &'a str, order: &mut KeyOrder) -> Option<Fields<'a>> {
    let mut r = Reader { text, at: 0 };
    let mut fields = Fields::default();
    // Whether the payload is laid out as `canonical_payload::write` writes its fields: no
    // whitespace, and the keys exactly the contract's names in WRITTEN_ORDER. Values need no
    // check: a string this parser reads has no escapes, so is written back as it was, and an
    // integer it reads is in its shortest form (no leading zero, not `-0`); a value of the
    // wrong type is a decode error, and then the payload is kept anyway.
    let mut spaced = r.whitespace();
    let mut keys = 0;
    let mut in_order = true;
    r.expect(b'{')?;
    spaced |= r.whitespace();
    if r.peek()? == b'}' {
        r.at += 1;
    } else {
        loop {
            spaced |= r.whitespace();
            let predicted = order.0.get(keys).copied().unwrap_or(UNKNOWN);
            let field = match r.key_named(predicted) {
                Some(f) => Some(f),
                None => {
                    let field = field_of(r.string()?);
                    if let Some(slot) = order.0.get_mut(keys) {
                        *slot = field.map_or(UNKNOWN, |f| f as u8);
                    }
                    field
                }
            };
            spaced |= r.whitespace();
            r.expect(b':')?;
            spaced |= r.whitespace();
            let value = r.scalar()?;
            in_order &= field.is_some() && WRITTEN_ORDER.get(keys).copied() == field;
            keys += 1;
            // The last of repeated keys wins, as in the general path.
            match field {
                Some(EVENT_TIME_SLOT) => fields.event_time = Some(value),
                Some(i) => fields.strings[i] = Some(value),
                None => {}
            }
            spaced |= r.whitespace();
            match r.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    }
    spaced |= r.whitespace();
    fields.canonical_layout = !spaced && in_order && keys == WRITTEN_ORDER.len();
    (r.at == text.len()).then_some(fields)
}

/// The places in [`NAMES`] of the fields in the order `canonical_payload::write` writes them
/// (held to it by a test).
const WRITTEN_ORDER: [usize; 9] = [2, 4, 3, 0, 8, 1, 7, 6, 5];

/// The contract's field names: the string fields, then `event_time`.
const NAMES: [&str; 9] = {
    let s = c::AD_EVENT_STRING_FIELDS;
    [s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], c::EVENT_TIME]
};
const EVENT_TIME_SLOT: usize = 8;

/// For each name length, the (1-based) places in [`NAMES`] of the names that long. Every key of
/// every message is looked up: comparing it with each name in turn was a fifth of the decoder's
/// own time.
const BY_LENGTH: [[u8; 2]; 16] = {
    let mut table = [[0u8; 2]; 16];
    let mut i = 0;
    while i < NAMES.len() {
        let slot = &mut table[NAMES[i].len()];
        if slot[0] == 0 {
            slot[0] = i as u8 + 1;
        } else {
            assert!(slot[1] == 0, "at most two field names of one length");
            slot[1] = i as u8 + 1;
        }
        i += 1;
    }
    table
};

/// The place in [`NAMES`] of the field `key` names, if any.
fn field_of(key: &str) -> Option<usize> {
    let [a, b] = *BY_LENGTH.get(key.len())?;
    [a, b].into_iter().take_while(|&p| p != 0).map(|p| usize::from(p) - 1).find(|&i| same_short(NAMES[i].as_bytes(), key.as_bytes()))
}

struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        (self.next()? == b).then_some(())
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.at.checked_add(word.len())?;
        (self.text.as_bytes().get(self.at..end)? == word.as_bytes()).then(|| self.at = end)
    }

    /// JSON's whitespace: space, tab, line feed, carriage return. True if there was any.
    fn whitespace(&mut self) -> bool {
        let start = self.at;
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
        self.at > start
    }

    /// Reads the key `"<name of field>"` if that is what comes next; `field` may be
    /// [`UNKNOWN`]. A name has no quote, backslash or control character, so this reads
    /// exactly what [`Self::string`] would.
    fn key_named(&mut self, field: u8) -> Option<usize> {
        let name = NAMES.get(usize::from(field))?.as_bytes();
        let rest = self.text.as_bytes().get(self.at..)?;
        let matches = rest.len() > name.len() + 1 && rest[0] == b'"' && rest[name.len() + 1] == b'"' && same_short(&rest[1..=name.len()], name);
        matches.then(|| {
            self.at += name.len() + 2;
            usize::from(field)
        })
    }

    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let end = start + string_end(&self.text.as_bytes()[start..])?;
        self.at = end + 1;
        Some(&self.text[start..end])
    }

    fn scalar(&mut self) -> Option<Scalar<'a>> {
        match self.peek()? {
            b'"' => self.string().map(|s| Scalar::Str(Cow::Borrowed(s))),
            b'n' => self.literal("null").map(|()| Scalar::Null),
            b't' => self.literal("true").map(|()| Scalar::Other("boolean")),
            b'f' => self.literal("false").map(|()| Scalar::Other("boolean")),
            b'-' | b'0'..=b'9' => self.integer().map(Scalar::Int),
            _ => None,
        }
    }

    /// An integer in JSON's grammar that fits in i64, accumulated negatively so that i64::MIN
    /// fits; a fraction, an exponent, `-0` or an overflow is left to the general path.
    fn integer(&mut self) -> Option<i64> {
        let negative = self.peek()? == b'-';
        if negative {
            self.at += 1;
        }
        let first = self.next()?;
        if !first.is_ascii_digit() || (first == b'0' && (negative || self.peek().is_some_and(|b| b.is_ascii_digit()))) {
            return None;
        }
        let mut v = -i64::from(first - b'0');
        while let Some(d @ b'0'..=b'9') = self.peek() {
            v = v.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
            self.at += 1;
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        if negative {
            Some(v)
        } else {
            v.checked_neg()
        }
    }
}

/// The length of the string that starts `bytes`, if a closing quote ends it before any
/// backslash or control character. Sixteen bytes at a time with SSE2 where there is (every
/// x86-64), then eight at a time (the strings are mostly ids of 5 to 40 bytes): a
/// byte-at-a-time loop was most of this parser's time.
fn string_end(bytes: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let mut at = 0;
        while at + 16 <= bytes.len() {
            // SAFETY: SSE2 is part of x86-64; the 16 bytes loaded (unaligned) are in bounds.
            let stop = unsafe {
                let v = _mm_loadu_si128(bytes.as_ptr().add(at).cast());
                let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
                let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
                // Below 0x20 (unsigned) exactly where max(byte, 0x1f) is 0x1f.
                let control = _mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8(0x1f)), _mm_set1_epi8(0x1f));
                _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
            };
            if stop != 0 {
                let i = at + stop.trailing_zeros() as usize;
                return (bytes[i] == b'"').then_some(i);
            }
            at += 16;
        }
        string_end_from(bytes, at)
    }
    #[cfg(not(target_arch = "x86_64"))]
    string_end_from(bytes, 0)
}

/// [`string_end`] from `at` on, eight bytes at a time.
fn string_end_from(bytes: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // A byte's high bit is set in `stop` where it is a quote, a backslash or below 0x20 (the
        // classic "has zero byte" test applied to word ^ quote, word ^ backslash, and the
        // "has byte less than n" test); bytes above 0x7f never set it.
        let zero = |w: u64| w.wrapping_sub(ONES) & !w;
        let (quote, backslash) = (zero(word ^ (ONES * u64::from(b'"'))), zero(word ^ (ONES * u64::from(b'\\'))));
        let stop = (quote | backslash | word.wrapping_sub(ONES * 0x20)) & !word & HIGHS;
        if stop != 0 {
            let i = at + (stop.trailing_zeros() / 8) as usize;
            return (bytes[i] == b'"').then_some(i);
        }
        at += 8;
    }
    let i = at + bytes[at..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    (bytes[i] == b'"').then_some(i)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{field_of, string_end, string_end_from, NAMES};

    #[test]
    fn written_order_is_the_re_created_payloads() {
        assert_eq!(super::WRITTEN_ORDER.map(|i| NAMES[i]), crate::contract::canonical_payload::names_in_written_order());
    }

    #[test]
    fn field_names_are_found_by_length_and_bytes() {
        for (i, name) in NAMES.iter().enumerate() {
            assert_eq!(field_of(name), Some(i), "{name}");
        }
        assert_eq!(NAMES[super::EVENT_TIME_SLOT], crate::contract::columns::EVENT_TIME);
        for other in ["", "event_ix", "event_tim", "regions", "advertiser_idx", "a_very_long_field_name", "store_iD"] {
            assert_eq!(field_of(other), None, "{other}");
        }
    }

    proptest! {
        /// Eight bytes at a time finds what a byte-at-a-time scan finds, whichever byte of a
        /// word stops it and whatever comes after (the bit trick's false positives sit above
        /// its first true one).
        #[test]
        fn string_end_is_the_first_quote_before_any_backslash_or_control(
            bytes in proptest::collection::vec(prop_oneof![1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0u8..0x20, 20 => 0x20u8..0x80, 5 => 0x80u8..=0xff], 0..60),
        ) {
            let naive = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).filter(|&i| bytes[i] == b'"');
            prop_assert_eq!(string_end(&bytes), naive);
            prop_assert_eq!(string_end_from(&bytes, 0), naive);
        }
    }
}
