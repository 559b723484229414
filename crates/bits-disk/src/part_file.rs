//! The temp file a download writes into: positional writes, so pieces can arrive in any order,
//! and an explicit sync that marks the point after which written bytes may be recorded as filled.

use std::fs::{File, FileTimes};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use bits_core::TempId;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::DiskError;
use crate::dir::{Dir, is_regular, not_ours};

/// An open temp file. Writes go to the page cache; [`PartFile::sync`] makes them durable.
#[derive(Debug)]
pub struct PartFile {
    file: File,
    path: PathBuf,
    id: TempId,
    /// The directory holding it: the first sync also syncs the file's name there.
    dir: Dir,
    /// Whether that name is known durable (a sync of the directory since this open).
    named: AtomicBool,
}

impl PartFile {
    /// Creates the temp file `path` for a job owned by `owner`, with permission bits `mode`,
    /// exclusively (`O_EXCL`): a file already at that name is never written into. One this job's
    /// owner owns is an earlier attempt's, left by a crash before anything of it was recorded,
    /// and is replaced; anything else (another user's file, planted at the guessable name in a
    /// shared directory) is refused with [`DiskError::NotOurs`]. Never follows a link, in the
    /// directory path ([`Dir::open`]) or at the name.
    /// `dir_ino`: the directory AddFile resolved, when known (see `Dir::of_pinned`).
    pub fn create(
        path: &Path,
        dir_ino: Option<u64>,
        mode: u32,
        owner: u32,
    ) -> Result<PartFile, DiskError> {
        let (dir, name) = Dir::of_pinned(path, dir_ino)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        let mut replaced = false;
        loop {
            match dir.open_at(name, flags, Mode::from(mode & 0o777)) {
                Ok(fd) => {
                    let file = File::from(fd);
                    set_mode(&file, path, mode)?;
                    let stat = rustix::fs::fstat(&file)
                        .map_err(|e| DiskError::from_io(path, "inspect", e.into()))?;
                    return Ok(PartFile::new(file, path, &stat, dir));
                }
                Err(Errno::EXIST) if !replaced => {
                    replaced = true;
                    match dir.stat(name)? {
                        Some(stat) if is_regular(&stat) && stat.st_uid == creator(owner) => {
                            dir.unlink(name)?
                        }
                        Some(stat) => {
                            return Err(not_ours(path, &stat, "it was not created by this job"));
                        }
                        None => {}
                    }
                }
                Err(e) => return Err(DiskError::from_io(path, "create", e.into())),
            }
        }
    }

    /// Reopens the temp file this job created (`made`), keeping its bytes: the resume point.
    /// `None` when there is no file at `path` (deleted: its bytes are lost). A file there that
    /// is not the one the job created (another inode or owner: replaced behind our back) is
    /// refused with [`DiskError::NotOurs`]. A record from before `made` was kept trusts a
    /// regular file of the job's `owner`.
    pub fn reopen(
        path: &Path,
        dir_ino: Option<u64>,
        made: Option<TempId>,
        owner: u32,
    ) -> Result<Option<PartFile>, DiskError> {
        PartFile::reopen_with(path, dir_ino, made, owner, OFlags::WRONLY)
    }

    /// [`PartFile::reopen`] for reading only: to hash what is on disk (an expected SHA-256),
    /// with the same checks that it is the file the job created.
    pub fn reopen_to_read(
        path: &Path,
        dir_ino: Option<u64>,
        made: Option<TempId>,
        owner: u32,
    ) -> Result<Option<PartFile>, DiskError> {
        PartFile::reopen_with(path, dir_ino, made, owner, OFlags::RDONLY)
    }

    fn reopen_with(
        path: &Path,
        dir_ino: Option<u64>,
        made: Option<TempId>,
        owner: u32,
        access: OFlags,
    ) -> Result<Option<PartFile>, DiskError> {
        let (dir, name) = Dir::of_pinned(path, dir_ino)?;
        // O_NONBLOCK: a FIFO planted at the name must fail the check below, not hang the open.
        let flags = access | OFlags::NONBLOCK;
        let fd = match dir.open_at(name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(DiskError::from_io(path, "open", e.into())),
        };
        let stat =
            rustix::fs::fstat(&fd).map_err(|e| DiskError::from_io(path, "inspect", e.into()))?;
        // A record from before `made` was kept: a regular file of the owner's.
        let made = made.or(Some(TempId { ino: stat.st_ino, uid: creator(owner) }));
        dir.check_made(path, &stat, made)?;
        Ok(Some(PartFile::new(File::from(fd), path, &stat, dir)))
    }

    fn new(file: File, path: &Path, stat: &rustix::fs::Stat, dir: Dir) -> PartFile {
        let id = TempId { ino: stat.st_ino, uid: stat.st_uid };
        PartFile { file, path: path.to_path_buf(), id, dir, named: AtomicBool::new(false) }
    }

    /// Which file this is: what the job keeps so that only this file is ever reopened.
    pub fn id(&self) -> TempId {
        self.id
    }

    /// Fails with [`DiskError::Shrunk`] unless the file still holds `expected` bytes. The
    /// temp file is extended to its full length before the download, so a file shorter than
    /// that was truncated under it — and bytes already recorded may be gone with the rest.
    pub fn check_len(&self, expected: u64) -> Result<(), DiskError> {
        let len = self.len()?;
        if len < expected {
            return Err(DiskError::Shrunk { path: self.path.clone(), len, expected });
        }
        Ok(())
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

    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, DiskError> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DiskError::from_io(&self.path, "read", e)),
            }
        }
        Ok(done)
    }

    /// fdatasync: after this returns, everything written so far survives a crash, a power cut
    /// included. The first sync after an open also syncs the directory: the file's name may be
    /// no more durable than its bytes (it was just created, or created in a life that crashed
    /// before any sync), and recorded bytes in a file a power cut unnamed are lost all the same.
    pub fn sync(&self) -> Result<(), DiskError> {
        self.file.sync_data().map_err(|e| DiskError::from_io(&self.path, "sync", e))?;
        self.sync_name()
    }

    fn sync_name(&self) -> Result<(), DiskError> {
        if self.named.load(Ordering::Acquire) {
            return Ok(());
        }
        self.dir.sync_shared()?;
        self.named.store(true, Ordering::Release);
        Ok(())
    }

    /// Sets the modification and access times to `mtime`, then fsyncs data and metadata: for a
    /// file written whole, so that Complete finds its times already right and durable and has
    /// nothing left to sync (see [`crate::rename_all_into_place`]). Costs what [`PartFile::sync`]
    /// does for a new file: its inode is written either way.
    pub fn sync_with_times(&self, mtime: SystemTime) -> Result<(), DiskError> {
        set_times(&self.file, &self.path, mtime)?;
        self.file.sync_all().map_err(|e| DiskError::from_io(&self.path, "sync", e))?;
        self.sync_name()
    }
}

/// The owner files created now get: the job's owner where the daemon switches to it, else the
/// daemon's own user.
fn creator(owner: u32) -> u32 {
    if crate::Identity::switches_to(owner) { owner } else { rustix::process::geteuid().as_raw() }
}

/// Gives a new file exactly `mode`: the open applied the daemon's umask too, which may take away
/// bits the caller's own umask leaves (a daemon umask of 022, a caller's of 002).
fn set_mode(file: &File, path: &Path, mode: u32) -> Result<(), DiskError> {
    if mode & daemon_umask() == 0 {
        return Ok(());
    }
    rustix::fs::fchmod(file, Mode::from(mode & 0o777))
        .map_err(|e| DiskError::from_io(path, "set the permissions of", e.into()))
}

/// This process's umask, read once (from /proc: umask(2) can only read it by changing it).
fn daemon_umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| crate::umask_in_status(&status))
            .unwrap_or(0o777)
    })
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

    fn uid() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    fn create(path: &Path) -> PartFile {
        PartFile::create(path, None, 0o644, uid()).unwrap()
    }

    #[test]
    fn a_planted_symlink_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, b"precious").unwrap();
        let link = dir.path().join("f.part");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let dangling = dir.path().join("g.part");
        std::os::unix::fs::symlink(dir.path().join("new"), &dangling).unwrap();
        let err = PartFile::create(&link, None, 0o644, uid()).unwrap_err();
        assert!(matches!(err, DiskError::NotOurs { .. }), "{err:?}");
        assert!(PartFile::create(&dangling, None, 0o644, uid()).is_err());
        let err = PartFile::reopen(&link, None, None, uid()).unwrap_err();
        assert!(matches!(err, DiskError::AccessDenied { .. }), "{err:?}");
        assert!(PartFile::reopen(&dangling, None, None, uid()).is_err());
        assert!(!dir.path().join("new").exists(), "a dangling link must not create its target");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    }

    /// A temp file is created exclusively: the job's own leftover (nothing of it recorded) is
    /// replaced, another user's file at the name is refused and left as it is.
    #[test]
    fn create_replaces_only_the_owners_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.part");
        std::fs::write(&path, b"an earlier, longer attempt").unwrap();
        let part = create(&path);
        part.write_at(0, b"whole").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        let someone_else = uid().wrapping_add(1);
        if crate::Identity::switches_to(someone_else) {
            let err = PartFile::create(&path, None, 0o644, someone_else).unwrap_err();
            assert!(matches!(err, DiskError::NotOurs { .. }), "{err:?}");
            assert_eq!(err.code(), bits_core::Code::E_ACCESSDENIED);
            assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        }
    }

    /// Reopening takes only the file the job created: same inode and owner.
    #[test]
    fn reopen_takes_only_the_file_the_job_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.part");
        // Held open, so the planted file cannot get the same inode number.
        let ours = create(&path);
        let made = ours.id();
        assert!(PartFile::reopen(&path, None, Some(made), uid()).unwrap().is_some());
        std::fs::remove_file(&path).unwrap();
        assert!(
            PartFile::reopen(&path, None, Some(made), uid()).unwrap().is_none(),
            "gone is None"
        );
        std::fs::write(&path, b"planted").unwrap();
        let err = PartFile::reopen(&path, None, Some(made), uid()).unwrap_err();
        assert!(matches!(err, DiskError::NotOurs { .. }), "{err:?}");
        let fifo = dir.path().join("fifo.part");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from(0o666),
            0,
        )
        .unwrap();
        // Refused, and without hanging the open (no reader would ever come).
        assert!(PartFile::reopen(&fifo, None, None, uid()).is_err());
    }

    /// The mode asked for is the mode the file gets, whatever the daemon's own umask.
    #[test]
    fn create_gives_exactly_the_mode_asked_for() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o640, 0o664, 0o666] {
            let path = dir.path().join(format!("{mode:o}.part"));
            create_with(&path, mode);
            let got = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, mode, "{mode:o}");
        }
    }

    fn create_with(path: &Path, mode: u32) -> PartFile {
        PartFile::create(path, None, mode, uid()).unwrap()
    }

    #[test]
    fn check_len_sees_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let part = create(&dir.path().join("f.part"));
        part.set_len(1000).unwrap();
        part.check_len(1000).unwrap();
        std::fs::OpenOptions::new().write(true).open(part.path()).unwrap().set_len(10).unwrap();
        let err = part.check_len(1000).unwrap_err();
        assert!(matches!(err, DiskError::Shrunk { len: 10, expected: 1000, .. }), "{err:?}");
    }

    #[test]
    fn scattered_writes_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.part");
        let part = create(&path);
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
        let made = part.id();
        drop(part);
        let part = PartFile::reopen(&path, None, Some(made), uid()).unwrap().unwrap();
        assert_eq!(part.len().unwrap(), 1004);
        part.write_at(2, b"AD").unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[0..4], b"heAD");
        assert_eq!(part.path(), path);
    }

    #[test]
    fn set_len_extends_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.part");
        let part = create(&path);
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
        let err =
            PartFile::create(&dir.path().join("missing/f.part"), None, 0o644, uid()).unwrap_err();
        assert!(matches!(err, DiskError::NotFound { .. }), "{err:?}");
        assert_eq!(err.path(), dir.path().join("missing"), "names the missing directory");
    }
}
