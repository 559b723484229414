//! The fetcher over https against an in-process rustls server with a self-signed certificate:
//! HTTP/2 is negotiated by ALPN, certificates are verified (an untrusted one fails with `Tls`),
//! and an https→http redirect is refused unless ALLOW_HTTPS_TO_HTTP is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bits_core::{Code, ErrorContext, Span};
use bits_http::{FetchError, FetchErrorKind, HttpClient, RedirectPolicy, RequestOptions};
use bits_testkit::serve::tls::self_signed;
use common::{DATA, FaultServer, SIZE, client_with, read_all, redirect_to, start, start_tls};
use http::Version;

#[tokio::test]
async fn https_fetch_uses_http2_and_verifies_the_certificate() {
    let (cert, config) = self_signed();
    let server = start_tls(config).await;
    let url = format!("https://127.0.0.1:{}/file", server.addr().port());

    let trusted = client_with(|c| c.extra_root_certs_der = vec![cert.to_vec()]);
    let info = trusted.probe(&url).await.unwrap();
    assert_eq!(info.size, SIZE as u64);
    assert_eq!(info.final_url, url);
    let mut body = trusted.get_range(&info, Span::new(0, info.size)).await.unwrap();
    assert_eq!(body.http_version(), Version::HTTP_2);
    assert_eq!(read_all(&mut body).await.unwrap(), *DATA);
    let mut body = trusted.get_range(&info, Span::new(4096, 9000)).await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), &DATA[4096..9000]);
    let seen = server.log();
    assert!(seen.iter().all(|s| s.version == Version::HTTP_2), "{seen:?}");
    assert_eq!(seen.len(), 3);
    // One HTTP/2 connection carries all three requests.
    assert_eq!(server.connections(), 1);

    // Without the extra root the self-signed certificate is rejected.
    let untrusted = client_with(|_| {});
    let err = untrusted.probe(&url).await.unwrap_err();
    assert_eq!(
        (err.kind, err.code, err.transient),
        (FetchErrorKind::Tls, Code::ERROR_WINHTTP_SECURE_FAILURE, false),
        "{err}"
    );
    assert_eq!(err.context, ErrorContext::GeneralTransport);
}

/// An https server whose `/abs-redirect` points at a plain http one's `/file`, a client that
/// trusts it, and the redirect's URL (by name, so the certificate's `localhost` matches).
async fn https_redirecting_to_plain() -> (FaultServer, FaultServer, HttpClient, String) {
    let (cert, config) = self_signed();
    let tls = start_tls(config).await;
    let plain = start().await;
    redirect_to(&tls, &plain.url("/file"));
    let http = client_with(|c| c.extra_root_certs_der = vec![cert.to_vec()]);
    let url = format!("https://localhost:{}/abs-redirect", tls.addr().port());
    (tls, plain, http, url)
}

fn assert_redirect_failed(err: &FetchError) {
    assert_eq!(
        (err.kind, err.code, err.transient),
        (FetchErrorKind::Redirect, Code::ERROR_WINHTTP_REDIRECT_FAILED, false),
        "{err}"
    );
}

#[tokio::test]
async fn https_to_http_redirect_is_refused() {
    let (tls, plain, http, url) = https_redirecting_to_plain().await;
    let err = http.probe(&url).await.unwrap_err();
    assert_redirect_failed(&err);
    assert!(plain.log().is_empty());
    // Redirects within https are fine.
    redirect_to(&tls, "/file");
    let info = http.probe(&url).await.unwrap();
    assert_eq!(info.final_url, format!("https://localhost:{}/file", tls.addr().port()));
}

#[tokio::test]
async fn https_to_http_redirect_is_followed_with_the_flag() {
    let (_tls, plain, http, url) = https_redirecting_to_plain().await;

    let refused = RequestOptions { allow_https_to_http: false, ..RequestOptions::default() };
    let err = http.probe_opts(&url, &refused).await.unwrap_err();
    assert_redirect_failed(&err);
    assert!(plain.log().is_empty());

    for redirects in [RedirectPolicy::AllowSilent, RedirectPolicy::AllowReport] {
        let allowed =
            RequestOptions { allow_https_to_http: true, redirects, ..RequestOptions::default() };
        let info = http.probe_opts(&url, &allowed).await.unwrap();
        assert_eq!(info.final_url, plain.url("/file"));
        assert!(info.redirected);
        assert!(!info.same_origin);
        let mut body = http.get_range_opts(&info, Span::new(0, info.size), &allowed).await.unwrap();
        assert_eq!(read_all(&mut body).await.unwrap(), *DATA);
    }

    // DISALLOW wins over the flag: the redirect is reported, not followed.
    let disallow = RequestOptions {
        allow_https_to_http: true,
        redirects: RedirectPolicy::Disallow,
        ..RequestOptions::default()
    };
    let before = plain.log().len();
    let err = http.probe_opts(&url, &disallow).await.unwrap_err();
    assert_eq!((err.kind, err.code), (FetchErrorKind::RedirectDisallowed, Code::Win32Http(302)));
    assert_eq!(err.redirect_target, Some(plain.url("/file")));
    assert_eq!(plain.log().len(), before);
}
