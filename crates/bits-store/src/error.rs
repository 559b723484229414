//! What can go wrong with the job store, worded for an operator reading the daemon's log: each
//! message says which store, key or version is involved and what to do about it where that is known.

use std::path::PathBuf;

use bits_core::JobId;

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store directory or database could not be created or opened. (The cause is part of
    /// the message rather than a `source`, so a printed error chain does not repeat it.)
    #[error("cannot open the job store at {}: {cause}", path.display())]
    Open { path: PathBuf, cause: std::io::Error },

    /// Another process (probably another bitsd) holds the store's lock, and kept it for the
    /// whole retry period.
    #[error(
        "the job store at {} is locked by another process; is another bitsd running with the same data directory?",
        path.display()
    )]
    Locked { path: PathBuf },

    /// The store was written with a layout this build does not understand. `found` is 0 when the
    /// store holds data but no version at all. The data is left untouched.
    #[error(
        "the job store has schema version {found} (0 = none recorded) but this bitsd uses version {expected}; refusing to use it, and its data was left untouched"
    )]
    SchemaMismatch { found: u32, expected: u32 },

    /// A stored value (or key) cannot be decoded.
    #[error("the job store is corrupt at key `{key}`: {reason}")]
    Corrupt { key: String, reason: String },

    /// A record could not be encoded for storage (nothing was written).
    #[error("cannot encode the record for key `{key}`: {reason}")]
    Encode { key: String, reason: String },

    /// `put_file` named a job that is not stored, or a file index the job does not have.
    #[error("job {job} has no file {index} in the store")]
    NotFound { job: JobId, index: u32 },

    /// The storage engine failed (an I/O error, or an engine error converted to one).
    #[error("job store I/O error while trying to {op}: {cause}")]
    Io { op: &'static str, cause: std::io::Error },

    /// The engine holds fewer jobs than were durably stored: its log was damaged or truncated
    /// (sled 0.34 reads a damaged log as a short one and says nothing). Refusing to start keeps
    /// the remaining data as it is.
    #[error(
        "the job store at {} holds {found} jobs but {expected} were recorded as stored: its log is damaged or truncated. Refusing to start so that nothing more is lost; restore the data directory from a backup, or move it aside to start with an empty queue",
        path.display()
    )]
    Damaged { path: PathBuf, expected: u64, found: u64 },

    /// The engine's newest write is older than the newest one acknowledged to a client (see
    /// `mark.rs`): its log lost a suffix of acknowledged changes.
    #[error(
        "the job store at {} lost acknowledged changes: its newest record has sequence number {found}, but changes up to {acknowledged} were acknowledged to clients (changes {} to {acknowledged} are missing): its log is damaged or truncated. Refusing to start so that nothing more is lost; restore the data directory from a backup, or move it aside to start with an empty queue",
        path.display(),
        found + 1
    )]
    LostChanges { path: PathBuf, found: u64, acknowledged: u64 },

    /// The database directory is gone, but the guards beside it say it held data. Nothing is
    /// created in its place.
    #[error(
        "the job store's database {} is missing, but {jobs} jobs and changes up to sequence number {acknowledged} were recorded as stored. Refusing to start (and to create an empty store in its place); restore the data directory from a backup, or move it aside to start with an empty queue",
        path.display()
    )]
    Missing { path: PathBuf, jobs: u64, acknowledged: u64 },

    /// A write failed earlier and the store was reopened to recover; the changes written after
    /// the last flush but not covered by a failed flush were lost with the old engine, so the
    /// flush meant to make them durable fails with this.
    #[error(
        "job store changes since the last flush were lost when the store was reopened after a failed write ({cause})"
    )]
    Discarded { cause: std::io::Error },
}

impl StoreError {
    /// Whether the store failed because its file system is full (ENOSPC) or the quota of its
    /// owner is used up (EDQUOT). Checked by kind, not OS error number: sled keeps only the kind
    /// of an I/O error it reports again on later calls.
    pub fn is_disk_full(&self) -> bool {
        let cause = match self {
            StoreError::Io { cause, .. }
            | StoreError::Open { cause, .. }
            | StoreError::Discarded { cause } => cause,
            _ => return false,
        };
        use std::io::ErrorKind;
        matches!(cause.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
    }

    /// Wraps an engine error; `op` says what was being done ("flush", "write job 1234…").
    pub(crate) fn io(op: &'static str, source: impl Into<std::io::Error>) -> StoreError {
        StoreError::Io { op, cause: source.into() }
    }
}
