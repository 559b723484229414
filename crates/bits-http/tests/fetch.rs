//! The fetcher against the bits-testkit server (HTTP/1.1), serving a file correctly or misbehaving in
//! one specific way per test; each test asserts the exact kind, BITS code and transient flag.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bits_core::{Code, ErrorContext, Span};
use bits_http::{FetchError, FetchErrorKind, HttpClient, RemoteInfo};
use common::{
    DATA, Fault, FaultServer, HEAD, LAST_MODIFIED, SIZE, client, client_with, file, last, read_all,
    set_fault, start, start_with,
};
use http::{Method, header};

fn assert_err(err: &FetchError, kind: FetchErrorKind, code: Code, transient: bool) {
    assert_eq!((err.kind, err.code, err.transient), (kind, code, transient), "{err}");
}

/// A broken answer the client cannot take but may get right on a retry.
fn assert_invalid_response(err: &FetchError) {
    assert_err(
        err,
        FetchErrorKind::InvalidResponse,
        Code::ERROR_WINHTTP_INVALID_SERVER_RESPONSE,
        true,
    );
}

/// How a GET of `span` fails when `/file` answers it with `fault`.
async fn get_err(fault: Fault, span: Span) -> FetchError {
    let (_server, http, info) = probed(Some(fault)).await;
    http.get_range(&info, span).await.unwrap_err()
}

/// A server whose `/file` answers GETs with `fault`, the test client, and what it learned
/// probing `/file`.
async fn probed(fault: Option<Fault>) -> (FaultServer, HttpClient, RemoteInfo) {
    let server = start().await;
    set_fault(&server, fault);
    let http = client();
    let info = http.probe(&server.url("/file")).await.unwrap();
    (server, http, info)
}

async fn probe_ok(url: &str) -> RemoteInfo {
    client().probe(url).await.unwrap()
}

#[tokio::test]
async fn probe_learns_size_and_validators() {
    let server = start().await;
    let info = probe_ok(&server.url("/file")).await;
    assert_eq!(info.final_url, server.url("/file"));
    assert_eq!(info.size, SIZE as u64);
    assert_eq!(info.validator.etag.as_deref(), Some("\"v1\""));
    assert_eq!(info.validator.last_modified.as_deref(), Some(LAST_MODIFIED));
    assert_eq!(info.last_modified, httpdate::parse_http_date(LAST_MODIFIED).ok());
    assert!(info.accept_ranges);
    let head = last(&server);
    assert_eq!(head.method, Method::HEAD);
    assert_eq!(head.headers[header::ACCEPT_ENCODING], "identity");
    assert!(head.headers[header::USER_AGENT].to_str().unwrap().starts_with("bitsd/"));
}

#[tokio::test]
async fn whole_file_via_206() {
    let (server, http, info) = probed(None).await;
    let mut body = http.get_range(&info, Span::new(0, info.size)).await.unwrap();
    assert_eq!(body.span(), Span::new(0, SIZE as u64));
    assert_eq!(read_all(&mut body).await.unwrap(), *DATA);
    assert_eq!(body.next_chunk().await.unwrap(), None);
    let get = last(&server);
    assert_eq!(get.method, Method::GET);
    assert_eq!(get.headers[header::RANGE], format!("bytes=0-{}", SIZE - 1));
    assert_eq!(get.headers[header::IF_RANGE], "\"v1\"");
    assert_eq!(get.headers[header::ACCEPT_ENCODING], "identity");
    assert!(!get.headers.contains_key(header::AUTHORIZATION));
}

#[tokio::test]
async fn fetch_whole_probes_and_streams_in_one_request() {
    let server = start().await;
    let http = client();
    let before = server.log().len();
    let opts = bits_http::RequestOptions::default();
    let (info, Some(mut body)) = http.fetch_whole_opts(&server.url("/file"), &opts).await.unwrap()
    else {
        panic!("a file with bytes has a body to stream")
    };
    assert_eq!(info.size, SIZE as u64);
    assert_eq!(info.validator.etag.as_deref(), Some("\"v1\""));
    assert_eq!(info.validator.last_modified.as_deref(), Some(LAST_MODIFIED));
    assert!(info.same_origin && !info.redirected);
    assert_eq!(read_all(&mut body).await.unwrap(), *DATA);
    let seen = server.log();
    assert_eq!(seen.len() - before, 1, "one request, no HEAD");
    let get = last(&server);
    assert_eq!(get.method, Method::GET);
    assert_eq!(get.headers[header::RANGE], "bytes=0-");
    assert!(!get.headers.contains_key(header::IF_RANGE), "nothing to continue yet");
}

#[tokio::test]
async fn fetch_whole_takes_a_200_only_where_a_full_response_is_allowed() {
    let server = start_with(Fault::IgnoreRange).await;
    let http = client();
    let mut opts = bits_http::RequestOptions { allow_full_response: false, ..Default::default() };
    let err = http.fetch_whole_opts(&server.url("/file"), &opts).await.unwrap_err();
    assert_eq!(err.code, Code::BG_E_INSUFFICIENT_RANGE_SUPPORT, "{err}");
    opts.allow_full_response = true;
    let (info, Some(mut body)) = http.fetch_whole_opts(&server.url("/file"), &opts).await.unwrap()
    else {
        panic!("a file with bytes has a body to stream")
    };
    assert_eq!(info.size, SIZE as u64);
    assert_eq!(read_all(&mut body).await.unwrap(), *DATA);
}

#[tokio::test]
async fn fetch_whole_checks_the_206_like_any_range() {
    let server = start_with(Fault::ShiftedContentRange).await;
    let opts = bits_http::RequestOptions::default();
    let err = client().fetch_whole_opts(&server.url("/file"), &opts).await.unwrap_err();
    assert_eq!(err.kind, FetchErrorKind::InvalidResponse, "{err}");
}

#[tokio::test]
async fn middle_span_via_206_streams_in_chunks() {
    let (server, http, info) = probed(None).await;
    let span = Span::new(1234, 56789);
    let mut body = http.get_range(&info, span).await.unwrap();
    let got = read_all(&mut body).await.unwrap();
    assert_eq!(got, &DATA[1234..56789]);
    assert_eq!(body.received(), span.len());
    assert_eq!(last(&server).headers[header::RANGE], "bytes=1234-56788");
    // The last byte alone.
    let mut body = http.get_range(&info, Span::new(SIZE as u64 - 1, SIZE as u64)).await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), &DATA[SIZE - 1..]);
}

#[tokio::test]
async fn connections_are_reused_across_clones() {
    let (server, http, info) = probed(None).await;
    for i in 0..3u64 {
        let clone = http.clone();
        let mut body = clone.get_range(&info, Span::new(i * 100, i * 100 + 50)).await.unwrap();
        read_all(&mut body).await.unwrap();
    }
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn whole_file_via_200_when_range_is_ignored() {
    let (_server, http, info) = probed(Some(Fault::IgnoreRange)).await;
    let mut body = http.get_range(&info, Span::new(0, info.size)).await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), *DATA);
}

#[tokio::test]
async fn partial_span_with_range_ignored_is_insufficient_range_support() {
    let err = get_err(Fault::IgnoreRange, Span::new(10, 20)).await;
    assert_err(
        &err,
        FetchErrorKind::RangeNotSupported,
        Code::BG_E_INSUFFICIENT_RANGE_SUPPORT,
        false,
    );
    assert_eq!(err.context, ErrorContext::RemoteFile);
}

#[tokio::test]
async fn wrong_content_range_is_invalid_response() {
    let err = get_err(Fault::ShiftedContentRange, Span::new(10, 20)).await;
    assert_invalid_response(&err);
}

#[tokio::test]
async fn short_body_then_close_is_a_connection_error() {
    let (_server, http, info) = probed(Some(Fault::ShortBody(500))).await;
    let mut body = http.get_range(&info, Span::new(0, 1000)).await.unwrap();
    let mut got = Vec::new();
    let err = loop {
        match body.next_chunk().await {
            Ok(Some(chunk)) => got.extend_from_slice(&chunk),
            Ok(None) => panic!("short body accepted"),
            Err(err) => break err,
        }
    };
    assert_eq!(got, &DATA[..500]);
    assert_err(&err, FetchErrorKind::Transport, Code::ERROR_WINHTTP_CONNECTION_ERROR, true);
    assert_eq!(err.context, ErrorContext::GeneralTransport);
}

#[tokio::test]
async fn stalled_body_times_out() {
    let server = start_with(Fault::StallBody { after: 500, stall: Duration::from_secs(30) }).await;
    let http = client_with(|c| c.idle_timeout = Duration::from_millis(300));
    let info = http.probe(&server.url("/file")).await.unwrap();
    let mut body = http.get_range(&info, Span::new(0, 1000)).await.unwrap();
    assert_eq!(body.next_chunk().await.unwrap().unwrap(), &DATA[..500]);
    let started = Instant::now();
    let err = body.next_chunk().await.unwrap_err();
    assert_err(&err, FetchErrorKind::Timeout, Code::ERROR_WINHTTP_TIMEOUT, true);
    assert_eq!(err.context, ErrorContext::GeneralTransport);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(3), "{waited:?}");
}

#[tokio::test]
async fn stalled_headers_time_out() {
    let server = start().await;
    let http = client_with(|c| {
        c.idle_timeout = Duration::from_millis(300);
        c.connect_timeout = Duration::from_millis(300);
    });
    let info = http.probe(&server.url("/file")).await.unwrap();
    set_fault(&server, Some(Fault::StallHeaders(Duration::from_secs(30))));
    let started = Instant::now();
    let err = http.get_range(&info, Span::new(0, 10)).await.unwrap_err();
    assert_err(&err, FetchErrorKind::Timeout, Code::ERROR_WINHTTP_TIMEOUT, true);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn http_statuses_are_classified() {
    let (server, http, info) = probed(None).await;
    let span = Span::new(0, 10);
    for (code, transient) in
        [(404, false), (403, false), (500, true), (501, false), (429, true), (408, true)]
    {
        set_fault(&server, Some(Fault::Status(code)));
        let err = http.get_range(&info, span).await.unwrap_err();
        assert_err(&err, FetchErrorKind::Http(code), Code::Http(code), transient);
        assert_eq!(err.context, ErrorContext::RemoteFile);
    }
    set_fault(&server, Some(Fault::StatusRetryAfter(503, 3)));
    let err = http.get_range(&info, span).await.unwrap_err();
    assert_err(&err, FetchErrorKind::Http(503), Code::Http(503), true);
    assert_eq!(err.retry_after, Some(Duration::from_secs(3)));
    set_fault(&server, Some(Fault::Status(412)));
    let err = http.get_range(&info, span).await.unwrap_err();
    assert_err(&err, FetchErrorKind::RemoteChanged, Code::BG_E_REMOTE_FILE_CHANGED, false);
    assert!(err.restarts_file());
    // A missing file fails the probe with the same classification.
    let err = http.probe(&server.url("/missing")).await.unwrap_err();
    assert_err(&err, FetchErrorKind::Http(404), Code::Http(404), false);
}

#[tokio::test]
async fn range_past_the_end_is_invalid_range() {
    let (server, http, info) = probed(None).await;
    // The file shrank behind our back: the server answers 416.
    let stale = RemoteInfo { size: 2 * SIZE as u64, validator: Default::default(), ..info.clone() };
    let err =
        http.get_range(&stale, Span::new(SIZE as u64 + 10, SIZE as u64 + 20)).await.unwrap_err();
    assert_err(&err, FetchErrorKind::InvalidRange, Code::BG_E_INVALID_RANGE, false);
    // Asking past the probed size never reaches the server.
    let before = server.log().len();
    for span in [Span::new(0, SIZE as u64 + 1), Span::new(5, 5)] {
        let err = http.get_range(&info, span).await.unwrap_err();
        assert_err(&err, FetchErrorKind::InvalidRange, Code::BG_E_INVALID_RANGE, false);
    }
    assert_eq!(server.log().len(), before);
}

#[tokio::test]
async fn head_without_content_length_is_missing_file_size() {
    let server = start().await;
    server.always("file", HEAD, Fault::NoLength);
    let err = client().probe(&server.url("/file")).await.unwrap_err();
    assert_err(&err, FetchErrorKind::MissingSize, Code::BG_E_MISSING_FILE_SIZE, false);
    assert_eq!(err.context, ErrorContext::RemoteFile);
}

#[tokio::test]
async fn head_refused_falls_back_to_a_one_byte_get() {
    for refusal in [405, 501] {
        let server = start().await;
        server.always("file", HEAD, Fault::Status(refusal));
        let http = client();
        let info = http.probe(&server.url("/file")).await.unwrap();
        assert_eq!(info.size, SIZE as u64);
        assert_eq!(info.validator.etag.as_deref(), Some("\"v1\""));
        assert!(info.accept_ranges);
        let seen = server.log();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].method, Method::GET);
        assert_eq!(seen[1].headers[header::RANGE], "bytes=0-0");
        let mut body = http.get_range(&info, Span::new(100, 200)).await.unwrap();
        assert_eq!(read_all(&mut body).await.unwrap(), &DATA[100..200]);
    }
}

/// S3 presigned GET URLs answer 403 to HEAD; other servers 405 or 501. Opening the file for a
/// transfer then probes with the whole-file GET, whose body is the file; a caller that will not
/// stream it (bytes on disk, or ranges) gets the one-byte probe and no body.
#[tokio::test]
async fn open_probes_with_a_whole_file_get_where_head_is_refused() {
    for refusal in [403, 405, 501] {
        let server = start().await;
        server.always("file", HEAD, Fault::Status(refusal));
        let http = client();
        let opts = bits_http::RequestOptions::default();
        let (info, Some(mut body)) =
            http.open_opts(&server.url("/file"), &opts, true).await.unwrap()
        else {
            panic!("{refusal}: no body to stream")
        };
        assert_eq!((info.size, info.validator.etag.as_deref()), (SIZE as u64, Some("\"v1\"")));
        assert_eq!(read_all(&mut body).await.unwrap(), *DATA, "{refusal}");
        let seen = server.log();
        let asked: Vec<_> = seen
            .iter()
            .map(|r| (r.method.clone(), r.headers.get(header::RANGE).cloned()))
            .collect();
        assert_eq!(
            asked,
            [
                (Method::HEAD, None),
                (Method::GET, Some(header::HeaderValue::from_static("bytes=0-")))
            ],
            "{refusal}"
        );
        let (info, body) = http.open_opts(&server.url("/file"), &opts, false).await.unwrap();
        assert_eq!((info.size, info.validator.etag.as_deref()), (SIZE as u64, Some("\"v1\"")));
        assert!(body.is_none(), "{refusal}: a body nobody streams");
        let last = server.log().pop().unwrap();
        assert_eq!(
            (last.method, last.headers.get(header::RANGE).cloned()),
            (Method::GET, Some(header::HeaderValue::from_static("bytes=0-0"))),
            "{refusal}"
        );
    }
}

/// A HEAD without a size (Apache's for an empty file) is asked again with the whole-file GET;
/// an empty file has no body, a full one streams from that GET; a HEAD that gives the size is
/// all there is.
#[tokio::test]
async fn open_probes_with_a_whole_file_get_where_head_gives_no_size() {
    let server = start().await;
    server.always("file", HEAD, Fault::NoLength);
    server.add_file("empty", bytes::Bytes::new());
    server.always("empty", HEAD, Fault::NoLength);
    let http = client();
    let opts = bits_http::RequestOptions::default();
    let (info, body) = http.open_opts(&server.url("/empty"), &opts, true).await.unwrap();
    assert_eq!(info.size, 0);
    assert!(body.is_none());
    let (info, body) = http.open_opts(&server.url("/file"), &opts, true).await.unwrap();
    assert_eq!(info.size, SIZE as u64);
    assert_eq!(read_all(&mut body.unwrap()).await.unwrap(), *DATA);
    let methods: Vec<_> = server.log().iter().map(|r| r.method.clone()).collect();
    assert_eq!(methods, [Method::HEAD, Method::GET, Method::HEAD, Method::GET]);
    server.clear_faults("file");
    let before = server.log().len();
    let (info, body) = http.open_opts(&server.url("/file"), &opts, true).await.unwrap();
    assert!(info.size == SIZE as u64 && body.is_none());
    assert_eq!(server.log().len() - before, 1, "only the HEAD");
    // A refusal that is not about HEAD stays an error, without a GET.
    server.always("file", HEAD, Fault::Status(404));
    let err = http.open_opts(&server.url("/file"), &opts, true).await.unwrap_err();
    assert_eq!(err.code, Code::Http(404));
    assert_eq!(server.log().len() - before, 2);
    // Not to be streamed: the one-byte probe, which an empty file answers too.
    for (path, size) in [("/empty", 0), ("/file", SIZE as u64)] {
        server.clear_faults(path.trim_start_matches('/'));
        server.always(path.trim_start_matches('/'), HEAD, Fault::NoLength);
        let (info, body) = http.open_opts(&server.url(path), &opts, false).await.unwrap();
        assert!(info.size == size && body.is_none(), "{path}");
        let last = server.log().pop().unwrap();
        assert_eq!(last.headers.get(header::RANGE).unwrap(), "bytes=0-0", "{path}");
    }
}

#[tokio::test]
async fn redirects_are_followed_for_head_and_get() {
    let server = start().await;
    let http = client();
    // Relative Location with dot segments.
    let info = http.probe(&server.url("/dir/sub/start")).await.unwrap();
    assert_eq!(info.final_url, server.url("/file"));
    // A chain of 10 (the default limit) mixing 307 and 301.
    let info = http.probe(&server.url("/chain/9")).await.unwrap();
    assert_eq!(info.final_url, server.url("/file"));
    assert_eq!(info.size, SIZE as u64);
    // 303 keeps HEAD as HEAD.
    let info = http.probe(&server.url("/see-other")).await.unwrap();
    assert_eq!(info.final_url, server.url("/file"));
    assert!(server.log().iter().all(|s| s.method == Method::HEAD));
    // GET follows redirects too.
    let via = RemoteInfo { final_url: server.url("/chain/2"), ..info };
    let mut body = http.get_range(&via, Span::new(7, 70)).await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), &DATA[7..70]);
    let last = last(&server);
    assert_eq!((last.method, last.path.as_str()), (Method::GET, "/file"));
    assert_eq!(last.headers[header::RANGE], "bytes=7-69");
}

#[tokio::test]
async fn bad_redirects_fail() {
    let server = start().await;
    let http = client();
    for path in ["/loop/a", "/chain/10", "/no-location"] {
        let err = http.probe(&server.url(path)).await.unwrap_err();
        assert_err(&err, FetchErrorKind::Redirect, Code::ERROR_WINHTTP_REDIRECT_FAILED, false);
    }
    let strict = client_with(|c| c.max_redirects = 3);
    assert!(strict.probe(&server.url("/chain/2")).await.is_ok());
    let err = strict.probe(&server.url("/chain/3")).await.unwrap_err();
    assert_err(&err, FetchErrorKind::Redirect, Code::ERROR_WINHTTP_REDIRECT_FAILED, false);
    let err = http.probe(&server.url("/ftp")).await.unwrap_err();
    assert_err(&err, FetchErrorKind::BadUrl, Code::E_INVALIDARG, false);
}

#[tokio::test]
async fn changed_etag_restarts_the_file() {
    let (server, http, info) = probed(None).await;
    server.put_file("file", file("\"v2\""));
    for span in [Span::new(10, 20), Span::new(0, SIZE as u64)] {
        let err = http.get_range(&info, span).await.unwrap_err();
        assert_err(&err, FetchErrorKind::RemoteChanged, Code::BG_E_REMOTE_FILE_CHANGED, false);
        assert!(err.restarts_file());
        assert_eq!(last(&server).headers[header::IF_RANGE], "\"v1\"");
    }
    // A fresh probe sees the new version and fetching works again.
    let info = http.probe(&server.url("/file")).await.unwrap();
    assert_eq!(info.validator.etag.as_deref(), Some("\"v2\""));
    let mut body = http.get_range(&info, Span::new(10, 20)).await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), &DATA[10..20]);
}

#[tokio::test]
async fn compressed_bodies_are_refused() {
    let err = get_err(Fault::GzipLabel, Span::new(0, 100)).await;
    assert_invalid_response(&err);
}

#[tokio::test]
async fn body_longer_than_the_span_is_invalid() {
    let (_server, http, info) = probed(Some(Fault::ExtraBytes(10))).await;
    let mut body = http.get_range(&info, Span::new(0, 100)).await.unwrap();
    let err = read_all(&mut body).await.unwrap_err();
    assert_invalid_response(&err);
}

#[tokio::test]
async fn transport_failures() {
    // Connection refused: a port that was just freed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let err = client().probe(&format!("http://127.0.0.1:{port}/file")).await.unwrap_err();
    assert_err(&err, FetchErrorKind::Transport, Code::ERROR_WINHTTP_CANNOT_CONNECT, true);
    assert_eq!(err.context, ErrorContext::GeneralTransport);
    // DNS failure (.invalid never resolves, RFC 6761).
    let err = client().probe("http://no-such-host.invalid/file").await.unwrap_err();
    assert_err(&err, FetchErrorKind::Transport, Code::ERROR_WINHTTP_NAME_NOT_RESOLVED, true);
    // Not http(s) at all.
    for url in ["ftp://example.com/x", "not a url", "file:///etc/passwd"] {
        let err = client().probe(url).await.unwrap_err();
        assert_err(&err, FetchErrorKind::BadUrl, Code::E_INVALIDARG, false);
    }
}

#[tokio::test]
async fn open_connections_counts_pooled_ones_until_they_close() {
    let server = start().await;
    let http = client();
    assert_eq!(http.open_connections(), 0);
    let info = http.probe(&server.url("/file")).await.unwrap();
    let mut body = http.get_range(&info, Span::new(0, 50)).await.unwrap();
    read_all(&mut body).await.unwrap();
    assert_eq!(http.open_connections(), 1, "one connection, idle in the pool");
    assert_eq!(http.clone().open_connections(), 1, "clones share the pool");
    set_fault(&server, Some(Fault::ShortBody(500)));
    let mut body = http.get_range(&info, Span::new(0, SIZE as u64)).await.unwrap();
    assert!(read_all(&mut body).await.is_err());
    drop(body);
    // The cut connection is dropped once hyper's task for it ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.open_connections() > 0 {
        assert!(Instant::now() < deadline, "{} connections still counted", http.open_connections());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
