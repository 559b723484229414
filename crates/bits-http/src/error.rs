//! The one error type of this crate. Every failure the fetcher can hit is mapped here to a BITS
//! [`Code`], an [`ErrorContext`] and a transient/fatal decision, so the job manager can move a job to
//! TRANSIENT_ERROR or ERROR (or restart a file) without looking at HTTP details itself.

use std::time::Duration;

use bits_core::{BitsError, Code, ErrorContext};

use crate::classify;

/// What went wrong, coarsely; the exact BITS code is in [`FetchError::code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchErrorKind {
    /// The server answered with this (unexpected) HTTP status.
    Http(u16),
    /// Connecting failed, DNS failed, or the connection broke.
    Transport,
    /// Connecting took too long, or the server sent nothing for the idle timeout.
    Timeout,
    /// HEAD (or the fallback GET) gave no file size.
    MissingSize,
    /// The server ignores `Range` for a span that is not the whole file.
    RangeNotSupported,
    /// The requested span lies outside the remote file (416, or a caller asking past the end).
    InvalidRange,
    /// The remote file is another version than the one probed: restart the file from zero.
    RemoteChanged,
    /// The response does not match what was asked (Content-Range, length, encoding, framing).
    InvalidResponse,
    /// Too many redirects, a loop, a downgrade from https to http, or a redirect without a target.
    Redirect,
    /// The job's redirect policy is DISALLOW and the server answered with a redirect (300, 301,
    /// 302, 303, 307 or 308). The code is `HRESULT_FROM_WIN32(HTTP_STATUS_<status>)` and
    /// [`FetchError::redirect_target`] holds where the server pointed (spec §6.2).
    RedirectDisallowed,
    /// TLS handshake or certificate verification failed.
    Tls,
    /// The URL is not a usable http(s) URL.
    BadUrl,
}

/// A failed fetch, ready to become a BITS job error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FetchError {
    pub kind: FetchErrorKind,
    pub code: Code,
    pub context: ErrorContext,
    /// Retry after the job's retry delay (TRANSIENT_ERROR) rather than failing the job (ERROR).
    pub transient: bool,
    pub message: String,
    /// The server's `Retry-After` (delta-seconds or HTTP date), for 429 and 503 answers.
    pub retry_after: Option<Duration>,
    /// For [`FetchErrorKind::RedirectDisallowed`]: the absolute URL the refused redirect pointed
    /// to (resolved against the request URL, fragment dropped), when it had a usable http(s)
    /// `Location`. The manager makes it the file's remote name (spec §6.2, case 68).
    pub redirect_target: Option<String>,
}

impl FetchError {
    pub(crate) fn new(
        kind: FetchErrorKind,
        code: Code,
        context: ErrorContext,
        transient: bool,
        message: impl Into<String>,
    ) -> FetchError {
        FetchError {
            kind,
            code,
            context,
            transient,
            message: message.into(),
            retry_after: None,
            redirect_target: None,
        }
    }

    /// An HTTP status that is an error for this request, classified by spec §5.2.
    pub(crate) fn http_status(status: u16, url: &str) -> FetchError {
        let (code, transient) = classify::classify_status(status);
        FetchError::new(
            FetchErrorKind::Http(status),
            code,
            ErrorContext::RemoteFile,
            transient,
            format!("HTTP {status} from {url}"),
        )
    }

    pub(crate) fn missing_size(message: impl Into<String>) -> FetchError {
        FetchError::new(
            FetchErrorKind::MissingSize,
            Code::BG_E_MISSING_FILE_SIZE,
            ErrorContext::RemoteFile,
            false,
            message,
        )
    }

    pub(crate) fn range_not_supported(message: impl Into<String>) -> FetchError {
        FetchError::new(
            FetchErrorKind::RangeNotSupported,
            Code::BG_E_INSUFFICIENT_RANGE_SUPPORT,
            ErrorContext::RemoteFile,
            false,
            message,
        )
    }

    pub(crate) fn invalid_range(message: impl Into<String>) -> FetchError {
        FetchError::new(
            FetchErrorKind::InvalidRange,
            Code::BG_E_INVALID_RANGE,
            ErrorContext::RemoteFile,
            false,
            message,
        )
    }

    pub(crate) fn remote_changed(message: impl Into<String>) -> FetchError {
        FetchError::new(
            FetchErrorKind::RemoteChanged,
            Code::BG_E_REMOTE_FILE_CHANGED,
            ErrorContext::RemoteFile,
            false,
            message,
        )
    }

    pub(crate) fn invalid_response(message: impl Into<String>) -> FetchError {
        FetchError::new(
            FetchErrorKind::InvalidResponse,
            Code::ERROR_WINHTTP_INVALID_SERVER_RESPONSE,
            ErrorContext::GeneralTransport,
            true,
            message,
        )
    }

    pub(crate) fn redirect(message: impl Into<String>) -> FetchError {
        FetchError::new(
            FetchErrorKind::Redirect,
            Code::ERROR_WINHTTP_REDIRECT_FAILED,
            ErrorContext::RemoteFile,
            false,
            message,
        )
    }

    /// A redirect that the DISALLOW policy refuses: fatal, REMOTE_FILE, with the code BITS reports
    /// for it, `HRESULT_FROM_WIN32(HTTP_STATUS_<status>)` (302 → 0x8007012E). BITS documents no
    /// value for 308; it gets `Win32Http(308)` (0x80070134) by the same rule.
    pub(crate) fn redirect_disallowed(
        status: u16,
        url: &str,
        target: Option<String>,
    ) -> FetchError {
        let message = match &target {
            Some(to) => {
                format!("HTTP {status} from {url} redirects to {to}; redirects are disallowed")
            }
            None => format!("HTTP {status} from {url} is a redirect; redirects are disallowed"),
        };
        let mut err = FetchError::new(
            FetchErrorKind::RedirectDisallowed,
            Code::Win32Http(status),
            ErrorContext::RemoteFile,
            false,
            message,
        );
        err.redirect_target = target;
        err
    }

    pub(crate) fn bad_url(message: impl Into<String>) -> FetchError {
        FetchError::new(
            FetchErrorKind::BadUrl,
            Code::E_INVALIDARG,
            ErrorContext::RemoteFile,
            false,
            message,
        )
    }

    pub(crate) fn tls(message: impl Into<String>) -> FetchError {
        FetchError::new(
            FetchErrorKind::Tls,
            Code::ERROR_WINHTTP_SECURE_FAILURE,
            ErrorContext::GeneralTransport,
            false,
            message,
        )
    }

    pub(crate) fn timeout(message: impl Into<String>) -> FetchError {
        FetchError::new(
            FetchErrorKind::Timeout,
            Code::ERROR_WINHTTP_TIMEOUT,
            ErrorContext::GeneralTransport,
            true,
            message,
        )
    }

    /// A transient transport failure with one of the WinHTTP connection codes.
    pub(crate) fn transport(code: Code, message: impl Into<String>) -> FetchError {
        FetchError::new(
            FetchErrorKind::Transport,
            code,
            ErrorContext::GeneralTransport,
            true,
            message,
        )
    }

    /// Whether the manager should throw away the file's bytes and start it again from zero.
    pub fn restarts_file(&self) -> bool {
        self.kind == FetchErrorKind::RemoteChanged
    }

    /// The code and message as a [`BitsError`].
    pub fn to_bits_error(&self) -> BitsError {
        BitsError::new(self.code, self.message.clone())
    }
}

impl From<FetchError> for BitsError {
    fn from(err: FetchError) -> BitsError {
        BitsError::new(err.code, err.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_code() {
        let err = FetchError::missing_size("HEAD http://x/ gave no Content-Length");
        assert_eq!(
            err.to_string(),
            "BG_E_MISSING_FILE_SIZE (0x80200011): HEAD http://x/ gave no Content-Length"
        );
        assert!(!err.transient);
        assert_eq!(err.context, ErrorContext::RemoteFile);
        let http = FetchError::http_status(503, "http://x/");
        assert_eq!(http.kind, FetchErrorKind::Http(503));
        assert_eq!(http.code, Code::Http(503));
        assert!(http.transient);
        assert!(http.to_string().starts_with("BG_E_HTTP_ERROR_503"));
        assert_eq!(BitsError::from(http).code, Code::Http(503));
    }

    #[test]
    fn disallowed_redirect_carries_win32_http_code_and_target() {
        let err = FetchError::redirect_disallowed(302, "http://x/a", Some("http://y/b".into()));
        assert_eq!(
            (err.kind, err.code),
            (FetchErrorKind::RedirectDisallowed, Code::Win32Http(302))
        );
        assert_eq!(err.code.hresult(), 0x8007_012E);
        assert_eq!((err.context, err.transient), (ErrorContext::RemoteFile, false));
        assert_eq!(err.redirect_target.as_deref(), Some("http://y/b"));
        assert!(err.message.contains("http://y/b"), "{err}");
        for (status, hr) in [
            (300, 0x8007_012C),
            (301, 0x8007_012D),
            (303, 0x8007_012F),
            (307, 0x8007_0133),
            (308, 0x8007_0134),
        ] {
            let err = FetchError::redirect_disallowed(status, "http://x/a", None);
            assert_eq!(err.code.hresult(), hr, "{status}");
            assert_eq!(err.redirect_target, None);
        }
    }
}
