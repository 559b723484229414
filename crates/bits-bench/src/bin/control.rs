//! Control-plane benchmark (being written).
fn main() {}
