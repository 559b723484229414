//! What the virtual-time tests of the manager share (tests/timers.rs, tests/faults.rs): a manager
//! over an in-memory store with one FOREGROUND job, a clock that beats steadily while paused, and
//! a log of the job's states at the virtual time each was seen. See timers.rs's header for why the
//! clock needs the beat.

#![allow(dead_code, unused_imports)] // each test binary uses its own part

pub use std::path::PathBuf;
pub use std::sync::Arc;
pub use std::time::Duration;

pub use bits_core::{Code, ErrorContext, JobId, JobState, JobType, Priority};
pub use bits_manager::{Caller, Manager, ManagerConfig};
pub use bits_store::MemStore;
pub use bits_testkit::data::random_bytes;
pub use bits_testkit::faults::{Fault, FaultServer};
pub use bits_testkit::server::TestServer;
pub use http::Method;
pub use tokio::time::Instant;

pub const FILE: &str = "f.bin";
pub const SIZE: usize = 1 << 20;
/// Where connection faults cut a body.
pub const CUT: u64 = 128 * 1024;
/// The per-job retry delay of these cases: the spec's floor.
pub const DELAY: Duration = Duration::from_secs(5);
/// How far the clock moves at a time: the precision of every time measured here.
pub const STEP: Duration = Duration::from_millis(100);
/// How far the clock may move per millisecond of wall time.
pub const BEAT: Duration = Duration::from_millis(25);
/// Longer than any case may take in virtual time: reaching it means the job hung.
pub const HANG: Duration = Duration::from_secs(600);
pub const GET: Option<Method> = Some(Method::GET);

/// The test's own uid, so the job's file work may write the test's temp directory.
pub fn me() -> Caller {
    Caller::user(rustix::process::geteuid().as_raw())
}

pub fn config() -> ManagerConfig {
    let mut config = ManagerConfig {
        sync_bytes: 64 * 1024,
        sync_interval: Duration::from_millis(50),
        ..ManagerConfig::default()
    };
    config.http.connect_timeout = HANG;
    config.http.idle_timeout = HANG;
    config
}

/// A manager with one FOREGROUND job for `url` (not resumed), its retry delay at `DELAY`.
pub struct Case {
    pub manager: Manager,
    pub job: JobId,
    pub _dir: tempfile::TempDir,
    pub dest: PathBuf,
}

pub async fn case(url: &str) -> Case {
    case_with_ranges(url, None).await
}

/// [`case`] for a file added with these ranges (AddFileWithRanges).
pub async fn case_with_ranges(url: &str, ranges: Option<Vec<bits_core::ByteRange>>) -> Case {
    keep_the_clock_beating();
    let manager = Manager::start(Arc::new(MemStore::new()), config()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join(FILE);
    let job = manager
        .create_job(me(), "timers", "", JobType::Download, Priority::Foreground)
        .await
        .unwrap();
    manager.add_file(me(), job, url, &dest, ranges).await.unwrap();
    manager.set_minimum_retry_delay(me(), job, DELAY.as_secs() as u32).await.unwrap();
    Case { manager, job, _dir: dir, dest }
}

pub async fn fault_case(seed: u64) -> (FaultServer, Case) {
    let server = FaultServer::start().await;
    server.add_file(FILE, random_bytes(seed, SIZE));
    let c = case(&server.url(FILE)).await;
    (server, c)
}

/// What the test saw: each change of state or error count with the virtual time it was seen,
/// and when the job first had bytes.
#[derive(Default, Debug)]
pub struct Seen {
    pub states: Vec<(JobState, Instant)>,
    pub first_bytes: Option<Instant>,
    /// The state and error count last seen.
    pub last: Option<(JobState, u32)>,
}

impl Seen {
    pub fn state_names(&self) -> Vec<&'static str> {
        self.states.iter().map(|(s, _)| s.name()).collect()
    }

    pub fn saw(&self, state: JobState) -> bool {
        self.states.iter().any(|(s, _)| *s == state)
    }

    /// The state change after the `n`th (0-based) entry into `state`, and when it was seen.
    pub fn after(&self, state: JobState, n: usize) -> (JobState, Instant) {
        let i = self
            .states
            .iter()
            .enumerate()
            .filter(|(_, (s, _))| *s == state)
            .nth(n)
            .unwrap_or_else(|| panic!("{} #{n} not seen: {:?}", state.name(), self.state_names()))
            .0;
        *self.states.get(i + 1).unwrap_or_else(|| panic!("nothing after: {self:?}"))
    }

    /// When the job entered `state` for the `n`th time (0-based).
    pub fn entered(&self, state: JobState, n: usize) -> Instant {
        self.states
            .iter()
            .filter(|(s, _)| *s == state)
            .nth(n)
            .unwrap_or_else(|| panic!("{} #{n} not seen: {:?}", state.name(), self.state_names()))
            .1
    }
}

impl Case {
    pub async fn resume(&self) -> Instant {
        assert_eq!(self.manager.resume(me(), self.job).await.unwrap(), Code::S_OK);
        Instant::now()
    }

    pub fn info(&self) -> bits_core::Job {
        self.manager.get_job(me(), self.job).unwrap()
    }

    /// Drives the clock until the job's state satisfies `done`, noting every state change (and
    /// the first bytes) at the virtual time of the step it was seen in.
    pub async fn follow(
        &self,
        seen: &mut Seen,
        done: impl Fn(&bits_core::Job) -> bool,
    ) -> bits_core::Job {
        let started = Instant::now();
        loop {
            let job = self.info();
            // A new error is a new entry even in the same state: a retry can fail again within
            // one step.
            if seen.last != Some((job.state, job.error_count)) {
                seen.last = Some((job.state, job.error_count));
                seen.states.push((job.state, Instant::now()));
            }
            if seen.first_bytes.is_none()
                && self.manager.get_progress(me(), self.job).unwrap().bytes_transferred > 0
            {
                seen.first_bytes = Some(Instant::now());
            }
            if done(&job) {
                return job;
            }
            assert!(
                started.elapsed() < HANG,
                "the job hung; states {:?}: {job:?}",
                seen.state_names()
            );
            tick().await;
        }
    }

    pub async fn until(&self, seen: &mut Seen, want: JobState) -> bits_core::Job {
        self.follow(seen, |j| j.state == want).await
    }

    /// The job's error (GetJob and GetError agree) is `code` with `context` on file 0.
    pub fn check_error(&self, job: &bits_core::Job, code: Code, context: ErrorContext) {
        let error = job.error.as_ref().unwrap_or_else(|| panic!("no error in {job:?}"));
        assert_eq!((error.code, error.context, error.file_index), (code, context, Some(0)));
        let got = self.manager.get_error(me(), self.job).unwrap();
        assert_eq!((got.code, got.context, got.file_index), (code, context, Some(0)));
    }

    /// Still ERROR with `code` three retry delays later, with no new request.
    pub async fn stays_in_error(&self, server: &FaultServer, code: Code) {
        let requests = server.log().len();
        run_for(DELAY * 3).await;
        let later = self.info();
        assert_eq!(later.state, JobState::Error, "left ERROR: {later:?}");
        assert_eq!(later.error.map(|e| e.code), Some(code));
        assert_eq!(server.log().len(), requests, "a fatal error was retried");
    }
}

/// Keeps the paused clock from leaping. tokio moves a paused clock to the next timer whenever the
/// runtime idles with no blocking task (a write, a sync) in flight, also while a call waits for
/// the store's flusher thread; with nothing sooner pending that leap would reach the scheduler's
/// hour-long idle sleep or pass a retry delay before the test has looked. This beat is always
/// the next timer but one, and costs a millisecond of wall time per `BEAT` (on the blocking pool,
/// which holds the clock meanwhile), so work outside the runtime ages jobs by little.
pub fn keep_the_clock_beating() {
    drop(tokio::spawn(async {
        loop {
            tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(1)))
                .await
                .unwrap();
            tokio::time::sleep(BEAT).await;
        }
    }));
}

/// One step of the test's look at the job.
pub async fn tick() {
    tokio::time::sleep(STEP).await;
}

pub async fn run_for(span: Duration) {
    let until = Instant::now() + span;
    while Instant::now() < until {
        tick().await;
    }
}

pub fn gets(server: &FaultServer) -> usize {
    server.log().iter().filter(|r| r.method == Method::GET).count()
}
