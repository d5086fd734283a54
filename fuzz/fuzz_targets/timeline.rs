//! libFuzzer entry point: [`ecb_fuzz::timeline`] on every input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ecb_fuzz::timeline(data));
