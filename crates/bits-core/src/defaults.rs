//! Where a daemon and its clients meet by default. Pure functions of the caller's identity and
//! environment, so bitsd and bitsctl cannot disagree.

use std::path::PathBuf;

/// The socket of the system daemon.
pub const SYSTEM_SOCKET: &str = "/run/bitsd/bitsd.sock";
/// The data directory of the system daemon.
pub const SYSTEM_DATA_DIR: &str = "/var/lib/bitsd";

/// `$XDG_RUNTIME_DIR/bitsd/bitsd.sock` for a user (falling back to `/run/user/UID`), or
/// [`SYSTEM_SOCKET`] for root.
///
/// With `XDG_RUNTIME_DIR` unset (cron, `su`, `sudo -u`, ssh without pam_systemd) both bitsd and
/// its clients use `/run/user/UID`, the directory logind makes for every session of the user:
/// a client there still finds the daemon that the user's systemd unit runs. Where no session
/// made it, bitsd says so and asks for `--socket` (see [`unset_runtime_dir`]) rather than pick a
/// place its clients would not look.
pub fn socket_path(euid: u32, xdg_runtime_dir: Option<&str>) -> PathBuf {
    if euid == 0 {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    let runtime = match xdg_runtime_dir {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(format!("/run/user/{euid}")),
    };
    runtime.join("bitsd").join("bitsd.sock")
}

/// The runtime directory a user's default socket falls back to, when `XDG_RUNTIME_DIR` is
/// unset or empty; `None` when it is set, or for root (whose socket is [`SYSTEM_SOCKET`]).
pub fn unset_runtime_dir(euid: u32, xdg_runtime_dir: Option<&str>) -> Option<PathBuf> {
    match xdg_runtime_dir {
        _ if euid == 0 => None,
        Some(dir) if !dir.is_empty() => None,
        _ => Some(PathBuf::from(format!("/run/user/{euid}"))),
    }
}

/// The socket a client of `euid` talks to by default: its own user daemon's when that socket
/// exists, else the system daemon's when that one exists, else its own (so the "not running"
/// error names the socket the user would start). Root always uses the system socket.
pub fn client_socket_path(
    euid: u32,
    xdg_runtime_dir: Option<&str>,
    exists: impl Fn(&std::path::Path) -> bool,
) -> PathBuf {
    let own = socket_path(euid, xdg_runtime_dir);
    if euid != 0 && !exists(&own) && exists(std::path::Path::new(SYSTEM_SOCKET)) {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    own
}

/// `$XDG_DATA_HOME/bitsd` (falling back to `$HOME/.local/share/bitsd`) for a user, or
/// [`SYSTEM_DATA_DIR`] for root. `None` when a user has neither variable set.
pub fn data_dir(euid: u32, xdg_data_home: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    if euid == 0 {
        return Some(PathBuf::from(SYSTEM_DATA_DIR));
    }
    match (xdg_data_home, home) {
        (Some(dir), _) if !dir.is_empty() => Some(PathBuf::from(dir).join("bitsd")),
        (_, Some(home)) if !home.is_empty() => Some(PathBuf::from(home).join(".local/share/bitsd")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_uses_system_paths_users_use_xdg() {
        assert_eq!(socket_path(0, Some("/run/user/0")), PathBuf::from(SYSTEM_SOCKET));
        assert_eq!(
            socket_path(1000, Some("/run/user/1000")),
            PathBuf::from("/run/user/1000/bitsd/bitsd.sock")
        );
        assert_eq!(socket_path(1000, None), PathBuf::from("/run/user/1000/bitsd/bitsd.sock"));
        let own = PathBuf::from("/run/user/1000/bitsd/bitsd.sock");
        let only_system = |p: &std::path::Path| p == std::path::Path::new(SYSTEM_SOCKET);
        let both = |_: &std::path::Path| true;
        let none = |_: &std::path::Path| false;
        assert_eq!(client_socket_path(1000, None, only_system), PathBuf::from(SYSTEM_SOCKET));
        assert_eq!(client_socket_path(1000, None, both), own, "the user's own daemon wins");
        assert_eq!(client_socket_path(1000, None, none), own);
        assert_eq!(client_socket_path(0, None, none), PathBuf::from(SYSTEM_SOCKET));
        assert_eq!(data_dir(0, None, None), Some(PathBuf::from(SYSTEM_DATA_DIR)));
        assert_eq!(data_dir(5, Some("/x"), Some("/h")), Some(PathBuf::from("/x/bitsd")));
        assert_eq!(data_dir(5, None, Some("/h")), Some(PathBuf::from("/h/.local/share/bitsd")));
        assert_eq!(data_dir(5, None, None), None);
    }

    #[test]
    fn daemon_and_clients_agree_when_xdg_runtime_dir_is_unset() {
        for unset in [None, Some("")] {
            let daemon = socket_path(1000, unset);
            assert_eq!(daemon, PathBuf::from("/run/user/1000/bitsd/bitsd.sock"));
            // The daemon is up (its socket exists) or not: a client looks where it serves.
            assert_eq!(client_socket_path(1000, unset, |p| p == daemon), daemon);
            assert_eq!(client_socket_path(1000, unset, |_| false), daemon);
            assert_eq!(unset_runtime_dir(1000, unset), Some(PathBuf::from("/run/user/1000")));
        }
        assert_eq!(unset_runtime_dir(1000, Some("/run/user/1000")), None);
        assert_eq!(unset_runtime_dir(0, None), None, "root uses the system socket");
    }
}
