//! SIGINT/SIGTERM (clean shutdown) and SIGUSR1 (log device stats) through a `signalfd`.
//!
//! [`SignalFd::new`] blocks the signals in the calling thread, and so in every thread created
//! afterwards: call it from `main` before any other thread exists, and the signals are only ever
//! seen through the descriptor.

use std::cell::RefCell;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::server::Control;

/// The signals the server handles.
pub const HANDLED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1];

/// A non-blocking signalfd for [`HANDLED`].
#[derive(Debug)]
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks [`HANDLED`] in the calling thread and opens a signalfd for them.
    pub fn new() -> io::Result<SignalFd> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut set: libc::sigset_t = unsafe { mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut set) };
        for s in HANDLED {
            // SAFETY: as above; `s` is a valid signal number.
            unsafe { libc::sigaddset(&mut set, s) };
        }
        // SAFETY: `set` is initialised; the old mask is not needed (null).
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: -1 asks for a new descriptor; `set` is initialised.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SignalFd { fd })
    }

    /// Reads one pending signal number, `None` when there is none.
    fn read(&self) -> io::Result<Option<u32>> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { mem::zeroed() };
        let size = mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, which is `size` bytes long.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::from_mut(&mut info).cast(),
                size,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                io::ErrorKind::Interrupted => self.read(),
                _ => Err(e),
            };
        }
        if n as usize != size {
            return Err(io::Error::other("short read from signalfd"));
        }
        Ok(Some(info.ssi_signo))
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Event-loop subscriber for the signalfd.
#[derive(Debug)]
pub struct SignalHandler {
    fd: SignalFd,
    control: Rc<RefCell<Control>>,
}

impl SignalHandler {
    /// Handles the signals of `fd`.
    pub fn new(fd: SignalFd, control: Rc<RefCell<Control>>) -> Self {
        SignalHandler { fd, control }
    }
}

impl MutEventSubscriber for SignalHandler {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        loop {
            match self.fd.read() {
                Ok(Some(sig)) if sig == libc::SIGUSR1 as u32 => {
                    self.control.borrow().log_stats();
                }
                Ok(Some(sig)) => {
                    let name = if sig == libc::SIGINT as u32 {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    log::info!("{name} received, shutting down");
                    self.control.borrow_mut().request_shutdown(name);
                }
                Ok(None) => break,
                Err(e) => {
                    log::error!("signalfd: {e}");
                    break;
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch the signalfd: {e}");
            self.control
                .borrow_mut()
                .fail("signalfd registration failed".into());
        }
    }
}
