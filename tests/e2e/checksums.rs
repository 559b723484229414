//! Expected SHA-256 digests (a bitsd extension): a file given one reaches TRANSFERRED only once
//! its bytes on disk hash to it; a mismatch is ERROR / REMOTE_FILE / BITSD_E_CHECKSUM_MISMATCH,
//! leaves the destination alone, and Resume fetches the file again from zero.

use bits_client::NewFile;
use bits_core::{Code, ErrorContext, JobState, Priority};
use bits_testkit::data::{random_bytes, sha256_hex};
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::{new_version, serving};

use bits_tests::helpers::{expect_code, wait_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_digest_completes_a_wrong_one_fails_until_the_file_is_fetched_again() {
    let wrong = random_bytes(70, 3 << 20);
    let right = random_bytes(71, 3 << 20);
    let server = serving("f.bin", wrong.clone()).await;
    server.add_file("ok.bin", right.clone());
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let expected = sha256_hex(&right);

    // The right digest, given in capitals: completes, and both digests show (lowercase).
    let good = daemon.out_dir().join("ok.bin");
    let job = client.create_job("checked", Priority::Foreground).await.unwrap();
    let upper = expected.to_uppercase();
    let files = [NewFile { url: &server.url("ok.bin"), local_path: &good, sha256: Some(&upper) }];
    client.add_files(job, &files).await.unwrap();
    client.resume(job).await.unwrap();
    wait_state(&client, job, JobState::Transferred).await;
    let info = &client.list_files(job).await.unwrap()[0];
    assert_eq!(info.expected_sha256.as_deref(), Some(expected.as_str()));
    assert_eq!(info.actual_sha256.as_deref(), Some(expected.as_str()));
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    assert_eq!(sha256_hex(&std::fs::read(&good).unwrap()), expected);

    // The server sends other bytes: ERROR, naming both digests; nothing at the destination.
    let dest = daemon.out_dir().join("f.bin");
    let job = client.create_job("mismatch", Priority::Foreground).await.unwrap();
    client.add_file_checked(job, &server.url("f.bin"), &dest, &[], Some(&expected)).await.unwrap();
    client.resume(job).await.unwrap();
    let info = wait_state(&client, job, JobState::Error).await;
    let error = info.error.expect("a job in ERROR has an error");
    assert_eq!(error.context, ErrorContext::RemoteFile, "{error:?}");
    assert_eq!(error.code, Code::BITSD_E_CHECKSUM_MISMATCH, "{error:?}");
    assert_eq!(error.code.hresult(), 0xA020_0001);
    assert_eq!(error.file_index, Some(0));
    let got = sha256_hex(&wrong);
    assert!(error.description.contains(&got), "{}", error.description);
    assert!(error.description.contains(&expected), "{}", error.description);
    let file = &client.list_files(job).await.unwrap()[0];
    assert_eq!(file.actual_sha256.as_deref(), Some(got.as_str()));
    assert_eq!(file.expected_sha256.as_deref(), Some(expected.as_str()));
    assert_eq!(file.progress.bytes_transferred, 0, "the wrong bytes still count: {file:?}");
    assert!(client.get_filled_file_ranges(job, 0).await.unwrap().is_empty());
    assert!(!dest.exists(), "a file that failed its digest reached the destination");
    // The temp file is kept, emptied: the wrong bytes are gone and the next attempt reuses it.
    let temp = std::fs::metadata(&file.temp_path).expect("the temp file is kept");
    assert_eq!(temp.len(), 0, "the wrong bytes are still in the temp file");

    // The server now has the right file: Resume fetches it from byte 0 and completes.
    server.put_file("f.bin", new_version(&right, "\"fixed\""));
    let mark = server.log_len();
    client.resume(job).await.unwrap();
    wait_state(&client, job, JobState::Transferred).await;
    let again = server.log_since(mark);
    let served: u64 = again.iter().map(|r| r.served).sum();
    assert!(served >= right.len() as u64, "only {served} bytes were fetched again: {again:#?}");
    assert!(
        again.iter().any(|r| r.method == "GET" && r.start == 0),
        "the file was not fetched from byte 0: {again:#?}"
    );
    let file = &client.list_files(job).await.unwrap()[0];
    assert_eq!(file.actual_sha256.as_deref(), Some(expected.as_str()));
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    assert_eq!(sha256_hex(&std::fs::read(&dest).unwrap()), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_survives_a_restart_and_still_guards_the_file() {
    let data = random_bytes(72, 1 << 20);
    let server = serving("f.bin", data.clone()).await;
    let mut daemon = TestDaemon::start().await;
    let dest = daemon.out_dir().join("f.bin");
    let wrong = "0".repeat(64);
    let job = {
        let client = daemon.client().await;
        let job = client.create_job("restart", Priority::Foreground).await.unwrap();
        client.add_file_checked(job, &server.url("f.bin"), &dest, &[], Some(&wrong)).await.unwrap();
        job
    };
    daemon.restart().await;
    let client = daemon.client().await;
    let file = &client.list_files(job).await.unwrap()[0];
    assert_eq!(file.expected_sha256.as_deref(), Some(wrong.as_str()));
    assert_eq!(file.actual_sha256, None);
    client.resume(job).await.unwrap();
    let info = wait_state(&client, job, JobState::Error).await;
    assert_eq!(info.error.map(|e| e.code), Some(Code::BITSD_E_CHECKSUM_MISMATCH));

    // What was computed is stored too.
    daemon.restart().await;
    let client = daemon.client().await;
    let file = &client.list_files(job).await.unwrap()[0];
    assert_eq!(file.actual_sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    assert_eq!(client.get_job(job).await.unwrap().state, JobState::Error);
    // Complete of a job whose only file failed its digest moves nothing.
    assert_eq!(client.complete(job).await.unwrap(), Code::BG_S_PARTIAL_COMPLETE);
    assert!(!dest.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_that_is_not_64_hex_digits_is_refused() {
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let dest = daemon.out_dir().join("f.bin");
    let job = client.create_job("bad", Priority::Normal).await.unwrap();
    let url = "http://127.0.0.1:9/f.bin";
    let long = "ab".repeat(300);
    for bad in ["xyz", &"a".repeat(63), &"g".repeat(64), &long, ""] {
        let e = expect_code(
            client.add_file_checked(job, url, &dest, &[], Some(bad)).await,
            Code::E_INVALIDARG,
        );
        let shown: String = bad.chars().take(64).collect();
        assert!(e.message.contains(&format!("{shown:?}")) || bad.len() > 64, "{e}");
        assert!(e.message.contains(&shown), "the value is not named: {e}");
        assert!(e.message.len() < 200, "the whole value is echoed: {e}");
    }
    // AddFileWithRanges and AddFileSet check it too; a bad element adds nothing.
    let ranges = [bits_core::ByteRange::new(0, 10)];
    expect_code(
        client.add_file_checked(job, url, &dest, &ranges, Some("nothex")).await,
        Code::E_INVALIDARG,
    );
    let other = daemon.out_dir().join("g.bin");
    let ok = "c".repeat(64);
    let files = [
        NewFile { url, local_path: &other, sha256: Some(&ok) },
        NewFile { url, local_path: &dest, sha256: Some("nothex") },
    ];
    expect_code(client.add_files(job, &files).await, Code::E_INVALIDARG);
    assert!(client.list_files(job).await.unwrap().is_empty(), "a refused set added files");
}
