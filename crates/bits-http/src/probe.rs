//! What a probe learns about a remote file, and how a HEAD answer (or the `GET bytes=0-0` and
//! `GET bytes=0-` fallbacks for servers that refuse HEAD or give it no size) is turned into it.
//! Pure functions over response heads so every rule is unit-testable without a server.

use std::time::SystemTime;

use bits_core::Validator;
use http::StatusCode;
use http::response::Parts;
use url::Url;

use crate::content_range::ContentRange;
use crate::error::FetchError;
use crate::headers;

/// The remote file as the probe saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteInfo {
    /// The URL after redirects; ranged GETs go here.
    pub final_url: String,
    pub size: u64,
    /// ETag and Last-Modified as sent; identifies the version (spec §6.4).
    pub validator: Validator,
    /// The server advertised `Accept-Ranges: bytes` (or answered a range request with 206).
    pub accept_ranges: bool,
    /// Last-Modified parsed as an HTTP date, for the final file's mtime (spec §6.5).
    pub last_modified: Option<SystemTime>,
    /// `final_url` has the origin of the URL that was probed. When a redirect led elsewhere, the
    /// job's credentials (Authorization, Cookie) are not sent with the GETs that go straight there.
    pub same_origin: bool,
    /// The probe was redirected: `final_url` differs from the URL asked for. Under the
    /// ALLOW_REPORT policy the manager makes `final_url` the file's remote name (spec §6.2).
    pub redirected: bool,
    /// The probed representation's content-codings (`gzip` for a stored `.tar.gz` that Apache's
    /// `AddEncoding` or an S3 object labels so), lower-cased; `None` for identity. Its bytes are
    /// the file as stored on the server: they are kept as they are and never decoded, ranges
    /// count them (RFC 9110 §14.1.2), and every range answer must carry the same codings.
    pub content_encoding: Option<String>,
}

impl RemoteInfo {
    fn from_parts(parts: &Parts, url: &Url, size: u64, accept_ranges: bool) -> RemoteInfo {
        let validator = headers::validator(&parts.headers);
        let last_modified =
            validator.last_modified.as_deref().and_then(|d| httpdate::parse_http_date(d).ok());
        RemoteInfo {
            final_url: url.to_string(),
            size,
            validator,
            accept_ranges,
            last_modified,
            same_origin: true,
            redirected: false,
            content_encoding: headers::content_codings(&parts.headers),
        }
    }

    /// Records how the request for `start` got to `final_url` (this info's URL): whether it was
    /// redirected, and whether it stayed on the same origin.
    pub(crate) fn reached_from(mut self, start: &Url, final_url: &Url) -> RemoteInfo {
        self.same_origin = final_url.origin() == start.origin();
        self.redirected = final_url != start;
        self
    }
}

/// Whether a HEAD answer means "use GET instead": 405 and 501 say HEAD is not implemented, and
/// 403 is what S3 presigned GET URLs answer (the signature covers the method).
pub(crate) fn head_refused(status: StatusCode) -> bool {
    matches!(status.as_u16(), 403 | 405 | 501)
}

/// An error status as a [`FetchError`], carrying `Retry-After`.
pub(crate) fn status_error(parts: &Parts, url: &Url) -> FetchError {
    let mut err = FetchError::http_status(parts.status.as_u16(), url.as_str());
    err.retry_after = headers::retry_after(&parts.headers);
    err
}

/// Interprets the final (non-redirect) answer to HEAD.
pub(crate) fn from_head(parts: &Parts, url: &Url) -> Result<RemoteInfo, FetchError> {
    match parts.status.as_u16() {
        200 | 203 => {}
        s if (200..300).contains(&s) => {
            return Err(FetchError::invalid_response(format!("HEAD {url} answered {s}")));
        }
        _ => return Err(status_error(parts, url)),
    }
    let size = match headers::content_length(&parts.headers) {
        Ok(Some(size)) => size,
        Ok(None) => {
            return Err(FetchError::missing_size(format!(
                "HEAD {url} gave no Content-Length, so the file size is unknown"
            )));
        }
        Err(why) => {
            return Err(FetchError::missing_size(format!("HEAD {url}: {why}")));
        }
    };
    Ok(RemoteInfo::from_parts(parts, url, size, headers::accepts_byte_ranges(&parts.headers)))
}

/// The `Content-Range` of a response, if it has one.
fn content_range(parts: &Parts, url: &Url) -> Result<Option<ContentRange>, FetchError> {
    let Some(value) = parts.headers.get(http::header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        FetchError::invalid_response(format!("unreadable Content-Range from {url}"))
    })?;
    ContentRange::parse(text)
        .map(Some)
        .map_err(|e| FetchError::invalid_response(format!("GET {url}: {e}")))
}

/// The file size from a 206 to `GET` with `Range: <asked>` (`bytes=0-0` or `bytes=0-`): its
/// Content-Range must start at byte 0 (and end there when `last` says so) and name the total.
fn total_from_206(
    parts: &Parts,
    url: &Url,
    asked: &str,
    last: Option<u64>,
) -> Result<u64, FetchError> {
    match content_range(parts, url)? {
        Some(ContentRange::Satisfied { first: 0, last: got, complete: Some(size) })
            if last.is_none_or(|last| last == got) =>
        {
            Ok(size)
        }
        Some(ContentRange::Satisfied { complete: None, .. }) => Err(FetchError::missing_size(
            format!("GET {url} gave Content-Range without a total size"),
        )),
        Some(other) => Err(FetchError::invalid_response(format!(
            "GET {url} {asked} answered with Content-Range {other}"
        ))),
        None => Err(FetchError::invalid_response(format!("206 from {url} without Content-Range"))),
    }
}

/// Interprets the answer to the fallback `GET` with `Range: bytes=0-0`.
pub(crate) fn from_range_probe(parts: &Parts, url: &Url) -> Result<RemoteInfo, FetchError> {
    match parts.status.as_u16() {
        206 => {
            let size = total_from_206(parts, url, "bytes=0-0", Some(0))?;
            Ok(RemoteInfo::from_parts(parts, url, size, true))
        }
        200 | 203 => match headers::content_length(&parts.headers) {
            Ok(Some(size)) => Ok(RemoteInfo::from_parts(
                parts,
                url,
                size,
                headers::accepts_byte_ranges(&parts.headers),
            )),
            Ok(None) => Err(FetchError::missing_size(format!(
                "GET {url} gave neither Content-Range nor Content-Length"
            ))),
            Err(why) => Err(FetchError::missing_size(format!("GET {url}: {why}"))),
        },
        // The only file for which bytes=0-0 is unsatisfiable is the empty one.
        416 => match content_range(parts, url)? {
            Some(ContentRange::Unsatisfied { complete: 0 }) => {
                Ok(RemoteInfo::from_parts(parts, url, 0, true))
            }
            _ => Err(status_error(parts, url)),
        },
        s if (200..300).contains(&s) => {
            Err(FetchError::invalid_response(format!("GET {url} answered {s}")))
        }
        _ => Err(status_error(parts, url)),
    }
}

/// What the answer to `GET` with `Range: bytes=0-` says about the file: a 206 whose
/// Content-Range starts at 0 and names the total, or a 200 with a Content-Length (the server
/// ignored the range; whether that body is acceptable is `range::check`'s call). An empty file
/// answers 416 `bytes */0` or a length of 0 (size 0: nothing to stream).
pub(crate) fn from_open_range(parts: &Parts, url: &Url) -> Result<RemoteInfo, FetchError> {
    match parts.status.as_u16() {
        206 => {
            let size = total_from_206(parts, url, "bytes=0-", None)?;
            Ok(RemoteInfo::from_parts(parts, url, size, true))
        }
        _ => from_range_probe(parts, url),
    }
}

#[cfg(test)]
mod tests {
    use bits_core::Code;

    use super::*;
    use crate::FetchErrorKind;
    use crate::test_support::parts;

    fn url() -> Url {
        Url::parse("http://h/f").unwrap()
    }

    #[test]
    fn head_records_size_and_validators() {
        let lm = "Wed, 21 Oct 2015 07:28:00 GMT";
        let info = from_head(
            &parts(
                200,
                &[
                    ("content-length", "10"),
                    ("etag", "\"v1\""),
                    ("last-modified", lm),
                    ("accept-ranges", "bytes"),
                ],
            ),
            &url(),
        )
        .unwrap();
        assert_eq!(info.size, 10);
        assert_eq!(info.validator.etag.as_deref(), Some("\"v1\""));
        assert_eq!(info.validator.last_modified.as_deref(), Some(lm));
        assert!(info.accept_ranges);
        assert_eq!(info.last_modified, httpdate::parse_http_date(lm).ok());
        assert_eq!(info.final_url, "http://h/f");
    }

    #[test]
    fn the_probed_representation_keeps_its_content_coding() {
        let head = parts(200, &[("content-length", "5000"), ("content-encoding", "gzip")]);
        assert_eq!(from_head(&head, &url()).unwrap().content_encoding.as_deref(), Some("gzip"));
        let plain = parts(200, &[("content-length", "5000"), ("content-encoding", "identity")]);
        assert_eq!(from_head(&plain, &url()).unwrap().content_encoding, None);
        let get =
            parts(206, &[("content-range", "bytes 0-4999/5000"), ("content-encoding", "gzip")]);
        assert_eq!(
            from_open_range(&get, &url()).unwrap().content_encoding.as_deref(),
            Some("gzip")
        );
    }

    #[test]
    fn head_without_length_is_missing_size() {
        for p in [parts(200, &[]), parts(200, &[("content-length", "x")])] {
            let err = from_head(&p, &url()).unwrap_err();
            assert_eq!(
                (err.kind, err.code),
                (FetchErrorKind::MissingSize, Code::BG_E_MISSING_FILE_SIZE)
            );
            assert!(!err.transient);
        }
        let err = from_head(&parts(503, &[("retry-after", "7")]), &url()).unwrap_err();
        assert_eq!(err.kind, FetchErrorKind::Http(503));
        assert_eq!(err.retry_after, Some(std::time::Duration::from_secs(7)));
    }

    #[test]
    fn range_probe_reads_the_total() {
        let info =
            from_range_probe(&parts(206, &[("content-range", "bytes 0-0/77")]), &url()).unwrap();
        assert_eq!((info.size, info.accept_ranges), (77, true));
        let info = from_range_probe(&parts(200, &[("content-length", "5")]), &url()).unwrap();
        assert_eq!((info.size, info.accept_ranges), (5, false));
        let info =
            from_range_probe(&parts(416, &[("content-range", "bytes */0")]), &url()).unwrap();
        assert_eq!(info.size, 0);
        let err = from_range_probe(&parts(206, &[("content-range", "bytes 0-1/77")]), &url());
        assert_eq!(err.unwrap_err().kind, FetchErrorKind::InvalidResponse);
        let err = from_range_probe(&parts(200, &[]), &url()).unwrap_err();
        assert_eq!(err.kind, FetchErrorKind::MissingSize);
    }

    #[test]
    fn open_range_reads_the_total_and_leaves_empty_files_to_the_probe() {
        let open = |status, pairs: &[(&str, &str)]| from_open_range(&parts(status, pairs), &url());
        let info = open(206, &[("content-range", "bytes 0-76/77"), ("etag", "\"e\"")]).unwrap();
        assert_eq!((info.size, info.accept_ranges), (77, true));
        assert_eq!(info.validator.etag.as_deref(), Some("\"e\""));
        let info = open(200, &[("content-length", "5")]).unwrap();
        assert_eq!((info.size, info.accept_ranges), (5, false));
        assert_eq!(open(416, &[("content-range", "bytes */0")]).unwrap().size, 0);
        // Apache's answer for an empty file, whose HEAD has no Content-Length.
        let info = open(200, &[("content-length", "0"), ("etag", "\"0-6\"")]).unwrap();
        assert_eq!((info.size, info.validator.etag.as_deref()), (0, Some("\"0-6\"")));
        // Only an empty file makes bytes=0- unsatisfiable.
        assert_eq!(
            open(416, &[("content-range", "bytes */77")]).unwrap_err().code,
            Code::Http(416)
        );
        let err = open(206, &[("content-range", "bytes 5-76/77")]).unwrap_err();
        assert_eq!(err.kind, FetchErrorKind::InvalidResponse);
        assert_eq!(
            open(206, &[("content-range", "bytes 0-76/*")]).unwrap_err().kind,
            FetchErrorKind::MissingSize
        );
        assert_eq!(open(404, &[]).unwrap_err().code, Code::Http(404));
    }
}
