//! Paths and the file lifecycle around a [`crate::PartFile`]: where the temp file lives, checking
//! a destination when a file is added, moving the finished file into place atomically and
//! durably, and cleaning up a cancelled one.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::Access;

use crate::DiskError;

/// Longest file name most Linux file systems accept (NAME_MAX), in bytes.
const NAME_MAX: usize = 255;

/// The temp file next to the destination: `.<file name>.bitsd-<job id>-<index>.part` in the
/// destination's directory (same file system, so the final rename is atomic). A destination name
/// too long for the suffix is shortened so the temp name stays within NAME_MAX; the job id and
/// index keep it unique.
pub fn temp_path_for(dest: &Path, job: &str, index: u32) -> PathBuf {
    let suffix = format!(".bitsd-{job}-{index}.part");
    let name = dest.file_name().map_or(&b"download"[..], |n| n.as_bytes());
    let room = NAME_MAX.saturating_sub(1 + suffix.len());
    let name = shorten(name, room);
    let mut temp = Vec::with_capacity(1 + name.len() + suffix.len());
    temp.push(b'.');
    temp.extend_from_slice(name);
    temp.extend_from_slice(suffix.as_bytes());
    let temp = PathBuf::from(OsString::from_vec(temp));
    match dest.parent() {
        Some(dir) => dir.join(temp),
        None => temp,
    }
}

/// At most `max` bytes of `name`, not splitting a UTF-8 character of a UTF-8 name.
fn shorten(name: &[u8], max: usize) -> &[u8] {
    if name.len() <= max {
        return name;
    }
    match std::str::from_utf8(name) {
        Ok(text) => {
            let end = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            &name[..end]
        }
        Err(_) => &name[..max],
    }
}

/// One file for [`rename_all_into_place`].
#[derive(Clone, Debug)]
pub struct Move<'a> {
    pub temp: &'a Path,
    pub dest: &'a Path,
    pub mtime: Option<SystemTime>,
    /// The temp file's `symlink_metadata`, when the caller took it just before (Complete checks
    /// every temp file is there): saves a second lstat per file of a job of many files.
    pub found: Option<std::fs::Metadata>,
}

/// Files opened (times set, not yet synced) per round of [`rename_all_into_place`]: bounded so a
/// job of many files stays well inside the default limit of 1,024 open files.
const ROUND: usize = 128;

/// Completes files: each temp file gets its modification and access times (`mtime`, when set)
/// and is renamed onto its destination, atomically replacing any file there. The directory
/// syncs are left to the caller, who runs [`sync_parent_dirs`] once afterwards, before treating
/// the renames as durable. The temp files' bytes must already be synced (the durability rule).
/// In order, stops at the first failure: returns how many files were renamed (a prefix of
/// `moves`) and the error.
///
/// The times are set on the temp file and synced before its rename, so a file never appears at
/// its destination with other times, and the times are as durable as the data.
///
/// Why rounds of set-times, then fsyncs, then renames, rather than each file in turn: on a
/// journalling file system an fsync commits every metadata change made so far, so the first
/// fsync of a round carries the times of all its files and the rest find nothing left to
/// commit. File by file, each fsync would also carry the previous file's rename and cost a
/// journal commit of its own: most of Complete's time for a job of 1,000 small files.
pub fn rename_all_into_place(moves: &[Move<'_>]) -> (usize, Option<DiskError>) {
    let mut renamed = 0;
    for round in moves.chunks(ROUND) {
        let (ready, failure) = open_and_sync(round);
        for m in &round[..ready] {
            if let Err(e) = std::fs::rename(m.temp, m.dest) {
                return (renamed, Some(DiskError::from_io(m.dest, "rename into", e)));
            }
            renamed += 1;
        }
        if failure.is_some() {
            return (renamed, failure);
        }
    }
    (renamed, None)
}

/// Makes a round's temp files ready to rename, in order: a file whose times must change is
/// opened and has them set, then all of those are fsynced. Returns how many are ready (a prefix
/// of `round`) and the error that stopped the next one.
///
/// A regular file whose times are already right (or that has none to set) is not synced again:
/// its bytes were synced before they were recorded as filled (the durability rule), and a small
/// file had its times set before that sync ([`crate::PartFile::sync_with_times`]). That saves a
/// sync — on ext4 without a journal, a device cache flush — per file of a job of many files.
fn open_and_sync(round: &[Move<'_>]) -> (usize, Option<DiskError>) {
    let mut opened = Vec::with_capacity(round.len());
    let mut failure = None;
    for m in round {
        if times_settled(m) {
            opened.push(None);
            continue;
        }
        match open_with_times(m.temp, m.mtime) {
            Ok(file) => opened.push(Some(file)),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    for (k, file) in opened.iter().enumerate() {
        if let Some(Err(e)) = file.as_ref().map(File::sync_all) {
            return (k, Some(DiskError::from_io(round[k].temp, "sync", e)));
        }
    }
    (opened.len(), failure)
}

/// The temp file is a regular file (not a planted link: those take the open, which refuses
/// them) whose times need no change: both, as a read since they were set may have moved the
/// access time.
fn times_settled(m: &Move<'_>) -> bool {
    let settled = |meta: &std::fs::Metadata| {
        meta.is_file()
            && m.mtime
                .is_none_or(|t| meta.modified().ok() == Some(t) && meta.accessed().ok() == Some(t))
    };
    match &m.found {
        Some(meta) => settled(meta),
        None => std::fs::symlink_metadata(m.temp).is_ok_and(|meta| settled(&meta)),
    }
}

/// The temp file opened without following a link, with its times set (not yet synced).
fn open_with_times(temp: &Path, mtime: Option<SystemTime>) -> Result<File, DiskError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(crate::part_file::NOFOLLOW)
        .open(temp)
        .map_err(|e| DiskError::from_io(temp, "open", e))?;
    if let Some(time) = mtime {
        crate::part_file::set_times(&file, temp, time)?;
    }
    Ok(file)
}

/// fsyncs each distinct directory holding one of `dests`, once.
pub fn sync_parent_dirs<'a>(dests: impl IntoIterator<Item = &'a Path>) -> Result<(), DiskError> {
    let dirs: std::collections::BTreeSet<&Path> = dests.into_iter().map(parent_dir).collect();
    dirs.into_iter().try_for_each(sync_dir)
}

/// The directory holding `path` (`.` for a bare relative name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// fsyncs a directory, making a rename in it durable.
fn sync_dir(dir: &Path) -> Result<(), DiskError> {
    let handle = File::open(dir).map_err(|e| DiskError::from_io(dir, "open directory", e))?;
    match handle.sync_all() {
        Ok(()) => Ok(()),
        // Some file systems do not support fsync on a directory; nothing more can be done there.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            tracing::debug!(dir = %dir.display(), "directory fsync not supported");
            Ok(())
        }
        Err(e) => Err(DiskError::from_io(dir, "sync directory", e)),
    }
}

/// Deletes a temp file; a file that is already gone is fine.
pub fn remove_temp(temp: &Path) -> Result<(), DiskError> {
    match std::fs::remove_file(temp) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DiskError::from_io(temp, "remove", e)),
    }
}

/// Checks, when a file is added, that `dest` can be written later: it is absolute and names a
/// file (not a directory), its parent exists and is a directory, and this process may create
/// files there. A missing or non-directory parent is [`DiskError::NotFound`] (naming the parent).
pub fn check_destination(dest: &Path) -> Result<(), DiskError> {
    let invalid = |reason| Err(DiskError::InvalidPath { path: dest.to_path_buf(), reason });
    if !dest.is_absolute() {
        return invalid("the destination must be an absolute path");
    }
    if dest.as_os_str().as_bytes().ends_with(b"/") || dest.file_name().is_none() {
        return invalid("the destination must name a file, not a directory");
    }
    let dir = parent_dir(dest);
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(DiskError::NotFound { path: dir.to_path_buf() }),
        Err(e) => return Err(DiskError::from_io(dir, "inspect", e)),
    }
    if std::fs::metadata(dest).is_ok_and(|meta| meta.is_dir()) {
        return invalid("the destination is an existing directory");
    }
    // AT_EACCESS: checked with the file-system identity this thread runs as (a job's owner, see
    // `Identity::run`), not the daemon's real uid as plain access(2) would.
    rustix::fs::accessat(
        rustix::fs::CWD,
        dir,
        Access::WRITE_OK | Access::EXEC_OK,
        rustix::fs::AtFlags::EACCESS,
    )
    .map_err(|e| DiskError::from_io(dir, "check write access to", e.into()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;
    use crate::PartFile;

    #[test]
    fn temp_path_format() {
        assert_eq!(
            temp_path_for(Path::new("/home/u/file.iso"), "5c4f-id", 3),
            PathBuf::from("/home/u/.file.iso.bitsd-5c4f-id-3.part")
        );
        assert_eq!(temp_path_for(Path::new("f"), "j", 0), PathBuf::from(".f.bitsd-j-0.part"));
        let job = "0b6e7c36-7d7a-4c3e-9d2f-4cba8d1f2a10";
        let long = format!("/d/{}", "é".repeat(127)); // 254 bytes
        let temp = temp_path_for(Path::new(&long), job, 199);
        let name = temp.file_name().unwrap();
        assert!(name.len() <= NAME_MAX, "{}", name.len());
        let name = name.to_str().unwrap();
        assert!(name.starts_with(".é") && name.ends_with(&format!(".bitsd-{job}-199.part")));
        assert_eq!(temp.parent(), Some(Path::new("/d")));
    }

    fn write_temp(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
        let temp = dir.join(name);
        let part = PartFile::open(&temp).unwrap();
        part.write_at(0, body).unwrap();
        part.sync().unwrap();
        temp
    }

    /// One file through [`rename_all_into_place`] and the directory sync.
    fn finalize(temp: &Path, dest: &Path, mtime: Option<SystemTime>) -> Result<(), DiskError> {
        let (_, error) = rename_all_into_place(&[Move { temp, dest, mtime, found: None }]);
        error.map_or(Ok(()), Err)?;
        sync_parent_dirs([dest])
    }

    #[test]
    fn finalize_moves_the_file_and_sets_its_times() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let temp = write_temp(dir.path(), ".out.bin.part", b"payload");
        let mtime = SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
        finalize(&temp, &dest, Some(mtime)).unwrap();
        assert!(!temp.exists());
        // Times first: reading the file could move its access time.
        let meta = std::fs::metadata(&dest).unwrap();
        assert_eq!(meta.modified().unwrap(), mtime);
        assert_eq!(meta.accessed().unwrap(), mtime);
        assert_eq!(std::fs::read(&dest).unwrap(), b"payload");
    }

    /// A small file gets its times with its one sync; Complete then has nothing to set or sync,
    /// and the times still arrive, the access time too if a read moved it meanwhile.
    #[test]
    fn times_set_with_the_sync_arrive_at_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let mtime = SystemTime::UNIX_EPOCH + Duration::new(1_500_000_000, 7);
        for moved_atime in [false, true] {
            let temp = dir.path().join(format!(".{moved_atime}.part"));
            let part = PartFile::open(&temp).unwrap();
            part.write_at(0, b"small").unwrap();
            part.sync_with_times(mtime).unwrap();
            let meta = std::fs::metadata(&temp).unwrap();
            assert_eq!((meta.modified().unwrap(), meta.accessed().unwrap()), (mtime, mtime));
            if moved_atime {
                let later = std::fs::FileTimes::new().set_accessed(mtime + Duration::from_secs(60));
                std::fs::File::options().write(true).open(&temp).unwrap().set_times(later).unwrap();
            }
            let dest = dir.path().join(format!("{moved_atime}.bin"));
            finalize(&temp, &dest, Some(mtime)).unwrap();
            let meta = std::fs::metadata(&dest).unwrap();
            assert_eq!(meta.modified().unwrap(), mtime, "moved atime: {moved_atime}");
            assert_eq!(meta.accessed().unwrap(), mtime, "moved atime: {moved_atime}");
            assert_eq!(std::fs::read(&dest).unwrap(), b"small");
        }
    }

    #[test]
    fn finalize_replaces_an_existing_destination() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        std::fs::write(&dest, b"an older, longer version").unwrap();
        let temp = write_temp(dir.path(), "t.part", b"new");
        let before = SystemTime::now() - Duration::from_secs(60);
        finalize(&temp, &dest, None).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert!(!temp.exists());
        assert!(std::fs::metadata(&dest).unwrap().modified().unwrap() > before);
    }

    #[test]
    fn finalize_without_a_temp_file_fails_and_leaves_dest() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        std::fs::write(&dest, b"keep").unwrap();
        let missing = dir.path().join("gone.part");
        let err = finalize(&missing, &dest, None).unwrap_err();
        assert!(matches!(&err, DiskError::NotFound { path } if *path == missing), "{err:?}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"keep");
    }

    /// More files than one round, with a missing temp file past the first round: every file
    /// before it is in place with its times, it and every later one is untouched.
    #[test]
    fn rename_all_stops_at_the_first_failure_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let n = ROUND + 10;
        let broken = ROUND + 3;
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
        let names: Vec<(PathBuf, PathBuf)> = (0..n)
            .map(|i| (dir.path().join(format!(".f{i}.part")), dir.path().join(format!("f{i}"))))
            .collect();
        for (i, (temp, _)) in names.iter().enumerate() {
            if i != broken {
                write_temp(dir.path(), temp.file_name().unwrap().to_str().unwrap(), &[i as u8]);
            }
        }
        let moves: Vec<Move<'_>> = names
            .iter()
            .map(|(temp, dest)| Move { temp, dest, mtime: Some(mtime), found: None })
            .collect();
        let (renamed, error) = rename_all_into_place(&moves);
        assert_eq!(renamed, broken);
        assert!(matches!(&error, Some(DiskError::NotFound { path }) if *path == names[broken].0));
        for (i, (temp, dest)) in names.iter().enumerate() {
            if i < broken {
                assert!(!temp.exists(), "{i}");
                assert_eq!(std::fs::metadata(dest).unwrap().modified().unwrap(), mtime, "{i}");
                assert_eq!(std::fs::read(dest).unwrap(), [i as u8]);
            } else {
                assert!(!dest.exists(), "{i}");
                assert_eq!(temp.exists(), i != broken, "{i}");
            }
        }
        let (rest, error) = rename_all_into_place(&moves[broken + 1..]);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(rest, n - broken - 1);
    }

    /// The metadata a caller found is what decides, without a second lstat: it names the times
    /// the file had then.
    #[test]
    fn times_settled_answers_from_the_metadata_the_caller_found() {
        let dir = tempfile::tempdir().unwrap();
        let mtime = SystemTime::UNIX_EPOCH + Duration::new(1_500_000_000, 7);
        let temp = write_temp(dir.path(), ".t.part", b"small");
        let before = temp.symlink_metadata().unwrap();
        PartFile::open(&temp).unwrap().sync_with_times(mtime).unwrap();
        let after = temp.symlink_metadata().unwrap();
        let dest = dir.path().join("t");
        let m = |found| Move { temp: &temp, dest: &dest, mtime: Some(mtime), found };
        assert!(times_settled(&m(None)), "looked up itself");
        assert!(times_settled(&m(Some(after))));
        assert!(!times_settled(&m(Some(before))), "did not use the metadata it was given");
        let link = dir.path().join(".link.part");
        std::os::unix::fs::symlink(&temp, &link).unwrap();
        let found = Some(link.symlink_metadata().unwrap());
        assert!(!times_settled(&Move { temp: &link, dest: &dest, mtime: Some(mtime), found }));
    }

    /// A link planted at the temp file's name is never moved into place, whether or not the
    /// file has times to set.
    #[test]
    fn a_planted_link_is_not_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let victim = write_temp(dir.path(), "victim", b"precious");
        for mtime in [None, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000))] {
            let temp = dir.path().join(".out.part");
            let _ = std::fs::remove_file(&temp);
            std::os::unix::fs::symlink(&victim, &temp).unwrap();
            let dest = dir.path().join("out");
            assert!(finalize(&temp, &dest, mtime).is_err(), "{mtime:?}");
            assert!(dest.symlink_metadata().is_err(), "{mtime:?}: something was moved");
            assert!(temp.symlink_metadata().unwrap().is_symlink());
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn remove_temp_tolerates_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let temp = write_temp(dir.path(), "t.part", b"x");
        remove_temp(&temp).unwrap();
        assert!(!temp.exists());
        remove_temp(&temp).unwrap();
        // Removing a directory is a real error, not "already gone".
        let err = remove_temp(dir.path()).unwrap_err();
        assert_eq!(err.path(), dir.path());
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn check_destination_cases() {
        let dir = tempfile::tempdir().unwrap();
        check_destination(&dir.path().join("new.bin")).unwrap();

        let err = check_destination(Path::new("relative/file.bin")).unwrap_err();
        assert!(matches!(err, DiskError::InvalidPath { .. }), "{err:?}");
        assert_eq!(err.code(), bits_core::Code::E_INVALIDARG);
        for bad in ["/", "/tmp/..", "/tmp/dir/"] {
            let err = check_destination(Path::new(bad)).unwrap_err();
            assert!(matches!(err, DiskError::InvalidPath { .. }), "{bad}: {err:?}");
        }
        let err = check_destination(dir.path()).unwrap_err();
        assert!(matches!(err, DiskError::InvalidPath { .. }), "{err:?}");

        let missing = dir.path().join("no-such-dir");
        let err = check_destination(&missing.join("f.bin")).unwrap_err();
        assert!(matches!(&err, DiskError::NotFound { path } if *path == missing), "{err:?}");
        assert_eq!(err.code(), bits_core::Code::ERROR_PATH_NOT_FOUND);

        // A regular file as the "parent directory": fails for every user, root included.
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let err = check_destination(&file.join("f.bin")).unwrap_err();
        assert!(matches!(&err, DiskError::NotFound { path } if *path == file), "{err:?}");
        let err = check_destination(&file.join("sub/f.bin")).unwrap_err();
        assert!(matches!(err, DiskError::NotFound { .. }), "{err:?}");
    }

    #[test]
    fn check_destination_in_a_read_only_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let result = check_destination(&ro.join("f.bin"));
        // Could we really create a file there? Root can, an ordinary user cannot; the check
        // must agree with reality either way.
        let probe = std::fs::File::create(ro.join("probe"));
        if is_root() {
            assert!(probe.is_ok());
            result.unwrap();
        } else {
            assert!(probe.is_err());
            let err = result.unwrap_err();
            assert!(matches!(&err, DiskError::AccessDenied { path } if *path == ro), "{err:?}");
            assert_eq!(err.code(), bits_core::Code::E_ACCESSDENIED);
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}
