//! Jobs across users (spec §3.A EnumJobs with ALL_USERS, §3.G TakeOwnership, §9): what only
//! administrators may do with other users' jobs.

use std::path::PathBuf;

use bits_core::{BitsError, Code, Job, JobId};
use bits_disk::DiskError;

use crate::access::run_as;
use crate::handle::Manager;
use crate::setters::Scope;
use crate::table::lookup_mut_check;
use crate::types::Caller;

impl Manager {
    /// Every user's jobs, oldest first (EnumJobs with BG_JOB_ENUM_ALL_USERS): administrators
    /// only; anyone else gets E_ACCESSDENIED rather than a silently shorter list.
    pub fn list_all_jobs(&self, caller: Caller) -> Result<Vec<Job>, BitsError> {
        if !caller.is_admin() {
            return Err(BitsError::new(
                Code::E_ACCESSDENIED,
                format!(
                    "listing every user's jobs is for administrators; uid {} is not one",
                    caller.uid
                ),
            ));
        }
        Ok(self.jobs_where(|_| true))
    }

    /// TakeOwnership: an administrator becomes the job's owner. The previous owner's secrets stay
    /// behind (custom headers are dropped: they may carry the old owner's credentials), and from
    /// now on the job's file work runs as the new owner — who must be able to write the temp
    /// files already there, or the call fails with BG_E_NEW_OWNER_NO_FILE_ACCESS and nothing
    /// changes.
    pub async fn take_ownership(&self, caller: Caller, id: JobId) -> Result<Code, BitsError> {
        let temps: Vec<(PathBuf, Option<u64>)> = {
            let table = self.table();
            let entry = lookup_mut_check(&table, caller, id)?;
            if !caller.is_admin() {
                return Err(BitsError::new(
                    Code::E_ACCESSDENIED,
                    format!("TakeOwnership is for administrators; uid {} is not one", caller.uid),
                ));
            }
            let unfinished = entry.job().files.iter().filter(|f| !f.completed);
            unfinished.map(|f| (f.temp_path.clone(), f.dir_ino)).collect()
        };
        run_as(self.owner_identity(caller.uid), move || {
            temps.iter().try_for_each(|(temp, dir_ino)| can_write_existing(temp, *dir_ino))
        })
        .await?;
        let mut previous = caller.uid;
        let code = self
            .modify(caller, id, Scope::Job, |job| {
                previous = std::mem::replace(&mut job.owner_uid, caller.uid);
                job.custom_headers = None;
                // Spec §7.3, case 93: the previous owner's program would run as the new owner.
                job.notify_cmd_line = None;
                Ok(())
            })
            .await?;
        tracing::info!(job = %id, from = previous, to = caller.uid, "ownership taken");
        Ok(code)
    }
}

/// Whether the current (file-system) identity may write `temp`, if it exists, and create files
/// in its directory — the directory AddFile resolved, reached without following a link: a path
/// the previous owner redirected since is refused, not followed. Opening is the check: the kernel
/// decides, with the same rules the later writes will meet.
fn can_write_existing(temp: &std::path::Path, dir_ino: Option<u64>) -> Result<(), BitsError> {
    match bits_disk::check_temp_writable(temp, dir_ino) {
        Ok(()) => Ok(()),
        Err(
            DiskError::AccessDenied { .. }
            | DiskError::Redirected { .. }
            | DiskError::NotFound { .. }
            | DiskError::NotOurs { .. },
        ) => Err(no_file_access(temp)),
        Err(e) => Err(BitsError::new(e.code(), e.to_string())),
    }
}

fn no_file_access(temp: &std::path::Path) -> BitsError {
    BitsError::new(
        Code::BG_E_NEW_OWNER_NO_FILE_ACCESS,
        format!(
            "the new owner cannot write the temp file {} or its directory (or the directory path \
             changed since AddFile)",
            temp.display()
        ),
    )
}
