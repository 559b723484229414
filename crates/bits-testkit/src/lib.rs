//! Test support shared by every test binary of the workspace: one in-process HTTP file server
//! ([`serve`]) with two faces, the knobs the download tests watch ([`server`]) and the scripted
//! faults of the hostile-server and client tests ([`faults`]); the one check of FILE_RANGES_TRANSFERRED
//! events ([`notify`]); the one `Range` parser
//! ([`range`]), reproducible test content ([`data`]), a fake gRPC daemon with default stubs
//! (`grpc`, feature "grpc") and a raw HTTP/1.1 request for checking a server byte for byte
//! ([`raw`]).

// This is test support code: a failed setup step should stop the test with its message, which is
// what unwrap/expect do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod data;
pub mod faults;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod notify;
pub mod range;
pub mod raw;
pub mod serve;
pub mod server;
