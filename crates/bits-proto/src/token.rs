//! The bearer token of the daemon's loopback TCP listener, shared by the daemon that checks it and
//! the clients that send it, so that both read the same files the same way and agree on what a
//! token may hold and how it travels.
//!
//! A token travels as the gRPC metadata `authorization: Bearer <token>`, which is why it must be
//! printable ASCII without spaces: anything else would not survive as an HTTP/2 header value.

use std::fmt;
use std::io::{self, Read as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq as _;
use tonic::metadata::AsciiMetadataValue;

/// The metadata key the token travels in.
pub const AUTHORIZATION: &str = "authorization";

/// A valid bearer token: non-empty printable ASCII without spaces.
///
/// Its `Debug` does not show it, so it cannot leak into a log by way of a `?config`, and it has
/// no accessor: the only ways out are the header value and the comparison, which runs in
/// constant time in the token's contents.
#[derive(Clone)]
pub struct Token {
    text: String,
    /// `Bearer <text>`, built (and so checked) once by [`Token::parse`]: every token is a valid
    /// header value, so sending one cannot fail.
    header: AsciiMetadataValue,
}

/// Why some text is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is empty")]
    Empty,
    #[error(
        "the token may hold only printable ASCII without spaces (it travels in an HTTP header)"
    )]
    NotHeaderText,
    #[error("the authorization metadata is not \"Bearer <token>\"")]
    NotBearer,
}

/// Why a token file gave no token. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a regular file", path.display())]
    NotRegularFile { path: PathBuf },
    #[error(
        "{} is readable or writable by group or others (mode {mode:04o}); chmod 600 it",
        path.display()
    )]
    NotPrivate { path: PathBuf, mode: u32 },
    #[error(
        "{} belongs to uid {owner}, not to the daemon's uid {euid}: its owner could change the token; chown it",
        path.display()
    )]
    NotOwned { path: PathBuf, owner: u32, euid: u32 },
    #[error("{} is empty", path.display())]
    Empty { path: PathBuf },
    #[error(
        "{}: the token may hold only printable ASCII without spaces (it travels in an HTTP header)",
        path.display()
    )]
    NotHeaderText { path: PathBuf },
}

impl Token {
    /// The token in `text`. Surrounding whitespace is not part of it, so a file written by
    /// `echo` or an editor (with its newline) holds the token one would expect.
    pub fn parse(text: &str) -> Result<Token, TokenError> {
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotHeaderText);
        }
        let mut header = AsciiMetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| TokenError::NotHeaderText)?;
        header.set_sensitive(true);
        Ok(Token { text: token.to_string(), header })
    }

    /// The token in the file at `path`, as a client reads it. Any readable file will do, a pipe
    /// included (`--token-file <(pass show bitsd)`): a client only presents the token, and who may
    /// read the file is its owner's business.
    pub fn read_file(path: &Path) -> Result<Token, TokenFileError> {
        let file = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
        read_from(path, file)
    }

    /// The token in the file at `path`, as the daemon reads it: anyone who can read the file can
    /// act as the listener's uid, so it must be a regular file with no group or other permission
    /// bits at all, owned by the daemon's own user (whoever owns it can chmod it and write their
    /// own token into it: for a root daemon, a user's file would let that user pick the token that
    /// acts as `tcp.uid`). Mode and owner are checked on the opened file, so the file read is the
    /// file checked.
    pub fn read_private_file(path: &Path) -> Result<Token, TokenFileError> {
        // Non-blocking: opening a FIFO for reading would otherwise wait for a writer, and the
        // daemon (or --check-config) would hang instead of refusing it. A regular file reads the
        // same either way.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
            .map_err(|e| read_error(path, e))?;
        let meta = file.metadata().map_err(|e| read_error(path, e))?;
        if !meta.is_file() {
            return Err(TokenFileError::NotRegularFile { path: path.to_path_buf() });
        }
        let euid = rustix::process::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(TokenFileError::NotOwned {
                path: path.to_path_buf(),
                owner: meta.uid(),
                euid,
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenFileError::NotPrivate { path: path.to_path_buf(), mode });
        }
        read_from(path, file)
    }

    /// The value of the `authorization` metadata carrying this token, marked sensitive so that
    /// tonic and hyper keep it out of their debug output.
    pub fn to_authorization(&self) -> AsciiMetadataValue {
        self.header.clone()
    }

    /// The token of an `authorization` value `Bearer <token>`. The scheme is case-insensitive
    /// (RFC 7235 §2.1) and spaces around the token are allowed, as HTTP allows them.
    pub fn from_authorization(value: &AsciiMetadataValue) -> Result<Token, TokenError> {
        let text = value.to_str().map_err(|_| TokenError::NotBearer)?;
        let (scheme, token) = text.trim().split_once(' ').ok_or(TokenError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::NotBearer);
        }
        Token::parse(token).map_err(|_| TokenError::NotBearer)
    }
}

/// Constant time in the tokens' contents, because one side is usually the secret and the other
/// a guess. A different length is unequal at once: the length is not the secret.
impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        bool::from(self.text.as_bytes().ct_eq(other.text.as_bytes()))
    }
}

impl Eq for Token {}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

fn read_error(path: &Path, source: io::Error) -> TokenFileError {
    TokenFileError::Read { path: path.to_path_buf(), source }
}

fn read_from(path: &Path, mut file: std::fs::File) -> Result<Token, TokenFileError> {
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| read_error(path, e))?;
    Token::parse(&text).map_err(|e| match e {
        TokenError::Empty => TokenFileError::Empty { path: path.to_path_buf() },
        TokenError::NotHeaderText | TokenError::NotBearer => {
            TokenFileError::NotHeaderText { path: path.to_path_buf() }
        }
    })
}

#[cfg(test)]
mod tests;
