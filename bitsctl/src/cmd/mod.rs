//! One function per subcommand: call bits-client, hand the answer to `render`, print it.

pub mod download;
pub mod monitor;
pub mod stats;
pub mod watch;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use bits_client::{Client, NewFile, Token, TokenFileError};
use bits_core::{BitsError, Code, JobId};
use serde::Serialize;

use crate::args::{Cli, Command, JobArg, OneJob, SetOp};
use crate::list::UsageError;
use crate::{headers, list, render};

/// Writes to stdout. A closed pipe (`bitsctl list | head -1`) is not an error worth reporting.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

/// Writes to stderr, ignoring failures (there is nowhere left to report them).
pub fn err_out(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes()).and_then(|()| stderr.flush());
}

/// DEST made absolute against the current directory (without resolving symlinks or requiring it
/// to exist), as the daemon requires.
pub fn absolute(dest: &Path) -> Result<PathBuf, BitsError> {
    if dest.as_os_str().is_empty() {
        return Err(BitsError::new(Code::E_INVALIDARG, "the destination path is empty"));
    }
    std::path::absolute(dest).map_err(|e| {
        BitsError::new(
            Code::ERROR_PATH_NOT_FOUND,
            format!("cannot make {} absolute: {e}", dest.display()),
        )
    })
}

/// A command's answer on stdout: the JSON value under `--json`, else the text; only the one
/// printed is built.
fn print<T: Serialize>(json: bool, as_json: impl FnOnce() -> T, text: impl FnOnce() -> String) {
    if json {
        out(&render::to_json(&as_json()));
    } else {
        out(&text());
    }
}

/// Prints a success code: nothing for S_OK, else its name (or `{code, hresult}` under --json).
fn print_code(code: Code, json: bool) {
    print(
        json,
        || render::code_json(code),
        || if code == Code::S_OK { String::new() } else { format!("{}\n", code.name()) },
    );
}

/// `--tcp` without a usable token: a usage error (exit 2) like clap's, found only when
/// connecting, so that the token file matters only with `--tcp`.
#[derive(Debug, thiserror::Error)]
pub enum TokenUsage {
    #[error("--tcp needs --token-file (or BITSD_TOKEN_FILE)")]
    Missing,
    #[error("--token-file: {0}")]
    Unreadable(TokenFileError),
}

/// The daemon's TCP listener when `--tcp` is given (with its token), else its Unix socket. The
/// token file is read here rather than while parsing, so that `BITSD_TOKEN_FILE` matters only
/// with `--tcp`.
async fn connect(cli: &Cli) -> Result<Client> {
    let Some(addr) = cli.tcp else { return Ok(Client::connect(&cli.socket).await?) };
    let path = cli.token_file.as_ref().ok_or(TokenUsage::Missing)?;
    let token = Token::read_file(path).map_err(TokenUsage::Unreadable)?;
    Ok(Client::connect_tcp(addr, &token).await?)
}

/// A job named by a prefix of its id: the one job of the caller's (or, for an administrator
/// when none of theirs matches, of anyone's) whose id starts with it. A full id costs no call.
pub async fn resolve(client: &Client, job: &JobArg) -> Result<JobId> {
    let prefix = match job {
        JobArg::Id(id) => return Ok(*id),
        JobArg::Prefix(prefix) => prefix,
    };
    let matching = |jobs: Vec<bits_client::JobInfo>| -> Vec<JobId> {
        jobs.into_iter().map(|j| j.id).filter(|id| id.to_string().starts_with(prefix)).collect()
    };
    let mut ids = matching(client.list_jobs().await?);
    if ids.is_empty() {
        // Only administrators may list everyone's jobs; for others this is E_ACCESSDENIED and
        // the answer stays "no such job".
        if let Ok(all) = client.list_all_jobs().await {
            ids = matching(all);
        }
    }
    Ok(only_match(prefix, &ids)?)
}

/// The one id among those starting with `prefix`: none is BG_E_NOT_FOUND, several are refused
/// naming them all (the user picks one).
fn only_match(prefix: &str, ids: &[JobId]) -> Result<JobId, BitsError> {
    match ids {
        [] => {
            Err(BitsError::new(Code::BG_E_NOT_FOUND, format!("no job id starts with '{prefix}'")))
        }
        [id] => Ok(*id),
        _ => {
            let names: Vec<String> = ids.iter().map(JobId::to_string).collect();
            Err(BitsError::new(
                Code::E_INVALIDARG,
                format!(
                    "'{prefix}' is the start of {} job ids: {}; give more characters",
                    ids.len(),
                    names.join(", ")
                ),
            ))
        }
    }
}

/// `bitsctl set` stopped at a refused setting; the ones before it were applied.
#[derive(Debug, thiserror::Error)]
#[error("{flag} refused{}", applied_note(.applied))]
pub struct SetFailed {
    pub flag: String,
    pub applied: Vec<String>,
    #[source]
    pub source: anyhow::Error,
}

fn applied_note(applied: &[String]) -> String {
    if applied.is_empty() {
        " (nothing was changed)".to_string()
    } else {
        format!(" ({} already applied)", applied.join(", "))
    }
}

async fn apply(client: &Client, job: JobId, op: &SetOp) -> Result<Code> {
    Ok(match op {
        SetOp::Priority(p) => client.set_priority(job, (*p).into()).await?,
        SetOp::DisplayName(name) => client.set_display_name(job, Some(name)).await?,
        SetOp::Description(text) => client.set_description(job, Some(text)).await?,
        SetOp::RetryDelay(secs) => client.set_minimum_retry_delay(job, *secs).await?,
        SetOp::NoProgressTimeout(secs) => client.set_no_progress_timeout(job, *secs).await?,
        SetOp::MaxDownloadTime(secs) => client.set_maximum_download_time(job, *secs).await?,
        SetOp::NotifyFlags(flags) => client.set_notify_flags(job, *flags).await?,
        SetOp::SecurityFlags(flags) => client.set_security_flags(job, *flags).await?,
        SetOp::Property(p) => client.set_property(job, p.id, p.value).await?,
        SetOp::Connections(n) => client.set_extensions(job, Some(*n), None).await?,
        SetOp::FilesAtOnce(n) => client.set_extensions(job, None, Some(*n)).await?,
        SetOp::NotifyCmd { program, args } => {
            client.set_notify_cmd_line(job, Some(program), args).await?
        }
        SetOp::NoNotifyCmd => client.set_notify_cmd_line(job, None, &[]).await?,
    })
}

/// Applies the settings in order, stopping at the first refused one.
async fn set(client: &Client, job: JobId, ops: &[SetOp], json: bool) -> Result<()> {
    let mut applied = Vec::new();
    for op in ops {
        match apply(client, job, op).await {
            Ok(code) => applied.push((op.flag(), code)),
            Err(source) => {
                let applied = applied.into_iter().map(|(flag, _)| flag).collect();
                return Err(SetFailed { flag: op.flag(), applied, source }.into());
            }
        }
    }
    print(
        json,
        || {
            let entry = |(flag, code): &(_, Code)| {
                let (name, hresult) = (code.name(), render::hresult(*code));
                serde_json::json!({ "flag": flag, "code": name, "hresult": hresult })
            };
            applied.iter().map(entry).collect::<Vec<_>>()
        },
        || {
            let not_ok = applied.iter().filter(|(_, code)| *code != Code::S_OK);
            not_ok.map(|(flag, code)| format!("{flag}: {}\n", code.name())).collect()
        },
    );
    Ok(())
}

/// `bitsctl reset`: cancels every job listed; one refusal does not stop the others.
async fn reset(client: &Client, all_users: bool, json: bool) -> Result<()> {
    let jobs = if all_users { client.list_all_jobs().await? } else { client.list_jobs().await? };
    let mut cancelled = Vec::new();
    let mut failed = Vec::new();
    for job in &jobs {
        match client.cancel(job.id).await {
            Ok(_) => cancelled.push(job.id.to_string()),
            Err(e) => failed.push((job.id.to_string(), e.to_string())),
        }
    }
    print(
        json,
        || {
            let failed: Vec<_> = failed
                .iter()
                .map(|(id, error)| serde_json::json!({ "job_id": id, "error": error }))
                .collect();
            serde_json::json!({ "cancelled": cancelled, "failed": failed })
        },
        || {
            let mut text = format!("{} of {} jobs cancelled\n", cancelled.len(), jobs.len());
            text.extend(failed.iter().map(|(id, error)| format!("{id}: {error}\n")));
            text
        },
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(BitsError::new(
            Code::E_FAIL,
            format!("{} of {} jobs could not be cancelled", failed.len(), jobs.len()),
        )
        .into())
    }
}

/// `bitsctl add-set`: every line of the LIST in one AddFileSet.
async fn add_set(client: &Client, job: JobId, list_path: &Path, json: bool) -> Result<()> {
    let (text, origin) = list::read_input(list_path)?;
    let entries = list::parse_list(&text, &origin)?;
    let dests = entries
        .iter()
        .map(|e| {
            absolute(&e.dest)
                .map_err(|err| UsageError(format!("{origin}:{}: {}", e.line, err.message)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let files: Vec<NewFile<'_>> = entries
        .iter()
        .zip(&dests)
        .map(|(e, dest)| NewFile { url: &e.url, local_path: dest, sha256: e.sha256.as_deref() })
        .collect();
    let indexes = client.add_files(job, &files).await?;
    print(
        json,
        || serde_json::json!({ "file_indexes": indexes }),
        || indexes.iter().map(|i| format!("{i}\n")).collect(),
    );
    Ok(())
}

pub async fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    // Commands that need no daemon.
    match &cli.command {
        Command::Completions { shell } => {
            out(&crate::manual::completions(*shell));
            return Ok(());
        }
        Command::Man => {
            out(&crate::manual::man_page()?);
            return Ok(());
        }
        // It connects (and reconnects after a daemon restart) itself.
        Command::Download(args) => return download::run(&cli, args).await,
        _ => {}
    }
    let client = connect(&cli).await?;
    match cli.command {
        Command::Completions { .. } | Command::Man | Command::Download(_) => {}
        Command::Create { name, priority } => {
            let id = client.create_job(&name, priority.into()).await?;
            print(json, || serde_json::json!({ "job_id": id.to_string() }), || format!("{id}\n"));
        }
        Command::Add { job, url, dest, ranges, sha256 } => {
            let job = resolve(&client, &job).await?;
            let dest = absolute(&dest)?;
            let index =
                client.add_file_checked(job, &url, &dest, &ranges, sha256.as_deref()).await?;
            print(json, || serde_json::json!({ "file_index": index }), || format!("{index}\n"));
        }
        Command::AddSet { job, list } => {
            let job = resolve(&client, &job).await?;
            add_set(&client, job, &list, json).await?;
        }
        Command::Resume(OneJob { job }) => {
            print_code(client.resume(resolve(&client, &job).await?).await?, json)
        }
        Command::Suspend(OneJob { job }) => {
            print_code(client.suspend(resolve(&client, &job).await?).await?, json)
        }
        Command::Cancel(OneJob { job }) => {
            print_code(client.cancel(resolve(&client, &job).await?).await?, json)
        }
        Command::Complete(OneJob { job }) => {
            print_code(client.complete(resolve(&client, &job).await?).await?, json)
        }
        Command::TakeOwnership(OneJob { job }) => {
            print_code(client.take_ownership(resolve(&client, &job).await?).await?, json);
        }
        Command::Reset { all_users } => reset(&client, all_users, json).await?,
        Command::List { all_users } => {
            let jobs =
                if all_users { client.list_all_jobs().await? } else { client.list_jobs().await? };
            print(
                json,
                || jobs.iter().map(|j| render::job_json(j, None)).collect::<Vec<_>>(),
                || render::jobs_table(&jobs, all_users),
            );
        }
        Command::Info(OneJob { job }) => {
            let job = resolve(&client, &job).await?;
            let info = client.get_job(job).await?;
            let files = client.list_files(job).await?;
            print(
                json,
                || render::job_json(&info, Some(&files)),
                || render::job_info(&info, &files),
            );
        }
        Command::Files(OneJob { job }) => {
            let files = client.list_files(resolve(&client, &job).await?).await?;
            print(
                json,
                || files.iter().map(render::file_json).collect::<Vec<_>>(),
                || render::files_table(&files),
            );
        }
        Command::Progress(OneJob { job }) => {
            let progress = client.get_progress(resolve(&client, &job).await?).await?;
            print(
                json,
                || render::full_progress_json(&progress),
                || render::progress_text(&progress),
            );
        }
        Command::Error(OneJob { job }) => {
            let error = client.get_error(resolve(&client, &job).await?).await?;
            print(json, || render::error_json(&error), || render::error_text(&error));
        }
        Command::Set { job, ops, .. } => {
            let job = resolve(&client, &job).await?;
            set(&client, job, &ops, json).await?;
        }
        Command::SetHeaders { job, from_file, clear } => {
            let headers = match (&from_file, clear) {
                (Some(path), false) => {
                    let (text, origin) = list::read_input(path)?;
                    Some(headers::parse_headers(&text, &origin)?)
                }
                _ => None,
            };
            let job = resolve(&client, &job).await?;
            print_code(client.set_custom_headers(job, headers.as_deref()).await?, json);
        }
        Command::SetRemoteName { job, file_index, url } => {
            let job = resolve(&client, &job).await?;
            print_code(client.set_remote_name(job, file_index, &url).await?, json);
        }
        Command::ReplacePrefix { job, old, new } => {
            let job = resolve(&client, &job).await?;
            print_code(client.replace_remote_prefix(job, &old, &new).await?, json);
        }
        Command::Position { job, file_index, offset } => {
            let job = resolve(&client, &job).await?;
            print_code(client.update_download_position(job, file_index, offset).await?, json);
        }
        Command::Ranges { job, file_index } => {
            let job = resolve(&client, &job).await?;
            let ranges = client.get_filled_file_ranges(job, file_index).await?;
            print(
                json,
                || ranges.iter().map(render::range_json).collect::<Vec<_>>(),
                || ranges.iter().map(|r| format!("{}\n", r.display())).collect(),
            );
        }
        Command::RequestRanges { job, file_index, ranges } => {
            let job = resolve(&client, &job).await?;
            print_code(client.request_file_ranges(job, file_index, &ranges).await?, json);
        }
        Command::Watch { job, flags } => {
            let job = resolve(&client, &job).await?;
            watch::run(&client, job, flags, json).await?;
        }
        Command::Monitor { interval } => {
            monitor::run(&client, std::time::Duration::from_secs_f64(interval), json).await?;
        }
        Command::Stats => stats::run(&client, json).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_prefix_names_one_job_or_is_refused() {
        let a = JobId::parse("0b3e4a9e-8d4f-4a32-9c55-1f0d6d2c8e11").unwrap();
        let b = JobId::parse("0b3e4a9f-0000-4a32-9c55-1f0d6d2c8e11").unwrap();
        assert_eq!(only_match("0b3e4a9e", &[a]).unwrap(), a);
        let err = only_match("ffff", &[]).unwrap_err();
        assert_eq!(err.code, Code::BG_E_NOT_FOUND);
        assert_eq!(err.message, "no job id starts with 'ffff'");
        let err = only_match("0b3e", &[a, b]).unwrap_err();
        assert_eq!(err.code, Code::E_INVALIDARG);
        assert!(err.message.contains(&a.to_string()) && err.message.contains(&b.to_string()));
        assert!(err.message.starts_with("'0b3e' is the start of 2 job ids"), "{}", err.message);
    }
}
