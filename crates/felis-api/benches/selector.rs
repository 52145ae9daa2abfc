//! Selector benchmarks (stub).
fn main() {}
