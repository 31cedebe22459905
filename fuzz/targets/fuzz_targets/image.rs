//! Fuzz target `image`: see `msloss_fuzz::image`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msloss_fuzz::image(data));
