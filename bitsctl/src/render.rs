//! How bitsctl shows things: human text and JSON (serde structs), and RFC 3339 times.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bits_client::{FileInfo, JobInfo};
use bits_core::{ByteRange, Code, JobError, JobType, Progress};
use serde::Serialize;

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct JobJson {
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(rename = "type")]
    pub job_type: &'static str,
    pub state: &'static str,
    pub priority: &'static str,
    pub owner_uid: u32,
    pub creation_time: String,
    pub modification_time: String,
    pub transfer_completion_time: Option<String>,
    pub minimum_retry_delay_secs: u32,
    pub no_progress_timeout_secs: u32,
    pub maximum_download_time_secs: u32,
    pub notify_flags: u32,
    /// Program and arguments run on TRANSFERRED / ERROR; empty when none.
    pub notify_cmd_line: Vec<String>,
    pub security_flags: u32,
    pub on_demand: bool,
    pub minimum_notification_interval_ms: u32,
    pub connections_per_file: u32,
    pub files_at_once: u32,
    pub error_count: u32,
    pub error: Option<ErrorJson>,
    pub progress: ProgressJson,
    /// `"<redacted>"` when the job has custom headers (write-only), null otherwise.
    pub custom_headers: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileJson>>,
}

#[derive(Debug, Serialize)]
pub struct ErrorJson {
    pub code: String,
    pub hresult: String,
    pub context: &'static str,
    pub description: String,
    pub file_index: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct ProgressJson {
    pub bytes_total: Option<u64>,
    pub bytes_transferred: u64,
    pub files_total: u32,
    pub files_transferred: u32,
}

#[derive(Debug, Serialize)]
pub struct FileJson {
    pub index: u32,
    pub url: String,
    pub dest: String,
    pub ranges: Vec<RangeJson>,
    pub remote_size: Option<u64>,
    pub bytes_total: Option<u64>,
    pub bytes_transferred: u64,
    pub completed: bool,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub temp_path: String,
    pub expected_sha256: Option<String>,
    pub actual_sha256: Option<String>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct RangeJson {
    pub offset: u64,
    pub length: LengthJson,
}

/// A byte count, or the string `"eof"` for `BG_LENGTH_TO_EOF`.
#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum LengthJson {
    Bytes(u64),
    Eof(&'static str),
}

/// `{"code", "hresult"}`: the success code of an action command under `--json`.
#[derive(Debug, Serialize)]
pub struct CodeJson {
    pub code: String,
    pub hresult: String,
}

pub fn hresult(code: Code) -> String {
    format!("0x{:08X}", code.hresult())
}

pub fn code_json(code: Code) -> CodeJson {
    CodeJson { code: code.name(), hresult: hresult(code) }
}

pub fn range_json(range: &ByteRange) -> RangeJson {
    RangeJson {
        offset: range.offset,
        length: if range.is_to_eof() {
            LengthJson::Eof("eof")
        } else {
            LengthJson::Bytes(range.length)
        },
    }
}

pub fn error_json(error: &JobError) -> ErrorJson {
    ErrorJson {
        code: error.code.name(),
        hresult: hresult(error.code),
        context: error.context.name(),
        description: error.description.clone(),
        file_index: error.file_index,
    }
}

pub fn progress_json(progress: &Progress) -> ProgressJson {
    ProgressJson {
        bytes_total: progress.bytes_total,
        bytes_transferred: progress.bytes_transferred,
        files_total: progress.files_total,
        files_transferred: progress.files_transferred,
    }
}

fn job_type_name(t: JobType) -> &'static str {
    match t {
        JobType::Download => "DOWNLOAD",
        JobType::Upload => "UPLOAD",
        JobType::UploadReply => "UPLOAD_REPLY",
    }
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

pub fn file_json(file: &FileInfo) -> FileJson {
    FileJson {
        index: file.index,
        url: file.remote_url.clone(),
        dest: path_string(&file.local_path),
        ranges: file.ranges.iter().map(range_json).collect(),
        remote_size: file.remote_size,
        bytes_total: file.progress.bytes_total,
        bytes_transferred: file.progress.bytes_transferred,
        completed: file.progress.completed,
        etag: file.etag.clone(),
        last_modified: file.last_modified.clone(),
        temp_path: path_string(&file.temp_path),
        expected_sha256: file.expected_sha256.clone(),
        actual_sha256: file.actual_sha256.clone(),
    }
}

/// Shown for write-only values (custom headers) that are set.
const REDACTED: &str = "<redacted>";

/// A job as JSON; `files` is included when given (`info`), left out otherwise (`list`).
pub fn job_json(job: &JobInfo, files: Option<&[FileInfo]>) -> JobJson {
    JobJson {
        id: job.id.to_string(),
        name: job.display_name.clone(),
        description: job.description.clone(),
        job_type: job_type_name(job.job_type),
        state: job.state.name(),
        priority: job.priority.name(),
        owner_uid: job.owner_uid,
        creation_time: rfc3339(job.creation_time),
        modification_time: rfc3339(job.modification_time),
        transfer_completion_time: job.transfer_completion_time.map(rfc3339),
        minimum_retry_delay_secs: job.minimum_retry_delay_secs,
        no_progress_timeout_secs: job.no_progress_timeout_secs,
        maximum_download_time_secs: job.maximum_download_time_secs,
        notify_flags: job.notify_flags,
        notify_cmd_line: job.notify_cmd_line.clone(),
        security_flags: job.security_flags,
        on_demand: job.on_demand_mode,
        minimum_notification_interval_ms: job.minimum_notification_interval_ms,
        connections_per_file: job.connections_per_file,
        files_at_once: job.files_at_once,
        error_count: job.error_count,
        error: job.error.as_ref().map(error_json),
        progress: progress_json(&job.progress),
        custom_headers: job.has_custom_headers.then_some(REDACTED),
        files: files.map(|fs| fs.iter().map(file_json).collect()),
    }
}

/// Pretty JSON plus a newline. Serializing these plain structs cannot fail; if it somehow did,
/// the error text is printed instead of panicking.
pub fn to_json<T: Serialize>(value: &T) -> String {
    match serde_json::to_string_pretty(value) {
        Ok(mut text) => {
            text.push('\n');
            text
        }
        Err(e) => format!("{{\"error\": \"{e}\"}}\n"),
    }
}

// ---------------------------------------------------------------------------------------------
// Human text
// ---------------------------------------------------------------------------------------------

/// `1.5 MiB`-style size.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `12.3 MiB/s`-style rate from bytes per second (negative or not finite reads as 0).
pub fn human_rate(bytes_per_sec: f64) -> String {
    let rate = if bytes_per_sec.is_finite() && bytes_per_sec > 0.0 { bytes_per_sec } else { 0.0 };
    format!("{}/s", human_bytes(rate as u64))
}

/// `45s`, `3m05s`, `2h07m`, `3d04h`: a duration at the precision a person reads at a glance.
pub fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// `BG_E_HTTP_ERROR_404 (0x80190194): description [REMOTE_FILE, file 0]`.
pub fn error_line(error: &JobError) -> String {
    let mut line = format!("{}: {} [{}", error.code, error.description, error.context.name());
    if let Some(i) = error.file_index {
        let _ = write!(line, ", file {i}");
    }
    line.push(']');
    line
}

/// `1.5 MiB/10.0 MiB (15%)`, or `1.5 MiB/?` while the size is unknown.
pub fn human_progress(transferred: u64, total: Option<u64>) -> String {
    match total {
        Some(0) => format!("{}/{}", human_bytes(transferred), human_bytes(0)),
        Some(total) => format!(
            "{}/{} ({}%)",
            human_bytes(transferred),
            human_bytes(total),
            percent(transferred, total)
        ),
        None => format!("{}/?", human_bytes(transferred)),
    }
}

/// Whole percent, rounded down (100 only when everything is there).
fn percent(done: u64, total: u64) -> u64 {
    if total == 0 { 100 } else { (u128::from(done) * 100 / u128::from(total)) as u64 }
}

/// `1000 (alice)`: a uid with its user name, when the user database has one.
pub fn owner(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{uid} ({})", user.name),
        _ => uid.to_string(),
    }
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; N]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

/// The `list` table; with `owners`, a column naming each job's owner (`list --all-users`).
pub fn jobs_table(jobs: &[JobInfo], owners: bool) -> String {
    let rows: Vec<[String; 7]> = jobs
        .iter()
        .map(|j| {
            [
                j.id.to_string(),
                j.state.name().to_string(),
                j.priority.name().to_string(),
                human_progress(j.progress.bytes_transferred, j.progress.bytes_total),
                format!("{}/{}", j.progress.files_transferred, j.progress.files_total),
                if owners { owner(j.owner_uid) } else { String::new() },
                j.display_name.clone(),
            ]
        })
        .collect();
    let header = ["ID", "STATE", "PRIORITY", "BYTES", "FILES", "OWNER", "NAME"];
    if owners {
        return table(header, &rows);
    }
    let rows: Vec<[String; 6]> = rows
        .into_iter()
        .map(|[id, state, prio, bytes, files, _, name]| [id, state, prio, bytes, files, name])
        .collect();
    table(["ID", "STATE", "PRIORITY", "BYTES", "FILES", "NAME"], &rows)
}

/// The `monitor` table: `rates[i]` is job i's rate since the last refresh (`None` on the
/// first), `now` the time shown above it.
pub fn monitor_table(jobs: &[JobInfo], rates: &[Option<f64>], now: SystemTime) -> String {
    let rows: Vec<[String; 6]> = jobs
        .iter()
        .zip(rates.iter().copied().chain(std::iter::repeat(None)))
        .map(|(j, rate)| {
            let id = j.id.to_string();
            [
                id.get(..8).unwrap_or(&id).to_string(),
                j.state.name().to_string(),
                human_progress(j.progress.bytes_transferred, j.progress.bytes_total),
                rate.map_or_else(|| "-".to_string(), human_rate),
                j.display_name.clone(),
                j.error.as_ref().map_or_else(String::new, |e| e.code.name()),
            ]
        })
        .collect();
    let plural = if jobs.len() == 1 { "" } else { "s" };
    let mut text = format!("bitsctl monitor  {}  {} job{plural}\n", rfc3339(now), jobs.len());
    text.push_str(&table(["JOB", "STATE", "PROGRESS", "RATE", "NAME", "ERROR"], &rows));
    text
}

/// The `files` table.
pub fn files_table(files: &[FileInfo]) -> String {
    let rows: Vec<[String; 4]> = files
        .iter()
        .map(|f| {
            [
                f.index.to_string(),
                human_progress(f.progress.bytes_transferred, f.progress.bytes_total),
                f.remote_url.clone(),
                f.local_path.display().to_string(),
            ]
        })
        .collect();
    table(["INDEX", "BYTES", "URL", "DEST"], &rows)
}

/// `progress`: the job, then each file.
pub fn progress_text(p: &Progress) -> String {
    let mut out = format!(
        "{}, {}/{} files\n",
        human_progress(p.bytes_transferred, p.bytes_total),
        p.files_transferred,
        p.files_total
    );
    for (i, f) in p.files.iter().enumerate() {
        let done = if f.completed { ", done" } else { "" };
        let _ =
            writeln!(out, "  [{i}] {}{done}", human_progress(f.bytes_transferred, f.bytes_total));
    }
    out
}

/// `progress --json`: the job's numbers and each file's.
pub fn full_progress_json(p: &Progress) -> serde_json::Value {
    let files: Vec<_> = p
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            serde_json::json!({
                "index": i,
                "bytes_total": f.bytes_total,
                "bytes_transferred": f.bytes_transferred,
                "completed": f.completed,
            })
        })
        .collect();
    let mut value = serde_json::to_value(progress_json(p)).unwrap_or_default();
    value["files"] = files.into();
    value
}

/// `error`: one `key value` line per field of the job's error.
pub fn error_text(error: &JobError) -> String {
    let mut out = String::new();
    let mut kv = |key: &str, value: &str| {
        let _ = writeln!(out, "{key:<12}{value}");
    };
    kv("Context", error.context.name());
    kv("Code", &error.code.to_string());
    kv("Description", &error.description.replace(['\n', '\r'], " "));
    kv("File", &error.file_index.map_or_else(|| "-".to_string(), |i| i.to_string()));
    out
}

fn ranges_text(ranges: &[ByteRange]) -> String {
    if ranges.is_empty() {
        "whole file".to_string()
    } else {
        ranges.iter().map(ByteRange::display).collect::<Vec<_>>().join(", ")
    }
}

/// `program arg1 arg2` with arguments that need it quoted, for reading (not for a shell).
fn command_line(parts: &[String]) -> String {
    parts
        .iter()
        .map(|p| {
            if !p.is_empty() && !p.contains(|c: char| c.is_whitespace() || c == '"') {
                p.clone()
            } else {
                format!("{p:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `info` text: the job, then its files.
pub fn job_info(job: &JobInfo, files: &[FileInfo]) -> String {
    let mut out = String::new();
    let mut kv = |key: &str, value: &str| {
        let _ = writeln!(out, "{key:<16}{value}");
    };
    kv("Job", &job.id.to_string());
    kv("Name", &job.display_name);
    if !job.description.is_empty() {
        kv("Description", &job.description);
    }
    kv("State", job.state.name());
    kv("Priority", job.priority.name());
    kv("Owner", &owner(job.owner_uid));
    kv("Created", &rfc3339(job.creation_time));
    kv("Modified", &rfc3339(job.modification_time));
    kv("Transferred", &job.transfer_completion_time.map_or_else(|| "-".to_string(), rfc3339));
    let p = &job.progress;
    kv(
        "Progress",
        &format!(
            "{}, {}/{} files",
            human_progress(p.bytes_transferred, p.bytes_total),
            p.files_transferred,
            p.files_total
        ),
    );
    // From creation: BITS keeps no start time, and a job usually starts when it is made.
    let took = job.transfer_completion_time.and_then(|t| t.duration_since(job.creation_time).ok());
    if let (Some(took), true) = (took, p.bytes_transferred > 0) {
        let rate = p.bytes_transferred as f64 / took.as_secs_f64().max(1e-3);
        kv("Average rate", &format!("{} over {}", human_rate(rate), human_duration(took)));
    }
    kv("Errors", &job.error_count.to_string());
    if let Some(error) = &job.error {
        kv("Error", &error_line(error));
    }
    let secs = |s: u32| human_duration(Duration::from_secs(u64::from(s)));
    kv("Retry delay", &secs(job.minimum_retry_delay_secs));
    kv("No-progress", &secs(job.no_progress_timeout_secs));
    let max_time = job.maximum_download_time_secs;
    kv("Max time", &if max_time == 0 { "no limit".to_string() } else { secs(max_time) });
    kv("Notify flags", &format!("0x{:X}", job.notify_flags));
    if !job.notify_cmd_line.is_empty() {
        kv("Notify command", &command_line(&job.notify_cmd_line));
    }
    kv("Security flags", &format!("0x{:X}", job.security_flags));
    kv(
        "Connections",
        &format!("{} per file, {} files at once", job.connections_per_file, job.files_at_once),
    );
    if job.on_demand_mode {
        kv("On demand", "yes");
    }
    if job.has_custom_headers {
        kv("Custom headers", REDACTED);
    }
    kv("Files", if files.is_empty() { "none" } else { "" });
    for f in files {
        let _ = writeln!(out, "  [{}] {}", f.index, f.remote_url);
        let mut fkv = |key: &str, value: &str| {
            let _ = writeln!(out, "      {key:<12}{value}");
        };
        fkv("dest", &f.local_path.display().to_string());
        fkv("ranges", &ranges_text(&f.ranges));
        fkv("remote size", &f.remote_size.map_or_else(|| "unknown".to_string(), human_bytes));
        fkv("progress", &human_progress(f.progress.bytes_transferred, f.progress.bytes_total));
        fkv("completed", if f.progress.completed { "yes" } else { "no" });
        if let Some(sha) = &f.expected_sha256 {
            fkv("sha256", sha);
        }
        if let Some(sha) = &f.actual_sha256 {
            let verdict = match &f.expected_sha256 {
                Some(want) if want.eq_ignore_ascii_case(sha) => " (matches)",
                Some(_) => " (MISMATCH)",
                None => "",
            };
            fkv("actual", &format!("{sha}{verdict}"));
        }
        fkv("temp", &f.temp_path.display().to_string());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds).
pub fn rfc3339(time: SystemTime) -> String {
    let secs: i64 = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            // Floor towards the past for times before the epoch.
            let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() > 0 { -s - 1 } else { -s }
        }
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 → (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;
    use std::time::Duration;

    use bits_core::{ErrorContext, FileProgress, JobId, JobState, LENGTH_TO_EOF, Priority};
    use serde_json::json;

    use super::*;

    fn sample() -> (JobInfo, Vec<FileInfo>) {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let job = JobInfo {
            id: JobId::parse("0b3e4a9e-8d4f-4a32-9c55-1f0d6d2c8e11").unwrap(),
            display_name: "nightly".into(),
            description: String::new(),
            job_type: JobType::Download,
            priority: Priority::Normal,
            state: JobState::TransientError,
            owner_uid: 1000,
            minimum_retry_delay_secs: 600,
            no_progress_timeout_secs: 1_209_600,
            creation_time: t,
            modification_time: t + Duration::from_secs(61),
            transfer_completion_time: None,
            error_count: 2,
            error: Some(JobError {
                context: ErrorContext::RemoteFile,
                code: Code::Http(404),
                description: "Not Found".into(),
                file_index: Some(0),
            }),
            progress: Progress {
                bytes_total: None,
                bytes_transferred: 42,
                files_total: 1,
                files_transferred: 0,
                files: vec![],
            },
            maximum_download_time_secs: 7_776_000,
            notify_flags: 3,
            security_flags: 0,
            on_demand_mode: false,
            minimum_notification_interval_ms: 500,
            connections_per_file: 1,
            files_at_once: 1,
            has_custom_headers: true,
            notify_cmd_line: vec![],
        };
        let file = FileInfo {
            index: 0,
            remote_url: "http://h/f".into(),
            local_path: PathBuf::from("/tmp/f"),
            ranges: vec![ByteRange::new(0, 10), ByteRange::new(100, LENGTH_TO_EOF)],
            remote_size: None,
            etag: None,
            last_modified: None,
            temp_path: PathBuf::from("/tmp/.f.part"),
            progress: FileProgress { bytes_total: None, bytes_transferred: 42, completed: false },
            expected_sha256: None,
            actual_sha256: None,
        };
        (job, vec![file])
    }

    #[test]
    fn job_json_uses_bits_names_nulls_and_eof() {
        let (job, files) = sample();
        let value = serde_json::to_value(job_json(&job, Some(&files))).unwrap();
        assert_eq!(value["state"], "TRANSIENT_ERROR");
        assert_eq!(value["priority"], "NORMAL");
        assert_eq!(value["type"], "DOWNLOAD");
        assert_eq!(value["creation_time"], "2023-11-14T22:13:20Z");
        assert_eq!(value["modification_time"], "2023-11-14T22:14:21Z");
        assert_eq!(value["transfer_completion_time"], serde_json::Value::Null);
        assert_eq!(value["progress"]["bytes_total"], serde_json::Value::Null);
        assert_eq!(value["progress"]["bytes_transferred"], 42);
        assert_eq!(
            value["error"],
            json!({
                "code": "BG_E_HTTP_ERROR_404",
                "hresult": "0x80190194",
                "context": "REMOTE_FILE",
                "description": "Not Found",
                "file_index": 0
            })
        );
        let file = &value["files"][0];
        assert_eq!(
            file["ranges"],
            json!([{"offset": 0, "length": 10}, {"offset": 100, "length": "eof"}])
        );
        assert_eq!(file["remote_size"], serde_json::Value::Null);
        assert_eq!(file["dest"], "/tmp/f");
        assert_eq!(file["completed"], false);

        assert_eq!(value["custom_headers"], "<redacted>", "write-only: set, never shown");

        let listed = serde_json::to_value(job_json(&job, None)).unwrap();
        assert!(listed.get("files").is_none());
        let no_headers = JobInfo { has_custom_headers: false, ..job.clone() };
        let value = serde_json::to_value(job_json(&no_headers, None)).unwrap();
        assert_eq!(value["custom_headers"], serde_json::Value::Null);
        assert_eq!(value["notify_flags"], 3);
        assert_eq!(value["maximum_download_time_secs"], 7_776_000);
        assert_eq!(value["notify_cmd_line"], json!([]));
    }

    #[test]
    fn monitor_rows_show_rate_and_error() {
        let (job, _) = sample();
        let table = monitor_table(&[job.clone(), job], &[Some(1536.0)], UNIX_EPOCH);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].contains("1970-01-01T00:00:00Z") && lines[0].contains("2 jobs"),
            "{table}"
        );
        assert!(lines[1].starts_with("JOB "), "{table}");
        for part in ["0b3e4a9e ", "TRANSIENT_ERROR", "42 B/?", "1.5 KiB/s", "BG_E_HTTP_ERROR_404"] {
            assert!(lines[2].contains(part), "{part} not in {}", lines[2]);
        }
        assert!(lines[3].contains(" - "), "no rate before the second refresh: {}", lines[3]);
    }

    #[test]
    fn human_text_shows_what_matters() {
        let (job, files) = sample();
        let table = jobs_table(std::slice::from_ref(&job), false);
        let mut lines = table.lines();
        assert!(lines.next().unwrap().starts_with("ID "));
        let row = lines.next().unwrap();
        for part in
            [&job.id.to_string()[..], "TRANSIENT_ERROR", "NORMAL", "42 B/?", "0/1", "nightly"]
        {
            assert!(row.contains(part), "{row}");
        }
        assert!(!table.contains("OWNER"), "{table}");
        // uid 0 is root everywhere.
        let root = JobInfo { owner_uid: 0, ..job.clone() };
        let table = jobs_table(&[root], true);
        assert!(table.lines().next().unwrap().contains("OWNER"), "{table}");
        assert!(table.contains("0 (root)"), "{table}");

        let mut files = files;
        files[0].expected_sha256 = Some("ab".repeat(32));
        files[0].actual_sha256 = Some("cd".repeat(32));
        let job =
            JobInfo { notify_cmd_line: vec!["/usr/bin/logger".into(), "job done".into()], ..job };
        let info = job_info(&job, &files);
        for part in [
            "TRANSIENT_ERROR",
            "BG_E_HTTP_ERROR_404 (0x80190194): Not Found [REMOTE_FILE, file 0]",
            "0:10, 100:eof",
            "/tmp/.f.part",
            "Owner           1000",
            "Custom headers",
            "<redacted>",
            "Retry delay     10m00s",
            "No-progress     14d00h",
            "Notify command  /usr/bin/logger \"job done\"",
            &format!("sha256      {}", "ab".repeat(32)),
            &format!("actual      {} (MISMATCH)", "cd".repeat(32)),
        ] {
            assert!(info.contains(part), "{part} not in:\n{info}");
        }
    }

    #[test]
    fn rfc3339_from_system_time() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::new(4_102_444_799, 999)), "2099-12-31T23:59:59Z");
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_millis(1)), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 * 1024 * 1024), "10.0 MiB");
        assert_eq!(human_progress(1536, Some(3072)), "1.5 KiB/3.0 KiB (50%)");
        assert_eq!(human_progress(5, None), "5 B/?");
        assert_eq!(human_rate(1536.0), "1.5 KiB/s");
        assert_eq!(human_rate(f64::NAN), "0 B/s");
        assert_eq!(human_rate(-5.0), "0 B/s");
        assert_eq!(human_duration(Duration::from_secs(45)), "45s");
        assert_eq!(human_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(human_duration(Duration::from_secs(7620)), "2h07m");
        assert_eq!(human_duration(Duration::from_secs(273_600)), "3d04h");
    }
}
