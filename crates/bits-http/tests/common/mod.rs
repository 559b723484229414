//! An in-process HTTP server for the fetcher's tests: serves one generated file at `/file` with
//! real Range / If-Range support, plus redirect routes, and misbehaves on request (see [`Mode`]).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bits_http::{HttpClient, HttpConfig};
use bits_testkit::body::ChannelBody;
use bits_testkit::data::random_bytes;
use bits_testkit::range::{self, RangeAnswer};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

pub const SIZE: usize = 100_000;
pub const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

/// How `/file` behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Answers every GET with 200 and the whole file.
    IgnoreRange,
    /// 206 whose Content-Range is shifted by one byte.
    WrongContentRange,
    /// 206 with the right headers, half the body, then the connection is cut.
    ShortBody,
    /// 206 that sends half the body and then nothing.
    StallBody,
    /// Never sends response headers.
    StallHeaders,
    /// GET answers with this status (503 adds Retry-After: 3).
    GetStatus(u16),
    /// HEAD answers with this status; GET behaves normally.
    HeadStatus(u16),
    /// HEAD answers 200 without Content-Length.
    HeadNoLength,
    /// 206 marked `Content-Encoding: gzip`.
    Gzip,
    /// 206 with chunked framing and 10 bytes more than asked.
    LongBody,
}

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub version: Version,
}

pub struct State {
    pub data: Bytes,
    pub mode: Mutex<Mode>,
    pub etag: Mutex<String>,
    pub seen: Mutex<Vec<Seen>>,
    pub connections: AtomicUsize,
    /// Where `/abs-redirect` points.
    pub redirect_target: Mutex<String>,
}

impl State {
    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
    pub fn set_etag(&self, etag: &str) {
        *self.etag.lock().unwrap() = etag.to_string();
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn last(&self) -> Seen {
        self.seen().last().cloned().unwrap()
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<State>,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

pub fn data() -> Bytes {
    random_bytes(1, SIZE).into()
}

fn new_state(mode: Mode) -> Arc<State> {
    Arc::new(State {
        data: data(),
        mode: Mutex::new(mode),
        etag: Mutex::new("\"v1\"".to_string()),
        seen: Mutex::new(Vec::new()),
        connections: AtomicUsize::new(0),
        redirect_target: Mutex::new(String::new()),
    })
}

/// Plain http (HTTP/1.1, or h2c with prior knowledge) on 127.0.0.1.
pub async fn start(mode: Mode) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = new_state(mode);
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            st.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_io(stream, st.clone()));
        }
    });
    TestServer { addr, state }
}

/// https with the given rustls server config (ALPN set by the caller).
pub async fn start_tls(mode: Mode, config: rustls::ServerConfig) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = new_state(mode);
    let st = state.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            st.connections.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let st = st.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    serve_io(tls, st).await;
                }
            });
        }
    });
    TestServer { addr, state }
}

async fn serve_io<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: I, st: Arc<State>) {
    let svc = service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, Infallible>(handle(req, st).await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), svc).await;
}

type Body = BoxBody<Bytes, io::Error>;

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body that sends `first`, then either fails (`cut`) or goes silent for a long time.
fn partial_body(first: Bytes, cut: bool) -> Body {
    let (tx, body) = ChannelBody::new(4);
    tokio::spawn(async move {
        let _ = tx.send(Ok(first)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if cut {
            let _ = tx.send(Err(io::Error::other("cut"))).await;
        } else {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    });
    body.boxed()
}

fn unknown_length(bytes: Bytes) -> Body {
    let (tx, body) = ChannelBody::new(1);
    tokio::spawn(async move {
        let _ = tx.send(Ok(bytes)).await;
    });
    body.boxed()
}

fn redirect(status: u16, location: &str) -> Response<Body> {
    Response::builder().status(status).header(header::LOCATION, location).body(empty()).unwrap()
}

fn status(code: u16) -> Response<Body> {
    Response::builder().status(code).body(empty()).unwrap()
}

async fn handle(req: Request<Incoming>, st: Arc<State>) -> Response<Body> {
    let path = req.uri().path().to_string();
    st.seen.lock().unwrap().push(Seen {
        method: req.method().clone(),
        path: path.clone(),
        headers: req.headers().clone(),
        version: req.version(),
    });
    // `/r/<status>` redirects to `/file` with that status (any 3xx, including 300).
    if let Some(code) = path.strip_prefix("/r/") {
        return redirect(code.parse().unwrap(), "/file#frag");
    }
    if let Some(n) = path.strip_prefix("/chain/") {
        let n: u32 = n.parse().unwrap();
        return if n == 0 {
            redirect(301, "/file")
        } else {
            redirect(307, &format!("/chain/{}", n - 1))
        };
    }
    match path.as_str() {
        "/file" => file(req, &st).await,
        "/dir/sub/start" => redirect(302, "../../file"),
        "/see-other" => redirect(303, "file"),
        "/loop/a" => redirect(302, "/loop/b"),
        "/loop/b" => redirect(308, "a"),
        "/ftp" => redirect(302, "ftp://example.com/file"),
        "/no-location" => status(302),
        "/abs-redirect" => {
            let target = st.redirect_target.lock().unwrap().clone();
            redirect(302, &target)
        }
        _ => status(404),
    }
}

async fn file(req: Request<Incoming>, st: &State) -> Response<Body> {
    let mode = *st.mode.lock().unwrap();
    let etag = st.etag.lock().unwrap().clone();
    let size = st.data.len() as u64;
    let base = || {
        Response::builder()
            .header(header::ETAG, etag.as_str())
            .header(header::LAST_MODIFIED, LAST_MODIFIED)
            .header(header::ACCEPT_RANGES, "bytes")
    };
    if req.method() == Method::HEAD {
        return match mode {
            Mode::HeadStatus(code) => status(code),
            Mode::HeadNoLength => base().body(unknown_length(Bytes::new())).unwrap(),
            _ => base().header(header::CONTENT_LENGTH, size).body(empty()).unwrap(),
        };
    }
    match mode {
        Mode::GetStatus(503) => {
            return Response::builder()
                .status(503)
                .header(header::RETRY_AFTER, "3")
                .body(empty())
                .unwrap();
        }
        Mode::GetStatus(code) => return status(code),
        Mode::StallHeaders => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return status(500);
        }
        _ => {}
    }
    let whole = || base().header(header::CONTENT_LENGTH, size).body(full(st.data.clone())).unwrap();
    if mode == Mode::IgnoreRange {
        return whole();
    }
    let Some(range) = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return whole();
    };
    if let Some(if_range) = req.headers().get(header::IF_RANGE)
        && if_range.as_bytes() != etag.as_bytes()
        && if_range.as_bytes() != LAST_MODIFIED.as_bytes()
    {
        return whole();
    }
    let (first, last) = match range::parse_single(range, size) {
        RangeAnswer::Ignore => return status(400),
        RangeAnswer::Unsatisfiable => {
            return Response::builder()
                .status(416)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .body(empty())
                .unwrap();
        }
        RangeAnswer::Spans(spans) => (spans[0].0, spans[0].1 - 1),
    };
    let slice = st.data.slice(first as usize..=last as usize);
    let len = slice.len();
    let content_range = match mode {
        Mode::WrongContentRange => format!("bytes {}-{}/{size}", first + 1, last + 1),
        _ => format!("bytes {first}-{last}/{size}"),
    };
    let builder =
        base().status(StatusCode::PARTIAL_CONTENT).header(header::CONTENT_RANGE, content_range);
    match mode {
        Mode::ShortBody => builder
            .header(header::CONTENT_LENGTH, len)
            .body(partial_body(slice.slice(..len / 2), true))
            .unwrap(),
        Mode::StallBody => builder
            .header(header::CONTENT_LENGTH, len)
            .body(partial_body(slice.slice(..len / 2), false))
            .unwrap(),
        Mode::Gzip => builder
            .header(header::CONTENT_ENCODING, "gzip")
            .header(header::CONTENT_LENGTH, len)
            .body(full(slice))
            .unwrap(),
        Mode::LongBody => {
            let mut longer = slice.to_vec();
            longer.extend_from_slice(&[0u8; 10]);
            builder.body(unknown_length(longer.into())).unwrap()
        }
        _ => builder.header(header::CONTENT_LENGTH, len).body(full(slice)).unwrap(),
    }
}

/// A client with short limits so a failing test fails fast.
pub fn client() -> HttpClient {
    client_with(|_| {})
}

pub fn client_with(f: impl FnOnce(&mut HttpConfig)) -> HttpClient {
    let mut config = HttpConfig {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        ..HttpConfig::default()
    };
    f(&mut config);
    HttpClient::new(config).unwrap()
}

/// Reads a whole range body.
pub async fn read_all(body: &mut bits_http::RangeBody) -> Result<Vec<u8>, bits_http::FetchError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next_chunk().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
