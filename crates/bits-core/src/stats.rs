//! The daemon's numbers since start, as GetStats returns them (the job manager counts most of
//! them, the server the connections). Counts only: nothing here names a job, a URL, a path or a
//! user, so they may be shown to any local user.

use std::time::{Duration, SystemTime};

use crate::{Code, JobState};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub start_time: SystemTime,
    pub uptime: Duration,
    /// Every job in the queue by state, in BG_JOB_STATE order; states with no job left out.
    pub jobs: Vec<(JobState, u64)>,
    /// The same for the caller's own jobs.
    pub own_jobs: Vec<(JobState, u64)>,
    /// Bytes synced and recorded as filled since start.
    pub bytes_transferred: u64,
    /// gRPC connections open now to the control socket and the TCP listener.
    pub control_connections: u64,
    /// WatchJob streams open now.
    pub watch_streams: u64,
    /// Connections to HTTP servers open now (in use or idle in the pool).
    pub http_connections: u64,
    /// Failed attempts that left a job in TRANSIENT_ERROR, by code, in HRESULT order.
    pub transient_errors: Vec<(Code, u64)>,
    pub flushes: FlushStats,
}

/// Store flushes since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Finished flushes, failed ones included.
    pub count: u64,
    pub failed: u64,
    pub total: Duration,
    pub max: Duration,
    /// Cumulative, by upper bound: how many took at most this long.
    pub buckets: Vec<(Duration, u64)>,
}

impl FlushStats {
    /// The mean flush time; zero before the first flush.
    pub fn mean(&self) -> Duration {
        match u32::try_from(self.count) {
            Ok(0) => Duration::ZERO,
            Ok(n) => self.total / n,
            Err(_) => Duration::from_micros(
                u64::try_from(self.total.as_micros()).unwrap_or(u64::MAX) / self.count,
            ),
        }
    }

    /// The smallest bucket bound that at least `q` (0..=1) of the flushes stayed within; `None`
    /// before the first flush or when that many took longer than the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let wanted = (q * self.count as f64).ceil() as u64;
        self.buckets.iter().find(|(_, n)| *n >= wanted.max(1)).map(|(le, _)| *le)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_quantile_bounds_come_from_the_counts() {
        let ms = Duration::from_millis;
        let flushes = FlushStats {
            count: 4,
            failed: 0,
            total: ms(40),
            max: ms(30),
            buckets: vec![(ms(1), 2), (ms(10), 3), (ms(25), 3)],
        };
        assert_eq!(flushes.mean(), ms(10));
        assert_eq!(flushes.quantile_bound(0.5), Some(ms(1)));
        assert_eq!(flushes.quantile_bound(0.75), Some(ms(10)));
        assert_eq!(flushes.quantile_bound(0.99), None, "the 30 ms one is past the last bound");
        assert_eq!(FlushStats::default().mean(), Duration::ZERO);
        assert_eq!(FlushStats::default().quantile_bound(0.5), None);
    }
}
