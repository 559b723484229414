//! How `bitsctl download` shows progress on stderr: one bar (percent, bytes, rate, ETA) on a
//! terminal; otherwise a plain line every few seconds and on each state change (`--json`: the same
//! as JSON objects); nothing with `--quiet`. Errors the daemon retries are shown once each.

use std::time::{Duration, Instant};

use bits_core::{JobId, JobState, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::cmd::err_out;
use crate::render;

/// How often a plain progress line is printed while nothing else happens.
const LINE_EVERY: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Bar,
    Lines,
    JsonLines,
    Quiet,
}

impl Style {
    pub fn pick(quiet: bool, json: bool, terminal: bool) -> Style {
        match (quiet, json, terminal) {
            (true, _, _) => Style::Quiet,
            (_, true, _) => Style::JsonLines,
            (_, _, true) => Style::Bar,
            _ => Style::Lines,
        }
    }
}

pub struct View {
    style: Style,
    job: JobId,
    bar: Option<ProgressBar>,
    state: Option<JobState>,
    transferred: u64,
    total: Option<u64>,
    /// Bytes and time of the previous plain line: the rate it shows is since then.
    last_line: Option<(Instant, u64)>,
    /// The last retried error shown, so that each is shown once.
    last_error: Option<String>,
}

#[derive(Serialize)]
struct LineJson<'a> {
    job_id: String,
    state: &'a str,
    bytes_transferred: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_per_second: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eta_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl View {
    pub fn new(style: Style, job: JobId) -> View {
        let bar = (style == Style::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(spinner_style());
            bar.set_message("QUEUED");
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        View {
            style,
            job,
            bar,
            state: None,
            transferred: 0,
            total: None,
            last_line: None,
            last_error: None,
        }
    }

    /// A JobModification (or GetJob after a reconnect).
    pub fn update(&mut self, state: JobState, progress: &Progress) {
        let changed = self.state != Some(state);
        self.state = Some(state);
        self.transferred = progress.bytes_transferred;
        if let Some(bar) = &self.bar {
            if progress.bytes_total != self.total {
                match progress.bytes_total {
                    Some(total) => {
                        bar.set_length(total);
                        bar.set_style(bar_style());
                    }
                    None => {
                        bar.unset_length();
                        bar.set_style(spinner_style());
                    }
                }
            }
            bar.set_position(progress.bytes_transferred);
            if changed && state != JobState::TransientError {
                bar.set_message(state.name());
            }
        }
        self.total = progress.bytes_total;
        if state != JobState::TransientError {
            self.last_error = None;
        }
        let due = self.last_line.is_none_or(|(at, _)| at.elapsed() >= LINE_EVERY);
        if changed || due {
            self.line(None);
        }
    }

    /// A retried error (TRANSIENT_ERROR): shown once until the job moves on.
    pub fn retrying(&mut self, error: &str) {
        if self.last_error.as_deref() == Some(error) {
            return;
        }
        self.last_error = Some(error.to_string());
        if let Some(bar) = &self.bar {
            bar.set_message(format!("retrying: {error}"));
        }
        self.line(Some(error));
    }

    /// A note for the user (reconnecting, detached), on its own line whatever the style.
    pub fn note(&self, text: &str) {
        match (&self.bar, self.style) {
            (_, Style::Quiet) => {}
            (Some(bar), _) => bar.println(text),
            (None, _) => err_out(&format!("{text}\n")),
        }
    }

    /// Called every second: plain lines keep coming while nothing happens.
    pub fn tick(&mut self) {
        if self.last_line.is_some_and(|(at, _)| at.elapsed() >= LINE_EVERY) {
            self.line(None);
        }
    }

    /// Removes the bar, so that what is printed next (the result, an error) stands alone.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn line(&mut self, error: Option<&str>) {
        let now = Instant::now();
        let (since, before) = self.last_line.unwrap_or((now, self.transferred));
        let secs = now.duration_since(since).as_secs_f64();
        // Over less than a second (a state change right after a line) a rate means little.
        let rate = (secs >= 1.0).then(|| self.transferred.saturating_sub(before) as f64 / secs);
        let eta = match self.total {
            Some(total) if rate.is_some_and(|r| r >= 1.0) => Some(Duration::from_secs_f64(
                total.saturating_sub(self.transferred) as f64 / rate.unwrap_or(1.0),
            )),
            _ => None,
        };
        let state = self.state.map_or("QUEUED", JobState::name);
        match self.style {
            Style::Bar | Style::Quiet => {}
            Style::Lines => {
                let mut text = format!("{state:<15} {}", render::human_bytes(self.transferred));
                match self.total {
                    Some(total) => {
                        let pct =
                            self.transferred.saturating_mul(100).checked_div(total).unwrap_or(100);
                        text.push_str(&format!(" / {} ({pct}%)", render::human_bytes(total)));
                    }
                    None => text.push_str(" / ?"),
                }
                if let Some(rate) = rate
                    && state == JobState::Transferring.name()
                {
                    text.push_str(&format!(" {}", render::human_rate(rate)));
                    if let Some(eta) = eta {
                        text.push_str(&format!(" ETA {}", render::human_duration(eta)));
                    }
                }
                if let Some(error) = error {
                    text.push_str(&format!(" - {error}; retrying"));
                }
                err_out(&format!("{}\n", text.replace(['\n', '\r'], " ")));
            }
            Style::JsonLines => {
                let line = LineJson {
                    job_id: self.job.to_string(),
                    state,
                    bytes_transferred: self.transferred,
                    bytes_total: self.total,
                    bytes_per_second: rate.map(|r| r as u64),
                    eta_seconds: eta.map(|d| d.as_secs()),
                    error,
                };
                if let Ok(text) = serde_json::to_string(&line) {
                    err_out(&format!("{text}\n"));
                }
            }
        }
        self.last_line = Some((now, self.transferred));
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{bar:30} {percent:>3}% {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {binary_bytes} {binary_bytes_per_sec} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn styles() {
        assert_eq!(Style::pick(true, true, true), Style::Quiet);
        assert_eq!(Style::pick(false, true, true), Style::JsonLines);
        assert_eq!(Style::pick(false, false, true), Style::Bar);
        assert_eq!(Style::pick(false, false, false), Style::Lines);
    }

    #[test]
    fn templates_parse() {
        assert!(ProgressStyle::with_template(
            "{bar:30} {percent:>3}% {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_msg}"
        )
        .is_ok());
    }
}
