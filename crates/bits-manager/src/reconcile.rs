//! Start-up reconciliation of the store with the disk. The store says which bytes are filled,
//! but a temp file can be deleted or truncated while the daemon is down; only ranges the temp
//! file can still hold are kept (the rest is fetched again). Temp files that belong to no job
//! are reported and left alone: they may be another daemon's, or the user's to recover.
//!
//! Runs once, before the manager serves anything, so its blocking file system calls cannot
//! delay a request.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bits_core::{Job, TempId};
use bits_disk::Identity;

/// Trims every file's filled set to what its temp file backs. Returns the indices (into `jobs`)
/// of the jobs that changed and must be stored again.
///
/// Each job's temp files are looked at as the job's owner (a root daemon without
/// CAP_DAC_READ_SEARCH, as the unit runs it, cannot even see into a 0700 home), and only a file
/// that is gone (or not the job's) drops ranges: one that cannot be looked at keeps them, and
/// the worker's own check at its next attempt decides.
pub(crate) fn trim_filled(jobs: &mut [Job], identity: impl Fn(u32) -> Identity) -> Vec<usize> {
    let mut changed = Vec::new();
    for (j, job) in jobs.iter_mut().enumerate() {
        let wanted: Vec<(usize, PathBuf, Option<u64>, Option<TempId>)> = job
            .files
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.completed && !f.filled.is_empty())
            .map(|(i, f)| (i, f.temp_path.clone(), f.dir_ino, f.temp_id))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let lens = identity(job.owner_uid).run(|| {
            wanted
                .iter()
                .map(|(_, temp, dir, made)| bits_disk::temp_len(temp, *dir, *made))
                .collect::<Vec<_>>()
        });
        let lens = match lens {
            Ok(lens) => lens,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "cannot check the job's temp files; their ranges are kept");
                continue;
            }
        };
        let mut job_changed = false;
        for ((index, ..), len) in wanted.iter().zip(lens) {
            let file = &mut job.files[*index];
            let temp_len = match len {
                Ok(len) => len,
                Err(e) => {
                    tracing::warn!(job = %job.id, index, error = %e, "cannot check a temp file; its ranges are kept");
                    continue;
                }
            };
            let before = file.filled.total_len();
            if file.trim_filled_to(temp_len) {
                tracing::warn!(
                    job = %job.id,
                    index,
                    path = %file.temp_path.display(),
                    temp_len = ?temp_len,
                    bytes_before = before,
                    bytes_kept = file.filled.total_len(),
                    "temp file missing or short; the ranges it no longer holds will be fetched again"
                );
                job_changed = true;
            }
        }
        if job_changed {
            changed.push(j);
        }
    }
    changed
}

/// Logs temp files (`.NAME.bitsd-<job>-<n>.part`) in the jobs' destination directories that no
/// job owns. They are never deleted.
pub(crate) fn report_orphans(jobs: &[Job]) {
    let known: HashSet<&Path> =
        jobs.iter().flat_map(|j| j.files.iter().map(|f| f.temp_path.as_path())).collect();
    let dirs: HashSet<PathBuf> = jobs
        .iter()
        .flat_map(|j| j.files.iter().filter_map(|f| f.local_path.parent().map(Path::to_path_buf)))
        .collect();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if is_temp_name(&entry.file_name().to_string_lossy()) && !known.contains(path.as_path())
            {
                tracing::warn!(path = %path.display(), "orphan temp file with no job; left alone");
            }
        }
    }
}

fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".bitsd-") && name.ends_with(".part")
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bits_core::{ByteRange, JobFile, JobId, JobState, RangeSet};

    use super::*;

    fn job_with(dir: &Path, ranges: Vec<ByteRange>, filled: RangeSet) -> Job {
        let now = SystemTime::now();
        Job {
            state: JobState::Queued,
            no_progress_timeout_secs: 1,
            files: vec![JobFile {
                ranges,
                remote_size: Some(1000),
                filled,
                ..JobFile::new(
                    "http://h/f".into(),
                    dir.join("f.bin"),
                    dir.join(".f.bin.bitsd-x-0.part"),
                )
            }],
            ..Job::new(JobId::new_random(), "j".into(), 0, now)
        }
    }

    #[test]
    fn missing_and_short_temp_files_lose_exactly_the_ranges_they_no_longer_hold() {
        let dir = tempfile::tempdir().unwrap();
        let mut jobs = vec![job_with(dir.path(), vec![], RangeSet::from_span(0, 600))];
        assert_eq!(trim_filled(&mut jobs, Identity::unswitched), [0], "missing temp file");
        assert!(jobs[0].files[0].filled.is_empty());

        jobs[0].files[0].filled = RangeSet::from_span(0, 600);
        std::fs::write(&jobs[0].files[0].temp_path, vec![0u8; 400]).unwrap();
        assert_eq!(trim_filled(&mut jobs, Identity::unswitched), [0]);
        assert_eq!(jobs[0].files[0].filled, RangeSet::from_span(0, 400));
        assert!(trim_filled(&mut jobs, Identity::unswitched).is_empty(), "nothing more to drop");

        // A ranged file: local = remote[500..600) ‖ remote[0..100); a 150-byte temp file holds
        // the first range and half of the second.
        let ranges = vec![ByteRange::new(500, 100), ByteRange::new(0, 100)];
        let mut filled = RangeSet::from_span(0, 100);
        filled.insert(500, 600);
        let mut jobs = vec![job_with(dir.path(), ranges, filled)];
        std::fs::write(&jobs[0].files[0].temp_path, vec![0u8; 150]).unwrap();
        trim_filled(&mut jobs, Identity::unswitched);
        let mut want = RangeSet::from_span(0, 50);
        want.insert(500, 600);
        assert_eq!(jobs[0].files[0].filled, want);
    }

    /// A temp file that cannot be looked at (here: its directory path now runs through a
    /// link; for a root daemon without CAP_DAC_READ_SEARCH, a 0700 home) keeps its ranges: only
    /// a file that is gone, or not the job's, loses them. Before, every restart dropped them.
    #[test]
    fn a_temp_file_that_cannot_be_looked_at_keeps_its_ranges() {
        let base = tempfile::tempdir().unwrap();
        let real = base.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, base.path().join("link")).unwrap();
        let mut jobs =
            vec![job_with(&base.path().join("link"), vec![], RangeSet::from_span(0, 600))];
        std::fs::write(&jobs[0].files[0].temp_path, vec![0u8; 600]).unwrap();
        assert!(trim_filled(&mut jobs, Identity::unswitched).is_empty());
        assert_eq!(jobs[0].files[0].filled, RangeSet::from_span(0, 600));
        // Another file at the job's temp name holds none of its bytes.
        jobs[0].files[0].temp_id = Some(bits_core::TempId { ino: 1, uid: 1 });
        jobs[0].files[0].temp_path = real.join(".f.bin.bitsd-x-0.part");
        assert_eq!(trim_filled(&mut jobs, Identity::unswitched), [0]);
        assert!(jobs[0].files[0].filled.is_empty());
    }

    #[test]
    fn temp_names() {
        assert!(is_temp_name(".f.bin.bitsd-0f8e-1.part"));
        assert!(!is_temp_name("f.bin"));
        assert!(!is_temp_name(".f.bin.part"));
    }
}
