//! BITS result codes: each failure bitsd reports carries one of these names and its HRESULT, so a
//! BITS user recognises it and a program can match on it.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($name:ident = $hr:literal,)*) => {
        /// A BITS (or generic Windows) result code that bitsd uses. `Http(status)` is the
        /// `BG_E_HTTP_ERROR_xxx` family (0x80190000 + status).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[allow(non_camel_case_types)]
        pub enum Code {
            $($name,)*
            Http(u16),
            /// `HRESULT_FROM_WIN32(HTTP_STATUS_xxx)`: a redirect refused by the job's policy.
            Win32Http(u16),
        }

        impl Code {
            /// The HRESULT as an unsigned 32-bit value.
            pub fn hresult(self) -> u32 {
                match self {
                    $(Code::$name => $hr,)*
                    Code::Http(status) => 0x8019_0000 + u32::from(status),
                    Code::Win32Http(status) => 0x8007_0000 | u32::from(status),
                }
            }

            /// The BITS name, e.g. `BG_E_EMPTY` or `BG_E_HTTP_ERROR_404`.
            pub fn name(self) -> String {
                match self {
                    $(Code::$name => stringify!($name).to_string(),)*
                    Code::Http(status) => format!("BG_E_HTTP_ERROR_{status}"),
                    Code::Win32Http(status) => format!("HRESULT_FROM_WIN32(HTTP_STATUS_{status})"),
                }
            }

            /// Looks a code up by HRESULT (the reverse of [`Code::hresult`]).
            pub fn from_hresult(hr: u32) -> Option<Code> {
                match hr {
                    $($hr => Some(Code::$name),)*
                    0x8019_0064..=0x8019_03E7 => Some(Code::Http((hr - 0x8019_0000) as u16)),
                    0x8007_012C..=0x8007_0134 => Some(Code::Win32Http((hr & 0xFFFF) as u16)),
                    _ => None,
                }
            }
        }
    };
}

codes! {
    S_OK = 0x0000_0000,
    S_FALSE = 0x0000_0001,
    BG_S_PARTIAL_COMPLETE = 0x0020_0017,
    BG_S_UNABLE_TO_DELETE_FILES = 0x0020_001A,
    E_NOTIMPL = 0x8000_4001,
    E_PENDING = 0x8000_000A,
    E_ACCESSDENIED = 0x8007_0005,
    E_INVALIDARG = 0x8007_0057,
    E_FAIL = 0x8000_4005,
    ERROR_PATH_NOT_FOUND = 0x8007_0003,
    // Out of file descriptors (EMFILE / ENFILE): like a full disk, worth retrying.
    ERROR_TOO_MANY_OPEN_FILES = 0x8007_0004,
    ERROR_DISK_FULL = 0x8007_0070,
    // A caller over its share of the control socket (connections, watch streams): what Windows'
    // RPC runtime answers when a server cannot take more calls.
    RPC_S_SERVER_TOO_BUSY = 0x8007_06BB,
    BG_E_NOT_FOUND = 0x8020_0001,
    BG_E_INVALID_STATE = 0x8020_0002,
    BG_E_EMPTY = 0x8020_0003,
    BG_E_FILE_NOT_AVAILABLE = 0x8020_0004,
    BG_E_ERROR_INFORMATION_UNAVAILABLE = 0x8020_000F,
    BG_E_MISSING_FILE_SIZE = 0x8020_0011,
    BG_E_NEW_OWNER_NO_FILE_ACCESS = 0x8020_0016,
    BG_E_INSUFFICIENT_HTTP_SUPPORT = 0x8020_0012,
    BG_E_INSUFFICIENT_RANGE_SUPPORT = 0x8020_0013,
    BG_E_INVALID_SERVER_RESPONSE = 0x8020_001B,
    BG_E_STRING_TOO_LONG = 0x8020_0021,
    BG_E_INVALID_RANGE = 0x8020_002B,
    BG_E_OVERLAPPING_RANGES = 0x8020_002C,
    BG_E_CONNECT_FAILURE = 0x8020_002D,
    BG_E_CONNECTION_CLOSED = 0x8020_002E,
    BG_E_TOO_MANY_JOBS_PER_USER = 0x8020_0049,
    BG_E_TOO_MANY_JOBS_PER_MACHINE = 0x8020_0050,
    BG_E_TOO_MANY_FILES_IN_JOB = 0x8020_0051,
    BG_E_TOO_MANY_RANGES_IN_FILE = 0x8020_0052,
    BG_E_MAXDOWNLOAD_TIMEOUT = 0x8020_0054,
    BG_E_UNKNOWN_PROPERTY_ID = 0x8020_0057,
    BG_E_READ_ONLY_PROPERTY = 0x8020_0058,
    BG_E_DATABASE_CORRUPT = 0x8020_006C,
    BG_E_RANDOM_ACCESS_NOT_SUPPORTED = 0x8020_006D,
    BG_E_REMOTE_FILE_CHANGED = 0x8020_0073,
    ERROR_WINHTTP_TIMEOUT = 0x8007_2EE2,
    ERROR_WINHTTP_NAME_NOT_RESOLVED = 0x8007_2EE7,
    ERROR_WINHTTP_CANNOT_CONNECT = 0x8007_2EFD,
    ERROR_WINHTTP_CONNECTION_ERROR = 0x8007_2EFE,
    ERROR_WINHTTP_REDIRECT_FAILED = 0x8007_2F7C,
    ERROR_WINHTTP_INVALID_SERVER_RESPONSE = 0x8007_2F78,
    ERROR_WINHTTP_SECURE_FAILURE = 0x8007_2F8F,
    // bitsd's own codes carry the customer bit (0x2000_0000) in the BITS facility, so they can
    // never collide with a code Windows defines.
    // A downloaded file's bytes on disk do not hash to the SHA-256 given at AddFile.
    BITSD_E_CHECKSUM_MISMATCH = 0xA020_0001,
}

impl Code {
    /// Success codes (HRESULT with the high bit clear) are returned in replies, not as errors.
    pub fn is_success(self) -> bool {
        self.hresult() & 0x8000_0000 == 0
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:08X})", self.name(), self.hresult())
    }
}

/// A failed BITS operation: the code, plus a message naming the offending value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{code}: {message}")]
pub struct BitsError {
    pub code: Code,
    pub message: String,
}

impl BitsError {
    pub fn new(code: Code, message: impl Into<String>) -> BitsError {
        BitsError { code, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hresults() {
        assert_eq!(Code::BG_E_OVERLAPPING_RANGES.hresult(), 0x8020_002C);
        assert_eq!(Code::BG_E_OVERLAPPING_RANGES.name(), "BG_E_OVERLAPPING_RANGES");
        assert_eq!(Code::Http(404).hresult(), 0x8019_0194);
        assert_eq!(Code::Http(503).name(), "BG_E_HTTP_ERROR_503");
        assert_eq!(Code::from_hresult(0x8019_01F7), Some(Code::Http(503)));
        assert_eq!(Code::from_hresult(0x8020_0003), Some(Code::BG_E_EMPTY));
        assert!(Code::BG_S_PARTIAL_COMPLETE.is_success());
        assert!(!Code::BG_E_EMPTY.is_success());
        assert_eq!(Code::BG_E_EMPTY.to_string(), "BG_E_EMPTY (0x80200003)");
        assert_eq!(Code::Win32Http(302).hresult(), 0x8007_012E);
        assert_eq!(Code::from_hresult(0x8007_0133), Some(Code::Win32Http(307)));
        assert_eq!(Code::from_hresult(0x8007_0005), Some(Code::E_ACCESSDENIED));
        assert_eq!(Code::BITSD_E_CHECKSUM_MISMATCH.hresult(), 0xA020_0001);
        assert_eq!(Code::from_hresult(0xA020_0001), Some(Code::BITSD_E_CHECKSUM_MISMATCH));
        assert!(!Code::BITSD_E_CHECKSUM_MISMATCH.is_success());
    }
}
