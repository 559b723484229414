//! `bitsctl download`: one job for all the files, created, filled and resumed, then followed on
//! WatchJob (no polling) until TRANSFERRED, and completed. The daemon does the work; this command
//! only follows it, so it can also let go (`--detach`), lose the daemon and find the job again
//! after a restart, and cancel the job when it is told to stop (SIGINT, SIGTERM, SIGHUP).

mod plan;
mod view;

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use bits_client::{Client, ClientError, EventInfo, EventStream, NewFile};
use bits_core::job::notify;
use bits_core::{BitsError, ByteRange, Code, JobId, JobState, Priority};
use serde::Serialize;
use tokio::signal::unix::{Signal, SignalKind, signal};

use self::plan::Plan;
use self::view::{Style, View};
use super::{connect, out};
use crate::args::{Cli, PriorityArg, parse_range};
use crate::list::parse_sha256;
use crate::render;

/// What the attached command asks of the daemon: TRANSFERRED, ERROR and every change (progress).
const WATCH_FLAGS: u32 = notify::JOB_TRANSFERRED | notify::JOB_ERROR | notify::JOB_MODIFICATION;
/// While attached, a failed attempt is retried after BITS' shortest delay (spec: 5 s floor), not
/// after the 10 minutes a background job waits.
const ATTACHED_RETRY_DELAY_SECS: u32 = 5;
/// bitsd runs no notify program for the jobs of uids below this (system accounts, root among
/// them; spec §7.3 and bits-manager's `notify_cmd::FIRST_USER_UID`).
const FIRST_USER_UID: u32 = 1000;
/// Between attempts to reach a daemon that went away.
const RECONNECT_EVERY: Duration = Duration::from_millis(200);

/// Download URLs into files through bitsd, all in one job, and wait for them (or --detach).
///
/// Exit codes: 0 done, 1 refused or failed (the job is cancelled), 2 usage, 3 bitsd unreachable
/// (after a restart mid-download: not back within --reconnect-timeout; the job id is named),
/// 130 interrupted (SIGINT, SIGTERM or SIGHUP; the job is cancelled).
#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// URL and destination pairs: URL DEST [URL DEST ...]. DEST is made absolute against the
    /// current directory.
    #[arg(value_name = "URL DEST", required_unless_present = "list")]
    pub pairs: Vec<String>,

    /// Also download the `URL DEST [sha256=HEX]` lines of LIST (`-` for stdin; blank lines and
    /// `#` comments are skipped), as bitsadmin /addfileset.
    #[arg(short = 'i', long = "input-file", value_name = "LIST")]
    pub list: Option<PathBuf>,

    /// Download only these bytes of the one file (repeatable; the local file is their
    /// concatenation in order).
    #[arg(long = "range", value_name = "OFFSET:LENGTH", value_parser = parse_range)]
    pub ranges: Vec<ByteRange>,

    /// Job priority [default: foreground, as PowerShell's Start-BitsTransfer: the transfer starts
    /// at once and a server without range support still works].
    #[arg(long, value_enum)]
    pub priority: Option<PriorityArg>,

    /// Send the `Name: value` lines of FILE (`-` for stdin) with every request to the files'
    /// origins. Headers are never taken from the command line, where `ps` shows them to all.
    #[arg(long, value_name = "FILE")]
    pub header_file: Option<PathBuf>,

    /// The expected SHA-256 of each URL DEST file, once per pair in order (a LIST has its own
    /// `sha256=HEX` column); a mismatch fails the job.
    #[arg(long = "sha256", value_name = "HEX", value_parser = parse_sha256)]
    pub sha256: Vec<String>,

    /// Download up to N files of the job at once (bitsd extension).
    #[arg(long, value_name = "N")]
    pub files_at_once: Option<u32>,

    /// Split each file between N connections (bitsd extension).
    #[arg(long, value_name = "N")]
    pub connections: Option<u32>,

    /// No progress on stderr and no result line on stdout (errors are still printed).
    #[arg(short, long)]
    pub quiet: bool,

    /// Print the job id and return at once; the daemon goes on downloading, and completes the job
    /// itself where it can run a notify command (see README), else `bitsctl complete JOB` does.
    #[arg(long)]
    pub detach: bool,

    /// Give up after SECONDS of errors without progress: the job is cancelled and the last error
    /// printed (exit 1). Sets the job's no-progress timeout; while attached, retries come every 5 s.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u32,

    /// If bitsd goes away mid-download (a restart), wait this long for it to come back, then
    /// exit 3 naming the job, which stays queued in bitsd.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub reconnect_timeout: u64,
}

/// The command was told to stop (SIGINT, SIGTERM, SIGHUP); the job was cancelled. Exits 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted; job {0} cancelled")]
pub struct Interrupted(pub JobId);

/// `--json`: the one object printed at the end.
#[derive(Debug, Serialize)]
struct DoneJson {
    job_id: String,
    state: &'static str,
    code: String,
    files: usize,
    bytes: u64,
    seconds: f64,
    bytes_per_second: u64,
}

/// SIGINT, SIGTERM and SIGHUP, caught from before the job exists, so that none of them can end
/// the process between CreateJob and the moment it could cancel the job.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

pub async fn run(cli: &Cli, args: &DownloadArgs) -> Result<()> {
    let started = Instant::now();
    let plan = Plan::from_args(args)?;
    let mut signals = Signals::new()?;
    let client = connect(cli).await?;
    let priority = args.priority.map_or(Priority::Foreground, Priority::from);
    let job = client.create_job(&plan.display_name(), priority).await?;
    let style = Style::pick(args.quiet, cli.json, std::io::stderr().is_terminal());
    let mut attached = Attached { cli, args, client, job, view: View::new(style, job) };
    let outcome = tokio::select! {
        biased;
        () = signals.recv() => None,
        result = attached.drive(&plan, started) => Some(result),
    };
    attached.view.finish();
    match outcome {
        Some(result) => result,
        None => {
            if let Err(e) = attached.client.cancel(job).await {
                super::err_out(&format!("bitsctl: cannot cancel job {job}: {e}\n"));
            }
            Err(Interrupted(job).into())
        }
    }
}

/// One job this command created and follows.
struct Attached<'a> {
    cli: &'a Cli,
    args: &'a DownloadArgs,
    /// Replaced when the daemon comes back after a restart.
    client: Client,
    job: JobId,
    view: View,
}

impl Attached<'_> {
    async fn drive(&mut self, plan: &Plan, started: Instant) -> Result<()> {
        if let Err(e) = self.prepare(plan).await {
            // Do not leave a half-made job behind.
            let _ = self.client.cancel(self.job).await;
            return Err(e);
        }
        if self.args.detach {
            return self.detach().await;
        }
        if let Err(e) = self.follow().await {
            // A daemon that went away keeps the job (the error names it); any other failure
            // cancels it, so that nothing is left waiting for a client that gave up.
            let gone = matches!(
                e.downcast_ref::<ClientError>(),
                Some(ClientError::Connect { .. } | ClientError::ConnectTcp { .. })
            );
            if !gone {
                self.view.finish();
                let _ = self.client.cancel(self.job).await;
            }
            return Err(e);
        }
        let (bytes, code) = match self.finish().await {
            // The daemon went away between TRANSFERRED and Complete: wait for it once more.
            Err(ClientError::Bits(e)) if e.code == Code::E_FAIL => {
                drop(self.reattach().await?);
                self.finish().await
            }
            other => other,
        }
        .map_err(|e| match e {
            ClientError::Bits(e) => {
                BitsError::new(e.code, format!("Complete of job {}: {}", self.job, e.message))
                    .into()
            }
            other => anyhow::Error::from(other),
        })?;
        self.view.finish();
        if code != Code::S_OK {
            return Err(BitsError::new(
                code,
                format!("job {} completed but not every file is in place", self.job),
            )
            .into());
        }
        self.report(plan, bytes, started.elapsed(), code);
        Ok(())
    }

    /// The bytes of the transferred job, then Complete.
    async fn finish(&self) -> Result<(u64, Code), ClientError> {
        let info = self.client.get_job(self.job).await?;
        let code = self.client.complete(self.job).await?;
        Ok((info.progress.bytes_transferred, code))
    }

    /// Watches the job (subscribed before Resume, so that nothing it does is missed), resumes
    /// it and waits until it is TRANSFERRED.
    async fn follow(&mut self) -> Result<()> {
        let events = self.client.watch_job(self.job, Some(WATCH_FLAGS)).await?;
        self.client.resume(self.job).await?;
        self.wait_transferred(events).await
    }

    /// Files, headers, extensions and, while attached, short retries and the give-up time.
    async fn prepare(&self, plan: &Plan) -> Result<()> {
        let (client, job) = (&self.client, self.job);
        if let Some(headers) = &plan.headers {
            client.set_custom_headers(job, Some(headers)).await?;
        }
        match plan.items.as_slice() {
            [one] if one.sha256.is_some() || !plan.ranges.is_empty() => {
                client
                    .add_file_checked(job, &one.url, &one.dest, &plan.ranges, one.sha256.as_deref())
                    .await?;
            }
            [one] => {
                client.add_file(job, &one.url, &one.dest).await?;
            }
            many => {
                let files: Vec<NewFile<'_>> = many
                    .iter()
                    .map(|i| NewFile {
                        url: &i.url,
                        local_path: &i.dest,
                        sha256: i.sha256.as_deref(),
                    })
                    .collect();
                client.add_files(job, &files).await?;
            }
        }
        if self.args.files_at_once.is_some() || self.args.connections.is_some() {
            client.set_extensions(job, self.args.connections, self.args.files_at_once).await?;
        }
        if !self.args.detach {
            client.set_minimum_retry_delay(job, ATTACHED_RETRY_DELAY_SECS).await?;
            client.set_no_progress_timeout(job, self.args.timeout).await?;
        }
        Ok(())
    }

    /// Resumes the job and lets go of it. Over the Unix socket the job's notify program completes
    /// it ([`completion_cmd`]), so the daemon puts the files in place when the job is transferred,
    /// running it as the job's owner; where it cannot (over TCP, for system accounts, whose jobs
    /// run no notify program, or a daemon that refuses it), the user is told to complete it.
    async fn detach(&mut self) -> Result<()> {
        let job = self.job;
        let user = nix::unistd::geteuid().as_raw() >= FIRST_USER_UID;
        let completes_itself = match (self.cli.tcp, std::env::current_exe()) {
            (None, Ok(exe)) if user => {
                let (program, args) = completion_cmd(&exe, &self.cli.socket);
                self.client.set_notify_cmd_line(job, Some(program), &args).await.is_ok()
            }
            _ => false,
        };
        self.client.resume(job).await?;
        if self.cli.json {
            out(&render::to_json(&serde_json::json!({
                "job_id": job.to_string(),
                "completes_itself": completes_itself,
            })));
        } else {
            out(&format!("{job}\n"));
        }
        if !completes_itself {
            self.view.note(&format!(
                "job {job} downloads in bitsd; once it is TRANSFERRED, `bitsctl complete {job}` puts the files in place"
            ));
        }
        Ok(())
    }

    /// Follows the job's events until TRANSFERRED. ERROR fails with the job's error (and the
    /// caller cancels the job); TRANSIENT_ERROR is shown once and waited out (the daemon retries, and gives up after
    /// --timeout). A lost stream means the daemon went away: wait for it and re-attach.
    async fn wait_transferred(&mut self, mut events: EventStream) -> Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                _ = tick.tick() => {
                    self.view.tick();
                    continue;
                }
            };
            let event = match event {
                Some(Ok(event)) => event,
                Some(Err(ClientError::Bits(e))) if e.code != Code::E_FAIL => return Err(e.into()),
                Some(Err(_)) | None => {
                    events = self.reattach().await?;
                    continue;
                }
            };
            match event.event {
                EventInfo::JobTransferred => return Ok(()),
                EventInfo::JobError(error) => {
                    return Err(BitsError::new(error.code, error.description).into());
                }
                EventInfo::JobModification { state, progress } => {
                    if state.is_final() {
                        return Err(BitsError::new(
                            Code::BG_E_INVALID_STATE,
                            format!("job {} was {} by another client", self.job, state.name()),
                        )
                        .into());
                    }
                    self.view.update(state, &progress);
                    if state == JobState::TransientError {
                        self.show_retried_error().await;
                    }
                }
                EventInfo::FileTransferred { .. } | EventInfo::FileRangesTransferred { .. } => {}
            }
        }
    }

    /// The error the daemon is waiting out (a JobModification does not carry it).
    async fn show_retried_error(&mut self) {
        if let Ok(info) = self.client.get_job(self.job).await
            && let Some(error) = info.error
        {
            self.view.retrying(&format!("{}: {}", error.code, error.description));
        }
    }

    /// Waits (at most --reconnect-timeout) for the daemon to answer again, then watches the job
    /// anew; the daemon replays JobTransferred or JobError if the job got there meanwhile.
    async fn reattach(&mut self) -> Result<EventStream> {
        let job = self.job;
        self.view.note(&format!("bitsctl: lost bitsd; waiting for it to come back (job {job})"));
        let bound = Duration::from_secs(self.args.reconnect_timeout);
        let deadline = Instant::now() + bound;
        loop {
            let last = match connect(self.cli).await {
                Ok(client) => match client.watch_job(job, Some(WATCH_FLAGS)).await {
                    Ok(events) => {
                        if let Ok(info) = client.get_job(job).await {
                            self.view.update(info.state, &info.progress);
                        }
                        self.client = client;
                        self.view.note(&format!("bitsctl: bitsd is back; following job {job}"));
                        return Ok(events);
                    }
                    // The job is gone, or not ours: nothing to wait for.
                    Err(ClientError::Bits(e)) if e.code != Code::E_FAIL => return Err(e.into()),
                    Err(e) => std::io::Error::other(e.to_string()),
                },
                Err(e) => match e.downcast::<ClientError>() {
                    Ok(
                        ClientError::Connect { source, .. }
                        | ClientError::ConnectTcp { source, .. },
                    ) => source,
                    Ok(other) => std::io::Error::other(other.to_string()),
                    Err(e) => return Err(e),
                },
            };
            if Instant::now() >= deadline {
                return Err(self.gone(last, bound).into());
            }
            tokio::time::sleep(RECONNECT_EVERY).await;
        }
    }

    /// The daemon did not come back: exit 3 (a connection error), naming the job left in it.
    fn gone(&self, last: std::io::Error, waited: Duration) -> ClientError {
        let job = self.job;
        let source = std::io::Error::new(
            last.kind(),
            format!(
                "{last}; gave up after {}; job {job} stays in bitsd (`bitsctl info {job}` once it is back)",
                render::human_duration(waited)
            ),
        );
        match self.cli.tcp {
            Some(addr) => ClientError::ConnectTcp { addr, source },
            None => ClientError::Connect { socket: self.cli.socket.clone(), source },
        }
    }

    /// One line: size, time, average rate (or the JSON object).
    fn report(&self, plan: &Plan, bytes: u64, elapsed: Duration, code: Code) {
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { bytes as f64 / secs } else { 0.0 };
        if self.cli.json {
            out(&render::to_json(&DoneJson {
                job_id: self.job.to_string(),
                state: JobState::Acknowledged.name(),
                code: code.name(),
                files: plan.items.len(),
                bytes,
                seconds: (secs * 1000.0).round() / 1000.0,
                bytes_per_second: rate as u64,
            }));
            return;
        }
        if self.args.quiet {
            return;
        }
        let took =
            if secs < 60.0 { format!("{secs:.1}s") } else { render::human_duration(elapsed) };
        let size = render::human_bytes(bytes);
        let rate = render::human_rate(rate);
        out(&match plan.items.as_slice() {
            [one] => format!("{size} in {took} ({rate}) -> {}\n", one.dest.display()),
            many => format!("{} files, {size} in {took} ({rate})\n", many.len()),
        });
    }
}

/// The notify program of a detached job: `bitsctl --socket SOCKET complete $BITS_JOB_ID` once the
/// job is TRANSFERRED, through `sh` only to look at the state first. In ERROR it exits 0, so
/// that the daemon does not run it again after every retry delay; the job waits for the user.
/// The paths travel as positional parameters, never inside the script, so no quoting is needed.
fn completion_cmd(exe: &Path, socket: &Path) -> (&'static str, Vec<String>) {
    let script = r#"[ "$BITS_JOB_STATE" = TRANSFERRED ] || exit 0; exec "$1" --socket "$2" complete "$BITS_JOB_ID""#;
    let args = vec![
        "-c".to_string(),
        script.to_string(),
        "bitsctl-complete".to_string(),
        exe.to_string_lossy().into_owned(),
        socket.to_string_lossy().into_owned(),
    ];
    ("/bin/sh", args)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The script runs `EXE --socket SOCKET complete JOB` in TRANSFERRED only, with paths that
    /// would break a quoted script (spaces, quotes, `$`).
    #[test]
    fn the_completion_program_completes_only_a_transferred_job() {
        let (program, args) =
            completion_cmd(Path::new("/bin/echo"), Path::new("/run/it's $HOME/bitsd.sock"));
        let run = |state: &str| {
            let out = std::process::Command::new(program)
                .args(&args)
                .env_clear()
                .env("BITS_JOB_ID", "0b3e4a9e-8d4f-4a32-9c55-1f0d6d2c8e11")
                .env("BITS_JOB_STATE", state)
                .output()
                .unwrap();
            assert!(out.status.success(), "{state}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(
            run("TRANSFERRED"),
            "--socket /run/it's $HOME/bitsd.sock complete 0b3e4a9e-8d4f-4a32-9c55-1f0d6d2c8e11\n"
        );
        assert_eq!(run("ERROR"), "");
    }
}
