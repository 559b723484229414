//! The thread that runs the job store's flushes (and the deletion of a finished job, which ends
//! in one).
//!
//! Why one long-lived thread rather than tokio's blocking pool: with sled 0.34, flushes issued
//! from the blocking pool's ever-changing threads leave memory behind. The log buffers each
//! flush seals are freed later, through per-thread garbage lists, and threads of a pool that come
//! and go do not get them freed. Measured with a standalone program (sled 0.34.7, the daemon's
//! cache settings, 40 jobs × 1,000 keys inserted three times from 16 tasks, a flush after every
//! insert, then deleted): RSS 23 → 85 MiB with the flushes on `spawn_blocking`, flat at
//! 8–10 MiB with them on one thread. In the daemon it showed as ~5 MiB more RSS per job of
//! 1,000 small files, without end.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use bits_core::{BitsError, Code};
use bits_store::{Store, StoreError};
use tokio::sync::oneshot;

use crate::errors::store_error;
use crate::stats::FlushTimes;

/// Store work for the flusher thread, answering on its own channel.
type Work = Box<dyn FnOnce(&dyn Store) + Send>;

/// Sends store work to the flusher thread; the thread ends when this is dropped.
pub(crate) struct Flusher {
    requests: mpsc::Sender<Work>,
    /// How long the flushes took (the store's own time, not the wait for the thread).
    times: Arc<FlushTimes>,
}

impl Flusher {
    pub(crate) fn start(store: Arc<dyn Store>, times: Arc<FlushTimes>) -> std::io::Result<Flusher> {
        let (requests, incoming) = mpsc::channel::<Work>();
        std::thread::Builder::new().name("bitsd-store-flush".into()).spawn(move || {
            for work in incoming {
                work(store.as_ref());
            }
        })?;
        Ok(Flusher { requests, times })
    }

    /// One store flush, on the flusher thread.
    pub(crate) async fn flush(&self) -> Result<(), BitsError> {
        let times = Arc::clone(&self.times);
        self.run(move |store| {
            let started = Instant::now();
            let flushed = store.flush();
            times.record(started.elapsed(), flushed.is_ok());
            flushed
        })
        .await
    }

    /// Store work that ends in a flush (deleting a job), on the flusher thread.
    pub(crate) async fn run(
        &self,
        work: impl FnOnce(&dyn Store) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), BitsError> {
        let (reply, answer) = oneshot::channel();
        let gone = || BitsError::new(Code::E_FAIL, "the store's flusher thread is gone");
        let work: Work = Box::new(move |store| {
            let _ = reply.send(work(store).map_err(store_error));
        });
        self.requests.send(work).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed call is a failed test

    use super::*;
    use crate::testing::Watched;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_flush_runs_on_the_one_flusher_thread_and_reports_failures() {
        let store = Arc::new(Watched::default());
        let times = Arc::new(FlushTimes::default());
        let flusher = Flusher::start(store.clone(), Arc::clone(&times)).unwrap();
        let flushes = (0..8).map(|_| flusher.flush());
        for result in futures::future::join_all(flushes).await {
            result.unwrap();
        }
        store.fail_flushes(true);
        let error = flusher.flush().await.unwrap_err();
        assert_eq!(error.code, Code::BG_E_DATABASE_CORRUPT);
        assert!(error.message.contains("disk on fire"), "{}", error.message);
        let threads = store.flush_threads();
        assert_eq!(threads.len(), 9);
        // Each flush was timed, the failed one too.
        let timed = times.snapshot();
        assert_eq!((timed.count, timed.failed), (9, 1));
        assert!(threads.iter().all(|t| t.as_deref() == Some("bitsd-store-flush")), "{threads:?}");
    }
}
