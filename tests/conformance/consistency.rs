//! Conformance cases 59–65 (spec §10 "Consistency / remote name changes", §3.D, §6.4): a file
//! that changes on the server restarts from zero without touching finished files, SetRemoteName
//! to a mirror continues or restarts by the size + Last-Modified rule, and the argument and
//! state checks of SetRemoteName and ReplaceRemotePrefix.
//!
//! bitsd fetches a whole file with one ranged GET, so it learns of a change at its next request
//! for that file: cases 59 and 60 change the file while its GET is streaming and end that GET
//! early (a reset), as a server swapping a file under a download typically does. The retry
//! comes after the 1 s retry delay (`--retry-delay-secs 1`). The served files have no ETag, so
//! their version is size + Last-Modified, as in BITS.

use std::time::{Duration, SystemTime};

use bits_client::{Client, FileInfo};
use bits_core::{Code, JobId, JobState, Priority};
use bits_testkit::data::{random_bytes, sha256_hex};
use bits_testkit::faults::{Fault, FaultFile, FaultServer, Logged};
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::fresh_job;
use http::Method;

use bits_tests::helpers::{expect_code, fault_log, wait_file_bytes, wait_state_within};

const SIZE: usize = 1 << 20;
const SMALL: usize = 256 * 1024;
/// Where a GET is cut or stalled.
const CUT: u64 = 128 * 1024;
const WAIT: Duration = Duration::from_secs(20);
const FAST: [&str; 6] =
    ["--retry-delay-secs", "1", "--sync-bytes", "65536", "--sync-interval-ms", "50"];
const GET: Option<Method> = Some(Method::GET);
/// A URL that is never fetched (the argument cases do not resume their jobs).
const NOWHERE: &str = "http://host.example/dir/f.bin";

/// `data` as a file whose version is size + Last-Modified (no ETag), like the servers of BITS.
fn version(data: Vec<u8>, last_modified_secs: u64) -> FaultFile {
    FaultFile {
        data: data.into(),
        etag: None,
        last_modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(last_modified_secs)),
    }
}

const OLD: u64 = 1_609_459_200;
const NEW: u64 = 1_700_000_000;

async fn fast_daemon() -> (TestDaemon, Client) {
    let daemon = TestDaemon::start_with(&FAST).await;
    let client = daemon.client().await;
    (daemon, client)
}

async fn files(client: &Client, job: JobId) -> Vec<FileInfo> {
    client.list_files(job).await.unwrap()
}

fn gets_of<'a>(log: &'a [Logged], path: &str) -> Vec<&'a Logged> {
    log.iter().filter(|r| r.method == Method::GET && r.path == path).collect()
}

fn sha_of(path: &std::path::Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

/// Cases 59 and 60: file 2 of a two-file job is replaced by `v2` (file 1 by another version
/// too) while file 2's GET streams; file 2 restarts from byte 0 and ends as `v2`, file 1 keeps
/// the version it finished with and is not fetched again; the job ends TRANSFERRED, no error.
async fn changed_file_restarts(seed: u64, v2: FaultFile) {
    let server = FaultServer::start().await;
    let f1 = random_bytes(seed, SMALL);
    let f2 = random_bytes(seed + 1, SIZE);
    server.put_file("f1.bin", version(f1.clone(), OLD));
    server.put_file("f2.bin", version(f2, OLD));
    server.push_fault("f2.bin", GET, Fault::ResetAfter(CUT));
    let (daemon, client) = fast_daemon().await;
    let job = client.create_job("consistency", Priority::Foreground).await.unwrap();
    let d1 = daemon.out_dir().join("f1.bin");
    let d2 = daemon.out_dir().join("f2.bin");
    client.add_file(job, &server.url("f1.bin"), &d1).await.unwrap();
    client.add_file(job, &server.url("f2.bin"), &d2).await.unwrap();
    client.resume(job).await.unwrap();

    // File 2's GET is streaming: the server swaps both files.
    bits_tests::wait::wait_for("file 2's GET", WAIT, || async {
        let log = server.log();
        let streaming = gets_of(&log, "/f2.bin").iter().any(|r| r.sent > 0);
        if streaming { Ok(()) } else { Err(fault_log(&log)) }
    })
    .await;
    let changed_at = server.log().len();
    server.put_file("f1.bin", version(random_bytes(seed + 2, SMALL), NEW));
    let v2_sha = sha256_hex(&v2.data);
    let v2_size = v2.data.len() as u64;
    server.put_file("f2.bin", v2);

    let info = wait_state_within(&client, job, JobState::Transferred, WAIT).await;
    let log = server.log();
    let requests = fault_log(&log);
    assert_eq!(info.error, None, "{info:?}");
    expect_code(client.get_error(job).await, Code::BG_E_ERROR_INFORMATION_UNAVAILABLE);
    let first = gets_of(&log, "/f2.bin")[0];
    assert!(first.sent > 0, "{requests}");
    // The next GET of file 2 asks for it from byte 0 (its bytes of the old version dropped).
    let after: Vec<&Logged> =
        gets_of(&log, "/f2.bin").into_iter().filter(|r| r.seq >= changed_at).collect();
    assert!(!after.is_empty(), "{requests}");
    assert!(
        after[0].range_start().unwrap_or(0) == 0,
        "file 2 did not restart at byte 0\n{requests}"
    );
    assert!(after.iter().map(|r| r.sent).sum::<u64>() >= v2_size, "{requests}");
    assert!(
        log[changed_at..].iter().all(|r| r.path != "/f1.bin"),
        "the finished file 1 was fetched again\n{requests}"
    );
    let progress = client.get_progress(job).await.unwrap();
    assert_eq!(progress.files[1].bytes_total, Some(v2_size));
    assert_eq!(progress.files[1].bytes_transferred, v2_size);

    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    assert_eq!(sha_of(&d1), sha256_hex(&f1), "file 1 is not the version it finished with");
    assert_eq!(sha_of(&d2), v2_sha, "file 2 is not the new version");
}

// Case 59: file 2's Last-Modified and content change mid-transfer → file 2 restarts from 0 and
// completes with the new content, file 1 keeps the old; TRANSFERRED with no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_modified_change_restarts_only_the_changed_file() {
    changed_file_restarts(59, version(random_bytes(5900, SIZE), NEW)).await;
}

// Case 60: the same with a size change only (same Last-Modified).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_change_restarts_only_the_changed_file() {
    changed_file_restarts(60, version(random_bytes(6000, SIZE + 4096), OLD)).await;
}

/// Cases 61 and 62: a FOREGROUND job fetching `f.bin` from an origin that stalls after CUT
/// bytes is suspended there; SetRemoteName points it at a mirror serving `mirror`, and Resume
/// finishes it. Returns the checkpoint, the mirror's GETs and the downloaded file's SHA-256.
async fn switch_to_mirror(
    seed: u64,
    origin: FaultFile,
    mirror: FaultFile,
) -> (u64, Vec<Logged>, String) {
    let origin_server = FaultServer::start().await;
    let mirror_server = FaultServer::start().await;
    origin_server.put_file("f.bin", origin);
    origin_server.push_fault("f.bin", GET, Fault::StallBody { after: CUT, stall: WAIT });
    mirror_server.put_file("f.bin", mirror);
    let (daemon, client) = fast_daemon().await;
    let job = client.create_job("mirror", Priority::Foreground).await.unwrap();
    let dest = daemon.out_dir().join("f.bin");
    client.add_file(job, &origin_server.url("f.bin"), &dest).await.unwrap();
    client.resume(job).await.unwrap();
    wait_file_bytes(&client, job, 0, CUT).await;
    client.suspend(job).await.unwrap();
    let checkpoint = client.get_progress(job).await.unwrap().files[0].bytes_transferred;
    assert_eq!(checkpoint, CUT, "seed {seed}");

    let mirror_url = mirror_server.url("f.bin");
    assert_eq!(client.set_remote_name(job, 0, &mirror_url).await.unwrap(), Code::S_OK);
    assert_eq!(files(&client, job).await[0].remote_url, mirror_url);
    assert!(mirror_server.log().is_empty(), "SetRemoteName fetched before Resume");
    let origin_seen = origin_server.log().len();
    client.resume(job).await.unwrap();
    wait_state_within(&client, job, JobState::Transferred, WAIT).await;
    assert_eq!(
        origin_server.log().len(),
        origin_seen,
        "the origin was asked again after the switch"
    );
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    let gets = mirror_server.log().into_iter().filter(|r| r.method == Method::GET).collect();
    (checkpoint, gets, sha_of(&dest))
}

// Case 61: Suspend mid-file, SetRemoteName to a mirror with the same size and Last-Modified,
// Resume → the first GET to the mirror starts at the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_with_the_same_version_continues_at_the_checkpoint() {
    let data = random_bytes(61, SIZE);
    let (checkpoint, gets, sha) =
        switch_to_mirror(61, version(data.clone(), OLD), version(data.clone(), OLD)).await;
    assert_eq!(gets[0].range_start(), Some(checkpoint), "{}", fault_log(&gets));
    assert_eq!(gets.iter().map(|r| r.sent).sum::<u64>(), SIZE as u64 - checkpoint);
    assert_eq!(sha, sha256_hex(&data));
}

// Case 62: the same with a mirror whose Last-Modified differs → the transfer restarts at byte 0
// (and the file is wholly the mirror's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_with_another_last_modified_restarts_at_zero() {
    let mirror = random_bytes(6200, SIZE);
    let (_, gets, sha) =
        switch_to_mirror(62, version(random_bytes(62, SIZE), OLD), version(mirror.clone(), NEW))
            .await;
    assert_eq!(gets[0].range_start().unwrap_or(0), 0, "{}", fault_log(&gets));
    assert_eq!(sha, sha256_hex(&mirror));
}

/// A daemon and a job with one (never fetched) file at [`NOWHERE`].
async fn idle_job() -> (TestDaemon, Client, JobId) {
    let (daemon, client, job) = fresh_job(&[], "names").await;
    client.add_file(job, NOWHERE, &daemon.out_dir().join("f.bin")).await.unwrap();
    (daemon, client, job)
}

// Case 63: SetRemoteName("not a url") → E_INVALIDARG; the remote name is unchanged.
#[tokio::test]
async fn set_remote_name_refuses_a_non_url() {
    let (_daemon, client, job) = idle_job().await;
    expect_code(client.set_remote_name(job, 0, "not a url").await, Code::E_INVALIDARG);
    assert_eq!(files(&client, job).await[0].remote_url, NOWHERE);
}

/// `http://host.example/` followed by path segments of 200 characters, `len` characters in all.
fn url_of_length(len: usize) -> String {
    let mut url = "http://host.example/".to_string();
    while url.len() < len {
        let room = len - url.len();
        let segment = "s".repeat(room.min(200));
        url.push_str(&segment);
        if url.len() < len {
            url.push('/');
        }
    }
    assert_eq!(url.len(), len);
    url
}

// Case 63: a URL of 2,201 characters → E_INVALIDARG (2,200 is accepted).
#[tokio::test]
async fn set_remote_name_refuses_a_url_over_2200_characters() {
    let (_daemon, client, job) = idle_job().await;
    let longest = url_of_length(2200);
    assert_eq!(client.set_remote_name(job, 0, &longest).await.unwrap(), Code::S_OK);
    assert_eq!(files(&client, job).await[0].remote_url, longest);
    expect_code(client.set_remote_name(job, 0, &url_of_length(2201)).await, Code::E_INVALIDARG);
    assert_eq!(files(&client, job).await[0].remote_url, longest);
}

// Case 63: SetRemoteName on a CANCELLED job → BG_E_INVALID_STATE.
#[tokio::test]
async fn set_remote_name_on_a_cancelled_job_is_invalid_state() {
    let (_daemon, client, job) = idle_job().await;
    client.cancel(job).await.unwrap();
    expect_code(
        client.set_remote_name(job, 0, "http://host.example/other").await,
        Code::BG_E_INVALID_STATE,
    );
}

async fn two_file_job() -> (TestDaemon, Client, JobId, Vec<String>) {
    let (daemon, client, job) = fresh_job(&[], "prefix").await;
    let urls = vec![
        "http://host.example/a/f1.bin".to_string(),
        "http://host.example/a/f2.bin".to_string(),
    ];
    for (i, url) in urls.iter().enumerate() {
        client.add_file(job, url, &daemon.out_dir().join(format!("f{i}.bin"))).await.unwrap();
    }
    (daemon, client, job, urls)
}

async fn remote_names(client: &Client, job: JobId) -> Vec<String> {
    files(client, job).await.into_iter().map(|f| f.remote_url).collect()
}

// Case 64: ReplaceRemotePrefix with a prefix nothing starts with → S_FALSE, names unchanged.
#[tokio::test]
async fn replace_remote_prefix_without_a_match_is_s_false() {
    let (_daemon, client, job, urls) = two_file_job().await;
    let code = client.replace_remote_prefix(job, "http://nomatch", "http://x").await.unwrap();
    assert_eq!(code, Code::S_FALSE);
    assert_eq!(remote_names(&client, job).await, urls);
}

// Case 64: an empty old prefix → E_INVALIDARG (an empty new prefix too).
#[tokio::test]
async fn replace_remote_prefix_refuses_an_empty_prefix() {
    let (_daemon, client, job, urls) = two_file_job().await;
    expect_code(client.replace_remote_prefix(job, "", "http://x").await, Code::E_INVALIDARG);
    expect_code(
        client.replace_remote_prefix(job, "http://host.example/", "").await,
        Code::E_INVALIDARG,
    );
    assert_eq!(remote_names(&client, job).await, urls);
}

// Case 64: the match is case-sensitive: "HTTP://HOST.EXAMPLE" against lowercase URLs → S_FALSE.
#[tokio::test]
async fn replace_remote_prefix_is_case_sensitive() {
    let (_daemon, client, job, urls) = two_file_job().await;
    let code = client
        .replace_remote_prefix(job, "HTTP://HOST.EXAMPLE", "http://other.example")
        .await
        .unwrap();
    assert_eq!(code, Code::S_FALSE);
    assert_eq!(remote_names(&client, job).await, urls);
}

// Case 65: ReplaceRemotePrefix on a 3-file job where files 1–2 match rewrites both and leaves
// file 3 alone; the already-completed file 1 is not downloaded again (and file 2 continues at
// its checkpoint on the new server, which serves the same version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_remote_prefix_rewrites_matching_files_and_keeps_finished_ones() {
    let old = FaultServer::start().await;
    let new = FaultServer::start().await;
    let f1 = random_bytes(651, SMALL);
    let f2 = random_bytes(652, SIZE);
    let f3 = random_bytes(653, SMALL);
    for server in [&old, &new] {
        server.put_file("a/f1.bin", version(f1.clone(), OLD));
        server.put_file("a/f2.bin", version(f2.clone(), OLD));
    }
    old.put_file("other/f3.bin", version(f3.clone(), OLD));
    old.push_fault("a/f2.bin", GET, Fault::StallBody { after: CUT, stall: WAIT });
    let (daemon, client) = fast_daemon().await;
    let job = client.create_job("prefix", Priority::Foreground).await.unwrap();
    let names = ["a/f1.bin", "a/f2.bin", "other/f3.bin"];
    let mut dests = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let dest = daemon.out_dir().join(format!("f{}.bin", i + 1));
        client.add_file(job, &old.url(name), &dest).await.unwrap();
        dests.push(dest);
    }
    client.resume(job).await.unwrap();
    wait_file_bytes(&client, job, 1, CUT).await;
    client.suspend(job).await.unwrap();
    let progress = client.get_progress(job).await.unwrap();
    let first = &progress.files[0];
    assert_eq!(
        first.bytes_total,
        Some(first.bytes_transferred),
        "file 1 is not whole: {progress:?}"
    );
    let checkpoint = progress.files[1].bytes_transferred;

    let old_prefix = format!("http://{}/a/", old.addr());
    let new_prefix = format!("http://{}/a/", new.addr());
    let code = client.replace_remote_prefix(job, &old_prefix, &new_prefix).await.unwrap();
    assert_eq!(code, Code::S_OK);
    assert_eq!(
        remote_names(&client, job).await,
        vec![new.url("a/f1.bin"), new.url("a/f2.bin"), old.url("other/f3.bin")]
    );
    client.resume(job).await.unwrap();
    wait_state_within(&client, job, JobState::Transferred, WAIT).await;
    let new_log = new.log();
    assert!(
        new_log.iter().all(|r| r.path != "/a/f1.bin"),
        "the completed file 1 was downloaded again\n{}",
        fault_log(&new_log)
    );
    let f2_gets = gets_of(&new_log, "/a/f2.bin");
    assert_eq!(f2_gets[0].range_start(), Some(checkpoint), "{}", fault_log(&new_log));
    assert!(gets_of(&old.log(), "/other/f3.bin").iter().any(|r| r.sent > 0));
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    for (dest, data) in dests.iter().zip([&f1, &f2, &f3]) {
        assert_eq!(sha_of(dest), sha256_hex(data), "{}", dest.display());
    }
}
