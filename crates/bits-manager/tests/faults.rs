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

/// BITS' rule for a job that may not take a plain 200 (any priority but FOREGROUND).
#[tokio::test(start_paused = true)]
async fn fault_full_200_to_a_partial_range_is_fatal_in_the_background() {
    let mut f = fc(106).await;
    f.c.manager.set_priority(me(), f.c.job, Priority::Normal).await.unwrap();
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

/// Issue 16 item 6: a FOREGROUND job whose server ignores Range, cut mid-body. The retry's GET
/// from the kept bytes gets the whole file (200): instead of BG_E_INSUFFICIENT_RANGE_SUPPORT the
/// file restarts from byte 0: its kept bytes are forgotten, the next GET asks for all of it and
/// its 200 is the file. Only the cut counts as an error.
#[tokio::test(start_paused = true)]
async fn fault_full_200_to_a_resumed_foreground_get_restarts_the_file_from_zero() {
    let mut f = fc(118).await;
    f.server.push_fault(FILE, GET, Fault::ResetAfter(CUT));
    f.server.always(FILE, GET, Fault::IgnoreRange);
    f.c.resume().await;
    f.transient(Code::ERROR_WINHTTP_CONNECTION_ERROR, ErrorContext::GeneralTransport).await;
    let kept = f.kept();
    assert!(kept > 0 && kept <= CUT, "kept {kept}\n{}", f.requests());
    let info = f.c.until(&mut f.seen, JobState::Transferred).await;
    assert_eq!(info.error_count, 1, "the restart counted as an error: {info:?}");
    assert_eq!(f.kept(), SIZE as u64);
    f.completes().await;
    let gets: Vec<Logged> =
        f.server.log().into_iter().filter(|r| r.method == Method::GET).collect();
    let answers: Vec<_> = gets.iter().map(|r| (r.range_start(), r.status)).collect();
    assert_eq!(
        answers,
        [(Some(0), 206), (Some(kept), 200), (Some(0), 200)],
        "the cut GET, the resumed one refused, the restart\n{}",
        f.requests()
    );
    assert!(gets[2].finished && gets[2].sent == SIZE as u64, "{}", f.requests());
}

/// A ranged file behind a signed route whose tokens serve `uses` requests each (a HEAD counts):
/// 4 MiB, two ranges of 1.5 MiB, so each is a GET of its own.
async fn signed_ranges(seed: u64, uses: u32) -> (Fc, Vec<u8>) {
    const BIG: &str = "big.bin";
    let server = FaultServer::start().await;
    let data = random_bytes(seed, 4 << 20);
    server.add_file(BIG, data.clone());
    server.sign("signed", BIG, uses);
    let ranges = [(0, 3 << 19), (2 << 20, 3 << 19)];
    let want: Vec<u8> =
        ranges.iter().flat_map(|&(o, l)| data[o as usize..(o + l) as usize].to_vec()).collect();
    let ranges = ranges.iter().map(|&(offset, length)| bits_core::ByteRange { offset, length });
    let c = case_with_ranges(&server.url("signed"), Some(ranges.collect())).await;
    (Fc { server, c, seen: Seen::default(), seed }, want)
}

/// Issue 16 item 5: the second range's GET goes to the token the probe was sent to, which has
/// expired (403). The file follows its remote name again (a fresh token) and finishes: no error
/// counted, no retry delay, the job never leaves TRANSFERRING.
#[tokio::test(start_paused = true)]
async fn an_expired_redirect_target_is_followed_afresh_from_the_remote_name() {
    let (mut f, want) = signed_ranges(119, 2).await;
    f.c.resume().await;
    f.c.until(&mut f.seen, JobState::Transferred).await;
    let info = f.c.info();
    assert_eq!((info.error_count, info.error), (0, None), "{}", f.requests());
    assert!(!f.seen.saw(JobState::TransientError) && !f.seen.saw(JobState::Error));
    let answers: Vec<_> = f
        .server
        .log()
        .iter()
        .map(|r| format!("{} {} {:?} {}", r.method, r.path, r.range_start(), r.status))
        .collect();
    assert_eq!(
        answers,
        [
            "HEAD /signed None 302",
            "HEAD /signed~1 None 200",
            "GET /signed~1 Some(0) 206",
            "GET /signed~1 Some(2097152) 403",
            "HEAD /signed None 302",
            "HEAD /signed~2 None 200",
            "GET /signed~2 Some(2097152) 206",
        ],
        "{}",
        f.requests()
    );
    assert_eq!(f.c.manager.complete(me(), f.c.job).await.unwrap(), Code::S_OK);
    assert!(std::fs::read(&f.c.dest).unwrap() == want, "the file differs");
}

/// A target that refuses even when followed afresh: the remote name is followed once per
/// failure, and the second refusal (nothing recorded since) is the job's error, fatal as a 403
/// is, with no request after it.
#[tokio::test(start_paused = true)]
async fn a_redirect_target_refused_again_after_a_fresh_follow_counts() {
    let server = FaultServer::start().await;
    server.add_file(FILE, random_bytes(120, SIZE));
    server.sign("signed", FILE, 1);
    let c = case(&server.url("signed")).await;
    let mut f = Fc { server, c, seen: Seen::default(), seed: 120 };
    f.c.resume().await;
    f.fatal(Code::Http(403), ErrorContext::RemoteFile).await;
    let follows = f.server.log().iter().filter(|r| r.path == "/signed").count();
    let refused = f.server.log().iter().filter(|r| r.status == 403).count();
    assert_eq!((follows, refused), (2, 2), "{}", f.requests());
    assert_eq!(f.kept(), 0);
}

/// A job for `count` ranges of 10 bytes of FILE, 1000 bytes apart, in the case's manager:
/// resumed, TRANSFERRED without an error, completed with exactly those bytes. Returns how many
/// ranges each of its GETs asked for.
async fn ranged_job(f: &Fc, count: u64) -> Vec<usize> {
    let m = &f.c.manager;
    let before = f.server.log().len();
    let job =
        m.create_job(me(), "parts", "", JobType::Download, Priority::Foreground).await.unwrap();
    let dest = f.c.dest.with_file_name(format!("r{count}.bin"));
    let ranges: Vec<_> = (0..count).map(|i| bits_core::ByteRange::new(i * 1000, 10)).collect();
    m.add_file(me(), job, &f.server.url(FILE), &dest, Some(ranges)).await.unwrap();
    assert_eq!(m.resume(me(), job).await.unwrap(), Code::S_OK);
    let started = Instant::now();
    loop {
        let info = m.get_job(me(), job).unwrap();
        assert_eq!((info.error_count, &info.error), (0, &None), "{}", f.requests());
        if info.state == JobState::Transferred {
            break;
        }
        assert!(started.elapsed() < HANG, "the job hung: {info:?}\n{}", f.requests());
        tick().await;
    }
    assert_eq!(m.complete(me(), job).await.unwrap(), Code::S_OK);
    let data = random_bytes(f.seed, SIZE);
    let expected: Vec<u8> =
        (0..count as usize).flat_map(|i| data[i * 1000..i * 1000 + 10].to_vec()).collect();
    assert_eq!(std::fs::read(&dest).unwrap(), expected, "{}", f.requests());
    let log = f.server.log();
    let gets = log[before..].iter().filter(|r| r.method == Method::GET);
    gets.map(|r| r.range.as_deref().map_or(0, |r| r.matches(',').count() + 1)).collect()
}

/// RFC 9110 §15.3.7.2 lets a server answer fewer parts than asked (lighttpd sends the first 10);
/// this one leaves out the last part of every multipart answer. The parts that came are kept,
/// the rest asked again, and the origin's count sizes the later batches, of the same job and of
/// the next one.
#[tokio::test(start_paused = true)]
async fn fewer_parts_than_asked_are_kept_and_the_rest_asked_again() {
    let f = fc(123).await;
    f.server.set_multi_range(true);
    f.server.always(FILE, GET, Fault::Parts(bits_testkit::faults::Parts::LastMissing));
    // 5 asked, 4 came; the 5th alone is a plain range.
    assert_eq!(ranged_job(&f, 5).await, [5, 1], "{}", f.requests());
    // The origin returned 4: the next job asks 4 (3 come), then 3 (2 come), then the last one.
    assert_eq!(ranged_job(&f, 6).await, [4, 3, 1], "{}", f.requests());
}
