//! Fuzz target `args`: see `msloss_fuzz::args`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msloss_fuzz::args(data));
