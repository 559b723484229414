//! What the daemon reports about itself without a job id: running transfers and a summary by
//! state (systemd's STATUS=).

use std::sync::atomic::Ordering;

use bits_core::{JobState, Stats};

use crate::handle::Manager;
use crate::types::Summary;

impl Manager {
    /// How many job workers are running: a cheap "is the data path busy" without the table lock.
    pub fn transfers_running(&self) -> usize {
        self.workers().load(Ordering::Relaxed)
    }

    /// How many jobs are in each state class, for a status line (systemd's STATUS=).
    pub fn summary(&self) -> Summary {
        let table = self.table();
        let mut summary = Summary { jobs: table.len(), ..Summary::default() };
        for entry in table.values() {
            match entry.job().state {
                JobState::Transferring | JobState::Connecting => summary.transferring += 1,
                JobState::Queued => summary.queued += 1,
                JobState::TransientError | JobState::Error => summary.in_error += 1,
                _ => {}
            }
        }
        summary
    }

    /// The daemon's numbers now (GetStats); `own_jobs` counts the jobs of `uid`. One pass over
    /// the job table under its lock.
    pub fn stats(&self, uid: u32) -> Stats {
        let mut all = [0u64; JobState::ALL.len()];
        let mut own = [0u64; JobState::ALL.len()];
        {
            let table = self.table();
            for entry in table.values() {
                let Some(i) = JobState::ALL.iter().position(|&s| s == entry.job().state) else {
                    continue;
                };
                all[i] += 1;
                if entry.job().owner_uid == uid {
                    own[i] += 1;
                }
            }
        }
        let by_state = |counts: [u64; JobState::ALL.len()]| {
            JobState::ALL.iter().zip(counts).filter(|(_, n)| *n > 0).map(|(&s, n)| (s, n)).collect()
        };
        let http_connections = self.http().open_connections() as u64;
        self.counters().stats(by_state(all), by_state(own), http_connections)
    }
}
