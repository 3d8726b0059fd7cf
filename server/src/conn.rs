//! One client connection: non-blocking reads with file descriptors, message framing, the single
//! validation point before dispatch, and a buffered non-blocking writer.
//!
//! Reads never cross a message boundary: first the 16-byte header, then exactly the rest of
//! `message_size`. File descriptors are delivered by the kernel with the first bytes read of the
//! `sendmsg` that carried them, so every descriptor that arrives while a message is being read
//! belongs to that message, whether the sender attached it to the header, to a later part, or to
//! several messages written at once (it then belongs to the first). Exactly `message_size` bytes
//! are consumed per message, so a refused message never desynchronises the stream.
//!
//! Framing checks close the connection (the stream cannot be trusted any more); everything else
//! is a per-message error reply.
//!
//! DMA_UNMAP replies only once the device no longer references the removed mapping (the spec's
//! rule). When a device snapshot still holds it, the reply is *deferred*: a short-lived drain
//! thread waits for the snapshots to go (each covers at most one 64 KiB access window) and signals
//! an eventfd the event loop watches; meanwhile the connection handles no further command, so
//! commands stay in order (it keeps reading replies to its own DMA_READ/DMA_WRITE requests, which
//! the accesses holding the mapping may be waiting for), and the socket thread keeps serving
//! signals.
//!
//! Server→client requests (`remote_dma.rs`) are queued by device threads and moved into the
//! output by the event loop (woken through the channel's eventfd), always ahead of the reply to
//! the command being handled; replies from the client are matched there by id.
//!
//! Replies are queued and written as the socket accepts them
//! (EPOLLOUT); while a lot of output is queued the connection stops reading, so a client that
//! does not read its replies cannot make the server buffer without bound.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::dma::Retired;
use crate::error::{RequestError, StreamError};
use crate::protocol::*;
use crate::record::Recorder;
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
    /// The bytes of the message being received (never more than one message).
    inbuf: Vec<u8>,
    /// Its header, once complete and validated.
    header: Option<Header>,
    /// Descriptors received with the message being received.
    fds: Vec<OwnedFd>,
    /// Queued reply bytes; `outbuf[out_pos..]` is still to be written.
    outbuf: Vec<u8>,
    out_pos: usize,
    interest: EventSet,
    closed: bool,
    control: Rc<RefCell<Control>>,
    /// `recvmsg` target, reused (zeroed once) so small messages cost only their own bytes.
    scratch: Box<[u8]>,
    /// Failed posted messages so far (their log lines are rate-limited).
    posted_failures: u64,
    /// Signalled by the drain thread when a deferred DMA_UNMAP's mappings are released.
    drain_evt: EventFd,
    /// The reply of a DMA_UNMAP waiting for its mappings' release (empty for a posted one).
    deferred: Option<Vec<u8>>,
    /// `--record`: every received message is written here.
    recorder: Option<Recorder>,
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
        let drain_evt = EventFd::new(EFD_NONBLOCK)?;
        Ok(Connection {
            stream,
            session,
            inbuf: Vec::new(),
            header: None,
            fds: Vec::new(),
            outbuf: Vec::new(),
            out_pos: 0,
            interest: EventSet::IN,
            closed: false,
            control,
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            posted_failures: 0,
            drain_evt,
            deferred: None,
            recorder: None,
        })
    }

    /// Records every message this connection receives.
    pub fn recording(mut self, recorder: Recorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Reads what is available and handles every complete message.
    fn on_readable(&mut self) -> Result<(), StreamError> {
        for _ in 0..READS_PER_WAKEUP {
            if self.pending_output() > OUTPUT_HIGH_WATER || self.process_complete()? {
                break;
            }
            // Read up to the end of the header, or of the message: never into the next one.
            let want = match &self.header {
                None => HEADER_SIZE - self.inbuf.len(),
                Some(h) => h.message_size as usize - self.inbuf.len(),
            }
            .min(READ_CHUNK);
            let got = match sock::recv_with_fds(self.stream.as_raw_fd(), &mut self.scratch[..want])
            {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(StreamError::Io(e)),
            };
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
            self.inbuf.extend_from_slice(&self.scratch[..got.len]);
            self.fds.extend(got.fds);
            if self.header.is_none() && self.inbuf.len() == HEADER_SIZE {
                let hdr = Header::parse(&self.inbuf)
                    .ok_or(StreamError::SizeTooSmall(self.inbuf.len() as u32))?;
                check_framing(&hdr)?;
                self.inbuf.reserve(hdr.message_size as usize - HEADER_SIZE);
                self.header = Some(hdr);
            }
            if self.process_complete()? {
                break;
            }
        }
        Ok(())
    }

    /// Whether a complete command is held back (a DMA_UNMAP reply is deferred).
    fn holding_command(&self) -> bool {
        self.deferred.is_some()
            && self.header.is_some_and(|h| {
                h.msg_type() == TYPE_COMMAND && self.inbuf.len() == h.message_size as usize
            })
    }

    /// Handles the message in `inbuf` if it is complete. Replies (to the server's DMA_READ and
    /// DMA_WRITE requests) are handled at once; a command waits while a DMA_UNMAP reply is
    /// deferred, so commands stay in order (returns true then). Replies keep being read
    /// meanwhile: a device access waiting for one may be what the deferred unmap waits for.
    fn process_complete(&mut self) -> Result<bool, StreamError> {
        let Some(hdr) = self.header else {
            return Ok(false);
        };
        if self.inbuf.len() != hdr.message_size as usize {
            return Ok(false);
        }
        if hdr.msg_type() == TYPE_COMMAND && self.deferred.is_some() {
            return Ok(true);
        }
        self.header = None;
        if let Some(r) = &mut self.recorder {
            r.record(&self.inbuf);
        }
        let fds = std::mem::take(&mut self.fds);
        if hdr.msg_type() == TYPE_REPLY {
            if !fds.is_empty() {
                log::warn!(
                    "reply id {} carried {} descriptors; closed",
                    hdr.id,
                    fds.len()
                );
            }
            drop(fds);
            self.session
                .remote()
                .complete(&hdr, &self.inbuf[HEADER_SIZE..]);
            self.inbuf.clear();
            return Ok(false);
        }
        let reply = dispatch(
            &mut self.session,
            &mut self.posted_failures,
            &hdr,
            &self.inbuf[HEADER_SIZE..],
            fds,
        );
        self.inbuf.clear();
        // Requests the handler queued (writes of the socket thread, e.g. records of jobs a reset
        // aborted) go out before its reply.
        self.take_requests();
        match self.session.take_retired() {
            Some(retired) if !retired.is_released() => {
                self.defer(reply.unwrap_or_default(), retired)
            }
            _ => {
                if let Some(r) = reply {
                    self.outbuf.extend_from_slice(&r);
                }
            }
        }
        if let Some(e) = self.session.take_close() {
            return Err(e);
        }
        Ok(false)
    }

    /// Moves the device's queued DMA_READ/DMA_WRITE requests to the output.
    fn take_requests(&mut self) {
        for m in self.session.remote().take_outbox() {
            self.outbuf.extend_from_slice(&m);
        }
    }

    /// Holds `reply` back until `retired` is released, which a drain thread reports through
    /// `drain_evt`. No further message is read meanwhile.
    fn defer(&mut self, reply: Vec<u8>, retired: Retired) {
        self.deferred = Some(reply);
        let evt = match self.drain_evt.try_clone() {
            Ok(e) => e,
            Err(e) => {
                log::warn!("DMA_UNMAP: cannot clone the drain eventfd ({e}); waiting inline");
                wait_released(&retired);
                self.finish_deferred();
                return;
            }
        };
        // Shared with the thread so that, should it fail to start, the mapping can be waited for
        // here (bounded: one access window).
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(retired)));
        let theirs = std::sync::Arc::clone(&slot);
        let spawned = std::thread::Builder::new()
            .name("faultline-dma-drain".into())
            .spawn(move || {
                let retired = theirs.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(retired) = retired {
                    wait_released(&retired);
                    // Drop the last references (and unmap) before telling the loop.
                    drop(retired);
                }
                if let Err(e) = evt.write(1) {
                    log::error!("DMA_UNMAP: cannot signal the drain eventfd: {e}");
                }
            });
        if let Err(e) = spawned {
            log::warn!("DMA_UNMAP: cannot start a drain thread ({e}); waiting inline");
            let retired = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(retired) = retired {
                wait_released(&retired);
            }
            self.finish_deferred();
        }
    }

    /// Queues the deferred reply and resumes reading.
    fn finish_deferred(&mut self) {
        if let Some(r) = self.deferred.take() {
            self.outbuf.extend_from_slice(&r);
        }
    }

    /// The drain eventfd fired.
    fn on_drained(&mut self) {
        match self.drain_evt.read() {
            Ok(_) => self.finish_deferred(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => log::warn!("reading the drain eventfd: {e}"),
        }
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
        if self.pending_output() <= OUTPUT_HIGH_WATER && !self.holding_command() {
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
        if let Err(e) = ops.remove(Events::empty(&self.drain_evt)) {
            log::warn!("removing the drain eventfd from epoll: {e}");
        }
        if let Err(e) = ops.remove(Events::empty_raw(self.session.remote().wake_fd())) {
            log::warn!("removing the remote DMA eventfd from epoll: {e}");
        }
        // Device threads waiting for a reply fail now rather than at their timeout.
        self.session.remote().close();
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
        if events.fd() == self.drain_evt.as_raw_fd() {
            self.on_drained();
            // Messages may have arrived meanwhile.
            result = self.on_readable();
        } else if events.fd() == self.session.remote().wake_fd() {
            self.session.remote().ack_wake();
            self.take_requests();
        } else if set
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
        let added = ops
            .add(Events::new(&self.stream, self.interest))
            .and_then(|()| ops.add(Events::new(&self.drain_evt, EventSet::IN)))
            .and_then(|()| {
                ops.add(Events::new_raw(
                    self.session.remote().wake_fd(),
                    EventSet::IN,
                ))
            });
        if let Err(e) = added {
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

/// Waits until no device snapshot references `retired` any more. Bounded: a snapshot lives for
/// one access window (at most 64 KiB moved) or one record or fault-entry write.
fn wait_released(retired: &Retired) {
    let start = Instant::now();
    let mut pause = Duration::from_micros(10);
    while !retired.is_released() {
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(1));
    }
    log::debug!(
        "DMA_UNMAP: old mapping released after {:?}",
        start.elapsed()
    );
}

/// Validates the descriptor count and runs the handler; returns the encoded reply, if one is
/// wanted.
fn dispatch(
    session: &mut Session,
    posted_failures: &mut u64,
    hdr: &Header,
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> Option<Vec<u8>> {
    let cmd = hdr.cmd();
    log::trace!(
        "recv id {} {cmd} size {} flags {:#x} fds {}",
        hdr.id,
        hdr.message_size,
        hdr.flags,
        fds.len()
    );
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
        Ok(reply) if !hdr.no_reply() => Some(encode_reply(hdr, &reply)),
        Ok(_) => None,
        Err(e) if hdr.no_reply() => {
            // A guest can post failing writes in a loop: log the first ones, then every 1000th.
            *posted_failures += 1;
            let n = *posted_failures;
            if n <= 10 || n.is_power_of_two() || n % 1000 == 0 {
                log::warn!(
                    "posted {cmd} (id {}) failed, no reply sent: {e} ({n} posted failures so far)",
                    hdr.id
                );
            }
            None
        }
        Err(e) => {
            log::warn!(
                "{cmd} (id {}) refused with errno {}: {e}",
                hdr.id,
                e.errno()
            );
            Some(encode_error_reply(hdr, e.errno()))
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
}
