//! Helpers shared by the conformance tests (add more here; e2e helpers live in tests/e2e/support.rs
//! and the harness in tests/src).

// ---- Helpers of creation.rs, add_file.rs, ranges.rs and lifecycle.rs ----------------------

use std::time::Duration;

use bits_client::{Client, ClientError, JobInfo};
use bits_core::{BitsError, ByteRange, Code, JobId, JobState};
use bits_tests::wait::{TIMEOUT, wait_for};

/// A static range `(offset, length)` (`bits_core::LENGTH_TO_EOF` for "to the end").
pub fn byte_range(offset: u64, length: u64) -> ByteRange {
    ByteRange::new(offset, length)
}

/// Asserts that `result` failed with the BITS `code` and returns the error.
pub fn expect_bits_code<T: std::fmt::Debug>(
    result: Result<T, ClientError>,
    code: Code,
) -> BitsError {
    match result {
        Err(ClientError::Bits(e)) => {
            assert_eq!(e.code, code, "wrong code in {e}");
            e
        }
        other => panic!("expected {} ({:#010x}), got {other:?}", code.name(), code.hresult()),
    }
}

/// Polls GetJob until the job is in `want`; fails at once if it lands in another resting state
/// (ERROR, TRANSFERRED), showing the job's error.
pub async fn await_state(client: &Client, job: JobId, want: JobState) -> JobInfo {
    await_state_within(client, job, want, TIMEOUT).await
}

pub async fn await_state_within(
    client: &Client,
    job: JobId,
    want: JobState,
    timeout: Duration,
) -> JobInfo {
    wait_for(&format!("job {job} to reach {}", want.name()), timeout, || async {
        let info = client.get_job(job).await.map_err(|e| format!("GetJob failed: {e}"))?;
        if info.state == want {
            return Ok(info);
        }
        if matches!(info.state, JobState::Error | JobState::Transferred) {
            panic!(
                "job {job} is {} while waiting for {}; error: {:?}",
                info.state.name(),
                want.name(),
                info.error
            );
        }
        Err(format!("state {} (error {:?})", info.state.name(), info.error))
    })
    .await
}

/// Polls the job's progress until file `index` has at least `bytes` bytes recorded.
pub async fn await_file_bytes(client: &Client, job: JobId, index: usize, bytes: u64) -> u64 {
    wait_for(&format!("file {index} of job {job} to hold {bytes} bytes"), TIMEOUT, || async {
        let progress = client.get_progress(job).await.map_err(|e| format!("GetProgress: {e}"))?;
        let done = progress.files.get(index).map_or(0, |f| f.bytes_transferred);
        if done >= bytes { Ok(done) } else { Err(format!("{done} bytes")) }
    })
    .await
}

/// Whether the job is listed by ListJobs (EnumJobs).
pub async fn is_listed(client: &Client, job: JobId) -> bool {
    client.list_jobs().await.unwrap().iter().any(|j| j.id == job)
}

// ---- Helpers of errors_timers.rs, consistency.rs, redirects.rs and properties.rs ------------

/// Polls GetJob until `done` holds for the job, and returns it; `what` names the wait.
pub async fn await_job<F>(
    client: &Client,
    job: JobId,
    what: &str,
    timeout: Duration,
    done: F,
) -> JobInfo
where
    F: Fn(&JobInfo) -> bool,
{
    wait_for(what, timeout, || async {
        let info = client.get_job(job).await.map_err(|e| format!("GetJob failed: {e}"))?;
        if done(&info) {
            return Ok(info);
        }
        Err(format!(
            "state {} error_count {} error {:?}",
            info.state.name(),
            info.error_count,
            info.error
        ))
    })
    .await
}

/// A fault server's request log, one line per request (for failure messages).
pub fn fault_log(log: &[bits_testkit::faults::Logged]) -> String {
    let t0 = log.first().map(|r| r.at);
    log.iter()
        .map(|r| {
            format!(
                "#{} +{:?} {} {} range={:?} auth={:?} cookie={:?} -> {} sent={} fault={:?}\n",
                r.seq,
                t0.map(|t| r.at.duration_since(t)).unwrap_or_default(),
                r.method,
                r.path,
                r.range,
                r.authorization,
                r.cookie,
                r.status,
                r.sent,
                r.fault
            )
        })
        .collect()
}
