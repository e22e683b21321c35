//! The SSE decoder and the stream interceptor of each API (`tower_ccr::fuzzing::sse`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tower_ccr::fuzzing::sse(data));
