//! The optional Prometheus endpoint (`[metrics] listen`, `--metrics-listen`; off by default):
//! `GET /metrics` on a loopback address, in the Prometheus text exposition format.
//!
//! It has no bearer token: a scraper is configured with an address, and the numbers are what
//! GetStats shows any local user. So it serves counts only — jobs by state, bytes, connections,
//! errors by code, store flushes — never a job id or name, a URL, a path or a uid. Any local
//! process can reach it, so it is bounded like the control socket: loopback only, a few
//! connections at once (more are closed at once), a deadline for the request's head and for the
//! whole connection, one request per connection, and nothing but `GET`/`HEAD /metrics`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use bits_core::{JobState, Stats};
use bits_manager::Manager;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::quota::Quota;

/// What one local process may hold of the endpoint.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    /// Scrapes served at once; a scraper needs one.
    connections: usize,
    /// A connection must have sent its request's head within this long…
    head: Duration,
    /// …and be done within this long.
    connection: Duration,
}

const BOUNDS: Bounds =
    Bounds { connections: 8, head: Duration::from_secs(5), connection: Duration::from_secs(10) };

/// Where the numbers come from: the manager, and the server's connection and stream counts.
#[derive(Clone)]
pub struct Source {
    pub manager: Manager,
    pub watches: Quota,
    pub connections: Quota,
}

impl Source {
    fn stats(&self) -> Stats {
        // No caller: nobody's own jobs are counted (the endpoint does not show them anyway).
        crate::grpc::BitsService::stats(&self.manager, u32::MAX, &self.watches, &self.connections)
    }
}

/// Binds `addr`, which must be loopback (checked again here, whatever the configuration said).
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    ensure!(
        addr.ip().is_loopback(),
        "refusing to serve metrics on {addr}: the metrics endpoint binds loopback addresses only"
    );
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    listener.set_nonblocking(true).with_context(|| format!("cannot serve metrics on {addr}"))?;
    Ok(listener)
}

/// Serves `/metrics` until `shutdown` resolves.
pub async fn serve(
    listener: std::net::TcpListener,
    source: Source,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_within(listener, source, shutdown, BOUNDS).await
}

async fn serve_within(
    listener: std::net::TcpListener,
    source: Source,
    shutdown: impl Future<Output = ()>,
    bounds: Bounds,
) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::from_std(listener).context("cannot use the metrics listener")?;
    let slots = Arc::new(Semaphore::new(bounds.connections));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of fds, usually: wait for some to be given back.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over the cap the connection is closed at once, unanswered.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else { continue };
        let source = source.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = respond(&source, request.method(), request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.head)
                .keep_alive(false)
                .max_buf_size(8192)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(bounds.connection, connection).await;
        });
    }
}

fn respond(source: &Source, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let (status, body) = if path != "/metrics" {
        (StatusCode::NOT_FOUND, "not found: the metrics are at /metrics\n".to_string())
    } else if method != Method::GET && method != Method::HEAD {
        (StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n".to_string())
    } else {
        (StatusCode::OK, render(&source.stats()))
    };
    let content_type = match status {
        StatusCode::OK => "text/plain; version=0.0.4; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    let body = if method == Method::HEAD { Bytes::new() } else { Bytes::from(body) };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    }
    response
}

/// The text exposition format: `# HELP` and `# TYPE` before each family, `_total` counters,
/// seconds and bytes as base units.
pub fn render(stats: &Stats) -> String {
    let mut out = String::with_capacity(4096);
    let mut text = Text(&mut out);
    let start = stats.start_time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    text.single(
        "bitsd_start_time_seconds",
        "gauge",
        "When the daemon started (Unix time).",
        start.as_secs_f64(),
    );
    text.single(
        "bitsd_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        stats.uptime.as_secs_f64(),
    );
    text.family("bitsd_jobs", "gauge", "Jobs in the queue, by state (every user's).");
    for state in JobState::ALL {
        let count = stats.jobs.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
        // Final jobs leave the queue: those states are shown only if one is caught leaving.
        if count > 0 || !state.is_final() {
            text.sample("bitsd_jobs", &[("state", state.name())], count as f64);
        }
    }
    text.single(
        "bitsd_transferred_bytes_total",
        "counter",
        "Bytes downloaded, synced to disk and recorded as filled.",
        stats.bytes_transferred as f64,
    );
    text.single(
        "bitsd_control_connections",
        "gauge",
        "gRPC connections open to the control socket and the TCP listener.",
        stats.control_connections as f64,
    );
    text.single(
        "bitsd_watch_streams",
        "gauge",
        "WatchJob streams open.",
        stats.watch_streams as f64,
    );
    text.single(
        "bitsd_http_connections",
        "gauge",
        "Connections open to HTTP servers for transfers (in use or idle in the pool).",
        stats.http_connections as f64,
    );
    text.family(
        "bitsd_transient_errors_total",
        "counter",
        "Failed attempts that left a job in TRANSIENT_ERROR, by BITS code.",
    );
    for (code, count) in &stats.transient_errors {
        let hresult = format!("0x{:08X}", code.hresult());
        let labels = [("code", code.name()), ("hresult", hresult)];
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        text.sample("bitsd_transient_errors_total", &labels, *count as f64);
    }
    let flushes = &stats.flushes;
    let name = "bitsd_store_flush_duration_seconds";
    text.family(
        name,
        "histogram",
        "How long store flushes took (each makes the writes before it durable).",
    );
    for (le, count) in &flushes.buckets {
        let le = le.as_secs_f64().to_string();
        text.sample(&format!("{name}_bucket"), &[("le", &le)], *count as f64);
    }
    text.sample(&format!("{name}_bucket"), &[("le", "+Inf")], flushes.count as f64);
    text.sample(&format!("{name}_sum"), &[], flushes.total.as_secs_f64());
    text.sample(&format!("{name}_count"), &[], flushes.count as f64);
    text.single(
        "bitsd_store_flush_failures_total",
        "counter",
        "Store flushes that failed.",
        flushes.failed as f64,
    );
    text.single(
        "bitsd_store_flush_max_seconds",
        "gauge",
        "The longest store flush since start.",
        flushes.max.as_secs_f64(),
    );
    out
}

/// Writes families and samples into a page.
struct Text<'a>(&'a mut String);

impl Text<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}\n# TYPE {name} {kind}", escape_help(help));
    }

    /// A family of one sample without labels.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"{}\"", escape_label(value));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value as the format wants it: backslash, double quote and line feed escaped.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// HELP text escapes only backslash and line feed.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bits_core::{Code, FlushStats};

    use super::*;

    fn stats() -> Stats {
        let us = Duration::from_micros;
        Stats {
            start_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            uptime: Duration::from_secs(90),
            jobs: vec![(JobState::Queued, 2), (JobState::Transferred, 1)],
            own_jobs: vec![(JobState::Queued, 1)],
            bytes_transferred: 1 << 20,
            control_connections: 3,
            watch_streams: 1,
            http_connections: 2,
            transient_errors: vec![(Code::Http(503), 4)],
            flushes: FlushStats {
                count: 5,
                failed: 1,
                total: us(2_500),
                max: us(1_500),
                buckets: vec![(us(250), 2), (us(1_000), 4), (us(2_500), 5)],
            },
        }
    }

    /// The value of the sample that starts with `series` (name and labels).
    fn value(page: &str, series: &str) -> Option<f64> {
        page.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn every_family_has_help_and_type_and_the_numbers_are_in_base_units() {
        let page = render(&stats());
        assert_eq!(value(&page, "bitsd_jobs{state=\"QUEUED\"}"), Some(2.0));
        assert_eq!(value(&page, "bitsd_jobs{state=\"TRANSFERRING\"}"), Some(0.0));
        assert_eq!(value(&page, "bitsd_jobs{state=\"CANCELLED\"}"), None, "final: not shown");
        assert_eq!(value(&page, "bitsd_transferred_bytes_total"), Some(1_048_576.0));
        assert_eq!(
            value(
                &page,
                "bitsd_transient_errors_total{code=\"BG_E_HTTP_ERROR_503\",hresult=\"0x801901F7\"}"
            ),
            Some(4.0)
        );
        assert_eq!(
            value(&page, "bitsd_store_flush_duration_seconds_bucket{le=\"0.001\"}"),
            Some(4.0)
        );
        assert_eq!(
            value(&page, "bitsd_store_flush_duration_seconds_bucket{le=\"+Inf\"}"),
            Some(5.0)
        );
        assert_eq!(value(&page, "bitsd_store_flush_duration_seconds_sum"), Some(0.0025));
        assert_eq!(value(&page, "bitsd_start_time_seconds"), Some(1_700_000_000.0));
        // Every sample belongs to a family announced before it, with HELP then TYPE.
        let mut announced = Vec::new();
        let lines: Vec<&str> = page.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(lines[i + 1].starts_with(&format!("# TYPE {name} ")), "{line}");
                announced.push(name.to_string());
            } else if !line.starts_with('#') {
                let series = line.split([' ', '{']).next().unwrap();
                assert!(series.starts_with("bitsd_"), "{line}");
                assert!(
                    announced.iter().any(|f| series == f
                        || ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| series == format!("{f}{s}"))),
                    "{line} comes before its family"
                );
            }
        }
        for counter in page.lines().filter_map(|l| l.strip_suffix(" counter")) {
            assert!(counter.ends_with("_total"), "{counter}");
        }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("a\\b\"c\nd"), "a\\\\b\"c\\nd");
        let mut page = String::new();
        Text(&mut page).sample("bitsd_x", &[("code", "HRESULT_FROM_WIN32(\"x\")")], 1.0);
        assert_eq!(page, "bitsd_x{code=\"HRESULT_FROM_WIN32(\\\"x\\\")\"} 1\n");
    }

    /// The endpoint on a free loopback port, with `bounds`, over an empty in-memory store.
    async fn endpoint(bounds: Bounds) -> SocketAddr {
        let store = Arc::new(bits_store::MemStore::new());
        let manager = Manager::start(store, bits_manager::ManagerConfig::default()).unwrap();
        let quota = |what| Quota::new("max_x", what, 4, 4);
        let source =
            Source { manager, watches: quota("watch streams"), connections: quota("connections") };
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_within(listener, source, std::future::pending(), bounds));
        addr
    }

    /// Reads until the server closes the connection; what it sent.
    async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
        use tokio::io::AsyncReadExt as _;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
        read.await.expect("the server closes the connection").unwrap_or_default();
        String::from_utf8_lossy(&answer).into_owned()
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::AsyncWriteExt as _;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        read_to_close(&mut stream).await
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_and_silent_ones_time_out() {
        let bounds = Bounds {
            connections: 2,
            head: Duration::from_secs(2),
            connection: Duration::from_secs(5),
        };
        let addr = endpoint(bounds).await;
        let answer = get(addr, "/metrics").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("bitsd_jobs{state=\"QUEUED\"} 0\n"), "{answer}");
        // Two connections that say nothing hold both slots: a third is closed unanswered…
        let mut silent: Vec<tokio::net::TcpStream> = Vec::new();
        for _ in 0..2 {
            silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(read_to_close(&mut third).await, "");
        assert!(started.elapsed() < Duration::from_millis(1500), "closed at once, not timed out");
        // …until the head timeout closes them (well before the connection deadline), and
        // scrapes get through again.
        for stream in &mut silent {
            read_to_close(stream).await;
        }
        assert!(started.elapsed() < Duration::from_secs(4), "the head timeout, not the deadline");
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404 Not Found\r\n"));
    }

    #[tokio::test]
    async fn a_head_trickled_in_is_cut_off_at_the_head_timeout() {
        use tokio::io::AsyncWriteExt as _;
        let bounds = Bounds {
            connections: 2,
            head: Duration::from_secs(1),
            connection: Duration::from_secs(5),
        };
        let addr = endpoint(bounds).await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        stream.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        // A header byte every 200 ms, never ending the head; writes fail once it is closed.
        while started.elapsed() < Duration::from_secs(4) {
            if stream.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let answer = read_to_close(&mut stream).await;
        assert!(!answer.contains("200 OK"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(4), "the head timeout, not the deadline");
    }

    #[test]
    fn only_loopback_is_bound() {
        let err = bind("0.0.0.0:0".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("loopback addresses only"), "{err}");
        assert!(bind("127.0.0.1:0".parse().unwrap()).is_ok());
    }
}
