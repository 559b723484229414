//! Conformance cases 81–86 (spec §10 "On-demand", §3.F): RequestFileRanges, GetFilledFileRanges,
//! UpdateDownloadPosition and the SUSPENDED / TRANSFERRED outcome of ON_DEMAND_MODE.
//!
//! bitsd does not support DYNAMIC_CONTENT (SetProperty → `E_NOTIMPL`), so the job that is not
//! eligible for random access in cases 81 and 86 is one whose file was added with static ranges,
//! which bitsd refuses the same way (`BG_E_RANDOM_ACCESS_NOT_SUPPORTED`).

use std::time::Duration;

use bits_client::{Client, PropertyValue};
use bits_core::job::property;
use bits_core::{ByteRange, Code, JobId, JobState, Priority};
use bits_testkit::data::{random_bytes, sha256_hex};
use bits_testkit::server::TestServer;
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::{Download, foreground, serving};
use bits_tests::helpers::{assert_no_byte_twice, expect_code, range, served_spans, wait_state};
use bits_tests::wait::{TIMEOUT, wait_for};

/// Size of the served file in cases 82–85 (spec §10: N = 1000).
const N: u64 = 1000;

/// A server with `/NAME` (N pseudo-random bytes), a daemon and a FOREGROUND job holding that file
/// as its only, whole-file, file.
type Setup = Download;

async fn setup(name: &str, seed: u64, on_demand: bool) -> Setup {
    let remote = random_bytes(seed, N as usize);
    let t = Download::added(TestServer::start().await, remote, &[], foreground(name, name)).await;
    let (client, job) = (&t.client, t.job);
    if on_demand {
        let code = client
            .set_property(job, property::ON_DEMAND_MODE, PropertyValue::Enable(true))
            .await
            .unwrap();
        assert_eq!(code, Code::S_OK);
        assert!(client.get_job(job).await.unwrap().on_demand_mode);
    }
    t
}

/// A server with `/NAME` (N pseudo-random bytes), a daemon and a FOREGROUND job `display` holding
/// `ranges` of that file: a statically ranged file, which is not eligible for random access.
async fn ranged(
    name: &str,
    seed: u64,
    display: &str,
    ranges: &[ByteRange],
) -> (TestServer, TestDaemon, Client, JobId) {
    let server = serving(name, random_bytes(seed, N as usize)).await;
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let job = client.create_job(display, Priority::Foreground).await.unwrap();
    let dest = daemon.out_dir().join(name);
    client.add_file_with_ranges(job, &server.url(name), &dest, ranges).await.unwrap();
    (server, daemon, client, job)
}

/// Waits until the daemon has learned the size of file 0 (its HEAD went through).
async fn wait_size_known(client: &Client, job: JobId) -> u64 {
    wait_for("the daemon to learn the file size", TIMEOUT, || async {
        let files = client.list_files(job).await.map_err(|e| e.to_string())?;
        files[0].remote_size.ok_or_else(|| format!("size unknown; files {files:?}"))
    })
    .await
}

// Case 81: RequestFileRanges on a job that is not eligible for random access →
// BG_E_RANDOM_ACCESS_NOT_SUPPORTED (a statically ranged file stands in for DYNAMIC_CONTENT, which
// bitsd does not implement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_file_ranges_on_ineligible_job_is_random_access_not_supported() {
    let ranges = [range(0, 100), range(500, 100)];
    let (server, _daemon, client, job) = ranged("c81.bin", 81, "case 81", &ranges).await;
    // DYNAMIC_CONTENT itself is not implemented by bitsd, so it cannot make a job ineligible.
    expect_code(
        client.set_property(job, property::DYNAMIC_CONTENT, PropertyValue::Enable(true)).await,
        Code::E_NOTIMPL,
    );
    expect_code(
        client.request_file_ranges(job, 0, &[range(0, 10)]).await,
        Code::BG_E_RANDOM_ACCESS_NOT_SUPPORTED,
    );
    // The refused call changed nothing and touched no server.
    assert_eq!(client.get_job(job).await.unwrap().state, JobState::Suspended);
    assert_eq!(client.get_filled_file_ranges(job, 0).await.unwrap(), Vec::<ByteRange>::new());
    assert!(server.log().is_empty(), "a refused call must not reach the server");
}

// Case 82: N = 1000, size known: RequestFileRanges([(990,20)]) → BG_E_INVALID_RANGE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_file_ranges_past_end_of_file_is_invalid_range() {
    let t = setup("c82.bin", 82, false).await;
    let (client, job) = (&t.client, t.job);
    // 100 B/s: the HEAD goes through at once, the 1000-byte body takes ten seconds, so the job sits
    // in TRANSFERRING with the size known.
    t.server.set_throttle(Some(100));
    client.resume(job).await.unwrap();
    assert_eq!(wait_size_known(client, job).await, N);

    expect_code(
        client.request_file_ranges(job, 0, &[range(990, 20)]).await,
        Code::BG_E_INVALID_RANGE,
    );
    // Together with a valid range the call still fails as a whole.
    expect_code(
        client.request_file_ranges(job, 0, &[range(0, 10), range(990, 20)]).await,
        Code::BG_E_INVALID_RANGE,
    );
    // The same range ending exactly at the end of the file is fine.
    assert_eq!(client.request_file_ranges(job, 0, &[range(990, 10)]).await.unwrap(), Code::S_OK);
    client.cancel(job).await.unwrap();
}

/// Cases 83/84 first half: ON_DEMAND_MODE, RequestFileRanges([(0,100),(50,100)]), Resume; returns
/// once the job is SUSPENDED again, with bytes [0, 150) filled.
async fn first_150_fetched(name: &str, seed: u64) -> Setup {
    let t = setup(name, seed, true).await;
    let (client, job) = (&t.client, t.job);
    let code = client.request_file_ranges(job, 0, &[range(0, 100), range(50, 100)]).await;
    assert_eq!(code.unwrap(), Code::S_OK);
    client.resume(job).await.unwrap();
    wait_state(client, job, JobState::Suspended).await;
    assert_eq!(client.get_filled_file_ranges(job, 0).await.unwrap(), [range(0, 150)]);
    t
}

// Case 83: ON_DEMAND_MODE, RequestFileRanges([(0,100),(50,100)]), Resume → the overlapping requests
// complete; GetFilledFileRanges → [(0,150)]; state SUSPENDED (file incomplete); the server never
// sent any byte twice. (FileRangesTransferred is checked with the notification cases.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_overlapping_requests_fill_once_then_suspend() {
    let t = first_150_fetched("c83.bin", 83).await;
    let (client, job) = (&t.client, t.job);
    let info = client.get_job(job).await.unwrap();
    assert_eq!(info.state, JobState::Suspended, "file incomplete: SUSPENDED, not TRANSFERRED");
    assert_eq!(info.progress.files[0].bytes_total, Some(N));
    assert_eq!(info.progress.files[0].bytes_transferred, 150);
    assert_eq!(info.progress.files_transferred, 0);
    assert_no_byte_twice(&t.server.log(), "c83.bin");
    // It stays stopped: nothing more is fetched while the job is SUSPENDED.
    let served = t.server.bytes_served();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.server.bytes_served(), served, "a SUSPENDED job went on downloading");
    assert_eq!(client.get_job(job).await.unwrap().state, JobState::Suspended);
}

// Case 84: after case 83, RequestFileRanges([(150,850)]) + Resume → TRANSFERRED;
// GetFilledFileRanges → [(0,1000)].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_request_for_the_rest_ends_transferred() {
    let t = first_150_fetched("c84.bin", 84).await;
    let (client, job) = (&t.client, t.job);

    let code = client.request_file_ranges(job, 0, &[range(150, 850)]).await;
    assert_eq!(code.unwrap(), Code::S_OK);
    client.resume(job).await.unwrap();
    wait_state(client, job, JobState::Transferred).await;

    assert_eq!(client.get_filled_file_ranges(job, 0).await.unwrap(), [range(0, N)]);
    let progress = client.get_progress(job).await.unwrap();
    assert_eq!((progress.bytes_total, progress.bytes_transferred), (Some(N), N));
    assert_eq!(progress.files_transferred, 1);
    assert_no_byte_twice(&t.server.log(), "c84.bin");
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    let local = std::fs::read(t.daemon.out_dir().join("c84.bin")).unwrap();
    assert!(sha256_hex(&local) == sha256_hex(&t.data), "content differs");
}

// Case 85: filled ranges [(0,10),(20,10)], then a request for (10,10) → GetFilledFileRanges →
// [(0,30)] (merged, sorted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filled_ranges_are_merged_and_sorted() {
    let t = setup("c85.bin", 85, true).await;
    let (client, job) = (&t.client, t.job);
    // Asked for out of order on purpose: the answer is sorted all the same.
    let code = client.request_file_ranges(job, 0, &[range(20, 10), range(0, 10)]).await;
    assert_eq!(code.unwrap(), Code::S_OK);
    client.resume(job).await.unwrap();
    wait_state(client, job, JobState::Suspended).await;
    assert_eq!(client.get_filled_file_ranges(job, 0).await.unwrap(), [range(0, 10), range(20, 10)]);

    let code = client.request_file_ranges(job, 0, &[range(10, 10)]).await;
    assert_eq!(code.unwrap(), Code::S_OK);
    client.resume(job).await.unwrap();
    wait_state(client, job, JobState::Suspended).await;
    assert_eq!(client.get_filled_file_ranges(job, 0).await.unwrap(), [range(0, 30)]);
    assert_eq!(client.get_progress(job).await.unwrap().files[0].bytes_transferred, 30);
    assert_no_byte_twice(&t.server.log(), "c85.bin");
}

// Case 86: UpdateDownloadPosition on a job that is not eligible for random access →
// BG_E_RANDOM_ACCESS_NOT_SUPPORTED (a statically ranged file, as in case 81).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_download_position_on_ineligible_job_is_random_access_not_supported() {
    let ranges = [range(100, 200)];
    let (server, _daemon, client, job) = ranged("c86.bin", 86, "case 86", &ranges).await;
    expect_code(
        client.update_download_position(job, 0, 150).await,
        Code::BG_E_RANDOM_ACCESS_NOT_SUPPORTED,
    );
    assert_eq!(client.get_job(job).await.unwrap().state, JobState::Suspended);
    assert!(server.log().is_empty(), "a refused call must not reach the server");
}

// Case 86, the eligible side (spec §3.F [PROPOSAL]): UpdateDownloadPosition(500) on a whole-file
// job → the missing bytes are fetched from offset 500 first, then from the lowest missing byte;
// no byte is fetched twice and the file is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_download_position_fetches_from_that_offset_first() {
    let t = setup("c86b.bin", 860, false).await;
    let (client, job) = (&t.client, t.job);
    assert_eq!(client.update_download_position(job, 0, 500).await.unwrap(), Code::S_OK);
    client.resume(job).await.unwrap();
    wait_state(client, job, JobState::Transferred).await;

    let log = t.server.log();
    let spans = served_spans(&log, "c86b.bin");
    assert_eq!(spans.first().map(|s| s.0), Some(500), "the first GET must start at 500: {log:#?}");
    assert!(spans.iter().any(|s| s.0 == 0), "bytes before 500 were never fetched: {log:#?}");
    assert_no_byte_twice(&log, "c86b.bin");
    assert_eq!(spans.iter().map(|(a, b)| b - a).sum::<u64>(), N, "served {spans:?}");
    assert_eq!(client.get_filled_file_ranges(job, 0).await.unwrap(), [range(0, N)]);
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    let local = std::fs::read(t.daemon.out_dir().join("c86b.bin")).unwrap();
    assert!(sha256_hex(&local) == sha256_hex(&t.data), "content differs");
}
