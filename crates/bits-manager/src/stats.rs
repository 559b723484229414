//! Daemon-wide numbers since start (GetStats, `/metrics`): bytes recorded, transient errors by
//! code, store flushes and their latency, jobs by state.
//!
//! The data path pays one relaxed atomic add per recorded span; a transient error (rare, and
//! already a log line) takes a small lock. Jobs by state are counted from the table when asked,
//! not kept as counters that every state change would have to update.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bits_core::{Code, FlushStats, JobState, Stats};

/// Upper bounds of the flush-latency buckets, in µs: from a page-cache flush (tens of µs) to a
/// disk that stalls for seconds.
pub const FLUSH_BUCKETS_MICROS: [u64; 12] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

/// The counters, shared by the manager, its workers and the flusher thread.
pub(crate) struct Counters {
    started: Instant,
    start_time: SystemTime,
    bytes_recorded: AtomicU64,
    transient: Mutex<HashMap<Code, u64>>,
    flushes: Arc<FlushTimes>,
}

impl Counters {
    pub(crate) fn new() -> Counters {
        Counters {
            started: Instant::now(),
            start_time: SystemTime::now(),
            bytes_recorded: AtomicU64::new(0),
            transient: Mutex::default(),
            flushes: Arc::default(),
        }
    }

    /// Bytes that were synced and recorded as filled.
    pub(crate) fn recorded(&self, bytes: u64) {
        self.bytes_recorded.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A failed attempt that left its job in TRANSIENT_ERROR.
    pub(crate) fn transient_error(&self, code: Code) {
        let mut counts = self.transient.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry(code).or_default() += 1;
    }
}

/// How long store flushes took, recorded on the flusher thread.
#[derive(Default)]
pub(crate) struct FlushTimes {
    count: AtomicU64,
    failed: AtomicU64,
    total_us: AtomicU64,
    max_us: AtomicU64,
    /// Per bucket of [`FLUSH_BUCKETS_MICROS`], flushes that fell in it (not cumulative).
    buckets: [AtomicU64; FLUSH_BUCKETS_MICROS.len()],
}

impl FlushTimes {
    pub(crate) fn record(&self, took: Duration, ok: bool) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.count.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.total_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
        if let Some(i) = FLUSH_BUCKETS_MICROS.iter().position(|&le| us <= le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> FlushStats {
        let mut cumulative = 0;
        let buckets = FLUSH_BUCKETS_MICROS
            .iter()
            .zip(&self.buckets)
            .map(|(&le, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (Duration::from_micros(le), cumulative)
            })
            .collect();
        FlushStats {
            count: self.count.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            total: Duration::from_micros(self.total_us.load(Ordering::Relaxed)),
            max: Duration::from_micros(self.max_us.load(Ordering::Relaxed)),
            buckets,
        }
    }
}

impl Counters {
    /// The flush-latency record, for the flusher thread to fill.
    pub(crate) fn flush_times(&self) -> Arc<FlushTimes> {
        Arc::clone(&self.flushes)
    }

    /// The daemon's numbers now, given the jobs by state (all, and the asker's own) and the
    /// HTTP connections open. The manager does not see control connections and watch streams:
    /// those two are 0, for the server to fill in.
    pub(crate) fn stats(
        &self,
        jobs: Vec<(JobState, u64)>,
        own_jobs: Vec<(JobState, u64)>,
        http_connections: u64,
    ) -> Stats {
        let mut transient: Vec<(Code, u64)> = {
            let counts = self.transient.lock().unwrap_or_else(PoisonError::into_inner);
            counts.iter().map(|(&code, &n)| (code, n)).collect()
        };
        transient.sort_by_key(|&(code, _)| code.hresult());
        Stats {
            start_time: self.start_time,
            uptime: self.started.elapsed(),
            jobs,
            own_jobs,
            bytes_transferred: self.bytes_recorded.load(Ordering::Relaxed),
            control_connections: 0,
            watch_streams: 0,
            http_connections,
            transient_errors: transient,
            flushes: self.flushes.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_times_fill_cumulative_buckets_and_keep_the_maximum() {
        let times = FlushTimes::default();
        times.record(Duration::from_micros(80), true);
        times.record(Duration::from_micros(3_000), true);
        times.record(Duration::from_millis(40), false);
        times.record(Duration::from_secs(3), true); // beyond the last bucket
        let s = times.snapshot();
        assert_eq!((s.count, s.failed), (4, 1));
        assert_eq!(s.max, Duration::from_secs(3));
        assert_eq!(s.total, Duration::from_micros(80 + 3_000 + 40_000 + 3_000_000));
        let at = |us: u64| {
            s.buckets.iter().find(|(le, _)| *le == Duration::from_micros(us)).map(|b| b.1)
        };
        assert_eq!(at(100), Some(1));
        assert_eq!(at(2_500), Some(1));
        assert_eq!(at(5_000), Some(2));
        assert_eq!(at(50_000), Some(3));
        assert_eq!(at(1_000_000), Some(3), "the 3 s flush is only in the count");
    }

    #[test]
    fn transient_errors_are_counted_per_code() {
        let counters = Counters::new();
        counters.transient_error(Code::Http(503));
        counters.transient_error(Code::Http(503));
        counters.transient_error(Code::E_FAIL);
        let counts = counters.transient.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(counts.get(&Code::Http(503)), Some(&2));
        assert_eq!(counts.get(&Code::E_FAIL), Some(&1));
    }
}
