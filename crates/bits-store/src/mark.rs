//! The guard of every acknowledged change. The job count (`guard.rs`) only notices lost jobs;
//! sled 0.34 also reads a damaged log as a shorter one that still holds every job but lacks
//! their latest changes (a flipped byte drops every AddFile after it, without a word).
//!
//! So every write carries a sequence number, one more than the write before it: stamped into
//! each record it stores (`keys.rs`), and into `meta/last_seq` for writes that remove keys, so a
//! deleted job's number does not vanish with its records. After each flush the highest number
//! it made durable is written to a small file beside the database (the mark). The newest write
//! always carries the highest number, and sled loses a suffix of its log, never a hole: a store
//! that lost any acknowledged write holds no number as high as the mark, and is refused.
//!
//! The mark is written after the flush it describes and not synced: a lost mark write only
//! makes the check weaker, never wrong. It costs one `pwrite` per flush, no device round trip.
//! Only the store's open syncs it, once, with the value it read (see [`AckMark::open`]).

use std::path::Path;
use std::sync::Mutex;

use crate::StoreError;
use crate::number_file::{self, NumberFile};

pub(crate) const FILE_NAME: &str = "acked.seq";

/// The recorded mark; 0 without a (readable) file: a new store, or one from before the mark.
pub(crate) fn read(dir: &Path) -> Result<u64, StoreError> {
    number_file::read(dir, FILE_NAME, "acknowledged-change mark")
}

/// Refuses an engine whose newest write (`found`) is older than the mark. Reads only.
pub(crate) fn check(dir: &Path, db_path: &Path, found: u64) -> Result<u64, StoreError> {
    let acknowledged = read(dir)?;
    if found < acknowledged {
        return Err(StoreError::LostChanges { path: db_path.to_path_buf(), found, acknowledged });
    }
    Ok(acknowledged)
}

/// The mark file, kept open, and the value in it.
pub(crate) struct AckMark {
    file: NumberFile,
    recorded: Mutex<u64>,
}

impl AckMark {
    /// Opens (creating) the mark file, which holds `recorded` (from [`check`]). A missing file is
    /// created with 0, not with the number found: what was found may sit in the page cache only,
    /// and the first flush raises the mark anyway.
    ///
    /// This one write is synced: `recorded` was durable in the log when it was first written, so
    /// it is safe to keep, and without it a power cut left the new file empty (its later writes
    /// unsynced), so the check was skipped at every start after one.
    pub(crate) fn open(dir: &Path, recorded: u64) -> Result<AckMark, StoreError> {
        let file = NumberFile::open(dir, FILE_NAME)?;
        file.write(recorded, true)?;
        Ok(AckMark { file, recorded: Mutex::new(recorded) })
    }

    /// A flush made every write up to `seq` durable.
    pub(crate) fn flushed(&self, seq: u64) -> Result<(), StoreError> {
        let mut recorded = self.recorded.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if seq > *recorded {
            self.write(seq)?;
            *recorded = seq;
        }
        Ok(())
    }

    /// The value in the file.
    pub(crate) fn recorded(&self) -> u64 {
        *self.recorded.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Not synced: see the module docs.
    fn write(&self, value: u64) -> Result<(), StoreError> {
        self.file.write(value, false)
    }
}
