//! The command line: clap definitions, the value parsers (job ids and prefixes, byte ranges,
//! flags by name) and the order of `set`'s flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use bits_client::PropertyValue;
use bits_core::job::{notify, property, security};
use bits_core::{ByteRange, JobId, LENGTH_TO_EOF, Priority};
use clap::{
    ArgGroup, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum,
};

#[derive(Debug, Parser)]
#[command(
    name = "bitsctl",
    version,
    about = "Control bitsd, the background download daemon",
    propagate_version = true
)]
pub struct Cli {
    /// The daemon's Unix socket.
    #[arg(
        long,
        global = true,
        env = "BITSD_SOCKET",
        value_name = "PATH",
        default_value_os_t = bits_client::default_socket()
    )]
    pub socket: PathBuf,

    /// Talk to the daemon's loopback TCP listener at ADDR (bitsd's `[tcp] listen`, e.g.
    /// 127.0.0.1:7781) instead of the Unix socket. Needs the listener's token: --token-file
    /// or BITSD_TOKEN_FILE.
    #[arg(
        long,
        global = true,
        env = "BITSD_TCP",
        value_name = "ADDR",
        value_parser = parse_tcp_addr
    )]
    pub tcp: Option<SocketAddr>,

    /// The file holding the TCP listener's bearer token (surrounding whitespace is ignored).
    /// Read only with --tcp, so that a BITSD_TOKEN_FILE left in the environment cannot break
    /// commands over the Unix socket.
    #[arg(
        id = "token",
        long = "token-file",
        global = true,
        env = "BITSD_TOKEN_FILE",
        value_name = "PATH"
    )]
    pub token_file: Option<PathBuf>,

    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a download job (suspended) and print its id.
    Create {
        /// Display name of the job.
        #[arg(long, default_value = "bitsctl job")]
        name: String,
        #[arg(long, value_enum, default_value_t = PriorityArg::Normal)]
        priority: PriorityArg,
    },
    /// Add a file to a job and print its index.
    Add {
        #[arg(help = JOB_HELP)]
        job: JobArg,
        url: String,
        /// Destination; made absolute against the current directory.
        dest: PathBuf,
        /// Download only these bytes (repeatable; the local file is their concatenation in order).
        #[arg(long = "range", value_name = "OFFSET:LENGTH", value_parser = parse_range)]
        ranges: Vec<ByteRange>,
        /// The expected SHA-256 of the local file (64 hex digits); a mismatch is a job error.
        #[arg(long, value_name = "HEX", value_parser = crate::list::parse_sha256)]
        sha256: Option<String>,
    },
    /// Add several files at once from LIST (lines of `URL DEST [sha256=HEX]`, `-` for stdin),
    /// all or none, as bitsadmin /addfileset; prints their indexes.
    AddSet {
        #[arg(help = JOB_HELP)]
        job: JobArg,
        list: PathBuf,
    },
    /// Start or restart transferring a job.
    Resume(OneJob),
    /// Pause a job.
    Suspend(OneJob),
    /// Cancel a job and delete its temporary files.
    Cancel(OneJob),
    /// Move a transferred job's files into place and end it.
    Complete(OneJob),
    /// Cancel all of your jobs (everyone's with --all-users, administrators only), as
    /// bitsadmin /reset.
    Reset {
        #[arg(long)]
        all_users: bool,
    },
    /// List your jobs (or, for administrators, everyone's with --all-users).
    List {
        /// Every user's jobs, with their owners (BG_JOB_ENUM_ALL_USERS; administrators only)
        #[arg(long)]
        all_users: bool,
    },
    /// Become the owner of another user's job (administrators only). Drops its custom headers.
    TakeOwnership(OneJob),
    /// Show a job and its files.
    Info(OneJob),
    /// Show a job's files (ListFiles).
    Files(OneJob),
    /// Show a job's progress: bytes and files, per file too (GetProgress).
    Progress(OneJob),
    /// Show a job's last error: context, code, description, file (GetError).
    Error(OneJob),
    /// Change a job's settings, applied one by one in the order given; stops at the first
    /// refused one (those before it stay applied).
    #[command(after_help = "Example:\n  bitsctl set 3f2a --priority high --retry-delay 60 \
        --notify-flags transferred,error --notify-cmd /usr/bin/logger --notify-arg done")]
    Set {
        #[arg(help = JOB_HELP)]
        job: JobArg,
        #[command(flatten)]
        flags: SetFlags,
        /// The flags above in command-line order (filled in by `parse_from`).
        #[arg(skip)]
        ops: Vec<SetOp>,
    },
    /// Set a job's custom HTTP headers from a file of `Name: value` lines (`-` for stdin), so
    /// that they never appear on a command line; --clear removes them.
    #[command(group(ArgGroup::new("source").required(true).args(["from_file", "clear"])))]
    SetHeaders {
        #[arg(help = JOB_HELP)]
        job: JobArg,
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        #[arg(long)]
        clear: bool,
    },
    /// Point a file of a job at another URL (same content; SetRemoteName).
    SetRemoteName {
        #[arg(help = JOB_HELP)]
        job: JobArg,
        file_index: u32,
        url: String,
    },
    /// Replace OLD at the start of every file's URL with NEW (prints S_FALSE if none matched).
    ReplacePrefix {
        #[arg(help = JOB_HELP)]
        job: JobArg,
        old: String,
        new: String,
    },
    /// Tell the daemon how far an on-demand file has been read (UpdateDownloadPosition).
    Position {
        #[arg(help = JOB_HELP)]
        job: JobArg,
        file_index: u32,
        offset: u64,
    },
    /// Show the downloaded ranges of a file, one OFFSET:LENGTH per line.
    Ranges {
        #[arg(help = JOB_HELP)]
        job: JobArg,
        file_index: u32,
    },
    /// Ask for ranges of a file to be downloaded first.
    RequestRanges {
        #[arg(help = JOB_HELP)]
        job: JobArg,
        file_index: u32,
        #[arg(value_name = "OFFSET:LENGTH", required = true, value_parser = parse_range)]
        ranges: Vec<ByteRange>,
    },
    /// Print a job's notifications and progress as they happen, one line each (--json: one
    /// object a line), until the job is completed or cancelled.
    Watch {
        #[arg(help = JOB_HELP)]
        job: JobArg,
        /// Notify flags for this watcher, by name or number (e.g. `all` or 0x3B); default:
        /// transferred,error,modification. DISABLE (0x4) is refused: it would show nothing.
        #[arg(long, value_name = "FLAGS", value_parser = parse_watch_flags)]
        flags: Option<u32>,
    },
    /// A table of all your jobs, refreshed in place (state, progress, rate, error); with
    /// --json, one event a line for every job, as it happens. Ctrl-C ends it.
    Monitor {
        /// Seconds between refreshes (and between looks for new jobs).
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = parse_interval)]
        interval: f64,
    },
    /// Download URLs to files in one job: wait with progress, complete it (or --detach).
    Download(crate::cmd::download::DownloadArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    #[command(after_help = "Install: bitsctl completions bash > \
        /usr/share/bash-completion/completions/bitsctl")]
    Completions { shell: clap_complete::Shell },
    /// Print bitsctl's manual page (roff) on stdout: `bitsctl man | man -l -`.
    Man,
    /// Show the daemon's numbers since it started: jobs by state (everyone's and yours), bytes
    /// transferred, connections, transient errors by code, store flushes (--json: raw numbers).
    Stats,
}

/// The help of every command's job argument, in one place. (Without a final period: clap drops
/// it from a doc comment, and the help reads as it did when each argument had its own.)
const JOB_HELP: &str = "The job: its id, or a unique prefix of it (4 characters or more)";

// The argument of the commands that take nothing but a job. (A doc comment here would become
// each such command's about text in place of its own.)
#[derive(Debug, Args)]
pub struct OneJob {
    #[arg(help = JOB_HELP)]
    pub job: JobArg,
}

/// A job on the command line: its full id, or a unique prefix of it (as git and docker accept),
/// resolved with ListJobs by `cmd::resolve`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobArg {
    Id(JobId),
    Prefix(String),
}

/// The shortest prefix accepted: shorter ones match too many jobs to be worth a round trip.
pub const MIN_PREFIX: usize = 4;

/// clap's parser of a job argument.
impl std::str::FromStr for JobArg {
    type Err = String;

    fn from_str(text: &str) -> Result<JobArg, String> {
        parse_job(text)
    }
}

/// A job id, or at least [`MIN_PREFIX`] of its leading characters.
pub fn parse_job(text: &str) -> Result<JobArg, String> {
    let text = text.trim();
    if let Some(id) = JobId::parse(text) {
        return Ok(JobArg::Id(id));
    }
    let lower = text.to_ascii_lowercase();
    if lower.len() >= MIN_PREFIX
        && lower.len() < 36
        && lower.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    {
        return Ok(JobArg::Prefix(lower));
    }
    Err(format!("'{text}' is not a job id (a UUID, or at least its first {MIN_PREFIX} characters)"))
}

/// The flags of `bitsctl set`. Each is given at most once (except --property); `SetOp` keeps
/// their order.
#[derive(Debug, Default, Args)]
pub struct SetFlags {
    /// Foreground jobs run at once, each on its own; the others one at a time by priority.
    #[arg(long, value_enum)]
    pub priority: Option<PriorityArg>,
    /// The name shown by list and info (at most 256 characters).
    #[arg(long, value_name = "NAME")]
    pub display_name: Option<String>,
    /// A longer description (at most 1024 characters).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Minimum seconds between retries after a transient error (at least 5).
    #[arg(long, value_name = "SECONDS")]
    pub retry_delay: Option<u32>,
    /// Seconds without progress after which a transient error becomes fatal (0: at once).
    #[arg(long, value_name = "SECONDS")]
    pub no_progress_timeout: Option<u32>,
    /// Seconds the job may spend transferring before it fails (0: no limit).
    #[arg(long, value_name = "SECONDS")]
    pub max_download_time: Option<u32>,
    /// Which notifications the job sends: names joined by commas (transferred, error, disable,
    /// modification, file-transferred, file-ranges-transferred, all) or a number (0x3).
    #[arg(long, value_name = "FLAGS", value_parser = parse_notify_flags)]
    pub notify_flags: Option<u32>,
    /// TLS and redirect options: names joined by commas (crl-check, ignore-cert-cn,
    /// ignore-cert-date, ignore-unknown-ca, ignore-cert-usage, redirect-report,
    /// redirect-disallow, https-to-http) or a number (0x100).
    #[arg(long, value_name = "FLAGS", value_parser = parse_security_flags)]
    pub security_flags: Option<u32>,
    /// A job property (repeatable): minimum-notification-interval-ms=N, on-demand=true|false,
    /// or dynamic-content, high-performance, use-stored-credentials (=true|false),
    /// cost-flags=N, max-download-size=N (refused by bitsd as not implemented).
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_property)]
    pub property: Vec<Property>,
    /// Connections per file (bitsd extension: segmented download, 1..=32).
    #[arg(long, value_name = "N")]
    pub connections: Option<u32>,
    /// Files transferred at once (bitsd extension, 1..=64).
    #[arg(long, value_name = "N")]
    pub files_at_once: Option<u32>,
    /// A program (absolute path) run when the job is transferred or fails, as the job's owner
    /// (SetNotifyCmdLine); its arguments follow as --notify-arg.
    #[arg(long, value_name = "PROGRAM")]
    pub notify_cmd: Option<String>,
    /// An argument of --notify-cmd (repeatable, in order).
    #[arg(
        long = "notify-arg",
        value_name = "ARG",
        requires = "notify_cmd",
        allow_hyphen_values = true
    )]
    pub notify_args: Vec<String>,
    /// Remove the job's notify command line.
    #[arg(long, conflicts_with = "notify_cmd")]
    pub no_notify_cmd: bool,
}

/// A job property by its BITS_JOB_PROPERTY_ID and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Property {
    pub name: String,
    pub id: u32,
    pub value: PropertyValue,
}

/// One setting of `bitsctl set`, as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetOp {
    Priority(PriorityArg),
    DisplayName(String),
    Description(String),
    RetryDelay(u32),
    NoProgressTimeout(u32),
    MaxDownloadTime(u32),
    NotifyFlags(u32),
    SecurityFlags(u32),
    Property(Property),
    Connections(u32),
    FilesAtOnce(u32),
    NotifyCmd { program: String, args: Vec<String> },
    NoNotifyCmd,
}

impl SetOp {
    /// The flag as the user wrote it, for messages (`--priority`).
    pub fn flag(&self) -> String {
        let flag = match self {
            SetOp::Priority(_) => "--priority",
            SetOp::DisplayName(_) => "--display-name",
            SetOp::Description(_) => "--description",
            SetOp::RetryDelay(_) => "--retry-delay",
            SetOp::NoProgressTimeout(_) => "--no-progress-timeout",
            SetOp::MaxDownloadTime(_) => "--max-download-time",
            SetOp::NotifyFlags(_) => "--notify-flags",
            SetOp::SecurityFlags(_) => "--security-flags",
            SetOp::Property(p) => return format!("--property {}", p.name),
            SetOp::Connections(_) => "--connections",
            SetOp::FilesAtOnce(_) => "--files-at-once",
            SetOp::NotifyCmd { .. } => "--notify-cmd",
            SetOp::NoNotifyCmd => "--no-notify-cmd",
        };
        flag.to_string()
    }
}

/// The `set` flags in the order they were given: clap keeps each flag's values but not the
/// order across flags, so each op is placed at its flag's index in `matches`.
fn set_ops(flags: SetFlags, matches: &ArgMatches) -> Vec<SetOp> {
    let mut ops: Vec<(usize, SetOp)> = Vec::new();
    let mut one = |id: &str, op: Option<SetOp>| {
        if let (Some(op), Some(index)) = (op, matches.index_of(id)) {
            ops.push((index, op));
        }
    };
    one("priority", flags.priority.map(SetOp::Priority));
    one("display_name", flags.display_name.map(SetOp::DisplayName));
    one("description", flags.description.map(SetOp::Description));
    one("retry_delay", flags.retry_delay.map(SetOp::RetryDelay));
    one("no_progress_timeout", flags.no_progress_timeout.map(SetOp::NoProgressTimeout));
    one("max_download_time", flags.max_download_time.map(SetOp::MaxDownloadTime));
    one("notify_flags", flags.notify_flags.map(SetOp::NotifyFlags));
    one("security_flags", flags.security_flags.map(SetOp::SecurityFlags));
    one("connections", flags.connections.map(SetOp::Connections));
    one("files_at_once", flags.files_at_once.map(SetOp::FilesAtOnce));
    let args = flags.notify_args;
    one("notify_cmd", flags.notify_cmd.map(|program| SetOp::NotifyCmd { program, args }));
    one("no_notify_cmd", flags.no_notify_cmd.then_some(SetOp::NoNotifyCmd));
    if let Some(indexes) = matches.indices_of("property") {
        ops.extend(indexes.zip(flags.property).map(|(i, p)| (i, SetOp::Property(p))));
    }
    ops.sort_by_key(|&(index, _)| index);
    ops.into_iter().map(|(_, op)| op).collect()
}

/// Parses the command line (`std::env::args_os` in main), with the `set` flags put in order.
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let (Command::Set { flags, ops, .. }, Some(("set", sub))) =
        (&mut cli.command, matches.subcommand())
    {
        *ops = set_ops(std::mem::take(flags), sub);
        if ops.is_empty() {
            return Err(Cli::command().error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "set needs at least one setting, e.g. --priority high (see bitsctl set --help)",
            ));
        }
    }
    Ok(cli)
}

/// Flags given as `name,name` (each a key of `names`) or as one number.
fn parse_named_flags(text: &str, names: &[(&str, u32)], what: &str) -> Result<u32, String> {
    let text = text.trim();
    if text.starts_with(|c: char| c.is_ascii_digit()) {
        return parse_flags(text);
    }
    let mut flags = 0;
    for name in text.split(',').map(str::trim) {
        let Some(&(_, bit)) = names.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
            let known: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "'{name}' is not a {what} (known: {}; or a number such as 0x3)",
                known.join(", ")
            ));
        };
        flags |= bit;
    }
    Ok(flags)
}

const NOTIFY_NAMES: [(&str, u32); 7] = [
    ("transferred", notify::JOB_TRANSFERRED),
    ("error", notify::JOB_ERROR),
    ("disable", notify::DISABLE),
    ("modification", notify::JOB_MODIFICATION),
    ("file-transferred", notify::FILE_TRANSFERRED),
    ("file-ranges-transferred", notify::FILE_RANGES_TRANSFERRED),
    ("all", notify::ALL),
];

/// `--notify-flags`: names (`transferred,error`) or a number.
pub fn parse_notify_flags(text: &str) -> Result<u32, String> {
    parse_named_flags(text, &NOTIFY_NAMES, "notify flag")
}

/// `watch --flags`: as `--notify-flags`, with `all` meaning every event and DISABLE refused (a
/// watcher with it would print nothing and never end).
pub fn parse_watch_flags(text: &str) -> Result<u32, String> {
    let flags = if text.trim().eq_ignore_ascii_case("all") {
        notify::ALL & !notify::DISABLE
    } else {
        parse_notify_flags(text)?
    };
    if flags & notify::DISABLE != 0 {
        return Err(format!(
            "'{text}' includes DISABLE (0x4), which turns every notification off; \
             every event is 'all' (0x3B)"
        ));
    }
    Ok(flags)
}

/// `--security-flags`: names (`redirect-disallow,crl-check`) or a number.
pub fn parse_security_flags(text: &str) -> Result<u32, String> {
    const NAMES: [(&str, u32); 8] = [
        ("crl-check", security::SSL_ENABLE_CRL_CHECK),
        ("ignore-cert-cn", security::SSL_IGNORE_CERT_CN_INVALID),
        ("ignore-cert-date", security::SSL_IGNORE_CERT_DATE_INVALID),
        ("ignore-unknown-ca", security::SSL_IGNORE_UNKNOWN_CA),
        ("ignore-cert-usage", security::SSL_IGNORE_CERT_WRONG_USAGE),
        ("redirect-report", security::REDIRECT_POLICY_ALLOW_REPORT),
        ("redirect-disallow", security::REDIRECT_POLICY_DISALLOW),
        ("https-to-http", security::ALLOW_HTTPS_TO_HTTP),
    ];
    parse_named_flags(text, &NAMES, "security flag")
}

/// `--property NAME=VALUE` with the value typed as the property takes it.
pub fn parse_property(text: &str) -> Result<Property, String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not NAME=VALUE (e.g. on-demand=true)"))?;
    let name = name.trim().to_ascii_lowercase();
    let value = value.trim();
    let boolean = || match value.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(PropertyValue::Enable(true)),
        "false" | "off" | "no" | "0" => Ok(PropertyValue::Enable(false)),
        _ => Err(format!("'{value}' is not true or false (property {name})")),
    };
    let dword = || {
        parse_flags(value)
            .map(PropertyValue::Dword)
            .map_err(|_| format!("'{value}' is not a number (property {name})"))
    };
    let (id, value) = match name.as_str() {
        "minimum-notification-interval-ms" => {
            (property::MINIMUM_NOTIFICATION_INTERVAL_MS, dword()?)
        }
        "on-demand" => (property::ON_DEMAND_MODE, boolean()?),
        "dynamic-content" => (property::DYNAMIC_CONTENT, boolean()?),
        "high-performance" => (property::HIGH_PERFORMANCE, boolean()?),
        "use-stored-credentials" => (property::USE_STORED_CREDENTIALS, boolean()?),
        "cost-flags" => (property::COST_FLAGS, dword()?),
        "max-download-size" => (
            property::MAX_DOWNLOAD_SIZE,
            PropertyValue::Uint64(
                value
                    .parse()
                    .map_err(|_| format!("'{value}' is not a number (property {name})"))?,
            ),
        ),
        _ => {
            return Err(format!(
                "'{name}' is not a job property (minimum-notification-interval-ms, on-demand, \
                 dynamic-content, high-performance, use-stored-credentials, cost-flags, \
                 max-download-size)"
            ));
        }
    };
    Ok(Property { name, id, value })
}

/// `--interval`: positive seconds, fractions allowed.
fn parse_interval(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.05..=3600.0).contains(&secs) => Ok(secs),
        _ => Err(format!("'{text}' is not a number of seconds between 0.05 and 3600")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PriorityArg {
    Foreground,
    High,
    Normal,
    Low,
}

impl From<PriorityArg> for Priority {
    fn from(p: PriorityArg) -> Priority {
        match p {
            PriorityArg::Foreground => Priority::Foreground,
            PriorityArg::High => Priority::High,
            PriorityArg::Normal => Priority::Normal,
            PriorityArg::Low => Priority::Low,
        }
    }
}

/// `--tcp`: an IP:PORT on loopback, the only addresses bitsd listens on; anywhere else the token
/// would cross a network in clear text.
pub fn parse_tcp_addr(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr =
        text.trim().parse().map_err(|_| format!("'{text}' is not IP:PORT, e.g. 127.0.0.1:7781"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "'{text}' is not a loopback address (bitsd listens on 127.0.0.0/8 or ::1 only)"
        ));
    }
    Ok(addr)
}

/// Notify flags: `0x`-prefixed hexadecimal or decimal.
pub fn parse_flags(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("'{text}' is not a flags value (0x3F or 63)"))
}

/// `OFFSET:LENGTH`, decimal, with `eof` as LENGTH for "to the end of the file".
pub fn parse_range(text: &str) -> Result<ByteRange, String> {
    let bad = |why: &str| format!("'{text}' is not a byte range OFFSET:LENGTH ({why})");
    let (offset, length) = text.split_once(':').ok_or_else(|| bad("missing ':'"))?;
    let offset: u64 = offset.trim().parse().map_err(|_| bad("OFFSET is not a number"))?;
    let length = length.trim();
    let length = if length.eq_ignore_ascii_case("eof") {
        LENGTH_TO_EOF
    } else {
        length.parse().map_err(|_| bad("LENGTH is not a number or 'eof'"))?
    };
    Ok(ByteRange::new(offset, length))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("0:100").unwrap(), ByteRange::new(0, 100));
        assert_eq!(parse_range("111:eof").unwrap(), ByteRange::new(111, LENGTH_TO_EOF));
        assert_eq!(parse_range("5:EOF").unwrap(), ByteRange::new(5, LENGTH_TO_EOF));
        assert_eq!(parse_range("7:0").unwrap(), ByteRange::new(7, 0));
        for bad in ["", "10", "a:1", "1:b", "-1:5", "1:-5", ":", "1:2:3", "18446744073709551616:1"]
        {
            let err = parse_range(bad).unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }

    #[test]
    fn tcp_takes_a_loopback_address_and_a_token_file_anywhere() {
        let cli = Cli::try_parse_from([
            "bitsctl",
            "--tcp",
            "127.0.0.1:7781",
            "--token-file",
            "/run/tcp.token",
            "list",
        ])
        .unwrap();
        assert_eq!(cli.tcp, Some("127.0.0.1:7781".parse().unwrap()));
        assert_eq!(cli.token_file, Some(PathBuf::from("/run/tcp.token")));
        // Global: after the subcommand too.
        let cli = Cli::try_parse_from([
            "bitsctl",
            "list",
            "--tcp",
            "[::1]:1",
            "--token-file",
            "/run/tcp.token",
        ])
        .unwrap();
        assert_eq!(cli.tcp, Some("[::1]:1".parse().unwrap()));

        let usage = |args: &[&str]| {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
            err.to_string()
        };
        // The token file may come before or after the subcommand; without one, `cmd::connect`
        // refuses (a usage error too, see main.rs).
        let cli = Cli::try_parse_from([
            "bitsctl",
            "--tcp",
            "127.0.0.1:7781",
            "list",
            "--token-file",
            "/run/tcp.token",
        ])
        .unwrap();
        assert_eq!(cli.token_file, Some(PathBuf::from("/run/tcp.token")));
        for (addr, why) in
            [("10.0.0.1:7781", "not a loopback address"), ("localhost", "is not IP:PORT")]
        {
            let err = usage(&["bitsctl", "--tcp", addr, "--token-file", "/run/tcp.token", "list"]);
            assert!(err.contains(why), "{err}");
        }
    }

    /// The file is read when connecting, and only with --tcp (`cmd::connect`), so parsing never
    /// looks at it: a missing one is no concern of a command over the Unix socket.
    #[test]
    fn parsing_does_not_read_the_token_file() {
        let cli =
            Cli::try_parse_from(["bitsctl", "--token-file", "/nonexistent/tcp.token", "list"])
                .unwrap();
        assert_eq!(cli.tcp, None);
        assert_eq!(cli.token_file, Some(PathBuf::from("/nonexistent/tcp.token")));
    }

    const ID: &str = "0b3e4a9e-8d4f-4a32-9c55-1f0d6d2c8e11";

    fn set_ops_of(args: &[&str]) -> Vec<SetOp> {
        let cli = parse_from(["bitsctl", "set", ID].iter().chain(args)).unwrap();
        match cli.command {
            Command::Set { ops, .. } => ops,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn set_flags_keep_their_command_line_order() {
        let ops = set_ops_of(&[
            "--retry-delay",
            "60",
            "--property",
            "on-demand=true",
            "--priority",
            "high",
            "--notify-cmd",
            "/bin/echo",
            "--display-name",
            "n",
            "--notify-arg",
            "-x",
            "--property",
            "minimum-notification-interval-ms=0x10",
            "--notify-flags",
            "transferred,error",
        ]);
        let on_demand = Property {
            name: "on-demand".into(),
            id: property::ON_DEMAND_MODE,
            value: PropertyValue::Enable(true),
        };
        let interval = Property {
            name: "minimum-notification-interval-ms".into(),
            id: property::MINIMUM_NOTIFICATION_INTERVAL_MS,
            value: PropertyValue::Dword(16),
        };
        assert_eq!(
            ops,
            vec![
                SetOp::RetryDelay(60),
                SetOp::Property(on_demand),
                SetOp::Priority(PriorityArg::High),
                SetOp::NotifyCmd { program: "/bin/echo".into(), args: vec!["-x".into()] },
                SetOp::DisplayName("n".into()),
                SetOp::Property(interval),
                SetOp::NotifyFlags(3),
            ]
        );
        // The reverse order gives the reverse list.
        let ops =
            set_ops_of(&["--description", "d", "--security-flags", "0x100", "--no-notify-cmd"]);
        assert_eq!(
            ops,
            vec![SetOp::Description("d".into()), SetOp::SecurityFlags(0x100), SetOp::NoNotifyCmd]
        );
        let ops = set_ops_of(&["--no-notify-cmd", "--files-at-once", "4", "--connections", "8"]);
        assert_eq!(ops, vec![SetOp::NoNotifyCmd, SetOp::FilesAtOnce(4), SetOp::Connections(8)]);
    }

    #[test]
    fn set_usage_errors() {
        for (args, want) in [
            (&[][..], "at least one setting"),
            (&["--notify-arg", "x"][..], "--notify-cmd"),
            (&["--notify-cmd", "/p", "--no-notify-cmd"][..], "cannot be used with"),
            (&["--priority", "urgent"][..], "urgent"),
            (&["--notify-flags", "transfered"][..], "'transfered' is not a notify flag"),
            (&["--security-flags", "0xZZ"][..], "'0xZZ' is not a flags value"),
            (&["--property", "on-demand"][..], "is not NAME=VALUE"),
            (&["--property", "on-demand=maybe"][..], "'maybe' is not true or false"),
            (&["--property", "colour=red"][..], "'colour' is not a job property"),
            (&["--retry-delay", "-1"][..], "-1"),
            (&["--priority", "high", "--priority", "low"][..], "cannot be used multiple times"),
        ] {
            let err = parse_from(["bitsctl", "set", ID].iter().chain(args)).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
            assert!(err.to_string().contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn flags_by_name_or_number() {
        assert_eq!(parse_notify_flags("transferred,error"), Ok(3));
        assert_eq!(parse_notify_flags("Modification, FILE-TRANSFERRED"), Ok(0x18));
        assert_eq!(parse_notify_flags("0x3F"), Ok(0x3F));
        assert_eq!(parse_notify_flags("12"), Ok(12));
        assert_eq!(parse_security_flags("redirect-disallow,crl-check"), Ok(0x201));
        assert_eq!(parse_watch_flags("all"), Ok(0x3B));
        assert_eq!(parse_watch_flags("0x3B"), Ok(0x3B));
        for with_disable in ["0x3F", "disable", "transferred,disable", "4"] {
            let err = parse_watch_flags(with_disable).unwrap_err();
            assert!(err.contains("DISABLE (0x4)"), "{err}");
        }
    }

    #[test]
    fn jobs_by_id_or_unique_prefix() {
        assert_eq!(parse_job(ID), Ok(JobArg::Id(JobId::parse(ID).unwrap())));
        assert_eq!(parse_job(" 0B3E "), Ok(JobArg::Prefix("0b3e".into())));
        assert_eq!(parse_job("0b3e4a9e-8d4f"), Ok(JobArg::Prefix("0b3e4a9e-8d4f".into())));
        for bad in ["0b3", "", "nope", "0b3e4a9e-8d4f-4a32-9c55-1f0d6d2c8e1z", &format!("{ID}0")] {
            let err = parse_job(bad).unwrap_err();
            assert!(err.contains("is not a job id"), "{bad}: {err}");
        }
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_values_are_usage_errors_naming_them() {
        let id = "0b3e4a9e-8d4f-4a32-9c55-1f0d6d2c8e11";
        let err = Cli::try_parse_from(["bitsctl", "add", id, "http://h/f", "f", "--range", "x:1"])
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("'x:1'"), "{err}");
        let err = Cli::try_parse_from(["bitsctl", "info", "nope"]).unwrap_err();
        assert!(err.to_string().contains("'nope'"), "{err}");
        let err = Cli::try_parse_from(["bitsctl", "request-ranges", id, "0"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);

        let cli = Cli::try_parse_from([
            "bitsctl",
            "--socket",
            "/s",
            "download",
            "http://h/f",
            "out",
            "--range",
            "0:10",
            "--range",
            "20:eof",
            "--priority",
            "high",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket, PathBuf::from("/s"));
        match cli.command {
            Command::Download(args) => {
                assert_eq!(
                    args.ranges,
                    vec![ByteRange::new(0, 10), ByteRange::new(20, LENGTH_TO_EOF)]
                );
                assert_eq!(args.priority, Some(PriorityArg::High));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["bitsctl", "create"]).unwrap();
        match cli.command {
            Command::Create { name, priority } => {
                assert_eq!(name, "bitsctl job");
                assert_eq!(priority, PriorityArg::Normal);
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Property tests of the `OFFSET:LENGTH` parser. bitsctl has no proptest dev-dependency, so a
/// seeded xorshift generator drives them (deterministic; failures print the offending input).
#[cfg(test)]
mod range_property_tests {
    use super::*;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    /// Small numbers, numbers at the u64 and power-of-ten edges, and anything at all.
    fn any_u64(rng: &mut Rng) -> u64 {
        match rng.below(4) {
            0 => rng.below(1000),
            1 => *rng.pick(&[0, 1, 9, 10, 99, 100, u64::MAX, u64::MAX - 1, 1 << 63, 10u64.pow(19)]),
            2 => rng.next() >> rng.below(64),
            _ => rng.next(),
        }
    }

    fn any_range(rng: &mut Rng) -> ByteRange {
        let offset = any_u64(rng);
        let length = if rng.below(4) == 0 { LENGTH_TO_EOF } else { any_u64(rng) };
        ByteRange::new(offset, length)
    }

    #[test]
    fn display_then_parse_is_the_identity() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let range = any_range(&mut rng);
            let text = range.display();
            assert_eq!(parse_range(&text), Ok(range), "{text:?}");
            // `eof` is case-insensitive; u64::MAX as a number is the same as `eof`.
            if range.is_to_eof() {
                assert_eq!(parse_range(&format!("{}:EoF", range.offset)), Ok(range));
                assert_eq!(parse_range(&format!("{}:{}", range.offset, u64::MAX)), Ok(range));
            }
        }
    }

    /// Strings built from the grammar `DIGITS ':' (DIGITS | eof)` are accepted exactly when both
    /// numbers fit in a u64, and then mean those numbers.
    #[test]
    fn grammar_strings_parse_to_their_numbers() {
        let mut rng = Rng(0x0123_4567_89AB_CDEF);
        let digits = |rng: &mut Rng| -> String {
            let len = 1 + rng.below(22) as usize;
            (0..len).map(|_| char::from(b'0' + rng.below(10) as u8)).collect()
        };
        for _ in 0..20_000 {
            let offset = digits(&mut rng);
            let length = if rng.below(5) == 0 {
                rng.pick(&["eof", "EOF", "Eof"]).to_string()
            } else {
                digits(&mut rng)
            };
            let text = format!("{offset}:{length}");
            let want_offset = offset.parse::<u128>().ok().and_then(|v| u64::try_from(v).ok());
            let want_length = if length.eq_ignore_ascii_case("eof") {
                Some(LENGTH_TO_EOF)
            } else {
                length.parse::<u128>().ok().and_then(|v| u64::try_from(v).ok())
            };
            let want = want_offset.zip(want_length).map(|(o, l)| ByteRange::new(o, l));
            assert_eq!(parse_range(&text).ok(), want, "{text:?}");
        }
    }

    /// Arbitrary strings (biased towards the characters the grammar uses) never panic; a rejected
    /// string is named in the message; an accepted one has a canonical form meaning the same.
    #[test]
    fn arbitrary_strings_never_panic() {
        let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
        let alphabet: Vec<char> = "0123456789:eofEOF +-\t\n_x".chars().collect();
        let exotic = ['\u{0}', '\u{7f}', 'é', '٣', '１', '\u{200b}', '🦀', '：'];
        for _ in 0..50_000 {
            let len = rng.below(30) as usize;
            let text: String = (0..len)
                .map(|_| if rng.below(10) == 0 { *rng.pick(&exotic) } else { *rng.pick(&alphabet) })
                .collect();
            match parse_range(&text) {
                Ok(range) => assert_eq!(parse_range(&range.display()), Ok(range), "{text:?}"),
                Err(err) => assert!(err.contains(&format!("'{text}'")), "{text:?}: {err}"),
            }
        }
    }
}
