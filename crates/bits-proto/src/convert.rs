//! Every conversion between `bits.v1` wire messages and bits-core types.
//!
//! Server side (core → wire): [`job_to_wire`], [`file_to_wire`], [`progress_to_wire`],
//! [`job_error_to_wire`], [`ranges_to_wire`], [`status_reply`]; and for request fields (wire →
//! core): [`parse_job_id`], [`priority_from_wire`], [`job_type_from_wire`], [`ranges_from_wire`].
//!
//! Client side (wire → core view): [`job_from_wire`] gives a [`JobInfo`], [`file_from_wire`] a
//! [`FileInfo`], plus [`progress_from_wire`], [`job_error_from_wire`], [`code_from_status_reply`].
//!
//! Every wire → core function rejects what it cannot represent (an enum number out of range, a
//! malformed id, a missing required message) with `E_INVALIDARG` naming the offending value.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bits_core::{
    BitsError, ByteRange, Code, ErrorContext, FileProgress, FlushStats, Job, JobError, JobFile,
    JobId, JobState, JobType, Priority, Progress, RangeSet, Stats,
};

use crate::status::echo;
use crate::v1;

// ---------------------------------------------------------------------------------------------
// Client-side views
// ---------------------------------------------------------------------------------------------

/// A job as a client sees it (the `Job` message in bits-core types).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    pub id: JobId,
    pub display_name: String,
    pub description: String,
    pub job_type: JobType,
    pub priority: Priority,
    pub state: JobState,
    pub owner_uid: u32,
    pub minimum_retry_delay_secs: u32,
    pub no_progress_timeout_secs: u32,
    pub creation_time: SystemTime,
    pub modification_time: SystemTime,
    pub transfer_completion_time: Option<SystemTime>,
    pub error_count: u32,
    /// Present only in ERROR and TRANSIENT_ERROR.
    pub error: Option<JobError>,
    pub progress: Progress,
    pub maximum_download_time_secs: u32,
    pub notify_flags: u32,
    pub security_flags: u32,
    pub on_demand_mode: bool,
    pub minimum_notification_interval_ms: u32,
    pub connections_per_file: u32,
    pub files_at_once: u32,
    /// Whether the job has custom headers (write-only: their text is never returned).
    pub has_custom_headers: bool,
    /// SetNotifyCmdLine: the program then its arguments; empty when none is set.
    pub notify_cmd_line: Vec<String>,
}

/// A file of a job as a client sees it (the `File` message in bits-core types).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub index: u32,
    pub remote_url: String,
    pub local_path: PathBuf,
    /// Static ranges in caller order; empty means the whole file.
    pub ranges: Vec<ByteRange>,
    /// `None` until the server reported it (`BG_SIZE_UNKNOWN`).
    pub remote_size: Option<u64>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub temp_path: PathBuf,
    pub progress: FileProgress,
    /// The SHA-256 given at AddFile (lowercase hex), if any.
    pub expected_sha256: Option<String>,
    /// The SHA-256 of the local file as computed from disk (lowercase hex), once known.
    pub actual_sha256: Option<String>,
}

fn invalid(message: String) -> BitsError {
    BitsError::new(Code::E_INVALIDARG, message)
}

fn missing(what: &str) -> BitsError {
    invalid(format!("required field {what} is missing"))
}

// ---------------------------------------------------------------------------------------------
// Ids and times
// ---------------------------------------------------------------------------------------------

/// Parses a job id; anything that is not a UUID is `E_INVALIDARG` naming it (its start, if it
/// is long: see [`echo`]).
pub fn parse_job_id(text: &str) -> Result<JobId, BitsError> {
    JobId::parse(text)
        .ok_or_else(|| invalid(format!("job id '{}' is not a valid UUID", echo(text))))
}

/// `SystemTime` → `google.protobuf.Timestamp` (times before 1970 are represented too).
pub fn timestamp_to_wire(time: SystemTime) -> prost_types::Timestamp {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => prost_types::Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos() as i32,
        },
        Err(e) => {
            // `before` is how far before the epoch; Timestamp wants floor seconds + positive nanos.
            let before = e.duration();
            let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            let nanos = before.subsec_nanos() as i32;
            if nanos == 0 {
                prost_types::Timestamp { seconds: -secs, nanos: 0 }
            } else {
                prost_types::Timestamp { seconds: -secs - 1, nanos: 1_000_000_000 - nanos }
            }
        }
    }
}

/// `google.protobuf.Timestamp` → `SystemTime`; `E_INVALIDARG` for nanos outside 0..1e9.
pub fn timestamp_from_wire(ts: &prost_types::Timestamp) -> Result<SystemTime, BitsError> {
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| invalid(format!("timestamp nanos {} out of range", ts.nanos)))?;
    let out_of_range = || invalid(format!("timestamp {}s is out of range", ts.seconds));
    if ts.seconds >= 0 {
        UNIX_EPOCH
            .checked_add(Duration::new(ts.seconds.unsigned_abs(), nanos))
            .ok_or_else(out_of_range)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(ts.seconds.unsigned_abs()))
            .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
            .ok_or_else(out_of_range)
    }
}

// ---------------------------------------------------------------------------------------------
// Enums
// ---------------------------------------------------------------------------------------------

pub fn state_to_wire(state: JobState) -> v1::JobState {
    match state {
        JobState::Queued => v1::JobState::Queued,
        JobState::Connecting => v1::JobState::Connecting,
        JobState::Transferring => v1::JobState::Transferring,
        JobState::Suspended => v1::JobState::Suspended,
        JobState::Error => v1::JobState::Error,
        JobState::TransientError => v1::JobState::TransientError,
        JobState::Transferred => v1::JobState::Transferred,
        JobState::Acknowledged => v1::JobState::Acknowledged,
        JobState::Cancelled => v1::JobState::Cancelled,
    }
}

/// A wire job state; UNSPECIFIED and unknown numbers are `E_INVALIDARG`.
pub fn state_from_wire(value: i32) -> Result<JobState, BitsError> {
    Ok(match v1::JobState::try_from(value) {
        Ok(v1::JobState::Queued) => JobState::Queued,
        Ok(v1::JobState::Connecting) => JobState::Connecting,
        Ok(v1::JobState::Transferring) => JobState::Transferring,
        Ok(v1::JobState::Suspended) => JobState::Suspended,
        Ok(v1::JobState::Error) => JobState::Error,
        Ok(v1::JobState::TransientError) => JobState::TransientError,
        Ok(v1::JobState::Transferred) => JobState::Transferred,
        Ok(v1::JobState::Acknowledged) => JobState::Acknowledged,
        Ok(v1::JobState::Cancelled) => JobState::Cancelled,
        Ok(v1::JobState::Unspecified) | Err(_) => {
            return Err(invalid(format!("job state {value} is not a valid JobState")));
        }
    })
}

pub fn priority_to_wire(priority: Priority) -> v1::Priority {
    match priority {
        Priority::Foreground => v1::Priority::Foreground,
        Priority::High => v1::Priority::High,
        Priority::Normal => v1::Priority::Normal,
        Priority::Low => v1::Priority::Low,
    }
}

/// A wire priority; UNSPECIFIED means NORMAL, an unknown number is `E_INVALIDARG`.
pub fn priority_from_wire(value: i32) -> Result<Priority, BitsError> {
    Ok(match v1::Priority::try_from(value) {
        Ok(v1::Priority::Foreground) => Priority::Foreground,
        Ok(v1::Priority::High) => Priority::High,
        Ok(v1::Priority::Normal | v1::Priority::Unspecified) => Priority::Normal,
        Ok(v1::Priority::Low) => Priority::Low,
        Err(_) => return Err(invalid(format!("priority {value} is not a valid Priority"))),
    })
}

pub fn job_type_to_wire(job_type: JobType) -> v1::JobType {
    match job_type {
        JobType::Download => v1::JobType::Download,
        JobType::Upload => v1::JobType::Upload,
        JobType::UploadReply => v1::JobType::UploadReply,
    }
}

/// A wire job type; an unknown number is `E_INVALIDARG`. (Refusing uploads with `E_NOTIMPL` is
/// the daemon's business: they are valid values.)
pub fn job_type_from_wire(value: i32) -> Result<JobType, BitsError> {
    Ok(match v1::JobType::try_from(value) {
        Ok(v1::JobType::Download) => JobType::Download,
        Ok(v1::JobType::Upload) => JobType::Upload,
        Ok(v1::JobType::UploadReply) => JobType::UploadReply,
        Err(_) => return Err(invalid(format!("job type {value} is not a valid JobType"))),
    })
}

pub fn error_context_to_wire(context: ErrorContext) -> v1::ErrorContext {
    match context {
        ErrorContext::None => v1::ErrorContext::None,
        ErrorContext::Unknown => v1::ErrorContext::Unknown,
        ErrorContext::GeneralQueueManager => v1::ErrorContext::GeneralQueueManager,
        ErrorContext::QueueManagerNotification => v1::ErrorContext::QueueManagerNotification,
        ErrorContext::LocalFile => v1::ErrorContext::LocalFile,
        ErrorContext::RemoteFile => v1::ErrorContext::RemoteFile,
        ErrorContext::GeneralTransport => v1::ErrorContext::GeneralTransport,
        ErrorContext::RemoteApplication => v1::ErrorContext::RemoteApplication,
    }
}

/// A wire error context; an unknown number is `E_INVALIDARG`.
pub fn error_context_from_wire(value: i32) -> Result<ErrorContext, BitsError> {
    Ok(match v1::ErrorContext::try_from(value) {
        Ok(v1::ErrorContext::None) => ErrorContext::None,
        Ok(v1::ErrorContext::Unknown) => ErrorContext::Unknown,
        Ok(v1::ErrorContext::GeneralQueueManager) => ErrorContext::GeneralQueueManager,
        Ok(v1::ErrorContext::QueueManagerNotification) => ErrorContext::QueueManagerNotification,
        Ok(v1::ErrorContext::LocalFile) => ErrorContext::LocalFile,
        Ok(v1::ErrorContext::RemoteFile) => ErrorContext::RemoteFile,
        Ok(v1::ErrorContext::GeneralTransport) => ErrorContext::GeneralTransport,
        Ok(v1::ErrorContext::RemoteApplication) => ErrorContext::RemoteApplication,
        Err(_) => {
            return Err(invalid(format!("error context {value} is not a valid ErrorContext")));
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Codes
// ---------------------------------------------------------------------------------------------

/// Resolves a (hresult, name) pair from the wire. The HRESULT is authoritative; a name that
/// disagrees with it, or an HRESULT bitsd does not know, is `E_INVALIDARG`.
pub fn code_from_wire(hresult: u32, name: &str) -> Result<Code, BitsError> {
    let code = Code::from_hresult(hresult)
        .ok_or_else(|| invalid(format!("HRESULT 0x{hresult:08X} ({name}) is not a known code")))?;
    if !name.is_empty() && code.name() != name {
        return Err(invalid(format!(
            "code name {name} does not match HRESULT 0x{hresult:08X} ({})",
            code.name()
        )));
    }
    Ok(code)
}

/// A success reply carrying `code` (S_OK, BG_S_PARTIAL_COMPLETE, ...).
pub fn status_reply(code: Code) -> v1::StatusReply {
    v1::StatusReply { hresult: code.hresult(), code: code.name() }
}

/// The success code of a `StatusReply`; an error code in it is refused (errors travel as statuses).
pub fn code_from_status_reply(reply: &v1::StatusReply) -> Result<Code, BitsError> {
    let code = code_from_wire(reply.hresult, &reply.code)?;
    if !code.is_success() {
        return Err(invalid(format!("StatusReply carries the failure code {code}")));
    }
    Ok(code)
}

// ---------------------------------------------------------------------------------------------
// Ranges
// ---------------------------------------------------------------------------------------------

pub fn range_to_wire(range: &ByteRange) -> v1::ByteRange {
    v1::ByteRange { offset: range.offset, length: range.length }
}

pub fn range_from_wire(range: &v1::ByteRange) -> ByteRange {
    ByteRange::new(range.offset, range.length)
}

pub fn ranges_to_wire(ranges: &[ByteRange]) -> Vec<v1::ByteRange> {
    ranges.iter().map(range_to_wire).collect()
}

pub fn ranges_from_wire(ranges: &[v1::ByteRange]) -> Vec<ByteRange> {
    ranges.iter().map(range_from_wire).collect()
}

// ---------------------------------------------------------------------------------------------
// Progress and errors
// ---------------------------------------------------------------------------------------------

pub fn file_progress_to_wire(progress: &FileProgress) -> v1::FileProgress {
    v1::FileProgress {
        bytes_total: progress.bytes_total,
        bytes_transferred: progress.bytes_transferred,
        completed: progress.completed,
    }
}

pub fn file_progress_from_wire(progress: &v1::FileProgress) -> FileProgress {
    FileProgress {
        bytes_total: progress.bytes_total,
        bytes_transferred: progress.bytes_transferred,
        completed: progress.completed,
    }
}

/// Job progress; an unknown total (`BG_SIZE_UNKNOWN`) is an absent field.
pub fn progress_to_wire(progress: &Progress) -> v1::Progress {
    v1::Progress {
        bytes_total: progress.bytes_total,
        bytes_transferred: progress.bytes_transferred,
        files_total: progress.files_total,
        files_transferred: progress.files_transferred,
        files: progress.files.iter().map(file_progress_to_wire).collect(),
    }
}

pub fn progress_from_wire(progress: &v1::Progress) -> Progress {
    Progress {
        bytes_total: progress.bytes_total,
        bytes_transferred: progress.bytes_transferred,
        files_total: progress.files_total,
        files_transferred: progress.files_transferred,
        files: progress.files.iter().map(file_progress_from_wire).collect(),
    }
}

pub fn job_error_to_wire(error: &JobError) -> v1::JobError {
    v1::JobError {
        context: error_context_to_wire(error.context) as i32,
        hresult: error.code.hresult(),
        code: error.code.name(),
        description: error.description.clone(),
        file_index: error.file_index,
    }
}

pub fn job_error_from_wire(error: &v1::JobError) -> Result<JobError, BitsError> {
    Ok(JobError {
        context: error_context_from_wire(error.context)?,
        code: code_from_wire(error.hresult, &error.code)?,
        description: error.description.clone(),
        file_index: error.file_index,
    })
}

// ---------------------------------------------------------------------------------------------
// Jobs and files
// ---------------------------------------------------------------------------------------------

/// The full `Job` message of a job, with its computed progress and (if any) its error.
pub fn job_to_wire(job: &Job) -> v1::Job {
    v1::Job {
        id: job.id.to_string(),
        display_name: job.display_name.clone(),
        description: job.description.clone(),
        r#type: job_type_to_wire(job.job_type) as i32,
        priority: priority_to_wire(job.priority) as i32,
        state: state_to_wire(job.state) as i32,
        owner_uid: job.owner_uid,
        minimum_retry_delay_secs: job.minimum_retry_delay_secs,
        no_progress_timeout_secs: job.no_progress_timeout_secs,
        creation_time: Some(timestamp_to_wire(job.creation_time)),
        modification_time: Some(timestamp_to_wire(job.modification_time)),
        transfer_completion_time: job.transfer_completion_time.map(timestamp_to_wire),
        error_count: job.error_count,
        error: job.error.as_ref().map(job_error_to_wire),
        progress: Some(progress_to_wire(&job.progress())),
        maximum_download_time_secs: job.maximum_download_time_secs,
        notify_flags: job.notify_flags,
        security_flags: job.security_flags,
        on_demand_mode: job.on_demand,
        minimum_notification_interval_ms: job.minimum_notification_interval_ms,
        connections_per_file: job.connections_per_file,
        files_at_once: job.files_at_once,
        has_custom_headers: job.custom_headers.is_some(),
        notify_cmd_line: job
            .notify_cmd_line
            .iter()
            .flat_map(|cmd| std::iter::once(&cmd.program).chain(&cmd.arguments).cloned())
            .collect(),
    }
}

/// A client view of a `Job` message.
pub fn job_from_wire(job: &v1::Job) -> Result<JobInfo, BitsError> {
    let time = |ts: &Option<prost_types::Timestamp>, what: &str| {
        ts.as_ref().ok_or_else(|| missing(what)).and_then(timestamp_from_wire)
    };
    Ok(JobInfo {
        id: parse_job_id(&job.id)?,
        display_name: job.display_name.clone(),
        description: job.description.clone(),
        job_type: job_type_from_wire(job.r#type)?,
        priority: priority_from_wire(job.priority)?,
        state: state_from_wire(job.state)?,
        owner_uid: job.owner_uid,
        minimum_retry_delay_secs: job.minimum_retry_delay_secs,
        no_progress_timeout_secs: job.no_progress_timeout_secs,
        creation_time: time(&job.creation_time, "Job.creation_time")?,
        modification_time: time(&job.modification_time, "Job.modification_time")?,
        transfer_completion_time: job
            .transfer_completion_time
            .as_ref()
            .map(timestamp_from_wire)
            .transpose()?,
        error_count: job.error_count,
        error: job.error.as_ref().map(job_error_from_wire).transpose()?,
        progress: job
            .progress
            .as_ref()
            .map(progress_from_wire)
            .ok_or_else(|| missing("Job.progress"))?,
        maximum_download_time_secs: job.maximum_download_time_secs,
        notify_flags: job.notify_flags,
        security_flags: job.security_flags,
        on_demand_mode: job.on_demand_mode,
        minimum_notification_interval_ms: job.minimum_notification_interval_ms,
        connections_per_file: job.connections_per_file,
        files_at_once: job.files_at_once,
        has_custom_headers: job.has_custom_headers,
        notify_cmd_line: job.notify_cmd_line.clone(),
    })
}

/// The `File` message of file number `index` of a job.
pub fn file_to_wire(index: u32, file: &JobFile) -> v1::File {
    v1::File {
        index,
        remote_url: file.remote_url.clone(),
        local_path: file.local_path.to_string_lossy().into_owned(),
        ranges: ranges_to_wire(&file.ranges),
        remote_size: file.remote_size,
        etag: file.validator.etag.clone().unwrap_or_default(),
        last_modified: file.validator.last_modified.clone().unwrap_or_default(),
        temp_path: file.temp_path.to_string_lossy().into_owned(),
        progress: Some(v1::FileProgress {
            bytes_total: file.bytes_total(),
            bytes_transferred: file.bytes_transferred(),
            completed: file.completed,
        }),
        expected_sha256: file.expected_sha256.clone(),
        actual_sha256: file.actual_sha256.clone(),
    }
}

/// The `File` messages of every file of a job, numbered from 0.
pub fn files_to_wire(job: &Job) -> Vec<v1::File> {
    job.files.iter().zip(0u32..).map(|(f, i)| file_to_wire(i, f)).collect()
}

/// A client view of a `File` message.
pub fn file_from_wire(file: &v1::File) -> Result<FileInfo, BitsError> {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(FileInfo {
        index: file.index,
        remote_url: file.remote_url.clone(),
        local_path: PathBuf::from(&file.local_path),
        ranges: ranges_from_wire(&file.ranges),
        remote_size: file.remote_size,
        etag: non_empty(&file.etag),
        last_modified: non_empty(&file.last_modified),
        temp_path: PathBuf::from(&file.temp_path),
        progress: file
            .progress
            .as_ref()
            .map(file_progress_from_wire)
            .ok_or_else(|| missing("File.progress"))?,
        expected_sha256: file.expected_sha256.clone(),
        actual_sha256: file.actual_sha256.clone(),
    })
}

// ---------------------------------------------------------------------------------------------
// Job events (WatchJob)
// ---------------------------------------------------------------------------------------------

/// One notification of a job as both sides see it (the `JobEvent` message in bits-core types).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEventInfo {
    pub job: JobId,
    pub time: SystemTime,
    pub event: EventInfo,
}

/// What a [`JobEventInfo`] reports: the daemon's own [`bits_core::EventKind`], under the name
/// the client side has always used.
pub use bits_core::EventKind as EventInfo;

/// A set of spans as wire ranges (offset, length), in order.
pub fn range_set_to_wire(ranges: &RangeSet) -> Vec<v1::ByteRange> {
    ranges.iter().map(|s| v1::ByteRange { offset: s.start, length: s.len() }).collect()
}

/// Wire ranges as a set; a `BG_LENGTH_TO_EOF` length or a range past `u64::MAX` is
/// `E_INVALIDARG` (an event reports bytes that exist).
pub fn range_set_from_wire(ranges: &[v1::ByteRange]) -> Result<RangeSet, BitsError> {
    let mut set = RangeSet::new();
    for r in ranges {
        let end = r
            .offset
            .checked_add(r.length)
            .filter(|_| r.length != bits_core::LENGTH_TO_EOF)
            .ok_or_else(|| {
            invalid(format!("range {}:{} is not a span of bytes", r.offset, r.length))
        })?;
        set.insert(r.offset, end);
    }
    Ok(set)
}

pub fn job_event_to_wire(event: &JobEventInfo) -> v1::JobEvent {
    use v1::job_event::Event;
    let wire = match &event.event {
        EventInfo::JobTransferred => Event::JobTransferred(v1::JobTransferredEvent {}),
        EventInfo::JobError(error) => {
            Event::JobError(v1::JobErrorEvent { error: Some(job_error_to_wire(error)) })
        }
        EventInfo::JobModification { state, progress } => {
            Event::JobModification(v1::JobModificationEvent {
                state: state_to_wire(*state) as i32,
                progress: Some(progress_to_wire(progress)),
            })
        }
        EventInfo::FileTransferred { index } => {
            Event::FileTransferred(v1::FileTransferredEvent { file_index: *index })
        }
        EventInfo::FileRangesTransferred { index, ranges } => {
            Event::FileRangesTransferred(v1::FileRangesTransferredEvent {
                file_index: *index,
                ranges: range_set_to_wire(ranges),
            })
        }
    };
    v1::JobEvent {
        job_id: event.job.to_string(),
        time: Some(timestamp_to_wire(event.time)),
        event: Some(wire),
    }
}

/// A wire event; a missing time, event or required message is `E_INVALIDARG`.
pub fn job_event_from_wire(event: &v1::JobEvent) -> Result<JobEventInfo, BitsError> {
    use v1::job_event::Event;
    let job = parse_job_id(&event.job_id)?;
    let time = timestamp_from_wire(event.time.as_ref().ok_or_else(|| missing("JobEvent.time"))?)?;
    let info = match event.event.as_ref().ok_or_else(|| missing("JobEvent.event"))? {
        Event::JobTransferred(_) => EventInfo::JobTransferred,
        Event::JobError(e) => EventInfo::JobError(job_error_from_wire(
            e.error.as_ref().ok_or_else(|| missing("JobErrorEvent.error"))?,
        )?),
        Event::JobModification(m) => EventInfo::JobModification {
            state: state_from_wire(m.state)?,
            progress: progress_from_wire(
                m.progress.as_ref().ok_or_else(|| missing("JobModificationEvent.progress"))?,
            ),
        },
        Event::FileTransferred(f) => EventInfo::FileTransferred { index: f.file_index },
        Event::FileRangesTransferred(f) => EventInfo::FileRangesTransferred {
            index: f.file_index,
            ranges: range_set_from_wire(&f.ranges)?,
        },
    };
    Ok(JobEventInfo { job, time, event: info })
}

// ---------------------------------------------------------------------------------------------
// Daemon statistics (GetStats)
// ---------------------------------------------------------------------------------------------

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn state_counts_to_wire(counts: &[(JobState, u64)]) -> Vec<v1::JobStateCount> {
    counts
        .iter()
        .map(|&(state, count)| v1::JobStateCount { state: state_to_wire(state) as i32, count })
        .collect()
}

fn state_counts_from_wire(counts: &[v1::JobStateCount]) -> Result<Vec<(JobState, u64)>, BitsError> {
    counts.iter().map(|c| Ok((state_from_wire(c.state)?, c.count))).collect()
}

pub fn stats_to_wire(stats: &Stats) -> v1::GetStatsReply {
    let flushes = &stats.flushes;
    v1::GetStatsReply {
        start_time: Some(timestamp_to_wire(stats.start_time)),
        uptime_secs: stats.uptime.as_secs(),
        jobs: state_counts_to_wire(&stats.jobs),
        own_jobs: state_counts_to_wire(&stats.own_jobs),
        bytes_transferred: stats.bytes_transferred,
        control_connections: u32::try_from(stats.control_connections).unwrap_or(u32::MAX),
        watch_streams: u32::try_from(stats.watch_streams).unwrap_or(u32::MAX),
        http_connections: u32::try_from(stats.http_connections).unwrap_or(u32::MAX),
        transient_errors: stats
            .transient_errors
            .iter()
            .map(|&(code, count)| v1::ErrorCount {
                code: code.name(),
                hresult: code.hresult(),
                count,
            })
            .collect(),
        store_flushes: Some(v1::StoreFlushStats {
            count: flushes.count,
            failed: flushes.failed,
            total_micros: micros(flushes.total),
            max_micros: micros(flushes.max),
            buckets: flushes
                .buckets
                .iter()
                .map(|&(le, count)| v1::LatencyBucket { le_micros: micros(le), count })
                .collect(),
        }),
    }
}

/// A GetStats reply; an unknown state or code is `E_INVALIDARG` (a newer daemon than this client).
pub fn stats_from_wire(reply: &v1::GetStatsReply) -> Result<Stats, BitsError> {
    let start = reply.start_time.as_ref().ok_or_else(|| missing("GetStatsReply.start_time"))?;
    let flushes = reply.store_flushes.clone().unwrap_or_default();
    Ok(Stats {
        start_time: timestamp_from_wire(start)?,
        uptime: Duration::from_secs(reply.uptime_secs),
        jobs: state_counts_from_wire(&reply.jobs)?,
        own_jobs: state_counts_from_wire(&reply.own_jobs)?,
        bytes_transferred: reply.bytes_transferred,
        control_connections: u64::from(reply.control_connections),
        watch_streams: u64::from(reply.watch_streams),
        http_connections: u64::from(reply.http_connections),
        transient_errors: reply
            .transient_errors
            .iter()
            .map(|e| Ok((code_from_wire(e.hresult, &e.code)?, e.count)))
            .collect::<Result<_, BitsError>>()?,
        flushes: FlushStats {
            count: flushes.count,
            failed: flushes.failed,
            total: Duration::from_micros(flushes.total_micros),
            max: Duration::from_micros(flushes.max_micros),
            buckets: flushes
                .buckets
                .iter()
                .map(|b| (Duration::from_micros(b.le_micros), b.count))
                .collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bits_core::{LENGTH_TO_EOF, RangeSet, Validator};

    use super::*;

    fn sample_job() -> Job {
        let t0 = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let file = |size: Option<u64>, ranges: Vec<ByteRange>| JobFile {
            ranges,
            remote_size: size,
            validator: Validator { etag: Some("\"abc\"".into()), last_modified: None },
            filled: RangeSet::from_span(0, 10),
            expected_sha256: Some("ab".repeat(32)),
            ..JobFile::new("http://h/f".into(), "/tmp/f".into(), "/tmp/.f.part".into())
        };
        Job {
            description: "desc".into(),
            priority: Priority::High,
            state: JobState::TransientError,
            modification_time: t0 + Duration::from_secs(5),
            error: Some(JobError {
                context: ErrorContext::RemoteFile,
                code: Code::Http(404),
                description: "not found".into(),
                file_index: Some(1),
            }),
            error_count: 3,
            notify_cmd_line: Some(bits_core::NotifyCmdLine {
                program: "/bin/echo".into(),
                arguments: vec!["a b".into(), "c".into()],
            }),
            files: vec![
                file(Some(100), vec![]),
                file(None, vec![ByteRange::new(5, 10), ByteRange::new(50, LENGTH_TO_EOF)]),
            ],
            ..Job::new(JobId::new_random(), "job".into(), 1000, t0)
        }
    }

    #[test]
    fn stats_round_trip_through_the_wire_and_an_unknown_state_is_refused() {
        let us = Duration::from_micros;
        let stats = Stats {
            start_time: UNIX_EPOCH + Duration::new(1_700_000_000, 5_000),
            uptime: Duration::from_secs(42),
            jobs: vec![(JobState::Queued, 2), (JobState::Transferred, 1)],
            own_jobs: vec![(JobState::Transferred, 1)],
            bytes_transferred: 1 << 30,
            control_connections: 3,
            watch_streams: 1,
            http_connections: 2,
            transient_errors: vec![(Code::E_FAIL, 1), (Code::Http(503), 4)],
            flushes: FlushStats {
                count: 10,
                failed: 1,
                total: us(12_345),
                max: us(4_000),
                buckets: vec![(us(1_000), 6), (us(5_000), 10)],
            },
        };
        let wire = stats_to_wire(&stats);
        assert_eq!(wire.transient_errors[1].code, "BG_E_HTTP_ERROR_503");
        assert_eq!(stats_from_wire(&wire).unwrap(), stats);
        let mut bad = wire.clone();
        bad.jobs[0].state = 99;
        assert_eq!(stats_from_wire(&bad).unwrap_err().code, Code::E_INVALIDARG);
    }

    #[test]
    fn job_round_trips_through_the_wire() {
        let job = sample_job();
        let wire = job_to_wire(&job);
        assert_eq!(wire.state, v1::JobState::TransientError as i32);
        assert_eq!(wire.progress.as_ref().unwrap().bytes_total, None, "one size is unknown");
        assert_eq!(wire.error.as_ref().unwrap().code, "BG_E_HTTP_ERROR_404");
        assert_eq!(wire.error.as_ref().unwrap().hresult, 0x8019_0194);
        let info = job_from_wire(&wire).unwrap();
        assert_eq!(info.id, job.id);
        assert_eq!(info.state, JobState::TransientError);
        assert_eq!(info.priority, Priority::High);
        assert_eq!(info.creation_time, job.creation_time);
        assert_eq!(info.modification_time, job.modification_time);
        assert_eq!(info.transfer_completion_time, None);
        assert_eq!(info.error, job.error);
        assert_eq!(info.error_count, 3);
        assert_eq!(info.progress, job.progress());
        assert_eq!(info.notify_cmd_line, ["/bin/echo", "a b", "c"]);
    }

    #[test]
    fn files_round_trip_through_the_wire() {
        let job = sample_job();
        let wire = files_to_wire(&job);
        assert_eq!(wire[1].index, 1);
        assert_eq!(wire[1].ranges[1].length, LENGTH_TO_EOF);
        let info = file_from_wire(&wire[1]).unwrap();
        assert_eq!(info.ranges, job.files[1].ranges);
        assert_eq!(info.remote_size, None);
        assert_eq!(info.etag.as_deref(), Some("\"abc\""));
        assert_eq!(info.last_modified, None);
        assert_eq!(info.local_path, PathBuf::from("/tmp/f"));
        assert_eq!(info.progress.bytes_total, None);
        let info0 = file_from_wire(&wire[0]).unwrap();
        assert_eq!(info0.progress.bytes_total, Some(100));
        assert_eq!(info0.progress.bytes_transferred, 10);
        assert_eq!(info0.expected_sha256, Some("ab".repeat(32)));
        assert_eq!(info0.actual_sha256, None);
    }

    #[test]
    fn enums_reject_out_of_range_numbers() {
        assert_eq!(priority_from_wire(0).unwrap(), Priority::Normal);
        assert_eq!(priority_from_wire(4).unwrap(), Priority::Low);
        let err = priority_from_wire(42).unwrap_err();
        assert_eq!(err.code, Code::E_INVALIDARG);
        assert!(err.message.contains("42"), "{}", err.message);
        assert_eq!(job_type_from_wire(1).unwrap(), JobType::Upload);
        assert_eq!(job_type_from_wire(-1).unwrap_err().code, Code::E_INVALIDARG);
        assert_eq!(state_from_wire(0).unwrap_err().code, Code::E_INVALIDARG);
        assert_eq!(error_context_from_wire(99).unwrap_err().code, Code::E_INVALIDARG);
        for p in [Priority::Foreground, Priority::High, Priority::Normal, Priority::Low] {
            assert_eq!(priority_from_wire(priority_to_wire(p) as i32).unwrap(), p);
        }
        for s in JobState::ALL {
            assert_eq!(state_from_wire(state_to_wire(s) as i32).unwrap(), s);
        }
    }

    #[test]
    fn job_ids_and_codes() {
        let err = parse_job_id("nope").unwrap_err();
        assert_eq!(err.code, Code::E_INVALIDARG);
        assert!(err.message.contains("'nope'"));
        // A huge id is named by its start only.
        let huge = "z".repeat(3 << 20);
        let err = parse_job_id(&huge).unwrap_err();
        assert_eq!(err.code, Code::E_INVALIDARG);
        assert!(err.message.len() < 200, "{}", err.message.len());
        assert!(err.message.contains(&format!("'{}…", "z".repeat(64))), "{}", err.message);
        let id = JobId::new_random();
        assert_eq!(parse_job_id(&id.to_string()).unwrap(), id);

        let reply = status_reply(Code::BG_S_PARTIAL_COMPLETE);
        assert_eq!(reply.code, "BG_S_PARTIAL_COMPLETE");
        assert_eq!(code_from_status_reply(&reply).unwrap(), Code::BG_S_PARTIAL_COMPLETE);
        assert_eq!(code_from_status_reply(&status_reply(Code::S_OK)).unwrap(), Code::S_OK);
        assert!(code_from_status_reply(&status_reply(Code::BG_E_EMPTY)).is_err());
        assert!(code_from_wire(0x8020_0003, "BG_E_NOT_FOUND").is_err());
        assert!(code_from_wire(0x1234_5678, "").is_err());
    }

    #[test]
    fn timestamps_round_trip_including_before_the_epoch() {
        for t in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1, 5),
            UNIX_EPOCH - Duration::new(1, 5),
            UNIX_EPOCH - Duration::from_secs(3),
        ] {
            let ts = timestamp_to_wire(t);
            assert!((0..1_000_000_000).contains(&ts.nanos));
            assert_eq!(timestamp_from_wire(&ts).unwrap(), t);
        }
        let before = timestamp_to_wire(UNIX_EPOCH - Duration::new(1, 5));
        assert_eq!((before.seconds, before.nanos), (-2, 999_999_995));
        let bad = prost_types::Timestamp { seconds: 0, nanos: -1 };
        assert_eq!(timestamp_from_wire(&bad).unwrap_err().code, Code::E_INVALIDARG);
    }

    #[test]
    fn missing_required_messages_are_invalid() {
        let mut wire = job_to_wire(&sample_job());
        wire.progress = None;
        assert_eq!(job_from_wire(&wire).unwrap_err().code, Code::E_INVALIDARG);
        let mut wire = job_to_wire(&sample_job());
        wire.id = "x".into();
        assert!(job_from_wire(&wire).unwrap_err().message.contains("'x'"));
    }

    #[test]
    fn job_events_round_trip() {
        let job = JobId::new_random();
        let time = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let mut ranges = RangeSet::new();
        ranges.insert(0, 100);
        ranges.insert(200, 250);
        let events = [
            EventInfo::JobTransferred,
            EventInfo::JobError(JobError {
                context: ErrorContext::RemoteFile,
                code: Code::Http(404),
                description: "Not Found".into(),
                file_index: Some(0),
            }),
            EventInfo::JobModification {
                state: JobState::Queued,
                progress: sample_job().progress(),
            },
            EventInfo::FileTransferred { index: 2 },
            EventInfo::FileRangesTransferred { index: 1, ranges },
        ];
        for event in events {
            let info = JobEventInfo { job, time, event };
            assert_eq!(job_event_from_wire(&job_event_to_wire(&info)).unwrap(), info);
        }
        let mut wire = job_event_to_wire(&JobEventInfo {
            job,
            time,
            event: EventInfo::FileTransferred { index: 0 },
        });
        wire.event = None;
        assert_eq!(job_event_from_wire(&wire).unwrap_err().code, Code::E_INVALIDARG);
        let eof = [v1::ByteRange { offset: 0, length: LENGTH_TO_EOF }];
        assert_eq!(range_set_from_wire(&eof).unwrap_err().code, Code::E_INVALIDARG);
    }
}
