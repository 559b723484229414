//! `bitsctl monitor`: all of the caller's jobs at a glance. On a terminal, a table redrawn in
//! place every interval with the rate computed between refreshes; into a pipe, one table per
//! interval; with `--json`, every job's notifications as they happen (one WatchJob per job) and
//! `JOB_ADDED` / `JOB_REMOVED` lines when ListJobs shows a job appear or go.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal as _;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use bits_client::{Client, JobInfo};
use bits_core::JobId;
use bits_core::job::notify;
use tokio::sync::mpsc;

use super::{out, watch};
use crate::render;

/// Hides the cursor and clears the screen; undone by [`RESTORE`].
const START: &str = "\x1b[?25l";
/// Cursor home, clear to the end of the screen: the next table replaces the last in place.
const REDRAW: &str = "\x1b[H\x1b[J";
const RESTORE: &str = "\x1b[?25h";

pub async fn run(client: &Client, interval: Duration, json: bool) -> Result<()> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    if json {
        tokio::select! {
            result = json_events(client, interval) => result,
            _ = &mut ctrl_c => Ok(()),
        }
    } else {
        let terminal = std::io::stdout().is_terminal();
        if terminal {
            out(START);
        }
        let result = tokio::select! {
            result = tables(client, interval, terminal) => result,
            _ = &mut ctrl_c => Ok(()),
        };
        if terminal {
            out(RESTORE);
        }
        result
    }
}

/// What the last refresh saw of a job, for its rate.
struct Seen {
    bytes: u64,
    at: Instant,
}

async fn tables(client: &Client, interval: Duration, terminal: bool) -> Result<()> {
    let mut seen: HashMap<JobId, Seen> = HashMap::new();
    loop {
        let jobs = client.list_jobs().await?;
        let now = Instant::now();
        let rates: Vec<Option<f64>> = jobs
            .iter()
            .map(|job| {
                let bytes = job.progress.bytes_transferred;
                seen.get(&job.id).map(|last| {
                    let secs = now.duration_since(last.at).as_secs_f64();
                    bytes.saturating_sub(last.bytes) as f64 / secs.max(1e-3)
                })
            })
            .collect();
        seen = jobs
            .iter()
            .map(|j| (j.id, Seen { bytes: j.progress.bytes_transferred, at: now }))
            .collect();
        let table = render::monitor_table(&jobs, &rates, SystemTime::now());
        if terminal {
            out(&format!("{REDRAW}{table}"));
        } else {
            out(&format!("{table}\n"));
        }
        tokio::time::sleep(interval).await;
    }
}

/// A job that appeared or went, as a JSON line shaped like watch's events.
fn presence_line(event: &str, job: JobId, info: Option<&JobInfo>) -> String {
    let mut line = serde_json::json!({
        "job_id": job.to_string(),
        "time": render::rfc3339(SystemTime::now()),
        "event": event,
    });
    if let Some(info) = info {
        line["state"] = info.state.name().into();
        line["name"] = info.display_name.clone().into();
        line["progress"] = serde_json::to_value(render::progress_json(&info.progress))
            .unwrap_or(serde_json::Value::Null);
    }
    format!("{line}\n")
}

async fn json_events(client: &Client, interval: Duration) -> Result<()> {
    let (lines, mut received) = mpsc::channel::<String>(256);
    let mut known: HashSet<JobId> = HashSet::new();
    let mut watchers = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(line) = received.recv() => out(&line),
            _ = tick.tick() => {
                let jobs = client.list_jobs().await?;
                let now: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
                for job in jobs.iter().filter(|j| !known.contains(&j.id)) {
                    out(&presence_line("JOB_ADDED", job.id, Some(job)));
                    watchers.spawn(watch_one(client.clone(), job.id, lines.clone()));
                }
                for gone in known.difference(&now) {
                    out(&presence_line("JOB_REMOVED", *gone, None));
                }
                known = now;
            }
            Some(_) = watchers.join_next(), if !watchers.is_empty() => {}
        }
    }
}

/// Every notification of one job (DISABLE aside) until its stream ends; a job that went
/// between ListJobs and WatchJob is simply not watched (the next ListJobs reports it removed).
async fn watch_one(client: Client, job: JobId, lines: mpsc::Sender<String>) {
    let Ok(mut events) = client.watch_job(job, Some(notify::ALL & !notify::DISABLE)).await else {
        return;
    };
    while let Some(Ok(event)) = events.next().await {
        if lines.send(watch::json_line(&event)).await.is_err() {
            return;
        }
    }
}
