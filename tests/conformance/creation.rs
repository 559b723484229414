//! Conformance cases 1–7 (spec §10 "Creation / limits", §3.A, §8): CreateJob argument checks,
//! the defaults of a new job, the per-user and per-machine job limits with the admin exemption,
//! GetJob of an unknown job, and EnumJobs leaving out final jobs.
//!
//! The test client runs as root, which is an admin by default; `--admin-uid 4242` makes the
//! daemon treat it as an ordinary user for the limit cases.

use bits_client::Client;
use bits_core::job::{MAX_JOBS_PER_MACHINE, MAX_JOBS_PER_USER};
use bits_core::{Code, JobId, JobState, Priority};
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::new_job;
use bits_tests::fixture::{fresh_job, serving};

use bits_tests::helpers::{expect_code, is_listed, wait_state};

/// Daemon arguments that make the (root) test client a non-admin.
const NON_ADMIN: [&str; 2] = ["--admin-uid", "4242"];

// Case 1: a display name of exactly 256 characters is accepted.
#[tokio::test]
async fn create_job_accepts_a_256_character_display_name() {
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let name = "n".repeat(256);
    let job = client.create_job(&name, Priority::Normal).await.unwrap();
    assert_eq!(client.get_job(job).await.unwrap().display_name, name);
}

// Case 1: a display name of 257 characters is E_INVALIDARG.
#[tokio::test]
async fn create_job_refuses_a_257_character_display_name() {
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    expect_code(client.create_job(&"n".repeat(257), Priority::Normal).await, Code::E_INVALIDARG);
    assert!(client.list_jobs().await.unwrap().is_empty(), "no job was created");
}

// Case 1 (P): an absent display name (proto3 sends NULL as "") is E_INVALIDARG.
#[tokio::test]
async fn create_job_refuses_an_absent_display_name() {
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    expect_code(client.create_job("", Priority::Normal).await, Code::E_INVALIDARG);
    assert!(client.list_jobs().await.unwrap().is_empty(), "no job was created");
}

// Case 2: a new job is SUSPENDED with the BITS defaults, no errors and empty progress.
#[tokio::test]
async fn new_job_starts_suspended_with_bits_defaults() {
    let (_daemon, client, job) = fresh_job(&[], "defaults").await;
    let info = client.get_job(job).await.unwrap();
    assert_eq!(info.state, JobState::Suspended);
    assert_eq!(info.priority, Priority::Normal);
    assert_eq!(info.minimum_retry_delay_secs, 600);
    assert_eq!(info.no_progress_timeout_secs, 1_209_600);
    assert_eq!(info.maximum_download_time_secs, 7_776_000);
    assert_eq!(info.error_count, 0);
    assert_eq!(info.error, None);
    expect_code(client.get_error(job).await, Code::BG_E_ERROR_INFORMATION_UNAVAILABLE);
    let progress = client.get_progress(job).await.unwrap();
    assert_eq!(progress.bytes_total, Some(0), "BytesTotal of a job without files is 0 (P)");
    assert_eq!(progress.bytes_transferred, 0);
    assert_eq!(progress.files_total, 0);
    assert_eq!(progress.files_transferred, 0);
}

/// Creates `n` jobs, asserting each succeeds.
async fn create_jobs(client: &Client, n: usize) -> Vec<JobId> {
    let mut jobs = Vec::with_capacity(n);
    for i in 0..n {
        let job = client.create_job(&format!("job {i}"), Priority::Normal).await;
        jobs.push(job.unwrap_or_else(|e| panic!("CreateJob #{} failed: {e}", i + 1)));
    }
    jobs
}

/// Creates `limit` jobs, then one more, which must fail with `code` (`hresult`).
async fn next_job_is_over_the_limit(client: &Client, limit: usize, code: Code, hresult: u32) {
    create_jobs(client, limit).await;
    let err = expect_code(client.create_job("one too many", Priority::Normal).await, code);
    assert_eq!(err.code.hresult(), hresult);
}

// Case 3: a non-admin may create 60 jobs; the 61st is BG_E_TOO_MANY_JOBS_PER_USER.
#[tokio::test]
async fn non_admin_61st_job_is_too_many_jobs_per_user() {
    let daemon = TestDaemon::start_with(&NON_ADMIN).await;
    let client = daemon.client().await;
    assert_eq!(MAX_JOBS_PER_USER, 60);
    next_job_is_over_the_limit(&client, 60, Code::BG_E_TOO_MANY_JOBS_PER_USER, 0x8020_0049).await;
    assert_eq!(client.list_jobs().await.unwrap().len(), 60);
}

// Case 3: an admin is exempt from the per-user limit: its 61st job is created.
#[tokio::test]
async fn admin_61st_job_is_created() {
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    create_jobs(&client, 61).await;
    assert_eq!(client.list_jobs().await.unwrap().len(), 61);
}

// Case 4 (P on counting): with 300 non-final jobs in the queue a non-admin CreateJob is
// BG_E_TOO_MANY_JOBS_PER_MACHINE (the per-user limit is raised so that it does not hit first).
#[tokio::test]
async fn non_admin_create_job_with_300_queued_is_too_many_jobs_per_machine() {
    let daemon =
        TestDaemon::start_with(&["--admin-uid", "4242", "--max-jobs-per-user", "1000"]).await;
    let client = daemon.client().await;
    assert_eq!(MAX_JOBS_PER_MACHINE, 300);
    let code = Code::BG_E_TOO_MANY_JOBS_PER_MACHINE;
    next_job_is_over_the_limit(&client, 300, code, 0x8020_0050).await;
}

// Case 4: an admin is exempt from the per-machine limit.
#[tokio::test]
async fn admin_create_job_beyond_the_machine_limit_is_created() {
    let daemon =
        TestDaemon::start_with(&["--max-jobs-per-user", "3", "--max-jobs-per-machine", "5"]).await;
    let client = daemon.client().await;
    create_jobs(&client, 6).await;
    assert_eq!(client.list_jobs().await.unwrap().len(), 6);
}

// Case 5: cancelling one of a non-admin's 60 jobs lets the next CreateJob succeed.
#[tokio::test]
async fn cancelled_job_no_longer_counts_toward_the_user_limit() {
    let daemon = TestDaemon::start_with(&NON_ADMIN).await;
    let client = daemon.client().await;
    let jobs = create_jobs(&client, 60).await;
    expect_code(
        client.create_job("full", Priority::Normal).await,
        Code::BG_E_TOO_MANY_JOBS_PER_USER,
    );
    assert_eq!(client.cancel(jobs[17]).await.unwrap(), Code::S_OK);
    client.create_job("after cancel", Priority::Normal).await.unwrap();
}

// Case 5: a completed (acknowledged) job no longer counts either.
#[tokio::test]
async fn completed_job_no_longer_counts_toward_the_user_limit() {
    let daemon = TestDaemon::start_with(&["--admin-uid", "4242", "--max-jobs-per-user", "3"]).await;
    let client = daemon.client().await;
    let jobs = create_jobs(&client, 3).await;
    expect_code(
        client.create_job("full", Priority::Normal).await,
        Code::BG_E_TOO_MANY_JOBS_PER_USER,
    );
    client.complete(jobs[0]).await.unwrap();
    client.create_job("after complete", Priority::Normal).await.unwrap();
}

// Case 6: GetJob of a random GUID is BG_E_NOT_FOUND.
#[tokio::test]
async fn get_job_of_an_unknown_id_is_not_found() {
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    client.create_job("some other job", Priority::Normal).await.unwrap();
    let err = expect_code(client.get_job(JobId::new_random()).await, Code::BG_E_NOT_FOUND);
    assert_eq!(err.code.hresult(), 0x8020_0001);
}

// Case 7: EnumJobs lists the caller's jobs and never ACKNOWLEDGED or CANCELLED ones.
#[tokio::test]
async fn enum_jobs_lists_own_jobs_but_never_final_ones() {
    let server = serving("f.bin", vec![7u8; 1000]).await;
    let (daemon, client, kept) = fresh_job(&[], "kept").await;
    let cancelled = client.create_job("cancelled", Priority::Normal).await.unwrap();
    let files = [(server.url("f.bin"), daemon.out_dir().join("f.bin"))];
    let acknowledged = new_job(&client, "acknowledged", Priority::Foreground, &files).await;
    client.resume(acknowledged).await.unwrap();
    wait_state(&client, acknowledged, JobState::Transferred).await;
    let listed: Vec<JobId> = client.list_jobs().await.unwrap().iter().map(|j| j.id).collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    for job in [kept, cancelled, acknowledged] {
        assert!(listed.contains(&job), "{job} missing from {listed:?}");
    }

    client.cancel(cancelled).await.unwrap();
    assert_eq!(client.complete(acknowledged).await.unwrap(), Code::S_OK);
    assert!(!is_listed(&client, cancelled).await, "a CANCELLED job is never listed");
    assert!(!is_listed(&client, acknowledged).await, "an ACKNOWLEDGED job is never listed");
    let listed: Vec<JobId> = client.list_jobs().await.unwrap().iter().map(|j| j.id).collect();
    assert_eq!(listed, vec![kept]);
}
