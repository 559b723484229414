//! Argument checks for the BITS operations, kept apart from the state handling so the order of
//! checks (spec §3: lookup, state, type, syntax, quota, filesystem) stays readable in `manager.rs`.

use std::path::Path;

use bits_core::job::{MAX_DESCRIPTION_CHARS, MAX_DISPLAY_NAME_CHARS, MAX_URL_CHARS};
use bits_core::{BitsError, Code, JobId};

/// At most `max` characters; else `code` (each operation has its own) naming what, the length
/// and the limit.
pub fn at_most_chars(what: &str, text: &str, max: usize, code: Code) -> Result<(), BitsError> {
    let n = text.chars().count();
    if n > max {
        return Err(BitsError::new(
            code,
            format!("{what} is {n} characters, at most {max} are allowed"),
        ));
    }
    Ok(())
}

pub fn display_name(name: &str) -> Result<(), BitsError> {
    if name.is_empty() {
        return Err(BitsError::new(Code::E_INVALIDARG, "a display name is required"));
    }
    at_most_chars("display name", name, MAX_DISPLAY_NAME_CHARS, Code::E_INVALIDARG)
}

pub fn description(text: &str) -> Result<(), BitsError> {
    at_most_chars("description", text, MAX_DESCRIPTION_CHARS, Code::BG_E_STRING_TOO_LONG)
}

/// An absolute http(s) URL of at most 2,200 characters. BITS uses the URL as given (no escape
/// processing), so only its syntax is checked here.
pub fn remote_url(url: &str) -> Result<(), BitsError> {
    at_most_chars("remote URL", url, MAX_URL_CHARS, Code::E_INVALIDARG)?;
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

/// Longest file name (path component) Linux file systems accept, in bytes.
const NAME_MAX: usize = 255;

/// Linux's PATH_MAX, in bytes with the terminating NUL: a path must be shorter.
const PATH_MAX: usize = 4096;

/// How much of a refused path an error message shows: enough to recognise it, without echoing
/// kilobytes back to the caller and into logs.
const SHOWN_MAX: usize = 120;

/// An absolute path naming a file (not a directory), with no `..` components, so the temp file
/// lands where the caller expects, and one the kernel can take: no NUL byte, no component over
/// NAME_MAX, shorter than PATH_MAX. Refused here rather than after the download, when the
/// temp file is created or the finished file renamed.
pub fn local_path(path: &Path) -> Result<(), BitsError> {
    let bytes = path.as_os_str().as_encoded_bytes();
    let invalid = |what: &str| {
        Err(BitsError::new(Code::E_INVALIDARG, format!("local path {} {what}", shown(bytes))))
    };
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return invalid(&format!("contains a NUL byte at byte {at}"));
    }
    if bytes.len() >= PATH_MAX {
        return invalid(&format!(
            "is {} bytes; a path must be shorter than PATH_MAX ({PATH_MAX} bytes)",
            bytes.len()
        ));
    }
    if let Some(long) = path.iter().find(|c| c.len() > NAME_MAX) {
        return invalid(&format!(
            "has a component of {} bytes ({}); at most NAME_MAX ({NAME_MAX} bytes) are allowed",
            long.len(),
            shown(long.as_encoded_bytes())
        ));
    }
    if !path.is_absolute() {
        return invalid("is not absolute");
    }
    if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return invalid("contains \"..\"");
    }
    if path.file_name().is_none() || bytes.ends_with(b"/") {
        return invalid("does not name a file");
    }
    Ok(())
}

/// The temp file of a (checked) local path must fit the same limits: it sits in the same
/// directory under a longer name (`bits_disk::temp_path_for`), so a path just under PATH_MAX
/// would download and then fail to create it. Checked with the longest file index, so the answer
/// cannot depend on how many files the job has when this one is added.
pub fn temp_path(path: &Path, job: JobId) -> Result<(), BitsError> {
    let temp = bits_disk::temp_path_for(path, &job.to_string(), u32::MAX);
    let bytes = temp.as_os_str().as_encoded_bytes();
    let name = temp.file_name().map_or(0, |n| n.len());
    if bytes.len() >= PATH_MAX || name > NAME_MAX {
        return Err(BitsError::new(
            Code::E_INVALIDARG,
            format!(
                "local path {} is too long for its temp file ({} bytes, name {name} bytes): a path \
                 must be shorter than PATH_MAX ({PATH_MAX} bytes) and a name at most NAME_MAX \
                 ({NAME_MAX} bytes)",
                shown(path.as_os_str().as_encoded_bytes()),
                bytes.len()
            ),
        ));
    }
    Ok(())
}

/// A path or name for an error message: quoted, escaped, and cut after [`SHOWN_MAX`] bytes.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN_MAX)]);
    if bytes.len() > SHOWN_MAX {
        format!("{text:?}… ({} bytes)", bytes.len())
    } else {
        format!("{text:?}")
    }
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
    fn paths_the_kernel_cannot_take() {
        let err = local_path(Path::new("/tmp/a\0b")).unwrap_err();
        assert_eq!(err.code, Code::E_INVALIDARG);
        assert!(err.message.contains("NUL byte at byte 6"), "{err}");

        let name = |n: usize| format!("/tmp/{}", "n".repeat(n));
        assert_eq!(code(local_path(Path::new(&name(255)))), None);
        let err = local_path(Path::new(&name(256))).unwrap_err();
        assert_eq!(err.code, Code::E_INVALIDARG);
        assert!(err.message.contains("256 bytes") && err.message.contains("NAME_MAX"), "{err}");
        assert!(err.message.len() < 2 * SHOWN_MAX + 200, "the message echoes the whole name");
        let dir = format!("/tmp/{}/f", "d".repeat(300));
        assert_eq!(code(local_path(Path::new(&dir))), Some(Code::E_INVALIDARG));

        // 4095 bytes fit (the kernel's 4096 counts the NUL); 4096 do not.
        let deep = |n: usize| {
            let mut p = String::from("/tmp");
            while p.len() + 101 <= n {
                p.push('/');
                p.push_str(&"p".repeat(100));
            }
            p.push('/');
            p.push_str(&"f".repeat(n - p.len()));
            p
        };
        assert_eq!(deep(4095).len(), 4095);
        assert_eq!(code(local_path(Path::new(&deep(4095)))), None);
        let err = local_path(Path::new(&deep(4096))).unwrap_err();
        assert!(err.message.contains("4096 bytes") && err.message.contains("PATH_MAX"), "{err}");
        assert!(err.message.len() < 2 * SHOWN_MAX + 200, "the message echoes the whole path");
    }

    #[test]
    fn the_temp_file_must_fit_too() {
        let job = JobId::new_random();
        // The temp name is shortened to fit NAME_MAX, so a 255-byte name is fine...
        assert_eq!(code(temp_path(Path::new(&format!("/tmp/{}", "n".repeat(255))), job)), None);
        // ...but its longer path must still be shorter than PATH_MAX.
        let dir = format!("/{}", vec!["d".repeat(200); 20].join("/"));
        let fits = format!("{dir}/{}", "f".repeat(4095 - dir.len() - 1));
        assert_eq!(fits.len(), 4095);
        assert_eq!(code(local_path(Path::new(&fits))), None);
        let err = temp_path(Path::new(&fits), job).unwrap_err();
        assert_eq!(err.code, Code::E_INVALIDARG);
        assert!(err.message.contains("temp file") && err.message.contains("PATH_MAX"), "{err}");
        let temp_fits = format!("{dir}/f");
        assert_eq!(code(temp_path(Path::new(&temp_fits), job)), None);
    }

    #[test]
    fn names() {
        assert_eq!(code(display_name(&"n".repeat(256))), None);
        assert_eq!(code(display_name(&"n".repeat(257))), Some(Code::E_INVALIDARG));
        assert_eq!(code(display_name("")), Some(Code::E_INVALIDARG));
        assert_eq!(code(description(&"d".repeat(1025))), Some(Code::BG_E_STRING_TOO_LONG));
    }
}
