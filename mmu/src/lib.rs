//! The faultline device MMU model: page-table walker, TLB, fault ring, replay and cancel, invalidation
//! fences. Pure logic: no I/O and no threads of its own; guest memory is reached through [`PhysMem`].
//!
//! | module | what |
//! |---|---|
//! | [`pte`], [`fault`] | the ABI: PTE bits, fault-entry layout (checked against the C header) |
//! | [`mem`] | [`PhysMem`], a memory model and a page-table builder for tests |
//! | [`walker`] | the four-level walk and its errors |
//! | [`tlb`] | the set-associative, context-tagged TLB (lock-free lookups) |
//! | [`context`] | [`Mmu`]: contexts, lanes, translation with pinning, invalidation fences |
//! | [`ring`] | fault-ring producer model and consumer decoder |
//! | [`stall`] | stalled lanes, REPLAY, CANCEL, duplicates, latency |
//! | [`stats`] | the FL_OP_STATS counter block |
//!
//! A lane's fault path, end to end:
//! ```
//! use std::sync::Arc;
//! use faultline_mmu::{AccessType, FaultRing, FlatMem, Mmu, MmuConfig, PageTableBuilder, PostOutcome,
//!                     StallKey, StallOutcome, StallTable, PageSize, Perms};
//!
//! let mem = FlatMem::new(0, 1 << 20);
//! let mut pt = PageTableBuilder::new(&mem, 0, 1 << 20).unwrap();
//! let mmu = Arc::new(Mmu::new(MmuConfig::default()).unwrap());
//! let stalls = StallTable::new(mmu.lanes());
//! let mut ring = FaultRing::new(64, 0).unwrap();
//! mmu.bind(1, pt.root()).unwrap();
//! let lane = mmu.lane(0).unwrap();
//!
//! let va = 0x4000_0000;
//! let err = lane.translate(1, va, AccessType::Write, &mem).unwrap_err();
//! assert!(err.fault_reason().is_some());
//! let ticket = stalls.register(&lane, StallKey::new(1, va, AccessType::Write), 1_000).unwrap();
//! assert!(matches!(ring.post(1_000), PostOutcome::Posted { slot: 0, .. }));
//! // ... the driver services the fault: maps the page, invalidates, replays.
//! pt.map(va, 0x20_0000, PageSize::Size4K, Perms::ALL).unwrap();
//! mmu.invalidate(1, va, 4096).unwrap();
//! assert_eq!(stalls.replay(1, 9_000), 1);
//! assert_eq!(stalls.wait(ticket), StallOutcome::Replayed);
//! let access = lane.translate(1, va + 8, AccessType::Write, &mem).unwrap();
//! assert_eq!(access.pa(va + 8), 0x20_0008);
//! ```

#![forbid(unsafe_code)]

pub mod context;
pub mod fault;
pub mod mem;
mod pad;
pub mod pte;
pub mod ring;
pub mod stall;
pub mod stats;
mod sync;
pub mod tlb;
pub mod walker;

pub use context::{
    Access, ConfigError, Invalidation, Lane, Mmu, MmuConfig, MmuError, PinGuard, TranslateError,
    CONTEXT_ALL,
};
pub use fault::{AccessType, DecodeError, FaultEntry, FaultReason};
pub use mem::{BuildError, FlatMem, PageTableBuilder, PhysError, PhysMem};
pub use pte::{PageSize, Perms};
pub use ring::{FaultRing, IrqAction, PostOutcome, RingConsumer, RingError};
pub use stall::{StallError, StallKey, StallOutcome, StallTable, StallTicket};
pub use stats::Counters;
pub use tlb::{Tlb, TlbConfig, TlbConfigError, TlbEntry};
pub use walker::{resolve, walk, JobFailure, Translation, WalkError};
