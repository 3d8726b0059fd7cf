//! The faultline device MMU model: page-table walker, TLB, fault ring, replay and cancel, invalidation
//! fences. Pure logic: no I/O and no threads of its own; guest memory is reached through a trait.

pub mod fault;
pub mod pte;
