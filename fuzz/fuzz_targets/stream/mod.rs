//! What the stream targets share: a byte stream run through the session, framed as the connection
//! frames it (header, checks, exactly `message_size` bytes).

use faultline_server::protocol::{Header, HEADER_SIZE};
use faultline_server::session::Session;

use crate::common;

/// Runs `data` as the messages of one connection, until the stream ends or would be closed.
pub fn run(data: &[u8]) {
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
}
