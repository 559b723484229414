//! BITS errors on the wire as gRPC statuses (see `proto/README.md`).
//!
//! A [`BitsError`] travels as a status whose gRPC code is chosen by the BITS code (so generic gRPC
//! tooling sees something sensible), whose message is `"<NAME> (0x<HR8>): <message>"`, and whose
//! metadata carries `bits-code: <NAME>` and `bits-hresult: 0x<HR8>` for programs.

use bits_core::{BitsError, Code};
use tonic::metadata::{MetadataMap, MetadataValue};

/// Metadata key carrying the BITS code name, e.g. `BG_E_NOT_FOUND`.
pub const CODE_KEY: &str = "bits-code";
/// Metadata key carrying the HRESULT as `0x` + 8 upper-case hex digits, e.g. `0x80200001`.
pub const HRESULT_KEY: &str = "bits-hresult";

/// The gRPC status code used for a BITS code.
pub fn grpc_code(code: Code) -> tonic::Code {
    use tonic::Code as G;
    match code {
        Code::BG_E_NOT_FOUND => G::NotFound,
        Code::BG_E_INVALID_STATE
        | Code::BG_E_EMPTY
        | Code::BG_E_RANDOM_ACCESS_NOT_SUPPORTED
        | Code::BG_E_ERROR_INFORMATION_UNAVAILABLE => G::FailedPrecondition,
        Code::E_ACCESSDENIED | Code::BG_E_NEW_OWNER_NO_FILE_ACCESS => G::PermissionDenied,
        Code::E_NOTIMPL => G::Unimplemented,
        Code::E_INVALIDARG
        | Code::BG_E_INVALID_RANGE
        | Code::BG_E_OVERLAPPING_RANGES
        | Code::BG_E_STRING_TOO_LONG
        | Code::ERROR_PATH_NOT_FOUND
        | Code::BG_E_UNKNOWN_PROPERTY_ID
        | Code::BG_E_READ_ONLY_PROPERTY => G::InvalidArgument,
        Code::BG_E_TOO_MANY_FILES_IN_JOB
        | Code::BG_E_TOO_MANY_RANGES_IN_FILE
        | Code::BG_E_TOO_MANY_JOBS_PER_USER
        | Code::BG_E_TOO_MANY_JOBS_PER_MACHINE
        | Code::RPC_S_SERVER_TOO_BUSY
        | Code::ERROR_TOO_MANY_OPEN_FILES => G::ResourceExhausted,
        _ => G::Internal,
    }
}

/// The most of a user's value an error message repeats (in characters).
pub const ECHO_CHARS: usize = 64;

/// The longest message a status carries (in bytes). The message travels in the `grpc-message`
/// header, percent-encoded, and a client refuses a header block beyond its limit (16 KiB by
/// default) with a transport error instead of the BITS error: a message that echoes a huge
/// value must still reach the client as itself.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `value` as an error message repeats it: at most [`ECHO_CHARS`] characters, then `…` and the
/// size of the rest, so that a caller sees which value was refused without the daemon sending
/// (or logging) megabytes of it back.
pub fn echo(value: &str) -> String {
    match value.char_indices().nth(ECHO_CHARS) {
        None => value.to_string(),
        Some((cut, _)) => {
            format!("{}… ({} bytes in all)", &value[..cut], value.len())
        }
    }
}

/// `message` cut to at most `max` bytes (at a character boundary, `…` included).
fn capped(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_string();
    }
    let ellipsis = "…";
    let mut cut = max.saturating_sub(ellipsis.len());
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{ellipsis}", &message[..cut])
}

/// The gRPC status for a failed BITS operation. The message is capped at
/// [`MAX_MESSAGE_BYTES`], whatever value it echoes.
pub fn to_status(err: &BitsError) -> tonic::Status {
    let mut metadata = MetadataMap::new();
    if let Ok(value) = MetadataValue::try_from(err.code.name()) {
        metadata.insert(CODE_KEY, value);
    }
    if let Ok(value) = MetadataValue::try_from(format!("0x{:08X}", err.code.hresult())) {
        metadata.insert(HRESULT_KEY, value);
    }
    let message = capped(&err.to_string(), MAX_MESSAGE_BYTES);
    tonic::Status::with_metadata(grpc_code(err.code), message, metadata)
}

/// The BITS error carried by a status. A status without (valid) BITS metadata — a transport
/// failure, or a server that is not bitsd — becomes `E_FAIL` with the status message.
pub fn from_status(status: &tonic::Status) -> BitsError {
    let code = status
        .metadata()
        .get(HRESULT_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_hresult)
        .and_then(Code::from_hresult);
    match code {
        Some(code) => {
            let prefix = format!("{code}: ");
            let message = status.message();
            let message = message.strip_prefix(prefix.as_str()).unwrap_or(message);
            BitsError::new(code, message)
        }
        None => {
            let message = if status.message().is_empty() {
                format!("gRPC status {:?}: {}", status.code(), status.code().description())
            } else {
                status.message().to_string()
            };
            BitsError::new(Code::E_FAIL, message)
        }
    }
}

/// `0x80200001` (either case, `0x` optional) → 0x8020_0001.
fn parse_hresult(text: &str) -> Option<u32> {
    let hex = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
    u32::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn errors_round_trip_through_a_status() {
        for (code, grpc) in [
            (Code::BG_E_NOT_FOUND, tonic::Code::NotFound),
            (Code::BG_E_INVALID_STATE, tonic::Code::FailedPrecondition),
            (Code::BG_E_EMPTY, tonic::Code::FailedPrecondition),
            (Code::E_ACCESSDENIED, tonic::Code::PermissionDenied),
            (Code::E_NOTIMPL, tonic::Code::Unimplemented),
            (Code::E_INVALIDARG, tonic::Code::InvalidArgument),
            (Code::BG_E_OVERLAPPING_RANGES, tonic::Code::InvalidArgument),
            (Code::ERROR_PATH_NOT_FOUND, tonic::Code::InvalidArgument),
            (Code::BG_E_TOO_MANY_RANGES_IN_FILE, tonic::Code::ResourceExhausted),
            (Code::BG_E_TOO_MANY_FILES_IN_JOB, tonic::Code::ResourceExhausted),
            (Code::RPC_S_SERVER_TOO_BUSY, tonic::Code::ResourceExhausted),
            (Code::Http(404), tonic::Code::Internal),
            (Code::E_FAIL, tonic::Code::Internal),
        ] {
            let err = BitsError::new(code, "range 5:eof: something (odd) happened");
            let status = to_status(&err);
            assert_eq!(status.code(), grpc, "{code}");
            assert_eq!(status.message(), format!("{}: {}", code, err.message));
            assert_eq!(status.metadata().get(CODE_KEY).unwrap().to_str().unwrap(), code.name());
            assert_eq!(
                status.metadata().get(HRESULT_KEY).unwrap().to_str().unwrap(),
                format!("0x{:08X}", code.hresult())
            );
            assert_eq!(from_status(&status), err);
        }
    }

    #[test]
    fn wire_format_is_exact() {
        let status = to_status(&BitsError::new(Code::BG_E_EMPTY, "the job has no files"));
        assert_eq!(status.message(), "BG_E_EMPTY (0x80200003): the job has no files");
        assert_eq!(status.metadata().get("bits-hresult").unwrap(), "0x80200003");
        assert_eq!(status.metadata().get("bits-code").unwrap(), "BG_E_EMPTY");
    }

    /// A 3 MB value in a message used to make the status too big for the client's header limit,
    /// which then saw a transport error instead of the BITS error.
    #[test]
    fn a_huge_message_is_capped_and_keeps_its_code() {
        let huge = "x".repeat(3 << 20);
        let status = to_status(&BitsError::new(Code::E_INVALIDARG, format!("value '{huge}'")));
        assert!(status.message().len() <= MAX_MESSAGE_BYTES, "{}", status.message().len());
        assert!(status.message().starts_with("E_INVALIDARG (0x80070057): value 'xxx"));
        assert!(status.message().ends_with('…'));
        assert_eq!(from_status(&status).code, Code::E_INVALIDARG);
        // Cut at a character boundary, never inside one.
        let wide = "é".repeat(MAX_MESSAGE_BYTES);
        let status = to_status(&BitsError::new(Code::E_FAIL, wide));
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn echo_keeps_short_values_and_cuts_long_ones() {
        assert_eq!(echo("short"), "short");
        let exact = "a".repeat(ECHO_CHARS);
        assert_eq!(echo(&exact), exact);
        let long = format!("{}{}", "b".repeat(ECHO_CHARS), "é".repeat(10));
        assert_eq!(
            echo(&long),
            format!("{}… ({} bytes in all)", "b".repeat(ECHO_CHARS), long.len())
        );
        let accents = "é".repeat(ECHO_CHARS + 1);
        assert_eq!(echo(&accents), format!("{}… (130 bytes in all)", "é".repeat(ECHO_CHARS)));
    }

    #[test]
    fn statuses_without_metadata_are_e_fail() {
        let err = from_status(&tonic::Status::unavailable("connection refused"));
        assert_eq!(err, BitsError::new(Code::E_FAIL, "connection refused"));
        let err = from_status(&tonic::Status::new(tonic::Code::Unknown, ""));
        assert_eq!(err.code, Code::E_FAIL);
        assert!(err.message.contains("Unknown"), "{}", err.message);
        let mut bad = tonic::Status::internal("x");
        bad.metadata_mut().insert(HRESULT_KEY, MetadataValue::from_static("zzz"));
        assert_eq!(from_status(&bad).code, Code::E_FAIL);
    }
}
