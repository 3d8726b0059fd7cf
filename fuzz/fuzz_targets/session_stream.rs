//! The session fed a raw byte stream, framed as the connection frames it (header, checks, exactly
//! `message_size` bytes): the format `faultline-server --record DIR` writes, so recorded QEMU
//! sessions seed it (`fuzz/seeds/session_stream/`). Descriptors are not part of the stream.
//!
//! Mutated message-aware (`mutator/`): payload fields by their layout, whole messages inserted,
//! copied, deleted, swapped and spliced from other inputs, sizes kept consistent.
//! `session_stream_plain` is the same target with libFuzzer's own byte mutator, for comparison.
#![no_main]

mod common;
mod mutator;
mod stream;

use libfuzzer_sys::{fuzz_crossover, fuzz_mutator, fuzz_target};

fuzz_target!(|data: &[u8]| stream::run(data));

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    mutator::mutate(data, size, max_size, seed)
});

fuzz_crossover!(|data1: &[u8], data2: &[u8], out: &mut [u8], seed: u32| {
    mutator::crossover(data1, data2, out, seed)
});
