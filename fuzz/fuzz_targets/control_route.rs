//! libFuzzer entry point: [`ecb_fuzz::control_route`] on every input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ecb_fuzz::control_route(data));
