//! One running job: its files in insertion order (spec I2), each probed, then fetched piece by
//! piece with ranged GETs into the temp file until every wanted byte is durably filled.
//!
//! The worker reads what is missing from the job table, so a restart, a new on-demand request or
//! a file added mid-transfer all need no special path: the next piece is always "the first
//! requested byte still missing, else the first missing byte". It never changes the job's state
//! directly except through `transition`, and a stop request (Suspend, Cancel, Complete,
//! shutdown) always ends with the bytes written so far synced and recorded.
//!
//! Layout: this file runs the job (its files and tails, the maximum download time, the digest
//! check); `transfer.rs` is one file's transfer ([`transfer::FileTransfer`]) and `stream.rs` its
//! streaming modes; `pick.rs` decides, without I/O, which file and piece come next; `ledger.rs`
//! is the only door to the job table, the store and the events; `halt.rs` is how a transfer
//! stops short. Bytes reach the disk only through `crate::writer`.

mod halt;
mod ledger;
mod pick;
mod stream;
mod transfer;

use std::collections::HashSet;
use std::sync::Arc;
use tokio::time::Instant;

use bits_core::{Code, ErrorContext, JobError, JobId};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Manager;
use crate::access::run_as;
use halt::{Halt, caught, job_error, local_halt, lost_task};
use ledger::JobLedger;
use transfer::{Fetched, FileTransfer};

/// Tails of one job in flight at once: files whose bytes are in memory, waiting for their write,
/// fsync and store flush. Capped by count and by bytes so memory stays bounded.
const MAX_TAILS: usize = 64;
const MAX_TAIL_BYTES: u64 = 16 << 20;

pub(crate) async fn run_job(
    manager: Manager,
    id: JobId,
    stop: CancellationToken,
    repick: Arc<Notify>,
) {
    let ledger = JobLedger::new(manager, id);
    let started = Instant::now();
    let Some(budget) = ledger.budget() else { return };
    // The maximum download time stops the worker the same way Suspend does (bytes synced and
    // recorded), and is then reported as the fatal error it is.
    let work = stop.child_token();
    let deadline = {
        let work = work.clone();
        tokio::spawn(async move {
            tokio::time::sleep(budget).await;
            work.cancel();
        })
    };
    let mut outcome = transfer_job(&ledger, &work, &repick).await;
    if outcome.is_ok() {
        outcome = verify_digests(&ledger, &work).await;
    }
    deadline.abort();
    if matches!(outcome, Err(Halt::Stopped)) && work.is_cancelled() && !stop.is_cancelled() {
        outcome = Err(Halt::Failed {
            error: JobError {
                context: ErrorContext::GeneralQueueManager,
                code: Code::BG_E_MAXDOWNLOAD_TIMEOUT,
                description: format!(
                    "the job's maximum download time of {} s was used up",
                    budget.as_secs()
                ),
                file_index: None,
            },
            transient: false,
            retry_after: None,
        });
    }
    ledger.end_run(outcome, started).await;
}

/// Hashes, as the job's owner on the blocking pool, every file whose bytes are all recorded and
/// whose expected SHA-256 was not yet checked against them — from its temp file on disk, never
/// from what came off the network. A match is recorded (`actual_sha256`); a mismatch empties
/// that file's temp file and forgets its progress (Resume fetches it again from zero; nothing
/// reaches the destination) and fails the job with `BITSD_E_CHECKSUM_MISMATCH`, context
/// REMOTE_FILE.
async fn verify_digests(ledger: &JobLedger, stop: &CancellationToken) -> Result<(), Halt> {
    let due = ledger.due_for_verification()?;
    if due.is_empty() {
        return Ok(());
    }
    let owner = ledger.owner()?;
    for (index, file) in due {
        let (uid, hashed, halted) = (owner.uid, file.clone(), stop.clone());
        let hashing =
            run_as(owner.clone(), move || crate::checksum::hash_temp(&hashed, uid, &halted));
        // A Suspend or Cancel does not wait for a large file's hash; the read stops at its
        // next chunk.
        let actual = tokio::select! {
            _ = stop.cancelled() => return Err(Halt::Stopped),
            actual = hashing => actual.map_err(|e| local_halt(e, index))?,
        };
        let matched = file.expected_sha256.as_deref() == Some(actual.as_str());
        if !matched {
            let error = crate::checksum::mismatch(&file, &actual);
            tracing::warn!(job = %ledger.id(), index, error = %error.message, "checksum mismatch");
            transfer::reset_file(ledger, index).await?;
            ledger.store_file_record(index, |f| f.actual_sha256 = Some(actual));
            return Err(Halt::Failed {
                error: job_error(ErrorContext::RemoteFile, error.code, error.message, index),
                transient: false,
                retry_after: None,
            });
        }
        // Recorded only if the bytes hashed are still the file's (nothing reset it meanwhile).
        ledger.store_file_record(index, |f| {
            if f.filled == file.filled && f.expected_sha256 == file.expected_sha256 {
                f.actual_sha256 = Some(actual);
            }
        });
    }
    ledger.flush(0).await
}

async fn transfer_job(
    ledger: &JobLedger,
    stop: &CancellationToken,
    repick: &Arc<Notify>,
) -> Result<(), Halt> {
    // Files go one at a time (BITS), or several at once with the files-at-once extension. The
    // first failure stops the others (they drain: what they wrote is synced and recorded).
    // A small file's network part and its disk part are separate: while one file's bytes are
    // written and recorded, its slot already fetches the next file (most of a small file's time
    // is the fsync and the store flush, which many files share when they overlap).
    // Each file and each tail is a task of its own, not a future polled by this one: they run on
    // every runtime thread, and a new file's request goes out as soon as its slot frees (polled
    // from one task, a pushed file waited ~2 ms on average for its first poll: measured with
    // 1,000 small files, 16 at once). Every way out of the loop below drains both sets, so no
    // file or tail outlives the worker: aborting a task would only stop it at its next await, and
    // a blocking write it started would still run to its end.
    let files_stop = stop.child_token();
    let mut running = JoinSet::new();
    let mut tails = JoinSet::new();
    let mut tail_bytes = 0u64;
    let mut active: HashSet<u32> = HashSet::new();
    // Files before this index were transferred or active at the last pick: the next pick starts
    // here, so a job of n files is not scanned n times from the start. Whatever an active file
    // leaves undone is caught by the full scan at the end.
    let mut scan_from = 0;
    let mut failure: Option<Halt> = None;
    loop {
        let room = tails.len() < MAX_TAILS && tail_bytes < MAX_TAIL_BYTES;
        if failure.is_none() && !stop.is_cancelled() && room {
            loop {
                let next = match ledger.next_file(running.len(), &active, scan_from) {
                    Ok(next) => next,
                    Err(halt) => {
                        // The job left the table: stop the others and drain them.
                        files_stop.cancel();
                        failure.get_or_insert(halt);
                        break;
                    }
                };
                let Some(index) = next else { break };
                scan_from = index + 1;
                active.insert(index);
                let transfer =
                    FileTransfer::new(ledger.clone(), index, files_stop.clone(), repick.clone());
                running.spawn(async move { (index, caught(index, transfer.run()).await) });
            }
        }
        let (index, result) = tokio::select! {
            Some(joined) = running.join_next() => match joined {
                Ok((index, Ok(Fetched::Tail(tail, bytes)))) => {
                    tail_bytes += bytes;
                    tails.spawn(async move { (index, bytes, caught(index, tail).await) });
                    continue;
                }
                Ok((index, Ok(Fetched::Done))) => (Some(index), Ok(())),
                Ok((index, Err(halt))) => (Some(index), Err(halt)),
                Err(e) => (None, Err(lost_task(e))),
            },
            Some(joined) = tails.join_next() => match joined {
                Ok((index, bytes, result)) => {
                    tail_bytes -= bytes;
                    (Some(index), result)
                }
                Err(e) => (None, Err(lost_task(e))),
            },
            else => break,
        };
        if let Some(index) = index {
            active.remove(&index);
        }
        if let Err(halt) = result {
            files_stop.cancel();
            failure.get_or_insert(halt);
        }
    }
    if let Some(halt) = failure {
        return Err(halt);
    }
    if stop.is_cancelled() {
        return Err(Halt::Stopped);
    }
    ledger.outcome()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed call is a failed test

    use super::*;
    use crate::testing::manager_with_job;
    use bits_disk::PartFile;

    /// A file whose bytes are all recorded is hashed from its temp file on disk: a match is
    /// recorded, a mismatch empties the temp file, forgets the file's bytes, keeps the digest it
    /// found and fails the job with BITSD_E_CHECKSUM_MISMATCH; a file not yet whole is left.
    #[tokio::test]
    async fn digests_are_checked_from_the_disk_once_a_file_is_whole() {
        use sha2::Digest;
        let (m, _dir, id) = manager_with_job(3).await;
        let me = rustix::process::geteuid().as_raw();
        let data = b"what the server sent";
        let digest: String =
            sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
        let temps: Vec<_> = {
            let mut table = m.table();
            let job = table.get_mut(&id).unwrap().job_mut();
            let expected = [digest.clone(), "0".repeat(64), digest.clone()];
            job.files
                .iter_mut()
                .zip(expected)
                .enumerate()
                .map(|(i, (file, expected))| {
                    let part = PartFile::create(&file.temp_path, file.dir_ino, 0o644, me).unwrap();
                    part.write_at(0, data).unwrap();
                    file.temp_id = Some(part.id());
                    file.remote_size = Some(data.len() as u64);
                    // File 2 is one byte short: not whole, not hashed.
                    let end = if i == 2 { data.len() - 1 } else { data.len() };
                    file.filled.insert(0, end as u64);
                    file.expected_sha256 = Some(expected);
                    file.temp_path.clone()
                })
                .collect()
        };
        let outcome =
            verify_digests(&JobLedger::new(m.clone(), id), &CancellationToken::new()).await;
        match outcome {
            Err(Halt::Failed { error, transient: false, .. }) => {
                assert_eq!(error.code, Code::BITSD_E_CHECKSUM_MISMATCH);
                assert_eq!(error.context, ErrorContext::RemoteFile);
                assert_eq!(error.file_index, Some(1));
                assert!(error.description.contains(&digest), "{}", error.description);
                assert!(error.description.contains(&"0".repeat(64)), "{}", error.description);
            }
            _ => panic!("a mismatch must fail the job"),
        }
        let job = m.get_job(crate::testing::caller(), id).unwrap();
        assert_eq!(job.files[0].actual_sha256.as_deref(), Some(digest.as_str()));
        assert!(job.files[0].digest_verified());
        assert_eq!(job.files[1].actual_sha256.as_deref(), Some(digest.as_str()));
        assert!(job.files[1].filled.is_empty(), "the wrong bytes still count");
        assert_eq!(std::fs::metadata(&temps[1]).unwrap().len(), 0, "the wrong bytes are kept");
        assert_eq!(std::fs::metadata(&temps[0]).unwrap().len(), data.len() as u64);
        assert_eq!(job.files[2].actual_sha256, None, "a file not yet whole was hashed");
        assert!(!job.all_verified());
        // Nothing is left to check: the matched file is not hashed again (its temp file is gone,
        // which hashing would report).
        std::fs::remove_file(&temps[0]).unwrap();
        assert!(
            verify_digests(&JobLedger::new(m.clone(), id), &CancellationToken::new()).await.is_ok()
        );
    }
}
