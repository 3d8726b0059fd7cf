//! The fault ring in guest memory (spec section 5): `FL_REG_FR_*`, entry writes, the `FL_WB_FR_PUT` /
//! `FL_WB_FR_OVERFLOWS` writeback, and `FL_VEC_FAULT` arming with moderation.
//!
//! The producer logic (PUT, overflow, arming, moderation deadlines) is [`faultline_mmu::FaultRing`]; this
//! module puts it in guest memory. Two mutexes:
//! - [`FaultRingHw::state`] holds the ring's registers and the producer model. It is only ever held for
//!   bookkeeping, never across a guest-memory access: with memory the client serves, an access is a
//!   message round trip, and the socket thread takes `state` for every BAR0 register read and for the
//!   `FL_REG_FR_GET` doorbell.
//! - [`FaultRingHw::writer`] serialises the posters' guest-memory writes, so entries become visible in
//!   index order (rule 1). The socket thread takes it only to stop ring writes (reset, disable), with
//!   client-served accesses suspended if a poster holds it (see `Control::quiesce_fault_ring`).
//!
//! Posting an entry (a lane, after registering its stall), with `writer` held throughout:
//! 1. under `state`: the slot is the model's PUT if the ring is not full; if it is full, [`FaultRing::post`]
//!    counts an overflow (rule 2: the lane stays stalled and faults again on the next REPLAY);
//! 2. without `state`: the body (bytes 0..0x1c) is written, then the info word with `FL_FAULT_VALID` by a
//!    release store, then `FL_WB_FR_PUT` = slot index + 1 (or `FL_WB_FR_OVERFLOWS`) by a release store;
//! 3. under `state`, if the ring was not disabled or replaced meanwhile (its *epoch* is unchanged):
//!    [`FaultRing::post`] advances the model's PUT, and vector 1 is raised now, or the moderation timer
//!    thread is told about the new deadline.
//!
//! So the PUT that `FL_REG_FR_PUT`, the doorbell and the timer see is always one already written back: an
//! interrupt never announces an entry the driver cannot see yet. A driver may consume the entry between
//! steps 2 and 3: its `FL_REG_FR_GET` for the PUT being written is applied in step 3.
//!
//! A `FL_REG_FR_GET` doorbell re-arms the interrupt and raises it again at once (or after the moderation
//! delay) if `PUT != GET` (rule 4).
//!
//! Disabling or resetting the ring changes its epoch under `state`, then waits for `writer`: once it
//! returns, no write to the old ring follows. A poster whose ring was disabled meanwhile drops its fault
//! (as if no ring were enabled: the lane stays stalled), even if its writes failed. If a ring write fails
//! while its ring is still enabled (the driver DMA-unmapped the ring after enabling it), the ring is
//! disabled and the poster makes the device enter the error state with `FL_ERR_FR_CONFIG`.
//!
//! The ring gets its handles at construction (guest memory, interrupts, the clock) and reports a failed
//! write to its caller, which raises the device error.
//!
//! Locks: `writer`, then `state`, are the fault ring of the device's one lock order (`sync.rs`).

use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::time::Duration;

use faultline_mmu::{fault, Counters, FaultEntry, FaultRing, IrqAction, PostOutcome};
use log::{debug, warn};

use crate::abi;
use crate::clock::Clock;
use crate::dma::{Dma, Mem};
use crate::pci::Interrupts;
use crate::regs::RingView;
use crate::sync::lock;

/// An enabled ring: where it is, and its producer state.
#[derive(Debug)]
struct Active {
    base: u64,
    wb: u64,
    ring: FaultRing,
    /// The `FL_WB_FR_PUT` a poster is writing (step 2) before the model's PUT follows (step 3).
    writing: Option<u32>,
    /// A `FL_REG_FR_GET` equal to `writing` (the driver saw that PUT already): applied in step 3.
    early_get: Option<u32>,
}

/// What the ring mutex protects.
#[derive(Debug, Default)]
struct State {
    active: Option<Active>,
    /// Overflows and high-water mark of rings disabled since the last reset.
    retired: Counters,
    /// Changes whenever `active` is replaced (enable, disable, failure, reset): a poster's writes count
    /// only if the epoch it reserved its slot in is still current.
    epoch: u64,
    /// The moderation timer thread must exit.
    shutdown: bool,
}

impl State {
    fn retire(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        if let Some(a) = self.active.take() {
            a.ring.add_counters(&mut self.retired);
        }
    }
}

/// Why a fault was not put in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PostResult {
    /// The entry is in the ring.
    Posted,
    /// The ring was full: counted in `FL_WB_FR_OVERFLOWS`.
    Overflow,
    /// No ring is enabled: the fault is dropped (the lane stays stalled, as on overflow).
    NoRing,
    /// The ring could not be written and is now disabled; the caller must raise `FL_ERR_FR_CONFIG`
    /// once it holds no engine lock.
    Failed,
}

/// Where a poster writes, decided under `state` (step 1 of the module documentation).
enum Reserved {
    /// Entry index `index` goes to `gpa`, then `index + 1` to `FL_WB_FR_PUT` at `put_wb`.
    Entry { gpa: u64, index: u32, put_wb: u64 },
    /// The ring was full: the overflow count `count` goes to `FL_WB_FR_OVERFLOWS` at `wb`.
    Overflow { wb: u64, count: u32 },
}

/// The device side of the fault ring.
pub(crate) struct FaultRingHw {
    dma: Dma,
    irq: Interrupts,
    clock: Arc<Clock>,
    state: Mutex<State>,
    /// Held by a poster across its guest-memory writes (see the module documentation).
    writer: Mutex<()>,
    /// Wakes the moderation timer thread (new deadline, shutdown); used with `state`.
    timer: Condvar,
}

impl FaultRingHw {
    /// A disabled ring writing through `dma`, signalling through `irq`, timed by `clock`.
    pub(crate) fn new(dma: Dma, irq: Interrupts, clock: Arc<Clock>) -> Self {
        FaultRingHw {
            dma,
            irq,
            clock,
            state: Mutex::default(),
            writer: Mutex::new(()),
            timer: Condvar::new(),
        }
    }

    /// Enables a ring the caller validated (`FL_FR_CTRL_ENABLE` 0→1): GET = PUT = 0, interrupt armed.
    /// Returns false if the model refuses the size (never for a validated ring).
    pub(crate) fn enable(&self, base: u64, size: u32, wb: u64, delay_us: u32) -> bool {
        let ring = match FaultRing::new(size, delay_us.min(abi::FR_IRQ_DELAY_MAX)) {
            Ok(r) => r,
            Err(e) => {
                warn!("fault ring: {e}");
                return false;
            }
        };
        let mut st = lock(&self.state);
        st.retire();
        st.active = Some(Active {
            base,
            wb,
            ring,
            writing: None,
            early_get: None,
        });
        true
    }

    /// Disables the ring (`FL_FR_CTRL_ENABLE` 1→0); its counters are kept until the next reset. Posts
    /// already writing may still write the old ring until [`FaultRingHw::wait_writes`] returns.
    pub(crate) fn disable(&self) {
        lock(&self.state).retire();
    }

    /// Device reset: ring disabled, counters cleared. As for [`FaultRingHw::disable`], follow with
    /// [`FaultRingHw::wait_writes`].
    pub(crate) fn reset(&self) {
        let mut st = lock(&self.state);
        st.retire();
        st.retired = Counters::default();
    }

    /// Waits until no poster is writing a ring disabled before this call: then no write to such a ring
    /// follows. A poster's client-served write may wait for the client; see `Control::quiesce_fault_ring`.
    pub(crate) fn wait_writes(&self) {
        drop(lock(&self.writer));
    }

    /// [`FaultRingHw::wait_writes`] if no poster is writing now; false if one is.
    pub(crate) fn writes_idle(&self) -> bool {
        !matches!(self.writer.try_lock(), Err(TryLockError::WouldBlock))
    }

    /// Register view for BAR0 reads.
    pub(crate) fn view(&self) -> RingView {
        lock(&self.state)
            .active
            .as_ref()
            .map_or(RingView::default(), |a| RingView {
                enabled: true,
                put: a.ring.put(),
            })
    }

    /// Adds overflows and the high-water mark (current and retired rings) into `c`.
    pub(crate) fn add_counters(&self, c: &mut Counters) {
        let st = lock(&self.state);
        c.fault_overflows += st.retired.fault_overflows;
        c.ring_high_water = c.ring_high_water.max(st.retired.ring_high_water);
        if let Some(a) = &st.active {
            a.ring.add_counters(c);
        }
    }

    /// `FL_REG_FR_IRQ_DELAY` written (already clamped).
    pub(crate) fn set_delay(&self, us: u32) {
        if let Some(a) = lock(&self.state).active.as_mut() {
            if let Err(e) = a.ring.set_irq_delay(us) {
                debug!("fault ring: {e}");
            }
        }
    }

    /// `FL_REG_FR_GET` doorbell: records GET, re-arms, and signals if entries are pending.
    pub(crate) fn doorbell(&self, get: u32) {
        let now_ns = self.clock.now_ns();
        if crate::trace::enabled() {
            crate::trace::get_doorbell(get);
        }
        let mut st = lock(&self.state);
        let Some(a) = st.active.as_mut() else {
            debug!("FR_GET {get} ignored: fault ring disabled");
            return;
        };
        if a.writing == Some(get) && a.ring.put() != get {
            a.early_get = Some(get);
            return;
        }
        match a.ring.on_get_write(get, now_ns) {
            Ok(action) => self.act(action),
            Err(e) => debug!("FR_GET ignored: {e}"),
        }
    }

    fn act(&self, action: IrqAction) {
        match action {
            IrqAction::None => {}
            IrqAction::Now => self.irq.signal(abi::VEC_FAULT),
            IrqAction::At(_) => self.timer.notify_one(),
        }
    }

    /// Posts `entry` (timestamp already set). See the module documentation for the steps.
    pub(crate) fn post(&self, entry: &FaultEntry) -> PostResult {
        let _writer = lock(&self.writer);
        let (reserved, epoch) = {
            let mut st = lock(&self.state);
            let epoch = st.epoch;
            let Some(a) = st.active.as_mut() else {
                return PostResult::NoRing;
            };
            let reserved = if a.ring.is_full() {
                // Counts the overflow (the model's PUT does not move).
                let outcome = a.ring.post(entry.timestamp);
                debug_assert!(matches!(outcome, PostOutcome::Overflow));
                Reserved::Overflow {
                    wb: a.wb + abi::WB_FR_OVERFLOWS,
                    count: a.ring.overflows() as u32,
                }
            } else {
                let index = a.ring.put();
                a.writing = Some(index.wrapping_add(1));
                Reserved::Entry {
                    gpa: a.base + FaultRing::slot_offset(index & (a.ring.size() - 1)),
                    index,
                    put_wb: a.wb + abi::WB_FR_PUT,
                }
            };
            (reserved, epoch)
        };
        let written = self.dma.with(|mem| match reserved {
            Reserved::Entry { gpa, index, put_wb } => write_entry(&mem, gpa, entry)
                .and_then(|()| store_u32(&mem, put_wb, index.wrapping_add(1))),
            Reserved::Overflow { wb, count } => store_u32(&mem, wb, count),
        });
        let mut st = lock(&self.state);
        if st.epoch != epoch {
            debug!("fault ring disabled while an entry was written; fault dropped");
            return PostResult::NoRing;
        }
        if let Err(gpa) = written {
            warn!("fault ring write at {gpa:#x} failed; ring disabled");
            st.retire();
            return PostResult::Failed;
        }
        let Some(a) = st.active.as_mut() else {
            return PostResult::NoRing;
        };
        a.writing = None;
        let early_get = a.early_get.take();
        let result = match reserved {
            Reserved::Overflow { .. } => PostResult::Overflow,
            // GET only moves forward and PUT only here, under `writer`: the slot is still free.
            Reserved::Entry { index, .. } => match a.ring.post(entry.timestamp) {
                PostOutcome::Posted { index: i, irq, .. } => {
                    debug_assert_eq!(i, index);
                    self.act(irq);
                    PostResult::Posted
                }
                PostOutcome::Overflow => {
                    warn!("fault ring: slot {index} taken meanwhile");
                    PostResult::Overflow
                }
            },
        };
        if let Some(get) = early_get {
            match a.ring.on_get_write(get, self.clock.now_ns()) {
                Ok(action) => self.act(action),
                Err(e) => debug!("FR_GET ignored: {e}"),
            }
        }
        result
    }

    /// Asks the moderation timer thread to exit.
    pub(crate) fn shutdown(&self) {
        lock(&self.state).shutdown = true;
        self.timer.notify_all();
    }

    /// The moderation timer thread: raises vector 1 when a moderation deadline expires with entries pending
    /// and the interrupt still armed.
    pub(crate) fn timer_thread(&self) {
        let hw = self;
        let mut st = lock(&hw.state);
        loop {
            if st.shutdown {
                return;
            }
            let deadline = st.active.as_ref().and_then(|a| a.ring.deadline());
            let Some(deadline) = deadline else {
                st = hw
                    .timer
                    .wait(st)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            };
            let now = self.clock.now_ns();
            if now >= deadline {
                if let Some(a) = st.active.as_mut() {
                    if a.ring.poll_irq(now) {
                        self.irq.signal(abi::VEC_FAULT);
                    }
                }
                continue;
            }
            st = hw
                .timer
                .wait_timeout(st, Duration::from_nanos(deadline - now))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// Writes the body of `entry` at `gpa`, then its info word with release order. `Err` carries the GPA.
fn write_entry(mem: &Mem<'_>, gpa: u64, entry: &FaultEntry) -> Result<(), u64> {
    mem.write(gpa, &entry.encode_body()).map_err(|_| gpa)?;
    store_u32(mem, gpa + fault::FAULT_OFF_INFO, entry.info())
}

fn store_u32(mem: &Mem<'_>, gpa: u64, val: u32) -> Result<(), u64> {
    mem.store_u32(gpa, val).map_err(|_| gpa)
}
