//! Byte strings of at most 16 bytes as two machine words, for the decoder's hot comparisons:
//! `==` on short slices calls memcmp, and a tenth of the decoder's time once went to such calls.

/// A string of at most 16 bytes as two words that, with its length, determine it: its first and
/// last eight bytes (overlapping when shorter than 16), or four, or the bytes themselves. `None`
/// when it is longer.
#[inline]
pub(super) fn words(s: &[u8]) -> Option<(u64, u64)> {
    let n = s.len();
    let w8 = |at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("eight bytes"));
    let w4 = |at: usize| u64::from(u32::from_le_bytes(s[at..at + 4].try_into().expect("four bytes")));
    match n {
        17.. => None,
        8.. => Some((w8(0), w8(n - 8))),
        4.. => Some((w4(0), w4(n - 4))),
        _ => Some((s.iter().rev().fold(0, |w, &b| (w << 8) | u64::from(b)), 0)),
    }
}

/// Whether two byte strings of the same length, at most 16, are equal, by their [`words`].
#[inline]
pub(super) fn same_short(a: &[u8], b: &[u8]) -> bool {
    debug_assert!(a.len() == b.len() && a.len() <= 16);
    words(a) == words(b)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::same_short;

    proptest! {
        /// Equal exactly when `==` says so, at every length up to 16 and whichever byte differs.
        #[test]
        fn same_short_is_equality(a in proptest::collection::vec(any::<u8>(), 0..=16), flip in any::<prop::sample::Index>(), bit in 0u8..8, differ in any::<bool>()) {
            let mut b = a.clone();
            if differ && !b.is_empty() {
                let i = flip.index(b.len());
                b[i] ^= 1 << bit;
            }
            prop_assert_eq!(same_short(&a, &b), a == b);
        }
    }
}
