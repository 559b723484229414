//! Who may talk to the daemon. Until per-user ownership lands, a daemon serves only callers with
//! its own uid: the socket is private (0600 in a 0700 directory), and even a caller who can reach
//! the socket is refused by its peer credentials.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use bits_tests::daemon::TestDaemon;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_socket_is_private_and_other_uids_are_refused() {
    let daemon = TestDaemon::start().await;
    let socket = daemon.socket();
    assert_eq!(mode(&socket), 0o600, "the socket is usable by its owner only");

    if !rustix::process::geteuid().is_root() {
        // Another uid cannot be impersonated without root; the file mode above is the guard.
        return;
    }
    // Open the path to everyone, as a careless operator might, and call as `nobody`: the peer
    // credentials still refuse the call.
    for dir in socket.ancestors().skip(1).take_while(|d| d.starts_with(daemon.dir())) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(daemon.bitsctl_path())
        .arg("--socket")
        .arg(&socket)
        .arg("list")
        .env_remove("BITSD_SOCKET")
        .output()
        .expect("setpriv (util-linux) runs bitsctl as nobody");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("E_ACCESSDENIED (0x80070005)"), "stderr: {stderr}");
    assert!(stderr.contains("uid 65534"), "the refusal names the caller: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one readable line: {stderr}");

    // The daemon's own uid is still served.
    let client = daemon.client().await;
    assert!(client.list_jobs().await.unwrap().is_empty());
}
