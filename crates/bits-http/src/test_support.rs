//! What the unit tests of the probe and of both range checks build their cases from: a response
//! head with chosen headers, the probed file those checks hold a response against, and the
//! refusals they expect (kind, code, transient).

use bits_core::{Code, Validator};
use http::response::Parts;

use crate::error::FetchErrorKind;
use crate::probe::RemoteInfo;

/// A response head with `status` and the headers `pairs`, in order.
pub(crate) fn parts(status: u16, pairs: &[(&str, &str)]) -> Parts {
    let mut b = http::Response::builder().status(status);
    for (k, v) in pairs {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

/// `http://h/f` as a probe saw it: 100 bytes, ETag `"v1"`, ranges accepted, no redirect.
pub(crate) fn remote() -> RemoteInfo {
    RemoteInfo {
        final_url: "http://h/f".into(),
        size: 100,
        validator: Validator { etag: Some("\"v1\"".into()), last_modified: None },
        accept_ranges: true,
        last_modified: None,
        same_origin: true,
        redirected: false,
        content_encoding: None,
    }
}

/// A response that breaks the protocol: retried.
pub(crate) const INVALID: (FetchErrorKind, Code, bool) =
    (FetchErrorKind::InvalidResponse, Code::ERROR_WINHTTP_INVALID_SERVER_RESPONSE, true);
/// A response from another version of the file: fatal.
pub(crate) const CHANGED: (FetchErrorKind, Code, bool) =
    (FetchErrorKind::RemoteChanged, Code::BG_E_REMOTE_FILE_CHANGED, false);
