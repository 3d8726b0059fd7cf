//! The event loop: listener, signals and the active client connection as `event-manager`
//! subscribers, all on one thread.
//!
//! One client at a time. A client that connects while another is active waits (accepted, not
//! read) until the active one leaves; at most one client waits, and any further connection is
//! accepted and closed at once with a log line. Waiting makes a quick reconnect (the old
//! connection's hang-up and the new connection seen in either order) work; closing the rest
//! tells a misconfigured second VMM at once instead of letting it time out.
//!
//! When the active client goes away its session is dropped: the device is shut down (in-flight
//! work stopped), its counters are logged, DMA mappings and eventfds are released; the next
//! client gets a fresh device.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::rc::Rc;

use event_manager::{EventManager, MutEventSubscriber, SubscriberId, SubscriberOps};

use crate::backend::{format_stats, DeviceBackend, DeviceFactory};
use crate::conn::Connection;
use crate::listener::{Acceptor, BoundSocket};
use crate::record::Recorder;
use crate::session::Session;
use crate::signals::{SignalFd, SignalHandler};

/// Why the event loop stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The event manager failed.
    #[error("event loop: {0}")]
    EventLoop(#[from] event_manager::Error),
    /// Setting up a socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A subscriber could not be registered.
    #[error("{0}")]
    Setup(String),
}

/// State shared between the subscribers and the loop (single-threaded).
pub struct Control {
    /// Accepted clients not yet active; the front one is activated next.
    queue: VecDeque<UnixStream>,
    /// A connection is active (set by the loop, cleared by the connection when it closes).
    active: bool,
    /// The active connection closed and its subscriber must be removed.
    closed: bool,
    /// Shutdown requested (signal name).
    shutdown: Option<String>,
    /// A fatal setup error.
    failure: Option<String>,
    /// The active client's device, for SIGUSR1.
    device: Option<Rc<dyn DeviceBackend>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("queued", &self.queue.len())
            .field("active", &self.active)
            .field("shutdown", &self.shutdown)
            .finish()
    }
}

impl Control {
    fn new() -> Self {
        Control {
            queue: VecDeque::new(),
            active: false,
            closed: false,
            shutdown: None,
            failure: None,
            device: None,
        }
    }

    /// A client was accepted: queue it, or close it if one is active and one already waits.
    pub fn offer_client(&mut self, stream: UnixStream) {
        let limit = if self.active { 1 } else { 2 };
        if self.queue.len() < limit {
            if self.active || !self.queue.is_empty() {
                log::info!("client connected while another is active: it waits its turn");
            }
            self.queue.push_back(stream);
        } else {
            log::warn!(
                "client rejected: one client is active and another is waiting (one client at a time)"
            );
            drop(stream);
        }
    }

    /// Called by the connection when it has closed.
    pub fn connection_closed(&mut self) {
        self.active = false;
        self.closed = true;
        self.device = None;
    }

    /// Asks the loop to stop.
    pub fn request_shutdown(&mut self, why: &str) {
        self.shutdown.get_or_insert_with(|| why.to_string());
    }

    /// Asks the loop to stop with an error.
    pub fn fail(&mut self, why: String) {
        self.failure.get_or_insert(why);
    }

    /// Logs the active device's counters (SIGUSR1).
    pub fn log_stats(&self) {
        match &self.device {
            Some(d) => log::info!("device stats: {}", format_stats(&d.stats())),
            None => log::info!("device stats: no client connected"),
        }
    }
}

/// Serves clients on `socket` until SIGINT/SIGTERM. Returns the signal's name.
pub fn run(
    socket: &BoundSocket,
    signals: SignalFd,
    factory: DeviceFactory,
    record: Option<&Path>,
) -> Result<String, ServerError> {
    let control = Rc::new(RefCell::new(Control::new()));
    let mut em: EventManager<Box<dyn MutEventSubscriber>> = EventManager::new()?;
    em.add_subscriber(Box::new(SignalHandler::new(signals, Rc::clone(&control))));
    em.add_subscriber(Box::new(Acceptor::new(
        socket.listener.try_clone()?,
        Rc::clone(&control),
    )));
    log::info!("listening on {}", socket.path().display());

    let mut conn_id: Option<SubscriberId> = None;
    let result = loop {
        if let Some(f) = control.borrow_mut().failure.take() {
            break Err(ServerError::Setup(f));
        }
        if let Some(sig) = control.borrow().shutdown.clone() {
            break Ok(sig);
        }
        if control.borrow().closed {
            control.borrow_mut().closed = false;
            if let Some(id) = conn_id.take() {
                // Dropping the connection drops its session: device shutdown, stats, DMA and
                // eventfds released.
                drop(em.remove_subscriber(id));
            }
        }
        let next = {
            let mut c = control.borrow_mut();
            if c.active {
                None
            } else {
                c.queue.pop_front()
            }
        };
        if let Some(stream) = next {
            conn_id = activate(&mut em, stream, &factory, &control, record);
            continue;
        }
        if let Err(e) = em.run() {
            break Err(e.into());
        }
    };
    if let Some(id) = conn_id.take() {
        drop(em.remove_subscriber(id));
    }
    control.borrow_mut().queue.clear();
    result
}

/// Creates a session (with a fresh device) for `stream` and registers its connection.
fn activate(
    em: &mut EventManager<Box<dyn MutEventSubscriber>>,
    stream: UnixStream,
    factory: &DeviceFactory,
    control: &Rc<RefCell<Control>>,
    record: Option<&Path>,
) -> Option<SubscriberId> {
    let session = match Session::new(factory) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot create a device for the client, closing it: {e}");
            return None;
        }
    };
    let device = session.device();
    let conn = match Connection::new(stream, session, Rc::clone(control)) {
        Ok(c) => match record.map(Recorder::new) {
            Some(Ok(r)) => c.recording(r),
            Some(Err(e)) => {
                log::warn!("--record: {e}; this connection is not recorded");
                c
            }
            None => c,
        },
        Err(e) => {
            log::error!("cannot set up the client connection: {e}");
            return None;
        }
    };
    {
        let mut c = control.borrow_mut();
        c.active = true;
        c.closed = false;
        c.device = Some(device);
    }
    log::info!("client connected");
    Some(em.add_subscriber(Box::new(conn)))
}
