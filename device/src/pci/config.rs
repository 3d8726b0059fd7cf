//! The 4 KiB PCI Express configuration space of the faultline function.
//!
//! Emulated byte by byte with two masks per byte, in the style of cloud-hypervisor's
//! `pci/src/configuration.rs`: `wmask` marks read-write bits, `w1c` marks write-one-to-clear bits; every
//! other bit is read-only. BAR sizing falls out of the masks: a BAR's writable bits are its address bits,
//! so writing all-ones reads back the size mask, and an absent BAR (or the absent expansion ROM) has no
//! writable bits and reads 0.
//!
//! Layout: type-0 header, MSI-X capability at [`MSIX_CAP`], PCI Express endpoint capability (version 2)
//! at [`PCIE_CAP`]; the extended space (0x100..0x1000) reads 0 and ignores writes, so there are no
//! extended capabilities.

use crate::abi;

/// Size of the configuration region (PCI Express extended configuration space).
pub(crate) const CONFIG_SPACE_SIZE: u64 = 0x1000;
/// Size of the conventional header plus capabilities; everything above reads 0.
const HEADER_SPACE_SIZE: usize = 0x100;

/// Command register.
pub(crate) const COMMAND: usize = 0x04;
/// Status register.
pub(crate) const STATUS: usize = 0x06;
/// First BAR.
pub(crate) const BAR0: usize = 0x10;
/// Expansion ROM BAR.
#[cfg(test)]
pub(crate) const ROM_BAR: usize = 0x30;
/// Capabilities pointer.
pub(crate) const CAP_PTR: usize = 0x34;
/// Interrupt pin.
pub(crate) const INTERRUPT_PIN: usize = 0x3d;

/// MSI-X capability offset.
pub(crate) const MSIX_CAP: usize = 0x40;
/// MSI-X message control register.
pub(crate) const MSIX_CONTROL: usize = MSIX_CAP + 2;
/// Message control: MSI-X enable.
pub(crate) const MSIX_CTRL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub(crate) const MSIX_CTRL_FUNCTION_MASK: u16 = 1 << 14;

/// PCI Express capability offset.
pub(crate) const PCIE_CAP: usize = 0x50;
/// Device capabilities.
pub(crate) const PCIE_DEVCAP: usize = PCIE_CAP + 0x04;
/// Device control.
pub(crate) const PCIE_DEVCTL: usize = PCIE_CAP + 0x08;
/// Device status.
pub(crate) const PCIE_DEVSTA: usize = PCIE_CAP + 0x0a;
/// DevCap: function-level reset supported.
pub(crate) const DEVCAP_FLR: u32 = 1 << 28;
/// DevCap: role-based error reporting.
const DEVCAP_RBER: u32 = 1 << 15;
/// DevCtl: initiate function-level reset (write 1; reads 0).
pub(crate) const DEVCTL_INITIATE_FLR: u16 = 1 << 15;

const CAP_ID_MSIX: u8 = 0x11;
const CAP_ID_PCIE: u8 = 0x10;

/// Command register bits the guest may change: memory space, bus master, INTx disable.
const COMMAND_WMASK: u16 = (1 << 1) | (1 << 2) | (1 << 10);
/// Status register: capabilities list present.
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Status register write-one-to-clear bits (parity, aborts, SERR).
const STATUS_W1C: u16 = 0xf900;

/// DevCtl default: relaxed ordering, no snoop, max read request 512 bytes, max payload 128 bytes.
const DEVCTL_DEFAULT: u16 = (1 << 4) | (1 << 11) | (2 << 12);
/// DevCtl writable bits: error reporting enables, relaxed ordering, max payload, no snoop, max read request.
const DEVCTL_WMASK: u16 = 0x000f | 0x0010 | 0x00e0 | 0x0800 | 0x7000;
/// DevSta write-one-to-clear bits (error detected bits).
const DEVSTA_W1C: u16 = 0x000f;
/// LinkCap/LinkSta: 2.5 GT/s, x1.
const LINK_SPEED_WIDTH: u16 = 0x0011;
/// LinkCtl writable bits: ASPM control, common clock, extended synch.
const LINKCTL_WMASK: u16 = 0x00c3;

/// What a configuration write asks the device to do beyond storing bits.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConfigEffects {
    /// DevCtl "initiate function-level reset" was written as 1.
    pub flr: bool,
    /// The MSI-X message control register was written; the new (enable, function mask) state.
    pub msix_control: Option<(bool, bool)>,
}

/// The emulated configuration space.
#[derive(Debug, Clone)]
pub(crate) struct ConfigSpace {
    bytes: [u8; HEADER_SPACE_SIZE],
    wmask: [u8; HEADER_SPACE_SIZE],
    w1c: [u8; HEADER_SPACE_SIZE],
}

impl Default for ConfigSpace {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigSpace {
    /// A configuration space in its power-on (and post-FLR) state.
    pub(crate) fn new() -> Self {
        let mut cs = ConfigSpace {
            bytes: [0; HEADER_SPACE_SIZE],
            wmask: [0; HEADER_SPACE_SIZE],
            w1c: [0; HEADER_SPACE_SIZE],
        };
        cs.init();
        cs
    }

    /// Returns every register to its power-on value (function-level reset).
    pub(crate) fn reset(&mut self) {
        *self = Self::new();
    }

    fn init(&mut self) {
        // Type-0 header.
        self.set16(0x00, abi::PCI_VENDOR_ID, 0, 0);
        self.set16(0x02, abi::PCI_DEVICE_ID, 0, 0);
        self.set16(COMMAND, 0, COMMAND_WMASK, 0);
        self.set16(STATUS, STATUS_CAP_LIST, 0, STATUS_W1C);
        self.bytes[0x08] = abi::PCI_REVISION;
        let [class_lo, class_mid, class_hi, _] = abi::PCI_CLASS.to_le_bytes();
        self.bytes[0x09] = class_lo; // programming interface
        self.bytes[0x0a] = class_mid; // subclass
        self.bytes[0x0b] = class_hi; // base class
        self.wmask[0x0c] = 0xff; // cache line size
        self.bytes[0x0e] = 0x00; // header type 0, single function
        self.set_bar(0, abi::BAR0_SIZE);
        self.set_bar(1, abi::BAR1_SIZE);
        // BAR2-5 and the expansion ROM stay all-zero with no writable bits: absent.
        self.set16(0x2c, abi::PCI_VENDOR_ID, 0, 0); // subsystem vendor
        self.set16(0x2e, abi::PCI_DEVICE_ID, 0, 0); // subsystem id
        self.bytes[CAP_PTR] = MSIX_CAP as u8;
        self.wmask[0x3c] = 0xff; // interrupt line (scratch for the OS)
        self.bytes[INTERRUPT_PIN] = 0; // no INTx

        // MSI-X capability: table and PBA in BAR1.
        self.bytes[MSIX_CAP] = CAP_ID_MSIX;
        self.bytes[MSIX_CAP + 1] = PCIE_CAP as u8;
        self.set16(
            MSIX_CONTROL,
            abi::MSIX_VECTORS - 1,
            MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK,
            0,
        );
        self.set32(MSIX_CAP + 4, abi::MSIX_TABLE_OFFSET | 1, 0, 0);
        self.set32(MSIX_CAP + 8, abi::MSIX_PBA_OFFSET | 1, 0, 0);

        // PCI Express capability, version 2, endpoint, FLR capable.
        self.bytes[PCIE_CAP] = CAP_ID_PCIE;
        self.bytes[PCIE_CAP + 1] = 0; // end of list
        self.set16(PCIE_CAP + 2, 0x0002, 0, 0); // version 2, device/port type 0 (endpoint)
        self.set32(PCIE_DEVCAP, DEVCAP_FLR | DEVCAP_RBER, 0, 0);
        self.set16(PCIE_DEVCTL, DEVCTL_DEFAULT, DEVCTL_WMASK, 0);
        self.set16(PCIE_DEVSTA, 0, 0, DEVSTA_W1C);
        self.set32(PCIE_CAP + 0x0c, u32::from(LINK_SPEED_WIDTH), 0, 0); // LinkCap
        self.set16(PCIE_CAP + 0x10, 0, LINKCTL_WMASK, 0); // LinkCtl
        self.set16(PCIE_CAP + 0x12, LINK_SPEED_WIDTH, 0, 0); // LinkSta
        self.set32(PCIE_CAP + 0x2c, 1 << 1, 0, 0); // LinkCap2: 2.5 GT/s supported
        self.set16(PCIE_CAP + 0x30, 1, 0, 0); // LinkCtl2: target speed 2.5 GT/s
    }

    fn set16(&mut self, off: usize, val: u16, wmask: u16, w1c: u16) {
        self.bytes[off..off + 2].copy_from_slice(&val.to_le_bytes());
        self.wmask[off..off + 2].copy_from_slice(&wmask.to_le_bytes());
        self.w1c[off..off + 2].copy_from_slice(&w1c.to_le_bytes());
    }

    fn set32(&mut self, off: usize, val: u32, wmask: u32, w1c: u32) {
        self.bytes[off..off + 4].copy_from_slice(&val.to_le_bytes());
        self.wmask[off..off + 4].copy_from_slice(&wmask.to_le_bytes());
        self.w1c[off..off + 4].copy_from_slice(&w1c.to_le_bytes());
    }

    /// A 32-bit, non-prefetchable memory BAR of `size` bytes (a power of two of at least 16).
    fn set_bar(&mut self, index: usize, size: u64) {
        // Low nibble: memory space, 32-bit, non-prefetchable (all zero, read-only).
        let mask = !(size.saturating_sub(1) as u32) & !0xf;
        self.set32(BAR0 + 4 * index, 0, mask, 0);
    }

    /// Reads `data.len()` bytes at `offset`. The caller has checked the range against
    /// [`CONFIG_SPACE_SIZE`]; bytes above the header space read 0.
    pub(crate) fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, out) in data.iter_mut().enumerate() {
            *out = self.bytes.get(offset + i).copied().unwrap_or(0);
        }
    }

    /// Writes `data` at `offset`, applying the writable and write-one-to-clear masks, and reports the side
    /// effects the device must carry out. The caller has checked the range.
    pub(crate) fn write(&mut self, offset: usize, data: &[u8]) -> ConfigEffects {
        let mut effects = ConfigEffects::default();
        let mut msix_touched = false;
        for (i, &val) in data.iter().enumerate() {
            let off = offset + i;
            if off >= HEADER_SPACE_SIZE {
                break;
            }
            let wmask = self.wmask[off];
            let old = self.bytes[off];
            let stored = (old & !wmask) | (val & wmask);
            self.bytes[off] = stored & !(val & self.w1c[off]);
            if off == PCIE_DEVCTL + 1 && val & (DEVCTL_INITIATE_FLR >> 8) as u8 != 0 {
                effects.flr = true;
            }
            if off == MSIX_CONTROL || off == MSIX_CONTROL + 1 {
                msix_touched = true;
            }
        }
        if msix_touched {
            effects.msix_control = Some(self.msix_control());
        }
        effects
    }

    /// The MSI-X (enable, function mask) bits of the message control register.
    pub(crate) fn msix_control(&self) -> (bool, bool) {
        let ctrl = self.read16(MSIX_CONTROL);
        (
            ctrl & MSIX_CTRL_ENABLE != 0,
            ctrl & MSIX_CTRL_FUNCTION_MASK != 0,
        )
    }

    fn read16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.bytes[off], self.bytes[off + 1]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r32(cs: &ConfigSpace, off: usize) -> u32 {
        let mut b = [0u8; 4];
        cs.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn r16(cs: &ConfigSpace, off: usize) -> u16 {
        let mut b = [0u8; 2];
        cs.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    fn w32(cs: &mut ConfigSpace, off: usize, v: u32) -> ConfigEffects {
        cs.write(off, &v.to_le_bytes())
    }

    #[test]
    fn identity() {
        let cs = ConfigSpace::new();
        assert_eq!(r16(&cs, 0), abi::PCI_VENDOR_ID);
        assert_eq!(r16(&cs, 2), abi::PCI_DEVICE_ID);
        assert_eq!(r32(&cs, 8) >> 8, abi::PCI_CLASS);
        assert_eq!(r32(&cs, 8) & 0xff, u32::from(abi::PCI_REVISION));
        assert_eq!(r16(&cs, 0x2c), abi::PCI_VENDOR_ID);
        assert_eq!(r16(&cs, 0x2e), abi::PCI_DEVICE_ID);
        assert_eq!(cs.bytes[INTERRUPT_PIN], 0);
        assert_ne!(r16(&cs, STATUS) & STATUS_CAP_LIST, 0);
    }

    #[test]
    fn bar_sizing() {
        let mut cs = ConfigSpace::new();
        for (i, size) in [(0, abi::BAR0_SIZE), (1, abi::BAR1_SIZE)] {
            w32(&mut cs, BAR0 + 4 * i, 0xffff_ffff);
            assert_eq!(r32(&cs, BAR0 + 4 * i), !(size as u32 - 1));
            w32(&mut cs, BAR0 + 4 * i, 0xfebc_0000);
            assert_eq!(r32(&cs, BAR0 + 4 * i), 0xfebc_0000 & !(size as u32 - 1));
        }
        for i in 2..6 {
            w32(&mut cs, BAR0 + 4 * i, 0xffff_ffff);
            assert_eq!(r32(&cs, BAR0 + 4 * i), 0);
        }
        w32(&mut cs, ROM_BAR, 0xffff_f801);
        assert_eq!(r32(&cs, ROM_BAR), 0);
    }

    #[test]
    fn unaligned_and_byte_writes_use_masks() {
        let mut cs = ConfigSpace::new();
        // A 2-byte write straddling the command/status boundary.
        cs.write(COMMAND + 1, &[0xff, 0xff]);
        assert_eq!(r16(&cs, COMMAND), 1 << 10);
        assert_eq!(r16(&cs, STATUS), STATUS_CAP_LIST);
        // Vendor id is read-only.
        cs.write(0, &[0, 0]);
        assert_eq!(r16(&cs, 0), abi::PCI_VENDOR_ID);
    }

    #[test]
    fn status_w1c() {
        let mut cs = ConfigSpace::new();
        cs.bytes[STATUS + 1] = 0xf9;
        cs.write(STATUS, &0x1000u16.to_le_bytes());
        assert_eq!(r16(&cs, STATUS), 0xe900 | STATUS_CAP_LIST);
    }

    #[test]
    fn flr_and_msix_effects() {
        let mut cs = ConfigSpace::new();
        let e = cs.write(
            PCIE_DEVCTL,
            &(DEVCTL_DEFAULT | DEVCTL_INITIATE_FLR).to_le_bytes(),
        );
        assert!(e.flr);
        assert_eq!(r16(&cs, PCIE_DEVCTL) & DEVCTL_INITIATE_FLR, 0);
        let e = cs.write(MSIX_CONTROL, &0xc000u16.to_le_bytes());
        assert_eq!(e.msix_control, Some((true, true)));
        assert_eq!(r16(&cs, MSIX_CONTROL), 0xc000 | (abi::MSIX_VECTORS - 1));
        let e = cs.write(MSIX_CONTROL + 1, &[0x80]);
        assert_eq!(e.msix_control, Some((true, false)));
        assert!(!e.flr);
    }

    #[test]
    fn extended_space_reads_zero() {
        let mut cs = ConfigSpace::new();
        let e = cs.write(0xff, &[0xff; 8]);
        assert_eq!(e, ConfigEffects::default());
        let mut b = [0xaau8; 16];
        cs.read(0x100, &mut b);
        assert_eq!(b, [0; 16]);
    }
}
