//! The BITS job model: a job, its files, and the progress each reports.

use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::byte_range::{ByteRange, Layout};
use crate::code::Code;
use crate::range_set::RangeSet;
use crate::state::JobState;

/// A job's identity: a random UUID, as BITS uses GUIDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub uuid::Uuid);

impl JobId {
    pub fn new_random() -> JobId {
        JobId(uuid::Uuid::new_v4())
    }

    /// Parses the textual form; `None` for anything that is not a UUID.
    pub fn parse(text: &str) -> Option<JobId> {
        uuid::Uuid::parse_str(text).ok().map(JobId)
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// `BG_JOB_PRIORITY`. Lower BITS number means more urgent; `Ord` follows urgency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Priority {
    Foreground,
    High,
    Normal,
    Low,
}

impl Priority {
    pub fn name(self) -> &'static str {
        match self {
            Priority::Foreground => "FOREGROUND",
            Priority::High => "HIGH",
            Priority::Normal => "NORMAL",
            Priority::Low => "LOW",
        }
    }
}

/// `BG_JOB_TYPE`. Only downloads are supported; the others exist so a request for them gets a
/// precise `E_NOTIMPL` instead of being misread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobType {
    Download,
    Upload,
    UploadReply,
}

/// `BG_ERROR_CONTEXT`: which side of the transfer an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorContext {
    None,
    Unknown,
    GeneralQueueManager,
    QueueManagerNotification,
    LocalFile,
    RemoteFile,
    GeneralTransport,
    RemoteApplication,
}

impl ErrorContext {
    pub fn name(self) -> &'static str {
        match self {
            ErrorContext::None => "NONE",
            ErrorContext::Unknown => "UNKNOWN",
            ErrorContext::GeneralQueueManager => "GENERAL_QUEUE_MANAGER",
            ErrorContext::QueueManagerNotification => "QUEUE_MANAGER_NOTIFICATION",
            ErrorContext::LocalFile => "LOCAL_FILE",
            ErrorContext::RemoteFile => "REMOTE_FILE",
            ErrorContext::GeneralTransport => "GENERAL_TRANSPORT",
            ErrorContext::RemoteApplication => "REMOTE_APPLICATION",
        }
    }
}

/// The job's error object; it exists only while the job is in ERROR or TRANSIENT_ERROR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub context: ErrorContext,
    pub code: Code,
    pub description: String,
    /// Index of the file being processed, or `None` when the error is not tied to a file.
    pub file_index: Option<u32>,
}

/// What identifies one version of a remote file (spec §6.4): size plus validators. A change means
/// the bytes already fetched belong to another version and the file restarts from zero.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validator {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// The temp file a job created: its inode and owner. Only that file is ever reopened or renamed
/// into place, so a file another user puts at the temp file's (guessable) name is refused, even
/// in a shared directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TempId {
    pub ino: u64,
    pub uid: u32,
}

/// One file of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFile {
    pub remote_url: String,
    /// Absolute destination; nothing is written here until Complete renames the temp file.
    pub local_path: PathBuf,
    /// Static ranges in caller order; empty means the whole file.
    pub ranges: Vec<ByteRange>,
    /// Learned from the server; `None` until then (`BG_SIZE_UNKNOWN`).
    pub remote_size: Option<u64>,
    pub validator: Validator,
    /// Remote byte offsets that are written *and synced* in the temp file. The truth after a crash.
    pub filled: RangeSet,
    /// On-demand ranges a caller asked to have first (remote offsets), not yet all filled.
    pub requested: RangeSet,
    /// Where the bytes are written, next to `local_path`.
    pub temp_path: PathBuf,
    /// Set once Complete has renamed the file into place.
    pub completed: bool,
    /// UpdateDownloadPosition: where the next missing byte is looked for first (remote offset).
    #[serde(default)]
    pub download_position: Option<u64>,
    /// The inode number of the destination directory AddFile resolved: every later operation
    /// checks it is still that directory (`None` in records from before it was kept).
    #[serde(default)]
    pub dir_ino: Option<u64>,
    /// The temp file this job created, once it exists (`None` in records written before it was
    /// kept: such a file is reopened only if the job's owner owns it).
    #[serde(default)]
    pub temp_id: Option<TempId>,
    /// Permission bits the downloaded file gets: 0666 less the umask of whoever added it, as a
    /// file they created themselves would (`None`: 0644).
    #[serde(default)]
    pub mode: Option<u32>,
    /// bitsd extension: the SHA-256 (lowercase hex) the local file must have; the file reaches
    /// TRANSFERRED only once its bytes on disk hash to it.
    #[serde(default)]
    pub expected_sha256: Option<String>,
    /// The SHA-256 last computed from the temp file on disk (lowercase hex); `None` until the
    /// file was hashed, and again once its bytes are refetched.
    #[serde(default)]
    pub actual_sha256: Option<String>,
}

impl JobFile {
    /// A whole file just added to a job: nothing known about the remote yet, nothing filled.
    /// Callers set what differs with `JobFile { field, ..JobFile::new(…) }`.
    pub fn new(remote_url: String, local_path: PathBuf, temp_path: PathBuf) -> JobFile {
        JobFile {
            remote_url,
            local_path,
            ranges: Vec::new(),
            remote_size: None,
            validator: Validator::default(),
            filled: RangeSet::new(),
            requested: RangeSet::new(),
            temp_path,
            completed: false,
            download_position: None,
            dir_ino: None,
            temp_id: None,
            mode: None,
            expected_sha256: None,
            actual_sha256: None,
        }
    }

    /// The mapping from remote to local offsets, once the size is known.
    pub fn layout(&self) -> Option<Layout> {
        self.remote_size.and_then(|size| Layout::new(&self.ranges, size).ok())
    }

    /// Bytes this file will have locally, or `None` while unknown.
    pub fn bytes_total(&self) -> Option<u64> {
        // A whole file (the common case, and a job may have thousands): no layout to build.
        if self.ranges.is_empty() {
            return self.remote_size;
        }
        self.layout().map(|l| l.local_len())
    }

    pub fn bytes_transferred(&self) -> u64 {
        self.progress_of(&self.filled).bytes_transferred
    }

    /// Every needed byte is durably in the temp file (or the file was already completed).
    pub fn is_transferred(&self) -> bool {
        self.is_transferred_of(&self.filled)
    }

    /// [`JobFile::is_transferred`] as if `filled` were the filled set. Asked per recorded span
    /// and per file scanned for the next pick, so it answers without counting bytes: a completed
    /// file at once, a whole file by one binary search.
    pub fn is_transferred_of(&self, filled: &RangeSet) -> bool {
        if self.completed {
            return true;
        }
        if self.ranges.is_empty() {
            return self.remote_size.is_some_and(|size| filled.contains_span(0, size));
        }
        self.progress_of(filled).transferred
    }

    /// The file's progress as if `filled` were the filled set, from one layout (a ranged file's
    /// layout sorts and merges its ranges; it is built once here, not once per number).
    pub fn progress_of(&self, filled: &RangeSet) -> FileState {
        // A whole file (the common case, and a job may have thousands): no layout to build.
        if self.ranges.is_empty() {
            let done = match self.remote_size {
                Some(size) => filled.len_within(0, size),
                None => filled.total_len(),
            };
            let whole = self.remote_size.is_some_and(|size| done == size);
            return FileState::new(self, self.remote_size, done, whole);
        }
        match self.layout() {
            Some(layout) => {
                let wanted = layout.wanted();
                let done = wanted.intersect(filled).total_len();
                FileState::new(self, Some(layout.local_len()), done, done == wanted.total_len())
            }
            None => FileState::new(self, None, filled.total_len(), false),
        }
    }

    /// Whether the file's digest, if one is expected, was computed from its bytes on disk and
    /// matched. A file without an expected digest always passes.
    pub fn digest_verified(&self) -> bool {
        match &self.expected_sha256 {
            None => true,
            Some(expected) => self.completed || self.actual_sha256.as_ref() == Some(expected),
        }
    }

    /// Whether the file's bytes are all in but its expected digest was not yet checked against
    /// them.
    pub fn needs_verification(&self) -> bool {
        self.expected_sha256.is_some() && self.is_transferred() && !self.digest_verified()
    }

    /// Keeps only the filled ranges a temp file of `temp_len` bytes (`None`: missing) can hold.
    /// Returns whether anything was dropped. The store may say more is filled than the disk has
    /// when the temp file was deleted or truncated behind our back.
    pub fn trim_filled_to(&mut self, temp_len: Option<u64>) -> bool {
        let backed = match (temp_len, self.layout()) {
            (Some(len), Some(layout)) => layout.remote_backed_by(len),
            _ => RangeSet::new(),
        };
        let kept = self.filled.intersect(&backed);
        let dropped = kept != self.filled;
        self.filled = kept;
        if dropped {
            self.actual_sha256 = None;
        }
        dropped
    }

    /// Forgets everything learned about the remote file, as when it changed on the server.
    pub fn reset_progress(&mut self) {
        self.remote_size = None;
        self.validator = Validator::default();
        self.filled = RangeSet::new();
        self.actual_sha256 = None;
    }
}

/// A BITS download job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub display_name: String,
    pub description: String,
    pub job_type: JobType,
    pub priority: Priority,
    pub state: JobState,
    /// The creator's uid, from the socket's peer credentials.
    pub owner_uid: u32,
    pub minimum_retry_delay_secs: u32,
    pub no_progress_timeout_secs: u32,
    pub creation_time: SystemTime,
    pub modification_time: SystemTime,
    pub transfer_completion_time: Option<SystemTime>,
    pub error: Option<JobError>,
    /// Never decreases (spec invariant I4).
    pub error_count: u32,
    /// Extra request headers (`Name: value` lines, CRLF-terminated) sent with every request of
    /// the job. Write-only through the API: they may carry credentials.
    pub custom_headers: Option<String>,
    /// Time budget for CONNECTING + TRANSFERRING, in seconds (spec §5.3); exceeding it is ERROR
    /// `BG_E_MAXDOWNLOAD_TIMEOUT`.
    pub maximum_download_time_secs: u32,
    /// Which notifications subscribers get (spec §1.6 notify flags).
    pub notify_flags: u32,
    /// Redirect policy and TLS flags (spec §1.6 security flags).
    pub security_flags: u32,
    /// ON_DEMAND_MODE: once the requested ranges are done the job stops (SUSPENDED) instead of
    /// fetching the rest of the file.
    pub on_demand: bool,
    /// MINIMUM_NOTIFICATION_INTERVAL_MS: FileRangesTransferred events come at most this often.
    pub minimum_notification_interval_ms: u32,
    /// bitsd extension: connections per file (segmented download); 1 keeps BITS semantics.
    pub connections_per_file: u32,
    /// bitsd extension: files of this job transferred at once; 1 keeps BITS semantics.
    pub files_at_once: u32,
    /// SetNotifyCmdLine: the program run when the job reaches TRANSFERRED or ERROR.
    #[serde(default)]
    pub notify_cmd_line: Option<NotifyCmdLine>,
    pub files: Vec<JobFile>,
}

/// SetNotifyCmdLine's program and arguments. No shell and no PATH search: `program` is an
/// absolute path and `arguments` its argv[1..], each passed as given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyCmdLine {
    pub program: String,
    pub arguments: Vec<String>,
}

impl NotifyCmdLine {
    /// Characters of the arguments as BITS counts its one parameter string: the arguments
    /// joined by single spaces.
    pub fn arguments_chars(arguments: &[String]) -> usize {
        arguments.iter().map(|a| a.chars().count()).sum::<usize>()
            + arguments.len().saturating_sub(1)
    }
}

/// SetNotifyCmdLine limits (spec §8): the program at most MAX_PATH, the parameters 4,000.
pub const MAX_NOTIFY_PROGRAM_CHARS: usize = 260;
pub const MAX_NOTIFY_ARGUMENTS_CHARS: usize = 4000;

/// Defaults from spec §0.
pub const DEFAULT_MINIMUM_RETRY_DELAY_SECS: u32 = 600;
pub const MINIMUM_RETRY_DELAY_FLOOR_SECS: u32 = 5;
pub const DEFAULT_NO_PROGRESS_TIMEOUT_SECS: u32 = 1_209_600;
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
pub const MAX_URL_CHARS: usize = 2200;
pub const MAX_FILES_PER_JOB: usize = 200;
pub const MAX_RANGES_PER_FILE: usize = 500;
pub const DEFAULT_MAXIMUM_DOWNLOAD_TIME_SECS: u32 = 7_776_000;
pub const MAX_JOBS_PER_USER: usize = 60;
pub const MAX_JOBS_PER_MACHINE: usize = 300;
pub const DEFAULT_MINIMUM_NOTIFICATION_INTERVAL_MS: u32 = 500;
/// Upper bounds of the bitsd extensions.
pub const MAX_CONNECTIONS_PER_FILE: u32 = 32;
pub const MAX_FILES_AT_ONCE: u32 = 64;

/// Notify flags (spec §1.6).
pub mod notify {
    pub const JOB_TRANSFERRED: u32 = 0x01;
    pub const JOB_ERROR: u32 = 0x02;
    pub const DISABLE: u32 = 0x04;
    pub const JOB_MODIFICATION: u32 = 0x08;
    pub const FILE_TRANSFERRED: u32 = 0x10;
    pub const FILE_RANGES_TRANSFERRED: u32 = 0x20;
    pub const ALL: u32 = 0x3F;
    /// [PROPOSAL] default: JOB_TRANSFERRED | JOB_ERROR.
    pub const DEFAULT: u32 = JOB_TRANSFERRED | JOB_ERROR;
}

/// Security flags (spec §1.6): redirect policy and TLS options.
pub mod security {
    pub const SSL_ENABLE_CRL_CHECK: u32 = 0x1;
    pub const SSL_IGNORE_CERT_CN_INVALID: u32 = 0x2;
    pub const SSL_IGNORE_CERT_DATE_INVALID: u32 = 0x4;
    pub const SSL_IGNORE_UNKNOWN_CA: u32 = 0x8;
    pub const SSL_IGNORE_CERT_WRONG_USAGE: u32 = 0x10;
    pub const REDIRECT_POLICY_ALLOW_SILENT: u32 = 0x000;
    pub const REDIRECT_POLICY_ALLOW_REPORT: u32 = 0x100;
    pub const REDIRECT_POLICY_DISALLOW: u32 = 0x200;
    pub const REDIRECT_POLICY_MASK: u32 = 0x700;
    pub const ALLOW_HTTPS_TO_HTTP: u32 = 0x800;
}

/// BITS_JOB_PROPERTY_ID values bitsd knows (spec §1.6).
pub mod property {
    pub const COST_FLAGS: u32 = 1;
    pub const NOTIFICATION_CLSID: u32 = 2;
    pub const DYNAMIC_CONTENT: u32 = 3;
    pub const HIGH_PERFORMANCE: u32 = 4;
    pub const MAX_DOWNLOAD_SIZE: u32 = 5;
    pub const USE_STORED_CREDENTIALS: u32 = 7;
    pub const MINIMUM_NOTIFICATION_INTERVAL_MS: u32 = 9;
    pub const ON_DEMAND_MODE: u32 = 10;
}
/// Custom headers, counting the terminating NUL of the BITS API (so 16,383 characters of text).
pub const MAX_CUSTOM_HEADERS_CHARS: usize = 16_384;

/// What [`JobFile::progress_of`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileState {
    /// `None` while the size is unknown.
    pub bytes_total: Option<u64>,
    pub bytes_transferred: u64,
    /// Every needed byte is in (or the file was already completed).
    pub transferred: bool,
}

impl FileState {
    fn new(file: &JobFile, bytes_total: Option<u64>, done: u64, whole: bool) -> FileState {
        FileState { bytes_total, bytes_transferred: done, transferred: file.completed || whole }
    }
}

/// `BG_JOB_PROGRESS` with the per-file `BG_FILE_PROGRESS` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// `None` is `BG_SIZE_UNKNOWN`: some file's size is not known yet.
    pub bytes_total: Option<u64>,
    pub bytes_transferred: u64,
    pub files_total: u32,
    pub files_transferred: u32,
    pub files: Vec<FileProgress>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProgress {
    pub bytes_total: Option<u64>,
    pub bytes_transferred: u64,
    pub completed: bool,
}

impl Job {
    /// A download job as CreateJob makes it: SUSPENDED, no files, every setting at its BITS
    /// default (spec §1.6). Callers set what differs with `Job { field, ..Job::new(…) }`, so a
    /// new setting gets its default in this one place instead of in every literal.
    pub fn new(id: JobId, display_name: String, owner_uid: u32, now: SystemTime) -> Job {
        Job {
            id,
            display_name,
            description: String::new(),
            job_type: JobType::Download,
            priority: Priority::Normal,
            state: JobState::Suspended,
            owner_uid,
            minimum_retry_delay_secs: DEFAULT_MINIMUM_RETRY_DELAY_SECS,
            no_progress_timeout_secs: DEFAULT_NO_PROGRESS_TIMEOUT_SECS,
            creation_time: now,
            modification_time: now,
            transfer_completion_time: None,
            error: None,
            error_count: 0,
            custom_headers: None,
            maximum_download_time_secs: DEFAULT_MAXIMUM_DOWNLOAD_TIME_SECS,
            notify_flags: notify::DEFAULT,
            security_flags: 0,
            on_demand: false,
            minimum_notification_interval_ms: DEFAULT_MINIMUM_NOTIFICATION_INTERVAL_MS,
            connections_per_file: 1,
            files_at_once: 1,
            notify_cmd_line: None,
            files: Vec::new(),
        }
    }

    pub fn progress(&self) -> Progress {
        self.progress_hiding(|_| None)
    }

    /// The progress as if the spans `hidden(index)` of each file were not filled yet: the
    /// daemon hides spans whose store write is still in flight. Nothing is cloned.
    pub fn progress_hiding<'a>(&self, hidden: impl Fn(u32) -> Option<&'a RangeSet>) -> Progress {
        let mut files_transferred = 0;
        let files: Vec<FileProgress> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let state = match hidden(i as u32) {
                    Some(spans) if !spans.is_empty() => f.progress_of(&f.filled.subtract(spans)),
                    _ => f.progress_of(&f.filled),
                };
                files_transferred += u32::from(state.transferred);
                FileProgress {
                    bytes_total: state.bytes_total,
                    bytes_transferred: state.bytes_transferred,
                    completed: f.completed,
                }
            })
            .collect();
        let bytes_total = files.iter().try_fold(0u64, |acc, f| f.bytes_total.map(|t| acc + t));
        Progress {
            bytes_total,
            bytes_transferred: files.iter().map(|f| f.bytes_transferred).sum(),
            files_total: self.files.len() as u32,
            files_transferred,
            files,
        }
    }

    /// Every file's bytes are all present.
    pub fn all_transferred(&self) -> bool {
        self.files.iter().all(JobFile::is_transferred)
    }

    /// Every file's bytes are all present and every expected digest matched them: the job may
    /// be TRANSFERRED.
    pub fn all_verified(&self) -> bool {
        self.files.iter().all(|f| f.is_transferred() && f.digest_verified())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::byte_range::LENGTH_TO_EOF;

    fn file(ranges: Vec<ByteRange>, size: Option<u64>) -> JobFile {
        JobFile {
            ranges,
            remote_size: size,
            ..JobFile::new("http://h/f".into(), "/tmp/f".into(), "/tmp/.f.part".into())
        }
    }

    #[test]
    fn ranged_file_counts_requested_bytes() {
        let mut f = file(vec![ByteRange::new(24, 17), ByteRange::new(111, LENGTH_TO_EOF)], None);
        assert_eq!(f.bytes_total(), None);
        f.remote_size = Some(1000);
        assert_eq!(f.bytes_total(), Some(17 + 889));
        f.filled.insert(0, 30); // only 24..30 counts
        assert_eq!(f.bytes_transferred(), 6);
        assert!(!f.is_transferred());
        f.filled.insert(24, 41);
        f.filled.insert(111, 1000);
        assert!(f.is_transferred());
    }

    proptest::proptest! {
        /// The quick answer of `is_transferred_of` is the one `progress_of` counts its way to.
        #[test]
        fn is_transferred_agrees_with_progress(
            size in proptest::option::of(0u64..64),
            ranged in proptest::bool::ANY,
            completed in proptest::bool::ANY,
            spans in proptest::collection::vec((0u64..64, 0u64..16), 0..6),
        ) {
            let ranges =
                if ranged { vec![ByteRange::new(3, 9), ByteRange::new(20, LENGTH_TO_EOF)] } else { vec![] };
            let mut f = file(ranges, size);
            f.completed = completed;
            let mut filled = RangeSet::new();
            for (start, len) in spans {
                filled.insert(start, start + len);
            }
            proptest::prop_assert_eq!(f.is_transferred_of(&filled), f.progress_of(&filled).transferred);
        }
    }

    fn job_with(files: Vec<JobFile>) -> Job {
        Job { files, ..Job::new(JobId::new_random(), "j".into(), 0, SystemTime::now()) }
    }

    #[test]
    fn job_total_is_unknown_while_any_file_is() {
        let mut job = job_with(vec![]);
        assert_eq!(job.progress().bytes_total, Some(0));
        job.files.push(file(vec![], Some(10)));
        job.files.push(file(vec![], None));
        assert_eq!(job.progress().bytes_total, None);
        job.files[1].remote_size = Some(0);
        let p = job.progress();
        assert_eq!(p.bytes_total, Some(10));
        assert_eq!(
            p.files_transferred, 1,
            "a zero-byte file is transferred once its size is known"
        );
    }

    #[test]
    fn hidden_spans_are_not_counted_as_transferred() {
        let mut job = job_with(vec![file(vec![], Some(100)), file(vec![], Some(10))]);
        job.files[0].filled.insert(0, 100);
        job.files[1].filled.insert(0, 10);
        let hidden = RangeSet::from_span(40, 100);
        let p = job.progress_hiding(|i| (i == 0).then_some(&hidden));
        assert_eq!((p.bytes_transferred, p.files_transferred), (50, 1));
        assert_eq!((p.files[0].bytes_transferred, p.files[1].bytes_transferred), (40, 10));
        assert_eq!(job.progress().files_transferred, 2);
    }
}
