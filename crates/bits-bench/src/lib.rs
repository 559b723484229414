//! Shared pieces of the benchmarks (process measurement, tables, statistics). The binaries are in
//! `src/bin`: `download` (data path, bitsd against curl and aria2c) and `control` (gRPC latency and
//! scale with many jobs).

pub mod measure;
pub mod table;
