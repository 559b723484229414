//! Hostile servers (issue 4 item 3): every fault of the fault-injecting server
//! (`bits_testkit::faults`) against the real daemon, and the state plus error it reaches.
//!
//! Unless noted the fault hits one request (then the server behaves), the file is 1 MiB, the
//! retry delay 2 s. "then completes" means: after the retry delay the server sees a new
//! request, the job reaches TRANSFERRED and Complete gives a file byte-identical (sha256) to the
//! server's. "stays" means: still ERROR one retry delay later with no new request, GetError
//! gives the code, error_count ≥ 1. Contexts: GT = GENERAL_TRANSPORT, RF = REMOTE_FILE.
//!
//! Faults that only time something (Retry-After of a 429 and of a 503 to the HEAD, a 503 to
//! every request until the no-progress timeout) are tested in virtual time through the manager:
//! crates/bits-manager/tests/timers.rs. So are the faults whose outcome does not need the binary
//! (rows marked "vt": a reset or short body, a wrong Content-Range, a 200 to a partial range,
//! 416, the 5xx and 4xx statuses, a redirect loop, too many redirects), with the same
//! assertions: crates/bits-manager/tests/faults.rs. The rows left here prove the daemon's wiring
//! against each kind of hostile answer.
//!
//! | fault (request it hits)                         | expected state + error                                 |
//! |-------------------------------------------------|--------------------------------------------------------|
//! | vt: reset (RST) after 256 KiB of the GET body       | TRANSIENT_ERROR ERROR_WINHTTP_CONNECTION_ERROR (GT); retry resumes at the bytes kept; completes |
//! | stall before the GET's headers, socket open     | TRANSIENT_ERROR ERROR_WINHTTP_TIMEOUT (GT); completes  |
//! | stall after 256 KiB of body, socket open        | TRANSIENT_ERROR ERROR_WINHTTP_TIMEOUT (GT); resumes; completes |
//! | vt: short body (256 KiB of 1 MiB) then clean FIN    | TRANSIENT_ERROR ERROR_WINHTTP_CONNECTION_ERROR (GT); resumes; completes |
//! | vt: 206 with a wrong Content-Range                  | TRANSIENT_ERROR ERROR_WINHTTP_INVALID_SERVER_RESPONSE (GT), 0 bytes kept; completes |
//! | vt: 200 + whole file to a resumed (partial) range, background job | ERROR BG_E_INSUFFICIENT_RANGE_SUPPORT (RF), stays; Resume completes |
//! | vt: the same, FOREGROUND job                    | no error: the file restarts from byte 0 (issue 16; e2e with a SIGKILL: no_ranges.rs); completes |
//! | vt: 403 from a redirect target (signed URL expired) | no error: the remote name is followed afresh once (e2e: redirects_expiry.rs); completes; refused again → ERROR BG_E_HTTP_ERROR_403 |
//! | vt: 416 to the GET                                  | ERROR BG_E_INVALID_RANGE (RF), stays; Resume completes |
//! | vt: 500 to the HEAD                                 | TRANSIENT_ERROR BG_E_HTTP_ERROR_500 (RF); completes    |
//! | vt: 502 to the GET                                  | TRANSIENT_ERROR BG_E_HTTP_ERROR_502 (RF); completes    |
//! | vt: 503 to the GET                                  | TRANSIENT_ERROR BG_E_HTTP_ERROR_503 (RF); completes    |
//! | vt: 404 to the GET                                  | ERROR BG_E_HTTP_ERROR_404 (RF), stays                  |
//! | vt: 403 to the GET                                  | ERROR BG_E_HTTP_ERROR_403 (RF), stays                  |
//! | vt: redirect to itself (loop)                       | ERROR ERROR_WINHTTP_REDIRECT_FAILED (RF), stays        |
//! | vt: 12 redirects in a row (> 10)                    | ERROR ERROR_WINHTTP_REDIRECT_FAILED (RF), stays        |
//! | redirect to another origin, custom headers set  | no error; origin 1 saw Authorization + Cookie, origin 2 neither; completes; the GETs sent straight to origin 2 carry neither |
//! | Content-Encoding: gzip label on the 206         | TRANSIENT_ERROR ERROR_WINHTTP_INVALID_SERVER_RESPONSE (GT), 0 bytes kept; completes |
//! | really gzip-compressed 206 body (chunked)       | TRANSIENT_ERROR ERROR_WINHTTP_INVALID_SERVER_RESPONSE (GT), 0 bytes kept; completes |
//! | 200 text/html error page (other length, no validators) to the GET | no error: the length differs from the probe, the file restarts from zero; completes |
//! | the same HTML page to every GET                 | TRANSIENT_ERROR BG_E_REMOTE_FILE_CHANGED (RF) after 4 restarts, 0 bytes kept; completes once the page is gone |
//! | the same HTML page, chunked (no Content-Length) | no error: without the probe's validators it is a new version, the file restarts from zero; no HTML byte in the file; completes |
//! | file replaced (new ETag + Last-Modified) between HEAD and GET | no error: the stale If-Range gets the new file with 200, the file restarts; completes with the new version |
//! | file replaced with another size after 256 KiB   | TRANSIENT_ERROR (the reset), then the probe sees the new size: restart from 0; completes with the new version |
//! | Last-Modified changes (no ETag, same size) after 256 KiB | as above: restart from 0, nothing mixed       |

use std::time::{Duration, SystemTime};

use bits_client::JobInfo;
use bits_core::{Code, ErrorContext, JobState};
use bits_testkit::data::random_bytes;
use bits_testkit::faults::{Fault, FaultFile, FaultServer, fault_log};
use bits_tests::fixture::{Download, foreground};
use http::Method;

const FILE: &str = "f.bin";
const SIZE: usize = 1 << 20;
/// Where connection faults cut the body.
const CUT: u64 = 256 * 1024;
/// The retry delay of most tests.
const DELAY: Duration = Duration::from_secs(2);
/// Longer than any stall the daemon should sit through.
const LONG: Duration = Duration::from_secs(30);

const GET: Option<Method> = Some(Method::GET);

/// Daemon settings of one case.
struct Opts {
    retry_delay_secs: u32,
    no_progress_secs: Option<u32>,
    idle_timeout_ms: Option<u64>,
}

const DEFAULT: Opts = Opts { retry_delay_secs: 2, no_progress_secs: None, idle_timeout_ms: None };
/// Short idle and connect limits, for the stalls.
const IMPATIENT: Opts =
    Opts { retry_delay_secs: 2, no_progress_secs: None, idle_timeout_ms: Some(700) };

/// One fault server with one file, one daemon, one foreground job with that file (not resumed).
type Case = Download<FaultServer>;

async fn case(seed: u64, opts: Opts) -> Case {
    let retry = opts.retry_delay_secs.to_string();
    let mut args: Vec<String> = vec![
        "--sync-bytes".into(),
        "131072".into(),
        "--sync-interval-ms".into(),
        "100".into(),
        "--retry-delay-secs".into(),
        retry,
    ];
    if let Some(secs) = opts.no_progress_secs {
        args.extend(["--no-progress-timeout-secs".into(), secs.to_string()]);
    }
    if let Some(ms) = opts.idle_timeout_ms {
        args.extend(["--idle-timeout-ms".into(), ms.to_string()]);
        args.extend(["--connect-timeout-ms".into(), "500".into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data = random_bytes(seed, SIZE);
    Download::added(FaultServer::start().await, data, &args, foreground("hostile", FILE)).await
}

/// A new version of the file: other bytes, other ETag and Last-Modified.
fn version2(seed: u64, size: usize) -> FaultFile {
    FaultFile {
        data: random_bytes(seed, size).into(),
        etag: Some("\"version-2\"".to_string()),
        last_modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
    }
}

// ---------------------------------------------------------------------------------------------
// Connection faults: transient, retried, resumed where the kept bytes end.

/// A transient failure after part of the body arrived: the bytes received were kept, and the
/// retry (after the delay) asks for exactly the rest.
async fn resumes_after(c: &Case, label: &str, info: &JobInfo) {
    let kept = info.progress.bytes_transferred;
    assert!(kept > 0 && kept <= CUT, "kept {kept} bytes of a body cut at {CUT}\n{}", c.requests());
    c.completes().await;
    let failed = c.server.faulted(label);
    c.retry_after(&failed, DELAY);
    let get = c.next_get(&failed);
    assert_eq!(
        get.range_start(),
        Some(kept),
        "the retry does not resume at {kept}\n{}",
        c.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_stall_before_headers_times_out_and_retries() {
    let c = case(102, IMPATIENT).await;
    c.server.push_fault(FILE, GET, Fault::StallHeaders(LONG));
    c.resume().await;
    let info = c.transient(Code::ERROR_WINHTTP_TIMEOUT, ErrorContext::GeneralTransport).await;
    assert_eq!(info.progress.bytes_transferred, 0);
    c.completes().await;
    c.retry_after(&c.server.faulted("StallHeaders"), DELAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_stall_mid_body_times_out_and_resumes() {
    let c = case(103, IMPATIENT).await;
    c.server.push_fault(FILE, GET, Fault::StallBody { after: CUT, stall: LONG });
    c.resume().await;
    let info = c.transient(Code::ERROR_WINHTTP_TIMEOUT, ErrorContext::GeneralTransport).await;
    resumes_after(&c, "StallBody", &info).await;
}

// ---------------------------------------------------------------------------------------------
// Broken answers.

/// A broken answer to the first GET (`fault`, labelled `label`) is refused and none of its
/// bytes reach the disk: TRANSIENT_ERROR ERROR_WINHTTP_INVALID_SERVER_RESPONSE (GT) with no
/// progress and no filled range, the temp file (if any) holds only zeros (the file is random
/// data, so any byte written would show), the retry comes after the delay and asks from byte 0
/// again, and the job completes.
async fn refused_and_never_written(seed: u64, fault: Fault, label: &str) {
    let c = case(seed, DEFAULT).await;
    c.server.push_fault(FILE, GET, fault);
    c.resume().await;
    let info = c
        .transient(Code::ERROR_WINHTTP_INVALID_SERVER_RESPONSE, ErrorContext::GeneralTransport)
        .await;
    assert_eq!(info.progress.bytes_transferred, 0, "bytes of a refused answer were kept");
    let filled = c.client.get_filled_file_ranges(c.job, 0).await.unwrap();
    assert!(filled.is_empty(), "ranges of a refused answer were recorded: {filled:?}");
    let dir = c.dest.parent().unwrap();
    let prefix = format!(".{FILE}.bitsd-");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with(&prefix) {
            let bytes = std::fs::read(&path).unwrap();
            let written = bytes.iter().position(|&b| b != 0);
            assert_eq!(
                written,
                None,
                "{} holds bytes of the refused answer\n{}",
                path.display(),
                c.requests()
            );
        }
    }
    c.completes().await;
    let failed = c.server.faulted(label);
    c.retry_after(&failed, DELAY);
    let get = c.next_get(&failed);
    assert_eq!(get.range_start(), Some(0), "the retry does not start over\n{}", c.requests());
}

// ---------------------------------------------------------------------------------------------
// Redirects.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redirect_to_another_origin_drops_credentials() {
    let c = case(118, DEFAULT).await;
    let other = FaultServer::start().await;
    other.add_file(FILE, c.data.clone());
    c.server.always(FILE, None, Fault::RedirectTo(other.url(FILE)));
    let headers = "Authorization: Basic eDp5\r\nCookie: a=b\r\n";
    assert_eq!(c.client.set_custom_headers(c.job, Some(headers)).await.unwrap(), Code::S_OK);
    c.resume().await;
    c.completes().await;
    let first = c.server.log();
    let second = other.log();
    let both = format!("origin 1:\n{}origin 2:\n{}", fault_log(&first), fault_log(&second));
    assert!(!first.is_empty() && !second.is_empty(), "{both}");
    assert!(
        first.iter().all(|r| r.authorization.as_deref() == Some("Basic eDp5")
            && r.cookie.as_deref() == Some("a=b")),
        "origin 1 did not get the custom headers\n{both}"
    );
    assert!(
        second.iter().all(|r| r.authorization.is_none() && r.cookie.is_none()),
        "credentials crossed to another origin\n{both}"
    );
}

// ---------------------------------------------------------------------------------------------
// Encodings and error pages: never file bytes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_gzip_label_on_a_range_is_never_written() {
    refused_and_never_written(119, Fault::GzipLabel, "GzipLabel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_gzip_body_on_a_range_is_never_written() {
    refused_and_never_written(120, Fault::GzipBody, "GzipBody").await;
}

/// HEAD is fine, the GET gets a 200 text/html page of another length without validators: its
/// length differs from the probe, which bitsd takes for a new version of the file, so it
/// restarts the file (probe again) at once, without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_html_200_error_page_restarts_the_file() {
    restarts_after_the_page(121, false).await;
}

/// An HTML page (`chunked` or not) to the first GET: the job reaches TRANSFERRED without any
/// error, the page was followed by a new probe and a GET from byte 0, and the completed file is
/// the server's (no HTML byte in it).
async fn restarts_after_the_page(seed: u64, chunked: bool) {
    let c = case(seed, DEFAULT).await;
    c.server.push_fault(FILE, GET, Fault::HtmlPage { chunked });
    c.resume().await;
    let info = c.wait_state(JobState::Transferred).await;
    assert_eq!((info.error_count, &info.error), (0, &None), "{info:?}\n{}", c.requests());
    c.completes().await;
    let log = c.server.log();
    let html = c.server.faulted("HtmlPage");
    let after: Vec<_> = log.iter().filter(|r| r.seq > html.seq).collect();
    assert!(
        after.first().is_some_and(|r| r.method == Method::HEAD)
            && after.iter().any(|r| r.method == Method::GET && r.range_start() == Some(0)),
        "expected a new probe and a GET from 0 after the page\n{}",
        c.requests()
    );
    let info = c.client.list_jobs().await.unwrap();
    assert!(info.iter().all(|j| j.id != c.job), "completed job still listed");
}

/// A captive portal answering every GET: the "file changed" restarts are capped (4), then the
/// job is in TRANSIENT_ERROR and retried later; once the page is gone it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_html_200_every_time_becomes_transient() {
    let c = case(122, DEFAULT).await;
    c.server.always(FILE, GET, Fault::HtmlPage { chunked: false });
    c.resume().await;
    let info = c.transient(Code::BG_E_REMOTE_FILE_CHANGED, ErrorContext::RemoteFile).await;
    assert_eq!(info.progress.bytes_transferred, 0);
    let pages = c.server.log().iter().filter(|r| r.fault.is_some()).count();
    assert_eq!(pages, 4, "one attempt and 3 restarts\n{}", c.requests());
    c.server.clear_faults(FILE);
    c.completes().await;
}

/// The same page without Content-Length (chunked): without validators it is taken for a new
/// version too, so the file restarts from zero at once and nothing of the page ends up in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_chunked_html_200_is_never_written() {
    restarts_after_the_page(123, true).await;
}

// ---------------------------------------------------------------------------------------------
// The file changes between requests: that file restarts from zero, nothing mixed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_file_replaced_between_head_and_get_restarts() {
    let c = case(124, DEFAULT).await;
    let new = version2(224, SIZE);
    c.server.push_fault(FILE, GET, Fault::Replace(new.clone()));
    c.resume().await;
    c.completes_with(&new.data).await;
    let replaced = c.server.faulted("Replace");
    assert_eq!(
        replaced.status,
        200,
        "the stale If-Range gets the whole new file\n{}",
        c.requests()
    );
    let get = c.next_get(&replaced);
    assert_eq!(get.range_start(), Some(0), "{}", c.requests());
    assert_eq!(get.if_range.as_deref(), Some("\"version-2\""), "{}", c.requests());
}

/// Part of the old version is on disk when the file changes (new size, ETag, Last-Modified).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_file_resized_after_partial_download_restarts() {
    let c = case(125, DEFAULT).await;
    c.server.push_fault(FILE, GET, Fault::ResetAfter(CUT));
    c.resume().await;
    let info =
        c.transient(Code::ERROR_WINHTTP_CONNECTION_ERROR, ErrorContext::GeneralTransport).await;
    assert!(info.progress.bytes_transferred > 0);
    let new = version2(225, SIZE + 12_345);
    c.server.put_file(FILE, new.clone());
    c.completes_with(&new.data).await;
    let get = c.next_get(&c.server.faulted("ResetAfter"));
    assert_eq!(get.range_start(), Some(0), "old bytes were kept\n{}", c.requests());
}

/// A server without ETags: only Last-Modified (same size) tells the versions apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_last_modified_change_restarts() {
    let c = case(126, DEFAULT).await;
    let old = FaultFile { etag: None, ..FaultFile::new(c.data.clone()) };
    c.server.put_file(FILE, old);
    c.server.push_fault(FILE, GET, Fault::ResetAfter(CUT));
    c.resume().await;
    let info =
        c.transient(Code::ERROR_WINHTTP_CONNECTION_ERROR, ErrorContext::GeneralTransport).await;
    assert!(info.progress.bytes_transferred > 0);
    let new = FaultFile { etag: None, ..version2(226, SIZE) };
    c.server.put_file(FILE, new.clone());
    c.completes_with(&new.data).await;
    let get = c.next_get(&c.server.faulted("ResetAfter"));
    assert_eq!(get.range_start(), Some(0), "old bytes were kept\n{}", c.requests());
}
