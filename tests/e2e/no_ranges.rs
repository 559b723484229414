//! Issue 16 item 6: a FOREGROUND download from a server that ignores Range, interrupted. BITS
//! fails the resumed request's 200 with BG_E_INSUFFICIENT_RANGE_SUPPORT; bitsd restarts the file
//! from byte 0 instead (docs/compat.md), and drops its recorded bytes durably before any new
//! byte is recorded. Here the interruption is a SIGKILL of the daemon mid-body, and a second one
//! after the restart from zero proves the store forgot the old bytes before the new GET. A
//! connection cut instead, and a background job keeping BITS' error: in virtual time,
//! crates/bits-manager/tests/faults.rs.

use std::time::Duration;

use bits_testkit::data::random_bytes;
use bits_testkit::faults::{Fault, FaultServer};
use bits_tests::fixture::{Download, foreground};
use bits_tests::helpers::wait_filled;
use bits_tests::wait::{TIMEOUT, wait_for};
use http::Method;

use crate::progress::FAST_SYNC;

const FILE: &str = "f.bin";
const SIZE: usize = 4 << 20;
/// Where the first GET's body stops.
const CUT: u64 = 1 << 20;
/// Longer than the test: a stall the daemon is killed in.
const LONG: Duration = Duration::from_secs(120);
const GET: Option<Method> = Some(Method::GET);
/// What the daemon logs when it restarts the file.
const RESTART_LINE: &str =
    "the server ignored Range and sent the whole file to a resumed request; restarting the file";

/// File 0's recorded bytes, by GetFilledFileRanges and by GetProgress (which must agree).
async fn recorded(d: &Download<FaultServer>) -> u64 {
    let filled = d.client.get_filled_file_ranges(d.job, 0).await.unwrap();
    let progress = d.client.get_progress(d.job).await.unwrap();
    let by_ranges = filled.iter().map(|r| r.length).sum::<u64>();
    assert_eq!(by_ranges, progress.files[0].bytes_transferred, "{filled:?} {progress:?}");
    by_ranges
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreground_file_without_range_support_restarts_from_zero_after_a_crash() {
    let server = FaultServer::start().await;
    // GET 1 (bytes=0-): CUT bytes, then silence; the daemon records them and is killed.
    server.push_fault(FILE, GET, Fault::StallBody { after: CUT, stall: LONG });
    // GET 2 (bytes=CUT-), after the restart: the whole file, as a server without ranges answers.
    server.push_fault(FILE, GET, Fault::IgnoreRange);
    // GET 3 (bytes=0-), the restart from zero: its head never comes; the daemon is killed again.
    server.push_fault(FILE, GET, Fault::StallHeaders(LONG));
    server.always(FILE, GET, Fault::IgnoreRange);
    let data = random_bytes(163, SIZE);
    let of = foreground("no ranges", FILE);
    let mut d = Download::started(server, data, &FAST_SYNC, of).await;
    wait_filled(&d.client, d.job, 0, CUT).await;
    d.daemon.restart().await;
    d.client = d.daemon.client().await;

    wait_for("the GET that restarts the file from zero", TIMEOUT, || async {
        let log = d.server.log();
        let stalled =
            log.iter().any(|r| r.fault.as_deref().is_some_and(|f| f.starts_with("StallHeaders")));
        if stalled { Ok(()) } else { Err(d.requests()) }
    })
    .await;
    assert_eq!(recorded(&d).await, 0, "the kept bytes still count\n{}", d.requests());
    assert!(d.daemon.log().contains(RESTART_LINE), "{}", d.daemon.log_tail(30));
    assert_eq!(d.client.get_job(d.job).await.unwrap().error, None, "the restart is not an error");
    // Forgotten durably, before the new GET went out: a crash now finds nothing recorded (the
    // server holds the restarted daemon's requests meanwhile).
    d.server.hold();
    d.daemon.restart().await;
    d.client = d.daemon.client().await;
    assert_eq!(recorded(&d).await, 0, "the store still had the old bytes\n{}", d.requests());
    d.server.release();

    d.completes().await;
    let gets: Vec<_> = d.server.log().into_iter().filter(|r| r.method == Method::GET).collect();
    let answers: Vec<_> = gets.iter().map(|r| (r.range_start(), r.status)).collect();
    assert_eq!(
        answers,
        [(Some(0), 206), (Some(CUT), 200), (Some(0), 0), (Some(0), 200)],
        "{}",
        d.requests()
    );
    assert!(gets[3].finished, "{}", d.requests());
}
