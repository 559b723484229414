//! The retry rules of spec §5.3 as pure functions of a job's timing fields and `now`, so the
//! worker (after a failed attempt) and the scheduler (when a retry falls due) decide the
//! no-progress timeout the same way, and the rule is testable without a clock.

use std::time::Duration;

// tokio's clock, so a paused test clock drives retries and stalls.
use tokio::time::Instant;

use bits_core::Job;

/// The job's fields the retry rules read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    minimum_retry_delay_secs: u32,
    no_progress_timeout_secs: u32,
}

impl Timing {
    pub(crate) fn of(job: &Job) -> Timing {
        Timing {
            minimum_retry_delay_secs: job.minimum_retry_delay_secs,
            no_progress_timeout_secs: job.no_progress_timeout_secs,
        }
    }
}

/// What becomes of a job in (or entering) TRANSIENT_ERROR.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum Verdict {
    /// Back to the queue now.
    Retry,
    /// Give up: ERROR.
    Fail,
    /// Stay in TRANSIENT_ERROR until this instant.
    Wait(Instant),
}

/// After a failed attempt: ERROR when the failure is fatal or retrying cannot help (no-progress
/// timeout 0, a retry delay longer than the timeout, or no progress since the first transient
/// error for the whole timeout), else wait out the retry delay — never sooner than the server
/// asked (429/503 Retry-After).
pub(crate) fn after_failure(
    job: Timing,
    stalled_since: Option<Instant>,
    transient: bool,
    retry_after: Option<Duration>,
    now: Instant,
) -> Verdict {
    // The 5 s floor applies where a job's delay is set; the operator's default may be lower.
    let delay = Duration::from_secs(u64::from(job.minimum_retry_delay_secs.max(1)));
    let delay = retry_after.map_or(delay, |asked| asked.max(delay));
    let timeout = no_progress_timeout(job);
    let fatal = !transient
        || timeout.is_zero()
        || delay > timeout
        || stalled_out(timeout, stalled_since.unwrap_or(now), now);
    if fatal { Verdict::Fail } else { Verdict::Wait(now + delay) }
}

/// A job waiting in TRANSIENT_ERROR (`retry_at`: when its delay ends; `None`: it waits for
/// nothing): once due it is retried, unless it has made no progress for the whole no-progress
/// timeout meanwhile (spec A8).
pub(crate) fn waiting(
    job: Timing,
    retry_at: Option<Instant>,
    stalled_since: Option<Instant>,
    now: Instant,
) -> Option<Verdict> {
    let at = retry_at?;
    if at > now {
        return Some(Verdict::Wait(at));
    }
    let expired =
        stalled_since.is_some_and(|since| stalled_out(no_progress_timeout(job), since, now));
    Some(if expired { Verdict::Fail } else { Verdict::Retry })
}

fn no_progress_timeout(job: Timing) -> Duration {
    Duration::from_secs(u64::from(job.no_progress_timeout_secs))
}

fn stalled_out(timeout: Duration, since: Instant, now: Instant) -> bool {
    now.saturating_duration_since(since) >= timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(delay: u32, timeout: u32) -> Timing {
        Timing { minimum_retry_delay_secs: delay, no_progress_timeout_secs: timeout }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_transient_failure_waits_the_retry_delay_or_the_servers_longer_one() {
        let now = Instant::now();
        let j = job(10, 100);
        assert_eq!(after_failure(j, None, true, None, now), Verdict::Wait(now + 10 * S));
        assert_eq!(after_failure(j, None, true, Some(30 * S), now), Verdict::Wait(now + 30 * S));
        assert_eq!(after_failure(j, None, true, Some(2 * S), now), Verdict::Wait(now + 10 * S));
        // A delay of 0 is raised to 1 s.
        assert_eq!(after_failure(job(0, 100), None, true, None, now), Verdict::Wait(now + S));
    }

    #[test]
    fn a_failure_is_fatal_when_retrying_cannot_help() {
        let now = Instant::now();
        assert_eq!(after_failure(job(10, 100), None, false, None, now), Verdict::Fail);
        assert_eq!(after_failure(job(10, 0), None, true, None, now), Verdict::Fail, "timeout 0");
        assert_eq!(after_failure(job(101, 100), None, true, None, now), Verdict::Fail);
        let asked = Some(101 * S);
        assert_eq!(after_failure(job(10, 100), None, true, asked, now), Verdict::Fail);
        // Stalled since the first transient error for the whole timeout, and one second short.
        let j = job(10, 100);
        let later = now + 100 * S;
        assert_eq!(after_failure(j, Some(now), true, None, later), Verdict::Fail);
        let sooner = now + 99 * S;
        assert_eq!(after_failure(j, Some(now), true, None, sooner), Verdict::Wait(sooner + 10 * S));
    }

    #[test]
    fn a_due_retry_runs_unless_the_job_stalled_for_the_whole_timeout() {
        let now = Instant::now();
        let j = job(10, 100);
        assert_eq!(waiting(j, None, Some(now), now + 500 * S), None);
        let at = now + 10 * S;
        assert_eq!(waiting(j, Some(at), Some(now), now), Some(Verdict::Wait(at)));
        assert_eq!(waiting(j, Some(at), Some(now), at), Some(Verdict::Retry));
        assert_eq!(
            waiting(j, Some(at), None, now + 500 * S),
            Some(Verdict::Retry),
            "never stalled"
        );
        assert_eq!(waiting(j, Some(at), Some(now), now + 99 * S), Some(Verdict::Retry));
        assert_eq!(waiting(j, Some(at), Some(now), now + 100 * S), Some(Verdict::Fail));
    }
}
