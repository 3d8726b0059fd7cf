//! The faultline PCI device: config space, BARs, registers, command queue, engines, MSI-X, and DMA through
//! vm-memory. Transport-free: the vfio-user server in `server/` drives it.

pub mod abi;
