//! The configuration file: where it is, what it may say, and checking every value before the
//! daemon starts.
//!
//! A mistake in the file stops the start with one line naming the file, the line and the key
//! (`/etc/bitsd/bitsd.toml:12: unknown key "max_jobz_per_user" in [limits]`), instead of being
//! ignored or surfacing later as odd behaviour. Unknown keys are errors for the same reason: a
//! misspelt limit that silently keeps its default is worse than no start at all.
//!
//! Command-line flags override the file, which overrides the built-in defaults; `main.rs` merges
//! the two. Everything that can fail is checked here, including the lookups a start would do later
//! (the admin group, the TCP token file), so `bitsd --check-config` says all there is to say.

use std::fmt;
use std::net::SocketAddr;
use std::ops::{Bound, Range, RangeBounds};
use std::path::{Path, PathBuf};

use bits_manager::ManagerConfig;
use bits_proto::token::Token;
use serde::Deserialize;
use toml::Spanned;

/// The system daemon's configuration file.
pub const SYSTEM_CONFIG: &str = "/etc/bitsd/bitsd.toml";

/// A configuration error: one line, already naming the file (and the line and key where there
/// is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Where the configuration came from, for the start-up log line and `--check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Read from this file.
    File(PathBuf),
    /// The default file does not exist: built-in defaults.
    Missing(PathBuf),
    /// A user daemon with neither `XDG_CONFIG_HOME` nor `HOME`: there is no default file to look at.
    NoDefaultPath,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Missing(path) => {
                write!(f, "no config file at {}; using defaults", path.display())
            }
            Origin::NoDefaultPath => f.write_str(
                "no config file (neither XDG_CONFIG_HOME nor HOME is set); using defaults",
            ),
        }
    }
}

/// See `awake.rs`: a little longer than a local client's turnaround between calls.
pub const DEFAULT_KEEP_AWAKE_US: u64 = 150;
/// Beyond this the "moment" would be a busy loop.
pub const MAX_KEEP_AWAKE_US: u64 = 10_000;

/// The checked configuration: every value valid, every name resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub origin: Origin,
    /// `None`: the per-uid default (`bits_core::defaults::socket_path`), unless a flag says otherwise.
    pub socket: Option<PathBuf>,
    /// `None`: the per-uid default (`bits_core::defaults::data_dir`), unless a flag says otherwise.
    pub data_dir: Option<PathBuf>,
    /// How long the gRPC thread stays awake after a call, in µs; 0: it sleeps at once.
    pub keep_awake_us: u64,
    pub limits: Limits,
    pub control: Control,
    pub transfer: Transfer,
    pub admins: Admins,
    /// `None`: no TCP listener (the default; the Unix socket is the only way in).
    pub tcp: Option<Tcp>,
    /// `[metrics] listen`: where `/metrics` is served (a loopback address); `None`: nowhere
    /// (the default).
    pub metrics: Option<SocketAddr>,
    pub log: Log,
}

impl Config {
    /// The built-in defaults, as if an empty file had been read.
    pub fn defaults(origin: Origin) -> Config {
        Config {
            origin,
            socket: None,
            data_dir: None,
            keep_awake_us: DEFAULT_KEEP_AWAKE_US,
            limits: Limits::default(),
            control: Control::default(),
            transfer: Transfer::default(),
            admins: Admins::default(),
            tcp: None,
            metrics: None,
            log: Log::default(),
        }
    }
}

/// `[limits]`: BITS' per-user and per-machine job quotas (admins are exempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_jobs_per_user: usize,
    pub max_jobs_per_machine: usize,
}

// The defaults of the file are the manager's own (`ManagerConfig::default`), in the file's units.

impl Default for Limits {
    fn default() -> Limits {
        let m = ManagerConfig::default();
        Limits {
            max_jobs_per_user: m.max_jobs_per_user,
            max_jobs_per_machine: m.max_jobs_per_machine,
        }
    }
}

/// `[control]`: what callers may hold open on the control socket, and for how long a connection
/// may keep quiet. The defaults are far beyond what a person or a well-behaved program needs
/// (`bitsctl` holds one connection; a program watching every job of its user needs at most
/// `max_jobs_per_user` streams), and far below what runs the daemon out of file descriptors or
/// memory. Administrators are exempt from the per-user caps, not from the totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub max_connections_per_user: usize,
    /// Also at most half the daemon's fd limit (see `main.rs`), whatever the file says.
    pub max_connections: usize,
    pub max_watches_per_user: usize,
    pub max_watches: usize,
    /// A connection that has not sent the HTTP/2 preface within this long is closed.
    pub handshake_timeout_ms: u64,
    /// A connection with no call in flight that sent nothing for this long is closed.
    pub idle_timeout_ms: u64,
}

impl Default for Control {
    fn default() -> Control {
        Control {
            max_connections_per_user: 64,
            max_connections: 1024,
            max_watches_per_user: 256,
            max_watches: 2048,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 600_000,
        }
    }
}

/// `[transfer]`: the data path's timing, in the units the flags use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub retry_delay_secs: u32,
    pub no_progress_timeout_secs: u32,
    pub idle_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub sync_bytes: u64,
    pub sync_interval_ms: u64,
}

impl Default for Transfer {
    fn default() -> Transfer {
        let m = ManagerConfig::default();
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Transfer {
            retry_delay_secs: m.default_retry_delay_secs,
            no_progress_timeout_secs: m.default_no_progress_timeout_secs,
            idle_timeout_ms: ms(m.http.idle_timeout),
            connect_timeout_ms: ms(m.http.connect_timeout),
            sync_bytes: m.sync_bytes,
            sync_interval_ms: ms(m.sync_interval),
        }
    }
}

/// `[access]`: administrators, by uid and by group (the group already resolved to its gid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admins {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl Default for Admins {
    fn default() -> Admins {
        let m = ManagerConfig::default();
        Admins { uids: m.admin_uids, gids: m.admin_gids }
    }
}

/// `[tcp]` with `listen` set: the loopback listener, its token and the uid its callers act as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcp {
    /// Always a loopback address (checked here and again at bind time).
    pub listen: SocketAddr,
    pub token_file: PathBuf,
    pub token: Token,
    /// TCP carries no peer credentials, so every authenticated caller acts as this uid.
    pub uid: u32,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub format: LogFormat,
    /// An `EnvFilter` directive (checked); `RUST_LOG` still wins.
    pub level: String,
}

impl Default for Log {
    fn default() -> Log {
        Log { format: LogFormat::Text, level: "info".to_string() }
    }
}

/// How log lines look: for people (`text`) or for a log collector (`json`, one object a line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The configuration file of a daemon running as `euid` when no `--config` names one:
/// [`SYSTEM_CONFIG`] for root, `$XDG_CONFIG_HOME/bitsd/bitsd.toml` (or
/// `$HOME/.config/bitsd/bitsd.toml`) for a user; `None` when a user has neither variable set.
pub fn default_path(
    euid: u32,
    xdg_config_home: Option<&str>,
    home: Option<&str>,
) -> Option<PathBuf> {
    if euid == 0 {
        return Some(PathBuf::from(SYSTEM_CONFIG));
    }
    match (xdg_config_home, home) {
        (Some(dir), _) if !dir.is_empty() => Some(PathBuf::from(dir).join("bitsd/bitsd.toml")),
        (_, Some(home)) if !home.is_empty() => {
            Some(PathBuf::from(home).join(".config/bitsd/bitsd.toml"))
        }
        _ => None,
    }
}

/// Loads and checks the configuration of this process: `explicit` (from `--config`, which must
/// exist) or the default file for the effective uid (which may be missing: defaults).
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    let euid = rustix::process::geteuid().as_raw();
    let default = || {
        default_path(
            euid,
            std::env::var("XDG_CONFIG_HOME").ok().as_deref(),
            std::env::var("HOME").ok().as_deref(),
        )
    };
    let (path, required) = match explicit {
        Some(path) => (path.to_path_buf(), true),
        None => match default() {
            Some(path) => (path, false),
            None => return Ok(Config::defaults(Origin::NoDefaultPath)),
        },
    };
    load_file(&path, required, euid)
}

/// Reads and checks `path`. A missing file is an error only when it was asked for by name.
pub fn load_file(path: &Path, required: bool, euid: u32) -> Result<Config, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text, euid),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            Ok(Config::defaults(Origin::Missing(path.to_path_buf())))
        }
        Err(e) => Err(ConfigError(format!("{}: cannot read: {e}", path.display()))),
    }
}

/// `field` of a raw table, checked to be at least 1 (a cap, timeout or size of 0 would stop
/// everything), or its default. The field is named once, so the key an error names
/// (`control.max_watches`) cannot drift from the field that is read.
macro_rules! at_least_1 {
    ($doc:expr, $table:literal, $raw:expr, $default:expr, $field:ident) => {
        $doc.in_range($raw.$field, concat!($table, ".", stringify!($field)), 1.., $default.$field)?
    };
}

/// Parses and checks the text of the file at `path` for a daemon running as `euid` (which decides
/// whether `tcp.uid` is required). Resolves `access.admin_group` and reads `tcp.token_file`.
pub fn parse(path: &Path, text: &str, euid: u32) -> Result<Config, ConfigError> {
    let doc = Doc { path, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| doc.describe(&e))?;
    let transfer = raw.transfer;
    let defaults = Transfer::default();
    let limits = Limits::default();
    let control = doc.control(raw.control)?;
    Ok(Config {
        origin: Origin::File(path.to_path_buf()),
        socket: doc.absolute(raw.socket, "socket")?,
        data_dir: doc.absolute(raw.data_dir, "data_dir")?,
        keep_awake_us: doc.in_range(
            raw.keep_awake_us,
            "keep_awake_us",
            ..=MAX_KEEP_AWAKE_US,
            DEFAULT_KEEP_AWAKE_US,
        )?,
        limits: Limits {
            max_jobs_per_user: raw
                .limits
                .max_jobs_per_user
                .map_or(limits.max_jobs_per_user, Spanned::into_inner),
            max_jobs_per_machine: raw
                .limits
                .max_jobs_per_machine
                .map_or(limits.max_jobs_per_machine, Spanned::into_inner),
        },
        control,
        transfer: Transfer {
            retry_delay_secs: at_least_1!(doc, "transfer", transfer, defaults, retry_delay_secs),
            no_progress_timeout_secs: transfer
                .no_progress_timeout_secs
                .map_or(defaults.no_progress_timeout_secs, Spanned::into_inner),
            idle_timeout_ms: at_least_1!(doc, "transfer", transfer, defaults, idle_timeout_ms),
            connect_timeout_ms: at_least_1!(
                doc,
                "transfer",
                transfer,
                defaults,
                connect_timeout_ms
            ),
            sync_bytes: at_least_1!(doc, "transfer", transfer, defaults, sync_bytes),
            sync_interval_ms: at_least_1!(doc, "transfer", transfer, defaults, sync_interval_ms),
        },
        admins: Admins {
            uids: raw.access.admin_uids.unwrap_or_else(|| Admins::default().uids),
            gids: match raw.access.admin_group {
                Some(group) => vec![doc.resolve_group(group)?],
                None => Vec::new(),
            },
        },
        tcp: doc.tcp(raw.tcp, euid)?,
        metrics: match raw.metrics.listen {
            Some(listen) => Some(doc.loopback(listen, "metrics.listen", "127.0.0.1:9781")?),
            None => None,
        },
        log: Log {
            format: raw.log.format.unwrap_or(LogFormat::Text),
            level: match raw.log.level {
                Some(level) => doc.filter(level)?,
                None => Log::default().level,
            },
        },
    })
}

// The file as written. Every field is optional (a missing key keeps its default) and wrapped in
// `Spanned` where a check after parsing must name its line.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table of bitsd settings")]
struct RawConfig {
    socket: Option<Spanned<PathBuf>>,
    data_dir: Option<Spanned<PathBuf>>,
    keep_awake_us: Option<Spanned<u64>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    transfer: RawTransfer,
    #[serde(default)]
    access: RawAccess,
    tcp: Option<Spanned<RawTcp>>,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    log: RawLog,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a [metrics] table")]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a [limits] table")]
struct RawLimits {
    max_jobs_per_user: Option<Spanned<usize>>,
    max_jobs_per_machine: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a [control] table")]
struct RawControl {
    max_connections_per_user: Option<Spanned<usize>>,
    max_connections: Option<Spanned<usize>>,
    max_watches_per_user: Option<Spanned<usize>>,
    max_watches: Option<Spanned<usize>>,
    handshake_timeout_ms: Option<Spanned<u64>>,
    idle_timeout_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a [transfer] table")]
struct RawTransfer {
    retry_delay_secs: Option<Spanned<u32>>,
    no_progress_timeout_secs: Option<Spanned<u32>>,
    idle_timeout_ms: Option<Spanned<u64>>,
    connect_timeout_ms: Option<Spanned<u64>>,
    sync_bytes: Option<Spanned<u64>>,
    sync_interval_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "an [access] table")]
struct RawAccess {
    admin_uids: Option<Vec<u32>>,
    admin_group: Option<Spanned<GroupRef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [tcp] table")]
struct RawTcp {
    listen: Option<Spanned<String>>,
    token_file: Option<Spanned<PathBuf>>,
    uid: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a [log] table")]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<Spanned<String>>,
}

/// `admin_group`: a group name, or a gid (as a number or a string of digits, like chown(1)).
enum GroupRef {
    Name(String),
    Gid(u32),
}

impl<'de> Deserialize<'de> for GroupRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<GroupRef, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = GroupRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a group name or a numeric gid")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<GroupRef, E> {
                if name.is_empty() {
                    return Err(E::custom("the group name is empty"));
                }
                Ok(match name.parse::<u32>() {
                    Ok(gid) => GroupRef::Gid(gid),
                    Err(_) => GroupRef::Name(name.to_string()),
                })
            }
            fn visit_i64<E: serde::de::Error>(self, gid: i64) -> Result<GroupRef, E> {
                numeric_gid(gid)
            }
            fn visit_u64<E: serde::de::Error>(self, gid: u64) -> Result<GroupRef, E> {
                numeric_gid(gid)
            }
        }
        /// TOML integers come as i64 or u64 by sign; either must fit a gid.
        fn numeric_gid<N, E>(gid: N) -> Result<GroupRef, E>
        where
            N: TryInto<u32> + fmt::Display + Copy,
            E: serde::de::Error,
        {
            gid.try_into().map(GroupRef::Gid).map_err(|_| E::custom(format!("{gid} is not a gid")))
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The file being checked: its name and text, to turn byte offsets into line numbers.
struct Doc<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Doc<'_> {
    /// The 1-based line holding byte `offset`.
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// `FILE:LINE: KEY: MESSAGE`.
    fn error(&self, span: Range<usize>, key: &str, message: impl fmt::Display) -> ConfigError {
        ConfigError(format!(
            "{}:{}: {key}: {}",
            self.path.display(),
            self.line(span.start),
            one_line(&message.to_string())
        ))
    }

    /// A TOML or serde error in the words of this file: syntax errors as they are, unknown keys
    /// with their table, wrong values with their dotted key.
    fn describe(&self, err: &toml::de::Error) -> ConfigError {
        let file = self.path.display();
        let Some(span) = err.span() else {
            return ConfigError(format!("{file}: {}", one_line(err.message())));
        };
        let line = self.line(span.start);
        let tree = match toml::de::DeTable::parse(self.text) {
            Ok(tree) => tree,
            Err(_) => {
                // Not TOML at all. A duplicate key's span is the key: name it.
                let mut message = one_line(err.message());
                if message == "duplicate key"
                    && let Some(key) = self.text.get(span.clone())
                {
                    message = format!("duplicate key {:?}", key.trim());
                }
                return ConfigError(format!("{file}:{line}: invalid TOML: {message}"));
            }
        };
        let path = key_path_at(tree.get_ref(), span.start).unwrap_or_default();
        if let Some(rest) = err.message().strip_prefix("unknown field `")
            && let Some((key, expected)) = rest.split_once('`')
        {
            let table = match path.split_last() {
                Some((_, table)) if !table.is_empty() => format!("in [{}]", table.join(".")),
                _ => "at the top level".to_string(),
            };
            let expected = expected.trim_start_matches(", ").replace('`', "");
            return ConfigError(format!("{file}:{line}: unknown key {key:?} {table} ({expected})"));
        }
        if path.is_empty() {
            ConfigError(format!("{file}:{line}: {}", one_line(err.message())))
        } else {
            ConfigError(format!("{file}:{line}: {}: {}", path.join("."), one_line(err.message())))
        }
    }

    /// The value, or `default` when the key is absent; a value outside `range` is an error
    /// naming the bound it crossed.
    fn in_range<T>(
        &self,
        value: Option<Spanned<T>>,
        key: &str,
        range: impl RangeBounds<T>,
        default: T,
    ) -> Result<T, ConfigError>
    where
        T: PartialOrd + Copy + fmt::Display,
    {
        let Some(value) = value else { return Ok(default) };
        let v = *value.get_ref();
        if range.contains(&v) {
            return Ok(v);
        }
        let why = match (range.start_bound(), range.end_bound()) {
            (Bound::Included(min), _) if v < *min => format!("must be at least {min}"),
            (Bound::Excluded(min), _) if v <= *min => format!("must be more than {min}"),
            (_, Bound::Included(max)) => format!("must be at most {max}"),
            (_, Bound::Excluded(max)) => format!("must be less than {max}"),
            _ => "is out of range".to_string(),
        };
        Err(self.error(value.span(), key, why))
    }

    /// Paths in the file must be absolute: the daemon's working directory is nobody's business.
    fn absolute(
        &self,
        value: Option<Spanned<PathBuf>>,
        key: &str,
    ) -> Result<Option<PathBuf>, ConfigError> {
        match value {
            None => Ok(None),
            Some(v) if !v.get_ref().is_absolute() => Err(self.error(
                v.span(),
                key,
                format!("must be an absolute path, not {:?}", v.get_ref().display().to_string()),
            )),
            Some(v) => Ok(Some(v.into_inner())),
        }
    }

    /// The gid of `admin_group`. An unknown name is an error now rather than an admin group that
    /// silently matches nobody.
    fn resolve_group(&self, group: Spanned<GroupRef>) -> Result<u32, ConfigError> {
        let span = group.span();
        match group.into_inner() {
            GroupRef::Gid(gid) => Ok(gid),
            GroupRef::Name(name) => match nix::unistd::Group::from_name(&name) {
                Ok(Some(group)) => Ok(group.gid.as_raw()),
                Ok(None) => {
                    Err(self.error(span, "access.admin_group", format!("no group {name:?}")))
                }
                Err(e) => Err(self.error(
                    span,
                    "access.admin_group",
                    format!("cannot look up group {name:?}: {e}"),
                )),
            },
        }
    }

    /// `[control]`: every cap and timeout at least 1 (a cap of 0 would lock everyone out).
    fn control(&self, raw: RawControl) -> Result<Control, ConfigError> {
        let d = Control::default();
        Ok(Control {
            max_connections_per_user: at_least_1!(
                self,
                "control",
                raw,
                d,
                max_connections_per_user
            ),
            max_connections: at_least_1!(self, "control", raw, d, max_connections),
            max_watches_per_user: at_least_1!(self, "control", raw, d, max_watches_per_user),
            max_watches: at_least_1!(self, "control", raw, d, max_watches),
            handshake_timeout_ms: at_least_1!(self, "control", raw, d, handshake_timeout_ms),
            idle_timeout_ms: at_least_1!(self, "control", raw, d, idle_timeout_ms),
        })
    }

    fn filter(&self, level: Spanned<String>) -> Result<String, ConfigError> {
        match tracing_subscriber::EnvFilter::try_new(level.get_ref()) {
            Ok(_) => Ok(level.into_inner()),
            Err(e) => Err(self.error(level.span(), "log.level", format!("not a log filter: {e}"))),
        }
    }

    /// A listening address (`tcp.listen`, `metrics.listen`), which must be loopback.
    fn loopback(
        &self,
        listen: Spanned<String>,
        key: &str,
        example: &str,
    ) -> Result<SocketAddr, ConfigError> {
        loopback_addr(listen.get_ref(), example).map_err(|why| self.error(listen.span(), key, why))
    }

    /// `[tcp]`: nothing unless `listen` is set; then a loopback address, a private token file,
    /// and an explicit uid for a root daemon.
    fn tcp(&self, tcp: Option<Spanned<RawTcp>>, euid: u32) -> Result<Option<Tcp>, ConfigError> {
        let Some(tcp) = tcp else { return Ok(None) };
        let table = tcp.span();
        let tcp = tcp.into_inner();
        let Some(listen) = tcp.listen else { return Ok(None) };
        let listen = self.loopback(listen, "tcp.listen", "127.0.0.1:7781")?;
        let Some(token_file) = self.absolute(tcp.token_file.clone(), "tcp.token_file")? else {
            return Err(self.error(table, "tcp.token_file", "required when tcp.listen is set"));
        };
        let token = match Token::read_private_file(&token_file) {
            Ok(token) => token,
            Err(why) => {
                let span = tcp.token_file.as_ref().map_or(table, Spanned::span);
                return Err(self.error(span, "tcp.token_file", why));
            }
        };
        let uid = match (tcp.uid, euid) {
            (Some(uid), 0) => uid.into_inner(),
            (None, 0) => {
                return Err(self.error(
                    table,
                    "tcp.uid",
                    "required when bitsd runs as root, so that the token never grants root by accident",
                ));
            }
            (None, own) => own,
            (Some(uid), own) if *uid.get_ref() == own => own,
            (Some(uid), own) => {
                return Err(self.error(
                    uid.span(),
                    "tcp.uid",
                    format!(
                        "a per-user daemon serves only its own uid ({own}), not {}",
                        uid.get_ref()
                    ),
                ));
            }
        };
        Ok(Some(Tcp { listen, token_file, token, uid }))
    }
}

/// The dotted key whose key or value holds byte `offset` (the deepest one), e.g.
/// `["limits", "max_jobz"]`. Header tables (`[limits]`) span only their header, so every table is
/// searched, not only those whose span holds the offset.
fn key_path_at(table: &toml::de::DeTable<'_>, offset: usize) -> Option<Vec<String>> {
    for (key, value) in table.iter() {
        if let Some(inner) = value.get_ref().as_table()
            && let Some(mut path) = key_path_at(inner, offset)
        {
            path.insert(0, key.get_ref().to_string());
            return Some(path);
        }
        let holds = |span: Range<usize>| span.contains(&offset) || span.start == offset;
        if holds(key.span()) || holds(value.span()) {
            return Some(vec![key.get_ref().to_string()]);
        }
    }
    None
}

/// `text` as a loopback `IP:PORT` with a port, or why not (`example` shows the form). Shared by
/// the file's listening addresses and the flags that override them.
pub fn loopback_addr(text: &str, example: &str) -> Result<SocketAddr, String> {
    match text.parse::<SocketAddr>() {
        Ok(addr) if !addr.ip().is_loopback() => Err(format!(
            "{addr} is not a loopback address (127.0.0.0/8 or ::1); bitsd listens on loopback only"
        )),
        Ok(addr) if addr.port() == 0 => Err("must name a port (not 0)".to_string()),
        Ok(addr) => Ok(addr),
        Err(_) => Err(format!("{text:?} is not IP:PORT, e.g. \"{example}\"")),
    }
}

fn one_line(text: &str) -> String {
    text.trim().replace(['\n', '\r'], "; ")
}

#[cfg(test)]
mod tests;
