// mimalloc, with no purging: by default mimalloc returns freed memory to the kernel after
// 10 ms, so the next epoch's buffers fault fresh pages in again, each one zeroed by the kernel.
// On the VMs measured here a fresh page costs far more than its use (10 M events: 2.7 GB of
// faults instead of 4 GB, and up to 3 s less system time). A job's memory is its working set
// either way: the stream runtime holds steady state, a backfill ends. The system allocator also
// returned each epoch's Arrow buffers to the kernel and faulted them back in.
//
// Large OS pages (2 MiB, `mi_option_large_os_pages`) are left off: mimalloc commits such
// memory eagerly, and the backfill ran the same without them (4 pairs on 10 M events: wall
// 4.23 vs 4.22 s) while the stream job ran 8 % faster. Transparent huge pages are off too
// (`no_transparent_huge_pages`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` of mimalloc v3's `mimalloc.h` (the version libmimalloc-sys builds by
/// default), which libmimalloc-sys does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // SAFETY: sets a process-wide allocator option before any thread exists; mimalloc reads
    // it when it next asks the OS for memory.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
    no_transparent_huge_pages();
    adsproc::cli::main()
}

/// Turns transparent huge pages off for this process. mimalloc asks for them (`MADV_HUGEPAGE`
/// on its arenas, its `allow_thp` option), and the kernel zeroes each 2 MiB page whole on its
/// first touch. On these VMs a huge page whose backing the host took back (free page
/// reporting, docs/backfill.md) costs 2-4 ms per MiB to fault in again, 4 KiB pages ~0.7 ms.
/// - `adsproc stream`: a tenth of its CPU samples were `clear_page` under huge-page faults, as
///   state and buffers grew. 5 alternating pairs on the 1M stream bench: sustained median
///   336k -> 362k messages/s (faster in all 5), system CPU 0.79 -> 0.61 s, peak RSS 446 -> 376 MB.
/// - `adsproc backfill`, 10M events, 8 alternating pairs: faster in all 8; back to back, wall
///   median 5.54 -> 5.12 s; after an 8 s pause (a run on memory the host had taken back),
///   7.37 -> 5.69 s; system CPU 1.9-5.1 -> 1.0-1.4 s. Its dedupe table is probed at random, but
///   the probes are prefetched, so the extra TLB misses cost less than the faults.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes no pointer; it sets a flag on this process's memory map.
    // A kernel that refuses it only leaves the process slower, so the result is not checked.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
