//! Named crash points: places in a commit protocol where a process can die, and where tests
//! make it die on purpose (`ADSPROC_CRASH_AT=<point>:<n>` aborts the process the n-th time it
//! passes `<point>`). A random SIGKILL rarely lands in the narrow window between two steps of a
//! protocol; these land there every time. Each protocol step gets a point here, and the tests
//! walk [`CrashPoint::ALL`], so a new step is a new case.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// `load`: the batch's rows and offsets are written, the transaction not committed.
    LoadBeforeCommit,
    /// `load`: the batch is committed, the next not begun.
    LoadAfterCommit,
}

impl CrashPoint {
    pub const ALL: &'static [CrashPoint] = &[Self::LoadBeforeCommit, Self::LoadAfterCommit];

    pub fn name(self) -> &'static str {
        match self {
            Self::LoadBeforeCommit => "load-before-commit",
            Self::LoadAfterCommit => "load-after-commit",
        }
    }

    /// Aborts the process (as a crash would: no destructor, no flush) if the environment asks
    /// for this point and this is the asked-for pass.
    pub fn reached(self) {
        static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
        static PASSES: AtomicU64 = AtomicU64::new(0);
        let armed = ARMED.get_or_init(|| {
            let v = std::env::var("ADSPROC_CRASH_AT").ok()?;
            let (point, n) = v.rsplit_once(':').unwrap_or((&v, "1"));
            Some((point.to_string(), n.parse().unwrap_or(1)))
        });
        if let Some((point, n)) = armed {
            if point == self.name() && PASSES.fetch_add(1, Ordering::Relaxed) + 1 == *n {
                eprintln!("crash point {point} (pass {n}): aborting");
                std::process::abort();
            }
        }
    }
}
