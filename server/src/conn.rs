//! One client connection: non-blocking reads with file descriptors, message framing, the single
//! validation point before dispatch, and a buffered non-blocking writer.
//!
//! Reads are buffered until a whole message is present; file descriptors are attached to the
//! message that contains the last byte of the `recvmsg` that delivered them (Linux stops a
//! stream read right after the chunk that carries descriptors, and a sender attaches them to
//! some part of the message they belong to). Exactly `message_size` bytes are consumed per
//! message, so a refused message never desynchronises the stream.
//!
//! Framing checks close the connection (the stream cannot be trusted any more); everything else
//! is a per-message error reply. Replies are queued and written as the socket accepts them
//! (EPOLLOUT); while a lot of output is queued the connection stops reading, so a client that
//! does not read its replies cannot make the server buffer without bound.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::error::{RequestError, StreamError};
use crate::protocol::*;
use crate::server::Control;
use crate::session::Session;
use crate::sock;

/// Bytes asked for per `recvmsg`.
const READ_CHUNK: usize = 64 * 1024;
/// Most `recvmsg` calls per wakeup, so other event sources get their turn.
const READS_PER_WAKEUP: usize = 32;
/// Stop reading while more than this many reply bytes wait to be written.
const OUTPUT_HIGH_WATER: usize = 4 << 20;

/// The connection of the active client.
pub struct Connection {
    stream: UnixStream,
    session: Session,
    /// Received bytes not consumed yet; `inbuf[0]` is at stream offset `in_offset`.
    inbuf: Vec<u8>,
    in_offset: u64,
    /// Descriptors received, keyed by the stream offset of the last byte of their chunk.
    fds: Vec<(u64, Vec<OwnedFd>)>,
    /// Queued reply bytes; `outbuf[out_pos..]` is still to be written.
    outbuf: Vec<u8>,
    out_pos: usize,
    interest: EventSet,
    closed: bool,
    control: Rc<RefCell<Control>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.stream.as_raw_fd())
            .field("buffered_in", &self.inbuf.len())
            .field("buffered_out", &(self.outbuf.len() - self.out_pos))
            .finish()
    }
}

impl Connection {
    /// Wraps an accepted stream; the session holds the client's device.
    pub fn new(
        stream: UnixStream,
        session: Session,
        control: Rc<RefCell<Control>>,
    ) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Connection {
            stream,
            session,
            inbuf: Vec::new(),
            in_offset: 0,
            fds: Vec::new(),
            outbuf: Vec::new(),
            out_pos: 0,
            interest: EventSet::IN,
            closed: false,
            control,
        })
    }

    /// Reads what is available and handles every complete message.
    fn on_readable(&mut self) -> Result<(), StreamError> {
        for _ in 0..READS_PER_WAKEUP {
            if self.pending_output() > OUTPUT_HIGH_WATER {
                break;
            }
            let start = self.inbuf.len();
            self.inbuf.resize(start + READ_CHUNK, 0);
            let res = sock::recv_with_fds(self.stream.as_raw_fd(), &mut self.inbuf[start..]);
            let got = match res {
                Ok(r) => r,
                Err(e) => {
                    self.inbuf.truncate(start);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        return Ok(());
                    }
                    return Err(StreamError::Io(e));
                }
            };
            self.inbuf.truncate(start + got.len);
            if got.ctrunc {
                return Err(StreamError::ControlTruncated);
            }
            if got.len == 0 {
                return Err(if self.inbuf.is_empty() {
                    StreamError::Eof
                } else {
                    StreamError::Truncated {
                        have: self.inbuf.len(),
                    }
                });
            }
            if !got.fds.is_empty() {
                let last = self.in_offset + self.inbuf.len() as u64 - 1;
                self.fds.push((last, got.fds));
            }
            self.process_buffered()?;
        }
        Ok(())
    }

    /// Handles every complete message in `inbuf`.
    fn process_buffered(&mut self) -> Result<(), StreamError> {
        let mut off = 0usize;
        let result = loop {
            let avail = &self.inbuf[off..];
            let Some(hdr) = Header::parse(avail) else {
                break Ok(());
            };
            if let Err(e) = check_framing(&hdr) {
                break Err(e);
            }
            let size = hdr.message_size as usize;
            if avail.len() < size {
                break Ok(());
            }
            let end = self.in_offset + (off + size) as u64;
            let fds = take_fds(&mut self.fds, end);
            let payload = &self.inbuf[off + HEADER_SIZE..off + size];
            dispatch(&mut self.session, &mut self.outbuf, &hdr, payload, fds);
            off += size;
            if let Some(e) = self.session.take_close() {
                break Err(e);
            }
        };
        self.inbuf.drain(..off);
        self.in_offset += off as u64;
        result
    }

    /// Writes queued replies until done or the socket is full.
    fn flush(&mut self) -> Result<(), StreamError> {
        while self.out_pos < self.outbuf.len() {
            match sock::send(&self.stream, &self.outbuf[self.out_pos..]) {
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(StreamError::Io(e)),
            }
        }
        if self.out_pos == self.outbuf.len() {
            self.outbuf.clear();
            self.out_pos = 0;
        } else if self.out_pos > OUTPUT_HIGH_WATER {
            self.outbuf.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(())
    }

    fn pending_output(&self) -> usize {
        self.outbuf.len() - self.out_pos
    }

    fn wanted_interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.pending_output() <= OUTPUT_HIGH_WATER {
            set |= EventSet::IN;
        }
        if self.pending_output() > 0 {
            set |= EventSet::OUT;
        }
        set
    }

    fn close(&mut self, why: StreamError, ops: &mut EventOps) {
        match &why {
            StreamError::Eof => log::info!("client disconnected"),
            StreamError::Truncated { .. } | StreamError::Io(_) => {
                log::warn!("closing client connection: {why}")
            }
            _ => log::error!("closing client connection: {why}"),
        }
        // Best effort: deliver queued replies (e.g. the error reply to a bad VERSION).
        let _ = self.flush();
        if let Err(e) = ops.remove(Events::empty(&self.stream)) {
            log::warn!("removing the client socket from epoll: {e}");
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.fds.clear();
        self.closed = true;
        self.control.borrow_mut().connection_closed();
    }
}

impl MutEventSubscriber for Connection {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.closed {
            return;
        }
        let set = events.event_set();
        let mut result = Ok(());
        if set
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP)
        {
            result = self.on_readable();
        }
        // Write replies right away (the common case needs no EPOLLOUT round trip).
        if result.is_ok() {
            result = self.flush();
        }
        if let Err(e) = result {
            self.close(e, ops);
            return;
        }
        let want = self.wanted_interest();
        if want != self.interest {
            match ops.modify(Events::new(&self.stream, want)) {
                Ok(()) => self.interest = want,
                Err(e) => self.close(StreamError::Io(io::Error::other(e.to_string())), ops),
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.stream, self.interest)) {
            log::error!("cannot watch the client socket: {e}");
            self.closed = true;
            self.control.borrow_mut().connection_closed();
        }
    }
}

/// The header checks that decide whether the stream can still be trusted.
pub fn check_framing(hdr: &Header) -> Result<(), StreamError> {
    if (hdr.message_size as usize) < HEADER_SIZE {
        return Err(StreamError::SizeTooSmall(hdr.message_size));
    }
    if hdr.message_size > MAX_MESSAGE_SIZE {
        return Err(StreamError::SizeTooLarge {
            size: hdr.message_size,
            max: MAX_MESSAGE_SIZE,
        });
    }
    if hdr.flags & !FLAGS_KNOWN != 0 {
        return Err(StreamError::ReservedFlags(hdr.flags & !FLAGS_KNOWN));
    }
    match hdr.msg_type() {
        TYPE_COMMAND if hdr.flags & FLAG_ERROR != 0 => Err(StreamError::ErrorFlagOnCommand),
        TYPE_COMMAND | TYPE_REPLY => Ok(()),
        other => Err(StreamError::BadType(other)),
    }
}

/// Removes and returns the descriptors that arrived with bytes before stream offset `end`.
fn take_fds(fds: &mut Vec<(u64, Vec<OwnedFd>)>, end: u64) -> Vec<OwnedFd> {
    let mut taken = Vec::new();
    fds.retain_mut(|(pos, group)| {
        if *pos < end {
            taken.append(group);
            false
        } else {
            true
        }
    });
    taken
}

/// Validates the descriptor count, runs the handler and queues the reply (if one is wanted).
fn dispatch(
    session: &mut Session,
    out: &mut Vec<u8>,
    hdr: &Header,
    payload: &[u8],
    fds: Vec<OwnedFd>,
) {
    let cmd = hdr.cmd();
    log::trace!(
        "recv id {} {cmd} size {} flags {:#x} fds {}",
        hdr.id,
        hdr.message_size,
        hdr.flags,
        fds.len()
    );
    if hdr.msg_type() == TYPE_REPLY {
        // The server sends no requests, so no reply is expected; skip it (its fds are closed).
        log::warn!(
            "ignoring unexpected reply id {} for {cmd} ({} bytes)",
            hdr.id,
            hdr.message_size
        );
        return;
    }
    let max = cmd.max_fds().min(MAX_MSG_FDS);
    let result = if fds.len() > max {
        // Dropping `fds` closes them.
        Err(RequestError::TooManyFds {
            what: cmd.to_string(),
            got: fds.len(),
            max,
        })
    } else {
        session.handle(hdr, payload, fds)
    };
    match result {
        Ok(reply) if !hdr.no_reply() => out.extend_from_slice(&encode_reply(hdr, &reply)),
        Ok(_) => {}
        Err(e) if hdr.no_reply() => {
            log::warn!("posted {cmd} (id {}) failed, no reply sent: {e}", hdr.id)
        }
        Err(e) => {
            log::warn!(
                "{cmd} (id {}) refused with errno {}: {e}",
                hdr.id,
                e.errno()
            );
            out.extend_from_slice(&encode_error_reply(hdr, e.errno()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(size: u32, flags: u32) -> Header {
        Header {
            id: 1,
            command: 1,
            message_size: size,
            flags,
            error: 0,
        }
    }

    #[test]
    fn framing() {
        assert!(check_framing(&hdr(16, 0)).is_ok());
        assert!(check_framing(&hdr(16, FLAG_NO_REPLY)).is_ok());
        assert!(check_framing(&hdr(16, TYPE_REPLY | FLAG_ERROR)).is_ok());
        assert!(matches!(
            check_framing(&hdr(15, 0)),
            Err(StreamError::SizeTooSmall(15))
        ));
        assert!(matches!(
            check_framing(&hdr(MAX_MESSAGE_SIZE + 1, 0)),
            Err(StreamError::SizeTooLarge { .. })
        ));
        assert!(matches!(
            check_framing(&hdr(16, 2)),
            Err(StreamError::BadType(2))
        ));
        assert!(matches!(
            check_framing(&hdr(16, 0x40)),
            Err(StreamError::ReservedFlags(0x40))
        ));
        assert!(matches!(
            check_framing(&hdr(16, FLAG_ERROR)),
            Err(StreamError::ErrorFlagOnCommand)
        ));
    }

    #[test]
    fn fds_follow_their_message() {
        use std::os::fd::FromRawFd;
        let mk = || {
            // SAFETY: eventfd returns a fresh descriptor that we own.
            unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, 0)) }
        };
        let mut fds = vec![(47u64, vec![mk()]), (100u64, vec![mk(), mk()])];
        assert_eq!(take_fds(&mut fds, 32).len(), 0);
        assert_eq!(take_fds(&mut fds, 48).len(), 1);
        assert_eq!(take_fds(&mut fds, 200).len(), 2);
        assert!(fds.is_empty());
    }
}
