//! The server's face for the download tests, with the knobs they need to watch a download
//! happen:
//!
//! - correct `HEAD`, single `Range` requests (`206` + `Content-Range`, `416` when unsatisfiable),
//!   `If-Range` (a stale validator gets the whole file with `200`), `ETag` and `Last-Modified`;
//! - a throttle shared by every response of the server (bytes per second), so a download takes
//!   long enough to be observed, and killed, half way;
//! - a gate that holds every new response until released, so a test can inspect a restarted
//!   daemon before a single byte flows;
//! - a log of every request with the exact byte span it served, counted as the bytes hyper
//!   actually took for writing to the socket, so a test can prove no byte was fetched twice.

use std::net::SocketAddr;
use std::time::SystemTime;

use bytes::Bytes;
use http::Method;

pub use crate::serve::DEFAULT_LAST_MODIFIED;
use crate::serve::{FaultFile, Logged, Server};

/// One file the server can serve.
#[derive(Clone, Debug)]
pub struct ServedFile {
    pub data: Bytes,
    pub etag: String,
    pub last_modified: SystemTime,
}

/// One request as the server saw and answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    /// Order of arrival at the response stage (after the gate).
    pub seq: usize,
    pub method: Method,
    pub path: String,
    /// The `Range` header, verbatim.
    pub range: Option<String>,
    /// The `If-Range` header, verbatim.
    pub if_range: Option<String>,
    pub status: u16,
    /// First remote offset of the body.
    pub start: u64,
    /// Body length the response announced.
    pub planned: u64,
    /// Body bytes handed to hyper for writing to the socket so far.
    pub served: u64,
    /// The whole body was served.
    pub finished: bool,
}

impl LoggedRequest {
    /// The remote bytes this response actually delivered, `[start, start + served)`.
    pub fn served_span(&self) -> (u64, u64) {
        (self.start, self.start + self.served)
    }
}

impl From<Logged> for LoggedRequest {
    fn from(r: Logged) -> LoggedRequest {
        LoggedRequest {
            seq: r.seq,
            method: r.method,
            path: r.path,
            range: r.range,
            if_range: r.if_range,
            status: r.status,
            start: r.start,
            planned: r.planned,
            served: r.sent,
            finished: r.finished,
        }
    }
}

/// The server; dropping it stops accepting and aborts every open connection.
pub struct TestServer(Server);

impl TestServer {
    /// Binds 127.0.0.1 on a free port and starts serving on the current tokio runtime.
    pub async fn start() -> TestServer {
        TestServer(Server::start().await)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// `http://127.0.0.1:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        self.0.url(name)
    }

    /// Serves `data` at `/NAME` with a content-derived strong ETag and [`DEFAULT_LAST_MODIFIED`].
    pub fn add_file(&self, name: &str, data: impl Into<Bytes>) {
        self.0.put_file(name, FaultFile::new(data));
    }

    /// Serves (or replaces) `/NAME` with full control over its validators.
    pub fn put_file(&self, name: &str, file: ServedFile) {
        let ServedFile { data, etag, last_modified } = file;
        self.0.put_file(
            name,
            FaultFile { data, etag: Some(etag), last_modified: Some(last_modified) },
        );
    }

    /// Limits the whole server to `bytes_per_sec` (`None`: unlimited). Takes effect for the next
    /// chunk of every response, including those already streaming.
    pub fn set_throttle(&self, bytes_per_sec: Option<u64>) {
        self.0.set_throttle(bytes_per_sec);
    }

    /// From now on every new request waits before being answered (bodies already streaming go on).
    pub fn hold(&self) {
        self.0.hold(true);
    }

    /// Lets held and future requests through.
    pub fn release(&self) {
        self.0.hold(false);
    }

    /// How many requests are waiting at the gate right now.
    pub fn waiting_at_gate(&self) -> usize {
        self.0.waiting_at_gate()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.0.connections()
    }

    /// Connections accepted and not yet closed. Once a client is gone and this is 0, every
    /// request it sent has been read and logged.
    pub fn open_connections(&self) -> usize {
        self.0.open_connections()
    }

    /// Every request answered so far, in order.
    pub fn log(&self) -> Vec<LoggedRequest> {
        self.log_since(0)
    }

    /// Number of requests answered so far; pass it to [`TestServer::log_since`] later.
    pub fn log_len(&self) -> usize {
        self.0.log_len()
    }

    /// Requests answered after the first `mark` ones.
    pub fn log_since(&self, mark: usize) -> Vec<LoggedRequest> {
        self.0.log_since(mark).into_iter().map(LoggedRequest::from).collect()
    }

    /// Body bytes served for `GET`s so far (all files).
    pub fn bytes_served(&self) -> u64 {
        self.log().iter().filter(|r| r.method == Method::GET).map(|r| r.served).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::{header, raw_request};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    #[tokio::test]
    async fn serves_ranges_heads_and_logs_spans() {
        let server = TestServer::start().await;
        let data = crate::data::random_bytes(1, 100_000);
        server.add_file("f.bin", data.clone());

        let (head, body) = raw_request(server.addr(), "GET", "/f.bin", &[]).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, data);
        assert_eq!(header(&head, "content-length"), Some("100000"));
        assert_eq!(header(&head, "last-modified"), Some("Fri, 01 Jan 2021 00:00:00 GMT"));
        let etag = header(&head, "etag").unwrap().to_string();

        let (head, body) = raw_request(server.addr(), "HEAD", "/f.bin", &[]).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(header(&head, "content-length"), Some("100000"));
        assert!(body.is_empty());

        let (head, body) =
            raw_request(server.addr(), "GET", "/f.bin", &[("Range", "bytes=100-199")]).await;
        assert!(head.starts_with("HTTP/1.1 206"), "{head}");
        assert_eq!(header(&head, "content-range"), Some("bytes 100-199/100000"));
        assert_eq!(body, &data[100..200]);

        let (head, body) = raw_request(
            server.addr(),
            "GET",
            "/f.bin",
            &[("Range", "bytes=99000-"), ("If-Range", &etag)],
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 206"), "{head}");
        assert_eq!(body, &data[99_000..]);

        let (head, body) = raw_request(
            server.addr(),
            "GET",
            "/f.bin",
            &[("Range", "bytes=99000-"), ("If-Range", "\"stale\"")],
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, data);

        let (head, _) =
            raw_request(server.addr(), "GET", "/f.bin", &[("Range", "bytes=100000-")]).await;
        assert!(head.starts_with("HTTP/1.1 416"), "{head}");
        let (head, _) = raw_request(server.addr(), "GET", "/missing", &[]).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");

        let log = server.log();
        let spans: Vec<_> =
            log.iter().map(|r| (r.method.as_str(), r.status, r.served_span())).collect();
        assert_eq!(
            spans,
            [
                ("GET", 200, (0, 100_000)),
                ("HEAD", 200, (0, 0)),
                ("GET", 206, (100, 200)),
                ("GET", 206, (99_000, 100_000)),
                ("GET", 200, (0, 100_000)),
                ("GET", 416, (0, 0)),
                ("GET", 404, (0, 0)),
            ]
        );
        assert!(log.iter().all(|r| r.finished));
        assert_eq!(log[3].if_range.as_deref(), Some(etag.as_str()));
    }

    #[tokio::test]
    async fn throttle_and_gate() {
        let server = TestServer::start().await;
        server.add_file("f.bin", crate::data::random_bytes(2, 200_000));
        server.set_throttle(Some(400_000));
        server.hold();
        let addr = server.addr();
        let request = tokio::spawn(async move { raw_request(addr, "GET", "/f.bin", &[]).await });
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.waiting_at_gate() == 0 {
            assert!(Instant::now() < deadline, "request never reached the gate");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(server.log().is_empty(), "the gate let a response through");
        let released = Instant::now();
        server.release();
        let (_, body) = request.await.unwrap();
        assert_eq!(body.len(), 200_000);
        // 200 kB at 400 kB/s: about half a second, certainly not instant.
        assert!(released.elapsed() >= Duration::from_millis(400), "{:?}", released.elapsed());
        assert_eq!(server.bytes_served(), 200_000);
    }

    #[tokio::test]
    async fn served_bytes_stop_when_the_client_goes_away() {
        let server = TestServer::start().await;
        server.add_file("f.bin", crate::data::random_bytes(3, 4 << 20));
        server.set_throttle(Some(1 << 20));
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        stream.write_all(b"GET /f.bin HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < 300_000 {
            got += stream.read(&mut buf).await.unwrap();
        }
        drop(stream);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let served = server.log()[0].served;
        assert!(!server.log()[0].finished);
        // At least what the client read (less the response head), at most that plus what sat in
        // socket buffers when it left; certainly not the whole 4 MiB.
        assert!(served + 512 >= got as u64 && served < 2 << 20, "served {served}, read {got}");
    }
}
