//! The file-consistency rule: when the remote file changes between requests (new ETag and
//! Last-Modified), bytes fetched from the old version are discarded and the file restarts from
//! zero, so the result is never a mix of two versions.

use std::time::{Duration, SystemTime};

use bits_core::{Code, JobState, Priority};
use bits_testkit::data::{random_bytes, sha256_hex};
use bits_testkit::server::{ServedFile, TestServer};
use bits_tests::daemon::TestDaemon;
use bits_tests::wait::{TIMEOUT, wait_for};

use crate::progress::FAST_SYNC;
use bits_tests::helpers::{total, wait_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_remote_file_restarts_from_zero() {
    let size = 8 << 20;
    let old = random_bytes(40, size);
    let new = random_bytes(41, size); // same size: only the validators tell the versions apart
    let server = TestServer::start().await;
    server.add_file("v.bin", old);
    server.set_throttle(Some(2 << 20));
    let daemon = TestDaemon::start_with(&FAST_SYNC).await;
    let client = daemon.client().await;
    let dest = daemon.out_dir().join("v.bin");
    let job = client.create_job("changes", Priority::Foreground).await.unwrap();
    client.add_file(job, &server.url("v.bin"), &dest).await.unwrap();
    client.resume(job).await.unwrap();
    wait_for("1 MiB of the old version filled", TIMEOUT, || async {
        let filled = client.get_filled_file_ranges(job, 0).await.map_err(|e| e.to_string())?;
        if total(&filled) >= 1 << 20 { Ok(()) } else { Err(format!("{filled:?}")) }
    })
    .await;
    client.suspend(job).await.unwrap();
    wait_state(&client, job, JobState::Suspended).await;
    let old_etag = client.list_files(job).await.unwrap()[0].etag.clone();
    assert!(old_etag.is_some(), "the ETag was not recorded");

    server.put_file(
        "v.bin",
        ServedFile {
            data: new.clone().into(),
            etag: "\"version-2\"".to_string(),
            last_modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        },
    );
    server.set_throttle(None);
    let mark = server.log_len();
    client.resume(job).await.unwrap();
    wait_state(&client, job, JobState::Transferred).await;
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    assert!(
        sha256_hex(&std::fs::read(&dest).unwrap()) == sha256_hex(&new),
        "the result is not the new version (a mix of versions?); requests after the change: {:#?}",
        server.log_since(mark)
    );
}
