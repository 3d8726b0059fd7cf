//! PCI configuration space emulation, kept apart from BAR handling and the device model.

pub(crate) mod config;

pub(crate) use config::{ConfigSpace, CONFIG_SPACE_SIZE};
