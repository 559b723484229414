//! URL checks and redirect following. Kept apart from the client so the rules (which schemes, how
//! many hops, no https→http downgrade, a job's headers never cross to another origin) are plain
//! functions with unit tests.

use std::collections::HashSet;

use http::{HeaderValue, Uri};
use url::Url;

use crate::error::FetchError;

/// Parses a caller's URL: absolute, `http` or `https`, with a host. The fragment is dropped (it is
/// never sent to a server).
pub(crate) fn parse_url(url: &str) -> Result<Url, FetchError> {
    let mut parsed =
        Url::parse(url).map_err(|e| FetchError::bad_url(format!("invalid URL {url:?}: {e}")))?;
    check_url(&parsed)?;
    parsed.set_fragment(None);
    Ok(parsed)
}

fn check_url(url: &Url) -> Result<(), FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::bad_url(format!(
            "unsupported URL scheme {:?} in {url} (only http and https)",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(FetchError::bad_url(format!("URL {url} has no host")));
    }
    Ok(())
}

/// The request target for hyper.
pub(crate) fn to_uri(url: &Url) -> Result<Uri, FetchError> {
    url.as_str().parse::<Uri>().map_err(|e| FetchError::bad_url(format!("invalid URL {url}: {e}")))
}

/// The statuses BITS reports as `HRESULT_FROM_WIN32(HTTP_STATUS_<status>)` under the DISALLOW
/// redirect policy (spec §6.2): every redirect status, including 300 (which is never followed).
pub(crate) fn is_disallowed_redirect(status: u16) -> bool {
    matches!(status, 300 | 301 | 302 | 303 | 307 | 308)
}

/// Where a redirect that will not be followed points: `Location` resolved against `current`
/// like a followed one (fragment dropped), if it is a usable http(s) URL.
pub(crate) fn redirect_target(current: &Url, location: Option<&HeaderValue>) -> Option<Url> {
    let location = location?.to_str().ok()?;
    let mut target = current.join(location).ok()?;
    target.set_fragment(None);
    check_url(&target).ok()?;
    Some(target)
}

/// Tracks one chain of redirects.
#[derive(Debug)]
pub(crate) struct Redirects {
    max: u32,
    followed: u32,
    visited: HashSet<String>,
    /// BITS_HTTP_SECURITY_FLAG ALLOW_HTTPS_TO_HTTP: follow a redirect from https to http.
    allow_https_to_http: bool,
}

impl Redirects {
    pub(crate) fn new(start: &Url, max: u32) -> Redirects {
        let mut visited = HashSet::new();
        visited.insert(start.as_str().to_owned());
        Redirects { max, followed: 0, visited, allow_https_to_http: false }
    }

    /// Lets this chain follow redirects from https to http (refused unless set).
    pub(crate) fn allow_https_to_http(mut self, allow: bool) -> Redirects {
        self.allow_https_to_http = allow;
        self
    }

    /// The URL a redirect from `current` leads to, or why it must not be followed.
    pub(crate) fn next(
        &mut self,
        current: &Url,
        status: u16,
        location: Option<&HeaderValue>,
    ) -> Result<Url, FetchError> {
        let location = location.ok_or_else(|| {
            FetchError::redirect(format!("HTTP {status} from {current} without a Location header"))
        })?;
        let location = location.to_str().map_err(|_| {
            FetchError::redirect(format!(
                "HTTP {status} from {current} with an unreadable Location"
            ))
        })?;
        let mut next = current.join(location).map_err(|e| {
            FetchError::redirect(format!(
                "redirect from {current} to invalid URL {location:?}: {e}"
            ))
        })?;
        next.set_fragment(None);
        check_url(&next)?;
        if current.scheme() == "https" && next.scheme() == "http" && !self.allow_https_to_http {
            return Err(FetchError::redirect(format!(
                "refusing redirect from https to http ({current} -> {next})"
            )));
        }
        if !self.visited.insert(next.as_str().to_owned()) {
            return Err(FetchError::redirect(format!("redirect loop at {next} (from {current})")));
        }
        self.followed += 1;
        if self.followed > self.max {
            return Err(FetchError::redirect(format!(
                "more than {} redirects (last {current} -> {next})",
                self.max
            )));
        }
        Ok(next)
    }
}

/// Whether two URLs share an origin (scheme, host and port): a job's custom headers go only to
/// its URL's origin, never across a redirect to another one.
pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.origin() == b.origin()
}

#[cfg(test)]
mod tests {
    use bits_core::Code;

    use super::*;
    use crate::FetchErrorKind;

    fn url(s: &str) -> Url {
        parse_url(s).unwrap()
    }

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn parse_url_accepts_http_and_https_only() {
        assert_eq!(url("http://h/a#frag").as_str(), "http://h/a");
        assert!(parse_url("https://h:8443/x?y=1").is_ok());
        for bad in ["ftp://h/x", "file:///etc/passwd", "h/x", "", "http://", "data:,x"] {
            let err = parse_url(bad).unwrap_err();
            assert_eq!(err.kind, FetchErrorKind::BadUrl, "{bad}");
            assert_eq!(err.code, Code::E_INVALIDARG);
            assert!(!err.transient);
        }
    }

    #[test]
    fn relative_locations_resolve_against_the_current_url() {
        let start = url("http://h/dir/a?q=1");
        let mut r = Redirects::new(&start, 10);
        assert_eq!(r.next(&start, 302, Some(&hv("b"))).unwrap().as_str(), "http://h/dir/b");
        let cur = url("http://h/dir/b");
        assert_eq!(r.next(&cur, 301, Some(&hv("../c"))).unwrap().as_str(), "http://h/c");
        let cur = url("http://h/c");
        assert_eq!(
            r.next(&cur, 307, Some(&hv("//other:81/d"))).unwrap().as_str(),
            "http://other:81/d"
        );
        assert_eq!(r.next(&cur, 308, Some(&hv("https://s/e#x"))).unwrap().as_str(), "https://s/e");
    }

    #[test]
    fn refuses_loops_limits_downgrades_and_other_schemes() {
        let a = url("http://h/a");
        let b = url("http://h/b");
        let mut r = Redirects::new(&a, 10);
        r.next(&a, 302, Some(&hv("/b"))).unwrap();
        let err = r.next(&b, 302, Some(&hv("/a"))).unwrap_err();
        assert_eq!(
            (err.kind, err.code),
            (FetchErrorKind::Redirect, Code::ERROR_WINHTTP_REDIRECT_FAILED)
        );
        assert!(!err.transient);

        let mut r = Redirects::new(&a, 2);
        let mut cur = a.clone();
        for i in 0..2 {
            cur = r.next(&cur, 302, Some(&hv(&format!("/n{i}")))).unwrap();
        }
        assert_eq!(r.next(&cur, 302, Some(&hv("/n9"))).unwrap_err().kind, FetchErrorKind::Redirect);

        let s = url("https://h/a");
        let err = Redirects::new(&s, 10).next(&s, 301, Some(&hv("http://h/a"))).unwrap_err();
        assert_eq!(err.kind, FetchErrorKind::Redirect);

        let err = Redirects::new(&a, 10).next(&a, 302, Some(&hv("ftp://h/a"))).unwrap_err();
        assert_eq!((err.kind, err.code), (FetchErrorKind::BadUrl, Code::E_INVALIDARG));

        let err = Redirects::new(&a, 10).next(&a, 302, None).unwrap_err();
        assert_eq!(err.kind, FetchErrorKind::Redirect);
    }

    #[test]
    fn https_to_http_only_with_the_flag() {
        let s = url("https://h/a");
        let next = Redirects::new(&s, 10)
            .allow_https_to_http(true)
            .next(&s, 302, Some(&hv("http://h/b")))
            .unwrap();
        assert_eq!(next.as_str(), "http://h/b");
        let err = Redirects::new(&s, 10)
            .allow_https_to_http(false)
            .next(&s, 302, Some(&hv("http://h/b")))
            .unwrap_err();
        assert_eq!(err.kind, FetchErrorKind::Redirect);
        // The flag does not lift the other limits.
        let mut r = Redirects::new(&s, 10).allow_https_to_http(true);
        let b = r.next(&s, 302, Some(&hv("http://h/b"))).unwrap();
        let err = r.next(&b, 302, Some(&hv("https://h/a"))).unwrap_err();
        assert_eq!(err.kind, FetchErrorKind::Redirect);
    }

    #[test]
    fn disallowed_redirect_statuses_and_targets() {
        for s in [300, 301, 302, 303, 307, 308] {
            assert!(is_disallowed_redirect(s), "{s}");
        }
        for s in [200, 206, 304, 305, 306, 309, 404] {
            assert!(!is_disallowed_redirect(s), "{s}");
        }
        let cur = url("http://h/dir/a");
        let target =
            |loc: Option<&str>| redirect_target(&cur, loc.map(hv).as_ref()).map(|u| u.to_string());
        assert_eq!(target(Some("b#frag")).as_deref(), Some("http://h/dir/b"));
        assert_eq!(target(Some("https://o:8443/x?y")).as_deref(), Some("https://o:8443/x?y"));
        assert_eq!(target(Some("//o/x")).as_deref(), Some("http://o/x"));
        assert_eq!(target(Some("ftp://o/x")), None);
        assert_eq!(target(None), None);
        let bad = HeaderValue::from_bytes(b"\xff").unwrap();
        assert_eq!(redirect_target(&cur, Some(&bad)), None);
    }

    #[test]
    fn origins_are_scheme_host_and_port() {
        assert!(same_origin(&url("http://h/a"), &url("http://h/b?c")));
        assert!(same_origin(&url("http://h/a"), &url("http://h:80/b")));
        assert!(!same_origin(&url("http://h/a"), &url("https://h/a")));
        assert!(!same_origin(&url("http://h/a"), &url("http://h:8080/a")));
        assert!(!same_origin(&url("http://h/a"), &url("http://g/a")));
        assert!(!same_origin(&url("http://127.0.0.1:81/a"), &url("http://127.0.0.1:82/a")));
    }
}
