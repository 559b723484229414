//! The job timers in virtual time: the retry delay (and a server's Retry-After), the no-progress
//! timeout, the maximum download time and the minimum notification interval, through the
//! manager's API over an in-memory store and the bits-testkit HTTP servers (spec §5.2, §5.3,
//! §7.1, §10 cases 46–52). The runtime's clock is paused, so the spec's own values (5 s retry
//! delay, 30 s no-progress timeout, 10 s maximum download time) cost no wall time.
//!
//! Paused time and real work: tokio advances a paused clock to the next timer whenever the
//! runtime idles, also while a store flush runs on the flusher's own thread; a steady beat
//! (`keep_the_clock_beating`) bounds each such leap. The test looks at the job every `STEP`, so
//! every time measured here is good to one step. The HTTP timeouts are longer than any case, so
//! no step reaches them.
//!
//! The wall-clock counterparts that prove the binary's wiring stay in tests/conformance:
//! errors_timers.rs (the retry after a 503, a trickle stopped by the maximum download time) and
//! notifications.rs (FILE_RANGES_TRANSFERRED over gRPC, 300 ms apart).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failed call is a failed test

mod common;

use common::*;

// Case 46: a 503 is TRANSIENT_ERROR, and the retry comes after the job's retry delay, not
// before (nor much after: the scheduler wakes at the retry time).
#[tokio::test(start_paused = true)]
async fn a_503_is_retried_after_the_retry_delay_and_the_job_finishes() {
    let (server, c) = fault_case(46).await;
    server.push_fault(FILE, GET, Fault::Status(503));
    let mut seen = Seen::default();
    c.resume().await;
    let info = c.until(&mut seen, JobState::TransientError).await;
    c.check_error(&info, Code::Http(503), ErrorContext::RemoteFile);
    assert_eq!(info.error_count, 1);
    let info = c.until(&mut seen, JobState::Transferred).await;
    assert_eq!(info.error_count, 1);
    let failed = seen.entered(JobState::TransientError, 0);
    let (_, retried) = seen.after(JobState::TransientError, 0);
    let waited = retried.duration_since(failed);
    assert!(
        waited + STEP >= DELAY && waited <= DELAY + Duration::from_secs(1),
        "retried {waited:?} after the failure, the delay is {DELAY:?}: {seen:?}"
    );
    assert_eq!(gets(&server), 2, "{:?}", server.log());
    assert_eq!(c.manager.complete(me(), c.job).await.unwrap(), Code::S_OK);
    assert_eq!(std::fs::read(&c.dest).unwrap(), random_bytes(46, SIZE));
}

/// A `status` with `Retry-After: 30` to the first `method` request: TRANSIENT_ERROR with that
/// status (REMOTE_FILE), the retry no sooner than the server asked although the job's own delay
/// is 5 s, and the job completes.
async fn retry_after_is_honoured(seed: u64, method: Method, status: u16) {
    const ASKED: Duration = Duration::from_secs(30);
    let (server, c) = fault_case(seed).await;
    server.push_fault(FILE, Some(method), Fault::StatusRetryAfter(status, ASKED.as_secs()));
    let mut seen = Seen::default();
    c.resume().await;
    let info = c.until(&mut seen, JobState::TransientError).await;
    c.check_error(&info, Code::Http(status), ErrorContext::RemoteFile);
    c.until(&mut seen, JobState::Transferred).await;
    let waited = seen
        .after(JobState::TransientError, 0)
        .1
        .duration_since(seen.entered(JobState::TransientError, 0));
    assert!(
        waited + STEP >= ASKED && waited <= ASKED + Duration::from_secs(1),
        "retried {waited:?} after the failure; the server asked for {ASKED:?}: {seen:?}"
    );
    assert_eq!(c.manager.complete(me(), c.job).await.unwrap(), Code::S_OK);
    assert_eq!(std::fs::read(&c.dest).unwrap(), random_bytes(seed, SIZE));
}

#[tokio::test(start_paused = true)]
async fn retry_after_of_a_429_is_honoured() {
    retry_after_is_honoured(113, Method::GET, 429).await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_of_a_503_to_the_head_is_honoured() {
    retry_after_is_honoured(114, Method::HEAD, 503).await;
}

/// The no-progress timeout of the cases that wait it out: the spec's 30 s.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A fault case whose job gives up after [`TIMEOUT`] without progress.
async fn no_progress_case(seed: u64) -> (FaultServer, Case) {
    let (server, c) = fault_case(seed).await;
    c.manager.set_no_progress_timeout(me(), c.job, TIMEOUT.as_secs() as u32).await.unwrap();
    (server, c)
}

// 503 to every request, no-progress timeout 30 s, retry delay 5 s: retried until the timeout,
// then ERROR with the 503 (REMOTE_FILE) 30–36 s after the first failure, and no request after.
#[tokio::test(start_paused = true)]
async fn a_503_forever_ends_in_error_at_the_no_progress_timeout() {
    let (server, c) = no_progress_case(115).await;
    server.always(FILE, None, Fault::Status(503));
    let mut seen = Seen::default();
    c.resume().await;
    let info = c.until(&mut seen, JobState::Error).await;
    c.check_error(&info, Code::Http(503), ErrorContext::RemoteFile);
    let took =
        seen.entered(JobState::Error, 0).duration_since(seen.entered(JobState::TransientError, 0));
    assert!(
        took + STEP >= TIMEOUT && took <= TIMEOUT + DELAY + Duration::from_secs(1),
        "ERROR {took:?} after the first failure: {seen:?}"
    );
    assert!(info.error_count > 1, "error_count {}", info.error_count);
    assert!(server.log().len() > 1, "never retried");
    c.stays_in_error(&server, Code::Http(503)).await;
}

/// A job that can only fail with 503 reaches ERROR straight away (never TRANSIENT_ERROR) and
/// is not retried.
async fn fails_without_retry(server: &FaultServer, c: &Case) {
    server.always(FILE, GET, Fault::Status(503));
    let mut seen = Seen::default();
    c.resume().await;
    let info = c.until(&mut seen, JobState::Error).await;
    assert!(!seen.saw(JobState::TransientError), "went through TRANSIENT_ERROR: {seen:?}");
    c.check_error(&info, Code::Http(503), ErrorContext::RemoteFile);
    assert_eq!(info.error_count, 1);
    c.stays_in_error(server, Code::Http(503)).await;
    assert_eq!(gets(server), 1, "retried: {:?}", server.log());
}

// Case 49: with SetNoProgressTimeout(0) the first transient failure (503) is ERROR at once.
#[tokio::test(start_paused = true)]
async fn no_progress_timeout_zero_makes_a_transient_failure_fatal() {
    let (server, c) = fault_case(49).await;
    assert_eq!(c.manager.set_no_progress_timeout(me(), c.job, 0).await.unwrap(), Code::S_OK);
    assert_eq!(c.info().no_progress_timeout_secs, 0);
    fails_without_retry(&server, &c).await;
}

// Case 50: a retry delay (120 s) longer than the no-progress timeout (60 s) means no retry at
// all: the first transient failure is ERROR.
#[tokio::test(start_paused = true)]
async fn retry_delay_longer_than_no_progress_timeout_fails_without_retry() {
    let (server, c) = fault_case(50).await;
    c.manager.set_minimum_retry_delay(me(), c.job, 120).await.unwrap();
    c.manager.set_no_progress_timeout(me(), c.job, 60).await.unwrap();
    let info = c.info();
    assert_eq!((info.minimum_retry_delay_secs, info.no_progress_timeout_secs), (120, 60));
    fails_without_retry(&server, &c).await;
}

// Case 51, at the spec's values: no-progress timeout 30 s, retry delay 5 s; every attempt
// fails, but the third (≈10 s after the first failure) delivers bytes first, so ERROR must not
// come before that progress + 30 s (a timer that is not reset gives up ≈30 s after the first
// failure), and it still comes in the end.
#[tokio::test(start_paused = true)]
async fn progress_resets_the_no_progress_timer() {
    let (server, c) = no_progress_case(51).await;
    server.push_fault(FILE, GET, Fault::Status(503));
    server.push_fault(FILE, GET, Fault::Status(503));
    server.push_fault(FILE, GET, Fault::ResetAfter(CUT));
    server.always(FILE, GET, Fault::Status(503));
    let mut seen = Seen::default();
    c.resume().await;
    let info = c.until(&mut seen, JobState::Error).await;
    let error_at = seen.entered(JobState::Error, 0);
    let first_failure = seen.entered(JobState::TransientError, 0);
    let progress = seen.first_bytes.unwrap_or_else(|| panic!("no progress: {seen:?}"));
    assert!(
        progress.duration_since(first_failure) + STEP >= DELAY * 2,
        "the bytes came {:?} after the first failure, before the third attempt",
        progress.duration_since(first_failure)
    );
    assert!(
        error_at >= progress + TIMEOUT,
        "ERROR {:?} after the first failure, only {:?} after the progress",
        error_at.duration_since(first_failure),
        error_at.duration_since(progress)
    );
    // Given up at the first retry due once the timeout has passed without progress.
    assert!(error_at <= progress + TIMEOUT + DELAY * 2, "{seen:?}");
    assert!(c.manager.get_progress(me(), c.job).unwrap().bytes_transferred > 0, "bytes lost");
    assert_eq!(info.error.as_ref().map(|e| e.code), Some(Code::Http(503)));
    assert!(info.error_count >= 5, "{info:?}");
    assert!(seen.saw(JobState::TransientError));
    assert!(gets(&server) >= 5, "{:?}", server.log());
}

/// A TestServer trickling a 1 MiB file at 16 KiB/s (progress every second, 64 s for the whole
/// file), and a job for it with a maximum download time of `budget`.
async fn trickle(seed: u64, budget: Duration) -> (TestServer, Case) {
    let server = TestServer::start().await;
    server.add_file(FILE, random_bytes(seed, SIZE));
    server.set_throttle(Some(16 * 1024));
    let c = case(&server.url(FILE)).await;
    c.manager.set_maximum_download_time(me(), c.job, budget.as_secs() as u32).await.unwrap();
    assert_eq!(u64::from(c.info().maximum_download_time_secs), budget.as_secs());
    (server, c)
}

/// Resumes and waits for ERROR BG_E_MAXDOWNLOAD_TIMEOUT, which must come one `budget` (and at
/// most a second more) after the Resume.
async fn ends_by_max_time(c: &Case, budget: Duration) {
    let mut seen = Seen::default();
    let resumed = c.resume().await;
    let info = c.until(&mut seen, JobState::Error).await;
    assert!(!seen.saw(JobState::Transferred), "the trickle finished: {seen:?}");
    let took = seen.entered(JobState::Error, 0).duration_since(resumed);
    assert!(
        took >= budget && took <= budget + Duration::from_secs(1),
        "ERROR after {took:?} with a budget of {budget:?}"
    );
    assert_eq!(info.error.as_ref().map(|e| e.code), Some(Code::BG_E_MAXDOWNLOAD_TIMEOUT));
    assert_eq!(c.manager.get_error(me(), c.job).unwrap().code, Code::BG_E_MAXDOWNLOAD_TIMEOUT);
}

// Case 52, at the spec's value (10 s): a trickling transfer ends in ERROR
// BG_E_MAXDOWNLOAD_TIMEOUT, keeps its bytes, and is not retried.
#[tokio::test(start_paused = true)]
async fn maximum_download_time_stops_a_trickling_transfer() {
    let budget = Duration::from_secs(10);
    let (server, c) = trickle(521, budget).await;
    ends_by_max_time(&c, budget).await;
    let kept = c.manager.get_progress(me(), c.job).unwrap().bytes_transferred;
    assert!(kept > 0, "the trickle made no progress");
    let requests = server.log_len();
    run_for(DELAY * 3).await;
    assert_eq!(c.info().state, JobState::Error, "the fatal error was retried");
    assert_eq!(server.log_len(), requests);
}

// Case 52: Resume resets the budget: after the ERROR, a Resume gets a whole new budget.
#[tokio::test(start_paused = true)]
async fn resume_resets_the_maximum_download_time() {
    let budget = Duration::from_secs(10);
    let (_server, c) = trickle(522, budget).await;
    ends_by_max_time(&c, budget).await;
    ends_by_max_time(&c, budget).await;
    assert_eq!(c.info().error_count, 2);
}

// Case 52: time in TRANSIENT_ERROR and QUEUED does not count: two 503s (5 s retry delay each),
// then a stalled transfer; ERROR comes a whole budget (10 s) after the stalled attempt began,
// not 10 s after the Resume (which would be during the second wait).
#[tokio::test(start_paused = true)]
async fn maximum_download_time_ignores_time_between_attempts() {
    let budget = Duration::from_secs(10);
    let (server, c) = fault_case(523).await;
    c.manager.set_maximum_download_time(me(), c.job, budget.as_secs() as u32).await.unwrap();
    server.push_fault(FILE, GET, Fault::Status(503));
    server.push_fault(FILE, GET, Fault::Status(503));
    server.push_fault(FILE, GET, Fault::StallBody { after: CUT, stall: HANG });
    let mut seen = Seen::default();
    let resumed = c.resume().await;
    let info = c.until(&mut seen, JobState::Error).await;
    assert_eq!(info.error.as_ref().map(|e| e.code), Some(Code::BG_E_MAXDOWNLOAD_TIMEOUT));
    assert_eq!(gets(&server), 3, "{:?}", server.log());
    let error_at = seen.entered(JobState::Error, 0);
    // The third attempt began when the job left its second TRANSIENT_ERROR.
    let (_, stalled_at) = seen.after(JobState::TransientError, 1);
    let active = error_at.duration_since(stalled_at);
    assert!(
        active + STEP * 2 >= budget && active <= budget + Duration::from_secs(1),
        "ERROR {active:?} into the last attempt, {:?} after the Resume: {seen:?}",
        error_at.duration_since(resumed)
    );
    assert!(error_at.duration_since(resumed) >= budget + DELAY * 2, "{seen:?}");
}

// Spec §7.1 FILE_RANGES_TRANSFERRED on an on-demand job: the events cover exactly the requested
// bytes, once each, and are at least MINIMUM_NOTIFICATION_INTERVAL_MS apart (here 2 s, with ≈150
// KB trickling at 20 KB/s: several events, each holding what arrived within its interval).
#[tokio::test(start_paused = true)]
async fn file_ranges_transferred_covers_the_requested_bytes_and_respects_the_interval() {
    use bits_core::job::{notify, property};
    use bits_core::{ByteRange, RangeSet};
    use bits_manager::{EventKind, PropertyValue};
    use bits_testkit::notify::assert_file_ranges_events;
    use futures::FutureExt;

    let server = TestServer::start().await;
    server.add_file(FILE, random_bytes(71, 400_000));
    let c = case(&server.url(FILE)).await;
    let (m, job) = (&c.manager, c.job);
    let interval = Duration::from_secs(2);
    m.set_property(me(), job, property::ON_DEMAND_MODE, PropertyValue::Enable(true)).await.unwrap();
    let ms = PropertyValue::Dword(interval.as_millis() as u32);
    m.set_property(me(), job, property::MINIMUM_NOTIFICATION_INTERVAL_MS, ms).await.unwrap();
    let requested = [ByteRange::new(1000, 60_000), ByteRange::new(200_000, 90_000)];
    m.request_file_ranges(me(), job, 0, &requested).await.unwrap();
    server.set_throttle(Some(20_000));
    let flags = notify::FILE_RANGES_TRANSFERRED | notify::JOB_MODIFICATION;
    let (_, mut sub) = m.subscribe(me(), job, Some(flags)).unwrap();
    c.resume().await;
    // Each event stamped with the step it arrived in; until SUSPENDED (the requested ranges are
    // in) and two intervals more, for anything still pending.
    let mut ranges: Vec<(Instant, RangeSet)> = Vec::new();
    let mut suspended: Option<Instant> = None;
    let started = Instant::now();
    while suspended.is_none_or(|at| at.elapsed() < interval * 2) {
        assert!(started.elapsed() < HANG, "never SUSPENDED: {:?}", c.info());
        while let Some(Some(event)) = sub.recv().now_or_never() {
            match event.kind {
                EventKind::FileRangesTransferred { index: 0, ranges: set } => {
                    ranges.push((Instant::now(), set))
                }
                EventKind::JobModification { state: JobState::Suspended, .. } => {
                    suspended.get_or_insert_with(Instant::now);
                }
                _ => {}
            }
        }
        tick().await;
    }
    let ranges: Vec<(Duration, RangeSet)> =
        ranges.into_iter().map(|(at, set)| (at.duration_since(started), set)).collect();
    assert_file_ranges_events(&ranges, &requested, 3, interval, STEP);
}
