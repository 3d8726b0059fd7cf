//! The one place the crate takes its synchronisation primitives from.
//!
//! Every concurrent structure in this crate (TLB sets, lane pins, context generations, the stall table)
//! names its atomics, locks and condition variables through `crate::sync`, never `std::sync` directly.
//! The model-checking tests (`tests/model_check.rs`) compile the very same source files into a test crate
//! whose own `sync` module re-exports [shuttle](https://docs.rs/shuttle)'s versions instead, so the
//! production code itself is what gets model-checked, at no cost to the production build.

pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

/// Backs off inside a spin-wait loop (a TLB set being rewritten, an invalidation waiting for lanes).
#[inline]
pub(crate) fn spin_wait(iteration: u32) {
    if iteration < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}
