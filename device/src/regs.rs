//! BAR0: the register file of spec section 2.
//!
//! This module only holds register state and decodes offsets. Registers whose writes have side effects
//! (reset, queue enable, doorbells) are handed back to the device as a [`RegWrite`] so that it can apply
//! them under the right locks (see `sync.rs`). The fault ring keeps its own state and shows it here as a
//! [`RingView`].

use crate::abi;

/// The register view of the fault ring, for BAR0 reads.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RingView {
    /// `FL_FR_CTRL_ENABLE` / `FL_STATUS_FAULT_RING_ENABLED`.
    pub enabled: bool,
    /// `FL_REG_FR_PUT`.
    pub put: u32,
}

/// Read-only identity values shown in BAR0.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity {
    /// `FL_REG_FEATURES`.
    pub features: u32,
    /// `FL_REG_NUM_CONTEXTS`.
    pub contexts: u32,
    /// `FL_REG_NUM_ENGINES`.
    pub engines: u32,
    /// `FL_REG_NUM_LANES`.
    pub lanes: u32,
    /// `FL_REG_TLB_ENTRIES`.
    pub tlb_entries: u32,
}

/// A running command queue: the configuration validated when it was enabled, and its indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueState {
    /// Ring GPA.
    pub base: u64,
    /// Entries (power of two).
    pub size: u32,
    /// Writeback block GPA.
    pub wb: u64,
    /// Free-running head as last published by the worker (mirrored before the writeback block is written).
    pub head: u32,
    /// Free-running tail from the last valid doorbell.
    pub tail: u32,
    /// Commands completed since the queue was enabled (as last published).
    pub completed: u64,
}

/// The register file.
#[derive(Debug, Clone, Default)]
pub(crate) struct Regs {
    /// `FL_REG_CONTROL` (only `FL_CTRL_ENABLE` is stored; RESET self-clears).
    pub control: u32,
    /// `FL_REG_ERROR`.
    pub error: u32,
    /// `FL_REG_ERROR_INFO`.
    pub error_info: u32,
    /// `FL_REG_WB_LO/HI`.
    pub wb: u64,
    /// `FL_REG_CQ_BASE_LO/HI`.
    pub cq_base: u64,
    /// `FL_REG_CQ_SIZE`.
    pub cq_size: u32,
    /// The queue, while `FL_CQ_CTRL_ENABLE` is set.
    pub cq: Option<QueueState>,
    /// `FL_REG_FR_BASE_LO/HI`.
    pub fr_base: u64,
    /// `FL_REG_FR_SIZE`.
    pub fr_size: u32,
    /// `FL_REG_FR_IRQ_DELAY` (clamped to `FL_FR_IRQ_DELAY_MAX`).
    pub fr_irq_delay: u32,
    /// Not a register: the device is shutting down and the worker must exit.
    pub shutdown: bool,
}

/// A register write the device has to carry out itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegWrite {
    /// `FL_REG_CONTROL`.
    Control(u32),
    /// `FL_REG_CQ_TAIL` doorbell.
    CqTail(u32),
    /// `FL_REG_CQ_CONTROL`.
    CqControl(u32),
    /// `FL_REG_FR_GET` doorbell.
    FrGet(u32),
    /// `FL_REG_FR_IRQ_DELAY` (already clamped and stored).
    FrIrqDelay(u32),
    /// `FL_REG_FR_CONTROL`.
    FrControl(u32),
}

fn set_lo(reg: &mut u64, val: u32) {
    *reg = (*reg & !0xffff_ffff) | u64::from(val);
}

fn set_hi(reg: &mut u64, val: u32) {
    *reg = (*reg & 0xffff_ffff) | (u64::from(val) << 32);
}

impl Regs {
    /// Returns every register to its default, keeping the shutdown flag.
    pub(crate) fn reset(&mut self) {
        let shutdown = self.shutdown;
        *self = Regs {
            shutdown,
            ..Regs::default()
        };
    }

    /// Whether the worker may consume commands.
    pub(crate) fn queue_running(&self) -> bool {
        self.cq.is_some() && self.error == abi::ERR_NONE
    }

    /// `FL_REG_STATUS`; `ring` is the fault ring's state (kept by the fault ring itself).
    pub(crate) fn status(&self, ring: RingView) -> u32 {
        let mut status = 0;
        if self.control & abi::CTRL_ENABLE != 0 {
            status |= abi::STATUS_ENABLED;
        }
        if self.queue_running() {
            status |= abi::STATUS_QUEUE_RUNNING;
        }
        if self.error != abi::ERR_NONE {
            status |= abi::STATUS_ERROR;
        }
        if ring.enabled {
            status |= abi::STATUS_FAULT_RING_ENABLED;
        }
        status
    }

    /// Reads the register at `offset` (4-byte aligned, inside BAR0). Unlisted and write-only registers read 0.
    /// `ring` is the fault ring's state for `FL_REG_FR_CONTROL`, `FL_REG_FR_PUT` and `FL_REG_STATUS`.
    pub(crate) fn read(&self, offset: u64, id: &Identity, ring: RingView) -> u32 {
        match offset {
            abi::REG_ID => abi::ID_MAGIC,
            abi::REG_VERSION => abi::VERSION,
            abi::REG_FEATURES => id.features,
            abi::REG_NUM_CONTEXTS => id.contexts,
            abi::REG_NUM_ENGINES => id.engines,
            abi::REG_NUM_LANES => id.lanes,
            abi::REG_TLB_ENTRIES => id.tlb_entries,
            abi::REG_CONTROL => self.control,
            abi::REG_STATUS => self.status(ring),
            abi::REG_ERROR => self.error,
            abi::REG_ERROR_INFO => self.error_info,
            abi::REG_WB_LO => self.wb as u32,
            abi::REG_WB_HI => (self.wb >> 32) as u32,
            abi::REG_CQ_BASE_LO => self.cq_base as u32,
            abi::REG_CQ_BASE_HI => (self.cq_base >> 32) as u32,
            abi::REG_CQ_SIZE => self.cq_size,
            abi::REG_CQ_CONTROL => u32::from(self.cq.is_some()) * abi::CQ_CTRL_ENABLE,
            abi::REG_CQ_HEAD => self.cq.map_or(0, |q| q.head),
            abi::REG_FR_BASE_LO => self.fr_base as u32,
            abi::REG_FR_BASE_HI => (self.fr_base >> 32) as u32,
            abi::REG_FR_SIZE => self.fr_size,
            abi::REG_FR_CONTROL => u32::from(ring.enabled) * abi::FR_CTRL_ENABLE,
            abi::REG_FR_PUT => ring.put,
            abi::REG_FR_IRQ_DELAY => self.fr_irq_delay,
            // REG_CQ_TAIL and REG_FR_GET are write-only; everything else is unlisted.
            _ => 0,
        }
    }

    /// Stores a write to a plain register, or returns the write for the device to carry out. Writes to
    /// read-only and unlisted registers are ignored.
    pub(crate) fn write(&mut self, offset: u64, val: u32) -> Option<RegWrite> {
        match offset {
            abi::REG_CONTROL => return Some(RegWrite::Control(val)),
            abi::REG_CQ_TAIL => return Some(RegWrite::CqTail(val)),
            abi::REG_CQ_CONTROL => return Some(RegWrite::CqControl(val)),
            abi::REG_FR_GET => return Some(RegWrite::FrGet(val)),
            abi::REG_FR_CONTROL => return Some(RegWrite::FrControl(val)),
            abi::REG_WB_LO => set_lo(&mut self.wb, val),
            abi::REG_WB_HI => set_hi(&mut self.wb, val),
            abi::REG_CQ_BASE_LO => set_lo(&mut self.cq_base, val),
            abi::REG_CQ_BASE_HI => set_hi(&mut self.cq_base, val),
            abi::REG_CQ_SIZE => self.cq_size = val,
            abi::REG_FR_BASE_LO => set_lo(&mut self.fr_base, val),
            abi::REG_FR_BASE_HI => set_hi(&mut self.fr_base, val),
            abi::REG_FR_SIZE => self.fr_size = val,
            abi::REG_FR_IRQ_DELAY => {
                self.fr_irq_delay = val.min(abi::FR_IRQ_DELAY_MAX);
                return Some(RegWrite::FrIrqDelay(self.fr_irq_delay));
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Regs {
        fn read_t(&self, off: u64, id: &Identity) -> u32 {
            self.read(off, id, RingView::default())
        }
    }

    const ID: Identity = Identity {
        features: 0,
        contexts: 16,
        engines: 4,
        lanes: 16,
        tlb_entries: 512,
    };

    #[test]
    fn identity_registers() {
        let r = Regs::default();
        assert_eq!(r.read_t(abi::REG_ID, &ID), abi::ID_MAGIC);
        assert_eq!(r.read_t(abi::REG_VERSION, &ID), 0x0001_0000);
        assert_eq!(r.read_t(abi::REG_TLB_ENTRIES, &ID), 512);
        assert_eq!(r.read_t(0x1000, &ID), 0);
        assert_eq!(r.read_t(abi::REG_STATUS, &ID), 0);
    }

    #[test]
    fn plain_registers_round_trip() {
        let mut r = Regs::default();
        assert_eq!(r.write(abi::REG_WB_LO, 0x1234_5640), None);
        assert_eq!(r.write(abi::REG_WB_HI, 0x1), None);
        assert_eq!(r.wb, 0x1_1234_5640);
        assert_eq!(r.read_t(abi::REG_WB_HI, &ID), 1);
        assert_eq!(
            r.write(abi::REG_FR_IRQ_DELAY, 1_000_000),
            Some(RegWrite::FrIrqDelay(abi::FR_IRQ_DELAY_MAX))
        );
        assert_eq!(r.read_t(abi::REG_FR_IRQ_DELAY, &ID), abi::FR_IRQ_DELAY_MAX);
        r.write(abi::REG_ID, 0);
        assert_eq!(r.read_t(abi::REG_ID, &ID), abi::ID_MAGIC);
        assert_eq!(
            r.write(abi::REG_CQ_TAIL, 7),
            Some(RegWrite::CqTail(7)),
            "doorbells go to the device"
        );
        assert_eq!(r.read_t(abi::REG_CQ_TAIL, &ID), 0);
        r.shutdown = true;
        r.reset();
        assert!(r.shutdown);
        assert_eq!(r.wb, 0);
    }
}
