//! What the server serves (a file's versions) and what it can do instead of serving it correctly.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// Default `Last-Modified` of served files: 2021-01-01T00:00:00Z, a fixed time in the past.
pub const DEFAULT_LAST_MODIFIED: u64 = 1_609_459_200;

/// The HTML "error page" of [`Fault::HtmlPage`].
pub const HTML_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Service unavailable</title></head>\
    <body><h1>Oops</h1><p>Please log in to the network to continue.</p></body></html>\n";

/// One version of a served file.
#[derive(Clone, Debug)]
pub struct FaultFile {
    pub data: Bytes,
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
}

impl FaultFile {
    /// `data` with a content-derived strong ETag and [`DEFAULT_LAST_MODIFIED`].
    pub fn new(data: impl Into<Bytes>) -> FaultFile {
        let data = data.into();
        let etag = format!("\"{}\"", &crate::data::sha256_hex(&data)[..16]);
        let last_modified = SystemTime::UNIX_EPOCH + Duration::from_secs(DEFAULT_LAST_MODIFIED);
        FaultFile { data, etag: Some(etag), last_modified: Some(last_modified) }
    }

    pub(crate) fn last_modified_text(&self) -> Option<String> {
        self.last_modified.map(httpdate::fmt_http_date)
    }
}

/// What the server does to one request instead of (or on top of) serving it correctly.
#[derive(Clone, Debug)]
pub enum Fault {
    /// The correct answer, but the connection is reset (RST) after this many body bytes.
    ResetAfter(u64),
    /// Nothing at all (not even the status line) for this long, socket open; then the
    /// connection is dropped.
    StallHeaders(Duration),
    /// The correct head and `after` body bytes, then silence for `stall` with the socket open;
    /// then the connection is dropped.
    StallBody { after: u64, stall: Duration },
    /// The correct head (full `Content-Length`) and this many body bytes, then a clean close (FIN).
    ShortBody(u64),
    /// A consistent `206` for another span than the one asked for (one byte short at the end).
    WrongContentRange,
    /// A `206` with the asked bytes whose `Content-Range` is shifted one byte later.
    ShiftedContentRange,
    /// `200` with the whole file (same validators) whatever the `Range`.
    IgnoreRange,
    /// This status with a small text body (`416` also gets `Content-Range: bytes */SIZE`).
    Status(u16),
    /// This status with `Retry-After: SECS`.
    StatusRetryAfter(u16, u64),
    /// `302` to the request's own path.
    RedirectLoop,
    /// `302` to this `Location` (absolute, or relative to the request).
    RedirectTo(String),
    /// This status (any, `300` included) to this `Location`.
    Redirect(u16, String),
    /// The correct `206`, labelled `Content-Encoding: gzip` (bytes unchanged).
    GzipLabel,
    /// A `206` for the asked span whose body really is gzip (stored deflate blocks), chunked.
    GzipBody,
    /// `200 text/html` with [`HTML_PAGE`], no validators; `chunked`: without `Content-Length`.
    HtmlPage { chunked: bool },
    /// Replaces the file with this version, then answers correctly.
    Replace(FaultFile),
    /// The correct answer without `Content-Length` (chunked; a `HEAD` gets no length at all).
    NoLength,
    /// The correct answer, chunked, with this many zero bytes after the asked ones.
    ExtraBytes(u64),
    /// To several ranges: a plain `206` for the first one only.
    FirstRangeOnly,
    /// To several ranges: a plain `206` for the span from the first to the last.
    RangesHull,
    /// To several ranges: a multipart answer broken this way.
    Parts(Parts),
    /// To several ranges: the multipart answer (its full `Content-Length`) cut at `at`, then
    /// ended as `end` says.
    CutParts { at: PartCut, end: CutEnd },
}

/// How a multipart answer to several ranges goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parts {
    /// The parts in reverse order.
    Reversed,
    /// The first part covers the first two ranges and the gap between them.
    CoalesceFirstTwo,
    /// The first part is sent twice.
    FirstTwice,
    /// The last part is left out.
    LastMissing,
    /// Every part's `Content-Range` total is one byte more than the file.
    WrongTotal,
    /// Bare LF line endings in the part headers.
    BareLf,
}

/// Where a multipart answer is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartCut {
    /// Just before part N's delimiter (all earlier parts whole).
    Before(usize),
    /// Halfway through part N's bytes.
    Inside(usize),
}

/// How a cut body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutEnd {
    /// The connection is reset (RST).
    Reset,
    /// The connection is closed (FIN) short of the announced length.
    Close,
    /// Silence for this long with the socket open, then the connection is dropped.
    Stall(Duration),
    /// A clean end of the body, sent without `Content-Length` (chunked) so the end is legal
    /// framing and only the content is short.
    End,
}

impl Fault {
    pub(crate) fn label(&self) -> String {
        match self {
            Fault::Replace(_) => "Replace".to_string(),
            other => format!("{other:?}"),
        }
    }
}
