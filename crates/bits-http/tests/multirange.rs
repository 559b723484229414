//! `HttpClient::get_ranges_opts` against the bits-testkit server answering multi-range requests
//! the way nginx does (a `multipart/byteranges` 206, parts in request order, a plain 206 for one
//! range) or misbehaving in one specific way per test (a `Fault`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use bits_core::{Code, ErrorContext, Span};
use bits_http::{
    FetchError, FetchErrorKind, HttpClient, HttpConfig, MAX_SPANS_PER_REQUEST, MultiRangeBody,
    RemoteInfo, RequestOptions,
};
use bits_testkit::data::random_bytes;
use bits_testkit::faults::{CutEnd, PartCut, Parts};
use bytes::Bytes;
use common::{Fault, FaultFile, FaultServer, LAST_MODIFIED, client, set_fault};
use http::{HeaderMap, header};

const SIZE: usize = 200_000;
const ETAG: &str = "\"mr1\"";

static DATA: LazyLock<Bytes> = LazyLock::new(|| random_bytes(2, SIZE).into());

/// A server that answers several ranges like nginx (parts in request order, a plain 206 for
/// one range) and refuses a `Range` it cannot parse (a bug in the client), with `fault` on
/// every GET of `/file`.
async fn start(fault: Option<Fault>) -> FaultServer {
    let server = FaultServer::start().await;
    let last_modified = httpdate::parse_http_date(LAST_MODIFIED).unwrap();
    let file = FaultFile {
        data: DATA.clone(),
        etag: Some(ETAG.into()),
        last_modified: Some(last_modified),
    };
    server.put_file("file", file);
    server.set_multi_range(true);
    server.set_strict_ranges(true);
    set_fault(&server, fault);
    server
}

fn last_headers(server: &FaultServer) -> HeaderMap {
    server.log().pop().unwrap().headers
}

/// Multipart cut halfway through its third part.
const CUT_IN_THE_THIRD: PartCut = PartCut::Inside(2);

fn no_fallback() -> RequestOptions {
    RequestOptions { allow_full_response: false, ..RequestOptions::default() }
}

/// `count` spans of `len` bytes, `stride` apart, starting at `first`.
fn spans(count: u64, first: u64, len: u64, stride: u64) -> Vec<Span> {
    (0..count).map(|i| Span::new(first + i * stride, first + i * stride + len)).collect()
}

/// What a multi-range GET of `want` (no fallback to a 200) delivers, read to its end.
async fn fetch(
    http: &HttpClient,
    info: &RemoteInfo,
    want: &[Span],
) -> (Vec<(u64, Bytes)>, Option<FetchError>) {
    let mut body = http.get_ranges_opts(info, want, &no_fallback()).await.unwrap();
    read_all(&mut body).await
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

async fn setup(fault: Option<Fault>) -> (FaultServer, HttpClient, RemoteInfo) {
    let server = start(fault).await;
    let http = client();
    let info = http.probe(&server.url("file")).await.unwrap();
    assert_eq!(info.size, SIZE as u64);
    (server, http, info)
}

#[tokio::test]
async fn three_spans_multipart_exact_bytes_at_exact_offsets() {
    let (server, http, info) = setup(None).await;
    let want = [Span::new(0, 10), Span::new(20, 30), Span::new(1000, 5000)];
    for chunk in [usize::MAX, 1, 7, 4096] {
        server.set_chunk(chunk);
        let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
        assert!(body.is_multipart());
        let (pieces, err) = read_all(&mut body).await;
        assert!(err.is_none(), "chunk {chunk}: {err:?}");
        assert_exact(&pieces, &want, &DATA);
        assert_eq!(body.received(), 10 + 10 + 4000);
        assert_eq!(body.next_chunk().await.unwrap(), None);
    }
    let headers = last_headers(&server);
    assert_eq!(headers[header::RANGE], "bytes=0-9,20-29,1000-4999");
    assert_eq!(headers[header::IF_RANGE], ETAG);
    assert_eq!(headers[header::ACCEPT_ENCODING], "identity");
}

#[tokio::test]
async fn sixty_four_spans_multipart() {
    let (server, http, info) = setup(None).await;
    let want = spans(MAX_SPANS_PER_REQUEST as u64, 5, 100, 3000);
    for chunk in [usize::MAX, 333] {
        server.set_chunk(chunk);
        let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
        let (pieces, err) = read_all(&mut body).await;
        assert!(err.is_none(), "{err:?}");
        assert_exact(&pieces, &want, &DATA);
        assert_eq!(body.received(), 64 * 100);
    }
    // The spans up to the file's last byte.
    let tail = [Span::new(0, 1), Span::new(SIZE as u64 - 4096, SIZE as u64)];
    let (pieces, err) = fetch(&http, &info, &tail).await;
    assert!(err.is_none(), "{err:?}");
    assert_exact(&pieces, &tail, &DATA);
}

#[tokio::test]
async fn parts_in_another_order_are_accepted() {
    let (server, http, info) = setup(Some(Fault::Parts(Parts::Reversed))).await;
    server.set_chunk(50);
    let want = spans(5, 100, 300, 1000);
    let (pieces, err) = fetch(&http, &info, &want).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(pieces[0].0, 4100, "the last span came first");
    assert_exact(&pieces, &want, &DATA);
}

#[tokio::test]
async fn coalesced_parts_are_a_fatal_invalid_server_response() {
    let (_server, http, info) = setup(Some(Fault::Parts(Parts::CoalesceFirstTwo))).await;
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
async fn repeated_parts_are_fatal() {
    let (_server, http, info) = setup(Some(Fault::Parts(Parts::FirstTwice))).await;
    let want = spans(3, 0, 10, 20);
    let (pieces, err) = fetch(&http, &info, &want).await;
    assert_eq!(runs(&pieces).len(), 1, "the first part was delivered once");
    assert_mismatch(&err.unwrap());
}

/// Fewer parts than asked (RFC 9110 §15.3.7.2; issue 16 reversed the rule that made it fatal):
/// the parts that came are delivered exactly, the body ends without an error, the spans left
/// out are named, and the origin's limit is what it sent.
#[tokio::test]
async fn fewer_parts_than_asked_end_the_body_and_name_the_rest() {
    let (_server, http, info) = setup(Some(Fault::Parts(Parts::LastMissing))).await;
    assert_eq!(http.parts_per_request(&info.final_url), MAX_SPANS_PER_REQUEST);
    let want = spans(3, 0, 10, 20);
    let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
    assert!(body.missing().is_empty(), "nothing is known missing before the end");
    let (pieces, err) = read_all(&mut body).await;
    assert!(err.is_none(), "{err:?}");
    assert_exact(&pieces, &want[..2], &DATA);
    assert_eq!(body.missing(), &want[2..]);
    assert_eq!(http.parts_per_request(&info.final_url), 2);
    // A full answer leaves the limit where it is and misses nothing.
    let (_server, http, info) = setup(None).await;
    let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
    let (pieces, err) = read_all(&mut body).await;
    assert!(err.is_none() && body.missing().is_empty(), "{err:?}");
    assert_exact(&pieces, &want, &DATA);
    assert_eq!(http.parts_per_request(&info.final_url), MAX_SPANS_PER_REQUEST);
}

#[tokio::test]
async fn single_part_206_to_a_two_span_request_is_fatal() {
    let (server, http, info) = setup(Some(Fault::FirstRangeOnly)).await;
    let want = [Span::new(0, 10), Span::new(20, 30)];
    let err = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap_err();
    assert_mismatch(&err);
    // A plain 206 for the hull: the server merged the two ranges.
    set_fault(&server, Some(Fault::RangesHull));
    let err = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap_err();
    assert_mismatch(&err);
    assert!(err.message.contains("coalesced"), "{err}");
}

#[tokio::test]
async fn one_span_takes_a_plain_206() {
    let (server, http, info) = setup(None).await;
    let want = [Span::new(12_345, 67_890)];
    let mut body = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap();
    assert!(!body.is_multipart());
    let (pieces, err) = read_all(&mut body).await;
    assert!(err.is_none(), "{err:?}");
    assert_exact(&pieces, &want, &DATA);
    assert_eq!(last_headers(&server)[header::RANGE], "bytes=12345-67889");
}

#[tokio::test]
async fn a_200_is_insufficient_range_support() {
    let (_server, http, info) = setup(Some(Fault::IgnoreRange)).await;
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
    assert_exact(&pieces, &whole, &DATA);
}

#[tokio::test]
async fn a_200_for_another_version_restarts_the_file() {
    let (_server, http, mut info) = setup(Some(Fault::IgnoreRange)).await;
    info.validator.etag = Some("\"older\"".into());
    let want = [Span::new(0, 10), Span::new(20, 30)];
    let err = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap_err();
    assert_err(&err, FetchErrorKind::RemoteChanged, Code::BG_E_REMOTE_FILE_CHANGED, false);
    assert!(err.restarts_file());
}

#[tokio::test]
async fn truncated_body_is_transient_and_keeps_earlier_parts() {
    let (server, http, info) =
        setup(Some(Fault::CutParts { at: CUT_IN_THE_THIRD, end: CutEnd::Close })).await;
    server.set_chunk(64);
    let want = spans(4, 1000, 500, 1000);
    let (pieces, err) = fetch(&http, &info, &want).await;
    assert_cut_in_the_third_part(&pieces, err, &want, &DATA);
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
    let (_server, http, info) =
        setup(Some(Fault::CutParts { at: CUT_IN_THE_THIRD, end: CutEnd::End })).await;
    let want = spans(4, 1000, 500, 1000);
    let (pieces, err) = fetch(&http, &info, &want).await;
    assert_cut_in_the_third_part(&pieces, err, &want, &DATA);
}

#[tokio::test]
async fn wrong_total_is_remote_changed() {
    let (_server, http, info) = setup(Some(Fault::Parts(Parts::WrongTotal))).await;
    let want = spans(3, 0, 10, 20);
    let (pieces, err) = fetch(&http, &info, &want).await;
    assert!(pieces.is_empty());
    let err = err.unwrap();
    assert_err(&err, FetchErrorKind::RemoteChanged, Code::BG_E_REMOTE_FILE_CHANGED, false);
    assert!(err.restarts_file());
}

#[tokio::test]
async fn encoded_or_malformed_multipart_is_a_transient_invalid_response() {
    let (server, http, info) = setup(Some(Fault::GzipLabel)).await;
    let want = spans(3, 0, 10, 20);
    let err = http.get_ranges_opts(&info, &want, &no_fallback()).await.unwrap_err();
    assert_err(
        &err,
        FetchErrorKind::InvalidResponse,
        Code::ERROR_WINHTTP_INVALID_SERVER_RESPONSE,
        true,
    );
    set_fault(&server, Some(Fault::Parts(Parts::BareLf)));
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
    let server = start(Some(Fault::CutParts {
        at: PartCut::Before(1),
        end: CutEnd::Stall(Duration::from_secs(30)),
    }))
    .await;
    let http = HttpClient::new(HttpConfig {
        idle_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    })
    .unwrap();
    let info = http.probe(&server.url("file")).await.unwrap();
    let want = spans(3, 0, 10, 20);
    let (pieces, err) = fetch(&http, &info, &want).await;
    assert_exact(&pieces, &want[..1], &DATA);
    assert_err(&err.unwrap(), FetchErrorKind::Timeout, Code::ERROR_WINHTTP_TIMEOUT, true);
}

#[tokio::test]
async fn bad_span_lists_are_invalid_range_without_a_request() {
    let (server, http, info) = setup(None).await;
    let before = server.log().len();
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
    assert_eq!(server.log().len(), before);
}

#[tokio::test]
async fn connection_is_reused_after_a_multipart_body() {
    let (server, http, info) = setup(None).await;
    let want = spans(8, 0, 10, 100);
    for _ in 0..3 {
        let (pieces, err) = fetch(&http, &info, &want).await;
        assert!(err.is_none(), "{err:?}");
        assert_exact(&pieces, &want, &DATA);
    }
    // The probe and the three GETs over one keep-alive connection: each body was read to its end.
    assert_eq!(server.connections(), 1);
}
