//! Compiles `proto/bits/v1/bits.proto` with protox (pure Rust), so the build needs no system `protoc`.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(["bits/v1/bits.proto"], [&root])?;
    std::fs::write(
        PathBuf::from(env::var("OUT_DIR")?).join("bits_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
