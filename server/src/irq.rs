//! Interrupts of one client: the eventfds passed with DEVICE_SET_IRQS, per VFIO irq index, and
//! the [`InterruptSink`] the device raises MSI-X vectors through.
//!
//! Each vector has an optional eventfd, a mask bit and a pending bit. Raising a vector writes
//! its eventfd; if the vector is masked or has no eventfd the interrupt is recorded as pending
//! and delivered when the vector is unmasked or gets an eventfd (a late interrupt is better than
//! a lost one; drivers check their status anyway). Received eventfds are switched to
//! `O_NONBLOCK` so raising a vector never blocks a device thread.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use faultline_device::InterruptSink;
use vmm_sys_util::eventfd::EventFd;

use crate::error::RequestError;
use crate::protocol::irq_index;

#[derive(Debug, Default)]
struct Vector {
    fd: Option<EventFd>,
    masked: bool,
    pending: bool,
}

impl Vector {
    /// Writes the eventfd, or records the interrupt as pending.
    fn raise(&mut self) {
        match (&self.fd, self.masked) {
            (Some(fd), false) => {
                self.pending = false;
                write_eventfd(fd);
            }
            _ => self.pending = true,
        }
    }

    /// Delivers a pending interrupt if the vector can now be signalled.
    fn flush(&mut self) {
        if self.pending && !self.masked && self.fd.is_some() {
            self.raise();
        }
    }
}

fn write_eventfd(fd: &EventFd) {
    if let Err(e) = fd.write(1) {
        // EAGAIN means the counter is saturated: the client has interrupts to handle already.
        log::trace!("eventfd write: {e}");
    }
}

/// Refuses a SET_IRQS descriptor that is not an eventfd: the device writes 8-byte counters to it
/// from its own threads, which on a pipe, socket or file could block or mean something else.
pub fn check_eventfd(fd: &OwnedFd) -> Result<(), RequestError> {
    let link =
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|source| {
            RequestError::Os {
                what: "SET_IRQS: identifying the descriptor",
                source,
            }
        })?;
    if link.as_os_str() == "anon_inode:[eventfd]" {
        Ok(())
    } else {
        Err(RequestError::NotEventfd(format!(
            "SET_IRQS: descriptor is {}, not an eventfd",
            link.display()
        )))
    }
}

/// The vectors of one VFIO irq index.
#[derive(Debug)]
pub struct IrqLine {
    vectors: Mutex<Vec<Vector>>,
}

impl IrqLine {
    fn new(count: u32) -> Self {
        IrqLine {
            vectors: Mutex::new((0..count).map(|_| Vector::default()).collect()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Vector>> {
        // A poisoned lock only means a holder panicked; the table itself is consistent.
        self.vectors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of vectors.
    pub fn count(&self) -> u32 {
        u32::try_from(self.lock().len()).unwrap_or(u32::MAX)
    }

    /// Raises vector `v`; out-of-range vectors are ignored (logged).
    pub fn raise(&self, v: u32) {
        let mut vs = self.lock();
        match vs.get_mut(v as usize) {
            Some(vec) => vec.raise(),
            None => log::warn!("interrupt vector {v} does not exist; dropped"),
        }
    }

    /// Whether vector `v` has an eventfd.
    pub fn has_fd(&self, v: u32) -> bool {
        self.lock().get(v as usize).is_some_and(|x| x.fd.is_some())
    }

    /// Whether vector `v` is masked.
    pub fn is_masked(&self, v: u32) -> bool {
        self.lock().get(v as usize).is_some_and(|x| x.masked)
    }

    /// Whether vector `v` has an undelivered interrupt.
    pub fn is_pending(&self, v: u32) -> bool {
        self.lock().get(v as usize).is_some_and(|x| x.pending)
    }
}

/// The device's MSI-X vectors as an [`InterruptSink`].
#[derive(Debug)]
pub struct MsixSink(Arc<IrqLine>);

impl InterruptSink for MsixSink {
    fn signal(&self, vector: u16) {
        self.0.raise(u32::from(vector));
    }
}

/// What DEVICE_SET_IRQS asks for, decoded and validated by the caller.
#[derive(Debug)]
pub enum IrqAction {
    /// Assign eventfds to `start..start+fds.len()`.
    Assign(Vec<OwnedFd>),
    /// Remove the eventfds of the range.
    Deassign,
    /// Raise the selected vectors.
    Trigger,
    /// Mask the selected vectors.
    Mask,
    /// Unmask the selected vectors.
    Unmask,
}

/// All interrupt indexes of one client.
#[derive(Debug)]
pub struct Irqs {
    lines: Vec<Arc<IrqLine>>,
}

impl Irqs {
    /// Tables sized by `count(index)` for the five VFIO PCI irq indexes.
    pub fn new(count: impl Fn(u32) -> u32) -> Self {
        Irqs {
            lines: (0..irq_index::COUNT)
                .map(|i| Arc::new(IrqLine::new(count(i))))
                .collect(),
        }
    }

    /// The MSI-X vectors as the device's interrupt sink.
    pub fn msix_sink(&self) -> Arc<dyn InterruptSink> {
        let line = self
            .lines
            .get(irq_index::MSIX as usize)
            .map_or_else(|| Arc::new(IrqLine::new(0)), Arc::clone);
        Arc::new(MsixSink(line))
    }

    /// The vectors of `index`, if it exists.
    pub fn line(&self, index: u32) -> Option<&IrqLine> {
        self.lines.get(index as usize).map(|l| &**l)
    }

    /// Applies `action` to the vectors `start..start+count` of `index` selected by `select`
    /// (`None`: all of them). The range must have been checked by the caller.
    pub fn apply(
        &self,
        index: u32,
        start: u32,
        count: u32,
        select: Option<&[u8]>,
        action: IrqAction,
    ) -> Result<(), RequestError> {
        let line = self
            .line(index)
            .ok_or_else(|| RequestError::invalid(format!("SET_IRQS: no irq index {index}")))?;
        let mut vs = line.lock();
        let end = start
            .checked_add(count)
            .filter(|&e| e as usize <= vs.len())
            .ok_or_else(|| {
                RequestError::invalid(format!(
                    "SET_IRQS: vectors {start}+{count} outside the {} of index {index}",
                    vs.len()
                ))
            })?;
        let range = start as usize..end as usize;
        let selected =
            |i: usize| select.is_none_or(|b| b.get(i - range.start).is_some_and(|&x| x != 0));
        match action {
            IrqAction::Assign(fds) => {
                if fds.len() != range.len() {
                    return Err(RequestError::invalid(format!(
                        "SET_IRQS: {} eventfds for {count} vectors",
                        fds.len()
                    )));
                }
                // Validate every descriptor before changing anything.
                let files = fds
                    .into_iter()
                    .map(into_eventfd)
                    .collect::<Result<Vec<EventFd>, RequestError>>()?;
                for (i, f) in range.clone().zip(files) {
                    vs[i].fd = Some(f);
                    vs[i].flush();
                }
            }
            IrqAction::Deassign => {
                for v in &mut vs[range] {
                    v.fd = None;
                }
            }
            IrqAction::Trigger => {
                for i in range.clone().filter(|&i| selected(i)) {
                    vs[i].raise();
                }
            }
            IrqAction::Mask => {
                for i in range.clone().filter(|&i| selected(i)) {
                    vs[i].masked = true;
                }
            }
            IrqAction::Unmask => {
                for i in range.clone().filter(|&i| selected(i)) {
                    vs[i].masked = false;
                    vs[i].flush();
                }
            }
        }
        Ok(())
    }

    /// Removes every eventfd of `index` and clears its mask and pending bits (SET_IRQS with
    /// DATA_NONE, count 0).
    pub fn disable(&self, index: u32) {
        if let Some(line) = self.line(index) {
            for v in line.lock().iter_mut() {
                *v = Vector::default();
            }
        }
    }

    /// Forgets pending interrupts (device reset); eventfds and masks stay.
    pub fn clear_pending(&self) {
        for line in &self.lines {
            for v in line.lock().iter_mut() {
                v.pending = false;
            }
        }
    }
}

/// Checks that `fd` is an eventfd, makes it non-blocking, and wraps it.
fn into_eventfd(fd: OwnedFd) -> Result<EventFd, RequestError> {
    check_eventfd(&fd)?;
    let f = set_nonblocking(File::from(fd))?;
    // SAFETY: `f` owns the descriptor and gives it up here; `check_eventfd` showed it is an
    // eventfd, so `EventFd`'s 8-byte reads and writes are what it expects.
    Ok(unsafe { EventFd::from_raw_fd(f.into_raw_fd()) })
}

fn set_nonblocking(f: File) -> Result<File, RequestError> {
    let fd = f.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(RequestError::Os {
            what: "SET_IRQS: fcntl on eventfd",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn efd() -> (EventFd, OwnedFd) {
        let e = EventFd::new(EFD_NONBLOCK).unwrap();
        let dup = e.try_clone().unwrap();
        // SAFETY: `dup` owns a fresh descriptor; into_raw_fd-like transfer via dup.
        let owned = unsafe { OwnedFd::from_raw_fd(libc::dup(dup.as_raw_fd())) };
        (e, owned)
    }

    fn counts(i: u32) -> u32 {
        match i {
            irq_index::MSIX => 4,
            irq_index::ERR | irq_index::REQ => 1,
            _ => 0,
        }
    }

    #[test]
    fn signal_goes_to_eventfd() {
        let irqs = Irqs::new(counts);
        let sink = irqs.msix_sink();
        let (e0, fd0) = efd();
        irqs.apply(irq_index::MSIX, 0, 1, None, IrqAction::Assign(vec![fd0]))
            .unwrap();
        sink.signal(0);
        assert_eq!(e0.read().unwrap(), 1);
        // No fd on vector 1: pending, delivered on assignment.
        sink.signal(1);
        let line = irqs.line(irq_index::MSIX).unwrap();
        assert!(line.is_pending(1));
        let (e1, fd1) = efd();
        irqs.apply(irq_index::MSIX, 1, 1, None, IrqAction::Assign(vec![fd1]))
            .unwrap();
        assert_eq!(e1.read().unwrap(), 1);
        // Masked: pending until unmasked.
        irqs.apply(irq_index::MSIX, 0, 1, None, IrqAction::Mask)
            .unwrap();
        sink.signal(0);
        assert!(e0.read().is_err());
        irqs.apply(irq_index::MSIX, 0, 1, None, IrqAction::Unmask)
            .unwrap();
        assert_eq!(e0.read().unwrap(), 1);
        // Out-of-range vectors are dropped, not a panic.
        sink.signal(99);
        // Trigger with a bool selection.
        irqs.apply(irq_index::MSIX, 0, 2, Some(&[0, 1]), IrqAction::Trigger)
            .unwrap();
        assert!(e0.read().is_err());
        assert_eq!(e1.read().unwrap(), 1);
        irqs.disable(irq_index::MSIX);
        assert!(!line.has_fd(0));
    }

    #[test]
    fn bad_ranges() {
        let irqs = Irqs::new(counts);
        for (start, count) in [(4, 1), (3, 2), (u32::MAX, 2)] {
            let e = irqs
                .apply(irq_index::MSIX, start, count, None, IrqAction::Trigger)
                .unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL);
        }
        let (_e, fd) = efd();
        let e = irqs
            .apply(irq_index::MSIX, 0, 2, None, IrqAction::Assign(vec![fd]))
            .unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(irqs.apply(9, 0, 0, None, IrqAction::Trigger).is_err());
    }
}
