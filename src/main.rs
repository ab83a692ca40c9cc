// mimalloc, with no purging: by default mimalloc returns freed memory to the kernel after
// 10 ms, so the next epoch's buffers fault fresh pages in again, each one zeroed by the kernel.
// On the VMs measured here a fresh page costs far more than its use (10 M events: 2.7 GB of
// faults instead of 4 GB, and up to 3 s less system time). A job's memory is its working set
// either way: the stream runtime holds steady state, a backfill ends. The system allocator also
// returned each epoch's Arrow buffers to the kernel and faulted them back in.
//
// Large OS pages (2 MiB, `mi_option_large_os_pages`) are left off: mimalloc commits such
// memory eagerly, and the backfill ran the same without them (4 pairs on 10 M events: wall
// 4.23 vs 4.22 s) while the stream job ran 8 % faster. mimalloc still advises the kernel to
// back its arenas with transparent huge pages (its `allow_thp` option); the backfill keeps them
// (its dedupe table is probed at random) and `adsproc stream` turns them off for its process
// (`src/cli/stream.rs`).
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
    adsproc::cli::main()
}
