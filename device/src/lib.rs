//! The faultline PCI device: config space, BARs, registers, command queue, engines, MSI-X, and DMA through
//! vm-memory. Transport-free: the vfio-user server in `server/` drives it through [`Device`].
//!
//! Threading: [`Device`] is `Send + Sync`. Region accesses come from the server's socket thread and never block
//! on device work; the command queue and the engines run on the device's own threads.
//!
//! Layout (each component gets its handles at construction; arrows are the only imports between them):
//! - `device.rs`: [`Device`], the one owner: builds the components, routes region accesses, runs reset;
//! - `pci/`: configuration space (`config.rs`) and MSI-X (`msix.rs`, BAR1, interrupt delivery through the
//!   `Interrupts` handle);
//! - `regs.rs`: the register file of spec section 2;
//! - `control.rs`: registers, error state and the queue *generation* that keeps a reset from racing the
//!   worker → `regs`, `dma`, `pci`, `fault_ring` (ring enable);
//! - `dma/`: guest memory (the `Dma` handle, snapshots, client-served memory, the walker's view);
//! - `fault_ring.rs`: the fault ring in guest memory, its writeback and interrupt moderation → `dma`,
//!   `pci`, `clock`, `regs`;
//! - `engine/`: the MMU, stalls, job book and lane threads (`lane.rs`), jobs and completion records
//!   (`job.rs`) → `dma`, `pci`, `fault_ring`, `control` (error reports), `clock`, `stats`;
//! - `queue/`: the command-queue worker (NOP, FENCE, STATS), command entries (`command.rs`), job decoding
//!   (`decode.rs`) and the device's opcodes (`ops.rs`) → `control`, `dma`, `engine`, `counters`;
//! - `counters.rs`, `stats.rs`, `clock.rs`, `trace.rs`: counters, the clock, the trace;
//! - `sync.rs`: the one lock order.

#![forbid(unsafe_code)]

pub mod abi;
mod clock;
mod control;
mod counters;
mod device;
mod dma;
mod engine;
mod fault_ring;
#[doc(hidden)]
pub mod fuzzing;
mod pci;
mod queue;
mod regs;
mod stats;
mod sync;
pub mod trace;

/// Jobs: the CHECKSUM definition and the device's job limits.
pub use engine::job as jobs;

use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

pub use device::{Device, DeviceError};
pub use dma::{RemoteDma, RemoteDmaError};

/// Guest memory as the device sees it: the DMA-mapped regions, replaced atomically by the server on
/// DMA_MAP/DMA_UNMAP. Every device access to guest memory goes through a snapshot of it.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap>;

/// VFIO PCI region indexes (`VFIO_PCI_*_REGION_INDEX` from `vfio-bindings`; the server uses these).
pub mod region {
    use vfio_bindings::bindings::vfio;

    /// BAR0: registers.
    pub const BAR0: u32 = vfio::VFIO_PCI_BAR0_REGION_INDEX;
    /// BAR1: MSI-X table and PBA.
    pub const BAR1: u32 = vfio::VFIO_PCI_BAR1_REGION_INDEX;
    /// Expansion ROM (absent).
    pub const ROM: u32 = vfio::VFIO_PCI_ROM_REGION_INDEX;
    /// PCI configuration space.
    pub const CONFIG: u32 = vfio::VFIO_PCI_CONFIG_REGION_INDEX;
    /// VGA (absent).
    pub const VGA: u32 = vfio::VFIO_PCI_VGA_REGION_INDEX;
    /// Number of PCI regions.
    pub const COUNT: u32 = vfio::VFIO_PCI_NUM_REGIONS;
}

/// VFIO interrupt indexes (`VFIO_PCI_*_IRQ_INDEX` from `vfio-bindings`; the server uses these).
pub mod irq {
    use vfio_bindings::bindings::vfio;

    /// Legacy INTx.
    pub const INTX: u32 = vfio::VFIO_PCI_INTX_IRQ_INDEX;
    /// MSI.
    pub const MSI: u32 = vfio::VFIO_PCI_MSI_IRQ_INDEX;
    /// MSI-X.
    pub const MSIX: u32 = vfio::VFIO_PCI_MSIX_IRQ_INDEX;
    /// Error (AER) notification.
    pub const ERR: u32 = vfio::VFIO_PCI_ERR_IRQ_INDEX;
    /// Device request (unplug) notification.
    pub const REQ: u32 = vfio::VFIO_PCI_REQ_IRQ_INDEX;
    /// Number of interrupt indexes.
    pub const COUNT: u32 = vfio::VFIO_PCI_NUM_IRQS;
}

/// Number of interrupts the device offers at VFIO interrupt `index` (see [`irq`]), for GET_IRQ_INFO.
///
/// - INTx 0: the interrupt pin is "none" (MSI-X only).
/// - MSI 0: no MSI capability.
/// - MSI-X [`abi::MSIX_VECTORS`].
/// - ERR 1: what a PCIe function behind vfio-pci reports; QEMU then sets `pci_aer` and sends one
///   SET_IRQS for it (the device never signals it). With 0 QEMU prints "Could not enable error recovery".
/// - REQ 0: QEMU silently skips the request notifier.
///
/// Indexes >= [`irq::COUNT`] have 0.
pub fn irq_count(index: u32) -> u32 {
    match index {
        irq::MSIX => u32::from(abi::MSIX_VECTORS),
        irq::ERR => 1,
        _ => 0,
    }
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
