//! WatchJob: a server stream of one job's notifications (spec §7). The events owed already
//! (JobTransferred or JobError for a job in that state, spec §7.2) go first, then live ones, as
//! the manager's [`Subscription`] filters them by notify flags. The stream ends when the job is
//! completed or cancelled, when the daemon shuts down, or when the client goes away.
//!
//! Each stream holds a task, a buffer and a subscription (~10 KB: 20,000 of them took 203 MB), so
//! they are capped per uid and in all ([`Quota`]); a WatchJob over a cap is refused with
//! `RPC_S_SERVER_TOO_BUSY` naming the cap.

use std::pin::Pin;

use bits_core::{BitsError, Code};
use bits_manager::{Caller, JobEvent, Manager};
use bits_proto::convert::{self, JobEventInfo};
use bits_proto::status::to_status;
use bits_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use crate::quota::Quota;

pub type WatchJobStream = Pin<Box<dyn Stream<Item = Result<v1::JobEvent, Status>> + Send>>;

/// Events buffered per watcher; a watcher that reads slower lags on the manager's bus and gets
/// a snapshot instead of every intermediate event.
const BUFFER: usize = 64;

pub async fn watch_job(
    manager: &Manager,
    watches: &Quota,
    caller: Caller,
    request: v1::WatchJobRequest,
) -> Result<Response<WatchJobStream>, Status> {
    let id = convert::parse_job_id(&request.job_id).map_err(|e| to_status(&e))?;
    // Held by the stream's task: given back when the stream ends, however it ends.
    let slot = watches.take(caller.uid, caller.is_admin()).map_err(|over| {
        to_status(&BitsError::new(Code::RPC_S_SERVER_TOO_BUSY, format!("WatchJob refused: {over}")))
    })?;
    let (replay, mut subscription) =
        manager.subscribe(caller, id, request.notify_flags).map_err(|e| to_status(&e))?;
    tracing::debug!(job = %id, flags = ?request.notify_flags, "watcher registered");
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let _slot = slot;
        for event in replay {
            if tx.send(Ok(event_to_wire(event))).await.is_err() {
                return;
            }
        }
        loop {
            let next = tokio::select! {
                _ = tx.closed() => None,
                next = subscription.recv() => next,
            };
            let Some(event) = next else { break };
            if tx.send(Ok(event_to_wire(event))).await.is_err() {
                break;
            }
        }
        tracing::debug!(job = %id, "watcher done");
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

/// Moves the event's kind into the wire form's input rather than cloning its progress, error or
/// ranges: every event is sent once and then dropped.
fn event_to_wire(event: JobEvent) -> v1::JobEvent {
    let JobEvent { job, time, kind } = event;
    convert::job_event_to_wire(&JobEventInfo { job, time, event: kind })
}
