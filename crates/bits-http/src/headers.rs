//! Small, strict readers for the response headers the fetcher relies on (Content-Length,
//! validators, encodings, Retry-After). Header names are case-insensitive by construction
//! (`http::HeaderMap`); values are read as sent.

use std::time::{Duration, SystemTime};

use bits_core::Validator;
use http::{HeaderMap, HeaderName, header};

use crate::content_range::parse_digits;

/// A header's value as text (lossy for non-UTF-8 bytes), or `None` when absent.
pub(crate) fn text(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// `Content-Length`: `Ok(None)` when absent, `Err` when present but not one plain decimal number
/// (several differing values count as unreadable).
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, String> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| "unreadable Content-Length".to_string())?;
        let n = parse_digits(text.trim()).ok_or_else(|| format!("bad Content-Length {text:?}"))?;
        if found.is_some_and(|prev| prev != n) {
            return Err("conflicting Content-Length headers".to_string());
        }
        found = Some(n);
    }
    Ok(found)
}

/// The ETag and Last-Modified strings, as sent.
pub(crate) fn validator(headers: &HeaderMap) -> Validator {
    Validator {
        etag: text(headers, &header::ETAG),
        last_modified: text(headers, &header::LAST_MODIFIED),
    }
}

/// Why `new` shows another version than `old`, if it does. A validator only counts when both
/// sides have it.
pub(crate) fn validator_change(old: &Validator, new: &Validator) -> Option<String> {
    if let (Some(a), Some(b)) = (&old.etag, &new.etag)
        && a != b
    {
        return Some(format!("ETag changed from {a} to {b}"));
    }
    if let (Some(a), Some(b)) = (&old.last_modified, &new.last_modified)
        && a != b
    {
        return Some(format!("Last-Modified changed from {a} to {b}"));
    }
    None
}

/// The `If-Range` value for a validator: a strong ETag if there is one, else the Last-Modified
/// date. Weak ETags are never used (RFC 9110 forbids them in If-Range).
pub(crate) fn if_range(validator: &Validator) -> Option<&str> {
    match &validator.etag {
        Some(etag) if !etag.starts_with("W/") => Some(etag),
        _ => validator.last_modified.as_deref(),
    }
}

/// Whether `Accept-Ranges` lists `bytes`.
pub(crate) fn accepts_byte_ranges(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_RANGES).iter().any(|v| {
        v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("bytes")))
    })
}

/// The content-codings of `Content-Encoding` other than `identity`, in order, lower-cased and
/// joined by `", "` (so two answers about one representation compare equal however they spell
/// it); `None` for the identity representation.
pub(crate) fn content_codings(headers: &HeaderMap) -> Option<String> {
    let mut codings = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = String::from_utf8_lossy(value.as_bytes());
        for coding in text.split(',').map(str::trim) {
            if !coding.is_empty() && !coding.eq_ignore_ascii_case("identity") {
                codings.push(coding.to_ascii_lowercase());
            }
        }
    }
    (!codings.is_empty()).then(|| codings.join(", "))
}

/// `Retry-After` as a delay from now (delta-seconds or an HTTP date).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Some(secs) = parse_digits(text) {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn content_length_is_strict() {
        assert_eq!(content_length(&map(&[])), Ok(None));
        assert_eq!(content_length(&map(&[("content-length", "42")])), Ok(Some(42)));
        assert_eq!(
            content_length(&map(&[("Content-Length", "42"), ("content-length", "42")])),
            Ok(Some(42))
        );
        assert!(
            content_length(&map(&[("content-length", "42"), ("content-length", "43")])).is_err()
        );
        assert!(content_length(&map(&[("content-length", "-1")])).is_err());
        assert!(content_length(&map(&[("content-length", "4 2")])).is_err());
    }

    #[test]
    fn validators_and_if_range() {
        let strong = Validator { etag: Some("\"a\"".into()), last_modified: Some("d".into()) };
        assert_eq!(if_range(&strong), Some("\"a\""));
        let weak = Validator { etag: Some("W/\"a\"".into()), last_modified: Some("d".into()) };
        assert_eq!(if_range(&weak), Some("d"));
        let weak_only = Validator { etag: Some("W/\"a\"".into()), last_modified: None };
        assert_eq!(if_range(&weak_only), None);
        assert_eq!(if_range(&Validator::default()), None);
        let other = Validator { etag: Some("\"b\"".into()), last_modified: None };
        assert!(validator_change(&strong, &other).is_some());
        assert!(validator_change(&strong, &Validator::default()).is_none());
        assert!(validator_change(&strong, &strong).is_none());
    }

    #[test]
    fn encodings_ranges_and_retry_after() {
        assert_eq!(content_codings(&map(&[("content-encoding", "identity")])), None);
        assert_eq!(content_codings(&map(&[])), None);
        assert_eq!(
            content_codings(&map(&[("Content-Encoding", "identity, GZIP")])),
            Some("gzip".into())
        );
        assert_eq!(
            content_codings(&map(&[("content-encoding", "gzip"), ("content-encoding", " br ")])),
            Some("gzip, br".into())
        );
        assert!(accepts_byte_ranges(&map(&[("accept-ranges", "none, Bytes")])));
        assert!(!accepts_byte_ranges(&map(&[("accept-ranges", "none")])));
        assert_eq!(retry_after(&map(&[("retry-after", "120")])), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after(&map(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")])),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&map(&[("retry-after", "soon")])), None);
    }
}
