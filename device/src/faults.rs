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
//! Locks: `state` is the fault ring of the device's one lock order, stated in `shared.rs` (# Locks).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use faultline_mmu::{fault, Counters, FaultEntry, FaultRing, IrqAction, PostOutcome};
use log::{debug, warn};
use vm_memory::GuestAddressSpace;

use crate::remote::Mem;

use crate::abi;
use crate::shared::{lock, Shared};

/// Nanoseconds since the device was created or last reset: the fault timestamps and moderation deadlines.
#[derive(Debug)]
pub(crate) struct Clock {
    created: Instant,
    offset_ns: AtomicU64,
}

impl Clock {
    /// A clock reading 0 now.
    pub(crate) fn new() -> Self {
        Clock {
            created: Instant::now(),
            offset_ns: AtomicU64::new(0),
        }
    }

    fn raw_ns(&self) -> u64 {
        u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Nanoseconds since the last [`Clock::restart`].
    pub(crate) fn now_ns(&self) -> u64 {
        self.raw_ns()
            .saturating_sub(self.offset_ns.load(Ordering::Relaxed))
    }

    /// Starts counting from 0 again (device reset).
    pub(crate) fn restart(&self) {
        self.offset_ns.store(self.raw_ns(), Ordering::Relaxed);
    }
}

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

/// The register view of the ring, for BAR0 reads.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RingView {
    /// `FL_FR_CTRL_ENABLE` / `FL_STATUS_FAULT_RING_ENABLED`.
    pub enabled: bool,
    /// `FL_REG_FR_PUT`.
    pub put: u32,
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
    /// ([`Shared::raise_error`]) once it holds no engine lock.
    Failed,
}

/// The device side of the fault ring.
#[derive(Debug, Default)]
pub(crate) struct FaultRingHw {
    state: Mutex<State>,
    /// Wakes the moderation timer thread (new deadline, shutdown); used with `state`.
    timer: Condvar,
}

impl FaultRingHw {
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

    /// `FL_REG_FR_GET` doorbell at `now_ns`: records GET, re-arms, and signals if entries are pending.
    pub(crate) fn doorbell(&self, shared: &Shared, get: u32, now_ns: u64) {
        if crate::trace::enabled() {
            crate::trace::get_doorbell(get);
        }
        let mut st = lock(&self.state);
        let Some(a) = st.active.as_mut() else {
            debug!("FR_GET {get} ignored: fault ring disabled");
            return;
        };
        match a.ring.on_get_write(get, now_ns) {
            Ok(action) => self.act(shared, action),
            Err(e) => debug!("FR_GET ignored: {e}"),
        }
    }

    fn act(&self, shared: &Shared, action: IrqAction) {
        match action {
            IrqAction::None => {}
            IrqAction::Now => lock(&shared.msix).signal(abi::VEC_FAULT),
            IrqAction::At(_) => self.timer.notify_one(),
        }
    }

    /// Posts `entry` (timestamp already set). See the module documentation for the order of writes.
    pub(crate) fn post(&self, shared: &Shared, entry: &FaultEntry) -> PostResult {
        let mut st = lock(&self.state);
        let Some(a) = st.active.as_mut() else {
            return PostResult::NoRing;
        };
        let local = shared.mem.memory();
        let remote = shared.remote.get();
        let mem = Mem::new(&local, remote.as_ref());
        let outcome = a.ring.post(entry.timestamp);
        let written = match outcome {
            PostOutcome::Posted { slot, irq, .. } => {
                let gpa = a.base + FaultRing::slot_offset(slot);
                write_entry(&mem, gpa, entry)
                    .and_then(|()| store_u32(&mem, a.wb + abi::WB_FR_PUT, a.ring.put()))
                    .map(|()| (PostResult::Posted, irq))
            }
            PostOutcome::Overflow => {
                store_u32(&mem, a.wb + abi::WB_FR_OVERFLOWS, a.ring.overflows() as u32)
                    .map(|()| (PostResult::Overflow, IrqAction::None))
            }
        };
        match written {
            Ok((result, irq)) => {
                self.act(shared, irq);
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
    pub(crate) fn timer_thread(shared: &Shared) {
        let hw = &shared.faults;
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
            let now = shared.clock.now_ns();
            if now >= deadline {
                if let Some(a) = st.active.as_mut() {
                    if a.ring.poll_irq(now) {
                        lock(&shared.msix).signal(abi::VEC_FAULT);
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
