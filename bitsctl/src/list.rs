//! The LIST files of `bitsctl add-set` and `bitsctl download -i`: one `URL DEST [sha256=HEX]` a
//! line, as bitsadmin /addfileset reads them (`#` comments and blank lines skipped). Errors name
//! the file and line, so a typo in a list of 200 files is found at once.

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// One line of a LIST: where to fetch, where to put it, and optionally the expected digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    pub url: String,
    /// As written; the caller makes it absolute (`cmd::absolute`) before sending it.
    pub dest: PathBuf,
    /// 64 lowercase hex digits.
    pub sha256: Option<String>,
    /// 1-based, for messages.
    pub line: usize,
}

/// Bad input in a LIST or an argument read from a file: a usage error (exit 2) whose text
/// names the origin (`FILE:LINE`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parses a LIST's text; `origin` names it in errors (the path, or `<stdin>`).
pub fn parse_list(text: &str, origin: &str) -> Result<Vec<ListEntry>, UsageError> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let bad = |why: String| UsageError(format!("{origin}:{line}: {why}"));
        let mut words = content.split_whitespace();
        let (Some(url), Some(dest)) = (words.next(), words.next()) else {
            return Err(bad(format!("'{content}' has no DEST (expected 'URL DEST [sha256=HEX]')")));
        };
        let sha256 = match words.next() {
            None => None,
            Some(word) => {
                let Some(hex) = word.strip_prefix("sha256=") else {
                    return Err(bad(format!(
                        "third column '{word}' is not sha256=HEX (destinations with spaces are not supported)"
                    )));
                };
                Some(parse_sha256(hex).map_err(bad)?)
            }
        };
        if let Some(extra) = words.next() {
            return Err(bad(format!("unexpected '{extra}' after 'URL DEST [sha256=HEX]'")));
        }
        entries.push(ListEntry { url: url.to_string(), dest: PathBuf::from(dest), sha256, line });
    }
    if entries.is_empty() {
        return Err(UsageError(format!("{origin}: no files listed")));
    }
    Ok(entries)
}

/// A SHA-256 digest as 64 hex digits (either case), returned in lowercase.
pub fn parse_sha256(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("'{text}' is not a SHA-256 digest (64 hex digits)"));
    }
    Ok(text.to_ascii_lowercase())
}

/// The text of PATH, or of stdin for `-`, with the name to use in messages. A missing or
/// unreadable file, or one that is not UTF-8, is a usage error naming it.
pub fn read_input(path: &Path) -> Result<(String, String), UsageError> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| UsageError(format!("cannot read stdin: {e}")))?;
        return Ok((text, "<stdin>".to_string()));
    }
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read {origin}: {e}")))?;
    Ok((text, origin))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn lines_comments_and_digests() {
        let text = format!(
            "# nightly\n\nhttp://h/a /tmp/a\n  http://h/b\tb.bin   sha256={}  \n",
            HEX.to_uppercase()
        );
        let list = parse_list(&text, "L").unwrap();
        assert_eq!(
            list,
            vec![
                ListEntry {
                    url: "http://h/a".into(),
                    dest: "/tmp/a".into(),
                    sha256: None,
                    line: 3
                },
                ListEntry {
                    url: "http://h/b".into(),
                    dest: "b.bin".into(),
                    sha256: Some(HEX.into()),
                    line: 4
                },
            ]
        );
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let cases = [
            ("http://h/a /a\nhttp://h/b\n", "L:2: 'http://h/b' has no DEST"),
            ("http://h/a /a sha256=12\n", "L:1: '12' is not a SHA-256 digest"),
            ("http://h/a /a md5=12\n", "L:1: third column 'md5=12' is not sha256=HEX"),
            (&format!("http://h/a /a sha256={HEX} x\n"), "L:1: unexpected 'x'"),
            ("# only a comment\n\n", "L: no files listed"),
            ("", "L: no files listed"),
        ];
        for (text, want) in cases {
            let err = parse_list(text, "L").unwrap_err();
            assert!(err.0.starts_with(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn digests() {
        assert_eq!(parse_sha256(&HEX.to_uppercase()).unwrap(), HEX);
        for bad in ["", "abc", &HEX[1..], &format!("{HEX}0"), &format!("{}g", &HEX[1..])] {
            assert!(parse_sha256(bad).unwrap_err().contains("64 hex digits"), "{bad}");
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = read_input(Path::new("/nonexistent/list.txt")).unwrap_err();
        assert!(err.0.starts_with("cannot read /nonexistent/list.txt: "), "{err}");
    }
}
