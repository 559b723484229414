//! What a job notification reports (spec §7.1). One type for the daemon that raises it, the wire
//! that carries it and the clients that read it, so a new kind of event is added once.

use crate::job::notify;
use crate::{JobError, JobState, Progress, RangeSet};

/// What happened to a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The job entered TRANSFERRED (flag 0x01).
    JobTransferred,
    /// The job entered ERROR (flag 0x02), with the error; TRANSIENT_ERROR never sends it.
    JobError(JobError),
    /// Bytes transferred, a file added, a property or the state changed (flag 0x08): the job's
    /// state and progress now. Not sent for the transitions into TRANSFERRED or ERROR.
    JobModification { state: JobState, progress: Progress },
    /// File `index` has all its bytes (flag 0x10); files in order, before JobTransferred.
    FileTransferred { index: u32 },
    /// On-demand (RequestFileRanges) bytes of file `index` now durably present (remote offsets,
    /// sorted and merged), since the previous event of this kind for the file (flag 0x20).
    FileRangesTransferred { index: u32, ranges: RangeSet },
}

impl EventKind {
    /// The notify flag that selects this event.
    pub fn flag(&self) -> u32 {
        match self {
            EventKind::JobTransferred => notify::JOB_TRANSFERRED,
            EventKind::JobError(_) => notify::JOB_ERROR,
            EventKind::JobModification { .. } => notify::JOB_MODIFICATION,
            EventKind::FileTransferred { .. } => notify::FILE_TRANSFERRED,
            EventKind::FileRangesTransferred { .. } => notify::FILE_RANGES_TRANSFERRED,
        }
    }

    /// The wire name of the event (`JOB_TRANSFERRED`, …), after the notify flag that selects it.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::JobTransferred => "JOB_TRANSFERRED",
            EventKind::JobError(_) => "JOB_ERROR",
            EventKind::JobModification { .. } => "JOB_MODIFICATION",
            EventKind::FileTransferred { .. } => "FILE_TRANSFERRED",
            EventKind::FileRangesTransferred { .. } => "FILE_RANGES_TRANSFERRED",
        }
    }

    /// A JobModification into CANCELLED or ACKNOWLEDGED: the last event of a job.
    pub fn is_final(&self) -> bool {
        matches!(self, EventKind::JobModification { state, .. } if state.is_final())
    }
}
