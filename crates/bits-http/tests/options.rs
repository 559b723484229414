//! Per-request options against the in-process server: the redirect policies (spec §6.2, cases
//! 66–68), custom headers, and refusing a whole-file 200 for jobs that may not fall back to a plain
//! GET (case 58).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bits_core::{Code, ErrorContext, Span};
use bits_http::{FetchError, FetchErrorKind, RedirectPolicy, RemoteInfo, RequestOptions};
use common::{
    DATA, Fault, HEAD, Logged, SIZE, client, last, read_all, redirect_to, set_fault, start,
    start_with,
};
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
    let server = start().await;
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
        let before = server.log().len();
        let url = server.url(&format!("/r/{status}"));
        let err = http.probe_opts(&url, &policy(RedirectPolicy::Disallow)).await.unwrap_err();
        assert_disallowed(&err, status, Some(&target));
        assert_eq!(err.code.hresult(), hresult);
        // The redirect was not followed: one HEAD, nothing to /file.
        let seen = server.log();
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
    let server = start().await;
    let http = client();
    let disallow = policy(RedirectPolicy::Disallow);
    let info = http.probe_opts(&server.url("/file"), &disallow).await.unwrap();
    assert!(!info.redirected);
    let mut body = http.get_range_opts(&info, Span::new(100, 200), &disallow).await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), &DATA[100..200]);

    // The file moved after the probe: the GET is redirected and refused.
    let moved = RemoteInfo { final_url: server.url("/r/307"), ..info };
    let err = http.get_range_opts(&moved, Span::new(0, 10), &disallow).await.unwrap_err();
    assert_disallowed(&err, 307, Some(&server.url("/file")));
    assert_eq!(last(&server).method, Method::GET);
    assert_eq!(last(&server).path, "/r/307");
}

#[tokio::test]
async fn allow_policies_follow_and_report_the_final_url() {
    let server = start().await;
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
        assert_eq!(read_all(&mut body).await.unwrap(), &DATA[5..50]);
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

/// A job's custom headers, some of them credentials only by name.
fn custom_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("x-job", "7"),
        ("x-secret", "s3cret"),
        ("x-api-key", "k3y"),
        ("private-token", "t0ken"),
        ("authorization", "Bearer secret"),
        ("proxy-authorization", "Basic eDp5"),
        ("cookie", "a=b"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

fn assert_has_all(seen: &Logged, custom: &HeaderMap) {
    for (name, value) in custom {
        assert_eq!(seen.headers.get(name), Some(value), "{name} missing on {seen:?}");
    }
}

fn assert_has_none(seen: &Logged, custom: &HeaderMap) {
    for name in custom.keys() {
        assert!(!seen.headers.contains_key(name), "{name} crossed origins: {seen:?}");
    }
    assert!(seen.headers.contains_key(header::USER_AGENT), "bitsd's own headers go everywhere");
}

#[tokio::test]
async fn custom_headers_ride_along_on_their_origin() {
    let server = start().await;
    let http = client();
    let custom = custom_headers();
    let opts = RequestOptions { headers: custom.clone(), ..RequestOptions::default() };

    let info = http.probe_opts(&server.url("/file"), &opts).await.unwrap();
    let mut body = http.get_range_opts(&info, Span::new(0, 10), &opts).await.unwrap();
    read_all(&mut body).await.unwrap();
    // A redirect within the origin keeps them, on both hops.
    let info = http.probe_opts(&server.url("/r/302"), &opts).await.unwrap();
    assert!(info.redirected && info.same_origin);
    let seen = server.log();
    assert_eq!(seen.len(), 4);
    for s in &seen {
        assert_has_all(s, &custom);
    }
}

/// No custom header, whatever its name, reaches another origin (another port of 127.0.0.1):
/// not on the redirected HEAD, its GET fallback, a ranged GET sent straight to the probe's final
/// URL, nor a whole-file GET that is redirected.
#[tokio::test]
async fn no_custom_header_follows_a_redirect_to_another_origin() {
    let server = start().await;
    let refuses_head = start().await;
    refuses_head.always("file", HEAD, Fault::Status(405));
    let other = start().await;
    let http = client();
    let custom = custom_headers();
    let opts = RequestOptions { headers: custom.clone(), ..RequestOptions::default() };

    redirect_to(&server, &refuses_head.url("/file"));
    let info = http.probe_opts(&server.url("/abs-redirect"), &opts).await.unwrap();
    assert!(info.redirected && !info.same_origin);
    let seen = refuses_head.log();
    assert_eq!(
        seen.iter().map(|s| s.method.clone()).collect::<Vec<_>>(),
        [Method::HEAD, Method::GET]
    );
    seen.iter().for_each(|s| assert_has_none(s, &custom));

    redirect_to(&server, &other.url("/file"));
    let info = http.probe_opts(&server.url("/abs-redirect"), &opts).await.unwrap();
    let mut body = http.get_range_opts(&info, Span::new(0, 10), &opts).await.unwrap();
    read_all(&mut body).await.unwrap();
    let (_, Some(mut body)) =
        http.fetch_whole_opts(&server.url("/abs-redirect"), &opts).await.unwrap()
    else {
        panic!("a file with bytes has a body to stream")
    };
    read_all(&mut body).await.unwrap();
    let seen = other.log();
    assert_eq!(
        seen.iter().map(|s| s.method.clone()).collect::<Vec<_>>(),
        [Method::HEAD, Method::GET, Method::GET]
    );
    seen.iter().for_each(|s| assert_has_none(s, &custom));

    // The origin that redirected got them every time.
    let seen = server.log();
    assert_eq!(seen.len(), 3);
    seen.iter().for_each(|s| assert_has_all(s, &custom));

    // Once a chain has left the origin they are gone for good, even when it comes back.
    redirect_to(&server, &other.url("/abs-redirect"));
    redirect_to(&other, &server.url("/file"));
    let info = http.probe_opts(&server.url("/abs-redirect"), &opts).await.unwrap();
    assert!(info.same_origin, "the chain ended where it started");
    let seen = server.log();
    assert_eq!((seen.len(), seen[4].path.as_str()), (5, "/file"));
    assert_has_all(&seen[3], &custom);
    assert_has_none(&seen[4], &custom);
    assert_has_none(&last(&other), &custom);
}

#[tokio::test]
async fn background_jobs_do_not_accept_a_whole_file_200() {
    let server = start_with(Fault::IgnoreRange).await;
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
    assert_eq!(read_all(&mut body).await.unwrap(), *DATA);
    let mut body = http.get_range_with(&info, whole, &HeaderMap::new()).await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), *DATA);

    // A server that honours Range is fine either way, for the whole file and for parts.
    set_fault(&server, None);
    let mut body = http.get_range_opts(&info, whole, &strict).await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), *DATA);
    let mut body = http.get_range_opts(&info, Span::new(10, 20), &strict).await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), &DATA[10..20]);
}
