//! Turns hyper, TLS and io failures into [`FetchError`]s. It sits below the client and both body
//! readers (single range and multipart) so they all classify a broken connection the same way
//! without depending on each other.

use std::error::Error as StdError;
use std::io;

use bits_core::Code;

use crate::error::FetchError;

/// Maps a failed request (connect, TLS, send, or response head) to a BITS error.
pub(crate) fn map_client_error(err: &hyper_util::client::legacy::Error, url: &str) -> FetchError {
    map_chain(err, err.is_connect(), url)
}

/// Maps a failure while reading a response body.
pub(crate) fn map_hyper_error(err: &hyper::Error, url: &str) -> FetchError {
    map_chain(err, false, url)
}

fn map_chain(err: &(dyn StdError + 'static), is_connect: bool, url: &str) -> FetchError {
    let mut description = err.to_string();
    let mut tls = None;
    let mut dns = false;
    let mut io_kind = None;
    let mut parse = false;
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<rustls::Error>().is_some() {
            tls = Some(e.to_string());
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            parse |= h.is_parse() || h.is_parse_status() || h.is_parse_too_large();
        }
        if e.to_string() == "dns error" {
            dns = true;
        }
        if !std::ptr::addr_eq(e, err) {
            description.push_str(": ");
            description.push_str(&e.to_string());
        }
        cur = match e.downcast_ref::<io::Error>() {
            Some(io_err) => {
                // The innermost specific kind wins (hyper-rustls wraps io errors in `Other`).
                if io_err.kind() != io::ErrorKind::Other {
                    io_kind = Some(io_err.kind());
                }
                // io::Error's source() skips the error it wraps; descend into that one instead.
                match io_err.get_ref() {
                    Some(inner) => Some(inner as &(dyn StdError + 'static)),
                    None => e.source(),
                }
            }
            None => e.source(),
        };
    }
    let message = format!("{url}: {description}");
    if let Some(tls) = tls {
        return FetchError::tls(format!("TLS failure with {url}: {tls}"));
    }
    if dns {
        return FetchError::transport(Code::ERROR_WINHTTP_NAME_NOT_RESOLVED, message);
    }
    match io_kind {
        Some(io::ErrorKind::TimedOut) => return FetchError::timeout(message),
        Some(io::ErrorKind::ConnectionRefused) => {
            return FetchError::transport(Code::ERROR_WINHTTP_CANNOT_CONNECT, message);
        }
        _ => {}
    }
    if is_connect {
        return FetchError::transport(Code::ERROR_WINHTTP_CANNOT_CONNECT, message);
    }
    if parse {
        return FetchError::invalid_response(message);
    }
    FetchError::transport(Code::ERROR_WINHTTP_CONNECTION_ERROR, message)
}
