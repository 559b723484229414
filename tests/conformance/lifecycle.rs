//! Conformance cases 34–43 (spec §10 "Resume / Suspend / Cancel / Complete state rules", §2.3,
//! §3.B): Suspend is idempotent, Resume of a running job restarts nothing, Suspend/Resume
//! continues from the checkpoint, Cancel and Complete retire the job (temp files deleted, only
//! whole files kept), a failing rename leaves the job TRANSFERRED for another Complete, nothing is
//! visible at the destination before Complete, and Resume from ERROR retries at once.
//!
//! bitsd forgets final jobs at once: GetJob of a CANCELLED or ACKNOWLEDGED job is
//! BG_E_NOT_FOUND and every change BG_E_INVALID_STATE, so the final state is checked through
//! those answers and the job's absence from EnumJobs.

use std::path::Path;
use std::time::{Duration, SystemTime};

use bits_client::Client;
use bits_core::{Code, JobId, JobState, Priority};
use bits_testkit::data::random_bytes;
use bits_testkit::server::{DEFAULT_LAST_MODIFIED, LoggedRequest, TestServer};
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::{Download, JobOf, foreground, fresh_job, new_job, throttled};
use bits_tests::wait::{TIMEOUT, wait_for};
use http::Method;

use bits_tests::helpers::{expect_code, is_listed, wait_file_bytes, wait_state};

/// Frequent syncs, so progress (the checkpoint) moves while a throttled transfer runs.
const FAST_SYNC: [&str; 4] = ["--sync-bytes", "65536", "--sync-interval-ms", "50"];

/// The offset a GET's `Range: bytes=N-...` asked for.
fn range_start(request: &LoggedRequest) -> Option<u64> {
    let spec = request.range.as_deref()?.trim().strip_prefix("bytes=")?;
    spec.split('-').next()?.trim().parse().ok()
}

fn gets(log: &[LoggedRequest]) -> Vec<&LoggedRequest> {
    log.iter().filter(|r| r.method == Method::GET).collect()
}

/// The job of these cases: FOREGROUND, for the server's `/name`, saved as `name`.
fn lifecycle(name: &str) -> JobOf<'_> {
    foreground("lifecycle", name)
}

/// Every change to a final job is BG_E_INVALID_STATE, and the job is not listed.
async fn assert_final(client: &Client, job: JobId, dir: &Path) {
    expect_code(client.cancel(job).await, Code::BG_E_INVALID_STATE);
    expect_code(client.complete(job).await, Code::BG_E_INVALID_STATE);
    expect_code(client.resume(job).await, Code::BG_E_INVALID_STATE);
    expect_code(client.suspend(job).await, Code::BG_E_INVALID_STATE);
    expect_code(
        client.add_file(job, "http://example.com/late", &dir.join("late")).await,
        Code::BG_E_INVALID_STATE,
    );
    expect_code(client.set_priority(job, Priority::High).await, Code::BG_E_INVALID_STATE);
    assert!(!is_listed(client, job).await, "a final job is not in EnumJobs");
}

// Case 34: Suspend twice: both S_OK, the job ends SUSPENDED (once from QUEUED/CONNECTING,
// once from SUSPENDED).
#[tokio::test]
async fn suspend_twice_succeeds_and_leaves_the_job_suspended() {
    let server = TestServer::start().await;
    server.hold();
    let data = random_bytes(34, 10_000);
    let d = Download::started(server, data, &[], lifecycle("s.bin")).await;
    let (client, job) = (&d.client, d.job);
    let state = client.get_job(job).await.unwrap().state;
    assert!(matches!(state, JobState::Queued | JobState::Connecting), "{}", state.name());
    assert_eq!(client.suspend(job).await.unwrap(), Code::S_OK);
    assert_eq!(client.get_job(job).await.unwrap().state, JobState::Suspended);
    assert_eq!(client.suspend(job).await.unwrap(), Code::S_OK);
    assert_eq!(client.get_job(job).await.unwrap().state, JobState::Suspended);
}

// Case 35: Resume while TRANSFERRING is S_OK and changes nothing: the job stays TRANSFERRING
// and the server sees no new request (no range from 0).
#[tokio::test]
async fn resume_while_transferring_keeps_the_running_transfer() {
    let data = random_bytes(35, 600_000);
    let d = Download::started(throttled(400_000).await, data, &FAST_SYNC, lifecycle("t.bin")).await;
    let (server, client, job, dest, data) = (&d.server, &d.client, d.job, &d.dest, &d.data);
    wait_state(client, job, JobState::Transferring).await;
    wait_file_bytes(client, job, 0, 1).await;
    let mark = server.log_len();

    assert_eq!(client.resume(job).await.unwrap(), Code::S_OK);
    assert_eq!(client.get_job(job).await.unwrap().state, JobState::Transferring);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = client.get_job(job).await.unwrap();
    assert!(info.progress.bytes_transferred < data.len() as u64, "still mid-transfer");
    assert_eq!(info.state, JobState::Transferring);
    assert!(server.log_since(mark).is_empty(), "Resume restarted: {:?}", server.log_since(mark));

    wait_state(client, job, JobState::Transferred).await;
    let log = server.log();
    let from_zero = gets(&log).into_iter().filter(|r| range_start(r) == Some(0)).count();
    assert_eq!(from_zero, 1, "the file was requested from 0 more than once: {log:?}");
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    assert_eq!(&std::fs::read(dest).unwrap(), data);
}

// Case 36: Suspend mid-transfer at checkpoint k, then Resume: the next GET starts at k, and
// the completed file is identical to the source.
#[tokio::test]
async fn resume_after_suspend_continues_from_the_checkpoint() {
    let data = random_bytes(36, 800_000);
    let d = Download::started(throttled(400_000).await, data, &FAST_SYNC, lifecycle("k.bin")).await;
    let (server, client, job, dest, data) = (&d.server, &d.client, d.job, &d.dest, &d.data);
    wait_file_bytes(client, job, 0, 100_000).await;
    assert_eq!(client.suspend(job).await.unwrap(), Code::S_OK);
    assert_eq!(client.get_job(job).await.unwrap().state, JobState::Suspended);
    // The stopped worker records what it had synced; then the checkpoint stays put.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let k = client.get_progress(job).await.unwrap().bytes_transferred;
    assert!(k > 0 && k < data.len() as u64, "suspended mid-file, at {k}");
    let filled = client.get_filled_file_ranges(job, 0).await.unwrap();
    assert_eq!(filled.len(), 1, "{filled:?}");
    assert_eq!((filled[0].offset, filled[0].length), (0, k));

    server.set_throttle(None);
    let mark = server.log_len();
    client.resume(job).await.unwrap();
    wait_state(client, job, JobState::Transferred).await;
    let log = server.log_since(mark);
    let first = *gets(&log).first().expect("a GET after Resume");
    assert_eq!(range_start(first), Some(k), "the resumed GET starts at the checkpoint: {log:?}");
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    assert_eq!(&std::fs::read(dest).unwrap(), data, "content identical to the source");
}

// Case 37: Cancel mid-transfer: S_OK, temp file deleted, nothing at the destination, every
// later Cancel/Complete/Resume/Suspend/AddFile/SetPriority is BG_E_INVALID_STATE, not listed.
#[tokio::test]
async fn cancel_deletes_the_temp_file_and_makes_the_job_final() {
    let data = random_bytes(37, 1_000_000);
    let d = Download::started(throttled(300_000).await, data, &FAST_SYNC, lifecycle("c.bin")).await;
    let (client, job, dest) = (&d.client, d.job, &d.dest);
    wait_file_bytes(client, job, 0, 1).await;
    let temp = client.list_files(job).await.unwrap()[0].temp_path.clone();
    assert!(temp.exists(), "the temp file exists before Cancel");

    assert_eq!(client.cancel(job).await.unwrap(), Code::S_OK);
    assert!(!temp.exists(), "Cancel deletes the temp file");
    assert!(!dest.exists(), "nothing at the destination");
    expect_code(client.get_job(job).await, Code::BG_E_NOT_FOUND);
    assert_final(client, job, &d.daemon.out_dir()).await;
}

// Case 38: Complete in TRANSFERRED: S_OK, the local file is byte-identical with mtime equal to
// the server's Last-Modified, the temp file is gone, the job leaves EnumJobs, and a second
// Complete is BG_E_INVALID_STATE.
#[tokio::test]
async fn complete_in_transferred_moves_the_file_into_place() {
    let data = random_bytes(38, 300_000);
    let d = Download::transferred(TestServer::start().await, data, &[], lifecycle("d.bin")).await;
    let (client, job, dest, data) = (&d.client, d.job, &d.dest, &d.data);
    let temp = client.list_files(job).await.unwrap()[0].temp_path.clone();

    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    assert_eq!(&std::fs::read(dest).unwrap(), data, "byte-identical");
    let mtime = std::fs::metadata(dest).unwrap().modified().unwrap();
    let last_modified = SystemTime::UNIX_EPOCH + Duration::from_secs(DEFAULT_LAST_MODIFIED);
    assert_eq!(mtime, last_modified, "mtime is the server's Last-Modified");
    assert!(!temp.exists(), "the temp file is gone");
    assert!(!is_listed(client, job).await, "an ACKNOWLEDGED job is not listed");
    expect_code(client.complete(job).await, Code::BG_E_INVALID_STATE);
}

// Case 39: Complete while file 2 of 3 is transferring (file 1 done): BG_S_PARTIAL_COMPLETE, only
// file 1 exists, the temp files of 2 and 3 are deleted, and the job is final.
#[tokio::test]
async fn complete_mid_transfer_keeps_only_whole_files() {
    let server = TestServer::start().await;
    let first = random_bytes(391, 50_000);
    server.add_file("1.bin", first.clone());
    server.add_file("2.bin", random_bytes(392, 2_000_000));
    server.add_file("3.bin", random_bytes(393, 50_000));
    server.set_throttle(Some(400_000));
    let daemon = TestDaemon::start_with(&FAST_SYNC).await;
    let client = daemon.client().await;
    let out = daemon.out_dir();
    let dests = [out.join("1.bin"), out.join("2.bin"), out.join("3.bin")];
    let urls = ["1.bin", "2.bin", "3.bin"].map(|name| server.url(name));
    let files: Vec<_> = urls.iter().zip(&dests).collect();
    let job = new_job(&client, "lifecycle", Priority::Foreground, &files).await;
    client.resume(job).await.unwrap();
    wait_file_bytes(&client, job, 1, 1).await;
    let listed = client.list_files(job).await.unwrap();
    assert!(listed[0].progress.completed || listed[0].progress.bytes_transferred == 50_000);
    assert!(listed[1].progress.bytes_transferred < 2_000_000, "file 2 is mid-transfer");
    assert!(listed[1].temp_path.exists(), "file 2 has a temp file");

    assert_eq!(client.complete(job).await.unwrap(), Code::BG_S_PARTIAL_COMPLETE);
    assert_eq!(std::fs::read(&dests[0]).unwrap(), first, "file 1 is kept");
    assert!(!dests[1].exists() && !dests[2].exists(), "files 2 and 3 are not kept");
    for file in &listed {
        assert!(!file.temp_path.exists(), "temp file {} left behind", file.temp_path.display());
    }
    assert_final(&client, job, &out).await;
}

// Case 40 (P): Complete on a SUSPENDED job with nothing transferred is BG_S_PARTIAL_COMPLETE;
// no local file appears and the job is final.
#[tokio::test]
async fn complete_of_an_untransferred_suspended_job_is_partial_complete() {
    let (daemon, client, job) = fresh_job(&[], "nothing yet").await;
    let dest = daemon.out_dir().join("n.bin");
    client.add_file(job, "http://example.com/n.bin", &dest).await.unwrap();
    assert_eq!(client.complete(job).await.unwrap(), Code::BG_S_PARTIAL_COMPLETE);
    assert!(!dest.exists(), "no local file");
    assert_eq!(std::fs::read_dir(daemon.out_dir()).unwrap().count(), 0, "nothing left behind");
    assert_final(&client, job, &daemon.out_dir()).await;
}

// Case 41: a rename that fails (the destination became a directory after the transfer) makes
// Complete fail; the job stays TRANSFERRED and listed with the file not Completed; once the
// cause is removed, Complete again is S_OK.
#[tokio::test]
async fn failed_rename_leaves_the_job_transferred_and_complete_can_be_retried() {
    let data = random_bytes(41, 100_000);
    let d = Download::transferred(TestServer::start().await, data, &[], lifecycle("x.bin")).await;
    let (client, job, dest, data) = (&d.client, d.job, &d.dest, &d.data);
    std::fs::create_dir(dest).unwrap();

    let result = client.complete(job).await;
    assert!(result.is_err(), "Complete onto a directory must fail, got {result:?}");
    let info = client.get_job(job).await.unwrap();
    assert_eq!(info.state, JobState::Transferred, "the job stays TRANSFERRED");
    assert!(is_listed(client, job).await, "the job is still enumerable");
    let file = client.list_files(job).await.unwrap().remove(0);
    assert!(!file.progress.completed, "Completed is FALSE for the file that was not renamed");
    assert!(file.temp_path.exists(), "the temp file is kept for the next Complete");

    std::fs::remove_dir(dest).unwrap();
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    assert_eq!(&std::fs::read(dest).unwrap(), data);
    assert!(!is_listed(client, job).await);
}

// Case 42: in TRANSFERRED nothing is at the local name; the temp file exists in the same
// directory and its size equals BytesTransferred.
#[tokio::test]
async fn transferred_file_is_only_in_the_temp_file_before_complete() {
    let data = random_bytes(42, 123_456);
    let d = Download::transferred(TestServer::start().await, data, &[], lifecycle("v.bin")).await;
    let (client, job, dest) = (&d.client, d.job, &d.dest);

    assert!(!dest.exists(), "the local name does not exist before Complete");
    let file = client.list_files(job).await.unwrap().remove(0);
    assert!(file.temp_path.is_absolute(), "{}", file.temp_path.display());
    assert_eq!(file.temp_path.parent(), dest.parent(), "temp file next to the destination");
    let size = std::fs::metadata(&file.temp_path).unwrap().len();
    assert_eq!(size, file.progress.bytes_transferred);
    assert_eq!(size, 123_456);
}

// Case 43: Resume from ERROR re-queues at once (no wait for the 600 s retry delay) and the
// transfer is attempted again.
#[tokio::test]
async fn resume_from_error_requeues_immediately_and_retries() {
    let server = TestServer::start().await;
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let dest = daemon.out_dir().join("late.bin");
    let job =
        new_job(&client, "lifecycle", Priority::Foreground, &[(server.url("late.bin"), &dest)])
            .await;
    client.resume(job).await.unwrap();
    let info = wait_state(&client, job, JobState::Error).await;
    assert_eq!(info.error.map(|e| e.code), Some(Code::Http(404)));
    assert_eq!(info.minimum_retry_delay_secs, 600);

    let data = random_bytes(43, 50_000);
    server.add_file("late.bin", data.clone());
    server.hold();
    let mark = server.log_len();
    assert_eq!(client.resume(job).await.unwrap(), Code::S_OK);
    let state = client.get_job(job).await.unwrap().state;
    assert!(matches!(state, JobState::Queued | JobState::Connecting), "{}", state.name());
    wait_for("the retry to reach the server", TIMEOUT, || async {
        let n = server.waiting_at_gate();
        if n > 0 { Ok(()) } else { Err(format!("{n} requests at the gate")) }
    })
    .await;
    server.release();
    wait_state(&client, job, JobState::Transferred).await;
    assert!(!server.log_since(mark).is_empty());
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}
