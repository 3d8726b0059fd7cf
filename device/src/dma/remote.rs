//! Guest memory the device reaches through its client instead of a mapping.
//!
//! A client (QEMU without a shared memory backend) may DMA-map guest memory without a file
//! descriptor. The device cannot map it; the server serves it with vfio-user's server→client
//! DMA_READ/DMA_WRITE messages instead, through a [`RemoteDma`] handle given to the device with
//! [`crate::Device::set_remote_dma`]. Every guest-memory access of the device ([`super::Mem`]) tries the
//! mapped regions first and falls back to this handle for ranges it [`covers`](RemoteDma::covers).
//! Such accesses are slow (a socket round trip each) and not atomic with respect to the guest's
//! CPUs (an ATOMIC_ADD there is a read, then a write).

use std::sync::Arc;

/// Why a remote access failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteDmaError {
    /// The range is not (entirely) inside one region served remotely.
    #[error("{gpa:#x}+{len:#x} is not remote guest memory")]
    NotCovered {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// The client is gone, or the access was cancelled by a reset.
    #[error("remote DMA cancelled ({0})")]
    Cancelled(&'static str),
    /// The client did not answer in time.
    #[error("remote DMA: no reply within {0} ms")]
    Timeout(u64),
    /// The client answered with an error or a malformed reply.
    #[error("remote DMA: bad reply: {0}")]
    BadReply(String),
}

/// Guest memory served by the client (vfio-user DMA_READ/DMA_WRITE). Implementations block the
/// calling device thread until the client answered or a bounded timeout passed.
pub trait RemoteDma: Send + Sync {
    /// Whether `[gpa, gpa + len)` lies inside one remotely served region.
    fn covers(&self, gpa: u64, len: u64) -> bool;
    /// Reads `buf.len()` bytes at `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), RemoteDmaError>;
    /// Writes `data` at `gpa`.
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), RemoteDmaError>;
    /// Fails every waiting access and refuses new ones until [`RemoteDma::resume`] (device reset:
    /// a reset waits for pinned lanes, which may be waiting here).
    fn suspend(&self);
    /// Accepts accesses again after [`RemoteDma::suspend`].
    fn resume(&self);
}

/// A remote handle slot, set once by the server.
#[derive(Default)]
pub(crate) struct RemoteSlot(std::sync::RwLock<Option<Arc<dyn RemoteDma>>>);

impl RemoteSlot {
    pub(crate) fn set(&self, r: Arc<dyn RemoteDma>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(r);
    }
    pub(crate) fn get(&self) -> Option<Arc<dyn RemoteDma>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
