//! The cache-prefetch hint the core's tables use to overlap their cache misses: a lookup
//! names the slot it will read some lookups ahead (dedupe, window counts, interned names).

/// Asks the CPU to bring the cache line at `p` in. A hint only: nothing is read into the
/// program, so any address (stale, dangling, past the end) is fine and costs nothing but the
/// hint. A no-op where the architecture has none.
#[inline]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch does not dereference and cannot fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
