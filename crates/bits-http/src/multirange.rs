//! Several spans of one file in one request (`Range: bytes=a-b,c-d,…`): checking the request, the
//! response head, and streaming a `multipart/byteranges` answer part by part through
//! [`MultipartParser`] (memory stays bounded whatever the server sends), with every part checked
//! to be exactly one requested span of the probed version before any of its bytes is handed out.
//!
//! A server must not merge, split or repeat the requested ranges (spec §6.1): any part other than
//! a requested span not delivered yet is `BG_E_INVALID_SERVER_RESPONSE` (fatal, REMOTE_FILE), and
//! so is a plain 206 with one `Content-Range` to a request for several spans. It may return fewer
//! parts than asked (RFC 9110 §15.3.7.2; lighttpd sends the first 10): a multipart answer that
//! closes cleanly after at least one part ends the body, [`MultiRangeBody::missing`] names the
//! spans left out, and the origin's limit is remembered (`part_limits.rs`).

use std::sync::Arc;
use std::time::Duration;

use bits_core::{Code, Span};
use bytes::Bytes;
use http::response::Parts;
use http::{Version, header};
use hyper::body::{Body as _, Incoming};
use tracing::debug;
use url::Url;

use crate::body::{Frame, RangeBody, next_data};
use crate::content_range::ContentRange;
use crate::error::{FetchError, FetchErrorKind};
use crate::headers;
use crate::multipart::{self, Event, MultipartError, MultipartParser};
use crate::part_limits::PartLimits;
use crate::probe::RemoteInfo;
use crate::range;

/// Most spans the caller should put in one [`HttpClient::get_ranges_opts`] request (more are
/// refused with `InvalidRange`); keeps the `Range` header well under common server limits
/// (nginx's 8 KiB header buffers hold 64 spans of 20-digit offsets).
///
/// [`HttpClient::get_ranges_opts`]: crate::HttpClient::get_ranges_opts
pub const MAX_SPANS_PER_REQUEST: usize = 64;

/// Epilogue bytes (after the close delimiter) read to let the connection be reused; beyond this
/// the body is dropped instead.
const MAX_EPILOGUE_BYTES: usize = 64 * 1024;

/// Checks what the caller asked for: 1..=[`MAX_SPANS_PER_REQUEST`] non-empty spans inside the
/// file, sorted, with at least one byte between neighbours.
pub(crate) fn check_spans(remote: &RemoteInfo, spans: &[Span]) -> Result<(), FetchError> {
    if spans.is_empty() || spans.len() > MAX_SPANS_PER_REQUEST {
        return Err(FetchError::invalid_range(format!(
            "{} spans requested from {}; a multi-range request takes 1 to {MAX_SPANS_PER_REQUEST}",
            spans.len(),
            remote.final_url
        )));
    }
    for span in spans {
        if span.start >= span.end || span.end > remote.size {
            return Err(FetchError::invalid_range(format!(
                "span {span} is empty or outside the {} bytes of {}",
                remote.size, remote.final_url
            )));
        }
    }
    for pair in spans.windows(2) {
        if let [a, b] = pair
            && a.end >= b.start
        {
            return Err(FetchError::invalid_range(format!(
                "spans {a} and {b} for {} are not sorted, disjoint and non-touching",
                remote.final_url
            )));
        }
    }
    Ok(())
}

/// `bytes=a-b,c-d,…` (inclusive ends).
pub(crate) fn range_header(spans: &[Span]) -> String {
    let mut out = String::from("bytes=");
    for (i, span) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{}-{}", span.start, span.end - 1));
    }
    out
}

/// How the accepted response carries the bytes.
#[derive(Debug)]
pub(crate) enum Head {
    /// A `multipart/byteranges` body, read by this parser.
    Multipart(MultipartParser),
    /// The body is exactly the bytes of this (the only requested) span.
    Single(Span),
}

/// Checks a (non-redirect) response head to a GET of `spans` (already checked by
/// [`check_spans`]).
pub(crate) fn check_head(
    parts: &Parts,
    remote: &RemoteInfo,
    spans: &[Span],
    url: &Url,
    allow_full: bool,
) -> Result<Head, FetchError> {
    let (Some(&first), Some(&last)) = (spans.first(), spans.last()) else {
        return Err(FetchError::invalid_range(format!("no spans requested from {url}")));
    };
    let status = parts.status.as_u16();
    if status == 206
        && let Some(boundary) = multipart_boundary(parts, url)?
    {
        let response_validator = headers::validator(&parts.headers);
        if let Some(why) = headers::validator_change(&remote.validator, &response_validator) {
            return Err(FetchError::remote_changed(format!("{url}: {why}")));
        }
        range::check_encoding(parts, remote, url)?;
        // The part limit is one above the request so that an extra part is reported with its
        // range (as unrequested or repeated) rather than as a framing error.
        let parser = MultipartParser::new(&boundary)
            .map_err(|err| with_url(err.into(), url.as_str()))?
            .with_max_parts(spans.len() + 1);
        return Ok(Head::Multipart(parser));
    }
    if spans.len() == 1 {
        // Exactly the request get_range_opts makes: the same rules (including a 200 with the
        // whole file when the job may fall back to it).
        range::check(parts, remote, first, url, allow_full)?;
        return Ok(Head::Single(first));
    }
    if status == 206 {
        return Err(single_part_to_many(parts, remote, spans, url));
    }
    // Not a 206: a 200 (the server ignored Range or the validator), 412, 416 or an error status,
    // judged as get_range_opts judges them. A 200 can never hold several spans as asked.
    let hull = Span::new(first.start, last.end);
    let err = match range::check(parts, remote, hull, url, false) {
        Ok(()) => FetchError::invalid_response(format!("ranged GET {url} answered {status}")),
        Err(err) if err.kind == FetchErrorKind::RangeNotSupported => {
            FetchError::range_not_supported(format!(
                "{url} ignored the {}-span Range request and answered {status} with the whole file",
                spans.len()
            ))
        }
        Err(err) => err,
    };
    Err(err)
}

/// The boundary when the response is `multipart/byteranges`, `None` for any other type.
fn multipart_boundary(parts: &Parts, url: &Url) -> Result<Option<String>, FetchError> {
    let Some(value) = parts.headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let Ok(text) = value.to_str() else {
        return Ok(None);
    };
    match multipart::boundary_from_content_type(text) {
        Ok(boundary) => Ok(Some(boundary)),
        Err(MultipartError::NotByteranges(_)) => Ok(None),
        Err(err) => Err(with_url(err.into(), url.as_str())),
    }
}

/// The error for a plain 206 (one `Content-Range`) to a request for several spans: a changed
/// file when its total or validators say so, else the server merged or dropped ranges.
fn single_part_to_many(
    parts: &Parts,
    remote: &RemoteInfo,
    spans: &[Span],
    url: &Url,
) -> FetchError {
    let Some(text) = parts.headers.get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()) else {
        return FetchError::invalid_response(format!(
            "206 from {url} to a {}-span request is neither multipart nor has a Content-Range",
            spans.len()
        ));
    };
    let (first, last, complete) = match ContentRange::parse(text) {
        Ok(ContentRange::Satisfied { first, last, complete }) => (first, last, complete),
        Ok(ContentRange::Unsatisfied { .. }) => {
            return FetchError::invalid_response(format!(
                "206 from {url} with unsatisfied Content-Range {text}"
            ));
        }
        Err(e) => return FetchError::invalid_response(format!("206 from {url}: {e}")),
    };
    if let Some(total) = complete
        && total != remote.size
    {
        return FetchError::remote_changed(format!(
            "{url} is now {total} bytes, was {} (Content-Range {text})",
            remote.size
        ));
    }
    let response_validator = headers::validator(&parts.headers);
    if let Some(why) = headers::validator_change(&remote.validator, &response_validator) {
        return FetchError::remote_changed(format!("{url}: {why}"));
    }
    let Some(end) = last.checked_add(1).filter(|&end| end > first) else {
        return FetchError::invalid_response(format!("206 from {url}: bad Content-Range {text}"));
    };
    let err = multipart::check_spans_match_request(&[Span::new(first, end)], spans)
        .err()
        .unwrap_or(MultipartError::PartCountMismatch { got: 1, requested: spans.len() });
    let mut err = with_url(err.into(), url.as_str());
    err.message = format!("{} (a single-part 206 to a {}-span request)", err.message, spans.len());
    err
}

fn with_url(mut err: FetchError, url: &str) -> FetchError {
    err.message = format!("{url}: {}", err.message);
    err
}

/// The body of an accepted multi-range response, handed out piece by piece as it arrives, each
/// piece with the remote offset of its first byte.
#[derive(Debug)]
pub struct MultiRangeBody {
    inner: Inner,
    version: Version,
    received: u64,
}

#[derive(Debug)]
enum Inner {
    /// A plain 206 (or 200) for the one requested span.
    Single(RangeBody),
    Multi(Box<Multi>),
}

#[derive(Debug)]
struct Multi {
    body: Incoming,
    parser: MultipartParser,
    /// The current chunk of the HTTP body and how much of it the parser has used.
    buf: Bytes,
    pos: usize,
    /// The requested spans (sorted) and whether a part for each has started.
    requested: Vec<Span>,
    started: Vec<bool>,
    /// Remote offset of the next body byte of the part being read.
    offset: Option<u64>,
    remote_size: u64,
    /// The close delimiter was seen (and at least one span delivered); bytes read since.
    closed: bool,
    /// The requested spans the server left out, known at the close delimiter.
    missing: Vec<Span>,
    /// Where a short answer teaches `url`'s origin its limit.
    limits: Arc<PartLimits>,
    epilogue: usize,
    idle_timeout: Duration,
    url: Url,
    finished: bool,
}

/// A parser event without the borrow of the input.
enum Step {
    NeedInput,
    Start(ContentRange, Span),
    Data(Bytes),
    PartEnd,
    Close,
}

impl MultiRangeBody {
    #[allow(clippy::too_many_arguments)] // the parts of one answer, each from its own place
    pub(crate) fn new(
        head: Head,
        body: Incoming,
        spans: &[Span],
        remote_size: u64,
        idle_timeout: Duration,
        version: Version,
        url: &Url,
        limits: Arc<PartLimits>,
    ) -> MultiRangeBody {
        let inner = match head {
            Head::Single(span) => {
                Inner::Single(RangeBody::new(body, span, idle_timeout, version, url.to_string()))
            }
            Head::Multipart(parser) => Inner::Multi(Box::new(Multi {
                body,
                parser,
                buf: Bytes::new(),
                pos: 0,
                requested: spans.to_vec(),
                started: vec![false; spans.len()],
                offset: None,
                remote_size,
                closed: false,
                missing: Vec::new(),
                limits,
                epilogue: 0,
                idle_timeout,
                url: url.clone(),
                finished: false,
            })),
        };
        MultiRangeBody { inner, version, received: 0 }
    }

    /// The next piece of data: (remote offset, bytes). Parts may arrive in any order; the bytes
    /// of one part arrive in order. `Ok(None)` after the last part, once every span the server
    /// sent was delivered exactly once: every requested span, or, when the server chose to send
    /// fewer parts, the others are in [`MultiRangeBody::missing`].
    ///
    /// Errors: a part that is not exactly one requested span not delivered yet (merged,
    /// overlapping, repeated, unrequested) is `BG_E_INVALID_SERVER_RESPONSE` (fatal,
    /// REMOTE_FILE), reported before any byte of that part; a part whose total differs from the
    /// probed size is `RemoteChanged`; broken framing, an answer without any part included, is
    /// a transient `ERROR_WINHTTP_INVALID_SERVER_RESPONSE`; a body that ends before the last
    /// part is a transient `ERROR_WINHTTP_CONNECTION_ERROR`, and silence for the idle timeout a
    /// transient timeout. Bytes handed out before an error are correct at their offsets and may be kept.
    pub async fn next_chunk(&mut self) -> Result<Option<(u64, Bytes)>, FetchError> {
        let next = match &mut self.inner {
            Inner::Single(body) => {
                let offset = body.span().start + body.received();
                body.next_chunk().await?.map(|bytes| (offset, bytes))
            }
            Inner::Multi(multi) => multi.next_chunk().await?,
        };
        if let Some((_, bytes)) = &next {
            self.received += bytes.len() as u64;
        }
        Ok(next)
    }

    /// File bytes handed out so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The requested spans the server did not send (it may answer fewer parts than asked), in
    /// request order; known once [`MultiRangeBody::next_chunk`] returned `Ok(None)`, empty before.
    pub fn missing(&self) -> &[Span] {
        match &self.inner {
            Inner::Single(_) => &[],
            Inner::Multi(multi) => &multi.missing,
        }
    }

    /// Whether the server answered `multipart/byteranges` (otherwise a plain 206 or 200 for the
    /// one requested span).
    pub fn is_multipart(&self) -> bool {
        matches!(self.inner, Inner::Multi(_))
    }

    /// The HTTP version the response came over.
    pub fn http_version(&self) -> Version {
        self.version
    }
}

impl Multi {
    async fn next_chunk(&mut self) -> Result<Option<(u64, Bytes)>, FetchError> {
        if self.finished {
            return Ok(None);
        }
        let result = self.advance().await;
        if !matches!(result, Ok(Some(_))) {
            self.finished = true;
        }
        result
    }

    async fn advance(&mut self) -> Result<Option<(u64, Bytes)>, FetchError> {
        loop {
            match self.parse_step()? {
                Step::Data(bytes) => {
                    let Some(offset) = self.offset.as_mut() else {
                        return Err(self.framing("body bytes outside a part"));
                    };
                    let at = *offset;
                    *offset += bytes.len() as u64;
                    return Ok(Some((at, bytes)));
                }
                Step::Start(content_range, span) => self.start_part(&content_range, span)?,
                Step::PartEnd => self.offset = None,
                Step::Close => {
                    self.closed();
                    self.closed = true;
                    debug!(url = %self.url, parts = self.requested.len() - self.missing.len(), missing = self.missing.len(), "multi-range body complete");
                }
                Step::NeedInput => {
                    if self.closed
                        && (self.epilogue > MAX_EPILOGUE_BYTES || self.body.is_end_stream())
                    {
                        return Ok(None);
                    }
                    if !self.read_frame().await? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Runs the parser over what is left of the current chunk.
    fn parse_step(&mut self) -> Result<Step, FetchError> {
        let input = self.buf.get(self.pos..).unwrap_or_default();
        if input.is_empty() {
            return Ok(Step::NeedInput);
        }
        let (used, event) = match self.parser.next(input) {
            Ok(done) => done,
            Err(err) => return Err(self.multipart_error(err)),
        };
        let step = match event {
            None => Step::NeedInput,
            Some(Event::Body(bytes)) => Step::Data(self.buf.slice_ref(bytes)),
            Some(Event::PartStart { content_range, span, .. }) => Step::Start(content_range, span),
            Some(Event::PartEnd { .. }) => Step::PartEnd,
            Some(Event::End) => Step::Close,
        };
        self.pos += used;
        if self.closed {
            self.epilogue += used;
        }
        Ok(step)
    }

    /// Reads the next data frame into `buf`; false at the end of the body once the close
    /// delimiter was seen.
    async fn read_frame(&mut self) -> Result<bool, FetchError> {
        match next_data(&mut self.body, self.idle_timeout, self.url.as_str()).await {
            Frame::Idle if self.closed => Ok(false),
            Frame::Idle => Err(FetchError::timeout(format!(
                "no data from {} for {:?} after {} of {} parts",
                self.url,
                self.idle_timeout,
                self.parser.parts_seen(),
                self.requested.len()
            ))),
            Frame::End => match self.parser.finish() {
                Ok(()) if self.closed => Ok(false),
                Ok(()) | Err(MultipartError::Truncated) => Err(FetchError::transport(
                    Code::ERROR_WINHTTP_CONNECTION_ERROR,
                    format!(
                        "multi-range body from {} ended in part {} of {}",
                        self.url,
                        self.parser.parts_seen(),
                        self.requested.len()
                    ),
                )),
                Err(err) => Err(self.multipart_error(err)),
            },
            Frame::Broken(_) if self.closed => Ok(false),
            Frame::Broken(mut err) => {
                err.message = format!(
                    "{} (in part {} of {})",
                    err.message,
                    self.parser.parts_seen(),
                    self.requested.len()
                );
                Err(err)
            }
            Frame::Data(data) => {
                self.buf = data;
                self.pos = 0;
                Ok(true)
            }
        }
    }

    /// Accepts a part only if it is exactly a requested span not started yet, of the probed size.
    fn start_part(&mut self, content_range: &ContentRange, span: Span) -> Result<(), FetchError> {
        match *content_range {
            ContentRange::Satisfied { complete: Some(total), .. } if total == self.remote_size => {}
            ContentRange::Satisfied { complete: Some(total), .. } => {
                return Err(FetchError::remote_changed(format!(
                    "{} is now {total} bytes, was {} (multipart part {span})",
                    self.url, self.remote_size
                )));
            }
            _ => {
                return Err(self.framing(&format!(
                    "multipart part {span} without the total size in its Content-Range"
                )));
            }
        }
        let index = self.requested.binary_search_by_key(&span.start, |s| s.start).ok();
        match index {
            Some(i) if self.requested[i] == span && !self.started[i] => {
                self.started[i] = true;
                self.offset = Some(span.start);
                Ok(())
            }
            _ => {
                let count = self
                    .requested
                    .iter()
                    .filter(|w| w.start < span.end && span.start < w.end)
                    .count();
                let err = if count >= 2 {
                    MultipartError::Coalesced { part: span, count }
                } else {
                    MultipartError::Unrequested { part: span }
                };
                Err(self.multipart_error(err))
            }
        }
    }

    /// At the close delimiter: the requested spans that did not come are `missing`, and the
    /// origin's limit is what it sent. At least one part came: the parser refuses a close
    /// delimiter before the first part (`MultipartError::NoParts`), and each part was checked to
    /// be a requested span when it started.
    fn closed(&mut self) {
        let requested = self.requested.iter().zip(&self.started);
        self.missing = requested.filter(|(_, started)| !**started).map(|(span, _)| *span).collect();
        if !self.missing.is_empty() {
            self.limits.returned(&self.url, self.requested.len() - self.missing.len());
        }
    }

    fn multipart_error(&self, err: MultipartError) -> FetchError {
        with_url(err.into(), self.url.as_str())
    }

    fn framing(&self, why: &str) -> FetchError {
        FetchError::invalid_response(format!("{}: {why}", self.url))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::test_support::{CHANGED, INVALID, parts, remote};

    fn head(
        status: u16,
        pairs: &[(&str, &str)],
        spans: &[Span],
    ) -> Result<&'static str, (FetchErrorKind, Code, bool)> {
        let url = Url::parse("http://h/f").unwrap();
        match check_head(&parts(status, pairs), &remote(), spans, &url, true) {
            Ok(Head::Multipart(_)) => Ok("multipart"),
            Ok(Head::Single(_)) => Ok("single"),
            Err(e) => Err((e.kind, e.code, e.transient)),
        }
    }

    const TWO: [Span; 2] = [Span { start: 0, end: 10 }, Span { start: 20, end: 30 }];
    const MP: (&str, &str) = ("content-type", "multipart/byteranges; boundary=B");
    const MISMATCH: (FetchErrorKind, Code, bool) =
        (FetchErrorKind::InvalidResponse, Code::BG_E_INVALID_SERVER_RESPONSE, false);

    #[test]
    fn range_header_lists_inclusive_ends() {
        assert_eq!(range_header(&TWO), "bytes=0-9,20-29");
        assert_eq!(range_header(&[Span::new(5, 6)]), "bytes=5-5");
    }

    #[test]
    fn span_lists_must_be_sorted_disjoint_and_non_touching() {
        let r = remote();
        assert!(check_spans(&r, &TWO).is_ok());
        assert!(check_spans(&r, &[Span::new(0, 100)]).is_ok());
        for bad in [
            vec![],
            vec![Span::new(0, 10), Span::new(10, 20)],
            vec![Span::new(20, 30), Span::new(0, 10)],
            vec![Span::new(0, 10), Span::new(5, 20)],
            vec![Span::new(3, 3)],
            vec![Span::new(90, 101)],
        ] {
            let err = check_spans(&r, &bad).unwrap_err();
            assert_eq!(err.code, Code::BG_E_INVALID_RANGE, "{bad:?}");
        }
        let big = RemoteInfo { size: 1 << 20, ..remote() };
        let spans = |n: u64| (0..n).map(|i| Span::new(i * 10, i * 10 + 5)).collect::<Vec<_>>();
        assert!(check_spans(&big, &spans(MAX_SPANS_PER_REQUEST as u64)).is_ok());
        assert!(check_spans(&big, &spans(MAX_SPANS_PER_REQUEST as u64 + 1)).is_err());
    }

    #[test]
    fn response_heads() {
        assert_eq!(head(206, &[MP, ("etag", "\"v1\"")], &TWO), Ok("multipart"));
        // A multipart answer to one span is fine too.
        assert_eq!(head(206, &[MP], &TWO[..1]), Ok("multipart"));
        assert_eq!(head(206, &[MP, ("etag", "\"v2\"")], &TWO), Err(CHANGED));
        assert_eq!(head(206, &[MP, ("content-encoding", "gzip")], &TWO), Err(INVALID));
        // Apache's multipart answer for a stored .tar.gz its probe saw as gzip.
        let url = Url::parse("http://h/f").unwrap();
        let gzip = RemoteInfo { content_encoding: Some("gzip".into()), ..remote() };
        let labelled = parts(206, &[MP, ("content-encoding", "gzip")]);
        assert!(matches!(check_head(&labelled, &gzip, &TWO, &url, true), Ok(Head::Multipart(_))));
        let err = check_head(&parts(206, &[MP]), &gzip, &TWO, &url, true).unwrap_err();
        assert_eq!(err.code, Code::ERROR_WINHTTP_INVALID_SERVER_RESPONSE);
        let bad_boundary = ("content-type", "multipart/byteranges");
        assert_eq!(head(206, &[bad_boundary], &TWO), Err(INVALID));
        // Plain 206s.
        assert_eq!(head(206, &[("content-range", "bytes 0-9/100")], &TWO[..1]), Ok("single"));
        assert_eq!(head(206, &[("content-range", "bytes 0-9/100")], &TWO), Err(MISMATCH));
        assert_eq!(head(206, &[("content-range", "bytes 0-29/100")], &TWO), Err(MISMATCH));
        assert_eq!(head(206, &[("content-range", "bytes 0-9/101")], &TWO), Err(CHANGED));
        assert_eq!(
            head(206, &[("content-range", "bytes 0-9/100"), ("etag", "\"v2\"")], &TWO),
            Err(CHANGED)
        );
        assert_eq!(head(206, &[], &TWO), Err(INVALID));
        assert_eq!(head(206, &[("content-range", "bytes */100")], &TWO), Err(INVALID));
        // Other statuses, as get_range_opts treats them.
        assert_eq!(head(412, &[], &TWO), Err(CHANGED));
        assert_eq!(head(416, &[], &TWO).unwrap_err().1, Code::BG_E_INVALID_RANGE);
        assert_eq!(head(404, &[], &TWO).unwrap_err().0, FetchErrorKind::Http(404));
        let full = [("content-length", "100"), ("etag", "\"v1\"")];
        assert_eq!(head(200, &full, &TWO).unwrap_err().1, Code::BG_E_INSUFFICIENT_RANGE_SUPPORT);
        assert_eq!(head(200, &full, &[Span::new(0, 100)]), Ok("single"));
        assert_eq!(head(204, &[], &TWO), Err(INVALID));
    }
}
