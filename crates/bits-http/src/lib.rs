//! HTTP(S) range fetching for one remote file: probe it (size and validators), then GET byte spans
//! of it, checking that each response holds exactly the requested bytes of the probed version.
//!
//! This crate decides nothing about jobs and persists nothing. Every failure comes back as a
//! [`FetchError`] that already carries the BITS code, error context and transient/fatal decision,
//! so the job manager only has to act on it.
//!
//! Many small spans can be fetched in one request with [`HttpClient::get_ranges_opts`] (at most
//! [`MAX_SPANS_PER_REQUEST`] per call): the `multipart/byteranges` answer is parsed as it streams
//! and every part must be exactly one requested span (a server that merges ranges fails with
//! `BG_E_INVALID_SERVER_RESPONSE`, spec §6.1–6.2); a server may send fewer parts than asked
//! ([`MultiRangeBody::missing`]), and the client remembers how many each origin sends
//! ([`HttpClient::parts_per_request`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), bits_http::FetchError> {
//! use bits_http::{HttpClient, HttpConfig};
//! let client = HttpClient::new(HttpConfig::default())?;
//! let remote = client.probe("https://example.com/file.iso").await?;
//! let mut body = client.get_range(&remote, bits_core::Span::new(0, remote.size)).await?;
//! while let Some(chunk) = body.next_chunk().await? {
//!     let _ = chunk; // write at remote offset body.span().start + bytes so far
//! }
//! # Ok(()) }
//! ```

mod body;
mod classify;
mod client;
pub mod content_range;
mod counted;
mod custom;
mod error;
mod headers;
pub mod multipart;
mod multirange;
mod part_limits;
mod probe;
mod range;
mod redirect;
#[cfg(test)]
mod test_support;
mod transport_error;

pub use body::RangeBody;
pub use classify::classify_status;
pub use client::{HttpClient, HttpConfig, RedirectPolicy, RequestOptions};
pub use custom::parse_custom_headers;
pub use error::{FetchError, FetchErrorKind};
pub use multirange::{MAX_SPANS_PER_REQUEST, MultiRangeBody};
pub use probe::RemoteInfo;
