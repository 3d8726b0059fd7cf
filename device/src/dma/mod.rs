//! Guest memory as the device reaches it, and the [`Dma`] handle its components get at construction.
//!
//! - [`Dma`]: the DMA-mapped regions (replaced atomically by the server on DMA_MAP/DMA_UNMAP) and the
//!   client-served memory, if any. Every device access to guest memory goes through a [`Mem`] snapshot
//!   taken from it.
//! - [`Mem`]: one snapshot; mapped regions first, client-served ones (`remote.rs`) as a fallback.
//! - `phys.rs`: the MMU walker's view of a snapshot and the bounded host view of a range.
//!
//! Every access is bounded by vm-memory: an address outside guest memory is an error, never a panic and
//! never a host access outside what the guest mapped.

pub(crate) mod phys;
pub(crate) mod remote;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::{
    AtomicAccess, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryMmap,
};

use crate::GuestMem;
use remote::RemoteSlot;
pub use remote::{RemoteDma, RemoteDmaError};

/// The device's handle on guest memory. Cheap to clone; every clone sees the same memory.
#[derive(Clone)]
pub(crate) struct Dma {
    mem: GuestMem,
    remote: Arc<RemoteSlot>,
}

impl Dma {
    /// Guest memory as the server maps it; no client-served memory yet.
    pub(crate) fn new(mem: GuestMem) -> Self {
        Dma {
            mem,
            remote: Arc::default(),
        }
    }

    /// Runs `f` on a snapshot of guest memory: the mapped regions and the client-served ones.
    pub(crate) fn with<R>(&self, f: impl FnOnce(Mem<'_>) -> R) -> R {
        let local = self.mem.memory();
        let remote = self.remote.get();
        f(Mem::new(&local, remote.as_ref()))
    }

    /// Serves what the mapped regions do not cover through `remote` from now on.
    pub(crate) fn set_remote(&self, remote: Arc<dyn RemoteDma>) {
        self.remote.set(remote);
    }

    /// Suspends client-served accesses for good (shutdown): waiting ones fail at once, new ones are
    /// refused.
    pub(crate) fn stop_remote(&self) {
        if let Some(r) = self.remote.get() {
            r.suspend();
        }
    }

    /// Runs `f` (a reset) with client-served accesses failed and refused: a device thread may hold a lock
    /// or a lane pin while it waits for the client's reply, and the client (QEMU) may be waiting, with its
    /// own lock held, for the very reply the caller (the socket thread) sends after `f`. Suspending first
    /// means `f` never waits for the client (`sync.rs`, # The socket thread and client-served memory).
    pub(crate) fn without_remote<R>(&self, f: impl FnOnce() -> R) -> R {
        let remote = self.remote.get();
        if let Some(r) = &remote {
            r.suspend();
        }
        let out = f();
        if let Some(r) = &remote {
            r.resume();
        }
        out
    }
}

/// Whether `[base, base + len)` is entirely inside the mapped regions of `mem`.
pub(crate) fn range_ok(mem: &GuestMemoryMmap, base: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    let Ok(count) = usize::try_from(len) else {
        return false;
    };
    base.checked_add(len - 1).is_some()
        && GuestMemoryBackend::check_range(mem, GuestAddress(base), count)
}

/// Guest memory as one device access sees it: a snapshot of the mapped regions and, if set, the
/// remote handle.
#[derive(Clone, Copy)]
pub(crate) struct Mem<'m> {
    pub local: &'m GuestMemoryMmap,
    pub remote: Option<&'m dyn RemoteDma>,
}

impl<'m> Mem<'m> {
    pub(crate) fn new(local: &'m GuestMemoryMmap, remote: Option<&'m Arc<dyn RemoteDma>>) -> Self {
        Mem {
            local,
            remote: remote.map(|r| &**r),
        }
    }

    fn remote_for(&self, gpa: u64, len: u64) -> Option<&'m dyn RemoteDma> {
        self.remote.filter(|r| r.covers(gpa, len))
    }

    /// Whether `[gpa, gpa + len)` is reachable (mapped, or served remotely).
    pub(crate) fn range_ok(&self, gpa: u64, len: u64) -> bool {
        range_ok(self.local, gpa, len) || self.remote_for(gpa, len).is_some()
    }

    /// Whether the range is mapped (the fast path applies).
    pub(crate) fn is_local(&self, gpa: u64, len: u64) -> bool {
        range_ok(self.local, gpa, len)
    }

    pub(crate) fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), RemoteDmaError> {
        let len = buf.len() as u64;
        if self.is_local(gpa, len) && self.local.read_slice(buf, GuestAddress(gpa)).is_ok() {
            return Ok(());
        }
        match self.remote_for(gpa, len) {
            Some(r) => r.read(gpa, buf),
            None => Err(RemoteDmaError::NotCovered { gpa, len }),
        }
    }

    pub(crate) fn write(&self, gpa: u64, data: &[u8]) -> Result<(), RemoteDmaError> {
        let len = data.len() as u64;
        if self.is_local(gpa, len) && self.local.write_slice(data, GuestAddress(gpa)).is_ok() {
            return Ok(());
        }
        match self.remote_for(gpa, len) {
            Some(r) => r.write(gpa, data),
            None => Err(RemoteDmaError::NotCovered { gpa, len }),
        }
    }

    /// Stores `val` with release order (locally) or as one write message (remotely; messages are
    /// answered in order, so earlier writes of this thread are visible first).
    pub(crate) fn store_u32(&self, gpa: u64, val: u32) -> Result<(), RemoteDmaError> {
        self.store(gpa, val, &val.to_le_bytes())
    }

    /// As [`Mem::store_u32`], for a 64-bit value.
    pub(crate) fn store_u64(&self, gpa: u64, val: u64) -> Result<(), RemoteDmaError> {
        self.store(gpa, val, &val.to_le_bytes())
    }

    /// [`Mem::store_u32`] and [`Mem::store_u64`]: `val` locally, else `bytes` (its encoding) remotely.
    fn store<T: AtomicAccess>(&self, gpa: u64, val: T, bytes: &[u8]) -> Result<(), RemoteDmaError> {
        if self.is_local(gpa, bytes.len() as u64)
            && self
                .local
                .store(val, GuestAddress(gpa), Ordering::Release)
                .is_ok()
        {
            return Ok(());
        }
        self.write(gpa, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x20000), 0x1000),
        ])
        .unwrap();
        assert!(range_ok(&mem, 0, 0x10000));
        assert!(!range_ok(&mem, 0, 0x10001));
        assert!(!range_ok(&mem, 0xf000, 0x11001), "spans a hole");
        assert!(range_ok(&mem, 0x20000, 0x1000));
        assert!(!range_ok(&mem, u64::MAX, 2));
        assert!(!range_ok(&mem, 0x30000, 1));
        let view = Mem {
            local: &mem,
            remote: None,
        };
        assert!(view.range_ok(0x20000, 0x1000));
        assert!(!view.is_local(0x20000, 0x1001));
    }
}
