//! Progress of long work: a bar on a terminal, plain log lines elsewhere (CI, files, pipes).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub trait Progress: Send + Sync {
    fn begin(&self, files: u64, bytes: u64);
    fn advance(&self, files: u64, bytes: u64, events: u64);
    fn end(&self);
    /// Records and dead letters written so far, in all.
    fn written(&self, _records: u64, _dead_letters: u64) {}
}

/// Chooses a bar when stderr is a terminal, else log lines every `interval`.
pub fn for_stderr(quiet: bool) -> Box<dyn Progress> {
    if quiet {
        Box::new(Silent)
    } else if std::io::stderr().is_terminal() {
        Box::new(Bar::new())
    } else {
        Box::new(LogLines::new(Duration::from_secs(5)))
    }
}

pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _: u64, _: u64) {}
    fn advance(&self, _: u64, _: u64, _: u64) {}
    fn end(&self) {}
}

struct Bar {
    bar: ProgressBar,
    state: Mutex<(u64, u64, Instant)>,
}

/// The bar on the terminal now, if any: log lines are written around it
/// ([`LogWriter`]), not into it.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Where log lines go (tracing's writer): stderr, with the progress bar on the terminal
/// cleared while a line is written and drawn again after it, so that a warning in the middle of
/// a backfill gets a line of its own instead of being drawn over.
pub struct LogWriter(Vec<u8>);

impl LogWriter {
    pub fn make() -> Self {
        Self(Vec::new())
    }
}

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        let write = || {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), &line);
        };
        match SHOWN.lock().ok().and_then(|b| b.clone()) {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(mut shown) = SHOWN.lock() {
            *shown = Some(bar.clone());
        }
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} | {msg} | ETA {eta}",
            )
            .expect("valid template"),
        );
        Self { bar, state: Mutex::new((0, 0, Instant::now())) }
    }
}

impl Progress for Bar {
    fn begin(&self, _files: u64, bytes: u64) {
        self.bar.set_length(bytes);
        *self.state.lock().unwrap() = (0, 0, Instant::now());
    }

    fn advance(&self, files: u64, bytes: u64, events: u64) {
        let mut s = self.state.lock().unwrap();
        s.0 += files;
        s.1 += events;
        let rate = s.1 as f64 / s.2.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!("{} files, {} events, {:.0} events/s", s.0, s.1, rate));
        self.bar.inc(bytes);
    }

    fn end(&self) {
        if self.bar.is_finished() {
            return;
        }
        self.bar.finish();
        // indicatif leaves the cursor at the end of the bar's last line: end that line, so that
        // what is printed next (the report's warnings) starts on its own.
        eprintln!();
        if let Ok(mut shown) = SHOWN.lock() {
            *shown = None;
        }
    }
}

struct LogLines {
    interval: Duration,
    state: Mutex<LogState>,
}

struct LogState {
    total_files: u64,
    total_bytes: u64,
    files: u64,
    bytes: u64,
    events: u64,
    started: Instant,
    last: Instant,
}

impl LogLines {
    fn new(interval: Duration) -> Self {
        let now = Instant::now();
        Self {
            interval,
            state: Mutex::new(LogState { total_files: 0, total_bytes: 0, files: 0, bytes: 0, events: 0, started: now, last: now }),
        }
    }
}

impl Progress for LogLines {
    fn begin(&self, files: u64, bytes: u64) {
        let mut s = self.state.lock().unwrap();
        s.total_files = files;
        s.total_bytes = bytes;
        s.started = Instant::now();
        s.last = s.started;
        tracing::info!("reading {files} files, {}", HumanBytes(bytes));
    }

    fn advance(&self, files: u64, bytes: u64, events: u64) {
        let mut s = self.state.lock().unwrap();
        s.files += files;
        s.bytes += bytes;
        s.events += events;
        if s.last.elapsed() < self.interval {
            return;
        }
        s.last = Instant::now();
        let secs = s.started.elapsed().as_secs_f64().max(1e-3);
        let done = s.bytes as f64 / s.total_bytes.max(1) as f64;
        let eta = if done > 0.0 { secs / done - secs } else { f64::NAN };
        tracing::info!(
            "{}/{} files, {} events, {:.0} events/s, {:.0}% of bytes, ETA {:.0}s",
            s.files, s.total_files, s.events, s.events as f64 / secs, done * 100.0, eta
        );
    }

    fn end(&self) {}
}

/// Another progress, with what it reports also counted in `--metrics-addr`'s metrics: a long
/// backfill can be watched like the stream job.
pub struct WithMetrics {
    pub inner: Box<dyn Progress>,
    pub metrics: std::sync::Arc<crate::runtime::metrics::Metrics>,
    /// What [`Progress::written`] said last: the counters grow by the difference.
    pub counted: Mutex<(u64, u64)>,
}

impl WithMetrics {
    pub fn new(inner: Box<dyn Progress>, metrics: std::sync::Arc<crate::runtime::metrics::Metrics>) -> Self {
        Self { inner, metrics, counted: Mutex::new((0, 0)) }
    }
}

impl Progress for WithMetrics {
    fn begin(&self, files: u64, bytes: u64) {
        self.metrics.set_ready(true);
        self.metrics.beat();
        self.inner.begin(files, bytes);
    }

    fn advance(&self, files: u64, bytes: u64, events: u64) {
        self.metrics.messages_read.inc_by(events);
        self.metrics.beat();
        self.inner.advance(files, bytes, events);
    }

    fn end(&self) {
        self.inner.end();
    }

    fn written(&self, records: u64, dead_letters: u64) {
        let mut c = self.counted.lock().expect("not poisoned");
        self.metrics.written("backfill", records.saturating_sub(c.0));
        if dead_letters > c.1 {
            self.metrics.dead_lettered("all", dead_letters - c.1);
        }
        *c = (records, dead_letters);
        self.inner.written(records, dead_letters);
    }
}
