//! One daemon per data directory, said at once.
//!
//! sled locks its database too, but a locked database looks the same as one whose previous
//! owner (the daemon that just exited, whose flusher thread lingers) is about to let go, so the
//! store retries for five seconds before it gives up, silently. The daemon therefore first takes
//! an `flock` on the data directory itself, held for its whole life (the kernel releases it
//! however the process ends), and a second daemon stops at once, naming the holder's pid from
//! `/proc/locks`. Nothing is written into the directory: a store that is refused at start-up is
//! left exactly as it was found.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::Path;

use anyhow::{Context, bail};
use rustix::fs::{FlockOperation, flock};

/// Held for as long as the daemon runs; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _dir: File,
}

/// Creates `data_dir` (0700) if it is missing and locks it for this process, or says which
/// process has it.
pub fn lock(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let dir = File::open(data_dir)
        .with_context(|| format!("cannot open the data directory {}", data_dir.display()))?;
    match flock(&dir, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(DataDirLock { _dir: dir }),
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let holder = match holder(&dir) {
                Some(pid) => format!("bitsd (pid {pid})"),
                None => "another bitsd".to_string(),
            };
            bail!(
                "the data directory {} is in use by {holder}; stop it first, or give this one another --data-dir",
                data_dir.display()
            )
        }
        Err(e) => bail!("cannot lock the data directory {}: {e}", data_dir.display()),
    }
}

/// The pid holding an `flock` on `dir`, from `/proc/locks` (`1: FLOCK ADVISORY WRITE PID
/// MAJ:MIN:INODE 0 EOF`, the device numbers in hex).
fn holder(dir: &File) -> Option<u32> {
    let meta = dir.metadata().ok()?;
    let dev = meta.dev();
    let wanted =
        format!("{:02x}:{:02x}:{}", rustix::fs::major(dev), rustix::fs::minor(dev), meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, file, ..] if *file == wanted => pid.parse().ok(),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_released_one_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let held = lock(&data).unwrap();
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0, "nothing written");
        // flock is per open file description: a second open in this process conflicts too.
        let e = lock(&data).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "the data directory {} is in use by bitsd (pid {}); stop it first, or give this one another --data-dir",
                data.display(),
                std::process::id()
            )
        );
        drop(held);
        let _again = lock(&data).unwrap();
    }
}
