//! Hostile servers in virtual time: the faults of tests/e2e/faults.rs whose outcome does not
//! depend on the binary (a status, a cut body, a broken Content-Range, a 200 to a partial range,
//! redirect loops), through the manager's API over an in-memory store and bits-testkit's fault
//! server, with the clock paused so the retry delays and the "stays in ERROR" waits cost no wall
//! time. The assertions are those of the
//! wall-clock originals: the state and error (code, context, file 0, GetError agreeing), the bytes
//! kept, the range the retry asks for, no bytes of a refused answer on disk, no request after a
//! fatal error, and a byte-identical file at the end. The retry's delay is measured on the job's
//! states (the server's log stamps wall time, which a paused clock does not move).
//!
//! The wall-clock proofs of wiring stay in tests/e2e/faults.rs (the stalls, the cross-origin
//! redirect, the gzip answers, the HTML pages and the replaced files).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failed call is a failed test

mod common;

use bits_testkit::faults::{Logged, fault_log};
use common::*;

const HEAD: Option<Method> = Some(Method::HEAD);

/// A fault case and the states seen so far.
struct Fc {
    server: FaultServer,
    c: Case,
    seen: Seen,
    seed: u64,
}

async fn fc(seed: u64) -> Fc {
    let (server, c) = fault_case(seed).await;
    Fc { server, c, seen: Seen::default(), seed }
}

impl Fc {
    fn requests(&self) -> String {
        fault_log(&self.server.log())
    }

    fn kept(&self) -> u64 {
        self.c.manager.get_progress(me(), self.c.job).unwrap().bytes_transferred
    }

    /// Waits for TRANSIENT_ERROR and checks its error (code, context, file 0) and GetError.
    async fn transient(&mut self, code: Code, context: ErrorContext) -> bits_core::Job {
        let info = self.c.until(&mut self.seen, JobState::TransientError).await;
        self.c.check_error(&info, code, context);
        assert!(info.error_count >= 1, "error_count {}", info.error_count);
        info
    }

    /// Waits for ERROR (never TRANSFERRED), checks its error, and that it stays there with no
    /// new request for longer than the retry delay.
    async fn fatal(&mut self, code: Code, context: ErrorContext) -> bits_core::Job {
        let info = self
            .c
            .follow(&mut self.seen, |j| matches!(j.state, JobState::Error | JobState::Transferred))
            .await;
        assert_eq!(
            info.state,
            JobState::Error,
            "transferred instead of failing:\n{}",
            self.requests()
        );
        self.c.check_error(&info, code, context);
        assert!(info.error_count >= 1, "error_count {}", info.error_count);
        self.c.stays_in_error(&self.server, code).await;
        info
    }

    /// Waits for TRANSFERRED, completes, and compares the file with the server's.
    async fn completes(&mut self) {
        self.c.until(&mut self.seen, JobState::Transferred).await;
        assert_eq!(self.c.manager.complete(me(), self.c.job).await.unwrap(), Code::S_OK);
        let got = std::fs::read(&self.c.dest).unwrap();
        assert!(got == random_bytes(self.seed, SIZE), "the file differs:\n{}", self.requests());
    }

    /// The first retry after the first TRANSIENT_ERROR came no sooner than the retry delay.
    fn retried_after_the_delay(&self) {
        let failed = self.seen.entered(JobState::TransientError, 0);
        let (_, retried) = self.seen.after(JobState::TransientError, 0);
        let waited = retried.duration_since(failed);
        assert!(waited + STEP >= DELAY, "retried {waited:?} after the failure: {:?}", self.seen);
    }

    /// The first GET after `failed`.
    fn next_get(&self, failed: &Logged) -> Logged {
        self.server
            .log()
            .into_iter()
            .find(|r| r.seq > failed.seq && r.method == Method::GET)
            .unwrap_or_else(|| panic!("no GET after #{}:\n{}", failed.seq, self.requests()))
    }

    /// A transient failure after part of the body arrived: the bytes received were kept, and
    /// the retry (after the delay) asks for exactly the rest.
    async fn resumes_after(&mut self, label: &str) {
        let kept = self.kept();
        assert!(
            kept > 0 && kept <= CUT,
            "kept {kept} bytes of a body cut at {CUT}\n{}",
            self.requests()
        );
        self.completes().await;
        self.retried_after_the_delay();
        let get = self.next_get(&self.server.faulted(label));
        assert_eq!(
            get.range_start(),
            Some(kept),
            "the retry does not resume at {kept}\n{}",
            self.requests()
        );
    }
}

/// The body of the first GET is cut by `fault` (labelled `label`) after CUT bytes: TRANSIENT_ERROR
/// ERROR_WINHTTP_CONNECTION_ERROR (GT), and the retry resumes where the kept bytes end.
async fn cut_and_resumed(seed: u64, fault: Fault, label: &str) {
    let mut f = fc(seed).await;
    f.server.push_fault(FILE, GET, fault);
    f.c.resume().await;
    f.transient(Code::ERROR_WINHTTP_CONNECTION_ERROR, ErrorContext::GeneralTransport).await;
    f.resumes_after(label).await;
}

/// A 206 with a wrong Content-Range is refused and none of its bytes reach the disk:
/// TRANSIENT_ERROR ERROR_WINHTTP_INVALID_SERVER_RESPONSE (GT) with no progress and no filled
/// range, the temp file (if any) holds only zeros (the file is random data, so any byte written
/// would show), the retry comes after the delay and asks from byte 0 again, and the job completes.
#[tokio::test(start_paused = true)]
async fn fault_wrong_content_range_is_transient_and_writes_nothing() {
    let mut f = fc(105).await;
    f.server.push_fault(FILE, GET, Fault::WrongContentRange);
    f.c.resume().await;
    f.transient(Code::ERROR_WINHTTP_INVALID_SERVER_RESPONSE, ErrorContext::GeneralTransport).await;
    assert_eq!(f.kept(), 0, "bytes of a refused answer were kept");
    let filled = f.c.manager.get_filled_file_ranges(me(), f.c.job, 0).unwrap();
    assert!(filled.is_empty(), "ranges of a refused answer were recorded: {filled:?}");
    let dir = f.c.dest.parent().unwrap();
    let prefix = format!(".{FILE}.bitsd-");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with(&prefix) {
            let written = std::fs::read(&path).unwrap().iter().position(|&b| b != 0);
            assert_eq!(
                written,
                None,
                "{} holds bytes of the refused answer\n{}",
                path.display(),
                f.requests()
            );
        }
    }
    f.completes().await;
    f.retried_after_the_delay();
    let get = f.next_get(&f.server.faulted("WrongContentRange"));
    assert_eq!(get.range_start(), Some(0), "the retry does not start over\n{}", f.requests());
}

#[tokio::test(start_paused = true)]
async fn fault_416_is_fatal_invalid_range() {
    let mut f = fc(107).await;
    f.server.push_fault(FILE, GET, Fault::Status(416));
    f.c.resume().await;
    f.fatal(Code::BG_E_INVALID_RANGE, ErrorContext::RemoteFile).await;
    f.c.resume().await;
    f.completes().await;
}

async fn transient_status(seed: u64, method: Option<Method>, status: u16) {
    let mut f = fc(seed).await;
    f.server.push_fault(FILE, method, Fault::Status(status));
    f.c.resume().await;
    f.transient(Code::Http(status), ErrorContext::RemoteFile).await;
    assert_eq!(f.kept(), 0);
    f.completes().await;
    f.server.faulted("Status");
    f.retried_after_the_delay();
}

async fn fatal_status(seed: u64, method: Option<Method>, status: u16) {
    let mut f = fc(seed).await;
    f.server.push_fault(FILE, method, Fault::Status(status));
    f.c.resume().await;
    f.fatal(Code::Http(status), ErrorContext::RemoteFile).await;
    assert_eq!(f.kept(), 0);
    assert!(!f.c.dest.exists());
}

/// The faults whose tests differ only in data: one row a test, its name and the check it runs.
macro_rules! fault_cases {
    ($($name:ident: $check:expr;)*) => {
        $(
            #[tokio::test(start_paused = true)]
            async fn $name() {
                $check.await;
            }
        )*
    };
}

fault_cases! {
    fault_reset_mid_body_is_transient_and_resumes:
        cut_and_resumed(101, Fault::ResetAfter(CUT), "ResetAfter");
    fault_short_body_then_close_is_transient_and_resumes:
        cut_and_resumed(104, Fault::ShortBody(CUT), "ShortBody");
    fault_500_on_head_is_transient: transient_status(108, HEAD, 500);
    fault_502_on_get_is_transient: transient_status(109, GET, 502);
    fault_503_on_get_is_transient: transient_status(110, GET, 503);
    fault_404_on_get_is_fatal: fatal_status(111, GET, 404);
    fault_403_on_get_is_fatal: fatal_status(112, GET, 403);
}

#[tokio::test(start_paused = true)]
async fn fault_full_200_to_a_partial_range_is_fatal() {
    let mut f = fc(106).await;
    // The first GET breaks after CUT bytes, so the retry asks for a partial range; that one is
    // answered with the whole file.
    f.server.push_fault(FILE, GET, Fault::ResetAfter(CUT));
    f.server.push_fault(FILE, GET, Fault::IgnoreRange);
    f.c.resume().await;
    let info = f.fatal(Code::BG_E_INSUFFICIENT_RANGE_SUPPORT, ErrorContext::RemoteFile).await;
    let ignored = f.server.faulted("IgnoreRange");
    assert!(ignored.range_start().is_some_and(|s| s > 0), "{}", f.requests());
    assert!(info.error_count >= 2, "the reset and the 200 both count: {info:?}");
    // The partial bytes kept are still good: a Resume (the server behaves now) finishes the file.
    f.c.resume().await;
    f.completes().await;
}

#[tokio::test(start_paused = true)]
async fn fault_redirect_loop_is_fatal() {
    let mut f = fc(116).await;
    f.server.always(FILE, None, Fault::RedirectLoop);
    f.c.resume().await;
    f.fatal(Code::ERROR_WINHTTP_REDIRECT_FAILED, ErrorContext::RemoteFile).await;
    assert_eq!(f.server.log().len(), 1, "a loop is seen at the first repeat\n{}", f.requests());
}

#[tokio::test(start_paused = true)]
async fn fault_more_than_ten_redirects_is_fatal() {
    let mut f = fc(117).await;
    f.server.always(FILE, None, Fault::RedirectTo("/hop0".to_string()));
    for i in 0..12 {
        f.server.always(&format!("hop{i}"), None, Fault::RedirectTo(format!("/hop{}", i + 1)));
    }
    f.c.resume().await;
    f.fatal(Code::ERROR_WINHTTP_REDIRECT_FAILED, ErrorContext::RemoteFile).await;
    assert_eq!(
        f.server.log().len(),
        11,
        "10 redirects followed, the 11th refused\n{}",
        f.requests()
    );
}
