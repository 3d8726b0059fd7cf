//! The listening socket: creation (with stale-socket handling), removal on exit, and the
//! subscriber that accepts clients.

use std::cell::RefCell;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::server::Control;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process accepts connections on the path.
    #[error("{0}: already in use (a server is listening on it)")]
    InUse(PathBuf),
    /// The path exists and is not a socket; it is left alone.
    #[error("{0}: exists and is not a socket")]
    NotASocket(PathBuf),
    /// The inherited descriptor is not a listening AF_UNIX stream socket.
    #[error("--fd {0}: not a listening UNIX stream socket")]
    NotListening(RawFd),
    /// A file system or socket call failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

/// The bound socket. Dropping it removes the socket file, if it is still the one created here
/// (an inherited socket's file is its creator's business).
#[derive(Debug)]
pub struct BoundSocket {
    /// The listening socket (non-blocking).
    pub listener: UnixListener,
    path: PathBuf,
    dev_ino: Option<(u64, u64)>,
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            std::ptr::from_mut(&mut v).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

impl BoundSocket {
    /// Binds `path`. An existing socket file is replaced only if nothing accepts connections on
    /// it (a stale file left by a crashed server); a live one is an error.
    pub fn bind(path: &Path) -> Result<BoundSocket, ListenError> {
        let io_err = |what, source| ListenError::Io {
            path: path.to_path_buf(),
            what,
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                if !meta.file_type().is_socket() {
                    return Err(ListenError::NotASocket(path.to_path_buf()));
                }
                match UnixStream::connect(path) {
                    Ok(_) => return Err(ListenError::InUse(path.to_path_buf())),
                    Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                        log::info!("{}: removing stale socket", path.display());
                        std::fs::remove_file(path)
                            .map_err(|e| io_err("removing stale socket", e))?;
                    }
                    Err(e) => return Err(io_err("probing existing socket", e)),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("stat", e)),
        }
        let listener = UnixListener::bind(path).map_err(|e| io_err("bind", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io_err("set_nonblocking", e))?;
        let dev_ino = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(BoundSocket {
            listener,
            path: path.to_path_buf(),
            dev_ino,
        })
    }

    /// Takes over an inherited listening socket (`--fd`, the vfio-user backend convention).
    pub fn from_fd(fd: RawFd) -> Result<BoundSocket, ListenError> {
        let listening = sockopt(fd, libc::SO_DOMAIN) == Some(libc::AF_UNIX)
            && sockopt(fd, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
            && sockopt(fd, libc::SO_ACCEPTCONN) == Some(1);
        if !listening {
            return Err(ListenError::NotListening(fd));
        }
        // SAFETY: the descriptor was handed to this process to own (--fd) and was just checked
        // to be an open listening socket; nothing else in the process uses it.
        let listener = UnixListener::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let path = PathBuf::from(format!("fd:{fd}"));
        listener
            .set_nonblocking(true)
            .map_err(|source| ListenError::Io {
                path: path.clone(),
                what: "set_nonblocking",
                source,
            })?;
        Ok(BoundSocket {
            listener,
            path,
            dev_ino: None,
        })
    }

    /// The socket path (`fd:N` for an inherited socket).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if self.dev_ino.is_none() {
            return;
        }
        let ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.dev_ino {
            match std::fs::remove_file(&self.path) {
                Ok(()) => log::info!("{}: socket removed", self.path.display()),
                Err(e) => log::warn!("{}: cannot remove socket: {e}", self.path.display()),
            }
        }
    }
}

/// Accepts clients and hands them to the event loop through [`Control`].
#[derive(Debug)]
pub struct Acceptor {
    listener: UnixListener,
    control: Rc<RefCell<Control>>,
}

impl Acceptor {
    /// Watches `listener` (a clone of the bound socket).
    pub fn new(listener: UnixListener, control: Rc<RefCell<Control>>) -> Self {
        Acceptor { listener, control }
    }
}

impl MutEventSubscriber for Acceptor {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.control.borrow_mut().offer_client(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // E.g. EMFILE: leave the connection in the backlog and retry on the next
                    // wakeup rather than spin here.
                    log::warn!("accept: {e}");
                    break;
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            log::error!("cannot watch the listening socket: {e}");
            self.control
                .borrow_mut()
                .fail("listener registration failed".into());
        }
    }
}
