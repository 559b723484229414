//! The custom-header files of `bitsctl set-headers --from-file` (and `download --header-file`):
//! `Name: value` a line. Checked here so that a typo is reported with its file and line before
//! anything reaches the daemon, which checks them again.

use crate::list::UsageError;

/// The headers of a file, joined with CRLF as SetCustomHeaders takes them. Blank lines and
/// lines starting with `#` are skipped; a file with no header at all is refused (--clear
/// removes headers).
pub fn parse_headers(text: &str, origin: &str) -> Result<String, UsageError> {
    let mut headers = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        // The value is not shown: headers are secrets (tokens, cookies).
        let bad = |why: &str| UsageError(format!("{origin}:{}: {why}", i + 1));
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("not a 'Name: value' header (no ':')"));
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(bad(&format!(
                "'{}' is not a header name (letters, digits and !#$%&'*+-.^_`|~ only)",
                name.escape_default()
            )));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(bad(&format!("the value of {name} holds a control character")));
        }
        headers.push(format!("{name}: {}", value.trim()));
    }
    if headers.is_empty() {
        return Err(UsageError(format!("{origin}: no headers (use --clear to remove them)")));
    }
    Ok(headers.join("\r\n"))
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn lines_become_crlf_headers() {
        let text = "# auth\nAuthorization: Bearer abc\r\n\nX-Trace:1\n";
        assert_eq!(parse_headers(text, "h").unwrap(), "Authorization: Bearer abc\r\nX-Trace: 1");
    }

    #[test]
    fn bad_lines_name_the_file_and_line_but_not_the_value() {
        let cases = [
            ("A: b\nno colon here\n", "h:2: not a 'Name: value' header"),
            ("Bad Name: x\n", "h:1: 'Bad Name' is not a header name"),
            (": x\n", "h:1: '' is not a header name"),
            ("A: secret\u{1}\n", "h:1: the value of A holds a control character"),
            ("\n# nothing\n", "h: no headers"),
        ];
        for (text, want) in cases {
            let err = parse_headers(text, "h").unwrap_err();
            assert!(err.0.starts_with(want), "{text:?}: {err}");
            assert!(!err.0.contains("secret"), "{err}");
        }
    }
}
