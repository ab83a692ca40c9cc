//! Named crash points: places in a commit protocol where a process can die, and where tests
//! make it die on purpose (`ADSPROC_CRASH_AT=<point>:<n>` aborts the process the n-th time it
//! passes `<point>`). A random SIGKILL rarely lands in the narrow window between two steps of a
//! protocol; these land there every time. Each protocol step gets a point here, and the tests
//! walk [`CrashPoint::STREAM`] and [`CrashPoint::LOAD`], so a new step is a new case.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Stream key-group assignment (the first or a rebalance): the earlier owners' producers
    /// fenced and their open transactions aborted, no group restored yet.
    StreamAfterFence,
    /// Stream key-group assignment: every owned group restored from its committed checkpoint
    /// and the sources sought, nothing read yet.
    StreamAfterRestore,
    /// Stream checkpoint: snapshots encoded, not yet written to the checkpoint store.
    StreamBeforeSnapshot,
    /// Stream checkpoint: snapshots written (pre-commit), no group's transaction committed.
    StreamAfterSnapshot,
    /// Stream checkpoint: the first key group's transaction committed, the others not.
    StreamBetweenCommits,
    /// Stream checkpoint: every group committed, old checkpoints not pruned yet.
    StreamAfterCommit,
    /// `load`: the batch's rows and offsets are written, the transaction not committed.
    LoadBeforeCommit,
    /// `load`: the batch is committed, the next not begun.
    LoadAfterCommit,
}

impl CrashPoint {
    /// The stream loop: a key-group assignment, then a checkpoint, in protocol order.
    pub const STREAM: &'static [CrashPoint] = &[
        Self::StreamAfterFence,
        Self::StreamAfterRestore,
        Self::StreamBeforeSnapshot,
        Self::StreamAfterSnapshot,
        Self::StreamBetweenCommits,
        Self::StreamAfterCommit,
    ];
    /// The load's batch commit.
    pub const LOAD: &'static [CrashPoint] = &[Self::LoadBeforeCommit, Self::LoadAfterCommit];

    pub fn name(self) -> &'static str {
        match self {
            Self::StreamAfterFence => "stream-after-fence",
            Self::StreamAfterRestore => "stream-after-restore",
            Self::StreamBeforeSnapshot => "stream-before-snapshot",
            Self::StreamAfterSnapshot => "stream-after-snapshot",
            Self::StreamBetweenCommits => "stream-between-commits",
            Self::StreamAfterCommit => "stream-after-commit",
            Self::LoadBeforeCommit => "load-before-commit",
            Self::LoadAfterCommit => "load-after-commit",
        }
    }

    /// Aborts the process (as a crash would: no destructor, no flush) if the environment asks
    /// for this point and this is the asked-for pass; in a thread armed by [`arm`], panics
    /// instead (an in-process test catches it and restarts the loop over the same broker and
    /// checkpoint store, as a new process would).
    pub fn reached(self) {
        let armed_here = ARMED_HERE.with(|a| {
            let (point, n, passes) = a.get()?;
            if point != self {
                return None;
            }
            a.set(Some((point, n, passes + 1)));
            (passes + 1 == n).then_some(n)
        });
        if let Some(n) = armed_here {
            std::panic::panic_any(Crashed { point: self, pass: n });
        }
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

thread_local! {
    static ARMED_HERE: Cell<Option<(CrashPoint, u64, u64)>> = const { Cell::new(None) };
}

/// The panic payload of an armed crash point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crashed {
    pub point: CrashPoint,
    pub pass: u64,
}

/// Arms `point` on this thread: its `pass`-th [`CrashPoint::reached`] panics with [`Crashed`].
/// `None` disarms.
pub fn arm(point: Option<(CrashPoint, u64)>) {
    ARMED_HERE.with(|a| a.set(point.map(|(p, n)| (p, n, 0))));
}
