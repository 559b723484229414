//! The body of an accepted range response, handed out chunk by chunk as it arrives (never
//! buffered whole), with the idle timeout applied to each wait and the byte count checked against
//! the span so a short or long body can never pass for the requested bytes.

use std::time::Duration;

use bits_core::Span;
use bytes::Bytes;
use http::Version;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::debug;

use crate::error::FetchError;
use crate::transport_error::map_hyper_error;

/// A validated response body holding exactly the bytes of [`RangeBody::span`].
#[derive(Debug)]
pub struct RangeBody {
    body: Incoming,
    span: Span,
    received: u64,
    idle_timeout: Duration,
    version: Version,
    url: String,
    finished: bool,
}

impl RangeBody {
    pub(crate) fn new(
        body: Incoming,
        span: Span,
        idle_timeout: Duration,
        version: Version,
        url: String,
    ) -> RangeBody {
        RangeBody { body, span, received: 0, idle_timeout, version, url, finished: false }
    }

    /// The remote bytes this body carries, `[start, end)`.
    pub fn span(&self) -> Span {
        self.span
    }

    /// Bytes handed out so far; the next chunk starts at remote offset `span().start + received()`.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The HTTP version the response came over (HTTP/1.1 or HTTP/2).
    pub fn http_version(&self) -> Version {
        self.version
    }

    /// The next chunk of bytes, or `None` once the whole span has arrived. Errors if the server
    /// sends nothing for the idle timeout, the connection breaks, the body ends early
    /// (`ERROR_WINHTTP_CONNECTION_ERROR`) or runs past the span (`InvalidResponse`).
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        if self.finished {
            return Ok(None);
        }
        let expected = self.span.len();
        match next_data(&mut self.body, self.idle_timeout, &self.url).await {
            Frame::Idle => {
                self.finished = true;
                Err(FetchError::timeout(format!(
                    "no data from {} for {:?} after {} of {expected} bytes",
                    self.url, self.idle_timeout, self.received
                )))
            }
            Frame::End => {
                self.finished = true;
                if self.received != expected {
                    return Err(FetchError::transport(
                        bits_core::Code::ERROR_WINHTTP_CONNECTION_ERROR,
                        format!(
                            "body from {} ended after {} of {expected} bytes",
                            self.url, self.received
                        ),
                    ));
                }
                debug!(url = %self.url, span = %self.span, "range body complete");
                Ok(None)
            }
            Frame::Broken(mut err) => {
                self.finished = true;
                err.message =
                    format!("{} (after {} of {expected} bytes)", err.message, self.received);
                Err(err)
            }
            Frame::Data(data) => {
                let len = data.len() as u64;
                if len > expected - self.received {
                    self.finished = true;
                    return Err(FetchError::invalid_response(format!(
                        "body from {} is longer than the {expected} bytes of span {}",
                        self.url, self.span
                    )));
                }
                self.received += len;
                Ok(Some(data))
            }
        }
    }
}

/// What one wait for a response body's next bytes brought.
pub(crate) enum Frame {
    /// File bytes, never empty.
    Data(Bytes),
    /// The body ended.
    End,
    /// Nothing came for the idle timeout.
    Idle,
    /// The connection broke; the error is classified, its message names the URL.
    Broken(FetchError),
}

/// The next bytes of `body`, waited for at most `idle_timeout`. Trailers and empty frames carry
/// no file bytes, so they are skipped and do not restart the wait: a server that sends empty
/// HTTP/2 DATA frames and nothing else is idle. Both body readers (one span, multipart) count
/// only what can be written.
pub(crate) async fn next_data<B>(body: &mut B, idle_timeout: Duration, url: &str) -> Frame
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    let deadline = tokio::time::Instant::now() + idle_timeout;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Frame::Idle,
            Ok(None) => return Frame::End,
            Ok(Some(Err(err))) => return Frame::Broken(map_hyper_error(&err, url)),
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if !data.is_empty() => return Frame::Data(data),
                _ => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A body that sends an empty DATA frame at each tick of its interval, and nothing else.
    struct EmptyFrames(tokio::time::Interval);

    impl hyper::body::Body for EmptyFrames {
        type Data = Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
            self.0.poll_tick(cx).map(|_| Some(Ok(hyper::body::Frame::data(Bytes::new()))))
        }
    }

    /// Empty frames are not data: a server sending only them more often than the idle timeout
    /// cannot hold a transfer open forever without progress.
    #[tokio::test]
    async fn empty_frames_do_not_keep_a_body_alive() {
        let idle = Duration::from_millis(200);
        let mut body = EmptyFrames(tokio::time::interval(Duration::from_millis(20)));
        let next = next_data(&mut body, idle, "http://h/f");
        let frame = tokio::time::timeout(Duration::from_secs(5), next).await;
        assert!(matches!(frame, Ok(Frame::Idle)), "still waiting after 5 s of empty frames");
    }
}
