//! Why a transfer stopped short, and how each kind of failure (HTTP, disk, store, a panicked
//! task) becomes one.

use std::future::Future;
use std::time::Duration;

use bits_core::{BitsError, Code, ErrorContext, JobError};
use bits_http::{FetchError, FetchErrorKind};
use futures::FutureExt;

use super::ledger::disk_error;

/// Why a transfer stopped short.
pub(super) enum Halt {
    /// Asked to stop; whoever asked owns the state.
    Stopped,
    /// The remote file changed: restart this file from zero.
    Changed,
    /// The temp file shrank under the download (truncated by someone): bytes already recorded
    /// may be gone, so the file restarts from zero.
    Lost,
    /// ON_DEMAND_MODE: every requested range is filled; the job waits for the next request.
    OnDemandIdle,
    /// The attempt failed; `retry_after` is the server's Retry-After, if it sent one.
    Failed { error: JobError, transient: bool, retry_after: Option<Duration> },
    /// A GET sent straight to where the probe's redirects led was refused (401, 403, 404, 410):
    /// a signed URL may have expired. The file follows its remote name's redirects afresh
    /// before this counts as the failure it carries (`transfer.rs: FileTransfer::run`).
    TargetRefused { error: JobError, transient: bool, retry_after: Option<Duration> },
}

/// A file's transfer or tail, with a panic in it turned into a transient failure of the job
/// (as a panic in one future of the job's own task used to end the whole worker).
pub(super) async fn caught<T>(
    index: u32,
    work: impl Future<Output = Result<T, Halt>>,
) -> Result<T, Halt> {
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(panicked(Some(index))))
}

/// A file's task that ended without an answer: cancelled by the runtime shutting down, or (should
/// `caught` ever miss one) panicked. Either way the worker stops; a panic is a transient failure,
/// so the job is retried rather than left running with no worker.
pub(super) fn lost_task(e: tokio::task::JoinError) -> Halt {
    if e.is_panic() { panicked(None) } else { Halt::Stopped }
}

/// A transient E_FAIL for a file's transfer that panicked (`index`: the file, when known).
fn panicked(index: Option<u32>) -> Halt {
    tracing::error!(index, "a file's transfer panicked");
    Halt::Failed {
        error: JobError {
            context: ErrorContext::GeneralQueueManager,
            code: Code::E_FAIL,
            description: "internal error: a file's transfer panicked".into(),
            file_index: index,
        },
        transient: true,
        retry_after: None,
    }
}

pub(super) fn job_error(
    context: ErrorContext,
    code: Code,
    description: impl Into<String>,
    index: u32,
) -> JobError {
    JobError { context, code, description: description.into(), file_index: Some(index) }
}

pub(super) fn fetch_halt(e: FetchError, index: u32) -> Halt {
    if e.kind == FetchErrorKind::RemoteChanged {
        return Halt::Changed;
    }
    Halt::Failed {
        error: job_error(e.context, e.code, e.message.clone(), index),
        transient: e.transient,
        retry_after: e.retry_after,
    }
}

/// Whether a failed GET sent straight to where the probe's redirects led is one a stale signed
/// URL gets (401, 403, 404, 410: S3 and most CDNs answer 403, others 401, 404 or 410), so that
/// following the remote name's redirects afresh may help.
pub(super) fn target_refused(e: &FetchError) -> bool {
    matches!(e.kind, FetchErrorKind::Http(401 | 403 | 404 | 410))
}

impl Halt {
    /// This failure as [`Halt::TargetRefused`].
    pub(super) fn into_target_refused(self) -> Halt {
        match self {
            Halt::Failed { error, transient, retry_after } => {
                Halt::TargetRefused { error, transient, retry_after }
            }
            other => other,
        }
    }
}

/// A disk failure during a transfer: a temp file that shrank under it restarts the file
/// ([`Halt::Lost`]); anything else is [`local_halt`].
pub(super) fn disk_halt(e: bits_disk::DiskError, index: u32) -> Halt {
    match e {
        bits_disk::DiskError::Shrunk { .. } => {
            tracing::warn!(index, error = %e, "temp file lost bytes");
            Halt::Lost
        }
        e => local_halt(disk_error(e), index),
    }
}

/// A local file problem. A full disk is worth retrying once space is freed, running out of file
/// descriptors once some close; anything else (permissions, a vanished directory) needs the user.
pub(super) fn local_halt(e: BitsError, index: u32) -> Halt {
    let transient = matches!(e.code, Code::ERROR_DISK_FULL | Code::ERROR_TOO_MANY_OPEN_FILES);
    Halt::Failed {
        error: job_error(ErrorContext::LocalFile, e.code, e.message, index),
        transient,
        retry_after: None,
    }
}

pub(super) fn store_halt(e: BitsError, index: u32) -> Halt {
    Halt::Failed {
        error: job_error(ErrorContext::GeneralQueueManager, e.code, e.message, index),
        transient: true,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed call is a failed test

    use super::*;

    /// A file's task that panics fails the job transiently, naming the file, instead of taking
    /// the worker down; a task that returns is passed through.
    #[tokio::test]
    async fn a_panicking_file_task_is_a_transient_failure_of_that_file() {
        let ok = caught(3, async { Ok::<u32, Halt>(7) }).await;
        assert!(matches!(ok, Ok(7)));
        let panicking = async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            Ok::<u32, Halt>(0)
        };
        match caught(5, panicking).await {
            Err(Halt::Failed { error, transient, .. }) => {
                assert!(transient);
                assert_eq!(error.code, Code::E_FAIL);
                assert_eq!(error.file_index, Some(5));
                assert!(error.description.contains("panicked"), "{}", error.description);
            }
            _ => panic!("a panic must become Halt::Failed"),
        }
    }

    /// Running out of file descriptors passes as other files close: a transient failure, like a
    /// full disk; a permission problem needs the user.
    #[test]
    fn a_full_disk_or_too_many_open_files_is_transient_other_local_errors_fatal() {
        for (code, transient) in [
            (Code::ERROR_DISK_FULL, true),
            (Code::ERROR_TOO_MANY_OPEN_FILES, true),
            (Code::E_ACCESSDENIED, false),
            (Code::E_FAIL, false),
        ] {
            match local_halt(BitsError::new(code, "x"), 0) {
                Halt::Failed { transient: t, .. } => assert_eq!(t, transient, "{code}"),
                _ => panic!("a local error is a failure"),
            }
        }
    }

    /// Only the statuses a stale signed URL gets send a file back to its remote name; anything
    /// else from a redirect target (a 5xx, a cut body, a 416) is the failure it always was.
    #[test]
    fn only_401_403_404_410_are_refusals_of_a_redirect_target() {
        let failure = |kind| FetchError {
            kind,
            code: Code::E_FAIL,
            context: ErrorContext::RemoteFile,
            transient: false,
            message: "x".into(),
            retry_after: None,
            redirect_target: None,
        };
        for status in [401, 403, 404, 410] {
            assert!(target_refused(&failure(FetchErrorKind::Http(status))), "{status}");
        }
        for status in [400, 405, 407, 408, 416, 429, 500, 503] {
            assert!(!target_refused(&failure(FetchErrorKind::Http(status))), "{status}");
        }
        for kind in [FetchErrorKind::InvalidRange, FetchErrorKind::RangeNotSupported] {
            assert!(!target_refused(&failure(kind)), "{kind:?}");
        }
        let halt = fetch_halt(failure(FetchErrorKind::Http(403)), 2).into_target_refused();
        assert!(matches!(halt, Halt::TargetRefused { error, .. } if error.file_index == Some(2)));
        let changed = fetch_halt(failure(FetchErrorKind::RemoteChanged), 2).into_target_refused();
        assert!(matches!(changed, Halt::Changed), "only a failure becomes a refusal");
    }

    /// A task that ends without an answer: a panic (one `caught` missed) is a transient failure
    /// naming no file, a cancelled task a stop.
    #[tokio::test]
    async fn a_lost_task_is_a_transient_failure_if_it_panicked_else_a_stop() {
        let panicked = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
        });
        match lost_task(panicked.await.unwrap_err()) {
            Halt::Failed { error, transient: true, .. } => {
                assert_eq!((error.code, error.file_index), (Code::E_FAIL, None));
            }
            _ => panic!("a panic must become a transient Halt::Failed"),
        }
        let cancelled = tokio::spawn(std::future::pending::<()>());
        cancelled.abort();
        assert!(matches!(lost_task(cancelled.await.unwrap_err()), Halt::Stopped));
    }
}
