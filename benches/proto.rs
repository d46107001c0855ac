//! Protocol core benchmarks (filled in by the protocol-core work).
fn main() {}
