//! End-to-end tests: the real `bitsd` and `bitsctl` binaries (built by
//! `cargo build --workspace --bins`) against a private nginx and an instrumented in-process HTTP
//! server. Every test has its own temp dir, daemon and server, so they run in parallel.

// Test code: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod downloads; // whole-file and ranged downloads from nginx, via bitsctl and via gRPC
mod errors;
mod progress; // GetProgress and GetFilledFileRanges before, during and after a throttled download
mod restart; // SIGKILL and SIGTERM mid-download, clean restarts: state survives, nothing is fetched twice
mod support;
mod validators; // a remote file that changes mid-download restarts from zero // helpers shared by the tests: waiting for states, range-set checks, JSON lookups // BITS error codes through gRPC and bitsctl, and bitsctl's JSON output
