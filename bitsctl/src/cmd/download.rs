//! `bitsctl download`: create a job, add the file, resume, wait for TRANSFERRED while showing
//! progress on stderr, then Complete. All the work is the daemon's; this only polls.

use std::io::IsTerminal as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use bits_client::{Client, JobInfo};
use bits_core::{BitsError, ByteRange, Code, JobId, JobState, Priority};

use super::{err_out, out};
use crate::render;

/// GetJob is cheap for the daemon; polling often keeps the wait after the last byte short (the
/// measured download time includes it). An event stream replaces this when notifications land.
const POLL: Duration = Duration::from_millis(50);
const LINE_EVERY: Duration = Duration::from_secs(2);

/// The user pressed Ctrl-C; the job was cancelled. Exits 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted; job {0} cancelled")]
pub struct Interrupted(pub JobId);

pub async fn run(
    client: &Client,
    url: &str,
    dest: &Path,
    ranges: &[ByteRange],
    priority: Priority,
    json: bool,
) -> Result<()> {
    let job = client.create_job("bitsctl download", priority).await?;
    let prepared = async {
        if ranges.is_empty() {
            client.add_file(job, url, dest).await?;
        } else {
            client.add_file_with_ranges(job, url, dest, ranges).await?;
        }
        client.resume(job).await
    };
    if let Err(e) = prepared.await {
        // Do not leave an empty job behind.
        let _ = client.cancel(job).await;
        return Err(e.into());
    }

    let mut view = ProgressView::new();
    let waited = tokio::select! {
        result = wait_transferred(client, job, &mut view) => result,
        Ok(()) = tokio::signal::ctrl_c() => {
            let _ = client.cancel(job).await;
            Err(Interrupted(job).into())
        }
    };
    view.finish();
    let bytes = match waited {
        Ok(bytes) => bytes,
        Err(e) => return Err(e),
    };

    let code = client.complete(job).await?;
    if code != Code::S_OK {
        return Err(BitsError::new(
            code,
            format!("job {job} completed but not every file is in place at {}", dest.display()),
        )
        .into());
    }
    if json {
        out(&render::to_json(&render::DownloadJson {
            job_id: job.to_string(),
            state: JobState::Acknowledged.name(),
            bytes,
            code: code.name(),
        }));
    } else {
        out(&format!("{} ({}) -> {}\n", url, render::human_bytes(bytes), dest.display()));
    }
    Ok(())
}

/// Polls until the job is TRANSFERRED and returns the bytes transferred. ERROR cancels the job
/// and fails with the job's error; TRANSIENT_ERROR is shown and waited out (the daemon retries).
async fn wait_transferred(client: &Client, job: JobId, view: &mut ProgressView) -> Result<u64> {
    loop {
        let info = client.get_job(job).await?;
        match info.state {
            JobState::Transferred => {
                view.show(&info, true);
                return Ok(info.progress.bytes_transferred);
            }
            JobState::Error => {
                view.finish();
                let error = match info.error {
                    Some(e) => e,
                    None => client.get_error(job).await?,
                };
                let _ = client.cancel(job).await;
                return Err(BitsError::new(error.code, error.description).into());
            }
            JobState::Cancelled | JobState::Acknowledged => {
                return Err(BitsError::new(
                    Code::BG_E_INVALID_STATE,
                    format!("job {job} was {} by another client", info.state.name()),
                )
                .into());
            }
            _ => view.show(&info, false),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The progress display on stderr: one updating line on a terminal, else a line every ~2 s (and
/// on every state change).
struct ProgressView {
    tty: bool,
    line_open: bool,
    last: Option<(Instant, String)>,
}

impl ProgressView {
    fn new() -> ProgressView {
        ProgressView { tty: std::io::stderr().is_terminal(), line_open: false, last: None }
    }

    fn text(info: &JobInfo) -> String {
        let p = &info.progress;
        let mut text =
            format!("{:<15} {}", info.state.name(), render::human_bytes(p.bytes_transferred));
        match p.bytes_total {
            Some(total) => {
                let pct = p.bytes_transferred.saturating_mul(100).checked_div(total).unwrap_or(100);
                text.push_str(&format!(" / {} ({pct}%)", render::human_bytes(total)));
            }
            None => text.push_str(" / ?"),
        }
        if info.state == JobState::TransientError
            && let Some(error) = &info.error
        {
            text.push_str(&format!(" - {}; retrying", render::error_line(error)));
        }
        text
    }

    fn show(&mut self, info: &JobInfo, last: bool) {
        let text = ProgressView::text(info);
        if self.tty {
            err_out(&format!("\r\x1b[K{text}"));
            self.line_open = true;
            return;
        }
        let state_changed = self
            .last
            .as_ref()
            .is_none_or(|(_, prev)| prev.split(' ').next() != text.split(' ').next());
        let due = self.last.as_ref().is_none_or(|(at, _)| at.elapsed() >= LINE_EVERY);
        if last || state_changed || due {
            err_out(&format!("{text}\n"));
            self.last = Some((Instant::now(), text));
        }
    }

    /// Ends an open terminal line so what follows starts on its own line.
    fn finish(&mut self) {
        if self.line_open {
            err_out("\n");
            self.line_open = false;
        }
    }
}
