//! A response body a test server writes from a task, piece by piece: the way to send part of a
//! body and then fail, stall or go on, which a body built in one piece cannot do.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Frame;
use tokio::sync::mpsc;

/// A body fed from a channel, of unknown length (so HTTP/1.1 uses chunked framing unless the
/// handler sets Content-Length). An `Err` sent on the channel breaks the connection.
pub struct ChannelBody(mpsc::Receiver<Result<Bytes, io::Error>>);

impl ChannelBody {
    /// The body and the sender that feeds it (`capacity` pieces may wait unsent).
    pub fn new(capacity: usize) -> (mpsc::Sender<Result<Bytes, io::Error>>, ChannelBody) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, ChannelBody(rx))
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}
