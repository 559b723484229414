//! Parsing, reading files, the header round trip and the redacting `Debug`.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;

use super::*;

fn token(text: &str) -> Token {
    Token::parse(text).unwrap()
}

/// A file holding `contents` with `mode` in a fresh temp dir (kept alive by the returned guard).
fn file(contents: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tcp.token");
    std::fs::File::create(&path).unwrap().write_all(contents.as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, path)
}

#[test]
fn surrounding_whitespace_is_not_part_of_the_token() {
    assert_eq!(token("  t0ken\n"), token("t0ken"));
    assert_eq!(token("\tA-b_c.~+/=\r\n"), token("A-b_c.~+/="));
    assert_ne!(token("t0ken"), token("t0ken2"));
    assert_ne!(token("t0ken"), token("T0KEN"));
}

#[test]
fn a_token_is_non_empty_printable_ascii_without_spaces() {
    for empty in ["", " ", " \n\t\n"] {
        assert_eq!(Token::parse(empty), Err(TokenError::Empty), "{empty:?}");
    }
    for bad in ["two words", "caf\u{e9}", "tab\there", "nul\0", "del\u{7f}"] {
        assert_eq!(Token::parse(bad), Err(TokenError::NotHeaderText), "{bad:?}");
    }
    assert!(TokenError::NotHeaderText.to_string().contains("printable ASCII without spaces"));
}

#[test]
fn debug_never_shows_the_token() {
    let debug = format!("{:?}", token("very-secret-token"));
    assert_eq!(debug, "Token(<redacted>)");
}

#[test]
fn the_header_value_is_bearer_and_sensitive_and_parses_back() {
    let value = token("s3cret").to_authorization();
    assert_eq!(value, "Bearer s3cret");
    assert!(value.is_sensitive());
    assert_eq!(Token::from_authorization(&value), Ok(token("s3cret")));
}

#[test]
fn the_bearer_scheme_is_case_insensitive_and_spaces_around_the_token_are_allowed() {
    for header in ["Bearer s3cret", "bearer s3cret", "  BEARER   s3cret  "] {
        let value = AsciiMetadataValue::try_from(header).unwrap();
        assert_eq!(Token::from_authorization(&value), Ok(token("s3cret")), "{header:?}");
    }
}

#[test]
fn anything_but_bearer_and_one_token_is_not_bearer() {
    for header in ["s3cret", "Basic czNjcmV0", "Bearer ", "Bearer", "Bearer a b", "Bearers s3cret"]
    {
        let value = AsciiMetadataValue::try_from(header).unwrap();
        assert_eq!(Token::from_authorization(&value), Err(TokenError::NotBearer), "{header:?}");
    }
    // Bytes a header may carry but that are not text.
    let opaque = AsciiMetadataValue::try_from(&b"Bearer \xff"[..]).unwrap();
    assert_eq!(Token::from_authorization(&opaque), Err(TokenError::NotBearer));
}

#[test]
fn a_client_reads_any_readable_file() {
    for mode in [0o600, 0o644, 0o400] {
        let (_dir, path) = file("  t0ken\n", mode);
        assert_eq!(Token::read_file(&path).unwrap(), token("t0ken"), "{mode:o}");
    }
}

#[test]
fn the_daemon_reads_only_a_private_regular_file() {
    for mode in [0o600, 0o400] {
        let (_dir, path) = file("t0ken\n", mode);
        assert_eq!(Token::read_private_file(&path).unwrap(), token("t0ken"), "{mode:o}");
    }
    for mode in [0o644, 0o640, 0o604, 0o602, 0o620] {
        let (_dir, path) = file("t0ken", mode);
        let e = Token::read_private_file(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} is readable or writable by group or others (mode {mode:04o}); chmod 600 it",
                path.display()
            )
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let e = Token::read_private_file(dir.path()).unwrap_err();
    assert_eq!(e.to_string(), format!("{} is not a regular file", dir.path().display()));
    // A FIFO with no writer is refused at once, not waited on (a blocking open would hang).
    let fifo = dir.path().join("fifo");
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
    let e = Token::read_private_file(&fifo).unwrap_err();
    assert_eq!(e.to_string(), format!("{} is not a regular file", fifo.display()));
}

/// A token file of another user is refused even when its mode is private: its owner could
/// write a token of their choice into it (for a root daemon, one acting as `tcp.uid`).
#[test]
fn the_daemon_reads_only_a_file_of_its_own_user() {
    let euid = rustix::process::geteuid().as_raw();
    assert_eq!(euid, 0, "this test chowns a file to another user; run it as root (as CI does)");
    for owner in [65534, 1000] {
        let (_dir, path) = file("t0ken\n", 0o600);
        rustix::fs::chown(&path, Some(rustix::fs::Uid::from_raw(owner)), None).unwrap();
        let e = Token::read_private_file(&path).unwrap_err();
        assert!(
            matches!(e, TokenFileError::NotOwned { owner: o, euid: 0, .. } if o == owner),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "{} belongs to uid {owner}, not to the daemon's uid 0: its owner could change the token; chown it",
                path.display()
            )
        );
        // A client only presents a token: whose file it is is the client's business.
        assert_eq!(Token::read_file(&path).unwrap(), token("t0ken"));
    }
}

#[test]
fn a_bad_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    for read in [Token::read_file, Token::read_private_file] {
        let e = read(&missing).unwrap_err();
        assert!(matches!(e, TokenFileError::Read { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with(&format!("cannot read {}: No such file", missing.display())),
            "{e}"
        );

        let (_dir, empty) = file(" \n\t\n", 0o600);
        assert_eq!(read(&empty).unwrap_err().to_string(), format!("{} is empty", empty.display()));

        let (_dir, words) = file("two words", 0o600);
        assert_eq!(
            read(&words).unwrap_err().to_string(),
            format!(
                "{}: the token may hold only printable ASCII without spaces (it travels in an HTTP header)",
                words.display()
            )
        );
    }
}
