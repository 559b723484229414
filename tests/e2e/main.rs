//! End-to-end tests: the real `bitsd` and `bitsctl` binaries (built by
//! `cargo build --workspace --bins`) against a private nginx and an instrumented in-process HTTP
//! server. Every test has its own temp dir, daemon and server, so they run in parallel.

// Test code: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Who may use a per-user daemon: a private socket and a peer-uid check.
mod access;
// SIGKILL at random moments, 25+ times: files identical, refetch within a sync window per worker per crash.
mod crash_loop;
// Expected SHA-256 digests: checked from the disk, a mismatch is an error and a refetch.
mod checksums;
// bitsctl's commands for every RPC against the real daemon: set, set-headers, add-set, reset,
// monitor, prefixes of job ids, JSON errors.
mod commands;
// Complete and Cancel: partial completion, a temp file that vanished, cleanup.
mod complete;
// The control socket under a hostile local user: timeouts, fd exhaustion, per-user caps.
mod control;
// Full disk (a tmpfs the test mounts) and start-up reconciliation of the store with the disk.
mod durability;
// bitsd extensions: segmented downloads and several files at once.
mod extensions;
// `bitsctl download`: several files, LIST, header file, signals, --detach, a daemon restart.
mod download_cmd;
// Whole-file and ranged downloads from nginx, via bitsctl and via gRPC.
mod downloads;
// A FOREGROUND file from a server without range support, interrupted: restarted from byte 0.
mod no_ranges;
// BITS error codes through gRPC and bitsctl, and bitsctl's JSON output.
mod errors;
// SetNotifyCmdLine: the program runs as the job's owner, per the notify flags.
mod notify_cmd;
// Power cuts (a FUSE file system that forgets what was not fsynced), 100+ per run: nothing
// acknowledged is lost.
mod power_cut;
// A root daemon shared by several users: ownership, admins, file access as the owner, symlinks.
mod ownership;
// GetProgress and GetFilledFileRanges before, during and after a throttled download.
mod progress;
// The real Python grpcio (default options): the docs' example, every :authority, Health and
// reflection on the socket and over TCP.
mod python;
// Start-up refusals: a data directory in use, no XDG_RUNTIME_DIR and no session.
mod startup;
// A redirect to a signed URL that expires: the remote name is followed afresh once per failure.
mod redirects_expiry;
// SIGKILL and SIGTERM mid-download, clean restarts: state survives, nothing is fetched twice.
mod restart;
// Servers nobody here wrote: lighttpd's 10 parts, Apache's HEAD without a size and gzip label,
// a HEAD refused.
mod real_servers;
// Hostile servers: every fault of the fault-injecting server and the state + error it leads to.
mod faults;
// Daemon-wide numbers: GetStats, `bitsctl stats` and the Prometheus endpoint.
mod stats;
// Store safety: unknown schema, damaged or deleted store, corrupt record, full store disk,
// SIGTERM keeps progress.
mod store_safety;
// systemd: sd_notify readiness, status, watchdog and stopping; the unit files verify.
mod systemd;
// A remote file that changes mid-download restarts from zero.
mod validators;

/// A loopback port nobody listens on right now (the daemon binds it a moment later).
fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}
