//! The fault ring in guest memory (spec section 5): `FL_REG_FR_*`, entry writes, the `FL_WB_FR_PUT` /
//! `FL_WB_FR_OVERFLOWS` writeback, and `FL_VEC_FAULT` arming with moderation.
//!
//! The producer logic (PUT, overflow, arming, moderation deadlines) is [`faultline_mmu::FaultRing`]; this
//! module puts it in guest memory. Everything happens under one mutex, [`FaultRingHw::state`], so entries
//! become visible in index order (rule 1), and a reset or disable that took the mutex has stopped every
//! later write to the old ring.
//!
//! Posting an entry (a lane, after registering its stall):
//! 1. [`FaultRing::post`] picks the slot, or counts an overflow (rule 2: the lane stays stalled and faults
//!    again on the next REPLAY);
//! 2. the body (bytes 0..0x1c) is written, then the info word with `FL_FAULT_VALID` by a release store;
//! 3. `FL_WB_FR_PUT` (or `FL_WB_FR_OVERFLOWS`) is written by a release store;
//! 4. vector 1 is raised now, or the moderation timer thread is told about the new deadline.
//!
//! A `FL_REG_FR_GET` doorbell re-arms the interrupt and raises it again at once (or after the moderation
//! delay) if `PUT != GET` (rule 4).
//!
//! If a ring write fails (the driver DMA-unmapped the ring after enabling it), the ring is disabled and the
//! poster makes the device enter the error state with `FL_ERR_FR_CONFIG`.
//!
//! The ring gets its handles at construction (guest memory, interrupts, the clock) and reports a failed
//! write to its caller, which raises the device error.
//!
//! Locks: `state` is the fault ring of the device's one lock order (`sync.rs`).

use std::sync::{Arc, Condvar, Mutex};
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
}

/// What the ring mutex protects.
#[derive(Debug, Default)]
struct State {
    active: Option<Active>,
    /// Overflows and high-water mark of rings disabled since the last reset.
    retired: Counters,
    /// The moderation timer thread must exit.
    shutdown: bool,
}

impl State {
    fn retire(&mut self) {
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

/// The device side of the fault ring.
pub(crate) struct FaultRingHw {
    dma: Dma,
    irq: Interrupts,
    clock: Arc<Clock>,
    state: Mutex<State>,
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
        st.active = Some(Active { base, wb, ring });
        true
    }

    /// Disables the ring (`FL_FR_CTRL_ENABLE` 1→0); its counters are kept until the next reset.
    pub(crate) fn disable(&self) {
        lock(&self.state).retire();
    }

    /// Device reset: ring disabled, counters cleared.
    pub(crate) fn reset(&self) {
        let mut st = lock(&self.state);
        st.active = None;
        st.retired = Counters::default();
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

    /// Posts `entry` (timestamp already set). See the module documentation for the order of writes.
    pub(crate) fn post(&self, entry: &FaultEntry) -> PostResult {
        self.dma.with(|mem| self.post_in(&mem, entry))
    }

    fn post_in(&self, mem: &Mem<'_>, entry: &FaultEntry) -> PostResult {
        let mut st = lock(&self.state);
        let Some(a) = st.active.as_mut() else {
            return PostResult::NoRing;
        };
        let outcome = a.ring.post(entry.timestamp);
        let written = match outcome {
            PostOutcome::Posted { slot, irq, .. } => {
                let gpa = a.base + FaultRing::slot_offset(slot);
                write_entry(mem, gpa, entry)
                    .and_then(|()| store_u32(mem, a.wb + abi::WB_FR_PUT, a.ring.put()))
                    .map(|()| (PostResult::Posted, irq))
            }
            PostOutcome::Overflow => {
                store_u32(mem, a.wb + abi::WB_FR_OVERFLOWS, a.ring.overflows() as u32)
                    .map(|()| (PostResult::Overflow, IrqAction::None))
            }
        };
        match written {
            Ok((result, irq)) => {
                self.act(irq);
                result
            }
            Err(gpa) => {
                warn!("fault ring write at {gpa:#x} failed; ring disabled");
                st.retire();
                PostResult::Failed
            }
        }
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
