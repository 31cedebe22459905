//! Fuzz target `npy`: see `msloss_fuzz::npy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msloss_fuzz::npy(data));
