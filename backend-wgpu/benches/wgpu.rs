//! Benches of the wgpu backend (to come).

fn main() {}
