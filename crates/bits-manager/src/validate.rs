//! Argument checks for the BITS operations, kept apart from the state handling so the order of
//! checks (spec §3: lookup, state, type, syntax, quota, filesystem) stays readable in `manager.rs`.

use std::path::Path;

use bits_core::job::{MAX_DESCRIPTION_CHARS, MAX_DISPLAY_NAME_CHARS, MAX_URL_CHARS};
use bits_core::{BitsError, Code};

pub fn display_name(name: &str) -> Result<(), BitsError> {
    if name.is_empty() {
        return Err(BitsError::new(Code::E_INVALIDARG, "a display name is required"));
    }
    let n = name.chars().count();
    if n > MAX_DISPLAY_NAME_CHARS {
        return Err(BitsError::new(
            Code::E_INVALIDARG,
            format!("display name is {n} characters, at most {MAX_DISPLAY_NAME_CHARS} are allowed"),
        ));
    }
    Ok(())
}

pub fn description(text: &str) -> Result<(), BitsError> {
    let n = text.chars().count();
    if n > MAX_DESCRIPTION_CHARS {
        return Err(BitsError::new(
            Code::BG_E_STRING_TOO_LONG,
            format!("description is {n} characters, at most {MAX_DESCRIPTION_CHARS} are allowed"),
        ));
    }
    Ok(())
}

/// An absolute http(s) URL of at most 2,200 characters. BITS uses the URL as given (no escape
/// processing), so only its syntax is checked here.
pub fn remote_url(url: &str) -> Result<(), BitsError> {
    let n = url.chars().count();
    if n > MAX_URL_CHARS {
        return Err(BitsError::new(
            Code::E_INVALIDARG,
            format!("remote URL is {n} characters, at most {MAX_URL_CHARS} are allowed"),
        ));
    }
    let parsed = url::Url::parse(url).map_err(|e| {
        BitsError::new(Code::E_INVALIDARG, format!("remote URL {url:?} is not a valid URL: {e}"))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(BitsError::new(
            Code::E_INVALIDARG,
            format!(
                "remote URL {url:?} uses scheme {:?}; only http and https are supported",
                parsed.scheme()
            ),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(BitsError::new(Code::E_INVALIDARG, format!("remote URL {url:?} has no host")));
    }
    // bitsd never sends URL credentials (userinfo), so accepting them would only store, show
    // and log a secret for nothing. The message shows the URL without them.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        let mut shown = parsed.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        return Err(BitsError::new(
            Code::E_INVALIDARG,
            format!(
                "remote URL {shown} carries credentials (user:password@); bitsd does not send \
                 them: set an Authorization header with SetCustomHeaders, which are write-only"
            ),
        ));
    }
    Ok(())
}

/// An absolute path naming a file (not a directory), with no `..` components, so the temp file
/// lands where the caller expects.
pub fn local_path(path: &Path) -> Result<(), BitsError> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(BitsError::new(
            Code::E_INVALIDARG,
            format!("local path {shown:?} is not absolute"),
        ));
    }
    if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(BitsError::new(
            Code::E_INVALIDARG,
            format!("local path {shown:?} contains \"..\""),
        ));
    }
    if path.file_name().is_none() || path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(BitsError::new(
            Code::E_INVALIDARG,
            format!("local path {shown:?} does not name a file"),
        ));
    }
    if path.as_os_str().len() > 4096 {
        return Err(BitsError::new(
            Code::E_INVALIDARG,
            format!("local path {shown:?} is longer than PATH_MAX"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code<T>(r: Result<T, BitsError>) -> Option<Code> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn urls() {
        assert_eq!(code(remote_url("http://example.com/a")), None);
        assert_eq!(code(remote_url("https://example.com:8443/a?b")), None);
        assert_eq!(code(remote_url("ftp://h/x")), Some(Code::E_INVALIDARG));
        assert_eq!(code(remote_url("not a url")), Some(Code::E_INVALIDARG));
        let base = "http://h/";
        let exact = format!("{base}{}", "a".repeat(MAX_URL_CHARS - base.len()));
        assert_eq!(code(remote_url(&exact)), None);
        assert_eq!(code(remote_url(&format!("{exact}a"))), Some(Code::E_INVALIDARG));
        let err = remote_url("https://alice:s3cret@example.com/f").unwrap_err();
        assert_eq!(err.code, Code::E_INVALIDARG);
        assert!(!err.message.contains("s3cret") && !err.message.contains("alice"), "{err}");
        assert!(err.message.contains("https://example.com/f"), "{err}");
        assert!(remote_url("https://token@example.com/f").is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(code(local_path(Path::new("/tmp/x.bin"))), None);
        assert_eq!(code(local_path(Path::new("relative/x.bin"))), Some(Code::E_INVALIDARG));
        assert_eq!(code(local_path(Path::new("/tmp/../etc/x"))), Some(Code::E_INVALIDARG));
        assert_eq!(code(local_path(Path::new("/tmp/dir/"))), Some(Code::E_INVALIDARG));
        assert_eq!(code(local_path(Path::new("/"))), Some(Code::E_INVALIDARG));
    }

    #[test]
    fn names() {
        assert_eq!(code(display_name(&"n".repeat(256))), None);
        assert_eq!(code(display_name(&"n".repeat(257))), Some(Code::E_INVALIDARG));
        assert_eq!(code(display_name("")), Some(Code::E_INVALIDARG));
        assert_eq!(code(description(&"d".repeat(1025))), Some(Code::BG_E_STRING_TOO_LONG));
    }
}
