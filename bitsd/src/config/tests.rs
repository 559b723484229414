//! The configuration file: defaults, every section, and an error naming file, line and key for
//! each way a file can be wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::*;

const FILE: &str = "/etc/bitsd/bitsd.toml";
const USER: u32 = 1000;

fn ok(text: &str) -> Config {
    parse(Path::new(FILE), text, USER).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> String {
    err_as(text, USER)
}

/// The error for `text`, which must begin `FILE:` then `start` (the line, the key and the first
/// words of why); the whole of it, for further checks.
fn err_starting(text: &str, start: &str) -> String {
    let e = err(text);
    assert!(e.starts_with(&format!("{FILE}:{start}")), "{e}");
    e
}

fn err_as(text: &str, euid: u32) -> String {
    match parse(Path::new(FILE), text, euid) {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(e) => {
            let e = e.to_string();
            assert!(!e.contains('\n'), "one line: {e}");
            e
        }
    }
}

/// A token file with `mode` in a fresh temp dir (kept alive by the returned guard).
fn token_file(contents: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tcp.token");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, path)
}

fn tcp_section(listen: &str, token: &Path, extra: &str) -> String {
    format!("[tcp]\nlisten = {listen:?}\ntoken_file = {:?}\n{extra}", token.display().to_string())
}

#[test]
fn an_empty_file_means_every_default() {
    let config = ok("");
    assert_eq!(config.origin, Origin::File(PathBuf::from(FILE)));
    assert_eq!(config.socket, None);
    assert_eq!(config.data_dir, None);
    assert_eq!(config.keep_awake_us, 150);
    assert_eq!(config.limits.max_jobs_per_user, 60);
    assert_eq!(config.limits.max_jobs_per_machine, 300);
    assert_eq!(config.control.max_connections_per_user, 64);
    assert_eq!(config.control.max_connections, 1024);
    assert_eq!(config.control.max_watches_per_user, 256);
    assert_eq!(config.control.max_watches, 2048);
    assert_eq!(config.control.handshake_timeout_ms, 10_000);
    assert_eq!(config.control.idle_timeout_ms, 600_000);
    assert_eq!(config.transfer.retry_delay_secs, 600);
    assert_eq!(config.transfer.no_progress_timeout_secs, 1_209_600);
    assert_eq!(config.transfer.idle_timeout_ms, 60_000);
    assert_eq!(config.transfer.connect_timeout_ms, 30_000);
    assert_eq!(config.transfer.sync_bytes, 16_777_216);
    assert_eq!(config.transfer.sync_interval_ms, 1000);
    assert_eq!(config.admins.uids, vec![0]);
    assert_eq!(config.admins.gids, Vec::<u32>::new());
    assert_eq!(config.tcp, None);
    assert_eq!(config.metrics, None, "no metrics endpoint unless asked for");
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.log.level, "info");
    // The same defaults as when there is no file at all.
    let missing = Config::defaults(Origin::NoDefaultPath);
    assert_eq!(Config { origin: Origin::NoDefaultPath, ..config }, missing);
}

#[test]
fn default_file_locations() {
    assert_eq!(default_path(0, Some("/x"), Some("/root")), Some(PathBuf::from(SYSTEM_CONFIG)));
    assert_eq!(
        default_path(1000, Some("/home/u/.cfg"), Some("/home/u")),
        Some(PathBuf::from("/home/u/.cfg/bitsd/bitsd.toml"))
    );
    assert_eq!(
        default_path(1000, Some(""), Some("/home/u")),
        Some(PathBuf::from("/home/u/.config/bitsd/bitsd.toml"))
    );
    assert_eq!(
        default_path(1000, None, Some("/home/u")),
        Some(PathBuf::from("/home/u/.config/bitsd/bitsd.toml"))
    );
    assert_eq!(default_path(1000, None, None), None);
}

#[test]
fn a_missing_default_file_means_defaults_but_a_missing_named_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bitsd.toml");
    let config = load_file(&path, false, USER).unwrap();
    assert_eq!(config, Config::defaults(Origin::Missing(path.clone())));
    assert_eq!(
        config.origin.to_string(),
        format!("no config file at {}; using defaults", path.display())
    );

    let e = load_file(&path, true, USER).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: cannot read: ", path.display())), "{e}");
    assert!(e.contains("No such file"), "{e}");

    std::fs::write(&path, "[limits]\nmax_jobs_per_user = 7\n").unwrap();
    let config = load_file(&path, true, USER).unwrap();
    assert_eq!(config.limits.max_jobs_per_user, 7);
    assert_eq!(config.origin.to_string(), path.display().to_string());
}

#[test]
fn every_section_is_read() {
    let (_dir, token) = token_file("  s3cret-token\n", 0o600);
    let text = format!(
        r#"
socket = "/run/b/b.sock"
data_dir = "/srv/bitsd"
keep_awake_us = 7

[limits]
max_jobs_per_user = 5
max_jobs_per_machine = 50

[control]
max_connections_per_user = 11
max_connections = 12
max_watches_per_user = 13
max_watches = 14
handshake_timeout_ms = 15
idle_timeout_ms = 16

[transfer]
retry_delay_secs = 2
no_progress_timeout_secs = 0
idle_timeout_ms = 3
connect_timeout_ms = 4
sync_bytes = 5
sync_interval_ms = 6

[access]
admin_uids = [0, 1001]
admin_group = 4321

{}
[log]
format = "json"
level = "warn,bitsd=debug"
"#,
        tcp_section("127.0.0.1:7781", &token, "")
    );
    let config = ok(&text);
    assert_eq!(config.socket, Some(PathBuf::from("/run/b/b.sock")));
    assert_eq!(config.data_dir, Some(PathBuf::from("/srv/bitsd")));
    assert_eq!(config.keep_awake_us, 7);
    assert_eq!(config.limits, Limits { max_jobs_per_user: 5, max_jobs_per_machine: 50 });
    assert_eq!(
        config.control,
        Control {
            max_connections_per_user: 11,
            max_connections: 12,
            max_watches_per_user: 13,
            max_watches: 14,
            handshake_timeout_ms: 15,
            idle_timeout_ms: 16,
        }
    );
    assert_eq!(
        config.transfer,
        Transfer {
            retry_delay_secs: 2,
            no_progress_timeout_secs: 0,
            idle_timeout_ms: 3,
            connect_timeout_ms: 4,
            sync_bytes: 5,
            sync_interval_ms: 6,
        }
    );
    assert_eq!(config.admins, Admins { uids: vec![0, 1001], gids: vec![4321] });
    let tcp = config.tcp.unwrap();
    assert_eq!(tcp.listen, "127.0.0.1:7781".parse::<SocketAddr>().unwrap());
    assert_eq!(tcp.token_file, token);
    assert_eq!(tcp.token, Token::parse("s3cret-token").unwrap(), "trimmed");
    assert_eq!(tcp.uid, USER, "a user daemon's TCP callers act as its own uid");
    assert_eq!(config.log, Log { format: LogFormat::Json, level: "warn,bitsd=debug".into() });
}

#[test]
fn dotted_keys_and_inline_tables_are_the_same_settings() {
    let config = ok("limits.max_jobs_per_user = 3\ntransfer = { sync_bytes = 9 }\n");
    assert_eq!(config.limits.max_jobs_per_user, 3);
    assert_eq!(config.transfer.sync_bytes, 9);
}

#[test]
fn an_empty_admin_list_means_no_admin_uids() {
    assert_eq!(ok("[access]\nadmin_uids = []\n").admins.uids, Vec::<u32>::new());
}

#[test]
fn unknown_keys_name_file_line_key_and_table() {
    assert_eq!(
        err("socket = \"/s\"\nsockets = \"/t\"\n"),
        format!(
            "{FILE}:2: unknown key \"sockets\" at the top level (expected one of socket, data_dir, keep_awake_us, limits, control, transfer, access, tcp, metrics, log)"
        )
    );
    let e = err_starting(
        "# comment\n\n[limits]\nmax_jobs_per_user = 1\nmax_jobz_per_user = 2\n",
        "5: unknown key \"max_jobz_per_user\" in [limits] (",
    );
    assert!(e.contains("max_jobs_per_machine"), "the known keys are listed: {e}");
    err_starting(
        "[tcp]\nlisten = \"127.0.0.1:1\"\n\n[log]\nlevel = \"info\"\ncolour = true\n",
        "6: unknown key \"colour\" in [log]",
    );
    // The same in a dotted key and an inline table.
    err_starting("\ntransfer.sync_byte = 1\n", "2: unknown key \"sync_byte\" in [transfer]");
    err_starting("access = { admin_uid = [1] }\n", "1: unknown key \"admin_uid\" in [access]");
    // A table bitsd does not know.
    err_starting("[limit]\nmax_jobs_per_user = 1\n", "1: unknown key \"limit\" at the top level");
}

#[test]
fn values_of_the_wrong_type_name_the_key() {
    assert_eq!(
        err("[transfer]\nsync_bytes = \"16M\"\n"),
        format!("{FILE}:2: transfer.sync_bytes: invalid type: string \"16M\", expected u64")
    );
    assert_eq!(
        err("\n\n[limits]\nmax_jobs_per_user = -1\n"),
        format!("{FILE}:4: limits.max_jobs_per_user: invalid value: integer `-1`, expected usize")
    );
    err_starting(
        "[access]\nadmin_uids = [0, \"bob\"]\n",
        "2: access.admin_uids: invalid type: string",
    );
    let e = err_starting(
        "[access]\nadmin_group = true\n",
        "2: access.admin_group: invalid type: boolean `true`",
    );
    assert!(e.contains("a group name or a numeric gid"), "{e}");
    err_starting("[log]\nformat = \"xml\"\n", "2: log.format: unknown variant `xml`");
    err_starting("socket = 5\n", "1: socket: invalid type: integer `5`");
    assert_eq!(
        err("limits = 3\n"),
        format!("{FILE}:1: limits: invalid type: integer `3`, expected a [limits] table")
    );
    err_starting("[tcp]\nuid = 1.5\n", "2: tcp.uid: invalid type: floating point");
}

#[test]
fn broken_toml_names_the_line() {
    err_starting("[limits]\nmax_jobs_per_user = \n", "2: invalid TOML: ");
    assert_eq!(
        err("[limits]\nmax_jobs_per_user = 1\nmax_jobs_per_user = 2\n"),
        format!("{FILE}:3: invalid TOML: duplicate key \"max_jobs_per_user\"")
    );
}

#[test]
fn values_out_of_range_name_file_line_and_key() {
    assert_eq!(
        err("[transfer]\n\n\nsync_bytes = 0\n"),
        format!("{FILE}:4: transfer.sync_bytes: must be at least 1")
    );
    for key in ["sync_interval_ms", "idle_timeout_ms", "connect_timeout_ms", "retry_delay_secs"] {
        assert_eq!(
            err(&format!("[transfer]\n{key} = 0\n")),
            format!("{FILE}:2: transfer.{key}: must be at least 1")
        );
    }
    for key in [
        "max_connections_per_user",
        "max_connections",
        "max_watches_per_user",
        "max_watches",
        "handshake_timeout_ms",
        "idle_timeout_ms",
    ] {
        assert_eq!(
            err(&format!("[control]\n{key} = 0\n")),
            format!("{FILE}:2: control.{key}: must be at least 1")
        );
    }
    assert_eq!(
        err("data_dir = \"var/lib/bitsd\"\n"),
        format!("{FILE}:1: data_dir: must be an absolute path, not \"var/lib/bitsd\"")
    );
    assert_eq!(
        err("\nsocket = \"\"\n"),
        format!("{FILE}:2: socket: must be an absolute path, not \"\"")
    );
}

#[test]
fn admin_group_by_name_or_gid_and_unknown_names_are_errors() {
    // Root's group is 0 in every user database.
    assert_eq!(ok("[access]\nadmin_group = \"root\"\n").admins.gids, vec![0]);
    assert_eq!(ok("[access]\nadmin_group = 4321\n").admins.gids, vec![4321]);
    assert_eq!(ok("[access]\nadmin_group = \"4321\"\n").admins.gids, vec![4321]);
    assert_eq!(
        err("[access]\nadmin_uids = [0]\nadmin_group = \"no-such-group-bitsd\"\n"),
        format!("{FILE}:3: access.admin_group: no group \"no-such-group-bitsd\"")
    );
    err_starting("[access]\nadmin_group = -5\n", "2: access.admin_group: -5 is not a gid");
}

#[test]
fn log_level_must_be_a_filter() {
    assert_eq!(ok("[log]\nlevel = \"debug\"\n").log.level, "debug");
    err_starting("[log]\nlevel = \"bitsd=loud\"\n", "2: log.level: not a log filter");
}

#[test]
fn tcp_listens_on_loopback_only() {
    let (_dir, token) = token_file("t0ken", 0o600);
    for good in ["127.0.0.1:7781", "127.1.2.3:80", "[::1]:7781"] {
        let tcp = ok(&tcp_section(good, &token, "")).tcp.unwrap();
        assert_eq!(tcp.listen, good.parse::<SocketAddr>().unwrap());
    }
    for bad in ["0.0.0.0:7781", "192.168.1.10:7781", "[::]:7781", "[::ffff:127.0.0.1]:7781"] {
        let e = err_starting(&tcp_section(bad, &token, ""), "2: tcp.listen: ");
        assert!(e.contains("is not a loopback address"), "{e}");
    }
    err_starting(
        &tcp_section("localhost:7781", &token, ""),
        "2: tcp.listen: \"localhost:7781\" is not IP:PORT",
    );
    let e = err(&tcp_section("127.0.0.1:0", &token, ""));
    assert_eq!(e, format!("{FILE}:2: tcp.listen: must name a port (not 0)"));
}

#[test]
fn metrics_listen_on_loopback_only_like_tcp() {
    for good in ["127.0.0.1:9781", "[::1]:9781"] {
        let config = ok(&format!("[metrics]\nlisten = {good:?}\n"));
        assert_eq!(config.metrics, Some(good.parse::<SocketAddr>().unwrap()));
    }
    assert_eq!(
        err("[metrics]\nlisten = \"0.0.0.0:9781\"\n"),
        format!(
            "{FILE}:2: metrics.listen: 0.0.0.0:9781 is not a loopback address (127.0.0.0/8 or ::1); bitsd listens on loopback only"
        )
    );
    assert_eq!(
        err("[metrics]\nlisten = \"localhost\"\n"),
        format!("{FILE}:2: metrics.listen: \"localhost\" is not IP:PORT, e.g. \"127.0.0.1:9781\"")
    );
    assert_eq!(
        err("[metrics]\nlisten = \"127.0.0.1:0\"\n"),
        format!("{FILE}:2: metrics.listen: must name a port (not 0)")
    );
    assert_eq!(
        err("[metrics]\nlisten = \"127.0.0.1:9781\"\npath = \"/m\"\n"),
        format!("{FILE}:3: unknown key \"path\" in [metrics] (expected listen)")
    );
    assert_eq!(ok("[metrics]\n").metrics, None, "a table without listen is off");
}

#[test]
fn tcp_without_listen_is_off() {
    // Commenting out `listen` turns the listener off; the other keys may stay.
    let config = ok("[tcp]\n# listen = \"127.0.0.1:7781\"\ntoken_file = \"/nonexistent\"\n");
    assert_eq!(config.tcp, None);
}

#[test]
fn tcp_needs_a_token_file() {
    assert_eq!(
        err("\n[tcp]\nlisten = \"127.0.0.1:7781\"\n"),
        format!("{FILE}:2: tcp.token_file: required when tcp.listen is set")
    );
    err_starting(
        "[tcp]\nlisten = \"127.0.0.1:7781\"\ntoken_file = \"/nonexistent/tcp.token\"\n",
        "3: tcp.token_file: cannot read /nonexistent/tcp.token: No such file",
    );
    err_starting(
        "[tcp]\nlisten = \"127.0.0.1:7781\"\ntoken_file = \"tcp.token\"\n",
        "3: tcp.token_file: must be an absolute path",
    );
}

#[test]
fn a_token_file_others_can_read_or_write_is_refused() {
    for mode in [0o644, 0o640, 0o604, 0o602, 0o620] {
        let (_dir, token) = token_file("t0ken", mode);
        let e = err(&tcp_section("127.0.0.1:7781", &token, ""));
        assert_eq!(
            e,
            format!(
                "{FILE}:3: tcp.token_file: {} is readable or writable by group or others (mode {mode:04o}); chmod 600 it",
                token.display()
            )
        );
    }
    for mode in [0o600, 0o400] {
        let (_dir, token) = token_file("t0ken", mode);
        assert!(ok(&tcp_section("127.0.0.1:7781", &token, "")).tcp.is_some());
    }
}

#[test]
fn a_token_must_be_non_empty_header_text() {
    let (_dir, token) = token_file(" \n\t\n", 0o600);
    let e = err(&tcp_section("127.0.0.1:7781", &token, ""));
    assert_eq!(e, format!("{FILE}:3: tcp.token_file: {} is empty", token.display()));
    let (_dir, token) = token_file("two words", 0o600);
    let e = err(&tcp_section("127.0.0.1:7781", &token, ""));
    assert!(e.contains("printable ASCII without spaces"), "{e}");
}

#[test]
fn a_root_daemon_must_name_the_tcp_uid() {
    let (_dir, token) = token_file("t0ken", 0o600);
    let without = tcp_section("127.0.0.1:7781", &token, "");
    assert_eq!(
        err_as(&format!("# system daemon\n{without}"), 0),
        format!(
            "{FILE}:2: tcp.uid: required when bitsd runs as root, so that the token never grants root by accident"
        )
    );
    let with = tcp_section("127.0.0.1:7781", &token, "uid = 1000\n");
    let tcp = parse(Path::new(FILE), &with, 0).unwrap().tcp.unwrap();
    assert_eq!(tcp.uid, 1000);
    // Root may be named, but only on purpose.
    let root = tcp_section("127.0.0.1:7781", &token, "uid = 0\n");
    assert_eq!(parse(Path::new(FILE), &root, 0).unwrap().tcp.unwrap().uid, 0);
}

#[test]
fn a_user_daemon_serves_tcp_as_its_own_uid_only() {
    let (_dir, token) = token_file("t0ken", 0o600);
    let same = tcp_section("127.0.0.1:7781", &token, "uid = 1000\n");
    assert_eq!(ok(&same).tcp.unwrap().uid, 1000);
    let other = tcp_section("127.0.0.1:7781", &token, "uid = 1001\n");
    assert_eq!(
        err(&other),
        format!("{FILE}:4: tcp.uid: a per-user daemon serves only its own uid (1000), not 1001")
    );
}

#[test]
fn the_token_never_shows_in_debug_output() {
    let (_dir, token) = token_file("very-secret-token", 0o600);
    let config = ok(&tcp_section("127.0.0.1:7781", &token, ""));
    let debug = format!("{config:?}");
    assert!(!debug.contains("very-secret-token"), "{debug}");
    assert!(debug.contains("Token(<redacted>)"), "{debug}");
}
