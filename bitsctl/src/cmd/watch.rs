//! `bitsctl watch JOB`: print the job's notifications as they arrive, one line each (`--json`:
//! one JSON object a line), until the job is completed or cancelled or the daemon ends the
//! stream.

use anyhow::Result;
use bits_client::{Client, EventInfo, JobEventInfo};
use std::time::SystemTime;

use bits_core::job::notify;
use bits_core::{JobId, RangeSet};
use serde::Serialize;

use super::out;
use crate::render::{self, ErrorJson, ProgressJson};

/// What `watch` shows unless told otherwise: the outcome and progress.
pub const DEFAULT_FLAGS: u32 =
    notify::JOB_TRANSFERRED | notify::JOB_ERROR | notify::JOB_MODIFICATION;

pub async fn run(client: &Client, job: JobId, flags: Option<u32>, json: bool) -> Result<()> {
    let mut events = client.watch_job(job, Some(flags.unwrap_or(DEFAULT_FLAGS))).await?;
    // The last progress line's bytes and time, for the rate shown on the next.
    let mut last: Option<(u64, SystemTime)> = None;
    while let Some(event) = events.next().await {
        let event = event?;
        if json {
            out(&json_line(&event));
        } else {
            let mut line = text_line(&event);
            if let EventInfo::JobModification { progress, .. } = &event.event {
                let bytes = progress.bytes_transferred;
                if let Some((before, then)) = last {
                    let secs = event.time.duration_since(then).map_or(0.0, |d| d.as_secs_f64());
                    if secs > 0.0 {
                        let rate = bytes.saturating_sub(before) as f64 / secs;
                        line = format!("{}, {}\n", line.trim_end(), render::human_rate(rate));
                    }
                }
                last = Some((bytes, event.time));
            }
            out(&line);
        }
        if matches!(event.event, EventInfo::JobModification { state, .. } if state.is_final()) {
            break;
        }
    }
    Ok(())
}

/// `0:100,200:50` (offset:length, sorted).
fn ranges_text(ranges: &RangeSet) -> String {
    ranges.iter().map(|s| format!("{}:{}", s.start, s.len())).collect::<Vec<_>>().join(",")
}

/// `TRANSFERRED`, `ERROR <code>: <description>`, `MODIFIED <STATE> <n>/<total> (<percent>%)`,
/// `FILE <i> TRANSFERRED`, `FILE <i> RANGES <offset:length,...>`.
pub fn text_line(event: &JobEventInfo) -> String {
    let body = match &event.event {
        EventInfo::JobTransferred => "TRANSFERRED".to_string(),
        EventInfo::JobError(error) => format!("ERROR {}: {}", error.code, error.description),
        EventInfo::JobModification { state, progress } => format!(
            "MODIFIED {} {}",
            state.name(),
            render::human_progress(progress.bytes_transferred, progress.bytes_total)
        ),
        EventInfo::FileTransferred { index } => format!("FILE {index} TRANSFERRED"),
        EventInfo::FileRangesTransferred { index, ranges } => {
            format!("FILE {index} RANGES {}", ranges_text(ranges))
        }
    };
    format!("{}\n", body.replace(['\n', '\r'], " "))
}

#[derive(Debug, Serialize)]
struct EventJson {
    job_id: String,
    time: String,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<ProgressJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ranges: Option<Vec<SpanJson>>,
}

#[derive(Debug, Serialize)]
struct SpanJson {
    offset: u64,
    length: u64,
}

/// One compact JSON object and a newline.
pub fn json_line(event: &JobEventInfo) -> String {
    let mut json = EventJson {
        job_id: event.job.to_string(),
        time: render::rfc3339(event.time),
        event: event.event.name(),
        error: None,
        state: None,
        progress: None,
        file_index: None,
        ranges: None,
    };
    match &event.event {
        EventInfo::JobTransferred => {}
        EventInfo::JobError(error) => json.error = Some(render::error_json(error)),
        EventInfo::JobModification { state, progress } => {
            json.state = Some(state.name());
            json.progress = Some(render::progress_json(progress));
        }
        EventInfo::FileTransferred { index } => json.file_index = Some(*index),
        EventInfo::FileRangesTransferred { index, ranges } => {
            json.file_index = Some(*index);
            json.ranges = Some(
                ranges.iter().map(|s| SpanJson { offset: s.start, length: s.len() }).collect(),
            );
        }
    }
    match serde_json::to_string(&json) {
        Ok(mut line) => {
            line.push('\n');
            line
        }
        Err(e) => format!("{{\"error\": \"{e}\"}}\n"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, UNIX_EPOCH};

    use bits_core::{Code, ErrorContext, JobError, JobState, Progress};

    use super::*;

    fn event(event: EventInfo) -> JobEventInfo {
        JobEventInfo {
            job: JobId::parse("0b3e4a9e-8d4f-4a32-9c55-1f0d6d2c8e11").unwrap(),
            time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            event,
        }
    }

    #[test]
    fn text_lines() {
        assert_eq!(text_line(&event(EventInfo::JobTransferred)), "TRANSFERRED\n");
        let error = JobError {
            context: ErrorContext::RemoteFile,
            code: Code::Http(404),
            description: "Not\nFound".into(),
            file_index: Some(0),
        };
        assert_eq!(
            text_line(&event(EventInfo::JobError(error))),
            "ERROR BG_E_HTTP_ERROR_404 (0x80190194): Not Found\n"
        );
        let progress = Progress {
            bytes_total: Some(100),
            bytes_transferred: 10,
            files_total: 1,
            files_transferred: 0,
            files: vec![],
        };
        let modified = EventInfo::JobModification { state: JobState::Queued, progress };
        assert_eq!(text_line(&event(modified)), "MODIFIED QUEUED 10 B/100 B (10%)\n");
        assert_eq!(
            text_line(&event(EventInfo::FileTransferred { index: 0 })),
            "FILE 0 TRANSFERRED\n"
        );
        let mut ranges = RangeSet::new();
        ranges.insert(200, 250);
        ranges.insert(0, 100);
        assert_eq!(
            text_line(&event(EventInfo::FileRangesTransferred { index: 0, ranges })),
            "FILE 0 RANGES 0:100,200:50\n"
        );
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let line = json_line(&event(EventInfo::JobTransferred));
        assert_eq!(line.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "JOB_TRANSFERRED");
        assert_eq!(v["job_id"], "0b3e4a9e-8d4f-4a32-9c55-1f0d6d2c8e11");
        assert_eq!(v["time"], "2023-11-14T22:13:20Z");
        let mut ranges = RangeSet::new();
        ranges.insert(5, 10);
        let line = json_line(&event(EventInfo::FileRangesTransferred { index: 1, ranges }));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "FILE_RANGES_TRANSFERRED");
        assert_eq!(v["file_index"], 1);
        assert_eq!(v["ranges"], serde_json::json!([{ "offset": 5, "length": 5 }]));
    }
}
