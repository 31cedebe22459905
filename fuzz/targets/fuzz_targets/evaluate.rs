//! Fuzz target `evaluate`: see `msloss_fuzz::evaluate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msloss_fuzz::evaluate(data));
