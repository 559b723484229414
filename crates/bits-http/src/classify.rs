//! HTTP status → BITS code and transient/fatal decision (spec §5.2, settled for downloads): kept in
//! one table-like function so the policy is visible and testable in one place.

use bits_core::Code;

/// The code (`BG_E_HTTP_ERROR_<status>`) and whether retrying later may help.
///
/// 4xx are fatal except 408 (timeout), 409 (conflict) and 429 (too many requests); 5xx are
/// transient except 501 (not implemented) and 505 (version not supported). 3xx that reach here
/// (not followed) are fatal for 300–305 and 307, transient otherwise; anything else is transient.
pub fn classify_status(status: u16) -> (Code, bool) {
    let transient = match status {
        408 | 409 | 429 => true,
        400..=499 => false,
        501 | 505 => false,
        500..=599 => true,
        300..=305 | 307 => false,
        _ => true,
    };
    (Code::Http(status), transient)
}

/// Whether this status is a redirect the fetcher follows.
pub fn is_followed_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_table() {
        for fatal in [400, 401, 403, 404, 405, 407, 410, 412, 414, 416, 451, 501, 505, 300, 305] {
            assert_eq!(classify_status(fatal), (Code::Http(fatal), false), "{fatal}");
        }
        for transient in [408, 409, 429, 500, 502, 503, 504, 507, 599, 100, 306, 600] {
            assert_eq!(classify_status(transient), (Code::Http(transient), true), "{transient}");
        }
        assert!(is_followed_redirect(308));
        assert!(!is_followed_redirect(304));
    }
}
