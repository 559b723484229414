//! Power cuts for tests: a FUSE file system, held in memory, that keeps apart what a program has
//! made durable and what it has not, and on command ([`PowerCut::cut`]) forgets everything that
//! was not, as a power loss would. The idea is LazyFS's (the FUSE file system Jepsen finds lost
//! writes with). SIGKILL keeps the page cache, so only this can show a missing or misplaced sync.
//!
//! # The model: what survives a cut
//!
//! Each inode has a durable image and a current one; a cut puts every inode back to its durable
//! image and drops the inodes that no durable directory entry reaches from the root.
//!
//! - **File data and size** written since the file's last `fsync`/`fdatasync` are volatile: a
//!   cut returns the bytes and the length (`truncate`, `fallocate`, writes past the end) to what
//!   they were at that sync. `sync_file_range` is no FUSE request, so it makes nothing durable —
//!   as on a real power loss, where it only started write-back (sled 0.34's own flush is one).
//! - **Mode, owner and times** become durable with `fsync`, not with `fdatasync` (POSIX only asks
//!   fdatasync to keep what reading the data back needs). A new inode starts durable as it was
//!   created (empty, its owner and mode): a file system writes an inode with the entry naming it.
//! - **Directory entries** (create, mkdir, unlink, rmdir, rename in or out) are volatile until
//!   that directory is fsynced. A file's own fsync does not make its name durable.
//! - **A rename** touches two entries, each durable only with its own directory's fsync. ext4
//!   journals both halves together, but POSIX promises nothing of the kind, so this models the
//!   weaker case: after a cut with only the target directory synced the file has both names; with
//!   only the source synced it has neither and is gone. Within one directory (bitsd's temp file →
//!   destination) one fsync of that directory makes it durable.
//! - `close` makes nothing durable; nor does unmounting (the test decides with
//!   [`PowerCut::sync_all`]).
//!
//! # The kernel's caches
//!
//! Entries and attributes are given to the kernel with a lifetime of zero and every file is opened
//! `direct_io`, so no read is served from the page cache: after a cut the next lookup, `stat` or
//! `read` asks this file system and sees the durable image. (The other way, unmounting and
//! mounting again at each cut, would fail while any process still had a file open and costs a
//! mount per cut.) A cut is meant to come while nothing has a file open on the mount (the program
//! under test was SIGKILLed and reaped), as after a real power loss; an inode a process still has
//! open may be gone.
//!
//! Locks (`flock`, `fcntl`) are not forwarded: the kernel keeps them locally, which is all one
//! machine needs. Only regular files and directories exist (no links, devices, sockets or FIFOs).
//! Mounting needs root (`mount(2)` directly, no `fusermount`) and `/dev/fuse`; [`unavailable`]
//! says why this machine cannot, and [`mount_for_test`] fails the test with that reason.

mod fs;
mod tree;

use std::fmt;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use tree::CutReport;

use crate::tree::Tree;

/// A mounted power-cut file system; dropping it unmounts it (and whatever was volatile is lost
/// with the rest).
pub struct PowerCut {
    tree: Arc<Mutex<Tree>>,
    session: Option<fuser::BackgroundSession>,
    root: PathBuf,
}

impl fmt::Debug for PowerCut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PowerCut").field("root", &self.root).finish_non_exhaustive()
    }
}

/// Why this machine cannot mount the file system (not root, no `/dev/fuse`), or `None`.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("the power-cut file system mounts with mount(2), which needs root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing (no FUSE in this kernel or container)".into());
    }
    None
}

impl PowerCut {
    /// Mounts an empty file system at `at` (an existing, empty directory), its root owned by the
    /// caller with mode 0755. Every user may use it; the kernel checks modes
    /// (`default_permissions`), as bitsd works in a job owner's name.
    pub fn mount(at: &Path) -> io::Result<PowerCut> {
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        let tree = Arc::new(Mutex::new(Tree::new(uid, gid)));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("bits-powercut".into()),
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
        ];
        config.acl = fuser::SessionACL::All;
        config.n_threads = Some(2);
        let session = fuser::spawn_mount(fs::PowerCutFs { tree: Arc::clone(&tree) }, at, &config)?;
        Ok(PowerCut { tree, session: Some(session), root: at.to_path_buf() })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn tree(&self) -> std::sync::MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The power cut: forgets everything volatile (see the crate docs). Call it while no process
    /// has a file open on the mount.
    pub fn cut(&self) -> CutReport {
        self.tree().cut()
    }

    /// Makes everything durable, as if every file and directory had been fsynced.
    pub fn sync_all(&self) {
        self.tree().sync_all();
    }
}

impl Drop for PowerCut {
    fn drop(&mut self) {
        if let Some(session) = self.session.take()
            && let Err(e) = session.umount_and_join()
        {
            // Drop cannot fail; say which mount is left behind.
            eprintln!("bits-powercut: cannot unmount {}: {e}", self.root.display());
        }
    }
}

/// A mount in a fresh temp dir, for one test: unmounted, then the dir removed, when dropped.
#[derive(Debug)]
pub struct TestMount {
    // Declared first so it is dropped (unmounted) before the directory goes.
    fs: PowerCut,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestMount {
    type Target = PowerCut;

    fn deref(&self) -> &PowerCut {
        &self.fs
    }
}

/// A [`TestMount`]. Panics with the reason where this machine cannot mount one
/// ([`unavailable`]): a power-cut test fails there, it never passes silently (CI runs as root).
pub fn mount_for_test() -> io::Result<TestMount> {
    if let Some(why) = unavailable() {
        panic!(
            "a power-cut test cannot run here: {why}; run it as root with /dev/fuse, as CI does"
        );
    }
    let dir = tempfile::Builder::new().prefix("bits-powercut-").tempdir()?;
    let fs = PowerCut::mount(dir.path())?;
    Ok(TestMount { fs, _dir: dir })
}

/// Bytes a program said were durable that are not there after a cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub path: PathBuf,
    /// The first offset of the span that is missing or differs.
    pub offset: u64,
    pub len: u64,
    pub why: String,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: [{}, {}) was reported durable but {}",
            self.path.display(),
            self.offset,
            self.offset + self.len,
            self.why
        )
    }
}

impl std::error::Error for Lost {}

/// The one check of "acknowledged means on disk" that the self-tests and the power-cut loop share:
/// every `(offset, bytes)` a program reported durable is in the file at `path`, byte for byte.
pub fn check_durable<'a>(
    path: &Path,
    reported: impl IntoIterator<Item = (u64, &'a [u8])>,
) -> Result<(), Lost> {
    let lost =
        |offset: u64, len: u64, why: String| Lost { path: path.to_path_buf(), offset, len, why };
    let mut file = None;
    for (offset, want) in reported {
        let len = want.len() as u64;
        if len == 0 {
            continue;
        }
        if file.is_none() {
            file = Some(
                std::fs::File::open(path)
                    .map_err(|e| lost(offset, len, format!("the file cannot be opened: {e}")))?,
            );
        }
        let Some(f) = file.as_ref() else { continue };
        let mut got = vec![0u8; want.len()];
        if let Err(e) = f.read_exact_at(&mut got, offset) {
            return Err(lost(
                offset,
                len,
                format!(
                    "reading it failed: {e} (the file holds {} bytes)",
                    f.metadata().map(|m| m.len()).unwrap_or(0)
                ),
            ));
        }
        if got != want {
            let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0) as u64;
            return Err(lost(offset, len, format!("byte {} differs", offset + first)));
        }
    }
    Ok(())
}
