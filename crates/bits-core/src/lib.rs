//! The BITS job model that every other bitsd crate speaks: jobs and files, byte ranges and the
//! interval sets that track them, the state machine, and BITS result codes.
//!
//! This crate does no IO and depends on no async, network or storage crate, so its rules can be
//! tested exhaustively and reused on both sides of the API.

pub mod byte_range;
pub mod code;
pub mod defaults;
pub mod digest;
pub mod event;
pub mod job;
pub mod range_set;
pub mod state;
pub mod stats;

pub use byte_range::{ByteRange, LENGTH_TO_EOF, Layout, validate_static_ranges};
pub use code::{BitsError, Code};
pub use digest::parse_sha256;
pub use event::EventKind;
pub use job::{
    ErrorContext, FileProgress, Job, JobError, JobFile, JobId, JobType, NotifyCmdLine, Priority,
    Progress, TempId, Validator,
};
pub use range_set::{RangeSet, Span};
pub use state::{Event, JobState, transition};
pub use stats::{FlushStats, Stats};
