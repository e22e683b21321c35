//! The non-streamed response handler of each API (`tower_ccr::fuzzing::response`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tower_ccr::fuzzing::response(data));
