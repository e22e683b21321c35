//! Request rewriting for each API, from raw bytes and generated conversations (`tower_ccr::fuzzing::request`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tower_ccr::fuzzing::request(data));
