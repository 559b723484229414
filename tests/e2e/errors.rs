//! Failures reach the caller with their BITS code: through gRPC as the `BitsError` of the client,
//! through `bitsctl` as one readable line and a non-zero exit; and `bitsctl --json` speaks BITS
//! names (states, codes) with `null` for an unknown size.

use bits_core::{Code, ErrorContext, JobId, JobState, Priority};
use bits_testkit::data::random_bytes;
use bits_testkit::server::TestServer;
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::{fresh_job, new_job, serving};

use bits_tests::helpers::{
    assert_resume_of_an_empty_job_is_bg_e_empty, expect_code, job_id_in, json_values, parse_json,
    range, wait_state,
};

/// `bitsctl ARGS` fails: non-zero exit, and exactly one non-empty line on stderr naming `code`.
async fn assert_one_line_error(daemon: &TestDaemon, args: &[&str], code: &str) {
    let out = daemon.bitsctl(args).await;
    assert!(!out.status.success(), "bitsctl should have failed: {out}");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line: {out}");
    assert!(lines[0].contains(code), "the error line does not name {code}: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_of_an_empty_job_is_bg_e_empty() {
    let daemon = TestDaemon::start().await;
    assert_resume_of_an_empty_job_is_bg_e_empty(&daemon.client().await).await;

    let created = daemon.bitsctl(&["create", "--name", "empty-cli"]).await.success();
    let job = job_id_in(&created.stdout);
    assert_one_line_error(&daemon, &["resume", &job.to_string()], "BG_E_EMPTY").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_ranges_are_bg_e_overlapping_ranges() {
    let (daemon, client, job) = fresh_job(&[], "overlap").await;
    let dest = daemon.out_dir().join("o.bin");
    let err = expect_code(
        client
            .add_file_with_ranges(
                job,
                "http://127.0.0.1:9/o.bin",
                &dest,
                &[range(0, 100), range(50, 10)],
            )
            .await,
        Code::BG_E_OVERLAPPING_RANGES,
    );
    assert!(
        err.message.contains("0:100") || err.message.contains("50:10"),
        "the error does not name the offending range: {err}"
    );
    assert!(client.list_files(job).await.unwrap().is_empty(), "a rejected file was added");

    let (id, dest) = (job.to_string(), dest.to_str().unwrap());
    let add =
        ["add", &id, "http://127.0.0.1:9/o.bin", dest, "--range", "100:5", "--range", "100:0"];
    assert_one_line_error(&daemon, &add, "BG_E_OVERLAPPING_RANGES").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_job_is_bg_e_not_found() {
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let unknown = JobId::new_random();
    expect_code(client.get_job(unknown).await, Code::BG_E_NOT_FOUND);
    expect_code(client.resume(unknown).await, Code::BG_E_NOT_FOUND);
    assert_one_line_error(&daemon, &["info", &unknown.to_string()], "BG_E_NOT_FOUND").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_cancel_is_bg_e_invalid_state() {
    let (daemon, client, job) = fresh_job(&[], "cancelled").await;
    let dest = daemon.out_dir().join("c.bin");
    client.add_file(job, "http://127.0.0.1:9/c.bin", &dest).await.unwrap();
    assert_eq!(client.cancel(job).await.unwrap(), Code::S_OK);
    expect_code(client.resume(job).await, Code::BG_E_INVALID_STATE);
    expect_code(
        client.add_file(job, "http://127.0.0.1:9/d.bin", &daemon.out_dir().join("d.bin")).await,
        Code::BG_E_INVALID_STATE,
    );
    assert!(!dest.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_404_puts_the_job_in_error_with_bg_e_http_error_404() {
    let server = TestServer::start().await;
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let files = [(server.url("missing.bin"), daemon.out_dir().join("m.bin"))];
    let job = new_job(&client, "missing", Priority::Normal, &files).await;
    client.resume(job).await.unwrap();
    let info = wait_state(&client, job, JobState::Error).await;
    assert_eq!(info.error.as_ref().map(|e| e.code), Some(Code::Http(404)));

    let err = client.get_error(job).await.unwrap();
    assert_eq!(err.code, Code::Http(404));
    assert_eq!(err.code.hresult(), 0x8019_0194);
    assert_eq!(err.context, ErrorContext::RemoteFile);
    assert_eq!(err.file_index, Some(0));
    assert!(server.log().iter().all(|r| r.status == 404), "{:?}", server.log());

    let out = daemon.bitsctl(&["--json", "info", &job.to_string()]).await.success();
    let json = parse_json(&out.stdout);
    assert!(
        json_values(&json, "state").iter().any(|v| v.as_str() == Some("ERROR")),
        "no \"state\": \"ERROR\" in {json}"
    );
    assert!(
        json_values(&json, "code").iter().any(|v| v.as_str() == Some("BG_E_HTTP_ERROR_404")),
        "no \"code\": \"BG_E_HTTP_ERROR_404\" in {json}"
    );
    assert!(
        json_values(&json, "hresult").iter().any(|v| {
            v.as_u64() == Some(0x8019_0194)
                || v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("0x80190194"))
        }),
        "no HRESULT 0x80190194 in {json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_uses_bits_state_names_and_null_for_an_unknown_size() {
    let server = serving("n.bin", random_bytes(30, 1000)).await;
    let daemon = TestDaemon::start().await;
    let created = daemon.bitsctl(&["create", "--name", "json"]).await.success();
    let job = job_id_in(&created.stdout).to_string();
    let dest = daemon.out_dir().join("n.bin");
    daemon.bitsctl(&["add", &job, &server.url("n.bin"), dest.to_str().unwrap()]).await.success();

    let list = parse_json(&daemon.bitsctl(&["--json", "list"]).await.success().stdout);
    assert!(
        json_values(&list, "id").iter().any(|v| v.as_str() == Some(job.as_str())),
        "job {job} missing from {list}"
    );
    let info = parse_json(&daemon.bitsctl(&["--json", "info", &job]).await.success().stdout);
    for json in [&list, &info] {
        let states = json_values(json, "state");
        assert!(!states.is_empty(), "no state in {json}");
        assert!(states.iter().all(|v| v.as_str() == Some("SUSPENDED")), "not BITS names: {json}");
        let totals = json_values(json, "bytes_total");
        assert!(!totals.is_empty(), "no bytes_total in {json}");
        assert!(totals.iter().all(|v| v.is_null()), "an unknown size must be null: {json}");
    }
    let sizes = json_values(&info, "remote_size");
    assert!(!sizes.is_empty() && sizes.iter().all(|v| v.is_null()), "remote_size not null: {info}");

    // Once the size is known the same fields carry it.
    let client = daemon.client().await;
    let id = JobId::parse(&job).unwrap();
    client.resume(id).await.unwrap();
    wait_state(&client, id, JobState::Transferred).await;
    let info = parse_json(&daemon.bitsctl(&["--json", "info", &job]).await.success().stdout);
    assert!(json_values(&info, "state").iter().any(|v| v.as_str() == Some("TRANSFERRED")));
    assert!(
        json_values(&info, "bytes_total").iter().all(|v| v.as_u64() == Some(1000)),
        "bytes_total should be 1000 now: {info}"
    );
}
