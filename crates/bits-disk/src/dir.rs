//! The directory a job's files live in, reached without following a symbolic link.
//!
//! A root daemon does a job's file work as the job's owner, and after TakeOwnership that owner
//! may be root while the directory path still runs through directories the previous owner
//! controls. Had the path been followed as it stands at each operation, that user could swap a
//! directory for a link to a root-only one and have root create, write and rename files there.
//! So AddFile resolves the destination's directory once, following links as the caller
//! ([`resolve_dir`]), and keeps the result; every later operation resolves that stored
//! path with `RESOLVE_NO_SYMLINKS` ([`Dir::open`]) and does all its work relative to the one
//! directory descriptor it got. A path that gained a link since AddFile is refused, never
//! followed, and nothing can change which directory an operation works in once it has started.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Access, AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::DiskError;

/// A directory opened with no symbolic link in its path (an `O_PATH` descriptor: enough to
/// create, open, rename, unlink and inspect files in it, and needing no read permission).
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    /// Its inode number, for [`Dir::check_pinned`].
    ino: u64,
    /// Its device, with `ino` the key of its shared fsyncs ([`Dir::sync_shared`]).
    dev: u64,
}

impl Dir {
    /// Opens the absolute directory `path` as the calling thread's file-system identity,
    /// refusing any symbolic link on the way ([`DiskError::Redirected`]).
    pub(crate) fn open(path: &Path) -> Result<Dir, DiskError> {
        require_absolute(path)?;
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let fd = match rustix::fs::openat2(rustix::fs::CWD, path, flags, Mode::empty(), resolve) {
            Ok(fd) => fd,
            // Kernels before 5.6 have no openat2: walk the components, none followed.
            Err(Errno::NOSYS) => walk_no_symlinks(path)?,
            Err(e) => return Err(dir_error(path, e)),
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| dir_error(path, e))?;
        Ok(Dir { fd, path: path.to_path_buf(), ino: stat.st_ino, dev: stat.st_dev })
    }

    /// The directory holding `file`, and the file's name in it.
    pub(crate) fn of(file: &Path) -> Result<(Dir, &OsStr), DiskError> {
        let (dir, name) = split(file)?;
        Ok((Dir::open(dir)?, name))
    }

    /// [`Dir::of`], refusing ([`DiskError::Redirected`]) a directory other than the one AddFile
    /// resolved (`ino`, when known): a path that now leads, without any link, to another
    /// directory (one renamed into its place) is not the destination the job was given.
    pub(crate) fn of_pinned(file: &Path, ino: Option<u64>) -> Result<(Dir, &OsStr), DiskError> {
        let (dir, name) = Dir::of(file)?;
        dir.check_pinned(ino)?;
        Ok((dir, name))
    }

    /// Fails unless this is the directory with inode number `ino` (when known; and where the
    /// file system keeps inode numbers).
    pub(crate) fn check_pinned(&self, ino: Option<u64>) -> Result<(), DiskError> {
        match ino {
            Some(ino) if !self.same_inode(self.ino, ino) => {
                Err(DiskError::Redirected { path: self.path.clone() })
            }
            _ => Ok(()),
        }
    }

    /// Whether inode number `found` (of a file in this directory, or of the directory) is
    /// `expected`. FAT, exFAT, FUSE and SMB make numbers up whenever a file is looked up, so
    /// after a remount (or a reboot) the same file has another one: there any number matches.
    fn same_inode(&self, found: u64, expected: u64) -> bool {
        found == expected || !stable_inodes(self.fd())
    }

    /// Fails with [`DiskError::NotOurs`] unless `stat` (of `path`, in this directory) is a
    /// regular file and, when `made` is known, the temp file the job created: same owner and
    /// same inode number.
    pub(crate) fn check_made(
        &self,
        path: &Path,
        stat: &rustix::fs::Stat,
        made: Option<bits_core::TempId>,
    ) -> Result<(), DiskError> {
        let ours = made.is_none_or(|m| stat.st_uid == m.uid && self.same_inode(stat.st_ino, m.ino));
        if is_regular(stat) && ours {
            return Ok(());
        }
        Err(not_ours(path, stat, "another file replaced it"))
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn ino(&self) -> u64 {
        self.ino
    }

    /// `name`'s path, for messages.
    pub(crate) fn join(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    /// `lstat` of `name` in this directory; `None` if there is no such entry.
    pub(crate) fn stat(&self, name: &OsStr) -> Result<Option<rustix::fs::Stat>, DiskError> {
        match rustix::fs::statat(self.fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(DiskError::from_io(&self.join(name), "inspect", e.into())),
        }
    }

    /// Opens `name` in this directory (never following a link in its place).
    pub(crate) fn open_at(
        &self,
        name: &OsStr,
        flags: OFlags,
        mode: Mode,
    ) -> Result<OwnedFd, rustix::io::Errno> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::openat(self.fd(), name, flags, mode)
    }

    /// Deletes `name`; an entry already gone is fine.
    pub(crate) fn unlink(&self, name: &OsStr) -> Result<(), DiskError> {
        match rustix::fs::unlinkat(self.fd(), name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(DiskError::from_io(&self.join(name), "remove", e.into())),
        }
    }

    /// Renames `from` to `to`, both in this directory, replacing whatever `to` is (a planted
    /// link is replaced, never followed).
    pub(crate) fn rename(&self, from: &OsStr, to: &OsStr) -> Result<(), DiskError> {
        rustix::fs::renameat(self.fd(), from, self.fd(), to)
            .map_err(|e| DiskError::from_io(&self.join(to), "rename into", e.into()))
    }

    /// Whether the calling thread's file-system identity may create files here.
    pub(crate) fn check_writable(&self) -> Result<(), DiskError> {
        rustix::fs::accessat(self.fd(), ".", Access::WRITE_OK | Access::EXEC_OK, AtFlags::EACCESS)
            .map_err(|e| DiskError::from_io(&self.path, "check write access to", e.into()))
    }

    /// [`Dir::sync`], shared with every other caller syncing this directory at the same time
    /// (`dir_sync.rs`): returns once the entries made in it before the call are durable. The
    /// caller opens the directory itself first, so one who may not read it fails whether or not
    /// another caller's fsync would have covered it.
    pub(crate) fn sync_shared(&self) -> Result<(), DiskError> {
        let fd = self.open_to_sync()?;
        crate::dir_sync::sync_shared((self.dev, self.ino), || self.fsync(fd))
    }

    /// fsyncs the directory, making renames and creations in it durable.
    pub(crate) fn sync(&self) -> Result<(), DiskError> {
        self.fsync(self.open_to_sync()?)
    }

    fn open_to_sync(&self) -> Result<OwnedFd, DiskError> {
        self.open_at(".".as_ref(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .map_err(|e| DiskError::from_io(&self.path, "open directory", e.into()))
    }

    fn fsync(&self, fd: OwnedFd) -> Result<(), DiskError> {
        match rustix::fs::fsync(fd) {
            Ok(()) => Ok(()),
            // Some file systems do not support fsync on a directory; nothing more can be done.
            Err(Errno::INVAL) => {
                tracing::debug!(dir = %self.path.display(), "directory fsync not supported");
                Ok(())
            }
            Err(e) => Err(DiskError::from_io(&self.path, "sync directory", e.into())),
        }
    }
}

pub(crate) fn is_regular(stat: &rustix::fs::Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile
}

/// [`DiskError::NotOurs`] for `stat` at `path`: `why`, and whose it is.
pub(crate) fn not_ours(path: &Path, stat: &rustix::fs::Stat, why: &str) -> DiskError {
    let reason = if is_regular(stat) {
        format!("{why}; it belongs to uid {}", stat.st_uid)
    } else {
        format!("{why}; it is not a regular file")
    };
    DiskError::NotOurs { path: path.to_path_buf(), reason }
}

fn stable_inodes(fs: BorrowedFd<'_>) -> bool {
    const MSDOS: i64 = 0x4d44;
    const EXFAT: i64 = 0x2011_bab0;
    const FUSE: i64 = 0x6573_5546;
    const CIFS: i64 = 0xff53_4d42;
    const SMB2: i64 = 0xfe53_4d42;
    match rustix::fs::fstatfs(fs) {
        #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
        Ok(fs) => ![MSDOS, EXFAT, FUSE, CIFS, SMB2].contains(&(fs.f_type as i64)),
        Err(_) => true,
    }
}

/// A file path's directory and name. The directory of a relative name is refused: every stored
/// path is absolute.
pub(crate) fn split(file: &Path) -> Result<(&Path, &OsStr), DiskError> {
    match (file.parent(), file.file_name()) {
        (Some(dir), Some(name)) if file.is_absolute() => Ok((dir, name)),
        _ => Err(DiskError::InvalidPath {
            path: file.to_path_buf(),
            reason: "the path must be absolute and name a file",
        }),
    }
}

/// A relative directory would be resolved against the daemon's own working directory, not the
/// caller's: refused before anything is opened.
fn require_absolute(dir: &Path) -> Result<(), DiskError> {
    if dir.is_absolute() {
        return Ok(());
    }
    Err(DiskError::InvalidPath {
        path: dir.to_path_buf(),
        reason: "the directory must be an absolute path",
    })
}

/// AddFile's one resolution of a destination directory: `dir` with every symbolic link followed
/// (as the calling thread's identity, so only links that identity can traverse), opened again by
/// its resolved name with no link. Later operations use that name, follow no link at all
/// ([`Dir::open`]) and check they reached this directory, by its inode number
/// ([`Dir::of_pinned`]).
pub(crate) fn resolve_dir(dir: &Path) -> Result<Dir, DiskError> {
    require_absolute(dir)?;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(rustix::fs::CWD, dir, flags, Mode::empty())
        .map_err(|e| dir_error(dir, e))?;
    // The kernel's own name for the directory it opened: no `..`, no link. Without /proc (a
    // bare container), the name resolved by path instead.
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let resolved = std::fs::read_link(&link)
        .or_else(|_| std::fs::canonicalize(dir))
        .map_err(|e| DiskError::from_io(dir, "resolve the directory", e))?;
    if !resolved.is_absolute() || resolved.as_os_str().as_bytes().ends_with(b" (deleted)") {
        return Err(DiskError::NotFound { path: dir.to_path_buf() });
    }
    // The name leads, with no link, to the directory that was opened (not one moved in since).
    let opened = rustix::fs::fstat(&fd).map_err(|e| dir_error(dir, e))?;
    let again = Dir::open(&resolved)?;
    let found = rustix::fs::fstat(again.fd()).map_err(|e| dir_error(&resolved, e))?;
    if (opened.st_dev, opened.st_ino) != (found.st_dev, found.st_ino) {
        return Err(DiskError::Redirected { path: dir.to_path_buf() });
    }
    Ok(again)
}

/// `Dir::open` without openat2: one `openat` per component, each with `O_NOFOLLOW`.
fn walk_no_symlinks(path: &Path) -> Result<OwnedFd, DiskError> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut fd = rustix::fs::openat(rustix::fs::CWD, "/", flags, Mode::empty())
        .map_err(|e| dir_error(path, e))?;
    for component in path.components() {
        let name: OsString = match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(name) => name.to_os_string(),
            Component::ParentDir => OsString::from_vec(b"..".to_vec()),
            Component::Prefix(_) => return Err(dir_error(path, Errno::INVAL)),
        };
        // Without O_DIRECTORY, O_PATH|O_NOFOLLOW opens a link itself: told apart by its type.
        let next = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        fd = rustix::fs::openat(&fd, name.as_os_str(), next, Mode::empty())
            .map_err(|e| dir_error(path, e))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| dir_error(path, e))?;
        match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
            rustix::fs::FileType::Directory => {}
            rustix::fs::FileType::Symlink => return Err(dir_error(path, Errno::LOOP)),
            _ => return Err(dir_error(path, Errno::NOTDIR)),
        }
    }
    Ok(fd)
}

/// A directory that could not be opened: a link on the way is [`DiskError::Redirected`].
fn dir_error(dir: &Path, e: Errno) -> DiskError {
    match e {
        Errno::LOOP => DiskError::Redirected { path: dir.to_path_buf() },
        e => DiskError::from_io(dir, "open directory", e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_anywhere_in_the_path_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let real = base.path().join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::os::unix::fs::symlink(&real, base.path().join("link")).unwrap();
        assert!(Dir::open(&real.join("sub")).is_ok());
        for path in [base.path().join("link"), base.path().join("link/sub")] {
            let err = Dir::open(&path).unwrap_err();
            assert!(matches!(err, DiskError::Redirected { .. }), "{path:?}: {err:?}");
            assert_eq!(err.code(), bits_core::Code::E_ACCESSDENIED);
        }
        let err = walk_no_symlinks(&base.path().join("link/sub")).unwrap_err();
        assert!(matches!(err, DiskError::Redirected { .. }), "{err:?}");
        assert!(walk_no_symlinks(&real.join("sub")).is_ok());
        let missing = Dir::open(&base.path().join("missing")).unwrap_err();
        assert!(matches!(missing, DiskError::NotFound { .. }), "{missing:?}");
    }

    #[test]
    fn add_file_resolves_links_once() {
        let base = tempfile::tempdir().unwrap();
        let real = base.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, base.path().join("link")).unwrap();
        let dir = resolve_dir(&base.path().join("link")).unwrap();
        assert_eq!(dir.path(), std::fs::canonicalize(&real).unwrap());
        let resolved = dir.path().join("f.iso");
        assert!(Dir::of_pinned(&resolved, Some(dir.ino())).is_ok());
        // Another directory renamed into the path (no link anywhere) is not the one resolved.
        std::fs::rename(&real, base.path().join("was-real")).unwrap();
        std::fs::create_dir(&real).unwrap();
        let err = Dir::of_pinned(&resolved, Some(dir.ino())).unwrap_err();
        assert!(matches!(err, DiskError::Redirected { .. }), "{err:?}");
        assert!(Dir::of_pinned(&resolved, None).is_ok(), "an old record pins nothing");
        let err = resolve_dir(&base.path().join("missing")).unwrap_err();
        assert!(matches!(err, DiskError::NotFound { .. }), "{err:?}");
        assert!(resolve_dir(Path::new("relative")).is_err());
    }

    #[test]
    fn work_happens_in_the_directory_first_opened() {
        let base = tempfile::tempdir().unwrap();
        let first = base.path().join("d");
        std::fs::create_dir(&first).unwrap();
        let dir = Dir::open(&first).unwrap();
        // The path now leads elsewhere; the open directory does not move with it.
        std::fs::rename(&first, base.path().join("moved")).unwrap();
        std::fs::create_dir(&first).unwrap();
        let fd = dir.open_at("f".as_ref(), OFlags::WRONLY | OFlags::CREATE, Mode::from(0o600));
        drop(fd.unwrap());
        assert!(base.path().join("moved/f").exists());
        assert!(!first.join("f").exists());
        dir.rename("f".as_ref(), "g".as_ref()).unwrap();
        dir.sync().unwrap();
        assert!(dir.stat("g".as_ref()).unwrap().is_some());
        dir.unlink("g".as_ref()).unwrap();
        dir.unlink("g".as_ref()).unwrap();
        assert!(dir.stat("g".as_ref()).unwrap().is_none());
        dir.check_writable().unwrap();
    }
}
