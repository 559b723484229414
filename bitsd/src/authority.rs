//! Lets every standard gRPC client in over the Unix socket, whatever it sends as `:authority`.
//!
//! gRPC's C core (Python, C++, Ruby, PHP, C#) since 1.57, grpc-java and older grpcurl send the
//! socket's path (raw or percent-encoded) or an empty string as the `:authority` of a call on a
//! Unix socket. The h2 server under tonic parses it as a URI authority and resets the stream
//! (PROTOCOL_ERROR) when that fails, before hyper or tonic see the request, with no option to
//! relax it (hyperium/h2#487 has been open since 2020). An authority means nothing on a local
//! socket, so [`AuthorityFix`] sits between the socket and h2 and rewrites it.
//!
//! It follows the HTTP/2 frames the client sends and decodes the connection's first header
//! block with its own HPACK decoder. A client sends the same authority on every call of a
//! channel, so the first block decides for the connection:
//! - an authority h2 accepts (or none): everything passes untouched from then on, at the cost of
//!   nothing but a pointer check per read (bitsctl and every tonic client are such clients);
//! - one h2 would refuse: this block and every later one is decoded (the decoder tracks the
//!   client's dynamic table) and re-encoded with `:authority: localhost`, each field a literal
//!   that is not indexed, since h2's decoder table no longer matches the client's and literals
//!   never refer to it.
//!
//! Frames other than HEADERS and CONTINUATION always pass as they are.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame every HTTP/2 peer must accept (SETTINGS_MAX_FRAME_SIZE's initial value),
/// so a re-encoded block is cut into frames of at most this size whatever h2 advertised.
const MAX_FRAME: usize = 16_384;
/// A header block (its frames' payloads together) larger than this closes the connection. h2
/// refuses header lists over 16 KiB anyway; this only bounds what is buffered here.
const MAX_BLOCK: usize = 64 * 1024;
/// Decoded header bytes a block may expand to before it is passed on raw (or, once rewriting,
/// refused): HPACK can name a 4 KiB table entry in one byte.
const MAX_DECODED: usize = 64 * 1024;
/// The dynamic table size h2 advertises (HPACK's default; hyper does not change it).
const TABLE_SIZE: usize = 4096;
/// What replaces an authority h2 would refuse.
const LOCALHOST: &[u8] = b"localhost";

/// A connection's incoming bytes with every `:authority` h2 would refuse replaced (see the
/// module's documentation); writes pass straight through.
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    /// Rewritten bytes not yet handed to h2.
    output: Vec<u8>,
    /// Where the unread part of `output` starts.
    taken: usize,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix { inner, rewriter: Rewriter::new(), output: Vec::new(), taken: 0, eof: false }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.taken);
                buf.put_slice(&this.output[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.output.len() {
                    this.output.clear();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.passes_all() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.rewriter.feed(read.filled(), &mut this.output)?;
        }
    }
}

write_through!(AuthorityFix, inner);

/// Where the byte stream stands.
enum State {
    /// Within the connection preface, this many bytes of it seen.
    Preface(usize),
    /// Everything passes untouched: not HTTP/2 (no preface; h2 refuses it), or the first header
    /// block's authority was one h2 takes.
    Raw,
    /// Collecting a frame header.
    FrameHeader,
    /// Passing on this many more payload bytes of a frame that is not part of a header block.
    Payload(usize),
    /// Collecting the payload of a HEADERS or CONTINUATION frame (its 9-byte header kept).
    HeaderFrame { header: [u8; FRAME_HEADER_LEN], len: usize },
}

/// A header block being collected: from its HEADERS frame to the frame with END_HEADERS.
struct Block {
    stream: u32,
    end_stream: bool,
    /// The HEADERS frame's priority fields, kept when the block is re-encoded.
    priority: Option<[u8; 5]>,
    /// The frames' header-block fragments, without padding.
    fragment: Vec<u8>,
    /// The frames exactly as they came, passed on when nothing needs rewriting.
    raw: Vec<u8>,
}

/// The byte-level state machine, kept apart from the IO so it can be tested with plain bytes.
struct Rewriter {
    state: State,
    /// Bytes of the frame header or frame payload being collected.
    pending: Vec<u8>,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    /// The first block's authority was refused: every block is re-encoded (h2's HPACK table
    /// no longer matches the client's after the first).
    rewriting: bool,
}

impl Rewriter {
    fn new() -> Rewriter {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Rewriter {
            state: State::Preface(0),
            pending: Vec::new(),
            block: None,
            decoder,
            rewriting: false,
        }
    }

    /// Whether every byte from now on passes untouched.
    fn passes_all(&self) -> bool {
        matches!(self.state, State::Raw)
    }

    /// Takes the next bytes from the client and appends what h2 is to see to `out`. An error
    /// closes the connection (the client broke HTTP/2 in a way h2 would also close it for).
    fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        while !data.is_empty() {
            match self.state {
                State::Raw => {
                    out.extend_from_slice(data);
                    return Ok(());
                }
                State::Preface(seen) => {
                    let n = data.len().min(PREFACE.len() - seen);
                    if data[..n] != PREFACE[seen..seen + n] {
                        self.state = State::Raw;
                        continue;
                    }
                    out.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    self.state = if seen + n == PREFACE.len() {
                        State::FrameHeader
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::Payload(left) => {
                    let n = data.len().min(left);
                    out.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    self.state =
                        if n == left { State::FrameHeader } else { State::Payload(left - n) };
                }
                State::FrameHeader => {
                    data = self.collect(data, FRAME_HEADER_LEN);
                    if self.pending.len() == FRAME_HEADER_LEN {
                        let mut header = [0u8; FRAME_HEADER_LEN];
                        header.copy_from_slice(&self.pending);
                        self.pending.clear();
                        self.frame_header(header, out)?;
                    }
                }
                State::HeaderFrame { header, len } => {
                    data = self.collect(data, len);
                    if self.pending.len() == len {
                        let payload = std::mem::take(&mut self.pending);
                        self.state = State::FrameHeader;
                        self.header_frame(header, payload, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves bytes from `data` into `pending` until it holds `want`; returns the rest.
    fn collect<'d>(&mut self, data: &'d [u8], want: usize) -> &'d [u8] {
        let n = data.len().min(want - self.pending.len());
        self.pending.extend_from_slice(&data[..n]);
        &data[n..]
    }

    fn frame_header(
        &mut self,
        header: [u8; FRAME_HEADER_LEN],
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let kind = header[3];
        let in_block = self.block.is_some();
        if kind == HEADERS || (kind == CONTINUATION && in_block) {
            let collected = self.block.as_ref().map_or(0, |b| b.raw.len());
            if collected + FRAME_HEADER_LEN + len > MAX_BLOCK {
                return Err(refused(format!("a header block over {MAX_BLOCK} bytes")));
            }
            self.state = State::HeaderFrame { header, len };
            if len == 0 {
                self.state = State::FrameHeader;
                self.header_frame(header, Vec::new(), out)?;
            }
            return Ok(());
        }
        if in_block {
            return Err(refused("a frame inside a header block".into()));
        }
        out.extend_from_slice(&header);
        self.state = if len == 0 { State::FrameHeader } else { State::Payload(len) };
        Ok(())
    }

    fn header_frame(
        &mut self,
        header: [u8; FRAME_HEADER_LEN],
        payload: Vec<u8>,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut block = match self.block.take() {
            Some(block) => {
                if kind != CONTINUATION || stream != block.stream {
                    return Err(refused("a header block interrupted".into()));
                }
                block
            }
            None => Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority: None,
                fragment: Vec::new(),
                raw: Vec::new(),
            },
        };
        block.raw.extend_from_slice(&header);
        block.raw.extend_from_slice(&payload);
        if kind == HEADERS {
            let mut body = payload.as_slice();
            let mut padding = 0;
            if flags & PADDED != 0 {
                let Some((&pad, rest)) = body.split_first() else {
                    return Err(refused("a padded HEADERS frame without its pad length".into()));
                };
                padding = usize::from(pad);
                body = rest;
            }
            if flags & PRIORITY != 0 {
                let Some((fields, rest)) = body.split_first_chunk::<5>() else {
                    return Err(refused("a HEADERS frame too short for its priority".into()));
                };
                block.priority = Some(*fields);
                body = rest;
            }
            if padding > body.len() {
                return Err(refused("a HEADERS frame with more padding than payload".into()));
            }
            block.fragment.extend_from_slice(&body[..body.len() - padding]);
        } else {
            block.fragment.extend_from_slice(&payload);
        }
        if flags & END_HEADERS == 0 {
            self.block = Some(block);
            return Ok(());
        }
        self.finish(block, out)
    }

    /// A complete header block: passed on as it came, or re-encoded with a usable authority.
    fn finish(&mut self, block: Block, out: &mut Vec<u8>) -> io::Result<()> {
        let mut fields = Vec::new();
        let mut decoded = 0usize;
        let result = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            decoded = decoded.saturating_add(name.len() + value.len() + 32);
            if decoded <= MAX_DECODED {
                fields.push((name.into_owned(), value.into_owned()));
            }
        });
        let refused_authority =
            fields.iter().any(|(name, value)| name == b":authority" && !acceptable(value));
        match result {
            Ok(()) if decoded <= MAX_DECODED && (self.rewriting || refused_authority) => {}
            // The first block, and h2 takes it as it is (or refuses it for its own reasons,
            // which end the connection anyway): so will it take the connection's later ones.
            _ if !self.rewriting => {
                out.extend_from_slice(&block.raw);
                self.state = State::Raw;
                return Ok(());
            }
            Ok(()) => return Err(refused(format!("a header list over {MAX_DECODED} bytes"))),
            Err(e) => return Err(refused(format!("a header block HPACK cannot decode: {e}"))),
        }
        if !self.rewriting {
            tracing::debug!(
                stream = block.stream,
                "replacing an :authority h2 would refuse; re-encoding this connection's header blocks"
            );
            self.rewriting = true;
        }
        let mut encoded = Vec::with_capacity(decoded);
        for (name, value) in &fields {
            let value = if name == b":authority" && !acceptable(value) { LOCALHOST } else { value };
            // A literal field, not indexed, with a literal name.
            encoded.push(0);
            encode_string(name, &mut encoded);
            encode_string(value, &mut encoded);
        }
        write_block(&block, &encoded, out);
        Ok(())
    }
}

/// Whether h2 takes `value` as an `:authority` (the same parse it does).
fn acceptable(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// An HPACK string literal, not Huffman-coded.
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_integer(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

/// An HPACK integer with a `prefix`-bit prefix, the byte's other bits set to `high`.
fn encode_integer(mut value: usize, prefix: u8, high: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if value < max {
        // Fits the prefix: `value` < 2^prefix ≤ 128.
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// `fragment` as a HEADERS frame (with `block`'s stream, END_STREAM and priority) and as many
/// CONTINUATION frames as it takes, no frame over [`MAX_FRAME`].
fn write_block(block: &Block, fragment: &[u8], out: &mut Vec<u8>) {
    let priority_len = if block.priority.is_some() { 5 } else { 0 };
    let mut rest = fragment;
    let mut first = true;
    loop {
        let room = if first { MAX_FRAME - priority_len } else { MAX_FRAME };
        let (piece, after) = rest.split_at(rest.len().min(room));
        let mut flags = if after.is_empty() { END_HEADERS } else { 0 };
        let kind = if first { HEADERS } else { CONTINUATION };
        let mut len = piece.len();
        if first {
            if block.end_stream {
                flags |= END_STREAM;
            }
            if block.priority.is_some() {
                flags |= PRIORITY;
                len += priority_len;
            }
        }
        // `len` ≤ MAX_FRAME, which fits 24 bits.
        out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
        out.extend_from_slice(&block.stream.to_be_bytes());
        if first && let Some(priority) = block.priority {
            out.extend_from_slice(&priority);
        }
        out.extend_from_slice(piece);
        rest = after;
        first = false;
        if rest.is_empty() {
            return;
        }
    }
}

fn refused(why: String) -> io::Error {
    tracing::debug!("connection closed: {why}");
    io::Error::new(io::ErrorKind::InvalidData, why)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// One header block as a client encodes it: every field literal with incremental indexing
    /// (as gRPC's C core does for a first request), the value Huffman-coded when `huffman`.
    fn client_block(encoder: &mut loona_hpack::Encoder<'_>, authority: &[u8]) -> Vec<u8> {
        encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/bits.v1.Bits/ListJobs"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ])
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    /// What h2 would see: the output's frames, with the header blocks decoded by a fresh
    /// decoder that saw only the output (as h2's does).
    fn h2_view(bytes: &[u8]) -> Vec<(u8, u32, Fields)> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut rest = &bytes[PREFACE.len()..];
        let mut decoder = loona_hpack::Decoder::new();
        let mut frames = Vec::new();
        let mut block = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            assert!(len <= MAX_FRAME);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes(rest[5..9].try_into().unwrap());
            let mut payload = &rest[9..9 + len];
            rest = &rest[9 + len..];
            if kind == HEADERS || kind == CONTINUATION {
                if flags & PRIORITY != 0 {
                    payload = &payload[5..];
                }
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    frames.push((HEADERS, stream, decoder.decode(&block).unwrap()));
                    block.clear();
                }
            } else {
                frames.push((kind, stream, vec![(b"payload".to_vec(), payload.to_vec())]));
            }
        }
        frames
    }

    fn authority_of(fields: &[(Vec<u8>, Vec<u8>)]) -> &[u8] {
        &fields.iter().find(|(n, _)| n == b":authority").unwrap().1
    }

    /// Feeds `input` to a rewriter in pieces of `step` bytes.
    fn rewrite(input: &[u8], step: usize) -> io::Result<Vec<u8>> {
        let mut rewriter = Rewriter::new();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            rewriter.feed(piece, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn h2_refuses_what_clients_send_on_a_unix_socket() {
        for refused in [&b""[..], b"/run/bitsd/bitsd.sock", b"%2Frun%2Fbitsd%2Fbitsd.sock"] {
            assert!(!acceptable(refused), "{}", String::from_utf8_lossy(refused));
        }
        for fine in [&b"localhost"[..], b"localhost:50051", b"127.0.0.1:1", b"[::1]:80"] {
            assert!(acceptable(fine));
        }
    }

    #[test]
    fn a_first_authority_h2_takes_lets_the_whole_connection_pass_untouched() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(HEADERS, END_HEADERS, 1, &client_block(&mut encoder, b"localhost")));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        // A client that changes its authority mid-connection is left to h2 (no known one does).
        let later = client_block(&mut encoder, b"/run/bitsd/bitsd.sock");
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &later));
        for step in [1, 7, 4096] {
            assert_eq!(rewrite(&input, step).unwrap(), input, "in pieces of {step}");
        }
        let mut rewriter = Rewriter::new();
        let mut out = Vec::new();
        rewriter.feed(&input[..PREFACE.len() + 9], &mut out).unwrap();
        assert!(!rewriter.passes_all());
        rewriter.feed(&input[PREFACE.len() + 9..], &mut out).unwrap();
        assert!(rewriter.passes_all(), "after the first block, reads bypass the rewriter");
    }

    #[test]
    fn a_refused_first_authority_is_replaced_in_every_block_of_the_connection() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        // As gRPC's C core does: the socket's path, indexed by the client (and by h2) ...
        let mut first = vec![0x83, 0x86];
        for (index, value) in [(4, &b"/bits.v1.Bits/ListJobs"[..]), (1, b"/run/bitsd/bitsd.sock")] {
            first.push(0x40 | index);
            encode_string(value, &mut first);
        }
        first.push(0x40 | 31);
        encode_string(b"application/grpc", &mut first);
        first.push(0x40);
        encode_string(b"te", &mut first);
        encode_string(b"trailers", &mut first);
        input.extend(frame(HEADERS, END_HEADERS, 1, &first));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        // ... and named by its index next time (te 62, content-type 63, authority 64, path 65),
        // cut in two by a CONTINUATION, padded and with priority fields.
        let second = [0x83, 0x86, 0x80 | 65, 0x80 | 64, 0x80 | 63, 0x80 | 62];
        let mut padded = vec![3];
        padded.extend_from_slice(&[0, 0, 0, 0, 15]);
        padded.extend_from_slice(&second[..4]);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 3, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS | END_STREAM, 3, &second[4..]));
        // An authority h2 takes, indexed (moving the others one up), still re-encoded.
        let mut third = vec![0x83, 0x86, 0x41];
        encode_string(b"localhost", &mut third);
        third.extend_from_slice(&[0x80 | 66, 0x80 | 64, 0x80 | 63]);
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &third));
        for step in [1, 7, 4096] {
            let out = rewrite(&input, step).unwrap();
            let frames = h2_view(&out);
            let headers: Vec<_> = frames.iter().filter(|(kind, ..)| *kind == HEADERS).collect();
            assert_eq!(headers.iter().map(|h| h.1).collect::<Vec<_>>(), [1, 3, 5]);
            for (_, stream, fields) in headers {
                assert_eq!(authority_of(fields), b"localhost", "stream {stream}");
                let path = fields.iter().find(|(n, _)| n == b":path").unwrap();
                assert_eq!(path.1, b"/bits.v1.Bits/ListJobs");
                assert!(fields.contains(&(b"te".to_vec(), b"trailers".to_vec())));
                assert_eq!(fields.len(), 6);
            }
            let data = frames.iter().find(|(kind, ..)| *kind == 0x0).unwrap();
            assert_eq!(data.2[0].1, b"\0\0\0\0\0");
        }
    }

    #[test]
    fn a_large_block_is_cut_into_frames_h2_accepts() {
        let mut encoder = loona_hpack::Encoder::new();
        let big = vec![b'x'; 30_000];
        let block = encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b""),
            (b"x-big", &big[..]),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &block[..10_000]));
        input.extend(frame(CONTINUATION, 0, 1, &block[10_000..20_000]));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[20_000..]));
        let frames = h2_view(&rewrite(&input, 1000).unwrap());
        assert_eq!(frames.len(), 1);
        assert_eq!(authority_of(&frames[0].2), b"localhost");
        assert_eq!(frames[0].2[2].1, big);
    }

    #[test]
    fn not_http2_passes_untouched_and_broken_framing_closes_the_connection() {
        let input = b"GET / HTTP/1.1\r\nHost: /x.sock\r\n\r\n";
        assert_eq!(rewrite(input, 3).unwrap(), input);

        let mut encoder = loona_hpack::Encoder::new();
        let block = client_block(&mut encoder, b"");
        let mut interleaved = PREFACE.to_vec();
        interleaved.extend(frame(HEADERS, 0, 1, &block[..5]));
        interleaved.extend(frame(0x0, 0, 1, b"data"));
        let e = rewrite(&interleaved, 100).unwrap_err();
        assert!(e.to_string().contains("a frame inside a header block"), "{e}");

        let mut huge = PREFACE.to_vec();
        huge.extend(frame(HEADERS, 0, 1, &vec![0; MAX_BLOCK]));
        let e = rewrite(&huge, 100_000).unwrap_err();
        assert!(e.to_string().contains("a header block over"), "{e}");
    }

    #[test]
    fn once_rewriting_a_block_that_expands_past_the_bound_closes_the_connection() {
        let mut input = PREFACE.to_vec();
        let first = client_block(&mut loona_hpack::Encoder::new(), b"");
        input.extend(frame(HEADERS, END_HEADERS, 1, &first));
        // One 4000-byte entry into the table, then named by its index (62) twenty times more:
        // 4 KiB sent, over 80 KiB decoded.
        let mut second = vec![0x40];
        encode_string(b"x-big", &mut second);
        encode_string(&[b'x'; 4000], &mut second);
        second.extend_from_slice(&[0x80 | 62; 20]);
        input.extend(frame(HEADERS, END_HEADERS, 3, &second));
        let e = rewrite(&input, 4096).unwrap_err();
        assert!(e.to_string().contains("a header list over"), "{e}");
    }

    proptest::proptest! {
        /// Whatever a client sends, the rewriter returns (an error at worst) and never panics,
        /// whether the hostile blocks come first (and the connection turns raw) or after a
        /// refused authority (and each is decoded and re-encoded).
        #[test]
        fn hostile_bytes_never_panic(
            rewriting in proptest::bool::ANY,
            blocks in proptest::collection::vec(proptest::collection::vec(0u8.., 0..64), 1..8),
        ) {
            let mut input = PREFACE.to_vec();
            if rewriting {
                let first = client_block(&mut loona_hpack::Encoder::new(), b"");
                input.extend(frame(HEADERS, END_HEADERS, 1, &first));
            }
            for (i, block) in blocks.iter().enumerate() {
                let flags = if i % 2 == 0 { END_HEADERS } else { PADDED | END_HEADERS };
                input.extend(frame(HEADERS, flags, 3 + 2 * i as u32, block));
            }
            let _ = rewrite(&input, 5);
        }
    }
}
