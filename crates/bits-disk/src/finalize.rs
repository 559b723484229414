//! Paths and the file lifecycle around a [`crate::PartFile`]: where the temp file lives, checking
//! a destination when a file is added, moving the finished file into place atomically and
//! durably, and cleaning up a cancelled one.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bits_core::TempId;
use rustix::fs::{FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::DiskError;
use crate::dir::{Dir, split};

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
    /// In the temp file's directory (the temp name is made from it, see [`temp_path_for`]).
    pub dest: &'a Path,
    pub mtime: Option<SystemTime>,
    /// The temp file the job created: a file of another inode or owner at its name (replaced
    /// behind our back) is not moved into place. `None` for a record from before it was kept.
    pub made: Option<TempId>,
    /// The directory AddFile resolved (its inode number), when known: see `Dir::of_pinned`.
    pub dir_ino: Option<u64>,
    /// The temp file's `lstat` ([`Dirs::stat`]), when the caller took it just before (Complete
    /// checks every temp file is there): saves a second one per file of a job of many files.
    pub found: Option<Stat>,
}

/// Files opened (times set, not yet synced) per round of [`rename_all_into_place`]: bounded so a
/// job of many files stays well inside the default limit of 1,024 open files.
const ROUND: usize = 128;

/// Completes files: each temp file gets its modification and access times (`mtime`, when set)
/// and is renamed onto its destination, atomically replacing any file there. The directory
/// syncs are left to the caller, who runs [`sync_parent_dirs`] once afterwards, before treating
/// the renames as durable. The temp files' bytes must already be synced (the durability rule).
/// In order, stops at the first failure: returns how many files were renamed (a prefix of
/// `moves`) and the error. Every file is reached through its directory opened without following
/// a link (see `dir.rs`), each directory once.
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
    let mut dirs = Dirs::default();
    let mut renamed = 0;
    for round in moves.chunks(ROUND) {
        let (ready, failure) = open_and_sync(&mut dirs, round);
        for m in &round[..ready] {
            let moved = dirs.of(m.temp).and_then(|(dir, temp)| {
                let (_, dest) = split(m.dest)?;
                if m.dest.parent() != m.temp.parent() {
                    return Err(DiskError::InvalidPath {
                        path: m.dest.to_path_buf(),
                        reason: "the temp file is not in the destination's directory",
                    });
                }
                dir.rename(temp, dest)
            });
            if let Err(e) = moved {
                return (renamed, Some(e));
            }
            renamed += 1;
        }
        if failure.is_some() {
            return (renamed, failure);
        }
    }
    (renamed, None)
}

/// Directories opened by one call, each once.
#[derive(Default)]
pub struct Dirs(Vec<Dir>);

impl Dirs {
    /// A temp file's `lstat`, reached without following a link (see `dir.rs`), each directory
    /// opened once: Complete looks at every temp file of a job of thousands first. `dir_ino`: the
    /// directory AddFile resolved, when known; `None` when the file is gone.
    pub fn stat(&mut self, temp: &Path, dir_ino: Option<u64>) -> Result<Option<Stat>, DiskError> {
        let (dir, name) = self.of(temp)?;
        dir.check_pinned(dir_ino)?;
        dir.stat(name)
    }

    /// The open directory holding `file`, and its name there.
    fn of<'p>(&mut self, file: &'p Path) -> Result<(&Dir, &'p OsStr), DiskError> {
        let (path, name) = split(file)?;
        let at = match self.0.iter().position(|d| d.path() == path) {
            Some(at) => at,
            None => {
                self.0.push(Dir::open(path)?);
                self.0.len() - 1
            }
        };
        Ok((&self.0[at], name))
    }
}

/// Makes a round's temp files ready to rename, in order: each is checked to be the file the
/// job created; one whose times must change is opened and has them set, then all of those are
/// fsynced. Returns how many are ready (a prefix of `round`) and the error that stopped the next.
///
/// A regular file whose times are already right (or that has none to set) is not synced again:
/// its bytes were synced before they were recorded as filled (the durability rule), and a small
/// file had its times set before that sync ([`crate::PartFile::sync_with_times`]). That saves a
/// sync — on ext4 without a journal, a device cache flush — per file of a job of many files.
fn open_and_sync(dirs: &mut Dirs, round: &[Move<'_>]) -> (usize, Option<DiskError>) {
    let mut opened = Vec::with_capacity(round.len());
    let mut failure = None;
    for m in round {
        match ready(dirs, m) {
            Ok(file) => opened.push(file),
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

/// One temp file checked and, if its times must change, opened with them set (not yet synced).
fn ready(dirs: &mut Dirs, m: &Move<'_>) -> Result<Option<File>, DiskError> {
    let (dir, name) = dirs.of(m.temp)?;
    dir.check_pinned(m.dir_ino)?;
    let stat = match m.found {
        Some(stat) => stat,
        None => {
            dir.stat(name)?.ok_or_else(|| DiskError::NotFound { path: m.temp.to_path_buf() })?
        }
    };
    dir.check_made(m.temp, &stat, m.made)?;
    if times_settled(&stat, m.mtime) {
        return Ok(None);
    }
    let fd = dir
        .open_at(name, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())
        .map_err(|e| DiskError::from_io(m.temp, "open", e.into()))?;
    let file = File::from(fd);
    // The file opened is the one checked (not swapped in between).
    let now =
        rustix::fs::fstat(&file).map_err(|e| DiskError::from_io(m.temp, "inspect", e.into()))?;
    dir.check_made(m.temp, &now, m.made.or(Some(TempId { ino: stat.st_ino, uid: stat.st_uid })))?;
    if let Some(time) = m.mtime {
        crate::part_file::set_times(&file, m.temp, time)?;
    }
    Ok(Some(file))
}

/// The temp file's times need no change: both, as a read since they were set may have moved the
/// access time.
fn times_settled(stat: &Stat, mtime: Option<SystemTime>) -> bool {
    let Some(time) = mtime else { return true };
    let Ok(since) = time.duration_since(SystemTime::UNIX_EPOCH) else { return false };
    let (secs, nanos) = (since.as_secs() as i64, i64::from(since.subsec_nanos()));
    stat.st_mtime == secs
        && stat.st_mtime_nsec as i64 == nanos
        && stat.st_atime == secs
        && stat.st_atime_nsec as i64 == nanos
}

/// The length of the temp file the job created (`made`, when known), reached without following
/// a link (see `dir.rs`); `None` when it (or its directory) is gone, or something else is at its
/// name. Any other failure (no permission, a link in the path, no fd left) is an error: the
/// file's bytes may well be there.
pub fn temp_len(
    temp: &Path,
    dir_ino: Option<u64>,
    made: Option<TempId>,
) -> Result<Option<u64>, DiskError> {
    let (dir, name) = match Dir::of_pinned(temp, dir_ino) {
        Ok(found) => found,
        Err(DiskError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let stat = dir.stat(name)?;
    Ok(stat.filter(|s| dir.check_made(temp, s, made).is_ok()).map(|s| s.st_size as u64))
}

/// fsyncs each distinct directory holding one of `dests`, once.
pub fn sync_parent_dirs<'a>(dests: impl IntoIterator<Item = &'a Path>) -> Result<(), DiskError> {
    let dirs: std::collections::BTreeSet<&Path> =
        dests.into_iter().map(|d| split(d).map(|(dir, _)| dir)).collect::<Result<_, _>>()?;
    dirs.into_iter().try_for_each(|dir| Dir::open(dir)?.sync())
}

/// Deletes a temp file; a file that is already gone is fine. A file that is not the one the
/// job created (`made`) is left alone ([`DiskError::NotOurs`]).
pub fn remove_temp(
    temp: &Path,
    dir_ino: Option<u64>,
    made: Option<TempId>,
) -> Result<(), DiskError> {
    let (dir, name) = Dir::of_pinned(temp, dir_ino)?;
    match dir.stat(name)? {
        None => Ok(()),
        Some(stat) => {
            dir.check_made(temp, &stat, made)?;
            dir.unlink(name)
        }
    }
}

/// Whether the calling thread's identity may write `temp` (if it exists) and create files in
/// its directory: TakeOwnership's check of the new owner. Opening is the check, as the later
/// writes will meet it.
pub fn check_temp_writable(temp: &Path, dir_ino: Option<u64>) -> Result<(), DiskError> {
    let (dir, name) = Dir::of_pinned(temp, dir_ino)?;
    dir.check_writable()?;
    match dir.open_at(name, OFlags::WRONLY | OFlags::NONBLOCK, Mode::empty()) {
        Ok(_) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(DiskError::from_io(temp, "open", e.into())),
    }
}

/// The part of [`resolve_destinations`] that needs no file system: an absolute path naming a
/// file.
pub fn check_destination_name(dest: &Path) -> Result<(), DiskError> {
    let invalid = |reason| Err(DiskError::InvalidPath { path: dest.to_path_buf(), reason });
    if !dest.is_absolute() {
        return invalid("the destination must be an absolute path");
    }
    if dest.as_os_str().as_bytes().ends_with(b"/") || dest.file_name().is_none() {
        return invalid("the destination must name a file, not a directory");
    }
    Ok(())
}

/// AddFile's checks and resolution of its destinations, in order: each is absolute and names a
/// file (not an existing directory), its directory exists, and the calling thread's identity (a
/// job's owner, see `Identity::run`) may create files there. A missing or non-directory parent
/// is [`DiskError::NotFound`] (naming it). Returns each destination with its directory's links
/// resolved, and that directory's inode number, which later operations check (see `dir.rs`).
/// Each directory is resolved and checked once, however many files go into it.
pub fn resolve_destinations(dests: &[PathBuf]) -> Result<Vec<(PathBuf, u64)>, DiskError> {
    let mut dirs: HashMap<&Path, Dir> = HashMap::new();
    let mut resolved = Vec::with_capacity(dests.len());
    for dest in dests {
        check_destination_name(dest)?;
        let (given, name) = split(dest)?;
        let dir = match dirs.entry(given) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => {
                let dir = crate::dir::resolve_dir(given)?;
                // AT_EACCESS: as the file-system identity this thread runs as, not the daemon's
                // real uid as plain access(2) would.
                dir.check_writable()?;
                new.insert(dir)
            }
        };
        if dir
            .stat(name)?
            .is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory)
        {
            return Err(DiskError::InvalidPath {
                path: dest.clone(),
                reason: "the destination is an existing directory",
            });
        }
        resolved.push((dir.path().join(name), dir.ino()));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;
    use crate::PartFile;

    fn uid() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    /// AddFile's checks of one destination.
    fn check_destination(dest: &Path) -> Result<(), DiskError> {
        resolve_destinations(&[dest.to_path_buf()]).map(drop)
    }

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
        let part = PartFile::create(&temp, None, 0o644, uid()).unwrap();
        part.write_at(0, body).unwrap();
        part.sync().unwrap();
        temp
    }

    /// One file through [`rename_all_into_place`] and the directory sync.
    fn finalize(temp: &Path, dest: &Path, mtime: Option<SystemTime>) -> Result<(), DiskError> {
        let (_, error) = rename_all_into_place(&[Move {
            temp,
            dest,
            mtime,
            made: None,
            dir_ino: None,
            found: None,
        }]);
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
            let part = PartFile::create(&temp, None, 0o644, uid()).unwrap();
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
            .map(|(temp, dest)| Move {
                temp,
                dest,
                mtime: Some(mtime),
                made: None,
                dir_ino: None,
                found: None,
            })
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
        let before = Dirs::default().stat(&temp, None).unwrap().unwrap();
        let part = PartFile::reopen(&temp, None, None, uid()).unwrap().unwrap();
        part.sync_with_times(mtime).unwrap();
        let after = Dirs::default().stat(&temp, None).unwrap().unwrap();
        assert!(times_settled(&after, Some(mtime)));
        assert!(!times_settled(&before, Some(mtime)), "did not use the metadata it was given");
        assert!(times_settled(&before, None), "no times to set");
    }

    /// Only the temp file the job created is moved into place or deleted: another file put at
    /// its name (same name, another inode) is left where it is.
    #[test]
    fn a_replaced_temp_file_is_neither_moved_nor_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join(".t.part");
        // Held open, so the planted file cannot get the same inode number.
        let ours = PartFile::create(&temp, None, 0o600, uid()).unwrap();
        let made = ours.id();
        std::fs::remove_file(&temp).unwrap();
        std::fs::write(dir.path().join("other"), b"planted").unwrap();
        std::fs::rename(dir.path().join("other"), &temp).unwrap();
        let dest = dir.path().join("t");
        let m = Move {
            temp: &temp,
            dest: &dest,
            mtime: None,
            made: Some(made),
            dir_ino: None,
            found: None,
        };
        let (renamed, error) = rename_all_into_place(&[m]);
        assert_eq!(renamed, 0);
        assert!(matches!(error, Some(DiskError::NotOurs { .. })), "{error:?}");
        assert!(!dest.exists());
        let err = remove_temp(&temp, None, Some(made)).unwrap_err();
        assert!(matches!(err, DiskError::NotOurs { .. }), "{err:?}");
        assert_eq!(std::fs::read(&temp).unwrap(), b"planted");
        remove_temp(&temp, None, None).unwrap();
        assert!(!temp.exists());
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
        remove_temp(&temp, None, None).unwrap();
        assert!(!temp.exists());
        remove_temp(&temp, None, None).unwrap();
        // Removing a directory is a real error, not "already gone".
        let err = remove_temp(dir.path(), None, None).unwrap_err();
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
