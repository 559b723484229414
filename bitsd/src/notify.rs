//! Telling systemd how the daemon is doing (sd_notify(3)), for `Type=notify` units.
//!
//! Why: with `Type=notify` systemd considers bitsd started only when it says `READY=1`, so units
//! ordered after it (and `systemctl start`, which waits) see a socket that already accepts
//! connections rather than racing the bind. The `STATUS=` line is what `systemctl status bitsd`
//! shows under the unit, so an operator sees at a glance what the queue is doing without a client.
//! `STOPPING=1` tells systemd the stop it asked for is under way (transfers are persisting their
//! progress), and `WATCHDOG=1`, when the unit sets `WatchdogSec=`, lets systemd restart a daemon
//! whose data-path runtime or job table stopped making progress.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every function here does nothing. Notifying is never
//! fatal: a lost datagram only leaves systemd with an older status.

use std::time::Duration;

use bits_manager::{Manager, Summary};
use sd_notify::NotifyState;

/// How often the status line is recomputed; it is sent only when it changed.
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// The environment variable systemd passes the notification socket in.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The task that keeps the status line current (and pings the watchdog); hand it to
/// [`StatusUpdates::stopping`] so that the last word systemd hears is `STOPPING=1`.
pub struct StatusUpdates {
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Says `READY=1` with the first status line and starts keeping the status current. Call it once
/// the socket is bound (connections queue from then on) and the manager has started: from this
/// moment clients may connect. Must run inside the Tokio runtime the updates should live on.
pub fn ready(manager: &Manager) -> StatusUpdates {
    if std::env::var_os(NOTIFY_SOCKET).is_none() {
        return StatusUpdates { task: None };
    }
    let mut last = status_line(&manager.summary());
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&last)]) {
        tracing::warn!(error = %e, "cannot tell systemd that bitsd is ready");
    }
    // A zero WATCHDOG_USEC would make a busy loop; systemd never sends one, but be safe.
    let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
    // systemd's advice is to ping at half the watchdog interval.
    let tick = watchdog.map_or(STATUS_INTERVAL, |w| (w / 2).min(STATUS_INTERVAL));
    if let Some(w) = watchdog {
        tracing::info!(interval = ?w, "systemd watchdog enabled");
    }
    let manager = manager.clone();
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate; READY already carried this status
        let mut warned = false;
        loop {
            ticks.tick().await;
            // Reading the summary takes the job table lock, so a wedged table also stops the
            // watchdog pings — which is what the watchdog is for.
            let status = status_line(&manager.summary());
            let changed = status != last;
            let mut states = Vec::with_capacity(2);
            if watchdog.is_some() {
                states.push(NotifyState::Watchdog);
            }
            if changed {
                states.push(NotifyState::Status(&status));
            }
            if states.is_empty() {
                continue;
            }
            match sd_notify::notify(&states) {
                Ok(()) => {}
                // Warn once, then quietly: the same failure every two seconds helps nobody.
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "cannot send systemd a status update");
                }
                Err(e) => tracing::debug!(error = %e, "cannot send systemd a status update"),
            }
            drop(states);
            if changed {
                last = status;
            }
        }
    });
    StatusUpdates { task: Some(task) }
}

impl StatusUpdates {
    /// Stops the status updates and says `STOPPING=1`: shutdown has begun. Waits for the update
    /// task to be gone first, so no stale status can follow STOPPING.
    pub async fn stopping(self) {
        let Some(task) = self.task else { return };
        task.abort();
        // Resolves (with a "cancelled" error) once the task is dropped, or at once if it ended.
        let _ = task.await;
        let states = [NotifyState::Stopping, NotifyState::Status("stopping: persisting progress")];
        if let Err(e) = sd_notify::notify(&states) {
            tracing::warn!(error = %e, "cannot tell systemd that bitsd is stopping");
        }
    }
}

/// The line `systemctl status` shows, e.g. `7 jobs: 3 transferring, 2 queued, 1 in error` (the
/// rest are suspended, or transferred and waiting for Complete), or `idle, 0 jobs`. The three
/// counts are always there, so the line keeps its shape as the queue changes.
pub fn status_line(summary: &Summary) -> String {
    if summary.jobs == 0 {
        return "idle, 0 jobs".to_string();
    }
    format!(
        "{} {}: {} transferring, {} queued, {} in error",
        summary.jobs,
        if summary.jobs == 1 { "job" } else { "jobs" },
        summary.transferring,
        summary.queued,
        summary.in_error
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(jobs: usize, transferring: usize, queued: usize, in_error: usize) -> Summary {
        Summary { jobs, transferring, queued, in_error }
    }

    #[test]
    fn an_empty_queue_is_idle() {
        assert_eq!(status_line(&summary(0, 0, 0, 0)), "idle, 0 jobs");
    }

    #[test]
    fn every_count_is_shown_in_its_place() {
        assert_eq!(
            status_line(&summary(7, 3, 2, 1)),
            "7 jobs: 3 transferring, 2 queued, 1 in error"
        );
        assert_eq!(
            status_line(&summary(1, 0, 0, 0)),
            "1 job: 0 transferring, 0 queued, 0 in error"
        );
        assert_eq!(
            status_line(&summary(2, 0, 1, 0)),
            "2 jobs: 0 transferring, 1 queued, 0 in error"
        );
    }
}
