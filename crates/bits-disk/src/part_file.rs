//! The temp file a download writes into: positional writes, so pieces can arrive in any order,
//! and an explicit sync that marks the point after which written bytes may be recorded as filled.

use std::fs::{File, FileTimes, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::DiskError;

/// `O_NOFOLLOW`, as the `c_int` `OpenOptionsExt::custom_flags` takes.
pub(crate) const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;

/// An open temp file. Writes go to the page cache; [`PartFile::sync`] makes them durable.
#[derive(Debug)]
pub struct PartFile {
    file: File,
    path: PathBuf,
}

impl PartFile {
    /// Opens `path` for writing, creating it (default mode 0666 less the umask, as for any
    /// download) if missing. Never truncates: existing bytes are the resume point. Never follows
    /// a symlink in the last component (`O_NOFOLLOW`): a link planted where the temp file will be
    /// fails the open (access denied) instead of redirecting our writes to its target.
    pub fn open(path: &Path) -> Result<PartFile, DiskError> {
        PartFile::open_with(path, false)
    }

    /// Opens `path` for a file written whole from its first byte, emptied by the open itself
    /// (`O_TRUNC`): what an earlier attempt left there is not part of it, and a separate
    /// truncation would cost a syscall and an inode update per file of a job of many small files.
    /// Creates and refuses links as [`PartFile::open`] does.
    pub fn open_empty(path: &Path) -> Result<PartFile, DiskError> {
        PartFile::open_with(path, true)
    }

    fn open_with(path: &Path, truncate: bool) -> Result<PartFile, DiskError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(truncate)
            .custom_flags(NOFOLLOW)
            .open(path)
            .map_err(|e| DiskError::from_io(path, "open", e))?;
        Ok(PartFile { file, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Current length on disk (to detect a missing or short temp file on restart).
    pub fn len(&self) -> Result<u64, DiskError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| DiskError::from_io(&self.path, "read the length of", e))
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> Result<bool, DiskError> {
        self.len().map(|len| len == 0)
    }

    /// Sets the length: a sparse extension, or a truncation when a file restarts from zero.
    pub fn set_len(&self, len: u64) -> Result<(), DiskError> {
        self.file.set_len(len).map_err(|e| DiskError::from_io(&self.path, "set the length of", e))
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.file.write_all_at(buf, offset).map_err(|e| DiskError::from_io(&self.path, "write", e))
    }

    /// fdatasync: after this returns, everything written so far survives a crash.
    pub fn sync(&self) -> Result<(), DiskError> {
        self.file.sync_data().map_err(|e| DiskError::from_io(&self.path, "sync", e))
    }

    /// Sets the modification and access times to `mtime`, then fsyncs data and metadata: for a
    /// file written whole, so that Complete finds its times already right and durable and has
    /// nothing left to sync (see [`crate::rename_all_into_place`]). Costs what [`PartFile::sync`]
    /// does for a new file: its inode is written either way.
    pub fn sync_with_times(&self, mtime: SystemTime) -> Result<(), DiskError> {
        set_times(&self.file, &self.path, mtime)?;
        self.file.sync_all().map_err(|e| DiskError::from_io(&self.path, "sync", e))
    }
}

/// Sets a file's modification and access times both to `time` (a downloaded file gets the
/// server's Last-Modified for both, as BITS does).
pub(crate) fn set_times(file: &File, path: &Path, time: SystemTime) -> Result<(), DiskError> {
    file.set_times(FileTimes::new().set_modified(time).set_accessed(time))
        .map_err(|e| DiskError::from_io(path, "set the times of", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_symlink_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, b"precious").unwrap();
        let link = dir.path().join("f.part");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let dangling = dir.path().join("g.part");
        std::os::unix::fs::symlink(dir.path().join("new"), &dangling).unwrap();
        for open in [PartFile::open, PartFile::open_empty] {
            let err = open(&link).unwrap_err();
            assert!(matches!(err, DiskError::AccessDenied { .. }), "{err:?}");
            assert!(open(&dangling).is_err());
            assert!(!dir.path().join("new").exists(), "a dangling link must not create its target");
            assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        }
    }

    /// A file written whole starts empty, whatever an earlier attempt left; `open` keeps it.
    #[test]
    fn open_empty_discards_an_earlier_attempt_and_open_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.part");
        std::fs::write(&path, b"an earlier, longer attempt").unwrap();
        PartFile::open(&path).unwrap().write_at(0, b"AN").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"AN earlier, longer attempt");
        PartFile::open_empty(&path).unwrap().write_at(0, b"whole").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        PartFile::open_empty(&dir.path().join("new.part")).unwrap().write_at(0, b"x").unwrap();
        assert_eq!(std::fs::read(dir.path().join("new.part")).unwrap(), b"x");
    }

    #[test]
    fn scattered_writes_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.part");
        let part = PartFile::open(&path).unwrap();
        assert!(part.is_empty().unwrap());
        part.write_at(1000, b"tail").unwrap();
        part.write_at(0, b"head").unwrap();
        part.write_at(500, b"middle").unwrap();
        part.sync().unwrap();
        assert_eq!(part.len().unwrap(), 1004);
        let data = std::fs::read(&path).unwrap();
        assert_eq!(&data[0..4], b"head");
        assert_eq!(&data[500..506], b"middle");
        assert_eq!(&data[1000..], b"tail");
        assert!(data[4..500].iter().all(|&b| b == 0));

        // Reopening keeps the bytes: no truncation.
        drop(part);
        let part = PartFile::open(&path).unwrap();
        assert_eq!(part.len().unwrap(), 1004);
        part.write_at(2, b"AD").unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[0..4], b"heAD");
        assert_eq!(part.path(), path);
    }

    #[test]
    fn set_len_extends_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.part");
        let part = PartFile::open(&path).unwrap();
        part.write_at(0, b"0123456789").unwrap();
        part.set_len(4).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"0123");
        part.set_len(1 << 30).unwrap();
        assert_eq!(part.len().unwrap(), 1 << 30);
        part.set_len(0).unwrap();
        assert!(part.is_empty().unwrap());
    }

    #[test]
    fn open_in_a_missing_directory_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = PartFile::open(&dir.path().join("missing/f.part")).unwrap_err();
        assert!(matches!(err, DiskError::NotFound { .. }), "{err:?}");
        assert_eq!(err.path(), dir.path().join("missing/f.part"));
    }
}
