//! faultline-server: a vfio-user device server giving a QEMU guest (`-device vfio-user-pci`) the
//! faultline GPU-like PCI device.
//!
//! Layers, bottom up:
//! - [`protocol`]: wire format (header, commands, payload structures);
//! - [`version`]: VERSION capability negotiation;
//! - [`sock`]: non-blocking `recvmsg`/`send` with `SCM_RIGHTS`;
//! - [`limits`]: `RLIMIT_NOFILE` and the number of DMA regions it allows;
//! - [`dma`], [`irq`]: DMA regions (guest memory for the device) and interrupt eventfds;
//! - [`remote_dma`]: guest memory without a file descriptor, through DMA_READ/DMA_WRITE;
//! - [`session`]: per-client state and the command handlers;
//! - [`conn`]: framing, the validation point, buffered replies;
//! - [`listener`], [`signals`], [`server`]: the `event-manager` loop, one client at a time.
//!
//! The device itself (`faultline_device`) is driven through [`backend::DeviceBackend`].

#![deny(missing_docs)]

pub mod backend;
pub mod cli;
pub mod conn;
pub mod dma;
pub mod error;
pub mod irq;
pub mod limits;
pub mod listener;
pub mod protocol;
pub mod record;
pub mod remote_dma;
pub mod server;
pub mod session;
pub mod signals;
pub mod sock;
pub mod version;
