//! bitsctl: the command-line client of bitsd. Parses the command line, runs one command through
//! bits-client, and maps the outcome to an exit code: 0 success, 1 a BITS error, 2 usage (clap,
//! or --tcp without a usable --token-file), 3 the daemon could not be reached, 130 interrupted.
#![allow(clippy::print_stdout)] // printing to stdout is this binary's job (it writes via cmd::out)

mod args;
mod cmd;
mod headers;
mod list;
mod manual;
mod render;

use std::process::ExitCode;

use bits_client::ClientError;
use bits_core::{BitsError, Code};

use crate::cmd::download::Interrupted;
use crate::cmd::{SetFailed, TokenUsage};
use crate::list::UsageError;

fn main() -> ExitCode {
    let cli = match args::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let err = anyhow::Error::new(e).context("cannot start the async runtime");
            return report(&err, json);
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err, json),
    }
}

/// A clap error: help and version print as usual; a usage error is clap's text, or with
/// `--json` anywhere on the command line a JSON error on stderr. Exit 2 either way.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let wants_json = std::env::args_os().any(|a| a == "--json");
    if !wants_json || matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let message = e.render().to_string();
    let first = message.lines().next().unwrap_or("").trim_start_matches("error: ");
    cmd::err_out(&json_error("USAGE", Code::E_INVALIDARG, first));
    ExitCode::from(2)
}

/// Prints the error (one line, or one JSON object under `--json`) and gives the exit code.
fn report(err: &anyhow::Error, json: bool) -> ExitCode {
    let code = exit_code(err);
    if json {
        let name = if code == 2 { "USAGE".to_string() } else { error_code(err).name() };
        cmd::err_out(&json_error(&name, error_code(err), &error_message(err)));
    } else {
        cmd::err_out(&format!("bitsctl: {}\n", error_line(err)));
    }
    ExitCode::from(code)
}

/// `{"error": {"code", "hresult", "message"}}` and a newline.
fn json_error(name: &str, code: Code, message: &str) -> String {
    let value = serde_json::json!({
        "error": { "code": name, "hresult": render::hresult(code), "message": message }
    });
    format!("{value}\n")
}

/// The error without its code (which the JSON form has in its own fields).
fn error_message(err: &anyhow::Error) -> String {
    if let Some(e) = err.downcast_ref::<SetFailed>() {
        return format!("{e}: {}", error_message(&e.source));
    }
    match (err.downcast_ref::<ClientError>(), err.downcast_ref::<BitsError>()) {
        (Some(ClientError::Bits(e)), _) | (None, Some(e)) => e.message.replace(['\n', '\r'], " "),
        _ => error_line(err),
    }
}

/// The BITS code behind an error; E_FAIL when there is none (a connection, a bad reply).
fn error_code(err: &anyhow::Error) -> Code {
    if let Some(e) = err.downcast_ref::<SetFailed>() {
        return error_code(&e.source);
    }
    match (err.downcast_ref::<ClientError>(), err.downcast_ref::<BitsError>()) {
        (Some(ClientError::Bits(e)), _) | (None, Some(e)) => e.code,
        _ if err.downcast_ref::<UsageError>().is_some() => Code::E_INVALIDARG,
        _ => Code::E_FAIL,
    }
}

/// The one line printed after `bitsctl: `: `<NAME> (0x<HR>): <message>` for BITS errors, or
/// `cannot connect to bitsd at <path>: <reason>`.
fn error_line(err: &anyhow::Error) -> String {
    let line = if let Some(e) = err.downcast_ref::<SetFailed>() {
        format!("{e}: {}", error_line(&e.source))
    } else if let Some(e) = err.downcast_ref::<UsageError>() {
        e.to_string()
    } else if let Some(e) = err.downcast_ref::<ClientError>() {
        match e {
            ClientError::Protocol(_) => format!("{}: {e}", Code::E_FAIL),
            ClientError::Connect { .. } | ClientError::ConnectTcp { .. } | ClientError::Bits(_) => {
                e.to_string()
            }
        }
    } else if let Some(e) = err.downcast_ref::<BitsError>() {
        e.to_string()
    } else if let Some(e) = err.downcast_ref::<Interrupted>() {
        e.to_string()
    } else if let Some(e) = err.downcast_ref::<TokenUsage>() {
        e.to_string()
    } else {
        format!("{}: {err:#}", Code::E_FAIL)
    };
    line.replace(['\n', '\r'], " ")
}

fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(e) = err.downcast_ref::<SetFailed>() {
        return exit_code(&e.source);
    }
    match err.downcast_ref::<ClientError>() {
        Some(ClientError::Connect { .. } | ClientError::ConnectTcp { .. }) => 3,
        _ if err.downcast_ref::<Interrupted>().is_some() => 130,
        _ if err.downcast_ref::<TokenUsage>().is_some() => 2,
        _ if err.downcast_ref::<UsageError>().is_some() => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::PathBuf;

    use bits_core::JobId;

    use super::*;

    fn connect_error() -> anyhow::Error {
        ClientError::Connect {
            socket: PathBuf::from("/run/user/1000/bitsd/bitsd.sock"),
            source: io::Error::new(io::ErrorKind::NotFound, "no such socket; is bitsd running?"),
        }
        .into()
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&connect_error()), 3);
        let bits: anyhow::Error =
            ClientError::Bits(BitsError::new(Code::BG_E_NOT_FOUND, "no job x")).into();
        assert_eq!(exit_code(&bits), 1);
        assert_eq!(exit_code(&BitsError::new(Code::Http(404), "gone").into()), 1);
        assert_eq!(exit_code(&ClientError::Protocol("bad".into()).into()), 1);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), 1);
        assert_eq!(exit_code(&Interrupted(JobId::new_random()).into()), 130);
    }

    #[test]
    fn a_token_file_without_a_token_is_a_usage_error_naming_it() {
        let err: anyhow::Error = TokenUsage::Unreadable(bits_client::TokenFileError::Empty {
            path: PathBuf::from("/run/tcp.token"),
        })
        .into();
        assert_eq!(exit_code(&err), 2);
        assert_eq!(error_line(&err), "--token-file: /run/tcp.token is empty");
    }

    #[test]
    fn an_unreachable_tcp_listener_is_exit_3_naming_the_address() {
        let err: anyhow::Error = ClientError::ConnectTcp {
            addr: "127.0.0.1:7781".parse().unwrap(),
            source: io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused"),
        }
        .into();
        assert_eq!(exit_code(&err), 3);
        assert_eq!(
            error_line(&err),
            "cannot connect to bitsd at 127.0.0.1:7781: Connection refused"
        );
    }

    #[test]
    fn json_errors_carry_the_code_apart_from_the_message() {
        let refused: anyhow::Error = SetFailed {
            flag: "--connections".into(),
            applied: vec!["--description".into(), "--priority".into()],
            source: ClientError::Bits(BitsError::new(Code::E_INVALIDARG, "not 99")).into(),
        }
        .into();
        assert_eq!(exit_code(&refused), 1);
        assert_eq!(
            error_line(&refused),
            "--connections refused (--description, --priority already applied): \
             E_INVALIDARG (0x80070057): not 99"
        );
        let json: serde_json::Value = serde_json::from_str(&json_error(
            "E_INVALIDARG",
            error_code(&refused),
            &error_message(&refused),
        ))
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({ "error": {
                "code": "E_INVALIDARG",
                "hresult": "0x80070057",
                "message": "--connections refused (--description, --priority already applied): not 99"
            }})
        );
        let usage: anyhow::Error = UsageError("L:2: no DEST".into()).into();
        assert_eq!(exit_code(&usage), 2);
        assert_eq!(error_code(&usage), Code::E_INVALIDARG);
        assert_eq!(error_line(&usage), "L:2: no DEST");
        assert_eq!(error_code(&connect_error()), Code::E_FAIL);
    }

    #[test]
    fn error_lines() {
        assert_eq!(
            error_line(&connect_error()),
            "cannot connect to bitsd at /run/user/1000/bitsd/bitsd.sock: no such socket; is bitsd running?"
        );
        let bits: anyhow::Error =
            ClientError::Bits(BitsError::new(Code::BG_E_EMPTY, "the job has no files")).into();
        assert_eq!(error_line(&bits), "BG_E_EMPTY (0x80200003): the job has no files");
        let http: anyhow::Error = BitsError::new(Code::Http(404), "Not\nFound").into();
        assert_eq!(error_line(&http), "BG_E_HTTP_ERROR_404 (0x80190194): Not Found");
        let protocol: anyhow::Error = ClientError::Protocol("x".into()).into();
        assert_eq!(error_line(&protocol), "E_FAIL (0x80004005): bad reply from bitsd: x");
    }
}
