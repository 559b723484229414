//! SetNotifyCmdLine's program (spec §7.3): run when a job reaches TRANSFERRED or ERROR, if its
//! notify flags let that notification through (MODIFICATION and FILE_* flags do not count).
//!
//! The program runs as the job's owner, never with more: the child gets the owner's uid and
//! primary gid (std's `Command::uid`/`gid`; a root daemon's supplementary groups are cleared,
//! and the owner's are not added, since no safe `initgroups` exists — less than the owner, never
//! more). Jobs of service accounts (uid below [`FIRST_USER_UID`], root among them) never run one
//! (spec §7.3 proposal). The child gets no shell, a minimal environment (`PATH`, `HOME`,
//! `USER`, `LOGNAME`, `BITS_JOB_ID`, `BITS_JOB_STATE`), stdin from /dev/null, `/` as its working
//! directory and a process group of its own, which is killed after the time limit. What it
//! prints is logged, at most [`MAX_LOGGED_LINES`] lines per stream of at most
//! [`MAX_LINE_BYTES`] bytes each; the rest is read and dropped, so a chatty program neither
//! blocks nor fills the log or memory. At most [`MAX_RUNNING`] programs run at once, and at most
//! [`MAX_RUNNING_PER_USER`] per owner (spec §7: 4 notifications in flight per user), so a burst
//! of jobs cannot fork-bomb the machine. A program that fails (non-zero exit, a signal, the time
//! limit, or it cannot be started) runs again after the job's minimum retry delay while the job
//! is still in that state with that command line (spec §7.3, case 92). Delivery is at least
//! once: a daemon start runs the programs of jobs already TRANSFERRED or in ERROR again.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bits_core::{JobId, JobState, NotifyCmdLine};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::events::Due;
use crate::handle::Manager;

/// Uids below this are system ("service") accounts, root among them: their jobs never run a
/// notify program (spec §8's proposal: system uids are those below 1000).
pub const FIRST_USER_UID: u32 = 1000;
/// Notify programs running at once, in all.
pub const MAX_RUNNING: usize = 8;
/// Notify programs running at once for one owner.
pub const MAX_RUNNING_PER_USER: usize = 4;
/// Lines of one output stream of one run that reach the log.
pub const MAX_LOGGED_LINES: usize = 32;
/// Bytes of one output line that reach the log.
pub const MAX_LINE_BYTES: usize = 512;
/// Where the program is looked up is its own business: a fixed, minimal PATH.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How long output is still read after the program exited (a child it left behind may hold
/// its pipes open).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Starts the runner on the current runtime; the manager's event bus hands it due jobs. Jobs
/// already TRANSFERRED or in ERROR when the daemon starts owe their program again: whether it ran
/// before a crash or a restart is not recorded, so it runs at least once, as a late WatchJob
/// subscriber gets JobTransferred / JobError replayed.
pub(crate) fn start(manager: &Manager) {
    let (tx, rx) = mpsc::unbounded_channel();
    manager.events().send_commands_to(tx);
    for entry in manager.table().values() {
        manager.events().command_due(entry.job());
    }
    let runner = Runner {
        manager: manager.clone(),
        all: Arc::new(Semaphore::new(MAX_RUNNING)),
        per_user: Arc::default(),
        owed: Arc::default(),
    };
    tokio::spawn(runner.run(rx));
}

#[derive(Clone)]
struct Runner {
    manager: Manager,
    all: Arc<Semaphore>,
    per_user: Arc<Mutex<HashMap<u32, Arc<Semaphore>>>>,
    /// The due each job's task is delivering (waiting, running or waiting to retry): the same
    /// due again (SetNotifyCmdLine repeated with the same line) starts no second task. Its
    /// token is cancelled when another due of the job replaces it, so the replaced task stops
    /// waiting for a slot or a retry: an owner who keeps changing the command line while their
    /// programs hold every slot leaves one waiting task per job, not one per change.
    owed: Arc<Mutex<HashMap<JobId, (Due, CancellationToken)>>>,
}

impl Runner {
    async fn run(self, mut due: mpsc::UnboundedReceiver<Due>) {
        let shutdown = self.manager.stopping().clone();
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = due.recv() => next,
            };
            let Some(next) = next else { return };
            if let Some(superseded) = self.owe(&next) {
                tokio::spawn(self.clone().deliver(next, superseded));
            }
        }
    }

    fn owed(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, (Due, CancellationToken)>> {
        self.owed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `due` as owed, cancelling the job's earlier due; `None` if a task already
    /// delivers it, else the token that tells the new task it was replaced in turn.
    fn owe(&self, due: &Due) -> Option<CancellationToken> {
        let mut owed = self.owed();
        if owed.get(&due.id()).is_some_and(|(owing, _)| owing == due) {
            return None;
        }
        let superseded = CancellationToken::new();
        if let Some((_, earlier)) = owed.insert(due.id(), (due.clone(), superseded.clone())) {
            earlier.cancel();
        }
        Some(superseded)
    }

    /// Runs `due`'s program until it succeeds or the job no longer owes it, waiting the job's
    /// retry delay after each failure; stops waiting once `superseded` is cancelled.
    async fn deliver(self, due: Due, superseded: CancellationToken) {
        let shutdown = self.manager.stopping().clone();
        while let Some(delay) = self.run_one(&due, &superseded).await {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = superseded.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        let mut owed = self.owed();
        if owed.get(&due.id()).is_some_and(|(owing, _)| *owing == due) {
            owed.remove(&due.id());
        }
    }

    /// The job's owner, if the job still owes `due` and its owner may run programs.
    fn owner_if_due(&self, due: &Due) -> Option<u32> {
        let table = self.manager.table();
        let job = table.get(&due.id())?.job();
        if Due::of(job).as_ref() != Some(due) {
            return None;
        }
        Some(job.owner_uid)
    }

    fn user_slots(&self, uid: u32) -> Arc<Semaphore> {
        let mut per_user = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        per_user
            .entry(uid)
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_RUNNING_PER_USER)))
            .clone()
    }

    /// One run of `due`'s program, if the job still owes it; the retry delay if it failed.
    async fn run_one(&self, due: &Due, superseded: &CancellationToken) -> Option<Duration> {
        let uid = self.owner_if_due(due)?;
        if uid < FIRST_USER_UID {
            tracing::info!(job = %due.id(), uid, "notify program not run: the job belongs to a system account");
            return None;
        }
        let daemon = rustix::process::geteuid().as_raw();
        if daemon != 0 && daemon != uid {
            tracing::warn!(job = %due.id(), uid, "notify program not run: this daemon cannot act as the job's owner");
            return None;
        }
        let slots = async {
            let mine = self.user_slots(uid).acquire_owned().await.ok()?;
            let any = self.all.clone().acquire_owned().await.ok()?;
            Some((mine, any))
        };
        let (mine, any) = tokio::select! {
            _ = superseded.cancelled() => return None,
            slots = slots => slots?,
        };
        // Waiting for a slot may have taken a while: the job may have moved on.
        if self.owner_if_due(due) != Some(uid) {
            return None;
        }
        let user = match crate::access::run_blocking(move || {
            Ok(nix::unistd::User::from_uid(uid.into()))
        })
        .await
        {
            Ok(Ok(Some(user))) => user,
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                tracing::warn!(job = %due.id(), uid, "notify program not run: the job's owner has no user database entry");
                return None;
            }
        };
        let launch = Launch {
            job: due.id(),
            uid,
            gid: user.gid.as_raw(),
            switch: daemon == 0,
            home: user.dir.to_string_lossy().into_owned(),
            name: user.name,
            state: due.state(),
            cmd: due.cmd().clone(),
        };
        let report = run_program(&launch, self.manager.config().notify_cmd_timeout).await;
        // The slots are for running, not for waiting out the retry delay: a failing program
        // must not keep other owners' programs (or its owner's other jobs') from running.
        drop((mine, any));
        if report.outcome.succeeded() {
            tracing::info!(job = %due.id(), uid, "notify program succeeded");
            return None;
        }
        tracing::warn!(job = %due.id(), uid, outcome = ?report.outcome, "notify program failed; it runs again after the job's retry delay");
        let table = self.manager.table();
        let entry = table.get(&due.id())?;
        Some(Duration::from_secs(u64::from(entry.job().minimum_retry_delay_secs.max(1))))
    }
}

/// One run of a notify program.
#[derive(Clone, Debug)]
struct Launch {
    job: JobId,
    uid: u32,
    gid: u32,
    /// Whether to switch to `uid`/`gid` (a root daemon); else the child runs as the daemon,
    /// which is then the owner.
    switch: bool,
    home: String,
    name: String,
    state: JobState,
    cmd: NotifyCmdLine,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Exited(i32),
    /// Killed by a signal it did not get from us.
    Signalled,
    /// Still running at the time limit: its process group was killed.
    TimedOut,
    /// It could not be started (no such program, not executable, …).
    NotStarted(String),
}

impl Outcome {
    fn succeeded(&self) -> bool {
        *self == Outcome::Exited(0)
    }
}

/// What a run did, and how much of its output reached the log.
#[derive(Debug)]
struct Report {
    outcome: Outcome,
    lines_logged: usize,
    bytes_dropped: u64,
}

/// Runs `launch` to completion or until `limit`, logging its output (bounded).
async fn run_program(launch: &Launch, limit: Duration) -> Report {
    let mut command = tokio::process::Command::new(&launch.cmd.program);
    command
        .args(&launch.cmd.arguments)
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", &launch.home)
        .env("USER", &launch.name)
        .env("LOGNAME", &launch.name)
        .env("BITS_JOB_ID", launch.job.to_string())
        .env("BITS_JOB_STATE", launch.state.name())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if launch.switch {
        command.uid(launch.uid).gid(launch.gid);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let outcome = Outcome::NotStarted(format!("{}: {e}", launch.cmd.program));
            return Report { outcome, lines_logged: 0, bytes_dropped: 0 };
        }
    };
    let job = launch.job;
    let stdout = child.stdout.take().map(|out| tokio::spawn(log_output(out, job, "stdout")));
    let stderr = child.stderr.take().map(|err| tokio::spawn(log_output(err, job, "stderr")));
    let outcome = match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(status)) => match status.code() {
            Some(code) => Outcome::Exited(code),
            None => Outcome::Signalled,
        },
        Ok(Err(e)) => Outcome::NotStarted(format!("waiting for {}: {e}", launch.cmd.program)),
        Err(_) => {
            tracing::warn!(job = %job, limit_s = limit.as_secs_f64(), "notify program ran past its time limit; killing it");
            if let Some(pid) = child.id().and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            Outcome::TimedOut
        }
    };
    let mut report = Report { outcome, lines_logged: 0, bytes_dropped: 0 };
    for reader in [stdout, stderr].into_iter().flatten() {
        let abort = reader.abort_handle();
        match tokio::time::timeout(OUTPUT_GRACE, reader).await {
            Ok(Ok((lines, dropped))) => {
                report.lines_logged += lines;
                report.bytes_dropped += dropped;
            }
            _ => abort.abort(),
        }
    }
    report
}

/// Logs a stream's lines, at most [`MAX_LOGGED_LINES`] of at most [`MAX_LINE_BYTES`] bytes, and
/// reads and drops the rest. Returns the lines logged and the bytes dropped.
async fn log_output(mut stream: impl AsyncRead + Unpin, job: JobId, name: &str) -> (usize, u64) {
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let (mut logged, mut dropped) = (0usize, 0u64);
    let emit = |line: &mut Vec<u8>, logged: &mut usize| {
        if *logged < MAX_LOGGED_LINES {
            let text = String::from_utf8_lossy(line);
            tracing::info!(job = %job, stream = name, "notify program: {text}");
            *logged += 1;
        }
        line.clear();
    };
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if logged >= MAX_LOGGED_LINES {
            dropped += n as u64;
            continue;
        }
        for &byte in &buf[..n] {
            if byte == b'\n' {
                emit(&mut line, &mut logged);
            } else if line.len() < MAX_LINE_BYTES && logged < MAX_LOGGED_LINES {
                line.push(byte);
            } else {
                dropped += 1;
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line, &mut logged);
    }
    (logged, dropped)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Instant;

    use super::*;

    fn launch(program: &str, arguments: &[&str]) -> Launch {
        Launch {
            job: JobId::new_random(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            switch: false,
            home: "/nonexistent".into(),
            name: "me".into(),
            state: JobState::Transferred,
            cmd: NotifyCmdLine {
                program: program.into(),
                arguments: arguments.iter().map(|a| a.to_string()).collect(),
            },
        }
    }

    #[tokio::test]
    async fn a_program_past_its_time_limit_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        // The shell's child `sleep` is in its process group: it dies too, so nothing writes
        // the marker afterwards.
        let script = format!("sleep 1000; touch {}", marker.display());
        let started = Instant::now();
        let report =
            run_program(&launch("/bin/sh", &["-c", &script]), Duration::from_millis(300)).await;
        assert_eq!(report.outcome, Outcome::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!marker.exists());
    }

    #[tokio::test]
    async fn the_environment_is_minimal_and_names_the_job() {
        let l = launch("/bin/sh", &["-c", "env | sort; exit 3"]);
        let report = run_program(&l, Duration::from_secs(30)).await;
        assert_eq!(report.outcome, Outcome::Exited(3));
        // PATH HOME USER LOGNAME BITS_JOB_ID BITS_JOB_STATE, and what sh itself adds (PWD,
        // SHLVL, _): nothing of the daemon's environment.
        assert!(report.lines_logged <= 9, "{report:?}");
        let found = run_program(
            &launch("/bin/sh", &["-c", "test \"$BITS_JOB_STATE\" = TRANSFERRED && test -n \"$BITS_JOB_ID\" && test \"$(pwd)\" = / && test -z \"$CARGO\""]),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(found.outcome, Outcome::Exited(0));
    }

    #[tokio::test]
    async fn output_is_logged_bounded_and_the_rest_dropped() {
        let l =
            launch("/bin/sh", &["-c", "head -c 20000000 /dev/zero | tr '\\0' 'x'; seq 1 100000"]);
        let report = run_program(&l, Duration::from_secs(60)).await;
        assert_eq!(report.outcome, Outcome::Exited(0));
        assert_eq!(report.lines_logged, MAX_LOGGED_LINES);
        assert!(report.bytes_dropped > 20_000_000 - MAX_LINE_BYTES as u64, "{report:?}");
    }

    #[tokio::test]
    async fn the_same_due_again_starts_no_second_task() {
        let runner = Runner {
            manager: crate::testing::manager().await,
            all: Arc::new(Semaphore::new(MAX_RUNNING)),
            per_user: Arc::default(),
            owed: Arc::default(),
        };
        let mut job = bits_core::Job::new(
            JobId::new_random(),
            "j".into(),
            1000,
            std::time::SystemTime::now(),
        );
        job.state = JobState::Error;
        job.notify_flags = bits_core::job::notify::JOB_ERROR;
        job.notify_cmd_line =
            Some(NotifyCmdLine { program: "/bin/true".into(), arguments: vec![] });
        let due = Due::of(&job).unwrap();
        let first = runner.owe(&due).unwrap();
        assert!(runner.owe(&due).is_none());
        // Another line for the job is owed anew, and the first task is told it was replaced.
        job.notify_cmd_line =
            Some(NotifyCmdLine { program: "/bin/false".into(), arguments: vec![] });
        assert!(!first.is_cancelled());
        assert!(runner.owe(&Due::of(&job).unwrap()).is_some());
        assert!(first.is_cancelled());
        // The first task ends: the second's record stays.
        runner.clone().deliver(due, first).await;
        assert!(runner.owe(&Due::of(&job).unwrap()).is_none());
    }

    /// An owner whose programs hold all their slots and who keeps changing the command line
    /// leaves no pile of tasks waiting for a slot: each replaced one stops waiting.
    #[tokio::test]
    async fn a_replaced_due_stops_waiting_for_a_slot() {
        let (manager, _dir, id) = crate::testing::manager_with_job(1).await;
        let runner = Runner {
            manager: manager.clone(),
            all: Arc::new(Semaphore::new(MAX_RUNNING)),
            per_user: Arc::default(),
            owed: Arc::default(),
        };
        let uid = FIRST_USER_UID + 1;
        let line = |program: &str| NotifyCmdLine { program: program.into(), arguments: vec![] };
        let due = |program: &str| {
            crate::testing::with_entry(&manager, id, |entry| {
                let job = entry.job_mut();
                job.owner_uid = uid;
                job.notify_flags = bits_core::job::notify::JOB_ERROR;
                job.notify_cmd_line = Some(line(program));
                job.state = JobState::Error;
            });
            Due::of(manager.table().get(&id).unwrap().job()).unwrap()
        };
        // The owner's programs hold every slot of theirs.
        let _held = runner.user_slots(uid).acquire_many_owned(MAX_RUNNING_PER_USER as u32).await;
        let first = due("/bin/true");
        let waiting =
            tokio::spawn(runner.clone().deliver(first.clone(), runner.owe(&first).unwrap()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the first due waits for a slot");
        let second = due("/bin/false");
        let _second = runner.owe(&second).unwrap();
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the replaced due stopped waiting")
            .unwrap();
        assert!(runner.owe(&second).is_none(), "the replacement is still owed");
    }

    #[tokio::test]
    async fn a_missing_program_is_reported() {
        let report = run_program(&launch("/nonexistent/prog", &[]), Duration::from_secs(5)).await;
        assert!(
            matches!(report.outcome, Outcome::NotStarted(ref m) if m.contains("/nonexistent/prog")),
            "{report:?}"
        );
    }
}
