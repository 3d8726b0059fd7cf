//! Locking helpers and the device's one lock order.
//!
//! # Lock order
//!
//! Always taken in this order (a thread may skip any of them). This is the only statement of the order;
//! every other module refers here.
//!
//! 1. [`Control`](crate::control::Control)'s `effects` — held around every guest-visible side effect of
//!    the command worker (guest-memory writes, interrupts, MMU state changes, job submission) and around
//!    every change of the queue *generation*. Held for one short step at a time.
//! 2. `Control`'s `regs` — the register file; the worker's condition variable `wake` waits on it.
//! 3. the engine's reset lock, then its stall *gate* (`engine/mod.rs`);
//! 4. the stall table (`faultline_mmu::StallTable`) and the fault ring's `writer`, then its `state`
//!    (`fault_ring.rs`);
//! 5. the engine's job book and engine queues;
//! 6. `config` — configuration space (owned by [`Device`](crate::Device));
//! 7. `msix` — MSI-X table, PBA and delivery ([`Interrupts`](crate::pci::Interrupts)).
//!
//! # Waiting
//!
//! Only `effects`, `regs` and the engine's reset lock are ever held while waiting for a pinned lane, and
//! lanes never take them while pinned. Lane threads take the gate and what follows it, never while
//! pinned (holding a translation), and `effects` only to raise `FL_ERR_FR_CONFIG` while holding nothing
//! else (with the generation they read under the gate). The command worker waits for room for a job
//! (outstanding-job and digest limits) on the job book's condition variable holding no other lock. So a
//! reset, which holds `effects` while it waits for pinned lanes (`Engine::abort_all`), never waits for a
//! lane that waits for it: a pinned lane takes no lock and moves at most 64 KiB before unpinning.
//!
//! # The socket thread and client-served memory
//!
//! Guest memory the client serves (vfio-user DMA_READ/DMA_WRITE, `dma/remote.rs`) costs a message round
//! trip per access, and the client (QEMU) may not answer before the socket thread has replied to a region
//! access it waits for, its own global lock held. So **the socket thread never blocks on a lock held
//! across such an access.**
//!
//! - Device threads access guest memory holding `effects` (worker steps; a lane's or the worker's error
//!   report), the engine's gate, the fault ring's `writer` (posts) and the job book (completion records).
//! - They never hold `regs`, the fault ring's `state`, `config` or `msix` across one, and those are all
//!   that region reads, the `FL_REG_FR_GET` doorbell and plain BAR0 writes take.
//! - The socket thread takes the former only with client-served accesses suspended
//!   ([`Dma::without_remote`](crate::dma::Dma::without_remote), which fails those in flight at once):
//!   resets always; `FL_REG_CQ_CONTROL`, `FL_ERR_BAD_TAIL` and a rejected fault-ring enable take
//!   `effects`, and an `FL_REG_FR_CONTROL` disable waits for `writer`, suspending only if the lock is busy
//!   (`Control::effects_now`, `Control::quiesce_fault_ring`).
//! - Its own client-served writes are queued without waiting, and its reads fail (`remote_dma.rs` in the
//!   server).

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, ignoring poisoning: every critical section leaves its data consistent, and a panic on one
/// thread must not take the socket thread down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
