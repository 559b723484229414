//! Data-path benchmark (being written).
fn main() {}
