//! The job state machine (spec §2): every state change, by a caller or by the service, goes through
//! [`transition`], one exhaustive match, so the operation × state table lives in one place.

use serde::{Deserialize, Serialize};

use crate::code::{BitsError, Code};

/// `BG_JOB_STATE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    Connecting,
    Transferring,
    Suspended,
    Error,
    TransientError,
    Transferred,
    Acknowledged,
    Cancelled,
}

impl JobState {
    /// Every state, in BG_JOB_STATE order.
    pub const ALL: [JobState; 9] = [
        JobState::Queued,
        JobState::Connecting,
        JobState::Transferring,
        JobState::Suspended,
        JobState::Error,
        JobState::TransientError,
        JobState::Transferred,
        JobState::Acknowledged,
        JobState::Cancelled,
    ];

    /// The BITS name, as shown to users (`"TRANSFERRED"`).
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "QUEUED",
            JobState::Connecting => "CONNECTING",
            JobState::Transferring => "TRANSFERRING",
            JobState::Suspended => "SUSPENDED",
            JobState::Error => "ERROR",
            JobState::TransientError => "TRANSIENT_ERROR",
            JobState::Transferred => "TRANSFERRED",
            JobState::Acknowledged => "ACKNOWLEDGED",
            JobState::Cancelled => "CANCELLED",
        }
    }

    /// ACKNOWLEDGED and CANCELLED are absorbing: the job has left the queue.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Acknowledged | JobState::Cancelled)
    }

    /// States in which the scheduler owns the job and a worker may be running.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Queued | JobState::Connecting | JobState::Transferring)
    }
}

/// Something that changes (or may change) a job's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Caller: Resume. `has_files` and `all_transferred` decide the BG_E_EMPTY and TRANSFERRED cases.
    Resume {
        has_files: bool,
        all_transferred: bool,
    },
    Suspend,
    Cancel,
    Complete,
    /// Caller: AddFile, SetPriority and other edits that leave the state alone but are refused in final states.
    Modify,
    /// Service: the scheduler started a worker.
    Start,
    /// Service: the server answered; bytes are about to flow.
    Connected,
    /// Service: a recoverable failure; retried after the minimum retry delay.
    TransientFailure,
    /// Service: a fatal failure, or the no-progress timeout expired.
    FatalFailure,
    /// Service: the last needed byte of the last file is durable.
    AllTransferred,
    /// Service: the retry delay of a TRANSIENT_ERROR job elapsed.
    RetryDue,
    /// Service: the job's worker is gone while the job is still active (the daemon restarted, or
    /// a file was added just as the worker finished): back to the queue.
    Requeue,
}

/// The state after `event`, or the BITS error that refuses it. Service events that do not apply to
/// the current state (a worker reporting after the job was suspended) are refused with
/// `BG_E_INVALID_STATE` and must be ignored by the caller.
pub fn transition(state: JobState, event: Event) -> Result<JobState, BitsError> {
    use JobState::*;
    let refuse = || {
        Err(BitsError::new(
            Code::BG_E_INVALID_STATE,
            format!("{event:?} is not allowed in state {}", state.name()),
        ))
    };
    if state.is_final() {
        return refuse();
    }
    match event {
        Event::Resume { has_files: false, .. } => {
            Err(BitsError::new(Code::BG_E_EMPTY, "the job has no files to transfer"))
        }
        Event::Resume { has_files: true, all_transferred } => Ok(match state {
            Queued | Connecting | Transferring => state,
            Transferred if all_transferred => Transferred,
            // A suspended job whose bytes are all present goes straight back to TRANSFERRED
            // (spec §2.3 *4: "via QUEUED without network I/O").
            Suspended if all_transferred => Transferred,
            _ => Queued,
        }),
        Event::Suspend => Ok(Suspended),
        Event::Cancel => Ok(Cancelled),
        Event::Complete => Ok(Acknowledged),
        Event::Modify => Ok(state),
        Event::Start => match state {
            Queued => Ok(Connecting),
            _ => refuse(),
        },
        Event::Connected => match state {
            Connecting | Transferring => Ok(Transferring),
            _ => refuse(),
        },
        Event::TransientFailure => match state {
            Connecting | Transferring => Ok(TransientError),
            _ => refuse(),
        },
        Event::FatalFailure => match state {
            Connecting | Transferring | TransientError => Ok(Error),
            _ => refuse(),
        },
        Event::AllTransferred => match state {
            Queued | Connecting | Transferring => Ok(Transferred),
            _ => refuse(),
        },
        Event::RetryDue => match state {
            TransientError => Ok(Queued),
            _ => refuse(),
        },
        Event::Requeue => match state {
            Connecting | Transferring => Ok(Queued),
            _ => Ok(state),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::JobState::*;
    use super::*;

    const ALL: [JobState; 9] = JobState::ALL;

    fn resume(all_transferred: bool) -> Event {
        Event::Resume { has_files: true, all_transferred }
    }

    #[test]
    fn final_states_refuse_everything() {
        for state in [Acknowledged, Cancelled] {
            for event in [
                resume(false),
                Event::Suspend,
                Event::Cancel,
                Event::Complete,
                Event::Modify,
                Event::Start,
            ] {
                assert_eq!(transition(state, event).unwrap_err().code, Code::BG_E_INVALID_STATE);
            }
        }
    }

    #[test]
    fn caller_operations_follow_the_table() {
        // (state, Resume, Suspend, Cancel, Complete)
        let table = [
            (Suspended, Queued),
            (Queued, Queued),
            (Connecting, Connecting),
            (Transferring, Transferring),
            (TransientError, Queued),
            (Error, Queued),
            (Transferred, Queued), // files were added after the transfer finished
        ];
        for (state, after_resume) in table {
            assert_eq!(transition(state, resume(false)).unwrap(), after_resume, "{state:?}");
            assert_eq!(transition(state, Event::Suspend).unwrap(), Suspended);
            assert_eq!(transition(state, Event::Cancel).unwrap(), Cancelled);
            assert_eq!(transition(state, Event::Complete).unwrap(), Acknowledged);
            assert_eq!(transition(state, Event::Modify).unwrap(), state);
        }
        assert_eq!(transition(Transferred, resume(true)).unwrap(), Transferred);
        assert_eq!(transition(Suspended, resume(true)).unwrap(), Transferred);
    }

    #[test]
    fn resume_without_files_is_empty() {
        let err = transition(Suspended, Event::Resume { has_files: false, all_transferred: false })
            .unwrap_err();
        assert_eq!(err.code, Code::BG_E_EMPTY);
    }

    #[test]
    fn service_events_only_apply_to_active_states() {
        assert_eq!(transition(Queued, Event::Start).unwrap(), Connecting);
        assert_eq!(transition(Connecting, Event::Connected).unwrap(), Transferring);
        assert_eq!(transition(Transferring, Event::TransientFailure).unwrap(), TransientError);
        assert_eq!(transition(TransientError, Event::RetryDue).unwrap(), Queued);
        assert_eq!(transition(TransientError, Event::FatalFailure).unwrap(), Error);
        assert_eq!(transition(Transferring, Event::AllTransferred).unwrap(), Transferred);
        // A worker finishing after the caller suspended the job must not move it.
        for event in
            [Event::Connected, Event::TransientFailure, Event::FatalFailure, Event::AllTransferred]
        {
            assert!(transition(Suspended, event).is_err(), "{event:?}");
        }
        for state in ALL {
            let recovered = transition(state, Event::Requeue);
            match state {
                Connecting | Transferring => assert_eq!(recovered.unwrap(), Queued),
                Acknowledged | Cancelled => assert!(recovered.is_err()),
                _ => assert_eq!(recovered.unwrap(), state),
            }
        }
    }
}
