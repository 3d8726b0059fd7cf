//! faultline mmu crate.
