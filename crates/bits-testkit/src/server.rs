//! An in-process HTTP/1.1 server (hyper 1.x) for files held in memory, with the knobs the
//! end-to-end tests need to watch a download happen:
//!
//! - correct `HEAD`, single `Range` requests (`206` + `Content-Range`, `416` when unsatisfiable),
//!   `If-Range` (a stale validator gets the whole file with `200`), `ETag` and `Last-Modified`;
//! - a throttle shared by every response of the server (bytes per second), so a download takes
//!   long enough to be observed, and killed, half way;
//! - a gate that holds every new response until released, so a test can inspect a restarted
//!   daemon before a single byte flows;
//! - a log of every request with the exact byte span it served, counted as the bytes hyper
//!   actually took for writing to the socket, so a test can prove no byte was fetched twice.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

use crate::range::{self, RangeAnswer};

/// Largest body frame handed to hyper; small enough that the throttle is smooth and the log of
/// served bytes is precise.
const CHUNK: usize = 16 * 1024;

/// Default `Last-Modified` of served files: 2021-01-01T00:00:00Z, a fixed time in the past.
pub const DEFAULT_LAST_MODIFIED: u64 = 1_609_459_200;

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

struct LogEntry {
    seq: usize,
    method: Method,
    path: String,
    range: Option<String>,
    if_range: Option<String>,
    status: u16,
    start: u64,
    planned: u64,
    served: AtomicU64,
    finished: AtomicBool,
}

impl LogEntry {
    fn snapshot(&self) -> LoggedRequest {
        LoggedRequest {
            seq: self.seq,
            method: self.method.clone(),
            path: self.path.clone(),
            range: self.range.clone(),
            if_range: self.if_range.clone(),
            status: self.status,
            start: self.start,
            planned: self.planned,
            served: self.served.load(Ordering::SeqCst),
            finished: self.finished.load(Ordering::SeqCst),
        }
    }
}

/// A token bucket with no burst, shared by all responses: each chunk books the next free slot on
/// the server's timeline, so N parallel connections share one rate.
struct Throttle {
    /// Bytes per second; 0 means unthrottled.
    rate: AtomicU64,
    next_free: Mutex<Instant>,
}

impl Throttle {
    /// When a chunk of `len` bytes may be sent, or `None` if unthrottled.
    fn reserve(&self, len: usize) -> Option<Instant> {
        let rate = self.rate.load(Ordering::SeqCst);
        if rate == 0 {
            return None;
        }
        let cost = Duration::from_secs_f64(len as f64 / rate as f64);
        let mut next = self.next_free.lock().unwrap();
        let start = (*next).max(Instant::now());
        *next = start + cost;
        Some(start + cost)
    }
}

struct State {
    files: Mutex<HashMap<String, ServedFile>>,
    throttle: Throttle,
    /// `true` while the gate holds new responses.
    gate: watch::Sender<bool>,
    waiting_at_gate: AtomicUsize,
    log: Mutex<Vec<Arc<LogEntry>>>,
}

/// The server; dropping it stops accepting and aborts every open connection.
pub struct TestServer {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl TestServer {
    /// Binds 127.0.0.1 on a free port and starts serving on the current tokio runtime.
    pub async fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            files: Mutex::new(HashMap::new()),
            throttle: Throttle { rate: AtomicU64::new(0), next_free: Mutex::new(Instant::now()) },
            gate: watch::channel(false).0,
            waiting_at_gate: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        TestServer { addr, state, accept }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{}", self.addr, name.trim_start_matches('/'))
    }

    /// Serves `data` at `/NAME` with a content-derived strong ETag and [`DEFAULT_LAST_MODIFIED`].
    pub fn add_file(&self, name: &str, data: impl Into<Bytes>) {
        let data = data.into();
        let etag = format!("\"{}\"", &crate::data::sha256_hex(&data)[..16]);
        let last_modified = SystemTime::UNIX_EPOCH + Duration::from_secs(DEFAULT_LAST_MODIFIED);
        self.put_file(name, ServedFile { data, etag, last_modified });
    }

    /// Serves (or replaces) `/NAME` with full control over its validators.
    pub fn put_file(&self, name: &str, file: ServedFile) {
        let path = format!("/{}", name.trim_start_matches('/'));
        self.state.files.lock().unwrap().insert(path, file);
    }

    /// Limits the whole server to `bytes_per_sec` (`None`: unlimited). Takes effect for the next
    /// chunk of every response, including those already streaming.
    pub fn set_throttle(&self, bytes_per_sec: Option<u64>) {
        self.state.throttle.rate.store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
        *self.state.throttle.next_free.lock().unwrap() = Instant::now();
    }

    /// From now on every new request waits before being answered (bodies already streaming go on).
    pub fn hold(&self) {
        self.state.gate.send_replace(true);
    }

    /// Lets held and future requests through.
    pub fn release(&self) {
        self.state.gate.send_replace(false);
    }

    /// How many requests are waiting at the gate right now.
    pub fn waiting_at_gate(&self) -> usize {
        self.state.waiting_at_gate.load(Ordering::SeqCst)
    }

    /// Every request answered so far, in order.
    pub fn log(&self) -> Vec<LoggedRequest> {
        self.state.log.lock().unwrap().iter().map(|e| e.snapshot()).collect()
    }

    /// Number of requests answered so far; pass it to [`TestServer::log_since`] later.
    pub fn log_len(&self) -> usize {
        self.state.log.lock().unwrap().len()
    }

    /// Requests answered after the first `mark` ones.
    pub fn log_since(&self, mark: usize) -> Vec<LoggedRequest> {
        self.state.log.lock().unwrap().iter().skip(mark).map(|e| e.snapshot()).collect()
    }

    /// Body bytes served for `GET`s so far (all files).
    pub fn bytes_served(&self) -> u64 {
        self.log().iter().filter(|r| r.method == Method::GET).map(|r| r.served).sum()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    crate::accept::accept_each(listener, move |stream| {
        let state = state.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, req).await) }
            });
            // Errors here are clients going away mid-body, which tests do on purpose.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await
}

async fn respond(state: &Arc<State>, req: Request<Incoming>) -> Response<ServedBody> {
    let mut gate = state.gate.subscribe();
    if *gate.borrow() {
        state.waiting_at_gate.fetch_add(1, Ordering::SeqCst);
        let _ = gate.wait_for(|held| !*held).await;
        state.waiting_at_gate.fetch_sub(1, Ordering::SeqCst);
    }

    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let range = header_text(req.headers(), header::RANGE);
    let if_range = header_text(req.headers(), header::IF_RANGE);
    let file = state.files.lock().unwrap().get(&path).cloned();

    let mut builder = Response::builder();
    let (status, start, len, file) = match file {
        None => (StatusCode::NOT_FOUND, 0, 0, None),
        Some(file) if method != Method::GET && method != Method::HEAD => {
            builder = builder.header(header::ALLOW, "GET, HEAD");
            (StatusCode::METHOD_NOT_ALLOWED, 0, 0, Some(file))
        }
        Some(file) => {
            let size = file.data.len() as u64;
            let last_modified = httpdate::fmt_http_date(file.last_modified);
            builder = builder
                .header(header::ACCEPT_RANGES, "bytes")
                .header(header::ETAG, &file.etag)
                .header(header::LAST_MODIFIED, &last_modified)
                .header(header::CONTENT_TYPE, "application/octet-stream");
            // A stale If-Range means "send me the whole new file" (RFC 9110 §13.1.5).
            let validator_ok =
                if_range.as_deref().is_none_or(|v| v == file.etag || v == last_modified);
            match range.as_deref().filter(|_| validator_ok).map(|r| range::parse_single(r, size)) {
                None | Some(RangeAnswer::Ignore) => (StatusCode::OK, 0, size, Some(file)),
                Some(RangeAnswer::Unsatisfiable) => {
                    builder = builder.header(header::CONTENT_RANGE, format!("bytes */{size}"));
                    (StatusCode::RANGE_NOT_SATISFIABLE, 0, 0, Some(file))
                }
                Some(RangeAnswer::Spans(spans)) => {
                    let (start, end) = spans[0];
                    builder = builder
                        .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", end - 1));
                    (StatusCode::PARTIAL_CONTENT, start, end - start, Some(file))
                }
            }
        }
    };

    let entry = {
        let mut log = state.log.lock().unwrap();
        let entry = Arc::new(LogEntry {
            seq: log.len(),
            method: method.clone(),
            path,
            range,
            if_range,
            status: status.as_u16(),
            start,
            planned: len,
            served: AtomicU64::new(0),
            finished: AtomicBool::new(false),
        });
        log.push(entry.clone());
        entry
    };

    let data = match (&file, method == Method::GET) {
        (Some(file), true) => file.data.slice(start as usize..(start + len) as usize),
        _ => Bytes::new(),
    };
    if data.is_empty() {
        entry.finished.store(true, Ordering::SeqCst);
    }
    let body = ServedBody { state: state.clone(), data, pos: 0, sleep: None, entry };
    builder
        .status(status)
        // Explicit, so HEAD carries the length a GET would have.
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .unwrap()
}

fn header_text(headers: &HeaderMap<HeaderValue>, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// A response body that streams `data` in throttled chunks and records how much of it hyper
/// took for writing. hyper stops polling once the announced length is out, so a chunk counts
/// when it is handed over; what hyper buffers beyond the socket is bounded by one chunk, far less
/// than what the kernel's socket buffers hold anyway when a client dies.
pub struct ServedBody {
    state: Arc<State>,
    data: Bytes,
    pos: usize,
    sleep: Option<Pin<Box<Sleep>>>,
    entry: Arc<LogEntry>,
}

impl Body for ServedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.pos >= this.data.len() {
            return Poll::Ready(None);
        }
        let len = CHUNK.min(this.data.len() - this.pos);
        if this.sleep.is_none()
            && let Some(deadline) = this.state.throttle.reserve(len)
        {
            this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline)));
        }
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        let chunk = this.data.slice(this.pos..this.pos + len);
        this.pos += len;
        this.entry.served.fetch_add(len as u64, Ordering::SeqCst);
        if this.pos >= this.data.len() {
            this.entry.finished.store(true, Ordering::SeqCst);
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.data.len() - self.pos) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::{header, raw_request};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
