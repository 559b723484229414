//! One directory fsync for many new files.
//!
//! A temp file's name is durable only once its directory is fsynced, and its recorded bytes are
//! lost with it otherwise (a power cut unnames it), so the first sync of every temp file also
//! syncs its directory. A job fetching many small files at once would pay one directory fsync per
//! file; but an fsync of a directory covers every entry made in it before the fsync *started*. So
//! callers that need the same directory synced share: a caller waits for the next fsync to start
//! and finish (running it itself when none is running), and everyone who arrived before that
//! fsync started is covered by it.
//!
//! Directories are told apart by device and inode number. Every caller holds its directory open
//! while it waits, and two directories open at once cannot share both numbers, so one fsync is
//! never taken for another directory's.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

/// A directory: `(st_dev, st_ino)`.
pub(crate) type DirKey = (u64, u64);

/// Runs `sync` (an fsync of the directory `key`), or waits for one that another caller started
/// after this call began, and returns once the directory's entries made before this call are
/// durable. A failed `sync` fails only the caller that ran it; the others run their own.
pub(crate) fn sync_shared<E>(key: DirKey, sync: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
    let group = lock(groups()).entry(key).or_default().clone();
    let result = group.sync_after_now(sync);
    drop(group);
    let mut all = lock(groups());
    // Only the table's copy is left: nobody else is syncing this directory, so forget it. (The
    // last caller to let go sees this; a new one takes its copy under the same lock.)
    if all.get(&key).is_some_and(|g| Arc::strong_count(g) == 1) {
        all.remove(&key);
    }
    result
}

fn groups() -> &'static Mutex<HashMap<DirKey, Arc<Group>>> {
    static GROUPS: OnceLock<Mutex<HashMap<DirKey, Arc<Group>>>> = OnceLock::new();
    GROUPS.get_or_init(Mutex::default)
}

/// The fsyncs of one directory: at most one runs at a time, numbered in the order they start.
#[derive(Default)]
struct Group {
    state: Mutex<State>,
    finished: Condvar,
}

#[derive(Default)]
struct State {
    running: bool,
    /// Fsyncs started so far; the running one, if any, is number `started`.
    started: u64,
    /// The number of the last fsync that succeeded.
    succeeded: u64,
}

impl Group {
    fn sync_after_now<E>(&self, sync: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut state = lock(&self.state);
        // A running fsync may have started before the caller's entry was made: only the next
        // one to start is sure to cover it.
        let covering = state.started + 1;
        loop {
            if state.succeeded >= covering {
                return Ok(());
            }
            if !state.running {
                state.running = true;
                state.started += 1;
                let mut run = Running { group: self, number: state.started, succeeded: false };
                drop(state);
                let result = sync();
                run.succeeded = result.is_ok();
                return result;
            }
            state = self.finished.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// The fsync this caller runs. Dropped when it returns, or when it panics (the waiters then run
/// their own instead of waiting for it for ever): it is no longer running, and wakes them.
struct Running<'a> {
    group: &'a Group,
    number: u64,
    succeeded: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.group.state);
        state.running = false;
        if self.succeeded {
            state.succeeded = self.number;
        }
        self.group.finished.notify_all();
    }
}

/// A poisoned lock only means another sync panicked; the counters are still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Barrier, mpsc};
    use std::time::Duration;

    /// Callers arriving together share fsyncs: fewer run than there are callers, and each
    /// caller is covered.
    #[test]
    fn callers_arriving_together_share_an_fsync() {
        const CALLERS: usize = 16;
        let runs = Arc::new(AtomicU64::new(0));
        let barrier = Arc::new(Barrier::new(CALLERS));
        let threads: Vec<_> = (0..CALLERS)
            .map(|_| {
                let (runs, barrier) = (runs.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    sync_shared((1, 1), || {
                        runs.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(100));
                        Ok::<(), ()>(())
                    })
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), Ok(()));
        }
        let runs = runs.load(Ordering::SeqCst);
        assert!((1..CALLERS as u64).contains(&runs), "{runs} fsyncs for {CALLERS} callers");
        assert!(lock(groups()).get(&(1, 1)).is_none(), "an idle directory stays in the table");
    }

    /// A caller arriving while an fsync runs is not covered by it (that fsync may have started
    /// before the caller's file was made): it waits for the next one to start and finish.
    #[test]
    fn an_fsync_already_running_does_not_cover_a_later_caller() {
        let key = (2, 2);
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let first = std::thread::spawn(move || {
            sync_shared(key, || {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok::<(), ()>(())
            })
        });
        started_rx.recv().unwrap();
        let ran = Arc::new(AtomicU64::new(0));
        let later = {
            let ran = ran.clone();
            std::thread::spawn(move || {
                sync_shared(key, || {
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), ()>(())
                })
            })
        };
        // Give the later caller time to arrive and wait behind the running fsync.
        std::thread::sleep(Duration::from_millis(100));
        release_tx.send(()).unwrap();
        assert_eq!(first.join().unwrap(), Ok(()));
        assert_eq!(later.join().unwrap(), Ok(()));
        assert_eq!(ran.load(Ordering::SeqCst), 1, "the later caller ran an fsync of its own");
    }

    /// A failed fsync fails the caller that ran it; one waiting for it runs its own.
    #[test]
    fn a_failed_fsync_fails_its_runner_and_a_waiter_runs_again() {
        let key = (3, 3);
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let failing = std::thread::spawn(move || {
            sync_shared(key, || {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Err("EIO")
            })
        });
        started_rx.recv().unwrap();
        let ran = Arc::new(AtomicU64::new(0));
        let waiter = {
            let ran = ran.clone();
            std::thread::spawn(move || {
                sync_shared(key, || {
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), &str>(())
                })
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        release_tx.send(()).unwrap();
        assert_eq!(failing.join().unwrap(), Err("EIO"));
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert_eq!(ran.load(Ordering::SeqCst), 1, "the waiter was taken as covered by a failure");
    }

    /// An fsync that panics is not left running: a caller waiting for it runs its own.
    #[test]
    fn a_panicking_fsync_does_not_leave_its_waiters_stuck() {
        let key = (6, 6);
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let panicking = std::thread::spawn(move || {
            sync_shared(key, || -> Result<(), ()> {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                panic!("the fsync panicked");
            })
        });
        started_rx.recv().unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            done_tx.send(sync_shared(key, || Ok::<(), ()>(()))).unwrap();
        });
        std::thread::sleep(Duration::from_millis(100));
        release_tx.send(()).unwrap();
        assert!(panicking.join().is_err());
        let got = done_rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(got, Ok(Ok(())), "the waiter still waits for the fsync that panicked");
    }

    /// Different directories never share an fsync: while one runs, a caller for another
    /// directory (another inode on the same device, or the same inode number on another device)
    /// runs its own at once, without waiting for it.
    #[test]
    fn different_directories_each_run_their_own() {
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let running = std::thread::spawn(move || {
            sync_shared((4, 1), || {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok::<(), ()>(())
            })
        });
        started_rx.recv().unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for key in [(4, 2), (5, 1)] {
                let ran = AtomicU64::new(0);
                let result = sync_shared(key, || {
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), ()>(())
                });
                done_tx.send((key, result, ran.load(Ordering::SeqCst))).unwrap();
            }
        });
        for key in [(4, 2), (5, 1)] {
            let got = done_rx.recv_timeout(Duration::from_secs(10));
            assert_eq!(got, Ok((key, Ok(()), 1)), "{key:?} waited for (4, 1)'s fsync");
        }
        release_tx.send(()).unwrap();
        assert_eq!(running.join().unwrap(), Ok(()));
    }
}
