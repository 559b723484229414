//! The `bits.v1` gRPC API: the generated types and services, plus the one place where wire messages
//! and bits-core types are converted ([`convert`]) and where BITS errors become gRPC statuses and
//! back ([`status`]), and the TCP listener's bearer token ([`token`]). Both the daemon and the
//! client go through these, so they cannot disagree.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used)]
    tonic::include_proto!("bits.v1");
}

pub mod convert;
pub mod status;
pub mod token;

pub use convert::{FileInfo, JobInfo};

/// The encoded `FileDescriptorSet` of `bits/v1/bits.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("bits_descriptor");
