//! The faultline PCI device: config space, BARs, registers, command queue, engines, MSI-X, and DMA through
//! vm-memory. Transport-free: the vfio-user server in `server/` drives it through [`Device`].
//!
//! Threading: [`Device`] is `Send + Sync`. Region accesses come from the server's socket thread and never block
//! on device work; the command queue and the engines run on the device's own threads.

pub mod abi;

use std::sync::Arc;

use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// Guest memory as the device sees it: the DMA-mapped regions, replaced atomically by the server on
/// DMA_MAP/DMA_UNMAP. Every device access to guest memory goes through a snapshot of it.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap>;

/// VFIO PCI region indexes (same numbering as `VFIO_PCI_*_REGION_INDEX`).
pub mod region {
    /// BAR0: registers.
    pub const BAR0: u32 = 0;
    /// BAR1: MSI-X table and PBA.
    pub const BAR1: u32 = 1;
    /// Expansion ROM (absent).
    pub const ROM: u32 = 6;
    /// PCI configuration space.
    pub const CONFIG: u32 = 7;
    /// VGA (absent).
    pub const VGA: u32 = 8;
    /// Number of PCI regions.
    pub const COUNT: u32 = 9;
}

/// Where MSI-X messages go. The server implements it over the eventfds QEMU passed with SET_IRQS.
pub trait InterruptSink: Send + Sync {
    /// Signals MSI-X `vector`. Must not block.
    fn signal(&self, vector: u16);
}

/// Static device parameters (from the server's command line).
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Address-space contexts.
    pub contexts: u16,
    /// Engines.
    pub engines: u8,
    /// Lanes per engine.
    pub lanes: u16,
    /// TLB sets.
    pub tlb_sets: u32,
    /// TLB ways.
    pub tlb_ways: u32,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            contexts: 16,
            engines: 4,
            lanes: 16,
            tlb_sets: 64,
            tlb_ways: 8,
        }
    }
}

/// Size and access rights of one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    /// Size in bytes; 0 means the region is absent.
    pub size: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
}

/// Why a region access was refused. The server turns it into an errno.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    /// No such region, or the region is absent.
    #[error("region {0} does not exist")]
    NoRegion(u32),
    /// `offset + len` is outside the region.
    #[error("access at {offset:#x}+{len} is outside region {region} (size {size:#x})")]
    OutOfRange {
        /// Region index.
        region: u32,
        /// Offset of the access.
        offset: u64,
        /// Length of the access.
        len: usize,
        /// Region size.
        size: u64,
    },
    /// The access width or alignment is not supported by the region.
    #[error("unsupported {len}-byte access at {offset:#x} in region {region}")]
    BadAccess {
        /// Region index.
        region: u32,
        /// Offset of the access.
        offset: u64,
        /// Length of the access.
        len: usize,
    },
}

/// Keeps the API surface used by the server in one place; implemented in the device modules.
#[allow(dead_code)]
fn _api_shape(_: Arc<dyn InterruptSink>, _: GuestMem) {}
