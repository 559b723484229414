//! Complete and Cancel against real transfers: only whole files are kept, a vanished temp file
//! is fetched again instead of wedging the job, and Cancel removes every temp file.

use bits_core::{Code, JobState, Priority};
use bits_testkit::data::random_bytes;
use bits_testkit::server::TestServer;
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::{Download, foreground, new_job, throttled};

use crate::progress::FAST_SYNC;
use bits_tests::helpers::{expect_code, wait_filled, wait_state};

#[tokio::test]
async fn complete_keeps_whole_files_and_reports_partial_completion() {
    let server = TestServer::start().await;
    let good = random_bytes(21, 300_000);
    server.add_file("good.bin", good.clone());
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let good_dest = daemon.out_dir().join("good.bin");
    let missing_dest = daemon.out_dir().join("missing.bin");
    let files = [(server.url("good.bin"), &good_dest), (server.url("missing.bin"), &missing_dest)];
    let job = new_job(&client, "partial", Priority::Foreground, &files).await;
    client.resume(job).await.unwrap();
    let info = wait_state(&client, job, JobState::Error).await;
    let error = info.error.expect("an ERROR job has an error object");
    assert_eq!((error.code, error.file_index), (Code::Http(404), Some(1)));
    let files = client.list_files(job).await.unwrap();
    assert_eq!(files[0].progress.bytes_transferred, good.len() as u64);

    assert_eq!(client.complete(job).await.unwrap(), Code::BG_S_PARTIAL_COMPLETE);
    assert_eq!(std::fs::read(&good_dest).unwrap(), good);
    assert!(!missing_dest.exists());
    for file in &files {
        assert!(!file.temp_path.exists(), "temp file {} left behind", file.temp_path.display());
    }
    assert!(client.list_jobs().await.unwrap().is_empty(), "a completed job leaves the list");
    expect_code(client.complete(job).await, Code::BG_E_INVALID_STATE);
}

#[tokio::test]
async fn complete_after_the_temp_file_vanished_refetches_instead_of_wedging() {
    let data = random_bytes(22, 200_000);
    let of = foreground("vanished", "v.bin");
    let d = Download::transferred(TestServer::start().await, data, &[], of).await;
    let (server, client, job, dest, data) = (&d.server, &d.client, d.job, &d.dest, &d.data);
    let temp = client.list_files(job).await.unwrap()[0].temp_path.clone();
    std::fs::remove_file(&temp).unwrap();

    let err = expect_code(client.complete(job).await, Code::ERROR_PATH_NOT_FOUND);
    assert!(err.message.contains(&temp.display().to_string()), "{err}");
    assert!(!dest.exists());
    let info = client.get_job(job).await.unwrap();
    assert_eq!(info.state, JobState::Transferred, "a failed Complete leaves the job in the queue");
    assert_eq!(info.progress.bytes_transferred, 0, "the lost bytes no longer count as transferred");

    let served_before = server.bytes_served();
    client.resume(job).await.unwrap();
    wait_state(client, job, JobState::Transferred).await;
    assert_eq!(
        server.bytes_served() - served_before,
        data.len() as u64,
        "the file is fetched once more"
    );
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    assert_eq!(&std::fs::read(dest).unwrap(), data);
}

#[tokio::test]
async fn cancel_mid_transfer_deletes_the_temp_file() {
    let data = random_bytes(23, 4 << 20);
    let of = foreground("cancel", "c.bin");
    let d = Download::started(throttled(1 << 20).await, data, &FAST_SYNC, of).await;
    let (client, job, dest) = (&d.client, d.job, &d.dest);
    wait_state(client, job, JobState::Transferring).await;
    let temp = client.list_files(job).await.unwrap()[0].temp_path.clone();
    bits_tests::wait::wait_for("the temp file to exist", bits_tests::wait::TIMEOUT, || async {
        if temp.exists() { Ok(()) } else { Err("missing".to_string()) }
    })
    .await;
    assert_eq!(client.cancel(job).await.unwrap(), Code::S_OK);
    assert!(!temp.exists(), "Cancel deletes the temp file");
    assert!(!dest.exists());
    expect_code(client.resume(job).await, Code::BG_E_INVALID_STATE);
}

/// Issue 13.9: a temp file truncated while the download runs (the download then writes past the
/// cut again) must not become a "complete" file with a run of zeros: the worker sees the file
/// shrink and fetches what was lost, and Complete never moves a short file into place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temp_file_truncated_mid_download_is_fetched_again_not_completed_with_zeros() {
    let data = random_bytes(24, 3 << 20);
    let of = foreground("truncated", "t.bin");
    let d = Download::started(throttled(2 << 20).await, data, &FAST_SYNC, of).await;
    let (client, job, dest, data) = (&d.client, d.job, &d.dest, &d.data);
    let temp = client.list_files(job).await.unwrap()[0].temp_path.clone();
    wait_filled(client, job, 0, 1 << 20).await;
    std::fs::OpenOptions::new().write(true).open(&temp).unwrap().set_len(100_000).unwrap();
    wait_state(client, job, JobState::Transferred).await;
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    let got = std::fs::read(dest).unwrap();
    assert_eq!(got.len(), data.len());
    let first_bad = got.iter().zip(data).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "the completed file differs from the server's");
    assert!(d.daemon.log_tail(400).contains("truncated under the download"), "the loss is logged");
}
