//! Complete and Cancel (spec §3): stop the worker, move whole files into place or delete temp
//! files, then retire the job from the store and the table, leaving a tombstone.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bits_core::{BitsError, Code, Event, JobFile, JobId, JobState, TempId, transition};
use bits_disk::Identity;

use crate::access::run_as;
use crate::errors::disk_error;
use crate::handle::Manager;
use crate::table::{Run, lookup_mut};
use crate::types::Caller;

impl Manager {
    /// Cancel: stops the transfer, deletes every temp file, and retires the job.
    pub async fn cancel(&self, caller: Caller, id: JobId) -> Result<Code, BitsError> {
        self.finish(caller, id, Event::Cancel).await
    }

    /// Complete: renames every fully transferred file into place (fsync, rename, fsync dir, mtime
    /// from Last-Modified), deletes the rest, and retires the job. If a rename fails the job stays
    /// (TRANSFERRED when all its bytes are present) and Complete may be called again.
    pub async fn complete(&self, caller: Caller, id: JobId) -> Result<Code, BitsError> {
        self.finish(caller, id, Event::Complete).await
    }

    /// Complete and Cancel run on a task of their own: a client that hangs up halfway (hyper
    /// drops the handler's future) must not leave a job half-finished and locked.
    async fn finish(&self, caller: Caller, id: JobId, event: Event) -> Result<Code, BitsError> {
        let this = self.clone();
        self.runtime()
            .spawn(async move {
                let files = this.begin_finish(caller, id, event).await?;
                let owner = this.job_identity(id)?;
                let (result, final_state) = if event == Event::Cancel {
                    (this.delete_temps(&owner, &files, |_| true).await, JobState::Cancelled)
                } else {
                    (this.complete_files(&owner, id, &files).await, JobState::Acknowledged)
                };
                let result = match result {
                    Ok(code) => this.end_finish(id, final_state).await.map(|()| code),
                    Err(e) => Err(e),
                };
                if let Err(e) = &result {
                    tracing::warn!(job = %id, error = %e, "{event:?} failed; the job stays");
                    this.abort_finish(id).await;
                } else {
                    tracing::info!(job = %id, state = final_state.name(), "job finished");
                }
                result
            })
            .await
            .unwrap_or_else(|e| {
                Err(BitsError::new(Code::E_FAIL, format!("{event:?} of job {id} failed: {e}")))
            })
    }

    /// The Complete part proper: finalize what is whole, delete what is not.
    async fn complete_files(
        &self,
        owner: &Identity,
        id: JobId,
        files: &[JobFile],
    ) -> Result<Code, BitsError> {
        // A file whose expected digest was not matched by its bytes on disk is never moved.
        let done: Vec<bool> =
            files.iter().map(|f| f.is_transferred() && f.digest_verified()).collect();
        self.finalize_files(owner, id, files, &done).await?;
        let deleted = self.delete_temps(owner, files, |i| !done[i]).await?;
        Ok(if !done.iter().all(|d| *d) { Code::BG_S_PARTIAL_COMPLETE } else { deleted })
    }

    /// Moves every whole file into place. `completed` is recorded (one store flush for all)
    /// *before* the renames and undone for the files not renamed if one fails, so a crash in
    /// between is recognised on the next Complete: completed with its temp file gone means the
    /// rename happened. The renames run in one blocking batch and each directory is synced once.
    async fn finalize_files(
        &self,
        owner: &Identity,
        id: JobId,
        files: &[JobFile],
        done: &[bool],
    ) -> Result<(), BitsError> {
        let whole: Vec<(u32, JobFile)> = files
            .iter()
            .enumerate()
            .filter(|(i, _)| done[*i])
            .map(|(i, f)| (i as u32, f.clone()))
            .collect();
        let newly: Vec<u32> = whole.iter().filter(|(_, f)| !f.completed).map(|(i, _)| *i).collect();
        self.set_completed_many(id, &newly, true).await?;

        let batch = whole.clone();
        let owner_id = owner.clone();
        // As the owner: the rename needs the owner's right to replace the destination (and
        // never follows a link someone planted there; it replaces it).
        let stopped = run_as(owner.clone(), move || {
            let owner = owner_id;
            // Which files to move: in order, up to the first whose temp file cannot be made
            // ready. A temp file already gone was renamed before a crash if the file is
            // completed; if not, its bytes are lost.
            let mut failure = None;
            let mut already: Vec<&Path> = Vec::new();
            // The files to move, and each one's position in `batch`.
            let (mut plan, mut positions) = (Vec::new(), Vec::new());
            let mut dirs = bits_disk::Dirs::default();
            for (k, (index, file)) in batch.iter().enumerate() {
                let found = prepare_temp_for_finalize(&mut dirs, file, owner.uid);
                let found = match found {
                    Ok(found) => found,
                    Err(e) => {
                        failure = Some(Stopped { at: k, index: *index, error: Some(e) });
                        break;
                    }
                };
                let Some((found, made)) = found else {
                    if file.completed {
                        already.push(&file.local_path);
                        continue;
                    }
                    failure = Some(Stopped { at: k, index: *index, error: None });
                    break;
                };
                let mtime = remote_mtime(&file.validator);
                let (temp, dest) = (file.temp_path.as_path(), file.local_path.as_path());
                let dir_ino = file.dir_ino;
                plan.push(bits_disk::Move { temp, dest, mtime, made, dir_ino, found: Some(found) });
                positions.push(k);
            }
            let (renamed, error) = bits_disk::rename_all_into_place(&plan);
            if let Some(e) = error {
                let k = positions[renamed];
                failure = Some(Stopped { at: k, index: batch[k].0, error: Some(disk_error(e)) });
            }
            let done = plan[..renamed].iter().map(|m| m.dest).chain(already);
            bits_disk::sync_parent_dirs(done).map_err(disk_error)?;
            Ok(failure)
        })
        .await;
        let failure = match stopped {
            Ok(None) => return Ok(()),
            Ok(Some(failure)) => failure,
            Err(e) => {
                self.set_completed_many(id, &newly, false).await?;
                return Err(e);
            }
        };
        // Files from the failed one on were not renamed: they are not completed after all.
        let Stopped { at: k, index, error } = failure;
        let not_renamed: Vec<u32> =
            whole[k..].iter().filter(|(_, f)| !f.completed).map(|(i, _)| *i).collect();
        self.set_completed_many(id, &not_renamed, false).await?;
        match error {
            Some(e) => Err(e),
            None => {
                // The temp file vanished behind our back: its bytes must be fetched again.
                self.update_file(id, index, JobFile::reset_progress).await?;
                Err(BitsError::new(
                    Code::ERROR_PATH_NOT_FOUND,
                    format!(
                        "the temp file {} of file {index} is gone or truncated; Resume downloads \
                         the file again",
                        whole[k].1.temp_path.display()
                    ),
                ))
            }
        }
    }

    /// Deletes the temp files of the (not completed) files `which` selects.
    async fn delete_temps(
        &self,
        owner: &Identity,
        files: &[JobFile],
        which: impl Fn(usize) -> bool,
    ) -> Result<Code, BitsError> {
        let temps: Vec<(PathBuf, Option<u64>, Option<TempId>)> = files
            .iter()
            .enumerate()
            .filter(|(i, f)| which(*i) && !f.completed)
            .map(|(_, f)| (f.temp_path.clone(), f.dir_ino, f.temp_id))
            .collect();
        run_as(owner.clone(), move || {
            let mut all_deleted = true;
            for (temp, dir_ino, made) in temps {
                if let Err(e) = bits_disk::remove_temp(&temp, dir_ino, made) {
                    tracing::warn!(error = %e, "cannot delete temp file");
                    all_deleted = false;
                }
            }
            Ok(if all_deleted { Code::S_OK } else { Code::BG_S_UNABLE_TO_DELETE_FILES })
        })
        .await
    }

    // ---- Complete / Cancel plumbing --------------------------------------------------------

    /// Checks the operation is allowed, marks the job as finishing and stops its worker. Returns
    /// the files as they are once the worker has recorded its last bytes.
    async fn begin_finish(
        &self,
        caller: Caller,
        id: JobId,
        event: Event,
    ) -> Result<Vec<JobFile>, BitsError> {
        let worker = {
            let mut table = self.table();
            let entry = lookup_mut(&mut table, caller, id)?;
            transition(entry.job().state, event)?;
            entry.set_finishing(true);
            entry.run().map(Run::halt)
        };
        if let Some(ended) = worker {
            ended.cancelled().await;
        }
        let table = self.table();
        Ok(table.get(&id).map(|e| e.job().files.clone()).unwrap_or_default())
    }

    async fn abort_finish(&self, id: JobId) {
        {
            let mut table = self.table();
            if let Some(entry) = table.get_mut(&id) {
                entry.set_finishing(false);
                if entry.job().all_verified() && entry.job().state != JobState::Transferred {
                    entry.set_state(JobState::Transferred);
                } else if entry.job().state.is_active() {
                    entry.set_state(JobState::Suspended);
                }
                if let Err(e) = self.persist_job_fields(entry.job()) {
                    tracing::error!(job = %id, error = %e, "cannot persist job");
                }
            }
        }
        let _ = self.flush().await;
    }

    /// Sets `completed` on several files with one store flush.
    async fn set_completed_many(
        &self,
        id: JobId,
        indexes: &[u32],
        completed: bool,
    ) -> Result<(), BitsError> {
        if indexes.is_empty() {
            return Ok(());
        }
        {
            let mut table = self.table();
            let entry = table.entry_mut(id)?;
            for &index in indexes {
                let file = entry.file_mut_checked(index)?;
                file.completed = completed;
                self.persist_file(id, index, file)?;
            }
        }
        self.flush().await
    }

    /// Changes one file in memory and in the store (under the table lock, so store writes keep
    /// the order of the in-memory changes), then flushes.
    async fn update_file(
        &self,
        id: JobId,
        index: u32,
        change: impl FnOnce(&mut JobFile),
    ) -> Result<(), BitsError> {
        {
            let mut table = self.table();
            let entry = table.entry_mut(id)?;
            let file = entry.file_mut_checked(index)?;
            change(file);
            self.persist_file(id, index, file)?;
        }
        self.flush().await
    }

    /// Retires a finished job: out of the store first (so a failure leaves it in both places
    /// and the caller can retry), then out of the table, leaving a tombstone.
    async fn end_finish(&self, id: JobId, final_state: JobState) -> Result<(), BitsError> {
        self.commit().delete_job(id).await?;
        {
            let mut table = self.table();
            if let Some(entry) = table.retire(id, final_state) {
                entry.events().finished(id, final_state, entry.job().progress());
            }
        }
        self.wake().notify_one();
        Ok(())
    }
}

/// Where Complete's renames stopped: the first file not moved into place.
struct Stopped {
    /// Its position among the whole files (every file after it was not moved either).
    at: usize,
    /// Its index in the job.
    index: u32,
    /// Why; `None` when its temp file is gone or shorter than its bytes (they must be fetched
    /// again).
    error: Option<BitsError>,
}

/// A whole file's temp file as Complete finds it (reached without following a link): its
/// `lstat` and which file the job created, or `None` when it is gone or shorter than its bytes. The temp file of a
/// transferred zero-length file may never have been created (no byte was written): it is
/// created now, so there is something to rename.
fn prepare_temp_for_finalize(
    dirs: &mut bits_disk::Dirs,
    file: &JobFile,
    owner: u32,
) -> Result<Option<(bits_disk::Stat, Option<TempId>)>, BitsError> {
    let temp = &file.temp_path;
    let mut made = file.temp_id;
    if file.bytes_total() == Some(0) && made.is_none() && !file.completed {
        let mode = file.mode.unwrap_or(0o644);
        let part =
            bits_disk::PartFile::create(temp, file.dir_ino, mode, owner).map_err(disk_error)?;
        part.sync().map_err(disk_error)?;
        made = Some(part.id());
    }
    let found = dirs.stat(temp, file.dir_ino).map_err(disk_error)?;
    // Shorter than its bytes: truncated behind our back, so some recorded bytes are lost.
    let whole = |stat: &bits_disk::Stat| stat.st_size as u64 >= file.bytes_total().unwrap_or(0);
    Ok(found.filter(whole).map(|stat| (stat, made)))
}

/// The server's Last-Modified, which a completed file gets as its modification time.
pub(crate) fn remote_mtime(validator: &bits_core::Validator) -> Option<SystemTime> {
    validator.last_modified.as_deref().and_then(|s| httpdate::parse_http_date(s).ok())
}
