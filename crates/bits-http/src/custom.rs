//! A job's custom headers (BITS SetCustomHeaders): `Name: value` lines sent with every request.
//! Parsed once when they are set, so a malformed line is refused at the API instead of failing
//! transfers later, and headers that would break range handling are never accepted.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers bitsd itself must control for ranged downloads to stay correct.
const RESERVED: [HeaderName; 8] = [
    header::RANGE,
    header::IF_RANGE,
    header::ACCEPT_ENCODING,
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::TE,
];

/// Parses CRLF- (or LF-) separated `Name: value` lines; empty lines are ignored. The error names
/// the offending line.
pub fn parse_custom_headers(text: &str) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("header line {} {line:?} has no \"Name: value\" form", n + 1));
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("header line {} has an invalid name {:?}", n + 1, name.trim()))?;
        if RESERVED.contains(&name) {
            return Err(format!("header {name} is set by bitsd itself and cannot be overridden"));
        }
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("header {name} on line {} has an invalid value", n + 1))?;
        headers.append(name, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_refuses_bad_or_reserved_ones() {
        let h = parse_custom_headers(
            "Authorization: Basic eDp5\r\nCookie: a=b\r\nX-Two: 1\r\nX-Two: 2\r\n",
        )
        .unwrap();
        assert_eq!(h.get(header::AUTHORIZATION).unwrap(), "Basic eDp5");
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=b");
        assert_eq!(h.get_all("x-two").iter().count(), 2);
        assert!(parse_custom_headers("").unwrap().is_empty());
        assert!(parse_custom_headers("no colon here").unwrap_err().contains("line 1"));
        assert!(parse_custom_headers("Bad Name: x").unwrap_err().contains("invalid name"));
        assert!(parse_custom_headers("Range: bytes=0-1").unwrap_err().contains("range"));
        assert!(parse_custom_headers("X-A: \u{7f}").is_err());
    }
}
