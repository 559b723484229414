//! Conformance cases 18–33 (spec §10 "AddFileWithRanges", §3.C): the range-validation algorithm
//! (zero ranges, `BG_LENGTH_TO_EOF` as an offset, the stable-sort overlap rule, the ranges-per-file
//! limit with the admin exemption), final states, the local file as the concatenation of the
//! ranges in caller order, and the checks that need the remote size (job → ERROR).

use std::path::PathBuf;

use bits_client::Client;
use bits_core::job::MAX_RANGES_PER_FILE;
use bits_core::{ByteRange, Code, ErrorContext, JobId, JobState, LENGTH_TO_EOF};
use bits_testkit::data::random_bytes;
use bits_testkit::faults::{Fault, FaultServer};
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::{fresh_job, serving};

use bits_tests::helpers::{expect_code, range, wait_state};

const URL: &str = "http://example.com/r.bin";

/// A daemon, a client, a fresh job and a destination path for it.
async fn setup(args: &[&str]) -> (TestDaemon, Client, JobId, PathBuf) {
    let (daemon, client, job) = fresh_job(args, "ranges").await;
    let dest = daemon.out_dir().join("r.bin");
    (daemon, client, job, dest)
}

/// AddFileWithRanges of `ranges` on a fresh job; the result and the job's file count after it.
async fn add_ranges(ranges: &[ByteRange]) -> (Result<u32, bits_client::ClientError>, u32) {
    let (_daemon, client, job, dest) = setup(&[]).await;
    let result = client.add_file_with_ranges(job, URL, &dest, ranges).await;
    let files = client.get_progress(job).await.unwrap().files_total;
    (result, files)
}

/// Asserts that AddFileWithRanges of `ranges` fails with `code` and adds nothing.
async fn assert_refused(ranges: &[ByteRange], code: Code) {
    let (result, files) = add_ranges(ranges).await;
    expect_code(result, code);
    assert_eq!(files, 0, "a refused AddFileWithRanges adds no file");
}

/// Asserts that AddFileWithRanges of `ranges` succeeds, keeping the ranges in caller order.
async fn assert_accepted(ranges: &[ByteRange]) {
    let (_daemon, client, job, dest) = setup(&[]).await;
    client.add_file_with_ranges(job, URL, &dest, ranges).await.unwrap();
    assert_eq!(client.list_files(job).await.unwrap()[0].ranges, ranges);
}

/// The validation table: one test per row, named after what it checks.
macro_rules! validation_cases {
    ($($name:ident: $check:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $check.await;
            }
        )*
    };
}

const OVERLAPPING: Code = Code::BG_E_OVERLAPPING_RANGES;

validation_cases! {
    // Case 18: zero ranges is E_INVALIDARG.
    add_file_with_zero_ranges_is_invalid_arg: assert_refused(&[], Code::E_INVALIDARG);
    // Case 19: a range whose offset is BG_LENGTH_TO_EOF is BG_E_INVALID_RANGE.
    range_offset_of_length_to_eof_is_invalid_range:
        assert_refused(&[range(LENGTH_TO_EOF, 10)], Code::BG_E_INVALID_RANGE);
    // Case 20: (100,5) then (100,0) overlap under the stable sort: BG_E_OVERLAPPING_RANGES.
    same_offset_longer_range_first_is_overlapping:
        assert_refused(&[range(100, 5), range(100, 0)], OVERLAPPING);
    // Case 21: (100,0) then (100,5) pass (API-doc rule; the bitsadmin page disagrees).
    same_offset_empty_range_first_is_accepted: assert_accepted(&[range(100, 0), range(100, 5)]);
    // Case 22: (0,100) and (50,10) overlap: BG_E_OVERLAPPING_RANGES.
    overlapping_ranges_are_refused: assert_refused(&[range(0, 100), range(50, 10)], OVERLAPPING);
    // Case 23: touching ranges (0,100) and (100,10) are accepted.
    touching_ranges_are_accepted: assert_accepted(&[range(0, 100), range(100, 10)]);
    // Case 24: a duplicated range overlaps itself: BG_E_OVERLAPPING_RANGES.
    duplicate_ranges_are_overlapping: assert_refused(&[range(0, 10), range(0, 10)], OVERLAPPING);
    // Case 25: a to-EOF range followed (in offset order) by another range overlaps it.
    to_eof_range_before_another_is_overlapping:
        assert_refused(&[range(10, LENGTH_TO_EOF), range(20, 5)], OVERLAPPING);
    // Case 25: the same in the other caller order (the sort puts the to-EOF range first).
    to_eof_range_given_after_a_later_range_is_overlapping:
        assert_refused(&[range(20, 5), range(10, LENGTH_TO_EOF)], OVERLAPPING);
}

fn disjoint_ranges(n: u64) -> Vec<ByteRange> {
    (0..n).map(|i| range(i * 10, 5)).collect()
}

// Case 26: a non-admin may give 500 disjoint ranges for a file.
#[tokio::test]
async fn non_admin_500_ranges_are_accepted() {
    let (_daemon, client, job, dest) = setup(&["--admin-uid", "4242"]).await;
    assert_eq!(MAX_RANGES_PER_FILE, 500);
    client.add_file_with_ranges(job, URL, &dest, &disjoint_ranges(500)).await.unwrap();
    assert_eq!(client.list_files(job).await.unwrap()[0].ranges.len(), 500);
}

// Case 26: a non-admin's 501 ranges are BG_E_TOO_MANY_RANGES_IN_FILE.
#[tokio::test]
async fn non_admin_501_ranges_are_too_many_ranges_in_file() {
    let (_daemon, client, job, dest) = setup(&["--admin-uid", "4242"]).await;
    let err = expect_code(
        client.add_file_with_ranges(job, URL, &dest, &disjoint_ranges(501)).await,
        Code::BG_E_TOO_MANY_RANGES_IN_FILE,
    );
    assert_eq!(err.code.hresult(), 0x8020_0052);
    assert_eq!(client.get_progress(job).await.unwrap().files_total, 0);
}

// Case 26: an admin is exempt from the ranges-per-file limit.
#[tokio::test]
async fn admin_501_ranges_are_accepted() {
    let (_daemon, client, job, dest) = setup(&[]).await;
    client.add_file_with_ranges(job, URL, &dest, &disjoint_ranges(501)).await.unwrap();
    assert_eq!(client.list_files(job).await.unwrap()[0].ranges.len(), 501);
}

// Case 27: AddFileWithRanges on a CANCELLED job is BG_E_INVALID_STATE.
#[tokio::test]
async fn add_file_with_ranges_on_a_cancelled_job_is_invalid_state() {
    let (_daemon, client, job, dest) = setup(&[]).await;
    assert_eq!(client.cancel(job).await.unwrap(), Code::S_OK);
    expect_code(
        client.add_file_with_ranges(job, URL, &dest, &[range(0, 10)]).await,
        Code::BG_E_INVALID_STATE,
    );
}

/// Downloads the ranges `ranges` of a 1000-byte remote file and checks the file's BytesTotal,
/// its range list (caller order) and, after Complete, the local file: the ranges' bytes
/// concatenated in caller order.
async fn download_ranges(ranges: &[ByteRange], spans: &[(usize, usize)], bytes_total: u64) {
    let remote = random_bytes(28, 1000);
    let server = serving("r.bin", remote.clone()).await;
    let (_daemon, client, job, dest) = setup(&[]).await;
    client.add_file_with_ranges(job, &server.url("r.bin"), &dest, ranges).await.unwrap();
    assert_eq!(client.list_files(job).await.unwrap()[0].ranges, ranges, "caller order");
    client.resume(job).await.unwrap();
    wait_state(&client, job, JobState::Transferred).await;

    let file = client.list_files(job).await.unwrap().remove(0);
    assert_eq!(file.ranges, ranges, "GetFileRanges returns the ranges in caller order");
    assert_eq!(file.progress.bytes_total, Some(bytes_total));
    assert_eq!(file.progress.bytes_transferred, bytes_total);
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    let expected: Vec<u8> = spans.iter().flat_map(|&(a, b)| remote[a..b].iter().copied()).collect();
    assert_eq!(expected.len() as u64, bytes_total);
    assert_eq!(std::fs::read(&dest).unwrap(), expected, "local file = ranges in caller order");
}

// Case 28: ranges (100,100),(900,100),(400,100) of a 1000-byte file give a 300-byte local file
// r[100..200) ‖ r[900..1000) ‖ r[400..500), BytesTotal 300, ranges kept in caller order.
#[tokio::test]
async fn ranged_download_concatenates_ranges_in_caller_order() {
    let ranges = [range(100, 100), range(900, 100), range(400, 100)];
    download_ranges(&ranges, &[(100, 200), (900, 1000), (400, 500)], 300).await;
}

// Case 29: a to-EOF range resolves once the size is known: (24,17),(111,EOF),(83,7) of 1000
// bytes is 17 + 889 + 7 = 913 bytes, r[24..41) ‖ r[111..1000) ‖ r[83..90).
#[tokio::test]
async fn to_eof_range_resolves_against_the_remote_size() {
    let ranges = [range(24, 17), range(111, LENGTH_TO_EOF), range(83, 7)];
    download_ranges(&ranges, &[(24, 41), (111, 1000), (83, 90)], 913).await;
}

// Case 30: a range reaching past the end of the remote file is accepted by AddFileWithRanges,
// and after Resume the job goes to ERROR with BG_E_INVALID_RANGE (context REMOTE_FILE: P).
#[tokio::test]
async fn range_past_the_remote_end_puts_the_job_in_error_invalid_range() {
    let server = serving("r.bin", random_bytes(30, 1000)).await;
    let (_daemon, client, job, dest) = setup(&[]).await;
    client.add_file_with_ranges(job, &server.url("r.bin"), &dest, &[range(990, 20)]).await.unwrap();
    client.resume(job).await.unwrap();
    let info = wait_state(&client, job, JobState::Error).await;
    let error = info.error.expect("an ERROR job has an error object");
    assert_eq!(error.code, Code::BG_E_INVALID_RANGE, "{error:?}");
    assert_eq!(error.context, ErrorContext::RemoteFile, "{error:?}");
    assert_eq!(error.file_index, Some(0));
    assert_eq!(client.get_error(job).await.unwrap().code, Code::BG_E_INVALID_RANGE);
}

// Case 31: a server that ignores Range (200 with the whole body) cannot serve a ranged file:
// ERROR with BG_E_INSUFFICIENT_RANGE_SUPPORT.
#[tokio::test]
async fn server_ignoring_range_for_a_ranged_file_is_insufficient_range_support() {
    let server = FaultServer::start().await;
    server.add_file("r.bin", random_bytes(31, 1000));
    server.always("r.bin", Some(http::Method::GET), Fault::IgnoreRange);
    let (_daemon, client, job, dest) = setup(&[]).await;
    let ranges = [range(100, 100), range(500, 50)];
    client.add_file_with_ranges(job, &server.url("r.bin"), &dest, &ranges).await.unwrap();
    client.resume(job).await.unwrap();
    let info = wait_state(&client, job, JobState::Error).await;
    let error = info.error.expect("an ERROR job has an error object");
    assert_eq!(error.code, Code::BG_E_INSUFFICIENT_RANGE_SUPPORT, "{error:?}");
    assert_eq!(error.code.hresult(), 0x8020_0013);
    assert!(!dest.exists());
}

// Case 33 (range list part): a file added with AddFile has no static ranges.
#[tokio::test]
async fn file_added_without_ranges_has_an_empty_range_list() {
    let (_daemon, client, job, dest) = setup(&[]).await;
    client.add_file(job, URL, &dest).await.unwrap();
    assert!(client.list_files(job).await.unwrap()[0].ranges.is_empty());
}
