//! `--max-rate`: paces output so downstream stores are not flooded by a restatement.

use std::time::{Duration, Instant};

pub struct Throttle {
    per_second: f64,
    started: Option<Instant>,
    released: u64,
}

impl Throttle {
    pub fn new(per_second: f64) -> Self {
        assert!(per_second > 0.0, "rate must be positive");
        Self { per_second, started: None, released: 0 }
    }

    /// How many records the limit allows in `tick` (at least one).
    pub fn per_tick(&self, tick: Duration) -> usize {
        ((self.per_second * tick.as_secs_f64()) as usize).max(1)
    }

    /// Blocks until releasing `n` more records keeps the average rate at or under the limit.
    pub fn acquire(&mut self, n: u64) {
        let started = *self.started.get_or_insert_with(Instant::now);
        self.released += n;
        let due = Duration::from_secs_f64(self.released as f64 / self.per_second);
        let elapsed = started.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_to_the_limit() {
        let mut t = Throttle::new(1_000.0);
        let start = Instant::now();
        for _ in 0..10 {
            t.acquire(20);
        }
        // 200 records at 1000/s take at least 0.2 s.
        assert!(start.elapsed() >= Duration::from_millis(195), "{:?}", start.elapsed());
    }
}
