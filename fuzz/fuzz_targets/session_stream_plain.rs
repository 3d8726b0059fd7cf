//! `session_stream` with libFuzzer's own byte-level mutator and crossover instead of the
//! message-aware ones: the baseline the mutator is measured against (`qemu/fuzz
//! session_stream_plain`).
#![no_main]

mod common;
mod stream;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stream::run(data));
