//! A download from the fault server and what the hostile-server tests (e2e `faults`, conformance
//! `errors_timers`) check on it: the state it reaches, its error through GetJob and GetError,
//! the retry that follows a fault, and the completed file.

use std::time::Duration;

use bits_client::JobInfo;
use bits_core::{Code, ErrorContext, JobState};
use bits_testkit::data::sha256_hex;
use bits_testkit::faults::{FaultServer, HTML_PAGE, Logged, fault_log};
use http::Method;

use crate::fixture::Download;
use crate::helpers::wait_job;

/// The longest any single wait of these tests may take.
pub const WAIT: Duration = Duration::from_secs(20);

impl Download<FaultServer> {
    /// The fault server's request log, one line per request, for failure messages.
    pub fn requests(&self) -> String {
        fault_log(&self.server.log())
    }

    pub async fn resume(&self) {
        assert_eq!(self.client.resume(self.job).await.unwrap(), Code::S_OK);
    }

    /// Waits for `want`, failing at once on another resting state.
    pub async fn wait_state(&self, want: JobState) -> JobInfo {
        let what = format!("the job to reach {}\n{}", want.name(), self.requests());
        wait_job(&self.client, self.job, &what, WAIT, |info| {
            let resting = matches!(info.state, JobState::Error | JobState::Transferred);
            assert!(
                info.state == want || !resting,
                "the job is {} (error {:?}) instead of {}\n{}",
                info.state.name(),
                info.error,
                want.name(),
                self.requests()
            );
            info.state == want
        })
        .await
    }

    /// The job's error (GetJob and GetError agree) is `code` with `context` on file 0, and it
    /// was counted.
    pub async fn check_error(&self, info: &JobInfo, code: Code, context: ErrorContext) {
        let error = info.error.as_ref().unwrap_or_else(|| panic!("no error in {info:?}"));
        assert_eq!(
            (error.code, error.context, error.file_index),
            (code, context, Some(0)),
            "unexpected error {error:?}\n{}",
            self.requests()
        );
        assert!(info.error_count >= 1, "error_count {}", info.error_count);
        let got = self.client.get_error(self.job).await.unwrap();
        assert_eq!((got.code, got.context, got.file_index), (code, context, Some(0)));
    }

    /// Waits for TRANSIENT_ERROR and checks its error.
    pub async fn transient(&self, code: Code, context: ErrorContext) -> JobInfo {
        let info = self.wait_state(JobState::TransientError).await;
        self.check_error(&info, code, context).await;
        info
    }

    /// Waits for TRANSFERRED, completes, and compares the file with `expected`.
    pub async fn completes_with(&self, expected: &[u8]) {
        self.wait_state(JobState::Transferred).await;
        assert_eq!(self.client.complete(self.job).await.unwrap(), Code::S_OK);
        let got = std::fs::read(&self.dest).unwrap();
        if got.len() == expected.len() && sha256_hex(&got) == sha256_hex(expected) {
            return;
        }
        let first_diff = got.iter().zip(expected).position(|(a, b)| a != b);
        let html = got.windows(15).any(|w| w == &HTML_PAGE.as_bytes()[..15]);
        panic!(
            "the file differs from the server's: {} bytes vs {}, first difference at {first_diff:?}, HTML inside: {html}\n{}",
            got.len(),
            expected.len(),
            self.requests()
        );
    }

    /// Waits for TRANSFERRED, completes, and compares the file with the server's.
    pub async fn completes(&self) {
        self.completes_with(&self.data).await;
    }

    /// The first request after `failed`, checked to come at least `min` after it.
    pub fn retry_after(&self, failed: &Logged, min: Duration) -> Logged {
        let next =
            self.server.log().into_iter().find(|r| r.seq > failed.seq).unwrap_or_else(|| {
                panic!("no request after #{}:\n{}", failed.seq, self.requests())
            });
        let gap = next.at.duration_since(failed.at);
        assert!(
            gap >= min,
            "retried {gap:?} after the failure, expected ≥ {min:?}\n{}",
            self.requests()
        );
        next
    }

    /// The first GET after `failed`.
    pub fn next_get(&self, failed: &Logged) -> Logged {
        self.server
            .log()
            .into_iter()
            .find(|r| r.seq > failed.seq && r.method == Method::GET)
            .unwrap_or_else(|| panic!("no GET after #{}:\n{}", failed.seq, self.requests()))
    }
}
