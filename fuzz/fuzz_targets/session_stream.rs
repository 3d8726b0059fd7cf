//! The session fed a raw byte stream, framed as the connection frames it (header, checks, exactly
//! `message_size` bytes): the format `faultline-server --record DIR` writes, so recorded QEMU
//! sessions seed it (`fuzz/seeds/session_stream/`). Descriptors are not part of the stream.
#![no_main]

mod common;

use faultline_server::protocol::{Header, HEADER_SIZE};
use faultline_server::session::Session;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let factory = common::factory();
    let mut session = Session::new(&factory).expect("session");
    let mut rest = data;
    while let Some(hdr) = Header::parse(rest) {
        let size = hdr.message_size as usize;
        if size < HEADER_SIZE || size > rest.len() {
            // Too small is a framing error; too large waits for bytes that never come.
            return;
        }
        if !common::run_message(&mut session, &hdr, &rest[HEADER_SIZE..size], Vec::new()) {
            return;
        }
        rest = &rest[size..];
    }
});
