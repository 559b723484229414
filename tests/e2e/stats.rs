//! Daemon-wide numbers (issue 14 item 8): GetStats through the client and `bitsctl stats`, and
//! the Prometheus endpoint scraped over real HTTP, each checked to move with a download and a
//! transient error; who sees which jobs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bits_core::{Code, JobState, Priority, Stats};
use bits_testkit::data::random_bytes;
use bits_testkit::faults::{Fault, FaultServer};
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::{new_job, serving};
use bits_tests::users::{bitsctl_as, ensure_user, open_daemon_dir};
use bits_tests::wait::wait_for;
use http::Method;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use bits_tests::helpers::{parse_json, wait_state_within};

use crate::free_port;

const SIZE: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(20);

/// One HTTP/1.1 request to the metrics endpoint; the status code, the headers (lowercase names)
/// and the body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_lowercase(), body.to_string())
}

/// `GET /metrics`, parsed: every sample's series (name and labels, as written) → value. Checks
/// the page's form on the way: a HELP and a TYPE line before each family.
async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, head, body) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    let mut samples = HashMap::new();
    let mut last_type = None;
    for line in body.lines() {
        if let Some(family) = line.strip_prefix("# TYPE ") {
            last_type = Some(family.split(' ').next().unwrap().to_string());
        } else if !line.starts_with('#') {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let family = last_type.as_deref().unwrap_or_else(|| panic!("{line}: no TYPE before"));
            assert!(series.starts_with(family), "{line} is not of family {family}");
            samples.insert(series.to_string(), value.parse::<f64>().unwrap());
        }
    }
    samples
}

fn transient(stats: &Stats, code: Code) -> u64 {
    stats.transient_errors.iter().find(|(c, _)| *c == code).map_or(0, |(_, n)| *n)
}

/// A download that hits one 503 moves GetStats and `/metrics` alike: bytes, jobs by state,
/// store flushes, transient errors by code. The endpoint answers nothing but GET /metrics.
#[tokio::test]
async fn get_stats_and_the_metrics_endpoint_move_with_a_download_and_a_transient_error() {
    let server = FaultServer::start().await;
    server.add_file("f.bin", random_bytes(14, SIZE));
    server.push_fault("f.bin", Some(Method::GET), Fault::Status(503));
    let metrics = free_port();
    let listen = metrics.to_string();
    let daemon =
        TestDaemon::start_with(&["--metrics-listen", &listen, "--retry-delay-secs", "1"]).await;
    let client = daemon.client().await;

    let before = client.get_stats().await.unwrap();
    let scraped = scrape(metrics).await;
    assert_eq!(before.bytes_transferred, 0);
    assert_eq!(before.jobs, vec![]);
    assert_eq!(scraped["bitsd_transferred_bytes_total"], 0.0);
    assert_eq!(scraped["bitsd_jobs{state=\"TRANSFERRED\"}"], 0.0);
    assert!(before.control_connections >= 1, "this client: {before:?}");

    let job = client.create_job("stats", Priority::Foreground).await.unwrap();
    client.add_file(job, &server.url("f.bin"), &daemon.out_dir().join("f.bin")).await.unwrap();
    client.resume(job).await.unwrap();
    wait_state_within(&client, job, JobState::Transferred, WAIT).await;

    let after = client.get_stats().await.unwrap();
    assert_eq!(after.bytes_transferred, SIZE as u64, "{after:?}");
    assert_eq!(after.jobs, vec![(JobState::Transferred, 1)]);
    assert_eq!(after.own_jobs, after.jobs, "the caller owns the one job");
    assert_eq!(transient(&after, Code::Http(503)), 1, "{after:?}");
    assert!(after.flushes.count > before.flushes.count, "{after:?}");
    assert_eq!(after.flushes.failed, 0);
    assert!(after.flushes.max > Duration::ZERO && after.flushes.max <= after.flushes.total);
    assert!(after.uptime >= before.uptime);

    let scraped = scrape(metrics).await;
    assert_eq!(scraped["bitsd_transferred_bytes_total"], SIZE as f64);
    assert_eq!(scraped["bitsd_jobs{state=\"TRANSFERRED\"}"], 1.0);
    assert_eq!(scraped["bitsd_jobs{state=\"QUEUED\"}"], 0.0);
    assert_eq!(
        scraped["bitsd_transient_errors_total{code=\"BG_E_HTTP_ERROR_503\",hresult=\"0x801901F7\"}"],
        1.0
    );
    let flushes = scraped["bitsd_store_flush_duration_seconds_count"];
    assert!(flushes >= after.flushes.count as f64, "{flushes} flushes");
    assert_eq!(scraped["bitsd_store_flush_duration_seconds_bucket{le=\"+Inf\"}"], flushes);
    assert!(scraped["bitsd_store_flush_duration_seconds_sum"] > 0.0);
    assert!(scraped["bitsd_control_connections"] >= 1.0);
    // Counts only: nothing names the job, the URL, the file or a uid.
    let (_, _, page) = http(metrics, "GET", "/metrics").await;
    for secret in [job.to_string(), server.url("f.bin"), "f.bin".into(), "stats".into()] {
        assert!(!page.contains(&secret), "the page shows {secret}");
    }

    let (status, _, _) = http(metrics, "GET", "/").await;
    assert_eq!(status, 404);
    let (status, _, _) = http(metrics, "GET", "/metrics/x").await;
    assert_eq!(status, 404);
    let (status, head, _) = http(metrics, "POST", "/metrics").await;
    assert_eq!(status, 405);
    assert!(head.contains("allow: get, head"), "{head}");
    let (status, _, body) = http(metrics, "HEAD", "/metrics").await;
    assert_eq!((status, body.as_str()), (200, ""));
    // A connection that never sends its request does not keep the endpoint from serving others.
    let _silent = tokio::net::TcpStream::connect(metrics).await.unwrap();
    assert_eq!(scrape(metrics).await["bitsd_jobs{state=\"TRANSFERRED\"}"], 1.0);
}

/// `bitsctl stats` against the real daemon: text and JSON, the connections of a transfer in
/// flight, and who sees what (a non-admin sees every job's count by state, and its own).
#[tokio::test]
async fn bitsctl_stats_shows_everyones_counts_and_the_callers_own() {
    bits_tests::require_root("switching users");
    let server = serving("slow.bin", random_bytes(15, SIZE)).await;
    server.set_throttle(Some(64 * 1024));
    let daemon = TestDaemon::start().await;
    open_daemon_dir(&daemon);
    let client = daemon.client().await;
    let files = [(server.url("slow.bin"), daemon.out_dir().join("slow.bin"))];
    let job = new_job(&client, "root's", Priority::Foreground, &files).await;
    client.resume(job).await.unwrap();
    wait_for("a byte of the slow download", WAIT, || async {
        let stats = client.get_stats().await.unwrap();
        if stats.bytes_transferred > 0 { Ok(()) } else { Err(format!("{stats:?}")) }
    })
    .await;

    let out = daemon.bitsctl(&["stats"]).await.success();
    let text = &out.stdout;
    assert!(text.contains("jobs, all users:   1: TRANSFERRING 1\n"), "{text}");
    assert!(text.contains("jobs, yours:       1: TRANSFERRING 1\n"), "{text}");
    assert!(text.contains(" to HTTP servers (transfers)\n"), "{text}");
    assert!(text.contains("transient errors:  none\n"), "{text}");
    assert!(text.lines().next().unwrap().starts_with("uptime:"), "{text}");

    let out = daemon.bitsctl(&["--json", "stats"]).await.success();
    let json = parse_json(&out.stdout);
    assert_eq!(json["jobs"]["TRANSFERRING"], 1, "{json}");
    assert_eq!(json["own_jobs"]["TRANSFERRING"], 1, "{json}");
    assert!(json["bytes_transferred"].as_u64().unwrap() > 0, "{json}");
    assert!(json["store_flushes"]["count"].as_u64().unwrap() > 0, "{json}");
    assert!(json["control_connections"].as_u64().unwrap() >= 2, "the test's and bitsctl's");
    assert!(json["http_connections"].as_u64().unwrap() >= 1, "the slow GET: {json}");

    // Removed again when the test ends (the lease in `users.rs`).
    let user = ensure_user("bitsd-e2e-stats");
    let out = bitsctl_as(&daemon, &user, &["--json", "stats"]).await.success();
    let json = parse_json(&out.stdout);
    assert_eq!(json["jobs"]["TRANSFERRING"], 1, "everyone's count: {json}");
    assert_eq!(json["own_jobs"], serde_json::json!({}), "not root's job: {json}");
    bitsctl_as(&daemon, &user, &["create", "--name", "mine"]).await.success();
    let out = bitsctl_as(&daemon, &user, &["--json", "stats"]).await.success();
    let json = parse_json(&out.stdout);
    assert_eq!(json["own_jobs"]["SUSPENDED"], 1, "{json}");
    assert_eq!(json["jobs"]["SUSPENDED"], 1, "{json}");
    assert!(!out.stdout.contains("mine") && !out.stdout.contains(&job.to_string()));
    client.cancel(job).await.unwrap();
}
