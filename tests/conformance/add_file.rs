//! Conformance cases 8–17 (spec §10 "AddFile / AddFileSet", §3.C, §8): Resume of an empty job,
//! the checks of AddFile in the spec's order (names, scheme, URL length, destination directory,
//! files per job), AddFileSet all-or-nothing, AddFile in final states and while transferring.

use std::path::{Path, PathBuf};

use bits_client::Client;
use bits_core::job::MAX_FILES_PER_JOB;
use bits_core::{Code, JobId, JobState, Priority};
use bits_testkit::data::random_bytes;
use bits_testkit::server::TestServer;
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::fresh_job;

use bits_tests::helpers::{
    assert_resume_of_an_empty_job_is_bg_e_empty, expect_code, wait_file_bytes, wait_state,
};

/// An http URL of exactly `len` characters whose path segments stay within MAX_PATH (260).
fn url_of_len(len: usize) -> String {
    let mut url = "http://example.com/".to_string();
    while url.len() < len {
        let room = len - url.len();
        if room > 201 {
            url.push_str(&"a".repeat(200));
            url.push('/');
        } else {
            url.push_str(&"a".repeat(room));
        }
    }
    assert_eq!(url.chars().count(), len);
    url
}

// Case 8: Resume of a job without files is BG_E_EMPTY and the job stays SUSPENDED.
#[tokio::test]
async fn resume_without_files_is_empty_and_stays_suspended() {
    let daemon = TestDaemon::start().await;
    assert_resume_of_an_empty_job_is_bg_e_empty(&daemon.client().await).await;
}

// Case 9: a relative local name is E_INVALIDARG.
#[tokio::test]
async fn add_file_with_a_relative_local_path_is_invalid_arg() {
    let (_daemon, client, job) = fresh_job(&[], "relative").await;
    expect_code(
        client.add_file(job, "http://example.com/x.bin", Path::new("relative/x.bin")).await,
        Code::E_INVALIDARG,
    );
    assert_eq!(client.get_progress(job).await.unwrap().files_total, 0);
}

// Case 10: an unsupported protocol (ftp) is E_INVALIDARG.
#[tokio::test]
async fn add_file_with_an_ftp_url_is_invalid_arg() {
    let (daemon, client, job) = fresh_job(&[], "ftp").await;
    let dest = daemon.out_dir().join("x");
    expect_code(client.add_file(job, "ftp://h/x", &dest).await, Code::E_INVALIDARG);
    assert_eq!(client.get_progress(job).await.unwrap().files_total, 0);
}

// Case 11: a remote URL of exactly 2,200 characters is accepted.
#[tokio::test]
async fn add_file_accepts_a_2200_character_url() {
    let (daemon, client, job) = fresh_job(&[], "long url").await;
    let url = url_of_len(2200);
    client.add_file(job, &url, &daemon.out_dir().join("x")).await.unwrap();
    assert_eq!(client.list_files(job).await.unwrap()[0].remote_url, url);
}

// Case 11: a remote URL of 2,201 characters is E_INVALIDARG.
#[tokio::test]
async fn add_file_refuses_a_2201_character_url() {
    let (daemon, client, job) = fresh_job(&[], "too long url").await;
    expect_code(
        client.add_file(job, &url_of_len(2201), &daemon.out_dir().join("x")).await,
        Code::E_INVALIDARG,
    );
    assert_eq!(client.get_progress(job).await.unwrap().files_total, 0);
}

/// AddFile of `url` to `dest` fails with `code` (`hresult`), and the job still has `files` files.
async fn add_is_refused(
    client: &Client,
    job: JobId,
    (url, dest): (&str, &Path),
    code: Code,
    hresult: u32,
    files: u32,
) {
    let err = expect_code(client.add_file(job, url, dest).await, code);
    assert_eq!(err.code.hresult(), hresult);
    assert_eq!(client.get_progress(job).await.unwrap().files_total, files);
}

// Case 12 (as root): a destination whose "directory" is a regular file cannot be written;
// bitsd reports ERROR_PATH_NOT_FOUND. (E_ACCESSDENIED for a directory without write
// permission needs a non-root caller, see the module list in the report.)
#[tokio::test]
async fn add_file_under_a_regular_file_is_path_not_found() {
    let (daemon, client, job) = fresh_job(&[], "not a dir").await;
    let file = daemon.out_dir().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let file = ("http://example.com/x", &*file.join("x.bin"));
    add_is_refused(&client, job, file, Code::ERROR_PATH_NOT_FOUND, 0x8007_0003, 0).await;
}

// Case 13 (P): a destination in a directory that does not exist is ERROR_PATH_NOT_FOUND.
#[tokio::test]
async fn add_file_into_a_missing_directory_is_path_not_found() {
    let (daemon, client, job) = fresh_job(&[], "no dir").await;
    let dest = daemon.out_dir().join("does-not-exist").join("x.bin");
    let file = ("http://example.com/x", &*dest);
    add_is_refused(&client, job, file, Code::ERROR_PATH_NOT_FOUND, 0x8007_0003, 0).await;
}

// Case 13 (P): a local path the kernel cannot take is E_INVALIDARG at AddFile (before anything
// is downloaded, not as an E_FAIL at every Complete): a name over NAME_MAX (255 bytes), a NUL, in
// AddFile and in AddFileSet. A name of exactly 255 bytes is accepted.
#[tokio::test]
async fn add_file_refuses_names_the_kernel_cannot_take() {
    let (daemon, client, job) = fresh_job(&[], "names").await;
    let out = daemon.out_dir();
    let url = "http://example.com/x";
    let err = expect_code(
        client.add_file(job, url, &out.join("n".repeat(300))).await,
        Code::E_INVALIDARG,
    );
    assert!(err.message.contains("300 bytes") && err.message.contains("NAME_MAX"), "{err}");
    expect_code(client.add_file(job, url, &out.join("a\0b")).await, Code::E_INVALIDARG);
    let (a, nul) = (out.join("a"), out.join("b\0"));
    let set: [(&str, &Path); 2] = [(url, &a), (url, &nul)];
    expect_code(client.add_file_set(job, &set).await, Code::E_INVALIDARG);
    assert_eq!(client.get_progress(job).await.unwrap().files_total, 0);
    client.add_file(job, url, &out.join("n".repeat(255))).await.unwrap();
}

/// Adds `n` files (one AddFile call each) named `f{i}` under `dir`.
async fn add_files(client: &Client, job: JobId, dir: &Path, n: usize) {
    for i in 0..n {
        let dest: PathBuf = dir.join(format!("f{i}"));
        let added = client.add_file(job, &format!("http://example.com/f{i}"), &dest).await;
        added.unwrap_or_else(|e| panic!("AddFile #{} failed: {e}", i + 1));
    }
}

// Case 14: a non-admin may add 200 files; the 201st is BG_E_TOO_MANY_FILES_IN_JOB.
#[tokio::test]
async fn non_admin_201st_file_is_too_many_files_in_job() {
    let (daemon, client, job) = fresh_job(&["--admin-uid", "4242"], "many files").await;
    assert_eq!(MAX_FILES_PER_JOB, 200);
    add_files(&client, job, &daemon.out_dir(), 200).await;
    let (dest, code) = (daemon.out_dir().join("last"), Code::BG_E_TOO_MANY_FILES_IN_JOB);
    add_is_refused(&client, job, ("http://example.com/last", &dest), code, 0x8020_0051, 200).await;
}

// Case 14: an admin is exempt from the files-per-job limit.
#[tokio::test]
async fn admin_201st_file_is_added() {
    let (daemon, client, job) = fresh_job(&[], "many files").await;
    add_files(&client, job, &daemon.out_dir(), 201).await;
    assert_eq!(client.get_progress(job).await.unwrap().files_total, 201);
}

// Case 15 (P): AddFileSet of three files whose second is invalid adds none of them.
#[tokio::test]
async fn add_file_set_with_an_invalid_second_file_adds_nothing() {
    let (daemon, client, job) = fresh_job(&[], "set").await;
    let out = daemon.out_dir();
    client.add_file(job, "http://example.com/first", &out.join("first")).await.unwrap();
    let (a, c) = (out.join("a"), out.join("c"));
    let set: [(&str, &Path); 3] = [
        ("http://example.com/a", &a),
        ("http://example.com/b", Path::new("relative/b")),
        ("http://example.com/c", &c),
    ];
    expect_code(client.add_file_set(job, &set).await, Code::E_INVALIDARG);
    assert_eq!(client.get_progress(job).await.unwrap().files_total, 1, "FilesTotal unchanged");
    assert_eq!(client.list_files(job).await.unwrap().len(), 1);
}

// Case 15 (P): the same when the second file fails the destination-directory check.
#[tokio::test]
async fn add_file_set_with_a_missing_directory_in_the_second_file_adds_nothing() {
    let (daemon, client, job) = fresh_job(&[], "set").await;
    let out = daemon.out_dir();
    let (a, b, c) = (out.join("a"), out.join("missing").join("b"), out.join("c"));
    let set: [(&str, &Path); 3] =
        [("http://example.com/a", &a), ("http://example.com/b", &b), ("http://example.com/c", &c)];
    expect_code(client.add_file_set(job, &set).await, Code::ERROR_PATH_NOT_FOUND);
    assert_eq!(client.get_progress(job).await.unwrap().files_total, 0, "FilesTotal unchanged");
}

// Case 16: AddFile after Cancel is BG_E_INVALID_STATE.
#[tokio::test]
async fn add_file_after_cancel_is_invalid_state() {
    let (daemon, client, job) = fresh_job(&[], "cancelled").await;
    client.add_file(job, "http://example.com/a", &daemon.out_dir().join("a")).await.unwrap();
    assert_eq!(client.cancel(job).await.unwrap(), Code::S_OK);
    let err = expect_code(
        client.add_file(job, "http://example.com/b", &daemon.out_dir().join("b")).await,
        Code::BG_E_INVALID_STATE,
    );
    assert_eq!(err.code.hresult(), 0x8020_0002);
}

// Case 16: AddFile after Complete is BG_E_INVALID_STATE.
#[tokio::test]
async fn add_file_after_complete_is_invalid_state() {
    let (daemon, client, job) = fresh_job(&[], "completed").await;
    client.add_file(job, "http://example.com/a", &daemon.out_dir().join("a")).await.unwrap();
    client.complete(job).await.unwrap();
    expect_code(
        client.add_file(job, "http://example.com/b", &daemon.out_dir().join("b")).await,
        Code::BG_E_INVALID_STATE,
    );
}

// Case 17: AddFile while TRANSFERRING succeeds and the new file is fetched after the files
// already in the job (FIFO, as the server's access log shows).
#[tokio::test]
async fn add_file_while_transferring_is_fetched_after_the_current_files() {
    let server = TestServer::start().await;
    let files = [
        ("a.bin", random_bytes(171, 300_000)),
        ("b.bin", random_bytes(172, 100_000)),
        ("c.bin", random_bytes(173, 50_000)),
    ];
    for (name, data) in &files {
        server.add_file(name, data.clone());
    }
    server.set_throttle(Some(400_000));
    let daemon =
        TestDaemon::start_with(&["--sync-bytes", "65536", "--sync-interval-ms", "50"]).await;
    let client = daemon.client().await;
    let job = client.create_job("fifo", Priority::Foreground).await.unwrap();
    let out = daemon.out_dir();
    for (name, _) in &files[..2] {
        client.add_file(job, &server.url(name), &out.join(name)).await.unwrap();
    }
    client.resume(job).await.unwrap();
    wait_state(&client, job, JobState::Transferring).await;
    wait_file_bytes(&client, job, 0, 1).await;
    let (name, _) = &files[2];
    assert_eq!(client.add_file(job, &server.url(name), &out.join(name)).await.unwrap(), 2);
    assert!(
        client.get_progress(job).await.unwrap().files[0].bytes_transferred < 300_000,
        "file 3 was added while file 1 was still transferring"
    );

    wait_state(&client, job, JobState::Transferred).await;
    let mut order: Vec<String> = server.log().into_iter().map(|r| r.path).collect();
    order.dedup();
    assert_eq!(order, ["/a.bin", "/b.bin", "/c.bin"], "files are fetched in insertion order");
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    for (name, data) in &files {
        assert_eq!(&std::fs::read(out.join(name)).unwrap(), data, "{name}");
    }
}
