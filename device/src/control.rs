//! The queue's control state: the register file, the error state, and the queue *generation* that keeps
//! a reset from racing the command worker.
//!
//! # Generations
//!
//! `generation` changes (with both `effects` and `regs` held) whenever the queue's world changes under the
//! worker: device reset, queue enable/disable, entering the error state, shutdown. The worker snapshots the
//! generation with the queue configuration ([`Control::next_batch`]), and performs each side effect only
//! through [`Control::effects`], which takes the effects lock and checks that the generation is unchanged.
//! So once a reset has returned, the worker can no longer write guest memory or raise an interrupt for the
//! old queue: it either finished its write before the reset took the lock, or it sees the new generation
//! and abandons the batch. A reset waits at most for one in-flight step of the worker and for pinned
//! lanes, never for a batch or a stalled job.
//!
//! [`Control`] gets its handles (guest memory, interrupts) at construction. Any component may report a
//! device error through [`Control::raise_error`] with the generation it saw the failure in.
//!
//! Locks: `effects` and `regs` are the first two of the device's one lock order (`sync.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};

use log::{debug, info, warn};

use crate::abi;
use crate::dma::{Dma, Mem};
use crate::fault_ring::FaultRingHw;
use crate::pci::Interrupts;
use crate::regs::{Identity, QueueState, RegWrite, Regs, RingView};
use crate::sync::lock;

/// Ring base alignment (command queue and fault ring).
const RING_ALIGN: u64 = 4096;

/// Witness that the effects lock is held.
pub(crate) struct Effects<'a> {
    _guard: MutexGuard<'a, ()>,
}

/// The command queue as the worker saw it when it started a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batch {
    /// The generation the batch runs in.
    pub gen: u64,
    /// Ring GPA.
    pub base: u64,
    /// Entries.
    pub size: u32,
    /// First command of the batch.
    pub head: u32,
    /// One past the last command of the batch.
    pub tail: u32,
    /// Commands completed before the batch.
    pub completed: u64,
}

/// Registers, error state and queue generation.
pub(crate) struct Control {
    dma: Dma,
    irq: Interrupts,
    effects: Mutex<()>,
    generation: AtomicU64,
    regs: Mutex<Regs>,
    /// Wakes the worker (doorbells, enable, shutdown); used with `regs`.
    wake: Condvar,
}

/// Validates a ring: `align`-aligned base, power-of-two size within `min..=max`, inside guest memory.
fn ring_ok(mem: &Mem<'_>, base: u64, size: u32, entry: u64, min: u32, max: u32) -> bool {
    base & (RING_ALIGN - 1) == 0
        && size.is_power_of_two()
        && (min..=max).contains(&size)
        && mem.range_ok(base, u64::from(size) * entry)
}

/// Validates the writeback block: 64-byte aligned and inside guest memory.
fn wb_ok(mem: &Mem<'_>, wb: u64) -> bool {
    wb & (abi::WB_SIZE - 1) == 0 && mem.range_ok(wb, abi::WB_SIZE)
}

/// Name of an `FL_ERR_*` code for logs.
fn error_name(code: u32) -> &'static str {
    match code {
        abi::ERR_CQ_CONFIG => "CQ_CONFIG",
        abi::ERR_WB_CONFIG => "WB_CONFIG",
        abi::ERR_CQ_DMA => "CQ_DMA",
        abi::ERR_BAD_OPCODE => "BAD_OPCODE",
        abi::ERR_BAD_TAIL => "BAD_TAIL",
        abi::ERR_FR_CONFIG => "FR_CONFIG",
        abi::ERR_BAD_ARG => "BAD_ARG",
        abi::ERR_FENCE_DMA => "FENCE_DMA",
        _ => "?",
    }
}

impl Control {
    /// Control state in its reset state, writing through `dma` and signalling through `irq`.
    pub(crate) fn new(dma: Dma, irq: Interrupts) -> Self {
        Control {
            dma,
            irq,
            effects: Mutex::new(()),
            generation: AtomicU64::new(0),
            regs: Mutex::new(Regs::default()),
            wake: Condvar::new(),
        }
    }

    /// Reads a BAR0 register; `ring` is the fault ring's register view.
    pub(crate) fn read_register(&self, offset: u64, id: &Identity, ring: RingView) -> u32 {
        lock(&self.regs).read(offset, id, ring)
    }

    /// Stores a BAR0 register write, or returns it for the device to carry out.
    pub(crate) fn write_register(&self, offset: u64, val: u32) -> Option<RegWrite> {
        lock(&self.regs).write(offset, val)
    }

    /// The current queue generation.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Takes the effects lock if the generation is still `gen`; `None` means the caller's queue is gone.
    pub(crate) fn effects(&self, gen: u64) -> Option<Effects<'_>> {
        let guard = lock(&self.effects);
        (self.generation.load(Ordering::Acquire) == gen).then_some(Effects { _guard: guard })
    }

    /// Takes the effects lock whatever the generation (resets, queue and ring control).
    pub(crate) fn effects_any(&self) -> Effects<'_> {
        Effects {
            _guard: lock(&self.effects),
        }
    }

    /// The effects lock for the socket thread, which must not wait for the client: at once if it is free,
    /// else with client-served accesses suspended while it waits (the holder may be waiting for a reply
    /// the client sends only after the socket thread's next reply). A suspension fails every
    /// client-served access in flight; the callers stop or replace the queue under the lock (new
    /// generation), so the worker's failed access belonged to the queue that ends.
    fn effects_now(&self) -> Effects<'_> {
        match self.effects.try_lock() {
            Ok(guard) => Effects { _guard: guard },
            Err(TryLockError::Poisoned(e)) => Effects {
                _guard: e.into_inner(),
            },
            Err(TryLockError::WouldBlock) => self.dma.without_remote(|| self.effects_any()),
        }
    }

    /// Stops the fault ring's writes to a ring just disabled (socket thread): waits for a poster still
    /// writing it, with client-served accesses suspended if one is (as in `Control::effects_now`).
    fn quiesce_fault_ring(&self, ring: &FaultRingHw) {
        if !ring.writes_idle() {
            self.dma.without_remote(|| ring.wait_writes());
        }
    }

    /// Starts a new generation; the two references prove both locks are held.
    fn bump(&self, _fx: &Effects<'_>, _regs: &mut Regs) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Device reset of the control state: new generation, registers to their defaults (the shutdown flag
    /// stays), worker woken to see it.
    pub(crate) fn reset(&self, fx: &Effects<'_>) {
        let mut regs = lock(&self.regs);
        self.bump(fx, &mut regs);
        regs.reset();
        drop(regs);
        self.wake.notify_all();
    }

    /// Stops the worker for good.
    pub(crate) fn shutdown(&self) {
        let fx = self.effects_any();
        let mut regs = lock(&self.regs);
        self.bump(&fx, &mut regs);
        regs.shutdown = true;
        drop(regs);
        drop(fx);
        self.wake.notify_all();
    }

    /// Waits until the queue is running with commands to execute and returns them as a [`Batch`], or
    /// `None` once the device shuts down. The command worker's sleep.
    pub(crate) fn next_batch(&self) -> Option<Batch> {
        let mut regs = lock(&self.regs);
        loop {
            if regs.shutdown {
                return None;
            }
            if regs.queue_running() {
                if let Some(q) = regs.cq.filter(|q| q.tail != q.head) {
                    return Some(Batch {
                        gen: self.generation(),
                        base: q.base,
                        size: q.size,
                        head: q.head,
                        tail: q.tail,
                        completed: q.completed,
                    });
                }
            }
            regs = self
                .wake
                .wait(regs)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// `FL_REG_CONTROL` without `FL_CTRL_RESET` (the device carries out a reset itself).
    pub(crate) fn write_control(&self, val: u32) {
        lock(&self.regs).control = val & abi::CTRL_ENABLE;
    }

    /// Enters the error state (spec section 8) unless already in it: sets `FL_REG_ERROR`/`ERROR_INFO`
    /// and `FL_STATUS_ERROR`, stops the queue (new generation), writes `FL_WB_ERROR` if the writeback block
    /// is usable, and raises `FL_VEC_ERROR`.
    pub(crate) fn fail(&self, fx: &Effects<'_>, code: u32, info: u32) {
        self.dma.with(|mem| self.fail_in(fx, &mem, code, info));
    }

    fn fail_in(&self, fx: &Effects<'_>, mem: &Mem<'_>, code: u32, info: u32) {
        let mut regs = lock(&self.regs);
        if regs.error != abi::ERR_NONE {
            return;
        }
        regs.error = code;
        regs.error_info = info;
        self.bump(fx, &mut regs);
        let wb = match regs.cq {
            Some(q) => Some(q.wb),
            None => Some(regs.wb).filter(|&wb| wb_ok(mem, wb)),
        };
        drop(regs);
        warn!(
            "device error {code} (FL_ERR_{}), info {info:#x}; queue stopped until reset",
            error_name(code)
        );
        if let Some(wb) = wb {
            if let Err(e) = mem.store_u32(wb + abi::WB_ERROR, code) {
                warn!("cannot write FL_WB_ERROR at {wb:#x}: {e}");
            }
        }
        self.irq.signal(abi::VEC_ERROR);
    }

    /// [`Control::fail`] for a caller that does not hold the effects lock, only if the generation is
    /// still `gen` (the one the caller saw the failure in): an error is never blamed on the device a
    /// reset, queue disable or earlier error made since.
    pub(crate) fn raise_error(&self, gen: u64, code: u32, info: u32) {
        if let Some(fx) = self.effects(gen) {
            self.fail(&fx, code, info);
        }
    }

    /// Publishes the queue's progress: the `FL_REG_CQ_HEAD` mirror first (so a doorbell check never sees
    /// a head older than the driver's), then `FL_WB_COMPLETED` and `FL_WB_CQ_HEAD` with release stores
    /// (after every effect of the commands before `head`), then `FL_VEC_QUEUE` if `irq`.
    ///
    /// Returns false if the generation changed: the caller must abandon its batch.
    pub(crate) fn publish(&self, gen: u64, head: u32, completed: u64, irq: bool) -> bool {
        let Some(fx) = self.effects(gen) else {
            return false;
        };
        let wb = {
            let mut regs = lock(&self.regs);
            let Some(q) = regs.cq.as_mut() else {
                return false;
            };
            q.head = head;
            q.completed = completed;
            q.wb
        };
        let stored = self.dma.with(|mem| {
            mem.store_u64(wb + abi::WB_COMPLETED, completed)
                .and_then(|()| mem.store_u32(wb + abi::WB_CQ_HEAD, head))
        });
        if let Err(e) = stored {
            warn!("cannot write the writeback block at {wb:#x}: {e}");
            self.fail(&fx, abi::ERR_WB_CONFIG, head);
            return false;
        }
        if irq {
            self.irq.signal(abi::VEC_QUEUE);
        }
        true
    }

    /// `FL_REG_CQ_TAIL` doorbell: wakes the worker, or enters the error state for a tail beyond the ring.
    pub(crate) fn doorbell(&self, tail: u32) {
        let mut regs = lock(&self.regs);
        let running = regs.queue_running();
        let Some(q) = regs.cq.as_mut().filter(|_| running) else {
            debug!("CQ_TAIL {tail} ignored: queue not running");
            return;
        };
        if tail.wrapping_sub(q.head) > q.size {
            let (head, size) = (q.head, q.size);
            let gen = self.generation();
            drop(regs);
            warn!("CQ_TAIL {tail} beyond head {head} + size {size}");
            let fx = self.effects_now();
            if self.generation() == gen {
                self.fail(&fx, abi::ERR_BAD_TAIL, tail);
            }
            return;
        }
        q.tail = tail;
        drop(regs);
        self.wake.notify_one();
    }

    /// `FL_REG_CQ_CONTROL`: enables (after validating the ring and writeback block) or disables the queue.
    pub(crate) fn write_cq_control(&self, val: u32) {
        let enable = val & abi::CQ_CTRL_ENABLE != 0;
        // Only the socket thread enables or disables the queue: nothing to do needs no lock.
        if lock(&self.regs).cq.is_some() == enable {
            return;
        }
        let fx = self.effects_now();
        let mut regs = lock(&self.regs);
        match (regs.cq.is_some(), enable) {
            (false, true) => self.dma.with(|mem| self.enable_cq(&fx, regs, &mem)),
            (true, false) => {
                self.bump(&fx, &mut regs);
                regs.cq = None;
                info!("command queue disabled");
            }
            _ => {}
        }
    }

    fn enable_cq(&self, fx: &Effects<'_>, mut regs: MutexGuard<'_, Regs>, mem: &Mem<'_>) {
        if regs.error != abi::ERR_NONE {
            warn!("CQ enable ignored: device in error state, reset first");
            return;
        }
        let (base, size, wb) = (regs.cq_base, regs.cq_size, regs.wb);
        let code = ring_config_error(mem, base, size, wb, &CQ_RING);
        if code != abi::ERR_NONE {
            drop(regs);
            warn!("CQ enable: base {base:#x} size {size} writeback {wb:#x} rejected");
            self.fail_in(fx, mem, code, 0);
            return;
        }
        self.bump(fx, &mut regs);
        regs.cq = Some(QueueState {
            base,
            size,
            wb,
            head: 0,
            tail: 0,
            completed: 0,
        });
        drop(regs);
        info!("command queue enabled: base {base:#x} size {size} writeback {wb:#x}");
        let init = mem
            .store_u64(wb + abi::WB_COMPLETED, 0)
            .and_then(|()| mem.store_u32(wb + abi::WB_ERROR, 0))
            .and_then(|()| mem.store_u32(wb + abi::WB_CQ_HEAD, 0));
        if init.is_err() {
            self.fail_in(fx, mem, abi::ERR_WB_CONFIG, 0);
        }
    }

    /// `FL_REG_FR_CONTROL`: enables `ring` (after validating it and the writeback block) or disables it.
    /// Holds `regs` (not `effects`, which the worker holds across guest-memory accesses) so that an error
    /// entered meanwhile refuses the enable.
    pub(crate) fn write_fr_control(&self, val: u32, ring: &FaultRingHw) {
        let regs = lock(&self.regs);
        let enable = val & abi::FR_CTRL_ENABLE != 0;
        match (ring.view().enabled, enable) {
            (false, true) => self.dma.with(|mem| self.enable_fr(regs, &mem, ring)),
            (true, false) => {
                drop(regs);
                ring.disable();
                self.quiesce_fault_ring(ring);
                info!("fault ring disabled");
            }
            _ => {}
        }
    }

    fn enable_fr(&self, regs: MutexGuard<'_, Regs>, mem: &Mem<'_>, ring: &FaultRingHw) {
        if regs.error != abi::ERR_NONE {
            warn!("fault ring enable ignored: device in error state, reset first");
            return;
        }
        let (base, size, wb) = (regs.fr_base, regs.fr_size, regs.wb);
        let code = ring_config_error(mem, base, size, wb, &FAULT_RING);
        if code != abi::ERR_NONE {
            drop(regs);
            warn!("fault ring enable: base {base:#x} size {size} writeback {wb:#x} rejected");
            let fx = self.effects_now();
            self.fail_in(&fx, mem, code, 0);
            return;
        }
        if ring.enable(base, size, wb, regs.fr_irq_delay) {
            info!("fault ring enabled: base {base:#x} size {size}");
        }
    }
}

/// The geometry rules of one guest-memory ring and the error its misconfiguration reports.
struct RingKind {
    entry: u64,
    min: u32,
    max: u32,
    error: u32,
}

/// The command queue's rules (spec section 4).
const CQ_RING: RingKind = RingKind {
    entry: abi::CMD_SIZE,
    min: abi::CQ_MIN_ENTRIES,
    max: abi::CQ_MAX_ENTRIES,
    error: abi::ERR_CQ_CONFIG,
};

/// The fault ring's rules (spec section 5).
const FAULT_RING: RingKind = RingKind {
    entry: abi::FAULT_SIZE,
    min: abi::FR_MIN_ENTRIES,
    max: abi::FR_MAX_ENTRIES,
    error: abi::ERR_FR_CONFIG,
};

/// The error enabling a ring of `kind` at `base` with `size` entries and writeback block `wb` reports, or
/// `ERR_NONE` when both lie in guest memory with valid geometry.
fn ring_config_error(mem: &Mem<'_>, base: u64, size: u32, wb: u64, kind: &RingKind) -> u32 {
    if !ring_ok(mem, base, size, kind.entry, kind.min, kind.max) {
        kind.error
    } else if !wb_ok(mem, wb) {
        abi::ERR_WB_CONFIG
    } else {
        abi::ERR_NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    #[test]
    fn ring_checks() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mem = Mem {
            local: &mem,
            remote: None,
        };
        assert!(ring_ok(&mem, 0x1000, 64, abi::CMD_SIZE, 2, 65536));
        assert!(!ring_ok(&mem, 0x1040, 64, abi::CMD_SIZE, 2, 65536));
        assert!(!ring_ok(&mem, 0x1000, 48, abi::CMD_SIZE, 2, 65536));
        assert!(!ring_ok(&mem, 0x1000, 1, abi::CMD_SIZE, 2, 65536));
        assert!(!ring_ok(&mem, 0x1000, 1024, abi::CMD_SIZE, 2, 65536));
        assert!(wb_ok(&mem, 0xffc0));
        assert!(!wb_ok(&mem, 0xffe0));
        assert!(!wb_ok(&mem, 0x10000));
    }
}
