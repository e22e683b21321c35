//! Marker parsing and rendering, ids, and searches (`tower_ccr::fuzzing::marker`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tower_ccr::fuzzing::marker(data));
