//! Accepting or rejecting the answer to a ranged GET. This is where a response is checked to hold
//! exactly the requested bytes of the probed version of the file (spec §6.1, §6.4) before any of
//! its body is handed to the caller.

use bits_core::Span;
use http::header;
use http::response::Parts;
use url::Url;

use crate::content_range::ContentRange;
use crate::error::FetchError;
use crate::headers;
use crate::probe::{RemoteInfo, status_error};

/// Checks a (non-redirect) response head to `GET` of `span`. `Ok` means the body is exactly the
/// bytes of `span` (a 206 for it, or, when `allow_full` is set, a 200 when `span` is the whole
/// file). Without `allow_full` every 200 that passes the version checks is
/// `BG_E_INSUFFICIENT_RANGE_SUPPORT`: only FOREGROUND jobs may fall back to one plain GET (spec
/// §6.2, case 58).
pub(crate) fn check(
    parts: &Parts,
    remote: &RemoteInfo,
    span: Span,
    url: &Url,
    allow_full: bool,
) -> Result<(), FetchError> {
    let status = parts.status.as_u16();
    let response_validator = headers::validator(&parts.headers);
    match status {
        206 => {
            let value = parts.headers.get(header::CONTENT_RANGE).ok_or_else(|| {
                FetchError::invalid_response(format!("206 from {url} without Content-Range"))
            })?;
            let text = value.to_str().map_err(|_| {
                FetchError::invalid_response(format!("unreadable Content-Range from {url}"))
            })?;
            let range = ContentRange::parse(text)
                .map_err(|e| FetchError::invalid_response(format!("206 from {url}: {e}")))?;
            let (first, last, complete) = match range {
                ContentRange::Satisfied { first, last, complete } => (first, last, complete),
                ContentRange::Unsatisfied { .. } => {
                    return Err(FetchError::invalid_response(format!(
                        "206 from {url} with unsatisfied Content-Range {text}"
                    )));
                }
            };
            if first != span.start || last + 1 != span.end {
                return Err(FetchError::invalid_response(format!(
                    "asked {url} for bytes {}-{}, got Content-Range {text}",
                    span.start,
                    span.end - 1
                )));
            }
            match complete {
                Some(total) if total == remote.size => {}
                // A new total is a new version of the file, not a broken answer.
                Some(total) => {
                    return Err(FetchError::remote_changed(format!(
                        "{url} is now {total} bytes, was {} (Content-Range {text})",
                        remote.size
                    )));
                }
                None => {
                    return Err(FetchError::invalid_response(format!(
                        "206 from {url} without the total size in Content-Range {text}"
                    )));
                }
            }
            if let Some(why) = headers::validator_change(&remote.validator, &response_validator) {
                return Err(FetchError::remote_changed(format!("{url}: {why}")));
            }
            check_length(parts, span, url)?;
            check_encoding(parts, remote, url)
        }
        200 => {
            // A 200 carries no Content-Range, so it must prove it is the probed version by
            // itself: the same length and every validator the probe saw (an error page or a
            // regenerated file usually lacks them).
            if let Some(why) = headers::validator_change(&remote.validator, &response_validator) {
                return Err(FetchError::remote_changed(format!("{url}: {why}")));
            }
            let lacks = |had: &Option<String>, has: &Option<String>| had.is_some() && has.is_none();
            if lacks(&remote.validator.etag, &response_validator.etag)
                || lacks(&remote.validator.last_modified, &response_validator.last_modified)
            {
                return Err(FetchError::remote_changed(format!(
                    "{url} answered 200 without the ETag/Last-Modified its probe had"
                )));
            }
            match headers::content_length(&parts.headers) {
                Ok(Some(len)) if len != remote.size => {
                    return Err(FetchError::remote_changed(format!(
                        "{url} is now {len} bytes, was {}",
                        remote.size
                    )));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(FetchError::invalid_response(format!(
                        "{url} answered 200 without Content-Length to a ranged GET"
                    )));
                }
                Err(why) => return Err(FetchError::invalid_response(format!("{url}: {why}"))),
            }
            check_encoding(parts, remote, url)?;
            if !allow_full {
                return Err(FetchError::range_not_supported(format!(
                    "{url} ignored Range bytes={}-{} and sent the whole file, which this job may \
                     not fall back to",
                    span.start,
                    span.end - 1
                )));
            }
            if span.start != 0 || span.end != remote.size {
                return Err(FetchError::range_not_supported(format!(
                    "{url} ignored Range bytes={}-{} and sent the whole file",
                    span.start,
                    span.end - 1
                )));
            }
            Ok(())
        }
        412 => Err(FetchError::remote_changed(format!(
            "{url} answered 412: its validator no longer matches"
        ))),
        416 => Err(FetchError::invalid_range(format!(
            "{url} answered 416 to bytes={}-{} (probed size {})",
            span.start,
            span.end - 1,
            remote.size
        ))),
        s if (200..300).contains(&s) => {
            Err(FetchError::invalid_response(format!("ranged GET {url} answered {s}")))
        }
        _ => Err(status_error(parts, url)),
    }
}

fn check_length(parts: &Parts, span: Span, url: &Url) -> Result<(), FetchError> {
    match headers::content_length(&parts.headers) {
        Ok(Some(len)) if len != span.len() => Err(FetchError::invalid_response(format!(
            "{url} sent Content-Length {len} for the {} bytes of {span}",
            span.len()
        ))),
        Ok(_) => Ok(()),
        Err(why) => Err(FetchError::invalid_response(format!("{url}: {why}"))),
    }
}

/// The answer must be the representation the probe saw: the same content-codings. A stored
/// `.tar.gz` labelled `gzip` on its HEAD and on every range is the file's bytes; a `gzip` the
/// probe did not see (a server compressing on the fly, or a wrong label) is not, and is refused
/// before any of its body is written.
pub(crate) fn check_encoding(
    parts: &Parts,
    remote: &RemoteInfo,
    url: &Url,
) -> Result<(), FetchError> {
    let got = headers::content_codings(&parts.headers);
    if got == remote.content_encoding {
        return Ok(());
    }
    let name = |codings: &Option<String>| codings.clone().unwrap_or_else(|| "identity".into());
    Err(FetchError::invalid_response(format!(
        "{url} sent Content-Encoding {} although its probe saw {} (identity was asked for)",
        name(&got),
        name(&remote.content_encoding)
    )))
}

#[cfg(test)]
mod tests {
    use bits_core::Code;

    use super::*;
    use crate::FetchErrorKind;
    use crate::test_support::{CHANGED, INVALID, parts, remote};

    fn kind(
        status: u16,
        pairs: &[(&str, &str)],
        span: Span,
    ) -> Result<(), (FetchErrorKind, Code, bool)> {
        kind_full(status, pairs, span, true)
    }

    fn kind_full(
        status: u16,
        pairs: &[(&str, &str)],
        span: Span,
        allow_full: bool,
    ) -> Result<(), (FetchErrorKind, Code, bool)> {
        let url = Url::parse("http://h/f").unwrap();
        check(&parts(status, pairs), &remote(), span, &url, allow_full)
            .map_err(|e| (e.kind, e.code, e.transient))
    }

    const NO_RANGES: (FetchErrorKind, Code, bool) =
        (FetchErrorKind::RangeNotSupported, Code::BG_E_INSUFFICIENT_RANGE_SUPPORT, false);

    #[test]
    fn partial_content_must_match_exactly() {
        let mid = Span::new(10, 20);
        assert_eq!(
            kind(206, &[("Content-Range", "bytes 10-19/100"), ("content-length", "10")], mid),
            Ok(())
        );
        assert_eq!(
            kind(206, &[("content-range", "bytes 10-19/100"), ("etag", "\"v1\"")], mid),
            Ok(())
        );
        assert_eq!(kind(206, &[("content-range", "bytes 10-20/100")], mid), Err(INVALID));
        assert_eq!(kind(206, &[("content-range", "bytes 9-18/100")], mid), Err(INVALID));
        assert_eq!(kind(206, &[("content-range", "bytes 10-19/*")], mid), Err(INVALID));
        assert_eq!(kind(206, &[("content-range", "bytes */100")], mid), Err(INVALID));
        assert_eq!(kind(206, &[], mid), Err(INVALID));
        assert_eq!(
            kind(206, &[("content-range", "bytes 10-19/100"), ("content-length", "11")], mid),
            Err(INVALID)
        );
        assert_eq!(
            kind(206, &[("content-range", "bytes 10-19/100"), ("content-encoding", "gzip")], mid),
            Err(INVALID)
        );
        assert_eq!(kind(206, &[("content-range", "bytes 10-19/101")], mid), Err(CHANGED));
        assert_eq!(
            kind(206, &[("content-range", "bytes 10-19/100"), ("etag", "\"v2\"")], mid),
            Err(CHANGED)
        );
    }

    #[test]
    fn full_content_only_for_the_whole_file() {
        let whole = Span::new(0, 100);
        assert_eq!(kind(200, &[("content-length", "100"), ("etag", "\"v1\"")], whole), Ok(()));
        // A 200 must prove it is the probed version: validators present, length given.
        assert_eq!(kind(200, &[("content-length", "100")], whole), Err(CHANGED));
        assert_eq!(kind(200, &[], whole), Err(CHANGED));
        assert_eq!(kind(200, &[("etag", "\"v1\"")], whole), Err(INVALID));
        assert_eq!(
            kind(200, &[("content-length", "100"), ("etag", "\"v2\"")], whole),
            Err(CHANGED)
        );
        assert_eq!(kind(200, &[("content-length", "99")], whole), Err(CHANGED));
        let good = [("content-length", "100"), ("etag", "\"v1\"")];
        assert_eq!(kind(200, &[good[0], good[1], ("content-encoding", "br")], whole), Err(INVALID));
        assert_eq!(kind(200, &good, Span::new(0, 50)), Err(NO_RANGES));
        assert_eq!(kind(412, &[], whole), Err(CHANGED));
        assert_eq!(
            kind(416, &[], whole),
            Err((FetchErrorKind::InvalidRange, Code::BG_E_INVALID_RANGE, false))
        );
        assert_eq!(kind(404, &[], whole), Err((FetchErrorKind::Http(404), Code::Http(404), false)));
        assert_eq!(kind(204, &[], whole), Err(INVALID));
    }

    /// Apache's `AddEncoding gzip .gz`: the HEAD and every range say gzip, and the bytes are the
    /// stored file's. Only an answer whose codings differ from the probe's is refused.
    #[test]
    fn a_content_coding_the_probe_saw_is_the_file() {
        let url = Url::parse("http://h/f").unwrap();
        let gzip = RemoteInfo { content_encoding: Some("gzip".into()), ..remote() };
        let mid = Span::new(10, 20);
        let check_as = |remote: &RemoteInfo, status, pairs: &[(&str, &str)], span| {
            check(&parts(status, pairs), remote, span, &url, true)
                .map_err(|e| (e.kind, e.code, e.transient))
        };
        let range = ("content-range", "bytes 10-19/100");
        assert_eq!(check_as(&gzip, 206, &[range, ("content-encoding", "gzip")], mid), Ok(()));
        assert_eq!(check_as(&gzip, 206, &[range, ("Content-Encoding", "GZIP")], mid), Ok(()));
        assert_eq!(check_as(&gzip, 206, &[range], mid), Err(INVALID));
        assert_eq!(check_as(&gzip, 206, &[range, ("content-encoding", "br")], mid), Err(INVALID));
        assert_eq!(
            check_as(&remote(), 206, &[range, ("content-encoding", "gzip")], mid),
            Err(INVALID)
        );
        let whole = [("content-length", "100"), ("etag", "\"v1\""), ("content-encoding", "gzip")];
        assert_eq!(check_as(&gzip, 200, &whole, Span::new(0, 100)), Ok(()));
        let err = check(&parts(206, &[range]), &gzip, mid, &url, true).unwrap_err();
        assert!(err.message.contains("identity although its probe saw gzip"), "{err}");
    }

    #[test]
    fn full_content_refused_when_the_job_may_not_fall_back() {
        let whole = Span::new(0, 100);
        let good = [("content-length", "100"), ("etag", "\"v1\"")];
        assert_eq!(kind_full(200, &good, whole, false), Err(NO_RANGES));
        assert_eq!(kind_full(200, &good, Span::new(0, 50), false), Err(NO_RANGES));
        // The version checks still come first: a changed file restarts rather than failing.
        assert_eq!(kind_full(200, &[("content-length", "100")], whole, false), Err(CHANGED));
        assert_eq!(kind_full(200, &[("etag", "\"v1\"")], whole, false), Err(INVALID));
        // A 206 is unaffected.
        let mid = Span::new(10, 20);
        assert_eq!(kind_full(206, &[("content-range", "bytes 10-19/100")], mid, false), Ok(()));
        assert_eq!(
            kind_full(
                206,
                &[("content-range", "bytes 0-99/100"), ("etag", "\"v1\"")],
                whole,
                false
            ),
            Ok(())
        );
    }
}
