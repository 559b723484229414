//! A number kept in a small file beside the database (the job count of `guard.rs`, the
//! acknowledged-change mark of `mark.rs`): overwritten in place at a fixed width, one small write
//! and no rename, since it is written on hot paths.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::StoreError;

/// The number in `dir/name`; 0 without the file (a new store, or one from before it). A torn
/// write (the number is overwritten in place) only weakens the check it serves: said so, and 0.
pub(crate) fn read(dir: &Path, name: &str, what: &'static str) -> Result<u64, StoreError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().parse::<u64>().unwrap_or_else(|_| {
            tracing::warn!(path = %path.display(), "unreadable {what}; not checked this time");
            0
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(StoreError::io("read a number file beside the job store", e)),
    }
}

/// The file `dir/name`, kept open for [`NumberFile::write`].
pub(crate) struct NumberFile {
    file: File,
}

impl NumberFile {
    /// Opens (creating) the file.
    pub(crate) fn open(dir: &Path, name: &str) -> Result<NumberFile, StoreError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(name))
            .map_err(|e| StoreError::io("open a number file beside the job store", e))?;
        Ok(NumberFile { file })
    }

    /// Writes `value`; `sync` makes it durable before returning.
    pub(crate) fn write(&self, value: u64, sync: bool) -> Result<(), StoreError> {
        self.file
            .write_all_at(format!("{value:020}\n").as_bytes(), 0)
            .map_err(|e| StoreError::io("write a number file beside the job store", e))?;
        if sync {
            self.file
                .sync_data()
                .map_err(|e| StoreError::io("sync a number file beside the job store", e))?;
        }
        Ok(())
    }
}
