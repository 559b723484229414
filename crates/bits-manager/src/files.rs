//! Operations on a job's files: adding them (AddFile, AddFileWithRanges, AddFileSet — all
//! checked before any is added), changing where they come from (SetRemoteName,
//! ReplaceRemotePrefix) and steering on-demand downloads (UpdateDownloadPosition).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bits_core::job::{MAX_FILES_PER_JOB, MAX_RANGES_PER_FILE};
use bits_core::{
    BitsError, ByteRange, Code, Event, JobFile, JobId, RangeSet, Validator, transition,
    validate_static_ranges,
};

use crate::access::{as_owner, run_blocking};
use crate::errors::disk_error;
use crate::handle::Manager;
use crate::paths::PathIndex;
use crate::setters::Scope;
use crate::table::{Entry, Table, lookup_mut, lookup_mut_check};
use crate::types::Caller;
use crate::validate;

/// One file to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewFile {
    pub remote_url: String,
    pub local_path: PathBuf,
    /// Static ranges in caller order (AddFileWithRanges); `None` for the whole file.
    pub ranges: Option<Vec<ByteRange>>,
    /// bitsd extension: the SHA-256 the local file must have (64 hex digits, either case).
    pub sha256: Option<String>,
}

impl Manager {
    /// AddFile (`ranges` `None`) or AddFileWithRanges. Returns the new file's index.
    pub async fn add_file(
        &self,
        caller: Caller,
        id: JobId,
        remote_url: &str,
        local_path: &Path,
        ranges: Option<Vec<ByteRange>>,
    ) -> Result<u32, BitsError> {
        let file = NewFile {
            remote_url: remote_url.to_string(),
            local_path: local_path.to_path_buf(),
            ranges,
            sha256: None,
        };
        let indexes = self.add_files(caller, id, vec![file]).await?;
        Ok(indexes[0])
    }

    /// AddFileSet and the single-file adds: every file is checked (spec §3 order: lookup, state,
    /// syntax, quota, file system) before any is added, so a bad element adds nothing.
    pub async fn add_files(
        &self,
        caller: Caller,
        id: JobId,
        mut files: Vec<NewFile>,
    ) -> Result<Vec<u32>, BitsError> {
        let (n_files, owner_uid) = {
            let table = self.table();
            let entry = lookup_mut_check(&table, caller, id)?;
            transition(entry.job().state, Event::Modify)?;
            (entry.job().files.len(), entry.job().owner_uid)
        };
        if files.is_empty() {
            return Err(BitsError::new(Code::E_INVALIDARG, "no files given"));
        }
        for file in &mut files {
            if let Some(digest) = &file.sha256 {
                file.sha256 = Some(bits_core::parse_sha256(digest)?);
            }
        }
        // Sets, not pairwise comparisons: a file set may hold thousands of files.
        let mut seen: HashSet<&Path> = HashSet::with_capacity(files.len());
        for file in &files {
            if let Some(ranges) = &file.ranges {
                let limit = if caller.is_admin() { usize::MAX } else { MAX_RANGES_PER_FILE };
                validate_static_ranges(ranges, limit)?;
            }
            validate::remote_url(&file.remote_url)?;
            validate::local_path(&file.local_path)?;
            validate::temp_path(&file.local_path, id)?;
            if !seen.insert(file.local_path.as_path()) {
                return Err(duplicate_path(&file.local_path));
            }
        }
        if !caller.is_admin() && n_files + files.len() > MAX_FILES_PER_JOB {
            return Err(too_many_files(n_files, files.len()));
        }
        let dests: Vec<PathBuf> = files.iter().map(|f| f.local_path.clone()).collect();
        // As the owner (spec §9): a directory the owner may not write is refused here, whoever
        // the daemon runs as. (An ownership change meanwhile is refused below.) Each directory's
        // symbolic links are followed this once, as the owner; the job keeps the resolved path
        // and never follows a link again (see bits-disk's dir.rs).
        let owner = self.owner_identity(owner_uid);
        let (resolved, mode) = run_blocking(move || {
            // The caller's umask, from /proc: as the daemon, which may see processes the owner
            // may not (an administrator's, under hidepid).
            let mode = caller.file_mode();
            let resolved =
                as_owner(&owner, || bits_disk::resolve_destinations(&dests).map_err(disk_error))?;
            Ok((resolved, mode))
        })
        .await?;
        let (resolved, dir_inos): (Vec<PathBuf>, Vec<u64>) = resolved.into_iter().unzip();
        let mut seen: HashSet<&Path> = HashSet::with_capacity(files.len());
        if let Some(dup) = resolved.iter().find(|dest| !seen.insert(dest.as_path())) {
            return Err(duplicate_path(dup));
        }
        // A link may lead somewhere longer: the path the job keeps must fit the limits too.
        for dest in &resolved {
            validate::local_path(dest)?;
            validate::temp_path(dest, id)?;
        }
        let files: Vec<NewFile> = files
            .into_iter()
            .zip(resolved)
            .map(|(file, local_path)| NewFile { local_path, ..file })
            .collect();

        // One add at a time per job (see `Entry::adding`).
        let adding = lookup_mut_check(&self.table(), caller, id)?.adding();
        let _adding = adding.lock_owned().await;
        let hashes: Vec<u64> = files.iter().map(|f| PathIndex::hash(&f.local_path)).collect();
        let ranges: usize = files.iter().map(|f| f.ranges.as_ref().map_or(0, Vec::len)).sum();
        let large = files.len() > LARGE_ADD_FILES || ranges > LARGE_ADD_RANGES;
        let (first, modified, count) = if large {
            // Encoding and writing thousands of records takes the store long: done before the
            // new files join the table, with only their count written under its lock.
            let first =
                self.check_new_files(&self.table(), caller, id, owner_uid, &files, &hashes)?;
            let records = new_records(files, &dir_inos, id, first, mode);
            let mut new_paths = PathIndex::default();
            new_paths.insert_all(&hashes);
            let records = self.commit().put_new_files(id, first, records).await?;
            let mut table = self.table();
            let entry = self.still_adding(&mut table, caller, id, owner_uid, first)?;
            let count = records.len();
            let modified = entry.append_files(records);
            entry.paths_mut().join(new_paths);
            if let Err(e) = self.persist_job_fields(entry.job()) {
                entry.forget_files_from(first, &hashes, modified);
                return Err(e);
            }
            entry.set_adding_from(Some(first));
            entry.events().modified(entry);
            (first, modified, count)
        } else {
            let mut table = self.table();
            let first = self.check_new_files(&table, caller, id, owner_uid, &files, &hashes)?;
            let entry = self.still_adding(&mut table, caller, id, owner_uid, first)?;
            let count = files.len();
            let modified = entry.append_files(new_records(files, &dir_inos, id, first, mode));
            entry.paths_mut().insert_all(&hashes);
            if let Err(e) = self.commit().add_files(entry.job(), first) {
                // The job stays as clients last saw it; a retry writes the same indexes again.
                entry.forget_files_from(first, &hashes, modified);
                return Err(e);
            }
            entry.set_adding_from(Some(first));
            entry.events().modified(entry);
            (first, modified, count)
        };
        if let Err(e) = self.flush().await {
            self.take_back_files(id, first, count, modified, &hashes);
            return Err(e);
        }
        if let Some(entry) = self.table().get_mut(&id) {
            entry.set_adding_from(None);
            if let Some(run) = entry.run() {
                run.repick();
            }
        }
        let indexes: Vec<u32> = (first..first + count as u32).collect();
        tracing::info!(job = %id, files = ?indexes, "files added");
        Ok(indexes)
    }

    /// The checks AddFile makes under the table lock before it takes indexes: the job may be
    /// changed, still has the owner whose rights were checked, and has none of the new paths.
    /// Returns the first new index.
    fn check_new_files(
        &self,
        table: &Table,
        caller: Caller,
        id: JobId,
        owner_uid: u32,
        files: &[NewFile],
        hashes: &[u64],
    ) -> Result<u32, BitsError> {
        let entry = lookup_mut_check(table, caller, id)?;
        transition(entry.job().state, Event::Modify)?;
        if entry.job().owner_uid != owner_uid {
            return Err(BitsError::new(
                Code::E_ACCESSDENIED,
                format!("job {id} changed owner while its files were being checked"),
            ));
        }
        // Again under the lock: concurrent adds each passed the first check.
        let n_files = entry.job().files.len();
        if !caller.is_admin() && n_files + files.len() > MAX_FILES_PER_JOB {
            return Err(too_many_files(n_files, files.len()));
        }
        // By the job's index of path hashes, so a job of many files is not scanned per add;
        // only a hash it holds is checked against the paths themselves.
        for (file, hash) in files.iter().zip(hashes) {
            if entry.paths().holds(*hash)
                && entry.job().files.iter().any(|f| f.local_path == file.local_path)
            {
                return Err(duplicate_path(&file.local_path));
            }
        }
        Ok(entry.job().files.len() as u32)
    }

    /// The job, under the table lock, as AddFile found it: still changeable, same owner, and
    /// no file added since (AddFiles of a job take `Entry::adding`, so none can be).
    fn still_adding<'t>(
        &self,
        table: &'t mut Table,
        caller: Caller,
        id: JobId,
        owner_uid: u32,
        first: u32,
    ) -> Result<&'t mut Entry, BitsError> {
        let entry = lookup_mut(table, caller, id)?;
        transition(entry.job().state, Event::Modify)?;
        if entry.job().owner_uid != owner_uid || entry.job().files.len() != first as usize {
            return Err(BitsError::new(
                Code::E_ACCESSDENIED,
                format!("job {id} changed while its files were being added"),
            ));
        }
        Ok(entry)
    }

    /// Undoes an add whose flush failed: the files leave the table again (the store's record
    /// goes back to the old count, so the records written for them no longer count). Best
    /// effort in the store, which failed a moment ago; if it stays failed, its next open has
    /// the old count anyway.
    fn take_back_files(
        &self,
        id: JobId,
        first: u32,
        count: usize,
        modified: SystemTime,
        hashes: &[u64],
    ) {
        let mut table = self.table();
        let Some(entry) = table.get_mut(&id) else { return };
        entry.set_adding_from(None);
        if entry.job().files.len() != first as usize + count {
            return;
        }
        entry.forget_files_from(first, hashes, modified);
        if let Err(e) = self.persist_job_fields(entry.job()) {
            tracing::warn!(job = %id, error = %e, "storing a job whose added files were taken back failed");
        }
        entry.events().modified(entry);
    }

    /// SetRemoteName: the new URL is used from the file's next attempt on (after Suspend and
    /// Resume in the documented pattern). If the new server's copy differs in size or validator
    /// the file restarts from zero; otherwise it continues where it was.
    pub async fn set_remote_name(
        &self,
        caller: Caller,
        id: JobId,
        index: u32,
        url: &str,
    ) -> Result<Code, BitsError> {
        self.modify(caller, id, Scope::File(index), |job| {
            validate::remote_url(url)?;
            let file = crate::table::file_mut(job, index)?;
            file.remote_url = url.to_string();
            Ok(())
        })
        .await
    }

    /// ReplaceRemotePrefix: every remote name starting with `old` (byte-exact) gets `new`
    /// instead; all rewrites are checked before any is applied. S_FALSE when nothing matched.
    pub async fn replace_remote_prefix(
        &self,
        caller: Caller,
        id: JobId,
        old: &str,
        new: &str,
    ) -> Result<Code, BitsError> {
        if old.is_empty() || new.is_empty() {
            return Err(BitsError::new(
                Code::E_INVALIDARG,
                "the old and new prefixes may not be empty",
            ));
        }
        let mut matched = false;
        self.modify(caller, id, Scope::Files, |job| {
            let rewrites: Vec<(usize, String)> = job
                .files
                .iter()
                .enumerate()
                .filter_map(|(i, f)| {
                    f.remote_url.strip_prefix(old).map(|rest| (i, format!("{new}{rest}")))
                })
                .collect();
            for (_, url) in &rewrites {
                validate::remote_url(url)?;
            }
            matched = !rewrites.is_empty();
            for (i, url) in rewrites {
                job.files[i].remote_url = url;
            }
            Ok(())
        })
        .await?;
        Ok(if matched { Code::S_OK } else { Code::S_FALSE })
    }

    /// UpdateDownloadPosition: the worker looks for missing bytes from `offset` first (then wraps
    /// to the lowest missing byte). Only whole-file downloads are random-access.
    pub async fn update_download_position(
        &self,
        caller: Caller,
        id: JobId,
        index: u32,
        offset: u64,
    ) -> Result<Code, BitsError> {
        self.modify(caller, id, Scope::File(index), |job| {
            let file = crate::table::file_mut(job, index)?;
            if !file.ranges.is_empty() {
                return Err(BitsError::new(
                    Code::BG_E_RANDOM_ACCESS_NOT_SUPPORTED,
                    format!("file {index} was added with static ranges; random access needs a whole-file download"),
                ));
            }
            if let Some(size) = file.remote_size.filter(|size| offset > *size) {
                return Err(BitsError::new(
                    Code::BG_E_INVALID_RANGE,
                    format!("download position {offset} is beyond the {size} bytes of file {index}"),
                ));
            }
            file.download_position = Some(offset);
            Ok(())
        })
        .await
    }
}

/// An AddFile above this many files, or ranges, writes its records before the table lock
/// (see `Manager::add_files`): encoding them under it would keep every caller waiting.
const LARGE_ADD_FILES: usize = 256;
const LARGE_ADD_RANGES: usize = 4096;

/// The records of new files, the first at index `first`.
fn new_records(
    files: Vec<NewFile>,
    dir_inos: &[u64],
    id: JobId,
    first: u32,
    mode: u32,
) -> Vec<JobFile> {
    let job = id.to_string();
    (first..)
        .zip(files)
        .zip(dir_inos)
        .map(|((index, file), dir_ino)| JobFile {
            temp_path: bits_disk::temp_path_for(&file.local_path, &job, index),
            remote_url: file.remote_url,
            local_path: file.local_path,
            ranges: file.ranges.unwrap_or_default(),
            remote_size: None,
            validator: Validator::default(),
            filled: RangeSet::new(),
            requested: RangeSet::new(),
            completed: false,
            download_position: None,
            dir_ino: Some(*dir_ino),
            temp_id: None,
            mode: Some(mode),
            expected_sha256: file.sha256,
            actual_sha256: None,
        })
        .collect()
}

fn too_many_files(n_files: usize, more: usize) -> BitsError {
    BitsError::new(
        Code::BG_E_TOO_MANY_FILES_IN_JOB,
        format!(
            "the job has {n_files} files; {more} more would exceed the limit of {MAX_FILES_PER_JOB}"
        ),
    )
}

fn duplicate_path(path: &Path) -> BitsError {
    BitsError::new(
        Code::E_INVALIDARG,
        format!("local path {:?} is already a file of this job", path.display()),
    )
}
