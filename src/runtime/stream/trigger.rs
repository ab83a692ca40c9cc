//! When the stream job takes a checkpoint, i.e. commits its output transaction.
//!
//! Every interval, as Flink does; and early, once a minimum pause has passed, when the
//! watermark has fired windows since the last one. A window's on-time result is drained the
//! moment the watermark passes its end, but is readable only when its transaction commits: on
//! the interval alone it waits 0 to one interval for that, depending on where the window's end
//! falls in the checkpoint cycle, so a window was readable out-of-orderness + up to an interval
//! after its end. Committing when windows fire makes it out-of-orderness + the consumer's lag +
//! one commit, at any phase of the cycle. Live, windows fire once per window size, so this adds
//! at most one checkpoint per window; the pause bounds what it can add while a backlog is read
//! (when the watermark passes window ends in quick succession).

use std::time::Duration;

use crate::core::job::Job;

/// A job without firings ([`Job::firings`] is None) checkpoints on the interval only.
#[derive(Debug, Clone)]
pub struct CheckpointTrigger<J: Job> {
    interval: Duration,
    min_pause: Duration,
    rules: J::Rules,
    /// [`Job::firings`] at the ingest watermark of the last checkpoint.
    fired_at_last: Option<i64>,
}

impl<J: Job> CheckpointTrigger<J> {
    pub fn new(interval: Duration, min_pause: Duration, rules: &J::Rules) -> Self {
        Self { interval, min_pause, rules: rules.clone(), fired_at_last: None }
    }

    /// Whether to checkpoint now, `since_last` after the last one began, with the driver's
    /// ingest watermark at `watermark` (the records it fired are drained already).
    pub fn due(&self, since_last: Duration, watermark: Option<i64>) -> bool {
        if since_last >= self.interval {
            return true;
        }
        // Without a watermark at the last checkpoint (a fresh start) nothing can have fired
        // since: windows exist only after the first rows.
        let fired_since = matches!((self.fired_at_last, self.fired(watermark)), (Some(a), Some(b)) if b > a);
        since_last >= self.min_pause && fired_since
    }

    /// Records a checkpoint (or a restore) taken at `watermark`.
    pub fn taken(&mut self, watermark: Option<i64>) {
        self.fired_at_last = self.fired(watermark);
    }

    fn fired(&self, watermark: Option<i64>) -> Option<i64> {
        watermark.filter(|w| *w > i64::MIN).and_then(|w| J::firings(&self.rules, w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::aggregation::rules::AggregationRules;
    use crate::jobs::aggregation::Aggregation;

    const MIN: i64 = 60_000;
    const OOO: i64 = 10_000;

    fn trigger() -> CheckpointTrigger<Aggregation> {
        let rules = AggregationRules::defaults();
        assert_eq!((rules.window_ms, rules.out_of_orderness_ms), (MIN, OOO));
        CheckpointTrigger::new(Duration::from_secs(10), Duration::from_secs(5), &rules)
    }

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn the_interval_always_triggers() {
        let mut t = trigger();
        t.taken(Some(MIN));
        assert!(!t.due(s(9.9), Some(MIN + 1)));
        assert!(t.due(s(10.0), Some(MIN + 1)));
        // No watermark yet: only the interval.
        let t = trigger();
        assert!(!t.due(s(9.9), None));
        assert!(t.due(s(10.0), None));
    }

    #[test]
    fn a_fired_window_triggers_after_the_pause_only() {
        let mut t = trigger();
        // Last checkpoint at ingest watermark 1:09.9: window [0:00, 1:00) fires at 1:10.
        t.taken(Some(MIN + OOO - 100));
        assert!(!t.due(s(6.0), Some(MIN + OOO - 1)), "nothing fired yet");
        assert!(t.due(s(6.0), Some(MIN + OOO)), "fired, pause passed");
        assert!(!t.due(s(4.9), Some(MIN + OOO)), "fired, but within the pause");
        // Once taken at that watermark, the same firing does not trigger again.
        t.taken(Some(MIN + OOO));
        assert!(!t.due(s(6.0), Some(MIN + OOO + 5_000)));
        // The first watermark after a fresh start is no firing.
        let t = trigger();
        assert!(!t.due(s(5.0), Some(MIN + OOO)));
    }
}
