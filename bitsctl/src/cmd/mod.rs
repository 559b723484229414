//! One function per subcommand: call bits-client, hand the answer to `render`, print it.

pub mod download;
pub mod watch;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use bits_client::{Client, Token, TokenFileError};
use bits_core::{BitsError, Code};

use crate::args::{Cli, Command};
use crate::render;

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

/// Prints a success code: nothing for S_OK, else its name (or `{code, hresult}` under --json).
fn print_code(code: Code, json: bool) {
    if json {
        out(&render::to_json(&render::code_json(code)));
    } else if code != Code::S_OK {
        out(&format!("{}\n", code.name()));
    }
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

pub async fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    let client = connect(&cli).await?;
    match cli.command {
        Command::Create { name, priority } => {
            let id = client.create_job(&name, priority.into()).await?;
            if json {
                out(&render::to_json(&serde_json::json!({ "job_id": id.to_string() })));
            } else {
                out(&format!("{id}\n"));
            }
        }
        Command::Add { job, url, dest, ranges } => {
            let dest = absolute(&dest)?;
            let index = if ranges.is_empty() {
                client.add_file(job, &url, &dest).await?
            } else {
                client.add_file_with_ranges(job, &url, &dest, &ranges).await?
            };
            if json {
                out(&render::to_json(&serde_json::json!({ "file_index": index })));
            } else {
                out(&format!("{index}\n"));
            }
        }
        Command::Resume { job } => print_code(client.resume(job).await?, json),
        Command::Suspend { job } => print_code(client.suspend(job).await?, json),
        Command::Cancel { job } => print_code(client.cancel(job).await?, json),
        Command::Complete { job } => print_code(client.complete(job).await?, json),
        Command::TakeOwnership { job } => print_code(client.take_ownership(job).await?, json),
        Command::List { all_users } => {
            let jobs =
                if all_users { client.list_all_jobs().await? } else { client.list_jobs().await? };
            if json {
                let list: Vec<_> = jobs.iter().map(|j| render::job_json(j, None)).collect();
                out(&render::to_json(&list));
            } else {
                out(&render::jobs_table(&jobs));
            }
        }
        Command::Info { job } => {
            let info = client.get_job(job).await?;
            let files = client.list_files(job).await?;
            if json {
                out(&render::to_json(&render::job_json(&info, Some(&files))));
            } else {
                out(&render::job_info(&info, &files));
            }
        }
        Command::Ranges { job, file_index } => {
            let ranges = client.get_filled_file_ranges(job, file_index).await?;
            if json {
                let list: Vec<_> = ranges.iter().map(render::range_json).collect();
                out(&render::to_json(&list));
            } else {
                let text: String = ranges.iter().map(|r| format!("{}\n", r.display())).collect();
                out(&text);
            }
        }
        Command::RequestRanges { job, file_index, ranges } => {
            print_code(client.request_file_ranges(job, file_index, &ranges).await?, json);
        }
        Command::Watch { job, flags } => watch::run(&client, job, flags, json).await?,
        Command::Download { url, dest, ranges, priority } => {
            let dest = absolute(&dest)?;
            download::run(&client, &url, &dest, &ranges, priority.into(), json).await?;
        }
    }
    Ok(())
}
