//! faultline device crate.
