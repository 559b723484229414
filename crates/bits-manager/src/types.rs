//! The manager's public types: who calls, its configuration, its failures and a status summary.

use std::time::Duration;

use bits_core::job::{DEFAULT_MINIMUM_RETRY_DELAY_SECS, DEFAULT_NO_PROGRESS_TIMEOUT_SECS};

/// Who is calling: the uid from the socket's peer credentials, and whether that uid is an
/// administrator (see [`Manager::caller`](crate::Manager::caller)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    /// Administrators may act on every job and are exempt from the limits (spec §8, §9).
    pub admin: bool,
    /// The calling process, from the socket's peer credentials (`None` over TCP): a file it adds
    /// gets the permissions its own umask would give it.
    pub pid: Option<i32>,
}

impl Caller {
    /// A caller that is not an administrator.
    pub fn user(uid: u32) -> Caller {
        Caller { uid, admin: false, pid: None }
    }

    /// This caller, calling from process `pid`.
    pub fn in_process(self, pid: Option<i32>) -> Caller {
        Caller { pid, ..self }
    }

    /// Permission bits of a file this caller adds: 0666 less the calling process's umask, as
    /// for a file it created itself; 0644 when the process is unknown (TCP) or gone.
    pub(crate) fn file_mode(self) -> u32 {
        let umask = self.pid.and_then(bits_disk::umask_of_process).unwrap_or(0o022);
        0o666 & !umask
    }

    pub fn is_admin(self) -> bool {
        self.admin
    }
}

/// Counts of jobs by state class (see [`Manager::summary`](crate::Manager::summary)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Every job in the queue (final jobs leave it).
    pub jobs: usize,
    /// CONNECTING or TRANSFERRING.
    pub transferring: usize,
    /// QUEUED: waiting for their turn.
    pub queued: usize,
    /// ERROR or TRANSIENT_ERROR.
    pub in_error: usize,
}

/// Tunables of the manager and its workers.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Sync the temp file and record filled ranges after this many new bytes…
    pub sync_bytes: u64,
    /// …or after this much time with unsynced bytes, whichever comes first.
    pub sync_interval: Duration,
    /// HTTP client settings (timeouts, redirects, extra roots for tests).
    pub http: bits_http::HttpConfig,
    /// Minimum retry delay given to new jobs (BITS default 600 s).
    pub default_retry_delay_secs: u32,
    /// No-progress timeout given to new jobs (BITS default 14 days).
    pub default_no_progress_timeout_secs: u32,
    /// Uids that are administrators (default: root).
    pub admin_uids: Vec<u32>,
    /// Groups whose members are administrators (spec: "uid 0 or a member of a configurable
    /// group"; default none).
    pub admin_gids: Vec<u32>,
    /// Jobs one non-admin user may own (BITS policy default 60).
    pub max_jobs_per_user: usize,
    /// Jobs in the queue beyond which non-admins may not create more (BITS default 300).
    pub max_jobs_per_machine: usize,
    /// How long a new job may wait for its store flush (default 20 ms). CreateJob answers
    /// before its job is flushed: a client's next call (AddFile, typically under a millisecond
    /// later) flushes the new job along with its own write, so the pair costs one flush instead
    /// of two. After this delay a flush starts anyway (and is retried while the store fails).
    /// A crash in between loses only an empty job, whose id then answers BG_E_NOT_FOUND.
    pub new_job_flush_delay: Duration,
    /// How long a SetNotifyCmdLine program may run before its process group is killed
    /// (default 5 minutes).
    pub notify_cmd_timeout: Duration,
}

impl Default for ManagerConfig {
    fn default() -> ManagerConfig {
        ManagerConfig {
            sync_bytes: 16 << 20,
            sync_interval: Duration::from_secs(1),
            http: bits_http::HttpConfig::default(),
            default_retry_delay_secs: DEFAULT_MINIMUM_RETRY_DELAY_SECS,
            default_no_progress_timeout_secs: DEFAULT_NO_PROGRESS_TIMEOUT_SECS,
            admin_uids: vec![0],
            admin_gids: Vec::new(),
            max_jobs_per_user: bits_core::job::MAX_JOBS_PER_USER,
            max_jobs_per_machine: bits_core::job::MAX_JOBS_PER_MACHINE,
            new_job_flush_delay: Duration::from_millis(20),
            notify_cmd_timeout: Duration::from_secs(300),
        }
    }
}

/// Failures of the manager itself (as opposed to a refused BITS operation).
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("job store: {0}")]
    Store(#[from] bits_store::StoreError),
    #[error("HTTP client: {0}")]
    Http(#[from] bits_http::FetchError),
    #[error("cannot start the store's flusher thread: {0}")]
    Thread(std::io::Error),
}
