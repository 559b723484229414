//! The body of every answer: the plan's bytes in frames of the server's chunk size, paced by the
//! server-wide throttle, counted in the request's log entry as hyper takes them, and ended the
//! way the plan says (complete, or cut by a reset, a close, a stall or an early clean end).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::answer::{Ending, Plan};
use super::conn::ConnCtl;
use super::{CutEnd, FLUSH_PAUSE, Record, Shared};

/// A token bucket with no burst, shared by all responses: each chunk books the next free slot on
/// the server's timeline, so N parallel connections share one rate.
pub(super) struct Throttle {
    /// Bytes per second; 0 means unthrottled.
    rate: AtomicU64,
    next_free: Mutex<Instant>,
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle { rate: AtomicU64::new(0), next_free: Mutex::new(Instant::now()) }
    }
}

impl Throttle {
    pub(super) fn set(&self, bytes_per_sec: Option<u64>) {
        self.rate.store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
        *self.next_free.lock().unwrap() = Instant::now();
    }

    /// When a chunk of `len` bytes may be sent, or `None` if unthrottled.
    fn reserve(&self, len: usize) -> Option<Instant> {
        let rate = self.rate.load(Ordering::SeqCst);
        if rate == 0 {
            return None;
        }
        let cost = Duration::from_secs_f64(len as f64 / rate as f64);
        let mut next = self.next_free.lock().unwrap();
        let start = (*next).max(Instant::now());
        *next = start + cost;
        Some(start + cost)
    }
}

/// A response body. hyper stops polling once the announced length is out, so a chunk counts as
/// sent when it is handed over; what hyper buffers beyond the socket is bounded by one chunk,
/// far less than what the kernel's socket buffers hold anyway when a client dies.
pub(crate) struct Reply {
    data: Bytes,
    pos: usize,
    limit: usize,
    ending: Ending,
    announced: Option<u64>,
    chunk: usize,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The flush pause before a cut's ending is over.
    paused: bool,
    shared: Arc<Shared>,
    ctl: Arc<ConnCtl>,
    record: Arc<Record>,
}

impl Reply {
    /// The body of `plan` (nothing for a `HEAD`).
    pub(super) fn new(
        plan: Plan,
        head: bool,
        chunk: usize,
        shared: Arc<Shared>,
        ctl: Arc<ConnCtl>,
        record: Arc<Record>,
    ) -> Reply {
        let (data, ending) =
            if head { (Bytes::new(), Ending::Complete) } else { (plan.data, plan.ending) };
        let limit = (plan.limit as usize).min(data.len());
        if data.is_empty() {
            record.finished.store(true, Ordering::SeqCst);
        }
        Reply {
            data,
            pos: 0,
            limit,
            ending,
            announced: plan.content_length,
            chunk,
            sleep: None,
            paused: false,
            shared,
            ctl,
            record,
        }
    }

    /// Sleeps until `deadline` (kept across polls).
    fn wait(&mut self, cx: &mut Context<'_>, deadline: impl FnOnce() -> Instant) -> Poll<()> {
        let sleep =
            self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline())));
        ready!(sleep.as_mut().poll(cx));
        self.sleep = None;
        Poll::Ready(())
    }
}

impl Body for Reply {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.pos < this.limit {
            let len = this.chunk.min(this.limit - this.pos);
            if this.sleep.is_none()
                && let Some(deadline) = this.shared.throttle.reserve(len)
            {
                this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline)));
            }
            if this.sleep.is_some() {
                ready!(this.wait(cx, Instant::now));
            }
            let chunk = this.data.slice(this.pos..this.pos + len);
            this.pos += len;
            this.record.sent.fetch_add(len as u64, Ordering::SeqCst);
            if this.pos >= this.data.len() {
                this.record.finished.store(true, Ordering::SeqCst);
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let end = match this.ending {
            Ending::Complete | Ending::Cut(CutEnd::End) => return Poll::Ready(None),
            Ending::Cut(end) => end,
        };
        // Let hyper flush what was sent, then apply the ending.
        if !this.paused {
            ready!(this.wait(cx, || Instant::now() + FLUSH_PAUSE));
            this.paused = true;
        }
        match end {
            CutEnd::Reset => {
                this.ctl.reset();
                Poll::Ready(Some(Err(io::Error::from(io::ErrorKind::ConnectionReset))))
            }
            CutEnd::Stall(stall) => {
                ready!(this.wait(cx, || Instant::now() + stall));
                this.ctl.reset();
                Poll::Ready(Some(Err(io::Error::other("stall over: closing"))))
            }
            CutEnd::Close | CutEnd::End => {
                Poll::Ready(Some(Err(io::Error::other("short body: closing"))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.limit && matches!(self.ending, Ending::Complete | Ending::Cut(CutEnd::End))
    }

    fn size_hint(&self) -> SizeHint {
        match self.announced {
            Some(len) => SizeHint::with_exact(len.saturating_sub(self.pos as u64)),
            None => SizeHint::default(),
        }
    }
}
