//! The fault ring (spec section 5): the device-side producer model and a consumer-side decoder.
//!
//! [`FaultRing`] is plain state (`&mut self`): the device keeps it under the lock it holds while it writes an
//! entry, so entries become visible in index order (rule 1). Posting a fault is:
//! 1. [`FaultRing::post`] → the slot, or an overflow (rule 2: the entry is dropped, the lane stays stalled);
//! 2. write [`FaultEntry::encode_body`] at [`FaultRing::slot_offset`], then the info word
//!    ([`FaultEntry::info`], with `FL_FAULT_VALID`) with release ordering;
//! 3. write the new PUT to `FL_WB_FR_PUT` (and the overflow count to `FL_WB_FR_OVERFLOWS`);
//! 4. act on the returned [`IrqAction`] (signal vector 1 now, or arm a timer for the moderation deadline and call
//!    [`FaultRing::poll_irq`] when it expires).
//!
//! Interrupt rule (rule 4): the interrupt is *armed* initially and by every write of `FL_REG_FR_GET`; whenever it
//! is armed and `PUT != GET`, a signal is scheduled `irq_delay` after that moment (at once if the delay is 0);
//! signalling disarms it. A moderation deadline that finds `PUT == GET` (the driver drained the ring by polling)
//! does not signal and leaves the interrupt armed. So a pending entry always has a signal on its way once the
//! driver re-arms (never stranded), and at most one signal is raised per GET write (never a storm).

use crate::fault::{DecodeError, FaultEntry, FAULT_SIZE};
use crate::stats::Counters;

/// Smallest ring (entries).
pub const FR_MIN_ENTRIES: u32 = 2;
/// Largest ring (entries).
pub const FR_MAX_ENTRIES: u32 = 65536;
/// Largest moderation delay (µs).
pub const FR_IRQ_DELAY_MAX_US: u32 = 10_000;

/// A refused ring configuration or doorbell value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The size is not a power of two in 2..=65536.
    #[error("fault ring size {0} is not a power of two in 2..=65536")]
    BadSize(u32),
    /// The moderation delay is above 10000 µs.
    #[error("fault interrupt delay {0} µs above the maximum")]
    BadDelay(u32),
    /// A GET doorbell that would move GET backwards or past PUT; it is ignored.
    #[error("fault ring GET {get} outside [{old_get}, {put}]")]
    BadGet {
        /// The value written.
        get: u32,
        /// GET before the write.
        old_get: u32,
        /// Current PUT.
        put: u32,
    },
}

/// What the device must do about vector 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqAction {
    /// Nothing (not armed, nothing pending, or a deadline is already scheduled).
    None,
    /// Signal vector 1 now (after the entry and PUT are visible).
    Now,
    /// Call [`FaultRing::poll_irq`] at this time (ns, the device's clock) and signal if it says so.
    At(u64),
}

/// Result of [`FaultRing::post`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostOutcome {
    /// The entry goes to `slot` (free-running index `index`).
    Posted {
        /// Free-running index of the entry (PUT before the post).
        index: u32,
        /// Slot in the ring (`index & (size - 1)`).
        slot: u32,
        /// Interrupt action, to take after the entry and PUT are written.
        irq: IrqAction,
    },
    /// The ring is full: the entry is dropped and counted.
    Overflow,
}

/// Device-side fault-ring state: PUT, the driver's GET, overflows, interrupt arming and moderation.
#[derive(Debug, Clone)]
pub struct FaultRing {
    size: u32,
    put: u32,
    get: u32,
    overflows: u64,
    posted: u64,
    high_water: u32,
    armed: bool,
    irq_delay_ns: u64,
    deadline: Option<u64>,
}

impl FaultRing {
    /// A freshly enabled ring (GET = PUT = 0, interrupt armed) of `size` entries with `irq_delay_us` of
    /// interrupt moderation.
    pub fn new(size: u32, irq_delay_us: u32) -> Result<FaultRing, RingError> {
        if !size.is_power_of_two() || !(FR_MIN_ENTRIES..=FR_MAX_ENTRIES).contains(&size) {
            return Err(RingError::BadSize(size));
        }
        let mut r = FaultRing {
            size,
            put: 0,
            get: 0,
            overflows: 0,
            posted: 0,
            high_water: 0,
            armed: true,
            irq_delay_ns: 0,
            deadline: None,
        };
        r.set_irq_delay(irq_delay_us)?;
        Ok(r)
    }

    /// Changes the moderation delay (µs, at most 10000); applies to signals scheduled from now on.
    pub fn set_irq_delay(&mut self, us: u32) -> Result<(), RingError> {
        if us > FR_IRQ_DELAY_MAX_US {
            return Err(RingError::BadDelay(us));
        }
        self.irq_delay_ns = u64::from(us) * 1000;
        Ok(())
    }

    /// Entries.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Free-running PUT (the value for `FL_WB_FR_PUT` / `FL_REG_FR_PUT`).
    pub fn put(&self) -> u32 {
        self.put
    }

    /// Free-running GET, as last written by the driver.
    pub fn get(&self) -> u32 {
        self.get
    }

    /// Entries posted and not yet consumed (`PUT - GET`).
    pub fn pending(&self) -> u32 {
        self.put.wrapping_sub(self.get)
    }

    /// Whether the ring is full.
    pub fn is_full(&self) -> bool {
        self.pending() == self.size
    }

    /// Faults dropped since the ring was enabled (the value for `FL_WB_FR_OVERFLOWS`, which wraps at 2^32).
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// Entries posted since the ring was enabled.
    pub fn posted(&self) -> u64 {
        self.posted
    }

    /// Largest `PUT - GET` seen.
    pub fn high_water(&self) -> u32 {
        self.high_water
    }

    /// Whether the fault interrupt is armed.
    pub fn is_armed(&self) -> bool {
        self.armed
    }

    /// The pending moderation deadline, if any.
    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    /// Byte offset of `slot` from the ring base.
    pub fn slot_offset(slot: u32) -> u64 {
        u64::from(slot) * FAULT_SIZE
    }

    /// Reserves the next slot for a fault taken at `now_ns`, or counts an overflow if the ring is full.
    pub fn post(&mut self, now_ns: u64) -> PostOutcome {
        if self.is_full() {
            self.overflows += 1;
            return PostOutcome::Overflow;
        }
        let index = self.put;
        self.put = self.put.wrapping_add(1);
        self.posted += 1;
        self.high_water = self.high_water.max(self.pending());
        PostOutcome::Posted {
            index,
            slot: index & (self.size - 1),
            irq: self.kick(now_ns),
        }
    }

    /// The driver wrote `get` to `FL_REG_FR_GET` at `now_ns`: records it, re-arms the interrupt and says whether
    /// to signal (entries still pending). A GET that moves backwards or past PUT is refused and ignored.
    pub fn on_get_write(&mut self, get: u32, now_ns: u64) -> Result<IrqAction, RingError> {
        if get.wrapping_sub(self.get) > self.put.wrapping_sub(self.get) {
            return Err(RingError::BadGet {
                get,
                old_get: self.get,
                put: self.put,
            });
        }
        self.get = get;
        self.armed = true;
        Ok(self.kick(now_ns))
    }

    /// The moderation timer expired at `now_ns`: returns true if vector 1 must be signalled now (which disarms).
    pub fn poll_irq(&mut self, now_ns: u64) -> bool {
        match self.deadline {
            Some(d) if now_ns >= d => {
                self.deadline = None;
                if self.armed && self.pending() != 0 {
                    self.armed = false;
                    true
                } else {
                    false
                }
            }
            _ => false,
        }
    }

    fn kick(&mut self, now_ns: u64) -> IrqAction {
        if !self.armed || self.pending() == 0 || self.deadline.is_some() {
            return IrqAction::None;
        }
        if self.irq_delay_ns == 0 {
            self.armed = false;
            return IrqAction::Now;
        }
        let d = now_ns.saturating_add(self.irq_delay_ns);
        self.deadline = Some(d);
        IrqAction::At(d)
    }

    /// Adds the ring's counters (overflows, high-water mark) into `c`.
    pub fn add_counters(&self, c: &mut Counters) {
        c.fault_overflows += self.overflows;
        c.ring_high_water = c.ring_high_water.max(u64::from(self.high_water));
    }
}

/// The driver side of the ring, for the host simulator and tests: follows GET and decodes entries.
#[derive(Debug, Clone)]
pub struct RingConsumer {
    size: u32,
    get: u32,
}

impl RingConsumer {
    /// A consumer for a freshly enabled ring of `size` entries.
    pub fn new(size: u32) -> Result<RingConsumer, RingError> {
        if !size.is_power_of_two() || !(FR_MIN_ENTRIES..=FR_MAX_ENTRIES).contains(&size) {
            return Err(RingError::BadSize(size));
        }
        Ok(RingConsumer { size, get: 0 })
    }

    /// Free-running GET (the value to write to `FL_REG_FR_GET`).
    pub fn get(&self) -> u32 {
        self.get
    }

    /// The slot to read next.
    pub fn slot(&self) -> u32 {
        self.get & (self.size - 1)
    }

    /// Offers the 32 bytes read at [`RingConsumer::slot`]. If the entry is valid it is returned and GET advances;
    /// the caller must then clear `FL_FAULT_VALID` in that slot. `Ok(None)`: nothing new yet.
    pub fn pop(
        &mut self,
        bytes: &[u8; FAULT_SIZE as usize],
    ) -> Result<Option<FaultEntry>, DecodeError> {
        let e = FaultEntry::decode(bytes)?;
        if e.is_some() {
            self.get = self.get.wrapping_add(1);
        }
        Ok(e)
    }
}
