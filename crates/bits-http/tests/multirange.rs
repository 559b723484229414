//! `HttpClient::get_ranges_opts` against an in-process HTTP/1.1 server that answers multi-range
//! requests the way nginx does (a `multipart/byteranges` 206, parts in request order, a plain 206
//! for one range) or misbehaves in one specific way per test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bits_core::{Code, ErrorContext, Span};
use bits_http::{
    FetchError, FetchErrorKind, HttpClient, HttpConfig, MAX_SPANS_PER_REQUEST, MultiRangeBody,
    RemoteInfo, RequestOptions,
};
use bits_testkit::body::ChannelBody;
use bits_testkit::data::random_bytes;
use bits_testkit::range::{self, RangeAnswer};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

const SIZE: usize = 200_000;
const ETAG: &str = "\"mr1\"";
const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
const BOUNDARY: &str = "00000000000000000007";

/// How the server answers a GET with a `Range` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Like nginx: multipart for several ranges (request order), plain 206 for one.
    Nginx,
    /// Multipart with the parts in reverse order.
    Reversed,
    /// Multipart whose first part covers the first two requested ranges and the gap between.
    CoalesceFirstTwo,
    /// A plain 206 for the first requested range only.
    SinglePartFirst,
    /// A plain 206 for the whole hull of the requested ranges.
    SinglePartHull,
    /// 200 with the whole file.
    Full,
    /// Multipart with the first part sent twice.
    DuplicatePart,
    /// Multipart without the last part.
    MissingLast,
    /// Multipart with Content-Length for the whole body, cut after the first two parts and half
    /// of the third.
    Truncated,
    /// Multipart whose Content-Range totals are one byte more than the file.
    WrongTotal,
    /// Multipart marked `Content-Encoding: gzip`.
    Gzip,
    /// Multipart with bare LF line endings in the part headers.
    BareLf,
    /// Multipart that sends the first part and then nothing.
    Stall,
    /// Multipart of unknown length (chunked) that ends cleanly after the first two parts and
    /// half of the third.
    EndsEarly,
}

struct State {
    data: Bytes,
    mode: Mutex<Mode>,
    /// Size of the chunks the body is written in (exercises the parser's chunk boundaries).
    chunk: Mutex<usize>,
    seen: Mutex<Vec<HeaderMap>>,
    connections: AtomicUsize,
}

struct Server {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Server {
    fn url(&self) -> String {
        format!("http://{}/file", self.addr)
    }
    fn last_headers(&self) -> HeaderMap {
        self.state.seen.lock().unwrap().last().cloned().unwrap()
    }
}

fn data() -> Bytes {
    random_bytes(2, SIZE).into()
}

async fn start(mode: Mode) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State {
        data: data(),
        mode: Mutex::new(mode),
        chunk: Mutex::new(usize::MAX),
        seen: Mutex::new(Vec::new()),
        connections: AtomicUsize::new(0),
    });
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            st.connections.fetch_add(1, Ordering::SeqCst);
            let st = st.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let st = st.clone();
                    async move { Ok::<_, Infallible>(handle(req, &st)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Server { addr, state }
}

type Body = BoxBody<Bytes, io::Error>;

/// `bytes` in chunks of `chunk`, then (when `then_fail`) a broken connection or (`then_stall`)
/// silence.
fn chunked(bytes: Bytes, chunk: usize, then_fail: bool, then_stall: bool) -> Body {
    let (tx, body) = ChannelBody::new(8);
    tokio::spawn(async move {
        let mut rest = bytes;
        while !rest.is_empty() {
            let piece = rest.split_to(chunk.min(rest.len()));
            if tx.send(Ok(piece)).await.is_err() {
                return;
            }
        }
        if then_fail {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(Err(io::Error::other("cut"))).await;
        } else if then_stall {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    });
    body.boxed()
}

/// The asked spans as inclusive `(first, last)` pairs; anything else is a bug in the client.
fn parse_ranges(value: &str, size: u64) -> Vec<(u64, u64)> {
    match range::parse(value, size) {
        RangeAnswer::Spans(spans) => {
            spans.into_iter().map(|(start, end)| (start, end - 1)).collect()
        }
        other => panic!("the client sent {value:?}: {other:?}"),
    }
}

fn part(out: &mut Vec<u8>, data: &[u8], first: u64, last: u64, total: u64, eol: &str) {
    out.extend_from_slice(format!("\r\n--{BOUNDARY}\r\n").as_bytes());
    out.extend_from_slice(format!("Content-Type: application/octet-stream{eol}").as_bytes());
    out.extend_from_slice(
        format!("Content-Range: bytes {first}-{last}/{total}{eol}{eol}").as_bytes(),
    );
    out.extend_from_slice(&data[first as usize..=last as usize]);
}

fn handle(req: Request<Incoming>, st: &State) -> Response<Body> {
    st.seen.lock().unwrap().push(req.headers().clone());
    let mode = *st.mode.lock().unwrap();
    let chunk = *st.chunk.lock().unwrap();
    let size = st.data.len() as u64;
    let base = || {
        Response::builder()
            .header(header::ETAG, ETAG)
            .header(header::LAST_MODIFIED, LAST_MODIFIED)
            .header(header::ACCEPT_RANGES, "bytes")
    };
    if req.method() == Method::HEAD {
        let body = http_body_util::Empty::new().map_err(|never| match never {}).boxed();
        return base().header(header::CONTENT_LENGTH, size).body(body).unwrap();
    }
    let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
    let (Some(range), false) = (range, mode == Mode::Full) else {
        return base()
            .header(header::CONTENT_LENGTH, size)
            .body(chunked(st.data.clone(), chunk, false, false))
            .unwrap();
    };
    let mut ranges = parse_ranges(range, size);
    let plain = |first: u64, last: u64| {
        let slice = st.data.slice(first as usize..=last as usize);
        base()
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_RANGE, format!("bytes {first}-{last}/{size}"))
            .header(header::CONTENT_LENGTH, slice.len())
            .body(chunked(slice, chunk, false, false))
            .unwrap()
    };
    match mode {
        Mode::SinglePartFirst => return plain(ranges[0].0, ranges[0].1),
        Mode::SinglePartHull => return plain(ranges[0].0, ranges[ranges.len() - 1].1),
        _ if ranges.len() == 1 => return plain(ranges[0].0, ranges[0].1),
        Mode::Reversed => ranges.reverse(),
        Mode::CoalesceFirstTwo => {
            let merged = (ranges[0].0, ranges[1].1);
            ranges.splice(0..2, [merged]);
        }
        Mode::DuplicatePart => ranges.insert(1, ranges[0]),
        Mode::MissingLast => {
            ranges.pop();
        }
        _ => {}
    }
    let total = if mode == Mode::WrongTotal { size + 1 } else { size };
    let eol = if mode == Mode::BareLf { "\n" } else { "\r\n" };
    let mut body = Vec::new();
    let mut cut_at = None;
    for (i, &(first, last)) in ranges.iter().enumerate() {
        if i == 2 && mode != Mode::Stall {
            cut_at = Some(body.len() + 100 + ((last - first) as usize) / 2);
        }
        if i == 1 && mode == Mode::Stall {
            cut_at = Some(body.len());
        }
        part(&mut body, &st.data, first, last, total, eol);
    }
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let len = body.len();
    let mut body = Bytes::from(body);
    let (fail, stall) = match mode {
        Mode::Truncated | Mode::EndsEarly => {
            body.truncate(cut_at.unwrap());
            (mode == Mode::Truncated, false)
        }
        Mode::Stall => {
            body.truncate(cut_at.unwrap());
            (false, true)
        }
        _ => (false, false),
    };
    let mut resp = base()
        .status(StatusCode::PARTIAL_CONTENT)
        .header(header::CONTENT_TYPE, format!("multipart/byteranges; boundary={BOUNDARY}"))
        .header(header::CONTENT_LENGTH, len);
    if mode == Mode::EndsEarly {
        resp.headers_mut().unwrap().remove(header::CONTENT_LENGTH);
    }
    if mode == Mode::Gzip {
        resp = resp.header(header::CONTENT_ENCODING, "gzip");
    }
    resp.body(chunked(body, chunk, fail, stall)).unwrap()
}

fn client() -> HttpClient {
    HttpClient::new(HttpConfig {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        ..HttpConfig::default()
    })
    .unwrap()
}

fn no_fallback() -> RequestOptions {
    RequestOptions { allow_full_response: false, ..RequestOptions::default() }
}

/// `count` spans of `len` bytes, `stride` apart, starting at `first`.
fn spans(count: u64, first: u64, len: u64, stride: u64) -> Vec<Span> {
    (0..count).map(|i| Span::new(first + i * stride, first + i * stride + len)).collect()
}

/// Everything delivered, as (offset → bytes), until the end or an error.
async fn read_all(body: &mut MultiRangeBody) -> (Vec<(u64, Bytes)>, Option<FetchError>) {
    let mut pieces = Vec::new();
    loop {
        match body.next_chunk().await {
            Ok(Some(piece)) => pieces.push(piece),
            Ok(None) => return (pieces, None),
            Err(err) => return (pieces, Some(err)),
        }
    }
}

/// Joins pieces into contiguous runs, checking no byte came twice.
fn runs(pieces: &[(u64, Bytes)]) -> BTreeMap<u64, Vec<u8>> {
    let mut sorted: Vec<&(u64, Bytes)> = pieces.iter().collect();
    sorted.sort_by_key(|(at, _)| *at);
    let mut out: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut end = 0u64;
    for (at, bytes) in sorted {
        assert!(*at >= end || out.is_empty(), "byte {at} delivered twice");
        match out.last_entry() {
            Some(mut last) if *last.key() + last.get().len() as u64 == *at => {
                last.get_mut().extend_from_slice(bytes);
            }
            _ => {
                out.insert(*at, bytes.to_vec());
            }
        }
        end = at + bytes.len() as u64;
    }
    out
}

fn assert_exact(pieces: &[(u64, Bytes)], spans: &[Span], data: &[u8]) {
    let got = runs(pieces);
    let want: BTreeMap<u64, Vec<u8>> =
        spans.iter().map(|s| (s.start, data[s.start as usize..s.end as usize].to_vec())).collect();
    assert_eq!(got.len(), want.len(), "runs {:?}", got.keys().collect::<Vec<_>>());
    for ((ga, gb), (wa, wb)) in got.iter().zip(&want) {
        assert_eq!(ga, wa);
        assert!(gb == wb, "bytes at {ga} differ ({} vs {} bytes)", gb.len(), wb.len());
    }
}

fn assert_err(err: &FetchError, kind: FetchErrorKind, code: Code, transient: bool) {
    assert_eq!((err.kind, err.code, err.transient), (kind, code, transient), "{err}");
}

fn assert_mismatch(err: &FetchError) {
    assert_err(err, FetchErrorKind::InvalidResponse, Code::BG_E_INVALID_SERVER_RESPONSE, false);
    assert_eq!(err.context, ErrorContext::RemoteFile, "{err}");
}

fn assert_no_range_support(err: &FetchError) {
    assert_err(
        err,
        FetchErrorKind::RangeNotSupported,
        Code::BG_E_INSUFFICIENT_RANGE_SUPPORT,
        false,
    );
}

async fn setup(mode: Mode) -> (Server, HttpClient, RemoteInfo) {
    let server = start(mode).await;
    let http = client();
    let info = http.probe(&server.url()).await.unwrap();
    assert_eq!(info.size, SIZE as u64);
    (server, http, info)
}

#[tokio::test]
async fn three_spans_multipart_exact_bytes_at_exact_offsets() {
    let (server, http, info) = setup(Mode::Nginx).await;
    let want = [Span::new(0, 10), Span::new(20, 30), Span::new(1000, 5000)];
    for chunk in [usize::MAX, 1, 7, 4096] {
        *server.state.chunk.lock().unwrap() = chunk;
        let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
        assert!(body.is_multipart());
        let (pieces, err) = read_all(&mut body).await;
        assert!(err.is_none(), "chunk {chunk}: {err:?}");
        assert_exact(&pieces, &want, &server.state.data);
        assert_eq!(body.received(), 10 + 10 + 4000);
        assert_eq!(body.next_chunk().await.unwrap(), None);
    }
    let headers = server.last_headers();
    assert_eq!(headers[header::RANGE], "bytes=0-9,20-29,1000-4999");
    assert_eq!(headers[header::IF_RANGE], ETAG);
    assert_eq!(headers[header::ACCEPT_ENCODING], "identity");
}

#[tokio::test]
async fn sixty_four_spans_multipart() {
    let (server, http, info) = setup(Mode::Nginx).await;
    let want = spans(MAX_SPANS_PER_REQUEST as u64, 5, 100, 3000);
    for chunk in [usize::MAX, 333] {
        *server.state.chunk.lock().unwrap() = chunk;
        let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
        let (pieces, err) = read_all(&mut body).await;
        assert!(err.is_none(), "{err:?}");
        assert_exact(&pieces, &want, &server.state.data);
        assert_eq!(body.received(), 64 * 100);
    }
    // The spans up to the file's last byte.
    let tail = [Span::new(0, 1), Span::new(SIZE as u64 - 4096, SIZE as u64)];
    let mut body = http.get_ranges_opts(&info, &tail, &no_fallback()).await.unwrap();
    let (pieces, err) = read_all(&mut body).await;
    assert!(err.is_none(), "{err:?}");
    assert_exact(&pieces, &tail, &server.state.data);
}

#[tokio::test]
async fn parts_in_another_order_are_accepted() {
    let (server, http, info) = setup(Mode::Reversed).await;
    *server.state.chunk.lock().unwrap() = 50;
    let want = spans(5, 100, 300, 1000);
    let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
    let (pieces, err) = read_all(&mut body).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(pieces[0].0, 4100, "the last span came first");
    assert_exact(&pieces, &want, &server.state.data);
}

#[tokio::test]
async fn coalesced_parts_are_a_fatal_invalid_server_response() {
    let (_server, http, info) = setup(Mode::CoalesceFirstTwo).await;
    let want = spans(3, 0, 10, 20);
    let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
    let (pieces, err) = read_all(&mut body).await;
    // Refused at the merged part's headers, before any of its bytes.
    assert!(pieces.is_empty(), "{pieces:?}");
    let err = err.unwrap();
    assert_mismatch(&err);
    assert!(err.message.contains("coalesced"), "{err}");
    // Done after the error.
    assert_eq!(body.next_chunk().await.unwrap(), None);
}

#[tokio::test]
async fn repeated_or_missing_parts_are_fatal() {
    let (server, http, info) = setup(Mode::DuplicatePart).await;
    let want = spans(3, 0, 10, 20);
    let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
    let (pieces, err) = read_all(&mut body).await;
    assert_eq!(runs(&pieces).len(), 1, "the first part was delivered once");
    assert_mismatch(&err.unwrap());

    *server.state.mode.lock().unwrap() = Mode::MissingLast;
    let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
    let (pieces, err) = read_all(&mut body).await;
    assert_exact(&pieces, &want[..2], &server.state.data);
    let err = err.unwrap();
    assert_mismatch(&err);
    assert!(err.message.contains("did not return"), "{err}");
}

#[tokio::test]
async fn single_part_206_to_a_two_span_request_is_fatal() {
    let (server, http, info) = setup(Mode::SinglePartFirst).await;
    let want = [Span::new(0, 10), Span::new(20, 30)];
    let err = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap_err();
    assert_mismatch(&err);
    // A plain 206 for the hull: the server merged the two ranges.
    *server.state.mode.lock().unwrap() = Mode::SinglePartHull;
    let err = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap_err();
    assert_mismatch(&err);
    assert!(err.message.contains("coalesced"), "{err}");
}

#[tokio::test]
async fn one_span_takes_a_plain_206() {
    let (server, http, info) = setup(Mode::Nginx).await;
    let want = [Span::new(12_345, 67_890)];
    let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
    assert!(!body.is_multipart());
    let (pieces, err) = read_all(&mut body).await;
    assert!(err.is_none(), "{err:?}");
    assert_exact(&pieces, &want, &server.state.data);
    assert_eq!(server.last_headers()[header::RANGE], "bytes=12345-67889");
}

#[tokio::test]
async fn a_200_is_insufficient_range_support() {
    let (server, http, info) = setup(Mode::Full).await;
    let want = [Span::new(0, 10), Span::new(20, 30)];
    let err = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap_err();
    assert_no_range_support(&err);
    // Even a job that may fall back cannot take a 200 for several spans.
    let err = http.get_ranges_opts(&info, &want, &RequestOptions::default()).await.unwrap_err();
    assert_no_range_support(&err);
    // One span: exactly get_range_opts's rules.
    let one = [Span::new(0, 10)];
    let err = http.get_ranges_opts(&info, &one, &no_fallback()).await.unwrap_err();
    assert_no_range_support(&err);
    let whole = [Span::new(0, SIZE as u64)];
    let mut body = http.get_ranges_opts(&info, &whole, &RequestOptions::default()).await.unwrap();
    let (pieces, err) = read_all(&mut body).await;
    assert!(err.is_none(), "{err:?}");
    assert_exact(&pieces, &whole, &server.state.data);
}

#[tokio::test]
async fn a_200_for_another_version_restarts_the_file() {
    let (_server, http, mut info) = setup(Mode::Full).await;
    info.validator.etag = Some("\"older\"".into());
    let want = [Span::new(0, 10), Span::new(20, 30)];
    let err = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap_err();
    assert_err(&err, FetchErrorKind::RemoteChanged, Code::BG_E_REMOTE_FILE_CHANGED, false);
    assert!(err.restarts_file());
}

#[tokio::test]
async fn truncated_body_is_transient_and_keeps_earlier_parts() {
    let (server, http, info) = setup(Mode::Truncated).await;
    *server.state.chunk.lock().unwrap() = 64;
    let want = spans(4, 1000, 500, 1000);
    let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
    let (pieces, err) = read_all(&mut body).await;
    assert_cut_in_the_third_part(&pieces, err, &want, &server.state.data);
}

/// What a body cut inside the third of `want`'s four 500-byte parts delivers: a transient
/// connection error, the first two parts whole, the start of the third, nothing of the fourth.
fn assert_cut_in_the_third_part(
    pieces: &[(u64, Bytes)],
    err: Option<FetchError>,
    want: &[Span],
    data: &[u8],
) {
    assert_err(
        &err.unwrap(),
        FetchErrorKind::Transport,
        Code::ERROR_WINHTTP_CONNECTION_ERROR,
        true,
    );
    let third = runs(pieces)[&want[2].start].len() as u64;
    assert!(third > 0 && third < want[2].len(), "{third}");
    assert_exact(
        pieces,
        &[want[0], want[1], Span::new(want[2].start, want[2].start + third)],
        data,
    );
}

#[tokio::test]
async fn body_ending_cleanly_before_the_last_part_is_transient() {
    // The same cut, but the server ends the body (chunked framing) instead of breaking it.
    let (server, http, info) = setup(Mode::EndsEarly).await;
    let want = spans(4, 1000, 500, 1000);
    let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
    let (pieces, err) = read_all(&mut body).await;
    assert_cut_in_the_third_part(&pieces, err, &want, &server.state.data);
}

#[tokio::test]
async fn wrong_total_is_remote_changed() {
    let (_server, http, info) = setup(Mode::WrongTotal).await;
    let want = spans(3, 0, 10, 20);
    let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
    let (pieces, err) = read_all(&mut body).await;
    assert!(pieces.is_empty());
    let err = err.unwrap();
    assert_err(&err, FetchErrorKind::RemoteChanged, Code::BG_E_REMOTE_FILE_CHANGED, false);
    assert!(err.restarts_file());
}

#[tokio::test]
async fn encoded_or_malformed_multipart_is_a_transient_invalid_response() {
    let (server, http, info) = setup(Mode::Gzip).await;
    let want = spans(3, 0, 10, 20);
    let err = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap_err();
    assert_err(
        &err,
        FetchErrorKind::InvalidResponse,
        Code::ERROR_WINHTTP_INVALID_SERVER_RESPONSE,
        true,
    );
    *server.state.mode.lock().unwrap() = Mode::BareLf;
    let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
    let err = read_all(&mut body).await.1.unwrap();
    assert_err(
        &err,
        FetchErrorKind::InvalidResponse,
        Code::ERROR_WINHTTP_INVALID_SERVER_RESPONSE,
        true,
    );
    assert_eq!(err.context, ErrorContext::GeneralTransport);
}

#[tokio::test]
async fn silence_between_parts_times_out() {
    let server = start(Mode::Stall).await;
    let http = HttpClient::new(HttpConfig {
        idle_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    })
    .unwrap();
    let info = http.probe(&server.url()).await.unwrap();
    let want = spans(3, 0, 10, 20);
    let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
    let (pieces, err) = read_all(&mut body).await;
    assert_exact(&pieces, &want[..1], &server.state.data);
    assert_err(&err.unwrap(), FetchErrorKind::Timeout, Code::ERROR_WINHTTP_TIMEOUT, true);
}

#[tokio::test]
async fn bad_span_lists_are_invalid_range_without_a_request() {
    let (server, http, info) = setup(Mode::Nginx).await;
    let before = server.state.seen.lock().unwrap().len();
    let size = SIZE as u64;
    let too_many = spans(MAX_SPANS_PER_REQUEST as u64 + 1, 0, 1, 2);
    let bad: [&[Span]; 7] = [
        &[],
        &[Span::new(20, 30), Span::new(0, 10)],
        &[Span::new(0, 10), Span::new(5, 15)],
        &[Span::new(0, 10), Span::new(10, 20)],
        &[Span::new(0, 10), Span::new(20, 20)],
        &[Span::new(0, 10), Span::new(size - 5, size + 1)],
        &too_many,
    ];
    for spans in bad {
        let err = http.get_ranges_opts(&info, spans, &no_fallback()).await.unwrap_err();
        assert_err(&err, FetchErrorKind::InvalidRange, Code::BG_E_INVALID_RANGE, false);
    }
    assert_eq!(server.state.seen.lock().unwrap().len(), before);
}

#[tokio::test]
async fn connection_is_reused_after_a_multipart_body() {
    let (server, http, info) = setup(Mode::Nginx).await;
    let want = spans(8, 0, 10, 100);
    for _ in 0..3 {
        let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
        let (pieces, err) = read_all(&mut body).await;
        assert!(err.is_none(), "{err:?}");
        assert_exact(&pieces, &want, &server.state.data);
    }
    // The probe and the three GETs over one keep-alive connection: each body was read to its end.
    assert_eq!(server.state.connections.load(Ordering::SeqCst), 1);
}
