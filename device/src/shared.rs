//! State shared by the socket thread (region accesses, resets) and the queue worker, and the rules that
//! keep a reset from racing the worker.
//!
//! # Locks
//!
//! Always taken in this order (a thread may skip any of them):
//!
//! 1. `effects` — held around every guest-visible side effect of the command worker (guest-memory writes,
//!    interrupts, MMU state changes, job submission) and around every change of the queue *generation*.
//!    Held for one short step at a time.
//! 2. `regs` — the register file; the worker's condition variable `wake` waits on it.
//! 3. the engine's reset lock, then its stall *gate* (`engines.rs`);
//! 4. the stall table (`faultline_mmu::StallTable`) and the fault ring's `writer`, then its `state`
//!    (`faults.rs`);
//! 5. the engine's job book and engine queues;
//! 6. `config` — configuration space;
//! 7. `msix` — MSI-X table, PBA and delivery.
//!
//! This is the only statement of the order; the other modules refer to it. Only `effects`, `regs` and
//! the engine's reset lock are ever held while waiting for a pinned lane, and lanes never take them
//! while pinned. Lane threads take the gate and what follows it, never while pinned (holding a
//! translation), and `effects` only to raise `FL_ERR_FR_CONFIG` while holding nothing else (with the
//! generation they read under the gate). The command worker waits for room for a job (outstanding-job
//! and digest limits) on the job book's condition variable holding no other lock. So a reset, which holds
//! `effects` while it waits for pinned lanes (`Engine::abort_all`), never waits for a lane that waits for
//! it: a pinned lane takes no lock and moves at most 64 KiB before unpinning.
//!
//! Guest memory the client serves (`remote.rs`) costs a message round trip per access, and the client
//! (QEMU) may not answer before the socket thread has replied to a region access it waits for, its own
//! global lock held. So **the socket thread never blocks on a lock held across such an access.** Device
//! threads access guest memory holding `effects` (worker steps; a lane's or the worker's error report),
//! the engine's gate, the fault ring's `writer` (posts) and the job book (completion records); never
//! `regs`, the fault ring's `state`, `config` or `msix`, which are all that region reads, BAR0 writes
//! other than the ones below, and the `FL_REG_FR_GET` doorbell take. The socket thread takes the former
//! only with client-served accesses suspended (`Shared::without_remote`, which fails those in flight
//! at once): resets always; `FL_REG_CQ_CONTROL`, `FL_ERR_BAD_TAIL` and a rejected fault-ring enable
//! take `effects`, and `FL_REG_FR_CONTROL` disable waits for `writer`, suspending only if the lock is
//! busy (`Shared::effects_now`, `Shared::quiesce_fault_ring`). Its own client-served writes are
//! queued without waiting, and its reads fail (`remote_dma.rs` in the server).
//!
//! # Generations
//!
//! `generation` changes (with both `effects` and `regs` held) whenever the queue's world changes under the
//! worker: device reset, queue enable/disable, entering the error state, shutdown. The worker snapshots the
//! generation with the queue configuration, and performs each side effect only through
//! [`Shared::effects`], which takes the effects lock and checks that the generation is unchanged. So once
//! a reset has returned, the worker can no longer write guest memory or raise an interrupt for the old
//! queue: it either finished its write before the reset took the lock, or it sees the new generation and
//! abandons the batch. A reset waits at most for one in-flight step of the worker and for pinned lanes,
//! never for a batch or a stalled job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, TryLockError};

use log::{debug, info, warn};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryMmap};

use faultline_mmu::Counters;

use crate::bar0::{Identity, QueueState, RegWrite, Regs};
use crate::engines::Engine;
use crate::faults::{Clock, FaultRingHw};
use crate::msix::Msix;
use crate::pci::ConfigSpace;
use crate::remote::{Mem, RemoteSlot};
use crate::stats::Stats;
use crate::{abi, GuestMem};

/// Ring base alignment (command queue and fault ring).
const RING_ALIGN: u64 = 4096;

/// Locks `m`, ignoring poisoning: every critical section leaves its data consistent, and a panic on one
/// thread must not take the socket thread down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Witness that the effects lock is held.
pub(crate) struct Effects<'a> {
    _guard: MutexGuard<'a, ()>,
}

/// Everything the device's threads share.
pub(crate) struct Shared {
    /// Identity registers.
    pub id: Identity,
    /// Guest memory (DMA-mapped regions).
    pub mem: GuestMem,
    /// Guest memory the client serves (regions mapped without a file descriptor).
    pub remote: RemoteSlot,
    effects: Mutex<()>,
    generation: AtomicU64,
    /// The register file.
    pub regs: Mutex<Regs>,
    /// Wakes the worker (doorbells, enable, shutdown); used with `regs`.
    pub wake: Condvar,
    /// Configuration space.
    pub config: Mutex<ConfigSpace>,
    /// MSI-X state and interrupt delivery.
    pub msix: Mutex<Msix>,
    /// Counters.
    pub stats: Stats,
    /// Region accesses refused for their width or alignment.
    pub bad_accesses: AtomicU64,
    /// Counters of the periods before earlier resets, for [`Shared::session_counters`].
    pub retired: Mutex<[u64; abi::STAT_COUNT as usize]>,
    /// Time since creation or reset (fault timestamps, moderation).
    pub clock: Clock,
    /// The fault ring.
    pub faults: FaultRingHw,
    /// MMU, stall table, engines and jobs.
    pub engine: Engine,
}

/// Whether `[base, base + len)` is entirely inside guest memory.
pub(crate) fn range_ok(mem: &GuestMemoryMmap, base: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    let Ok(count) = usize::try_from(len) else {
        return false;
    };
    base.checked_add(len - 1).is_some()
        && GuestMemoryBackend::check_range(mem, GuestAddress(base), count)
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

impl Shared {
    /// Shared state in its reset state.
    pub(crate) fn new(id: Identity, mem: GuestMem, msix: Msix, engine: Engine) -> Self {
        Shared {
            id,
            mem,
            remote: RemoteSlot::default(),
            effects: Mutex::new(()),
            generation: AtomicU64::new(0),
            regs: Mutex::new(Regs::default()),
            wake: Condvar::new(),
            config: Mutex::new(ConfigSpace::new()),
            msix: Mutex::new(msix),
            stats: Stats::new(),
            bad_accesses: AtomicU64::new(0),
            retired: Mutex::new([0; abi::STAT_COUNT as usize]),
            clock: Clock::new(),
            faults: FaultRingHw::default(),
            engine,
        }
    }

    /// The counter block of spec section 7 (index = `FL_STAT_*`), since the last reset.
    pub(crate) fn counters(&self) -> [u64; abi::STAT_COUNT as usize] {
        let own = self.stats.snapshot();
        let mut c = Counters {
            commands: own[abi::STAT_COMMANDS as usize],
            jobs: own[abi::STAT_JOBS as usize],
            ..Counters::default()
        };
        self.engine.add_counters(&mut c);
        self.faults.add_counters(&mut c);
        c.to_array()
    }

    /// The counters since the device was created: what resets cleared plus what is counted now. The ring
    /// high-water mark is the maximum over the periods, every other counter the sum.
    pub(crate) fn session_counters(&self) -> [u64; abi::STAT_COUNT as usize] {
        let now = self.counters();
        let retired = lock(&self.retired);
        merge_counters(&retired, &now)
    }

    /// Reads a BAR0 register.
    pub(crate) fn read_register(&self, offset: u64) -> u32 {
        let regs = lock(&self.regs);
        regs.read(offset, &self.id, self.faults.view())
    }

    /// The current queue generation (read it under `regs` to pair it with a queue snapshot).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Runs `f` on a snapshot of guest memory: the mapped regions and the client-served ones.
    pub(crate) fn with_mem<R>(&self, f: impl FnOnce(Mem<'_>) -> R) -> R {
        let local = self.mem.memory();
        let remote = self.remote.get();
        f(Mem::new(&local, remote.as_ref()))
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
            Err(TryLockError::WouldBlock) => self.without_remote(|| self.effects_any()),
        }
    }

    /// Stops the fault ring's writes to a ring just disabled (socket thread): waits for a poster still
    /// writing it, with client-served accesses suspended if one is (as in `Shared::effects_now`).
    fn quiesce_fault_ring(&self) {
        if !self.faults.writes_idle() {
            self.without_remote(|| self.faults.wait_writes());
        }
    }

    /// Takes the effects lock if the generation is still `gen`; `None` means the caller's queue is gone.
    pub(crate) fn effects(&self, gen: u64) -> Option<Effects<'_>> {
        let guard = lock(&self.effects);
        (self.generation.load(Ordering::Acquire) == gen).then_some(Effects { _guard: guard })
    }

    fn effects_any(&self) -> Effects<'_> {
        Effects {
            _guard: lock(&self.effects),
        }
    }

    /// Starts a new generation; the two references prove both locks are held.
    fn bump(&self, _fx: &Effects<'_>, _regs: &mut Regs) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Everything a reset of any kind does besides configuration space and MSI-X: new generation, registers
    /// and counters to defaults, fault ring disabled, clock restarted, jobs aborted, contexts unbound.
    fn reset_device(&self, fx: &Effects<'_>) {
        let before = self.counters();
        let mut regs = lock(&self.regs);
        self.bump(fx, &mut regs);
        regs.reset();
        self.faults.reset();
        self.faults.wait_writes();
        self.clock.restart();
        self.stats.clear();
        drop(regs);
        self.engine.abort_all(self);
        let mut retired = lock(&self.retired);
        *retired = merge_counters(&retired, &before);
    }

    /// `FL_CTRL_RESET`: queues disabled, registers and counters to defaults, jobs aborted, worker idle.
    /// Configuration space and MSI-X are untouched.
    pub(crate) fn reset_registers(&self) {
        self.without_remote(|| {
            let fx = self.effects_any();
            self.reset_device(&fx);
        });
        self.wake.notify_all();
    }

    /// Function reset (vfio-user DEVICE_RESET, PCIe FLR): registers, configuration space and MSI-X.
    pub(crate) fn reset_function(&self) {
        self.without_remote(|| {
            let fx = self.effects_any();
            self.reset_device(&fx);
            lock(&self.config).reset();
            lock(&self.msix).reset();
        });
        self.wake.notify_all();
    }

    /// Stops the worker for good.
    pub(crate) fn request_shutdown(&self) {
        // No resume: the device stops for good.
        if let Some(r) = self.remote.get() {
            r.suspend();
        }
        let fx = self.effects_any();
        let mut regs = lock(&self.regs);
        self.bump(&fx, &mut regs);
        regs.shutdown = true;
        drop(regs);
        drop(fx);
        self.wake.notify_all();
    }

    /// Enters the error state (spec section 8) unless already in it: sets `FL_REG_ERROR`/`ERROR_INFO`
    /// and `FL_STATUS_ERROR`, stops the queue (new generation), writes `FL_WB_ERROR` if the writeback block
    /// is usable, and raises `FL_VEC_ERROR`.
    pub(crate) fn fail(&self, fx: &Effects<'_>, code: u32, info: u32) {
        self.with_mem(|mem| self.fail_in(fx, &mem, code, info));
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
        lock(&self.msix).signal(abi::VEC_ERROR);
    }

    /// [`Shared::fail`] for a caller that does not hold the effects lock, only if the generation is
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
        let stored = self.with_mem(|mem| {
            mem.store_u64(wb + abi::WB_COMPLETED, completed)
                .and_then(|()| mem.store_u32(wb + abi::WB_CQ_HEAD, head))
        });
        if let Err(e) = stored {
            warn!("cannot write the writeback block at {wb:#x}: {e}");
            self.fail(&fx, abi::ERR_WB_CONFIG, head);
            return false;
        }
        if irq {
            lock(&self.msix).signal(abi::VEC_QUEUE);
        }
        true
    }

    /// Runs `f` (a reset) with client-served accesses failed and refused: a device thread may hold
    /// `effects` or a lane pin while it waits for the client's reply, and the client (QEMU) may be
    /// waiting, with its own lock held, for the very reply the caller (the socket thread) sends
    /// after the reset. Suspending first means the reset never waits for the client.
    fn without_remote<R>(&self, f: impl FnOnce() -> R) -> R {
        let remote = self.remote.get();
        if let Some(r) = &remote {
            r.suspend();
        }
        let out = f();
        if let Some(r) = &remote {
            r.resume();
        }
        out
    }

    /// Carries out a BAR0 register write (socket thread; never waits for the worker's batch).
    pub(crate) fn write_register(&self, offset: u64, val: u32) {
        let action = lock(&self.regs).write(offset, val);
        match action {
            None => {}
            Some(RegWrite::Control(v)) => self.write_control(v),
            Some(RegWrite::CqTail(tail)) => self.doorbell(tail),
            Some(RegWrite::CqControl(v)) => self.write_cq_control(v),
            Some(RegWrite::FrGet(get)) => self.faults.doorbell(self, get, self.clock.now_ns()),
            Some(RegWrite::FrIrqDelay(us)) => self.faults.set_delay(us),
            Some(RegWrite::FrControl(v)) => self.write_fr_control(v),
        }
    }

    fn write_control(&self, val: u32) {
        if val & abi::CTRL_RESET != 0 {
            info!("FL_CTRL_RESET: device registers reset");
            self.reset_registers();
            return;
        }
        lock(&self.regs).control = val & abi::CTRL_ENABLE;
    }

    fn doorbell(&self, tail: u32) {
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

    fn write_cq_control(&self, val: u32) {
        let enable = val & abi::CQ_CTRL_ENABLE != 0;
        // Only this (socket) thread enables or disables the queue: nothing to do needs no lock.
        if lock(&self.regs).cq.is_some() == enable {
            return;
        }
        let fx = self.effects_now();
        let mut regs = lock(&self.regs);
        match (regs.cq.is_some(), enable) {
            (false, true) => {
                if regs.error != abi::ERR_NONE {
                    warn!("CQ enable ignored: device in error state, reset first");
                    return;
                }
                let local = self.mem.memory();
                let remote = self.remote.get();
                let mem = Mem::new(&local, remote.as_ref());
                let (base, size, wb) = (regs.cq_base, regs.cq_size, regs.wb);
                let code = ring_config_error(&mem, base, size, wb, &CQ_RING);
                if code != abi::ERR_NONE {
                    drop(regs);
                    warn!("CQ enable: base {base:#x} size {size} writeback {wb:#x} rejected");
                    self.fail_in(&fx, &mem, code, 0);
                    return;
                }
                self.bump(&fx, &mut regs);
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
                    self.fail_in(&fx, &mem, abi::ERR_WB_CONFIG, 0);
                }
            }
            (true, false) => {
                self.bump(&fx, &mut regs);
                regs.cq = None;
                info!("command queue disabled");
            }
            _ => {}
        }
    }

    /// `FL_REG_FR_CONTROL`; holds `regs` (not `effects`, which the worker holds across guest-memory
    /// accesses) so that an error entered meanwhile refuses the enable.
    fn write_fr_control(&self, val: u32) {
        let regs = lock(&self.regs);
        let enable = val & abi::FR_CTRL_ENABLE != 0;
        match (self.faults.view().enabled, enable) {
            (false, true) => {
                if regs.error != abi::ERR_NONE {
                    warn!("fault ring enable ignored: device in error state, reset first");
                    return;
                }
                let local = self.mem.memory();
                let remote = self.remote.get();
                let mem = Mem::new(&local, remote.as_ref());
                let (base, size, wb) = (regs.fr_base, regs.fr_size, regs.wb);
                let code = ring_config_error(&mem, base, size, wb, &FAULT_RING);
                if code != abi::ERR_NONE {
                    drop(regs);
                    warn!(
                        "fault ring enable: base {base:#x} size {size} writeback {wb:#x} rejected"
                    );
                    let fx = self.effects_now();
                    self.fail_in(&fx, &mem, code, 0);
                    return;
                }
                if self.faults.enable(base, size, wb, regs.fr_irq_delay) {
                    info!("fault ring enabled: base {base:#x} size {size}");
                }
            }
            (true, false) => {
                drop(regs);
                self.faults.disable();
                self.quiesce_fault_ring();
                info!("fault ring disabled");
            }
            _ => {}
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

/// Combines the counters of two periods: the ring high-water mark is the maximum, the rest add up.
fn merge_counters(
    a: &[u64; abi::STAT_COUNT as usize],
    b: &[u64; abi::STAT_COUNT as usize],
) -> [u64; abi::STAT_COUNT as usize] {
    std::array::from_fn(|i| {
        if i == abi::STAT_RING_HIGH_WATER as usize {
            a[i].max(b[i])
        } else {
            a[i].saturating_add(b[i])
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x20000), 0x1000),
        ])
        .unwrap();
        assert!(range_ok(&mem, 0, 0x10000));
        assert!(!range_ok(&mem, 0, 0x10001));
        assert!(!range_ok(&mem, 0xf000, 0x11001), "spans a hole");
        assert!(range_ok(&mem, 0x20000, 0x1000));
        assert!(!range_ok(&mem, u64::MAX, 2));
        assert!(!range_ok(&mem, 0x30000, 1));
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

    #[test]
    fn merged_counters_add_up_except_the_high_water_mark() {
        let mut a = [0u64; abi::STAT_COUNT as usize];
        let mut b = [0u64; abi::STAT_COUNT as usize];
        a[abi::STAT_COMMANDS as usize] = 3;
        b[abi::STAT_COMMANDS as usize] = 4;
        a[abi::STAT_RING_HIGH_WATER as usize] = 7;
        b[abi::STAT_RING_HIGH_WATER as usize] = 5;
        b[abi::STAT_JOBS as usize] = u64::MAX;
        a[abi::STAT_JOBS as usize] = 1;
        let m = merge_counters(&a, &b);
        assert_eq!(m[abi::STAT_COMMANDS as usize], 7);
        assert_eq!(m[abi::STAT_RING_HIGH_WATER as usize], 7);
        assert_eq!(m[abi::STAT_JOBS as usize], u64::MAX);
    }
}
