//! The PCI function's own state, kept apart from BAR0's registers and the device model: configuration
//! space (`config.rs`) and MSI-X (`msix.rs`, BAR1 and interrupt delivery).

pub(crate) mod config;
pub(crate) mod msix;

pub(crate) use config::{ConfigSpace, CONFIG_SPACE_SIZE};
pub(crate) use msix::Interrupts;
