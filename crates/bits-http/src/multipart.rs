//! A strict, incremental parser of `multipart/byteranges` bodies (RFC 9110 §14.6, framing from
//! RFC 2046 §5.1.1), the answer to a multi-range request, with the extra rules BITS puts on it
//! (spec §6.1): every part carries `Content-Range` (and maybe `Content-Type`) plus at most
//! [`MAX_OTHER_PART_HEADER_BYTES`] bytes of other headers, at most two CRLFs come before the first
//! boundary, and the server must not coalesce the requested ranges
//! ([`check_parts_match_request`]).
//!
//! [`MultipartParser`] is a push parser: give it the body chunk by chunk as it arrives and it yields
//! [`Event`]s whose body bytes borrow from the chunk, so no body byte is ever copied or buffered.
//! The only buffer is one header line (at most [`MAX_LINE_LEN`] bytes), so memory stays bounded
//! whatever the server sends. [`parse`] is the convenience form over a complete body in memory.
//!
//! Decisions where the RFCs leave room (all in the direction of rejecting: a misparse here would
//! put a wrong byte at a file offset):
//! - **Lines end in CRLF.** A bare LF (or a CR not followed by LF) in the preamble, a boundary line
//!   or a header block is an error ([`MultipartError::BareLineEnding`]). RFC 2046 makes CRLF
//!   mandatory and nginx and Apache both send it; RFC 9112's "MAY accept LF" covers only the HTTP
//!   header section, not the multipart framing.
//! - **A part's body length comes from its `Content-Range`**, and the body must be followed by
//!   exactly `CRLF--boundary`. So the body may contain the boundary string, and a body that is
//!   shorter or longer than its `Content-Range` says is an error, not a silently shifted part.
//! - **Preamble:** only up to two empty lines (CRLFs) may precede the first boundary (BITS); any
//!   preamble text is rejected.
//! - **Transport padding** (spaces and tabs after a boundary, RFC 2046) is accepted.
//! - **Epilogue:** everything after the close delimiter is ignored (RFC 2046), never returned.
//! - **Headers:** `Content-Range` is required once and must be a satisfied range (`bytes a-b/n` or
//!   `bytes a-b/*`); all parts must agree on the complete length when they state it.
//!   `Content-Type` may appear once. Other headers may total [`MAX_OTHER_PART_HEADER_BYTES`] bytes
//!   (counted as `name: value` plus CRLF). Folded header lines (obs-fold) are rejected, and so is a
//!   `Content-Encoding` other than `identity` (the bytes would not be file bytes).
//! - **Limits:** a line is at most [`MAX_LINE_LEN`] bytes; a boundary is 1..=70 characters of the
//!   RFC 2046 alphabet; at most [`DEFAULT_MAX_PARTS`] parts unless the caller sets its own
//!   (normally the number of ranges it asked for). A body with no parts is an error.

use bits_core::{Code, ErrorContext, Span};

use crate::content_range::ContentRange;
use crate::error::{FetchError, FetchErrorKind};

/// Bytes of part headers other than `Content-Range` and `Content-Type` that a part may carry
/// (spec §6.1), counted as each line's `name: value` plus its CRLF.
pub const MAX_OTHER_PART_HEADER_BYTES: usize = 180;
/// Longest line (boundary line or header line, CRLF excluded) the parser buffers.
pub const MAX_LINE_LEN: usize = 1024;
/// Longest boundary RFC 2046 allows.
pub const MAX_BOUNDARY_LEN: usize = 70;
/// Empty lines allowed between the HTTP headers and the first boundary (spec §6.1).
pub const MAX_PREAMBLE_CRLFS: usize = 2;
/// Default limit on the number of parts in one body.
pub const DEFAULT_MAX_PARTS: usize = 1024;

/// Why a `multipart/byteranges` body (or its `Content-Type`) was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("Content-Type {0:?} is not multipart/byteranges")]
    NotByteranges(String),
    #[error("Content-Type {0:?} has no boundary parameter")]
    MissingBoundary(String),
    #[error("invalid multipart boundary: {0}")]
    InvalidBoundary(String),
    #[error("more than {MAX_PREAMBLE_CRLFS} line breaks before the first multipart boundary")]
    PreambleTooLong,
    #[error("unexpected data before the first multipart boundary at byte {offset}")]
    UnexpectedPreamble { offset: u64 },
    #[error("line ending without CRLF at byte {offset} of the multipart body")]
    BareLineEnding { offset: u64 },
    #[error("line longer than {MAX_LINE_LEN} bytes at byte {offset} of the multipart body")]
    LineTooLong { offset: u64 },
    #[error("expected a multipart boundary at byte {offset}")]
    ExpectedBoundary { offset: u64 },
    #[error("multipart part {part}: malformed header line")]
    BadHeaderLine { part: usize },
    #[error("multipart part {part}: header {name} appears twice")]
    DuplicateHeader { part: usize, name: &'static str },
    #[error("multipart part {part}: no Content-Range")]
    MissingContentRange { part: usize },
    #[error("multipart part {part}: {reason}")]
    BadContentRange { part: usize, reason: String },
    #[error("multipart part {part}: Content-Encoding {value:?} is not identity")]
    EncodedPart { part: usize, value: String },
    #[error(
        "multipart part {part}: other headers take more than {MAX_OTHER_PART_HEADER_BYTES} bytes"
    )]
    HeadersTooLong { part: usize },
    #[error("multipart part {part}: complete length {got} differs from {first} in an earlier part")]
    InconsistentCompleteLength { part: usize, first: u64, got: u64 },
    #[error("multipart body has more than {max} parts")]
    TooManyParts { max: usize },
    #[error("multipart body has no parts")]
    NoParts,
    #[error("multipart body ends early (truncated)")]
    Truncated,
    #[error("server returned {got} parts for {requested} requested ranges")]
    PartCountMismatch { got: usize, requested: usize },
    #[error("server coalesced {count} requested ranges into part {part}")]
    Coalesced { part: Span, count: usize },
    #[error("server returned part {part}, which was not requested")]
    Unrequested { part: Span },
    #[error("server did not return requested range {span}")]
    Missing { span: Span },
}

impl MultipartError {
    /// True when the body was well-formed but holds other ranges than the ones requested
    /// (merged, overlapping, missing or extra): `BG_E_INVALID_SERVER_RESPONSE`, a fatal error
    /// (spec §3.C, §6.2). Everything else is a malformed response.
    pub fn is_range_mismatch(&self) -> bool {
        matches!(
            self,
            MultipartError::PartCountMismatch { .. }
                | MultipartError::Coalesced { .. }
                | MultipartError::Unrequested { .. }
                | MultipartError::Missing { .. }
        )
    }

    /// The BITS code: `BG_E_INVALID_SERVER_RESPONSE` for a range mismatch, otherwise the WinHTTP
    /// invalid-server-response code, like any other malformed response.
    pub fn code(&self) -> Code {
        if self.is_range_mismatch() {
            Code::BG_E_INVALID_SERVER_RESPONSE
        } else {
            Code::ERROR_WINHTTP_INVALID_SERVER_RESPONSE
        }
    }
}

impl From<MultipartError> for FetchError {
    /// A range mismatch is fatal (REMOTE_FILE); a malformed body is transient (GENERAL_TRANSPORT),
    /// like every other framing error of this crate.
    fn from(err: MultipartError) -> FetchError {
        if err.is_range_mismatch() {
            FetchError::new(
                FetchErrorKind::InvalidResponse,
                err.code(),
                ErrorContext::RemoteFile,
                false,
                err.to_string(),
            )
        } else {
            FetchError::new(
                FetchErrorKind::InvalidResponse,
                err.code(),
                ErrorContext::GeneralTransport,
                true,
                err.to_string(),
            )
        }
    }
}

/// The boundary of a `Content-Type: multipart/byteranges; boundary=...` value, unquoted.
/// Type, subtype and parameter names are case-insensitive; other parameters are skipped; the
/// boundary must be 1..=70 characters of the RFC 2046 alphabet and must not end in a space.
pub fn boundary_from_content_type(value: &str) -> Result<String, MultipartError> {
    let mut rest = value.trim_matches(is_ows_char);
    let media_end = rest.find(';').unwrap_or(rest.len());
    let media = rest[..media_end].trim_matches(is_ows_char);
    if !media.eq_ignore_ascii_case("multipart/byteranges") {
        return Err(MultipartError::NotByteranges(value.to_string()));
    }
    rest = &rest[media_end..];
    let mut boundary = None;
    while let Some(after) = rest.strip_prefix(';') {
        let after = after.trim_start_matches(is_ows_char);
        if after.is_empty() {
            rest = after; // a trailing ';' is harmless
            break;
        }
        let eq = after.find('=').ok_or_else(|| bad_boundary("parameter without '='"))?;
        let name = &after[..eq];
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(bad_boundary("malformed parameter name"));
        }
        let after = &after[eq + 1..];
        let (param, tail) = if let Some(quoted) = after.strip_prefix('"') {
            parse_quoted(quoted)?
        } else {
            let end = after.find(|c: char| c == ';' || is_ows_char(c)).unwrap_or(after.len());
            let token = &after[..end];
            if token.is_empty() || !token.bytes().all(is_tchar) {
                return Err(bad_boundary("malformed parameter value"));
            }
            (token.to_string(), &after[end..])
        };
        rest = tail.trim_start_matches(is_ows_char);
        if name.eq_ignore_ascii_case("boundary") {
            if boundary.is_some() {
                return Err(bad_boundary("boundary parameter given twice"));
            }
            boundary = Some(param);
        }
    }
    if !rest.is_empty() {
        return Err(bad_boundary("junk after the parameters"));
    }
    let boundary = boundary.ok_or_else(|| MultipartError::MissingBoundary(value.to_string()))?;
    check_boundary(&boundary)?;
    Ok(boundary)
}

fn bad_boundary(why: &str) -> MultipartError {
    MultipartError::InvalidBoundary(why.to_string())
}

fn is_ows_char(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A quoted-string after its opening quote: the unescaped value and what follows the closing quote.
fn parse_quoted(s: &str) -> Result<(String, &str), MultipartError> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, escaped)) if escaped == '\t' || (' '..='~').contains(&escaped) => {
                    out.push(escaped)
                }
                _ => return Err(bad_boundary("bad escape in quoted string")),
            },
            c if c == '\t' || (' '..='~').contains(&c) => out.push(c),
            _ => return Err(bad_boundary("bad character in quoted string")),
        }
        if out.len() > MAX_BOUNDARY_LEN {
            return Err(bad_boundary("longer than 70 characters"));
        }
    }
    Err(bad_boundary("unterminated quoted string"))
}

/// RFC 2046: `boundary := 0*69<bchars> bcharsnospace`, 1..=70 characters.
fn check_boundary(boundary: &str) -> Result<(), MultipartError> {
    if boundary.is_empty() || boundary.len() > MAX_BOUNDARY_LEN {
        return Err(bad_boundary("length is not 1..=70"));
    }
    let bchar = |b: u8| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b);
    if !boundary.bytes().all(bchar) {
        return Err(bad_boundary("character outside the RFC 2046 alphabet"));
    }
    if boundary.ends_with(' ') {
        return Err(bad_boundary("ends with a space"));
    }
    Ok(())
}

/// One part of a parsed body: the bytes of `content_range` (always
/// [`ContentRange::Satisfied`]), `body.len() == span().len()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part<'a> {
    pub content_range: ContentRange,
    pub body: &'a [u8],
}

impl Part<'_> {
    /// The remote bytes `[first, last + 1)` this part holds.
    pub fn span(&self) -> Span {
        span_of(&self.content_range).unwrap_or(Span { start: 0, end: 0 })
    }
}

fn span_of(range: &ContentRange) -> Option<Span> {
    match *range {
        ContentRange::Satisfied { first, last, .. } => {
            last.checked_add(1).map(|end| Span { start: first, end })
        }
        ContentRange::Unsatisfied { .. } => None,
    }
}

/// What the parser found in the bytes it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A part's headers were read; its body (`span.len()` bytes) follows as [`Event::Body`].
    PartStart { index: usize, content_range: ContentRange, span: Span },
    /// The next bytes of the current part's body, in order, borrowed from the input.
    Body(&'a [u8]),
    /// The current part's body was complete and followed by a boundary: only now are its bytes
    /// confirmed.
    PartEnd { index: usize },
    /// The close delimiter: the body is complete. Anything after it is ignored.
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Lines before the first boundary.
    Preamble,
    /// Header lines of part `parts`.
    Headers,
    /// The body of the current part, `remaining` bytes still to come.
    Body { remaining: u64 },
    /// `matched` bytes of `CRLF--boundary` after a body seen so far.
    Delimiter { matched: usize },
    /// After `--boundary` following a body: `--` (close) or padding and CRLF (next part).
    AfterDelimiter,
    /// After the close delimiter.
    Epilogue,
    /// An error was returned; every later call returns it again.
    Failed,
}

/// What to do with the line just completed in `line`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineKind {
    /// `--boundary` plus transport padding.
    Open,
    /// `--boundary--` plus transport padding.
    Close,
    Other,
}

/// Incremental `multipart/byteranges` parser; see the module docs for the rules it enforces.
///
/// ```
/// use bits_http::multipart::{Event, MultipartParser};
/// let body = b"\r\n--B\r\nContent-Range: bytes 0-2/10\r\n\r\nabc\r\n--B--\r\n";
/// let mut parser = MultipartParser::new("B").unwrap();
/// let mut input = &body[..];
/// let mut data = Vec::new();
/// loop {
///     let (used, event) = parser.next(input).unwrap();
///     input = &input[used..];
///     match event {
///         Some(Event::Body(bytes)) => data.extend_from_slice(bytes),
///         Some(_) => {}
///         None => break, // all of `input` consumed: feed the next chunk
///     }
/// }
/// parser.finish().unwrap(); // at the end of the HTTP body
/// assert_eq!(data, b"abc");
/// ```
#[derive(Clone, Debug)]
pub struct MultipartParser {
    /// `CRLF--boundary`; `dash_boundary()` is the same without the CRLF.
    delimiter: Vec<u8>,
    state: State,
    /// The current line (without its line ending), at most `MAX_LINE_LEN` bytes.
    line: Vec<u8>,
    /// The last byte seen in a line state was a CR.
    pending_cr: bool,
    preamble_crlfs: usize,
    /// Parts started so far.
    parts: usize,
    max_parts: usize,
    /// Per-part header state.
    content_range: Option<ContentRange>,
    seen_content_type: bool,
    other_header_bytes: usize,
    complete_length: Option<u64>,
    /// Bytes consumed so far, for error messages.
    offset: u64,
    error: Option<MultipartError>,
}

impl MultipartParser {
    /// A parser for bodies delimited by `boundary` (as returned by [`boundary_from_content_type`]).
    pub fn new(boundary: &str) -> Result<MultipartParser, MultipartError> {
        check_boundary(boundary)?;
        let mut delimiter = Vec::with_capacity(boundary.len() + 4);
        delimiter.extend_from_slice(b"\r\n--");
        delimiter.extend_from_slice(boundary.as_bytes());
        Ok(MultipartParser {
            delimiter,
            state: State::Preamble,
            line: Vec::new(),
            pending_cr: false,
            preamble_crlfs: 0,
            parts: 0,
            max_parts: DEFAULT_MAX_PARTS,
            content_range: None,
            seen_content_type: false,
            other_header_bytes: 0,
            complete_length: None,
            offset: 0,
            error: None,
        })
    }

    /// At most `max_parts` parts are accepted (normally the number of ranges requested).
    pub fn with_max_parts(mut self, max_parts: usize) -> MultipartParser {
        self.max_parts = max_parts;
        self
    }

    /// Parts started so far.
    pub fn parts_seen(&self) -> usize {
        self.parts
    }

    /// Consumes a prefix of `input` and returns how many bytes it used and the next event, or
    /// `None` once all of `input` is consumed without completing an event (feed the next chunk).
    /// After an error every call returns the same error.
    pub fn next<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<Event<'a>>), MultipartError> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        match self.step(input) {
            Ok(done) => Ok(done),
            Err(err) => {
                self.state = State::Failed;
                self.error = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Call at the end of the HTTP body: an error unless the close delimiter was seen.
    pub fn finish(&self) -> Result<(), MultipartError> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        match self.state {
            State::Epilogue => Ok(()),
            _ => Err(MultipartError::Truncated),
        }
    }

    fn step<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<Event<'a>>), MultipartError> {
        let mut used = 0;
        while used < input.len() {
            match self.state {
                State::Failed => {
                    return Err(self.error.clone().unwrap_or(MultipartError::Truncated));
                }
                State::Epilogue => {
                    self.offset += (input.len() - used) as u64;
                    return Ok((input.len(), None));
                }
                State::Body { remaining } => {
                    let avail = input.len() - used;
                    let take = usize::try_from(remaining).map_or(avail, |r| r.min(avail));
                    let bytes = &input[used..used + take];
                    used += take;
                    self.offset += take as u64;
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 {
                        State::Delimiter { matched: 0 }
                    } else {
                        State::Body { remaining }
                    };
                    if !bytes.is_empty() {
                        return Ok((used, Some(Event::Body(bytes))));
                    }
                }
                State::Delimiter { matched } => {
                    let want = &self.delimiter[matched..];
                    let n = want.len().min(input.len() - used);
                    if let Some(at) =
                        input[used..used + n].iter().zip(want).position(|(a, b)| a != b)
                    {
                        // The offset of the first wrong byte, whatever the chunking.
                        let offset = self.offset + at as u64;
                        return Err(MultipartError::ExpectedBoundary { offset });
                    }
                    used += n;
                    self.offset += n as u64;
                    if matched + n == self.delimiter.len() {
                        self.state = State::AfterDelimiter;
                        self.line.clear();
                        self.pending_cr = false;
                        let index = self.parts.saturating_sub(1);
                        return Ok((used, Some(Event::PartEnd { index })));
                    }
                    self.state = State::Delimiter { matched: matched + n };
                }
                State::Preamble | State::Headers | State::AfterDelimiter => {
                    let byte = input[used];
                    used += 1;
                    self.offset += 1;
                    if let Some(event) = self.line_byte(byte)? {
                        return Ok((used, Some(event)));
                    }
                }
            }
        }
        Ok((used, None))
    }

    /// Feeds one byte of a line state; returns an event when a completed line produces one.
    fn line_byte(&mut self, byte: u8) -> Result<Option<Event<'static>>, MultipartError> {
        if self.pending_cr {
            self.pending_cr = false;
            if byte != b'\n' {
                return Err(MultipartError::BareLineEnding { offset: self.offset - 1 });
            }
            return self.end_of_line();
        }
        match byte {
            b'\r' => self.pending_cr = true,
            b'\n' => return Err(MultipartError::BareLineEnding { offset: self.offset - 1 }),
            _ => {
                if self.line.len() >= MAX_LINE_LEN {
                    return Err(MultipartError::LineTooLong { offset: self.offset - 1 });
                }
                self.line.push(byte);
                // The close delimiter after a body ends without a line ending: `--boundary--`
                // is complete as soon as its `--` arrives (the epilogue may follow at once).
                if self.state == State::AfterDelimiter && self.line == b"--" {
                    self.line.clear();
                    self.state = State::Epilogue;
                    return Ok(Some(Event::End));
                }
            }
        }
        Ok(None)
    }

    fn end_of_line(&mut self) -> Result<Option<Event<'static>>, MultipartError> {
        let line = std::mem::take(&mut self.line);
        let result = self.handle_line(&line);
        self.line = line;
        self.line.clear();
        result
    }

    fn classify_boundary_line(&self, line: &[u8]) -> LineKind {
        let dash_boundary = &self.delimiter[2..];
        let Some(rest) = line.strip_prefix(dash_boundary) else {
            return LineKind::Other;
        };
        let (kind, padding) = match rest.strip_prefix(b"--") {
            Some(padding) => (LineKind::Close, padding),
            None => (LineKind::Open, rest),
        };
        if padding.iter().all(|&b| b == b' ' || b == b'\t') { kind } else { LineKind::Other }
    }

    fn handle_line(&mut self, line: &[u8]) -> Result<Option<Event<'static>>, MultipartError> {
        match self.state {
            State::Preamble => {
                if line.is_empty() {
                    self.preamble_crlfs += 1;
                    if self.preamble_crlfs > MAX_PREAMBLE_CRLFS {
                        return Err(MultipartError::PreambleTooLong);
                    }
                    return Ok(None);
                }
                match self.classify_boundary_line(line) {
                    LineKind::Open => self.start_part(),
                    LineKind::Close => Err(MultipartError::NoParts),
                    LineKind::Other => Err(MultipartError::UnexpectedPreamble {
                        offset: self.offset.saturating_sub(line.len() as u64 + 2),
                    }),
                }
            }
            State::AfterDelimiter => {
                // What followed `--boundary` up to the CRLF: transport padding only (a `--` right
                // after the boundary was handled as the close delimiter already).
                if line.iter().all(|&b| b == b' ' || b == b'\t') {
                    self.start_part()
                } else {
                    Err(MultipartError::ExpectedBoundary { offset: self.offset })
                }
            }
            State::Headers => {
                if line.is_empty() {
                    return self.end_headers();
                }
                self.header_line(line)?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    fn start_part(&mut self) -> Result<Option<Event<'static>>, MultipartError> {
        if self.parts >= self.max_parts {
            return Err(MultipartError::TooManyParts { max: self.max_parts });
        }
        self.parts += 1;
        self.state = State::Headers;
        self.content_range = None;
        self.seen_content_type = false;
        self.other_header_bytes = 0;
        Ok(None)
    }

    fn header_line(&mut self, line: &[u8]) -> Result<(), MultipartError> {
        let part = self.parts.saturating_sub(1);
        let bad = || MultipartError::BadHeaderLine { part };
        let colon = line.iter().position(|&b| b == b':').ok_or_else(bad)?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(bad()); // also rejects obs-fold (a line starting with SP/HT)
        }
        let value = trim_ows(&line[colon + 1..]);
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(bad());
        }
        if name.eq_ignore_ascii_case(b"content-range") {
            if self.content_range.is_some() {
                return Err(MultipartError::DuplicateHeader { part, name: "Content-Range" });
            }
            let text = std::str::from_utf8(value).map_err(|_| bad())?;
            let range = ContentRange::parse(text)
                .map_err(|e| MultipartError::BadContentRange { part, reason: e.to_string() })?;
            let ContentRange::Satisfied { complete, .. } = range else {
                return Err(MultipartError::BadContentRange {
                    part,
                    reason: format!("{text:?} is not a satisfied range"),
                });
            };
            if span_of(&range).is_none() {
                return Err(MultipartError::BadContentRange {
                    part,
                    reason: format!("{text:?} is longer than 2^64 - 1 bytes"),
                });
            }
            if let Some(got) = complete {
                match self.complete_length {
                    Some(first) if first != got => {
                        return Err(MultipartError::InconsistentCompleteLength {
                            part,
                            first,
                            got,
                        });
                    }
                    _ => self.complete_length = Some(got),
                }
            }
            self.content_range = Some(range);
        } else if name.eq_ignore_ascii_case(b"content-type") {
            if self.seen_content_type {
                return Err(MultipartError::DuplicateHeader { part, name: "Content-Type" });
            }
            self.seen_content_type = true;
        } else {
            if name.eq_ignore_ascii_case(b"content-encoding")
                && !value.eq_ignore_ascii_case(b"identity")
            {
                return Err(MultipartError::EncodedPart {
                    part,
                    value: String::from_utf8_lossy(value).into_owned(),
                });
            }
            self.other_header_bytes += line.len() + 2;
            if self.other_header_bytes > MAX_OTHER_PART_HEADER_BYTES {
                return Err(MultipartError::HeadersTooLong { part });
            }
        }
        Ok(())
    }

    fn end_headers(&mut self) -> Result<Option<Event<'static>>, MultipartError> {
        let part = self.parts.saturating_sub(1);
        let content_range =
            self.content_range.ok_or(MultipartError::MissingContentRange { part })?;
        let span = span_of(&content_range).ok_or(MultipartError::MissingContentRange { part })?;
        self.state = State::Body { remaining: span.len() };
        Ok(Some(Event::PartStart { index: part, content_range, span }))
    }
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Parses a complete `multipart/byteranges` body held in memory. Part bodies borrow from `body`.
/// At most `max_parts` parts are accepted.
pub fn parse<'a>(
    body: &'a [u8],
    boundary: &str,
    max_parts: usize,
) -> Result<Vec<Part<'a>>, MultipartError> {
    let mut parser = MultipartParser::new(boundary)?.with_max_parts(max_parts);
    let mut parts = Vec::new();
    let mut pos = 0;
    let mut current: Option<(ContentRange, usize, usize)> = None; // (range, body start, len)
    loop {
        let (used, event) = parser.next(body.get(pos..).unwrap_or_default())?;
        pos += used;
        match event {
            None => break,
            Some(Event::PartStart { content_range, .. }) => {
                // Both are bounded by body.len() because the body must follow in `body`.
                current = Some((content_range, pos, 0));
            }
            Some(Event::Body(bytes)) => {
                if let Some((_, _, len)) = current.as_mut() {
                    *len += bytes.len();
                }
            }
            Some(Event::PartEnd { .. }) => {
                if let Some((content_range, start, len)) = current.take() {
                    let part_body = body.get(start..start + len).unwrap_or_default();
                    parts.push(Part { content_range, body: part_body });
                }
            }
            Some(Event::End) => {}
        }
    }
    parser.finish()?;
    Ok(parts)
}

/// Checks that the parts hold exactly the requested spans, in any order: no part merges or
/// overlaps requested spans, none is missing, none is extra. Empty requested spans are ignored
/// (a `Range` header cannot ask for them). Failures are range mismatches
/// ([`MultipartError::is_range_mismatch`], `BG_E_INVALID_SERVER_RESPONSE`).
pub fn check_parts_match_request(
    parts: &[Part<'_>],
    requested: &[Span],
) -> Result<(), MultipartError> {
    let got: Vec<Span> = parts.iter().map(Part::span).collect();
    check_spans_match_request(&got, requested)
}

/// [`check_parts_match_request`] on the parts' spans, for callers of [`MultipartParser`] that
/// collect the spans of [`Event::PartStart`].
pub fn check_spans_match_request(got: &[Span], requested: &[Span]) -> Result<(), MultipartError> {
    let mut want: Vec<Span> = requested.iter().copied().filter(|s| !s.is_empty()).collect();
    want.sort_unstable_by_key(|s| (s.start, s.end));
    let mut have: Vec<Span> = got.to_vec();
    have.sort_unstable_by_key(|s| (s.start, s.end));
    // Multiset difference of two sorted lists.
    let (mut i, mut j) = (0, 0);
    let mut extra = None;
    let mut missing = None;
    while i < have.len() && j < want.len() {
        let (h, w) = (have[i], want[j]);
        if h == w {
            i += 1;
            j += 1;
        } else if (h.start, h.end) < (w.start, w.end) {
            extra.get_or_insert(h);
            i += 1;
        } else {
            missing.get_or_insert(w);
            j += 1;
        }
    }
    if let Some(&h) = have.get(i) {
        extra.get_or_insert(h);
    }
    if let Some(&w) = want.get(j) {
        missing.get_or_insert(w);
    }
    if let Some(part) = extra {
        let count = want.iter().filter(|w| w.start < part.end && part.start < w.end).count();
        return Err(if count >= 2 {
            MultipartError::Coalesced { part, count }
        } else {
            MultipartError::Unrequested { part }
        });
    }
    if let Some(span) = missing {
        // A requested span that did come back, but fewer times than asked: duplicates merged.
        if have.contains(&span) {
            let count = want.iter().filter(|&&w| w == span).count();
            return Err(MultipartError::Coalesced { part: span, count });
        }
        return Err(MultipartError::Missing { span });
    }
    if have.len() != want.len() {
        return Err(MultipartError::PartCountMismatch { got: have.len(), requested: want.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;

    use super::*;

    fn sp(start: u64, end: u64) -> Span {
        Span::new(start, end)
    }

    fn spans(parts: &[Part<'_>]) -> Vec<Span> {
        parts.iter().map(Part::span).collect()
    }

    /// The body nginx 1.2x sends for `Range: bytes=0-4,10-14` of a 100-byte text file.
    const NGINX: &[u8] = b"\r\n--00000000001\r\n\
Content-Type: text/plain\r\n\
Content-Range: bytes 0-4/100\r\n\
\r\n\
01234\r\n--00000000001\r\n\
Content-Type: text/plain\r\n\
Content-Range: bytes 10-14/100\r\n\
\r\n\
abcde\r\n--00000000001--\r\n";

    /// Apache httpd's form: lowercase-ish header names, hex boundary, ranges out of order.
    const APACHE: &[u8] = b"\r\n--4f3a9c6b1e2d7a08\r\n\
Content-type: application/octet-stream\r\n\
Content-range: bytes 900-903/1000\r\n\
\r\n\
wxyz\r\n--4f3a9c6b1e2d7a08\r\n\
Content-type: application/octet-stream\r\n\
Content-range: bytes 100-102/1000\r\n\
\r\n\
abc\r\n--4f3a9c6b1e2d7a08--\r\n";

    fn body(parts: &[(&str, &[u8])], boundary: &str) -> Vec<u8> {
        let mut out = b"\r\n".to_vec();
        for (range, data) in parts {
            out.extend_from_slice(
                format!("--{boundary}\r\nContent-Range: {range}\r\n\r\n").as_bytes(),
            );
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        out
    }

    fn parse_b(input: &[u8]) -> Result<Vec<Part<'_>>, MultipartError> {
        parse(input, "B", DEFAULT_MAX_PARTS)
    }

    #[test]
    fn boundary_from_content_type_forms() {
        let ok = |v: &str| boundary_from_content_type(v).unwrap();
        assert_eq!(ok("multipart/byteranges; boundary=00000000001"), "00000000001");
        assert_eq!(ok("Multipart/ByteRanges;BOUNDARY=abc"), "abc");
        assert_eq!(ok("multipart/byteranges; charset=x; boundary=abc ; q=1"), "abc");
        assert_eq!(ok("multipart/byteranges; boundary=\"a b:c?\""), "a b:c?");
        assert_eq!(ok("multipart/byteranges; boundary=\"a\\_b\""), "a_b");
        assert_eq!(ok("  multipart/byteranges ; boundary=x;"), "x");
        let seventy = "a".repeat(70);
        assert_eq!(ok(&format!("multipart/byteranges; boundary={seventy}")), seventy);

        let err = |v: &str| boundary_from_content_type(v).unwrap_err();
        assert!(matches!(err("multipart/mixed; boundary=x"), MultipartError::NotByteranges(_)));
        assert!(matches!(err("text/plain"), MultipartError::NotByteranges(_)));
        assert!(matches!(err("multipart/byteranges"), MultipartError::MissingBoundary(_)));
        assert!(matches!(err("multipart/byteranges; q=1"), MultipartError::MissingBoundary(_)));
        for bad in [
            "multipart/byteranges; boundary=",
            "multipart/byteranges; boundary=\"\"",
            "multipart/byteranges; boundary=\"abc",
            "multipart/byteranges; boundary=\"abc \"",
            "multipart/byteranges; boundary=a{b",
            "multipart/byteranges; boundary=\"a{b\"",
            "multipart/byteranges; boundary=a; boundary=b",
            "multipart/byteranges; boundary",
            "multipart/byteranges; =x",
            "multipart/byteranges; boundary=\"a\"junk",
            "multipart/byteranges; boundary=\"a\\\u{1}\"",
            "multipart/byteranges; boundary=\"\u{e9}\"",
        ] {
            assert!(
                matches!(boundary_from_content_type(bad), Err(MultipartError::InvalidBoundary(_))),
                "{bad:?} gave {:?}",
                boundary_from_content_type(bad)
            );
        }
        let long = "a".repeat(71);
        assert!(
            boundary_from_content_type(&format!("multipart/byteranges; boundary={long}")).is_err()
        );
        assert!(
            boundary_from_content_type(&format!("multipart/byteranges; boundary=\"{long}\""))
                .is_err()
        );
    }

    #[test]
    fn nginx_style_body() {
        let parts = parse(NGINX, "00000000001", 2).unwrap();
        assert_eq!(spans(&parts), [sp(0, 5), sp(10, 15)]);
        assert_eq!(parts[0].body, b"01234");
        assert_eq!(parts[1].body, b"abcde");
        assert_eq!(
            parts[1].content_range,
            ContentRange::Satisfied { first: 10, last: 14, complete: Some(100) }
        );
        check_parts_match_request(&parts, &[sp(10, 15), sp(0, 5)]).unwrap();
    }

    #[test]
    fn apache_style_body() {
        let parts = parse(APACHE, "4f3a9c6b1e2d7a08", 2).unwrap();
        assert_eq!(spans(&parts), [sp(900, 904), sp(100, 103)]);
        assert_eq!(parts[0].body, b"wxyz");
        assert_eq!(parts[1].body, b"abc");
        check_parts_match_request(&parts, &[sp(100, 103), sp(900, 904)]).unwrap();
    }

    #[test]
    fn preamble_is_at_most_two_crlfs() {
        let tail = b"--B\r\nContent-Range: bytes 0-0/1\r\n\r\nx\r\n--B--";
        for crlfs in 0..=2 {
            let input = [b"\r\n".repeat(crlfs), tail.to_vec()].concat();
            assert_eq!(parse_b(&input).unwrap()[0].body, b"x", "{crlfs} CRLFs");
        }
        let input = [b"\r\n".repeat(3), tail.to_vec()].concat();
        assert_eq!(parse_b(&input), Err(MultipartError::PreambleTooLong));
        let input = [b"This is a preamble\r\n".to_vec(), tail.to_vec()].concat();
        assert!(matches!(parse_b(&input), Err(MultipartError::UnexpectedPreamble { offset: 0 })));
        let input = [b"\r\n--Bx\r\n".to_vec(), tail.to_vec()].concat();
        assert!(matches!(parse_b(&input), Err(MultipartError::UnexpectedPreamble { offset: 2 })));
    }

    #[test]
    fn transport_padding_and_epilogue_are_accepted() {
        let input = b"--B \t\r\nContent-Range: bytes 0-0/2\r\n\r\nx\r\n--B\t\r\n\
Content-Range:bytes 1-1/2   \r\n\r\ny\r\n--B--  \r\nthis epilogue is ignored\n\r";
        let parts = parse_b(input).unwrap();
        assert_eq!(spans(&parts), [sp(0, 1), sp(1, 2)]);
        // The close delimiter may also end the body without a CRLF.
        let input = b"--B\r\nContent-Range: bytes 0-0/2\r\n\r\nx\r\n--B--";
        assert_eq!(parse_b(input).unwrap().len(), 1);
        // Padding before the close `--` is not a close delimiter.
        let input = b"--B\r\nContent-Range: bytes 0-0/2\r\n\r\nx\r\n--B --\r\n";
        assert!(matches!(parse_b(input), Err(MultipartError::ExpectedBoundary { .. })));
    }

    #[test]
    fn a_body_may_contain_the_boundary() {
        let data = b"\r\n--B\r\n--B--\r\n";
        let input = body(&[("bytes 5-18/20", data)], "B");
        let parts = parse_b(&input).unwrap();
        assert_eq!(parts[0].body, data);
    }

    #[test]
    fn lf_only_lines_are_rejected() {
        for input in [
            &b"\n--B\r\nContent-Range: bytes 0-0/1\r\n\r\nx\r\n--B--\r\n"[..],
            b"--B\nContent-Range: bytes 0-0/1\r\n\r\nx\r\n--B--\r\n",
            b"--B\r\nContent-Range: bytes 0-0/1\n\r\nx\r\n--B--\r\n",
            b"--B\r\nContent-Range: bytes 0-0/1\r\n\nx\r\n--B--\r\n",
            b"--B\r\nContent-Range: bytes 0-0/1\r\n\r\nx\r\n--B\n\
Content-Range: bytes 1-1/2\r\n\r\ny\r\n--B--\r\n",
            b"--B\r\nContent-Range: bytes 0-0/1\rX\r\n\r\nx\r\n--B--\r\n",
        ] {
            assert!(
                matches!(parse_b(input), Err(MultipartError::BareLineEnding { .. })),
                "{:?}: {:?}",
                String::from_utf8_lossy(input),
                parse_b(input)
            );
        }
        // A bare LF as the delimiter's line ending after a body is a wrong delimiter.
        let input = b"--B\r\nContent-Range: bytes 0-0/1\r\n\r\nx\n--B--\r\n";
        assert!(matches!(parse_b(input), Err(MultipartError::ExpectedBoundary { offset: 36 })));
    }

    #[test]
    fn body_length_must_match_content_range() {
        let short = body(&[("bytes 0-9/20", b"too short")], "B");
        assert!(matches!(parse_b(&short), Err(MultipartError::ExpectedBoundary { .. })));
        let long = body(&[("bytes 0-9/20", b"far too long")], "B");
        assert!(matches!(parse_b(&long), Err(MultipartError::ExpectedBoundary { .. })));
        let exact = body(&[("bytes 0-9/20", b"just right")], "B");
        assert_eq!(parse_b(&exact).unwrap()[0].body, b"just right");
    }

    #[test]
    fn content_range_rules() {
        let one = |headers: &str| {
            let input = format!("--B\r\n{headers}\r\nx\r\n--B--\r\n");
            parse(input.as_bytes(), "B", 4).map(|p| p.len())
        };
        assert_eq!(one("Content-Range: bytes 0-0/1\r\n"), Ok(1));
        assert_eq!(one("content-range: bytes 3-3/*\r\n"), Ok(1));
        assert_eq!(one("CONTENT-RANGE:\tbytes 3-3/4\t\r\n"), Ok(1));
        assert_eq!(
            one("Content-Type: text/plain\r\n"),
            Err(MultipartError::MissingContentRange { part: 0 })
        );
        assert_eq!(one(""), Err(MultipartError::MissingContentRange { part: 0 }));
        assert_eq!(
            one("Content-Range: bytes 0-0/1\r\nContent-Range: bytes 0-0/1\r\n"),
            Err(MultipartError::DuplicateHeader { part: 0, name: "Content-Range" })
        );
        assert_eq!(
            one("Content-Type: a\r\nContent-Range: bytes 0-0/1\r\ncontent-type: b\r\n"),
            Err(MultipartError::DuplicateHeader { part: 0, name: "Content-Type" })
        );
        for bad in ["bytes */1", "bytes 0-1/1", "bytes 0-0", "items 0-0/1", "bytes 1-0/5", ""] {
            assert!(
                matches!(
                    one(&format!("Content-Range: {bad}\r\n")),
                    Err(MultipartError::BadContentRange { part: 0, .. })
                ),
                "{bad:?}"
            );
        }
        // A span of 2^64 bytes cannot be represented; it must be an error, not an overflow.
        assert!(matches!(
            one("Content-Range: bytes 0-18446744073709551615/*\r\n"),
            Err(MultipartError::BadContentRange { .. })
        ));
        for bad in [
            "Content-Range : bytes 0-0/1\r\n",
            " Content-Range: bytes 0-0/1\r\n",
            "Content-Range: bytes 0-0/1\r\n folded\r\n",
            "no colon\r\n",
            ": empty name\r\n",
            "Content-Range: bytes 0-0/1\r\nX-Ctl: a\u{1}b\r\n",
        ] {
            assert!(
                matches!(one(bad), Err(MultipartError::BadHeaderLine { part: 0 })),
                "{bad:?}: {:?}",
                one(bad)
            );
        }
        assert!(matches!(
            one("Content-Range: bytes 0-0/1\r\nContent-Encoding: gzip\r\n"),
            Err(MultipartError::EncodedPart { part: 0, .. })
        ));
        assert_eq!(one("Content-Range: bytes 0-0/1\r\nContent-Encoding: identity\r\n"), Ok(1));
    }

    #[test]
    fn other_headers_are_limited_to_180_bytes() {
        // "X-A: " + value + CRLF = 180 bytes exactly.
        let exact = format!("X-A: {}", "v".repeat(180 - 7));
        let input = format!("--B\r\nContent-Range: bytes 0-0/1\r\n{exact}\r\n\r\nx\r\n--B--");
        assert_eq!(parse_b(input.as_bytes()).unwrap().len(), 1);
        let over = format!("X-A: {}", "v".repeat(180 - 6));
        let input = format!("--B\r\nContent-Range: bytes 0-0/1\r\n{over}\r\n\r\nx\r\n--B--");
        assert_eq!(parse_b(input.as_bytes()), Err(MultipartError::HeadersTooLong { part: 0 }));
        // Split over several headers, and not counting Content-Type (long is fine).
        let ct = format!("Content-Type: {}", "t".repeat(500));
        let many = "X-B: 1234567890123\r\n".repeat(9); // 9 * 20 = 180
        let input = format!("--B\r\n{ct}\r\n{many}Content-Range: bytes 0-0/1\r\n\r\nx\r\n--B--");
        assert_eq!(parse_b(input.as_bytes()).unwrap().len(), 1);
        let input = format!("--B\r\n{many}X-C: 1\r\nContent-Range: bytes 0-0/1\r\n\r\nx\r\n--B--");
        assert_eq!(parse_b(input.as_bytes()), Err(MultipartError::HeadersTooLong { part: 0 }));
        // The budget is per part.
        let input = format!(
            "--B\r\n{many}Content-Range: bytes 0-0/2\r\n\r\nx\r\n--B\r\n{many}Content-Range: bytes 1-1/2\r\n\r\ny\r\n--B--"
        );
        assert_eq!(parse_b(input.as_bytes()).unwrap().len(), 2);
    }

    #[test]
    fn lines_are_bounded() {
        let ct = format!("Content-Type: {}", "t".repeat(MAX_LINE_LEN));
        let input = format!("--B\r\n{ct}\r\nContent-Range: bytes 0-0/1\r\n\r\nx\r\n--B--");
        assert!(matches!(parse_b(input.as_bytes()), Err(MultipartError::LineTooLong { .. })));
        let input = "x".repeat(10 * MAX_LINE_LEN);
        assert!(matches!(
            parse_b(input.as_bytes()),
            Err(MultipartError::LineTooLong { offset: 1024 })
        ));
    }

    #[test]
    fn part_count_and_lengths() {
        let three =
            body(&[("bytes 0-0/9", b"a"), ("bytes 2-2/9", b"b"), ("bytes 4-4/9", b"c")], "B");
        assert_eq!(parse(&three, "B", 3).unwrap().len(), 3);
        assert_eq!(parse(&three, "B", 2), Err(MultipartError::TooManyParts { max: 2 }));
        assert_eq!(parse_b(b"\r\n--B--\r\n"), Err(MultipartError::NoParts));
        assert!(parse_b(b"\r\n--B\r\n--B--\r\n").is_err(), "a part without headers");
        assert_eq!(parse_b(b""), Err(MultipartError::Truncated));
        let mixed =
            body(&[("bytes 0-0/9", b"a"), ("bytes 2-2/*", b"b"), ("bytes 4-4/10", b"c")], "B");
        assert_eq!(
            parse_b(&mixed),
            Err(MultipartError::InconsistentCompleteLength { part: 2, first: 9, got: 10 })
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        for input in [NGINX, APACHE] {
            let boundary = if input == NGINX { "00000000001" } else { "4f3a9c6b1e2d7a08" };
            // The body is complete once the close delimiter's `--` arrives; what follows is epilogue.
            let complete = input.len() - 2;
            for cut in 0..complete {
                assert_eq!(
                    parse(&input[..cut], boundary, 9),
                    Err(MultipartError::Truncated),
                    "cut at {cut}"
                );
            }
            assert!(parse(&input[..complete], boundary, 9).is_ok());
        }
    }

    #[test]
    fn byte_by_byte_feeding_matches_whole_parsing() {
        let mut parser = MultipartParser::new("00000000001").unwrap();
        let mut events = Vec::new();
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        for byte in NGINX.chunks(1) {
            let mut input = byte;
            loop {
                let (used, event) = parser.next(input).unwrap();
                input = &input[used..];
                match event {
                    None => break,
                    Some(Event::Body(b)) => bodies.last_mut().unwrap().extend_from_slice(b),
                    Some(Event::PartStart { span, .. }) => {
                        events.push(format!("start {span}"));
                        bodies.push(Vec::new());
                    }
                    Some(other) => events.push(format!("{other:?}")),
                }
            }
        }
        parser.finish().unwrap();
        assert_eq!(
            events,
            [
                "start [0, 5)",
                "PartEnd { index: 0 }",
                "start [10, 15)",
                "PartEnd { index: 1 }",
                "End"
            ]
        );
        assert_eq!(bodies, [b"01234".to_vec(), b"abcde".to_vec()]);
    }

    /// Found by the `multipart` fuzz target: a wrong delimiter after a body was reported at the
    /// start of the chunk being compared, so the offset depended on how the body was split.
    #[test]
    fn error_offsets_do_not_depend_on_chunking() {
        let input = b"--B\r\nContent-Range: bytes 0-4/100\r\n\r\n01234\r\n-2-B\r\n";
        let whole = parse_b(input);
        assert_eq!(whole, Err(MultipartError::ExpectedBoundary { offset: 45 }));
        for cut in 0..input.len() {
            assert_eq!(parse_in_chunks(input, "B", &[cut]), Err(whole.clone().unwrap_err()));
        }
    }

    #[test]
    fn errors_are_sticky() {
        let mut parser = MultipartParser::new("B").unwrap();
        let err = parser.next(b"junk\r\n").unwrap_err();
        assert_eq!(parser.next(b"--B\r\n").unwrap_err(), err);
        assert_eq!(parser.finish().unwrap_err(), err);
    }

    #[test]
    fn parts_must_match_the_request_exactly() {
        let ok = |got: &[Span], want: &[Span]| check_spans_match_request(got, want);
        assert_eq!(ok(&[sp(0, 5), sp(10, 15)], &[sp(10, 15), sp(0, 5)]), Ok(()));
        assert_eq!(ok(&[sp(10, 15), sp(0, 5)], &[sp(10, 15), sp(0, 5), sp(7, 7)]), Ok(()));
        // Touching ranges merged into one part.
        assert_eq!(
            ok(&[sp(0, 20)], &[sp(0, 10), sp(10, 20)]),
            Err(MultipartError::Coalesced { part: sp(0, 20), count: 2 })
        );
        // Overlapping requested ranges merged.
        assert_eq!(
            ok(&[sp(0, 15), sp(30, 31)], &[sp(0, 10), sp(5, 15), sp(30, 31)]),
            Err(MultipartError::Coalesced { part: sp(0, 15), count: 2 })
        );
        // Duplicate requested ranges merged.
        assert_eq!(
            ok(&[sp(0, 10)], &[sp(0, 10), sp(0, 10)]),
            Err(MultipartError::Coalesced { part: sp(0, 10), count: 2 })
        );
        // A part that overlaps but is not what was asked.
        assert_eq!(
            ok(&[sp(0, 6)], &[sp(0, 5)]),
            Err(MultipartError::Unrequested { part: sp(0, 6) })
        );
        assert_eq!(
            ok(&[sp(0, 5), sp(0, 5)], &[sp(0, 5)]),
            Err(MultipartError::Unrequested { part: sp(0, 5) })
        );
        assert_eq!(
            ok(&[sp(0, 5)], &[sp(0, 5), sp(8, 9)]),
            Err(MultipartError::Missing { span: sp(8, 9) })
        );
        assert_eq!(ok(&[], &[sp(8, 9)]), Err(MultipartError::Missing { span: sp(8, 9) }));
        for err in [
            MultipartError::Missing { span: sp(8, 9) },
            MultipartError::Coalesced { part: sp(0, 2), count: 2 },
        ] {
            assert_eq!(err.code(), Code::BG_E_INVALID_SERVER_RESPONSE);
            let fetch = FetchError::from(err);
            assert!(!fetch.transient);
            assert_eq!(fetch.context, ErrorContext::RemoteFile);
        }
        let fetch = FetchError::from(MultipartError::Truncated);
        assert_eq!(fetch.code, Code::ERROR_WINHTTP_INVALID_SERVER_RESPONSE);
        assert!(fetch.transient);
    }

    // ---- property tests ----

    #[derive(Clone, Debug)]
    struct GenPart {
        first: u64,
        data: Vec<u8>,
        header_case: u8,
        content_type: bool,
        type_first: bool,
        extra: Vec<(String, String)>,
        padding: String,
    }

    #[derive(Clone, Debug)]
    struct GenBody {
        boundary: String,
        complete: Option<u64>,
        preamble: usize,
        parts: Vec<GenPart>,
        close_padding: String,
        epilogue: Vec<u8>,
    }

    fn serialize(g: &GenBody) -> Vec<u8> {
        let mut out = b"\r\n".repeat(g.preamble);
        for (i, p) in g.parts.iter().enumerate() {
            if i == 0 {
                out.extend_from_slice(format!("--{}", g.boundary).as_bytes());
            }
            out.extend_from_slice(format!("{}\r\n", p.padding).as_bytes());
            let last = p.first + p.data.len() as u64 - 1;
            let total = g.complete.map_or("*".to_string(), |c| c.to_string());
            let name = match p.header_case % 3 {
                0 => "Content-Range",
                1 => "content-range",
                _ => "CONTENT-RANGE",
            };
            let cr = format!("{name}: bytes {}-{last}/{total}\r\n", p.first);
            let ct = if p.content_type { "Content-type: application/octet-stream\r\n" } else { "" };
            if p.type_first {
                out.extend_from_slice(ct.as_bytes());
            }
            out.extend_from_slice(cr.as_bytes());
            if !p.type_first {
                out.extend_from_slice(ct.as_bytes());
            }
            for (n, v) in &p.extra {
                out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&p.data);
            out.extend_from_slice(format!("\r\n--{}", g.boundary).as_bytes());
        }
        out.extend_from_slice(format!("--{}", g.close_padding).as_bytes());
        out.extend_from_slice(&g.epilogue);
        out
    }

    fn gen_part() -> impl Strategy<Value = GenPart> {
        (
            0u64..1_000_000,
            prop::collection::vec(any::<u8>(), 1..64),
            any::<u8>(),
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(("X-[a-z]{1,8}", "[ -~]{0,30}"), 0..4),
            "[ \t]{0,3}",
        )
            .prop_map(|(first, data, header_case, content_type, type_first, extra, padding)| {
                let extra = extra
                    .into_iter()
                    .map(|(n, v): (String, String)| (n, v.trim().to_string()))
                    .collect();
                GenPart { first, data, header_case, content_type, type_first, extra, padding }
            })
            .prop_filter("other headers within 180 bytes", |p| {
                p.extra.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>() <= 180
            })
    }

    fn gen_body() -> impl Strategy<Value = GenBody> {
        (
            "[0-9A-Za-z'()+_,./:=?-]{0,69}[0-9A-Za-z]",
            any::<bool>(),
            0usize..=2,
            prop::collection::vec(gen_part(), 1..6),
            "[ \t]{0,3}",
            prop_oneof![
                Just(Vec::new()),
                Just(b"\r\n".to_vec()),
                prop::collection::vec(any::<u8>(), 0..16)
            ],
        )
            .prop_map(
                |(boundary, with_total, preamble, parts, close_padding, epilogue)| {
                    let complete = with_total.then_some(2_000_000);
                    GenBody { boundary, complete, preamble, parts, close_padding, epilogue }
                },
            )
    }

    /// Splits `input` at the given (sorted, deduplicated) cut points and feeds the pieces.
    fn parse_in_chunks(
        input: &[u8],
        boundary: &str,
        cuts: &[usize],
    ) -> Result<Vec<(Span, Vec<u8>)>, MultipartError> {
        let mut parser = MultipartParser::new(boundary)?;
        let mut out: Vec<(Span, Vec<u8>)> = Vec::new();
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        bounds.push(0);
        bounds.push(input.len());
        bounds.sort_unstable();
        bounds.dedup();
        for w in bounds.windows(2) {
            let mut chunk = &input[w[0]..w[1]];
            loop {
                let (used, event) = parser.next(chunk)?;
                chunk = &chunk[used..];
                match event {
                    None => break,
                    Some(Event::PartStart { span, .. }) => out.push((span, Vec::new())),
                    Some(Event::Body(b)) => {
                        out.last_mut().expect("body after start").1.extend_from_slice(b)
                    }
                    Some(_) => {}
                }
            }
        }
        parser.finish()?;
        Ok(out)
    }

    proptest! {
        #[test]
        fn generated_bodies_round_trip(g in gen_body(), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
            let input = serialize(&g);
            let parts = parse(&input, &g.boundary, g.parts.len()).map_err(|e| {
                TestCaseError::fail(format!("{e}: {:?}", String::from_utf8_lossy(&input)))
            })?;
            prop_assert_eq!(parts.len(), g.parts.len());
            for (got, want) in parts.iter().zip(&g.parts) {
                prop_assert_eq!(got.body, &want.data[..]);
                prop_assert_eq!(
                    got.content_range,
                    ContentRange::Satisfied {
                        first: want.first,
                        last: want.first + want.data.len() as u64 - 1,
                        complete: g.complete,
                    }
                );
            }
            let streamed = parse_in_chunks(&input, &g.boundary, &cuts).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let whole: Vec<(Span, Vec<u8>)> = parts.iter().map(|p| (p.span(), p.body.to_vec())).collect();
            prop_assert_eq!(streamed, whole);
            // Any order of the requested spans matches; merging two of them never does.
            let mut requested = spans(&parts);
            requested.reverse();
            prop_assert_eq!(check_parts_match_request(&parts, &requested), Ok(()));
            if requested.len() >= 2 {
                let (a, b) = (requested[0], requested[1]);
                let merged = Span::new(a.start.min(b.start), a.end.max(b.end));
                let mut got = requested[2..].to_vec();
                got.push(merged);
                prop_assert!(check_spans_match_request(&got, &requested).is_err());
            }
        }

        #[test]
        fn mutated_bodies_never_panic_and_keep_lengths(
            g in gen_body(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..4),
        ) {
            let mut input = serialize(&g);
            for (at, byte, op) in edits {
                let at = at % (input.len() + 1);
                match op {
                    0 if at < input.len() => input[at] = byte,
                    1 => input.insert(at, byte),
                    _ if at < input.len() => { input.remove(at); }
                    _ => {}
                }
            }
            if let Ok(parts) = parse(&input, &g.boundary, DEFAULT_MAX_PARTS) {
                for p in &parts {
                    prop_assert_eq!(p.body.len() as u64, p.span().len());
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            input in prop::collection::vec(prop_oneof![
                4 => any::<u8>(),
                1 => Just(b'\r'), 1 => Just(b'\n'), 1 => Just(b'-'), 1 => Just(b'B'),
            ], 0..400),
            cuts in prop::collection::vec(any::<usize>(), 0..4),
        ) {
            let whole = parse(&input, "B", 8);
            if let Ok(parts) = &whole {
                for p in parts {
                    prop_assert_eq!(p.body.len() as u64, p.span().len());
                }
            }
            // Same parts, or the same error (offsets included), however the body is chunked.
            let chunked = parse_in_chunks(&input, "B", &cuts);
            let whole = whole.map(|parts| {
                parts.iter().map(|p| (p.span(), p.body.to_vec())).collect::<Vec<_>>()
            });
            prop_assert_eq!(whole, chunked);
        }

        #[test]
        fn content_type_parsing_never_panics(s in "\\PC{0,80}") {
            if let Ok(b) = boundary_from_content_type(&s) {
                prop_assert!(MultipartParser::new(&b).is_ok());
            }
        }

        #[test]
        fn quoted_and_token_boundaries_round_trip(b in "[0-9A-Za-z'()+_,./:=?-]{0,69}[0-9A-Za-z]") {
            let quoted = format!("multipart/byteranges; boundary=\"{b}\"");
            prop_assert_eq!(boundary_from_content_type(&quoted), Ok(b.clone()));
            if b.bytes().all(is_tchar) {
                let token = format!("multipart/byteranges; boundary={b}");
                prop_assert_eq!(boundary_from_content_type(&token), Ok(b));
            }
        }
    }
}
