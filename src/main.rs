// mimalloc with large OS pages: the dedupe state of a backfill is a hash table of hundreds of
// megabytes probed at random. With 4 KiB pages nearly every probe also misses the TLB; with
// 2 MiB pages the probe cost halves (measured: dedupe 3.5 s → 1.4 s CPU on 10 M events). The
// system allocator also returned each epoch's Arrow buffers to the kernel and faulted them
// back in.
//
// And no purging: by default mimalloc returns freed memory to the kernel after 10 ms, so the
// next epoch's buffers fault fresh pages in again, each one zeroed by the kernel. On the VMs
// measured here a fresh page costs far more than its use (10 M events: 2.7 GB of huge-page
// faults instead of 4 GB, and up to 3 s less system time). A job's memory is its working set
// either way: the stream runtime holds steady state, a backfill ends.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` of mimalloc v3's `mimalloc.h` (the version libmimalloc-sys builds by
/// default), which libmimalloc-sys does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // SAFETY: sets a process-wide allocator option before any thread exists; mimalloc reads
    // it when it next asks the OS for memory.
    unsafe {
        libmimalloc_sys::mi_option_set(libmimalloc_sys::mi_option_large_os_pages, 1);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
    adsproc::cli::main()
}
