//! MSI-X state: the vector table and PBA in BAR1, and interrupt delivery to the [`InterruptSink`].
//!
//! QEMU emulates the MSI-X table itself and only forwards PBA reads, so the table stored here is plain
//! memory: per-vector mask bits are QEMU's business and are not applied here (QEMU never writes them to the
//! device, so honouring our copy's reset value "masked" would lose every interrupt). What the device does
//! apply is the message control register in configuration space, which QEMU does forward:
//! - MSI-X disabled: the function cannot send MSI-X messages; signals are dropped.
//! - Function mask set: signals set the vector's pending bit in the PBA and are delivered when the mask is
//!   cleared (or discarded if MSI-X is disabled first).

use std::sync::{Arc, Mutex};

use log::debug;

use crate::sync::lock;
use crate::{abi, InterruptSink};

/// Bytes per MSI-X table entry.
const ENTRY_SIZE: usize = 16;
/// Size of the table in BAR1.
const TABLE_SIZE: usize = ENTRY_SIZE * abi::MSIX_VECTORS as usize;
/// Size of the PBA in BAR1 (one u64 covers every vector).
const PBA_SIZE: usize = 8;
/// Vector control word: masked.
const VECTOR_CTRL_MASKED: u32 = 1;

/// MSI-X table, pending bits and delivery gate.
pub(crate) struct Msix {
    table: [u8; TABLE_SIZE],
    pending: u64,
    enabled: bool,
    function_masked: bool,
    sink: Arc<dyn InterruptSink>,
}

impl Msix {
    /// MSI-X in its reset state (disabled, table entries masked) delivering to `sink`.
    pub(crate) fn new(sink: Arc<dyn InterruptSink>) -> Self {
        let mut msix = Msix {
            table: [0; TABLE_SIZE],
            pending: 0,
            enabled: false,
            function_masked: false,
            sink,
        };
        msix.reset();
        msix
    }

    /// Returns the table, PBA and control state to their reset values.
    pub(crate) fn reset(&mut self) {
        self.table = [0; TABLE_SIZE];
        for entry in self.table.chunks_exact_mut(ENTRY_SIZE) {
            entry[12..16].copy_from_slice(&VECTOR_CTRL_MASKED.to_le_bytes());
        }
        self.pending = 0;
        self.enabled = false;
        self.function_masked = false;
    }

    /// Raises `vector`, or records it as pending while the function is masked.
    pub(crate) fn signal(&mut self, vector: u16) {
        if vector >= abi::MSIX_VECTORS {
            debug!("msix: vector {vector} out of range");
            return;
        }
        if !self.enabled {
            debug!("msix: vector {vector} dropped, MSI-X disabled");
            return;
        }
        if self.function_masked {
            self.pending |= 1 << vector;
            return;
        }
        self.sink.signal(vector);
    }

    /// Applies a new message control state (enable, function mask) written to configuration space.
    pub(crate) fn set_control(&mut self, enabled: bool, function_masked: bool) {
        self.enabled = enabled;
        self.function_masked = function_masked;
        if !enabled {
            self.pending = 0;
            return;
        }
        if !function_masked {
            let pending = std::mem::take(&mut self.pending);
            for vector in 0..abi::MSIX_VECTORS {
                if pending & (1 << vector) != 0 {
                    self.sink.signal(vector);
                }
            }
        }
    }

    /// The PBA as a bit mask.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> u64 {
        self.pending
    }

    /// Reads BAR1 bytes: the table, the PBA, zeros elsewhere. The caller has checked the range.
    pub(crate) fn read(&self, offset: u64, data: &mut [u8]) {
        let pba = self.pending.to_le_bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = match Self::locate(offset + i as u64) {
                Some(Place::Table(off)) => self.table[off],
                Some(Place::Pba(off)) => pba[off],
                None => 0,
            };
        }
    }

    /// Writes BAR1 bytes: the table is stored, the PBA is read-only, the rest ignores writes.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &val) in data.iter().enumerate() {
            if let Some(Place::Table(off)) = Self::locate(offset + i as u64) {
                self.table[off] = val;
            }
        }
    }

    fn locate(offset: u64) -> Option<Place> {
        let table = u64::from(abi::MSIX_TABLE_OFFSET);
        let pba = u64::from(abi::MSIX_PBA_OFFSET);
        if (table..table + TABLE_SIZE as u64).contains(&offset) {
            Some(Place::Table((offset - table) as usize))
        } else if (pba..pba + PBA_SIZE as u64).contains(&offset) {
            Some(Place::Pba((offset - pba) as usize))
        } else {
            None
        }
    }
}

/// The handle through which the device's components raise interrupts: the MSI-X state behind its lock
/// (`msix`, last in the lock order of `sync.rs`). Cheap to clone; every clone reaches the same state.
#[derive(Clone)]
pub(crate) struct Interrupts(Arc<Mutex<Msix>>);

impl Interrupts {
    /// MSI-X in its reset state delivering to `sink`.
    pub(crate) fn new(sink: Arc<dyn InterruptSink>) -> Self {
        Interrupts(Arc::new(Mutex::new(Msix::new(sink))))
    }

    /// Raises `vector` (see [`Msix::signal`]).
    pub(crate) fn signal(&self, vector: u16) {
        lock(&self.0).signal(vector);
    }

    /// Runs `f` on the MSI-X state: BAR1 accesses, control changes, reset.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Msix) -> R) -> R {
        f(&mut lock(&self.0))
    }
}

enum Place {
    Table(usize),
    Pba(usize),
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Rec(Mutex<Vec<u16>>);
    impl InterruptSink for Rec {
        fn signal(&self, vector: u16) {
            self.0.lock().unwrap().push(vector);
        }
    }

    #[test]
    fn gating_and_pba() {
        let rec = Arc::new(Rec::default());
        let mut m = Msix::new(rec.clone());
        m.signal(0);
        assert!(rec.0.lock().unwrap().is_empty(), "disabled drops");
        m.set_control(true, true);
        m.signal(2);
        m.signal(0);
        assert_eq!(m.pending(), 0b101);
        let mut pba = [0u8; 8];
        m.read(u64::from(abi::MSIX_PBA_OFFSET), &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0b101);
        m.set_control(true, false);
        assert_eq!(*rec.0.lock().unwrap(), vec![0, 2]);
        assert_eq!(m.pending(), 0);
        m.signal(1);
        m.signal(9);
        assert_eq!(*rec.0.lock().unwrap(), vec![0, 2, 1]);
    }

    #[test]
    fn table_storage() {
        let mut m = Msix::new(Arc::new(Rec::default()));
        let mut b = [0u8; 4];
        m.read(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), VECTOR_CTRL_MASKED);
        m.write(16, &0xfee0_0000u32.to_le_bytes());
        m.read(16, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xfee0_0000);
        m.write(u64::from(abi::MSIX_PBA_OFFSET), &[0xff; 8]);
        assert_eq!(m.pending(), 0);
        m.reset();
        m.read(16, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
