//! Fuzz target `labels`: see `msloss_fuzz::labels`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msloss_fuzz::labels(data));
