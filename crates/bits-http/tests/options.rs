//! Per-request options against the in-process server: the redirect policies (spec §6.2, cases
//! 66–68), custom headers, and refusing a whole-file 200 for jobs that may not fall back to a plain
//! GET (case 58).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bits_core::{Code, ErrorContext, Span};
use bits_http::{FetchError, FetchErrorKind, RedirectPolicy, RemoteInfo, RequestOptions};
use common::{Mode, SIZE, client, read_all, start};
use http::{HeaderMap, HeaderValue, Method, header};

fn policy(redirects: RedirectPolicy) -> RequestOptions {
    RequestOptions { redirects, ..RequestOptions::default() }
}

fn assert_disallowed(err: &FetchError, status: u16, target: Option<&str>) {
    assert_eq!(
        (err.kind, err.code, err.transient, err.context),
        (
            FetchErrorKind::RedirectDisallowed,
            Code::Win32Http(status),
            false,
            ErrorContext::RemoteFile
        ),
        "{err}"
    );
    assert_eq!(err.code.hresult(), 0x8007_0000 | u32::from(status));
    assert_eq!(err.redirect_target.as_deref(), target, "{err}");
}

#[test]
fn default_options_are_todays_behaviour() {
    let opts = RequestOptions::default();
    assert!(opts.headers.is_empty());
    assert_eq!(opts.redirects, RedirectPolicy::AllowSilent);
    assert!(!opts.allow_https_to_http);
    assert!(opts.allow_full_response);
    assert_eq!(RedirectPolicy::default(), RedirectPolicy::AllowSilent);
}

#[tokio::test]
async fn disallow_refuses_every_redirect_status_with_its_win32_code() {
    let server = start(Mode::Normal).await;
    let http = client();
    let target = server.url("/file");
    for (status, hresult) in [
        (300, 0x8007_012C),
        (301, 0x8007_012D),
        (302, 0x8007_012E),
        (303, 0x8007_012F),
        (307, 0x8007_0133),
        // No BITS value is documented for 308; it gets HRESULT_FROM_WIN32(308) by the same rule.
        (308, 0x8007_0134),
    ] {
        let before = server.state.seen().len();
        let url = server.url(&format!("/r/{status}"));
        let err = http.probe_opts(&url, &policy(RedirectPolicy::Disallow)).await.unwrap_err();
        assert_disallowed(&err, status, Some(&target));
        assert_eq!(err.code.hresult(), hresult);
        // The redirect was not followed: one HEAD, nothing to /file.
        let seen = server.state.seen();
        assert_eq!(seen.len(), before + 1, "{status}");
        assert_eq!(seen[before].path, format!("/r/{status}"));
    }
    // Relative Locations resolve like followed ones; a redirect without a usable one still fails
    // with the status code, but has no target.
    let err = http
        .probe_opts(&server.url("/dir/sub/start"), &policy(RedirectPolicy::Disallow))
        .await
        .unwrap_err();
    assert_disallowed(&err, 302, Some(&target));
    let err = http
        .probe_opts(&server.url("/see-other"), &policy(RedirectPolicy::Disallow))
        .await
        .unwrap_err();
    assert_disallowed(&err, 303, Some(&target));
    let err = http
        .probe_opts(&server.url("/no-location"), &policy(RedirectPolicy::Disallow))
        .await
        .unwrap_err();
    assert_disallowed(&err, 302, None);
    let err =
        http.probe_opts(&server.url("/ftp"), &policy(RedirectPolicy::Disallow)).await.unwrap_err();
    assert_disallowed(&err, 302, None);
}

#[tokio::test]
async fn disallow_applies_to_ranged_gets_and_not_to_direct_answers() {
    let server = start(Mode::Normal).await;
    let http = client();
    let disallow = policy(RedirectPolicy::Disallow);
    let info = http.probe_opts(&server.url("/file"), &disallow).await.unwrap();
    assert!(!info.redirected);
    let mut body = http.get_range_opts(&info, Span::new(100, 200), &disallow).await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), &server.state.data[100..200]);

    // The file moved after the probe: the GET is redirected and refused.
    let moved = RemoteInfo { final_url: server.url("/r/307"), ..info };
    let err = http.get_range_opts(&moved, Span::new(0, 10), &disallow).await.unwrap_err();
    assert_disallowed(&err, 307, Some(&server.url("/file")));
    assert_eq!(server.state.last().method, Method::GET);
    assert_eq!(server.state.last().path, "/r/307");
}

#[tokio::test]
async fn allow_policies_follow_and_report_the_final_url() {
    let server = start(Mode::Normal).await;
    let http = client();
    for redirects in [RedirectPolicy::AllowSilent, RedirectPolicy::AllowReport] {
        let opts = policy(redirects);
        for path in ["/r/301", "/r/302", "/r/303", "/r/307", "/r/308", "/chain/3", "/dir/sub/start"]
        {
            let info = http.probe_opts(&server.url(path), &opts).await.unwrap();
            assert_eq!(info.final_url, server.url("/file"), "{redirects:?} {path}");
            assert!(info.redirected, "{redirects:?} {path}");
            assert!(info.same_origin);
            assert_eq!(info.size, SIZE as u64);
        }
        let info = http.probe_opts(&server.url("/file"), &opts).await.unwrap();
        assert!(!info.redirected);
        // A GET that is redirected is followed too.
        let via = RemoteInfo { final_url: server.url("/r/302"), ..info };
        let mut body = http.get_range_opts(&via, Span::new(5, 50), &opts).await.unwrap();
        assert_eq!(read_all(&mut body).await.unwrap(), &server.state.data[5..50]);
        // 300 is never followed: it stays an HTTP error.
        let err = http.probe_opts(&server.url("/r/300"), &opts).await.unwrap_err();
        assert_eq!(
            (err.kind, err.code, err.transient),
            (FetchErrorKind::Http(300), Code::Http(300), false)
        );
        assert_eq!(err.redirect_target, None);
    }
    // The old entry points are AllowSilent.
    let info = http.probe(&server.url("/r/302")).await.unwrap();
    assert_eq!(info.final_url, server.url("/file"));
    assert!(info.redirected);
}

#[tokio::test]
async fn custom_headers_ride_along_and_stay_on_their_origin() {
    let server = start(Mode::Normal).await;
    let other = start(Mode::HeadStatus(405)).await;
    *server.state.redirect_target.lock().unwrap() = other.url("/file");
    let http = client();
    let mut headers = HeaderMap::new();
    headers.insert("x-job", HeaderValue::from_static("7"));
    headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer secret"));
    let opts = RequestOptions { headers, ..RequestOptions::default() };

    let info = http.probe_opts(&server.url("/file"), &opts).await.unwrap();
    let mut body = http.get_range_opts(&info, Span::new(0, 10), &opts).await.unwrap();
    read_all(&mut body).await.unwrap();
    for seen in server.state.seen() {
        assert_eq!(seen.headers["x-job"], "7");
        assert_eq!(seen.headers[header::AUTHORIZATION], "Bearer secret");
    }

    // Redirected to another origin whose server refuses HEAD: neither the HEAD nor the GET
    // fallback there carries the credentials.
    let info = http.probe_opts(&server.url("/abs-redirect"), &opts).await.unwrap();
    assert!(info.redirected && !info.same_origin);
    let seen = other.state.seen();
    assert_eq!(
        seen.iter().map(|s| s.method.clone()).collect::<Vec<_>>(),
        [Method::HEAD, Method::GET]
    );
    for s in &seen {
        assert!(!s.headers.contains_key(header::AUTHORIZATION), "{s:?}");
        assert_eq!(s.headers["x-job"], "7");
    }
}

#[tokio::test]
async fn background_jobs_do_not_accept_a_whole_file_200() {
    let server = start(Mode::IgnoreRange).await;
    let http = client();
    let strict = RequestOptions { allow_full_response: false, ..RequestOptions::default() };
    let info = http.probe_opts(&server.url("/file"), &strict).await.unwrap();
    let whole = Span::new(0, info.size);
    let err = http.get_range_opts(&info, whole, &strict).await.unwrap_err();
    assert_eq!(
        (err.kind, err.code, err.transient, err.context),
        (
            FetchErrorKind::RangeNotSupported,
            Code::BG_E_INSUFFICIENT_RANGE_SUPPORT,
            false,
            ErrorContext::RemoteFile
        ),
        "{err}"
    );
    // A foreground job (the default) falls back to the plain GET.
    let mut body = http.get_range_opts(&info, whole, &RequestOptions::default()).await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), server.state.data);
    let mut body = http.get_range_with(&info, whole, &HeaderMap::new()).await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), server.state.data);

    // A server that honours Range is fine either way, for the whole file and for parts.
    server.state.set_mode(Mode::Normal);
    let mut body = http.get_range_opts(&info, whole, &strict).await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), server.state.data);
    let mut body = http.get_range_opts(&info, Span::new(10, 20), &strict).await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), &server.state.data[10..20]);
}
