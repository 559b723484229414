//! The job manager: the BITS job operations, the scheduler that decides which jobs run, and the
//! workers that move bytes from an HTTP range fetcher into temp files and the filled-range set.
//!
//! Data path: a gRPC handler calls a [`Manager`] method → the job table changes and is persisted
//! (`bits-store`) before the reply (CreateJob: within 20 ms, see
//! [`ManagerConfig::new_job_flush_delay`]) → the scheduler starts a worker → the worker probes and
//! fetches ranges (`bits-http`), writes and syncs them (`bits-disk`), and only then records them
//! as filled.

mod access;
mod checksum;
mod commit;
mod errors;
mod events;
mod files;
mod finish;
mod flusher;
mod handle;
mod manager;
mod notify_cmd;
mod on_demand;
mod ownership;
mod paths;
mod policy;
mod reconcile;
mod requested;
mod scheduler;
mod setters;
mod stats;
mod status;
mod table;
#[cfg(test)]
mod testing;
mod types;
mod validate;
mod watch;
mod worker;
mod writer;

pub use events::{EventKind, JobEvent};
pub use files::NewFile;
pub use handle::Manager;
pub use setters::PropertyValue;
pub use stats::FLUSH_BUCKETS_MICROS;
pub use types::{Caller, ManagerConfig, ManagerError, Summary};
pub use watch::Subscription;
/// Public only so that its doc test can show, from outside the crate, that it cannot be forged.
#[doc(hidden)]
pub use writer::Synced;
