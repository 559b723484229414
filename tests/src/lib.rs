//! Test support for the bitsd end-to-end tests: the real daemon in a temp dir ([`daemon`]), a
//! private nginx ([`nginx`]), lighttpd and Apache ([`real_servers`]), the usual server + daemon + job setup ([`fixture`]), the checks on a
//! download from the fault server ([`hostile`]) and polling with a deadline ([`wait`]). The in-process HTTP servers
//! and test content are in `bits-testkit`, shared with the library crates' tests.

// This is test support code: a failed setup step should stop the test with its message, which is
// what unwrap/expect do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod daemon;
pub mod fixture;
pub mod helpers;
pub mod hostile;
pub mod mounts;
pub mod nginx;
pub mod real_servers;
pub mod users;
pub mod wait;

/// Panics with a clear message unless the effective user is root: a test that needs root fails
/// without it, it never passes silently (CI runs the tests as root).
pub fn require_root(what: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "{what} needs root; run the e2e tests as root, e.g. in the CI container"
    );
}
