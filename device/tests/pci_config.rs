//! Configuration space, region table and FLR as the vfio-user client sees them.

mod common;

use common::{Harness, CQ_BASE};
use faultline_device::{abi, irq, irq_count, region, AccessError, Device, RegionInfo};

#[test]
fn identity_and_class_in_one_256_byte_read() {
    let h = Harness::new();
    // QEMU reads the whole header at once.
    let mut cfg = [0u8; 256];
    h.dev.region_read(region::CONFIG, 0, &mut cfg).unwrap();
    let r16 = |o: usize| u16::from_le_bytes([cfg[o], cfg[o + 1]]);
    assert_eq!(r16(0x00), abi::PCI_VENDOR_ID);
    assert_eq!(r16(0x02), abi::PCI_DEVICE_ID);
    assert_eq!(cfg[0x08], abi::PCI_REVISION);
    assert_eq!(
        u32::from_le_bytes([cfg[0x09], cfg[0x0a], cfg[0x0b], 0]),
        abi::PCI_CLASS
    );
    assert_eq!(cfg[0x0e], 0, "header type 0");
    assert_eq!(r16(0x2c), 0xfa17, "subsystem vendor");
    assert_eq!(r16(0x2e), 0x0001, "subsystem id");
    assert_eq!(cfg[0x3d], 0, "no interrupt pin");
    assert_ne!(r16(0x06) & (1 << 4), 0, "capability list");
    // The same fields with narrow and unaligned accesses.
    assert_eq!(h.cfg32(0), 0x0001_fa17);
    let mut b = [0u8; 1];
    h.dev.region_read(region::CONFIG, 0x0b, &mut b).unwrap();
    assert_eq!(b[0], 0x03);
    assert_eq!(h.cfg16(0x01), 0x01fa);
    // Extended space reads 0 (no extended capabilities).
    assert_eq!(h.cfg32(0x100), 0);
    assert_eq!(h.cfg32(0xffc), 0);
}

#[test]
fn bar_sizing() {
    let h = Harness::new();
    for (bar, size) in [(0u64, abi::BAR0_SIZE), (1, abi::BAR1_SIZE)] {
        let off = 0x10 + 4 * bar;
        assert_eq!(h.cfg32(off), 0, "BAR{bar}: 32-bit non-prefetchable memory");
        h.set_cfg32(off, 0xffff_ffff);
        assert_eq!(h.cfg32(off), !(size as u32 - 1), "BAR{bar} size mask");
        h.set_cfg32(off, 0xc000_0000);
        assert_eq!(h.cfg32(off), 0xc000_0000);
    }
    for bar in 2..6u64 {
        h.set_cfg32(0x10 + 4 * bar, 0xffff_ffff);
        assert_eq!(h.cfg32(0x10 + 4 * bar), 0, "BAR{bar} absent");
    }
    h.set_cfg32(0x30, 0xffff_f801);
    assert_eq!(h.cfg32(0x30), 0, "ROM absent");
}

#[test]
fn capability_list_walk() {
    let h = Harness::new();
    let mut found = Vec::new();
    let mut ptr = h.cfg16(0x34) & 0xff;
    while ptr != 0 {
        assert!(found.len() < 8, "capability list loops");
        let p = u64::from(ptr);
        found.push((p, h.cfg16(p) & 0xff));
        ptr = h.cfg16(p) >> 8;
    }
    assert_eq!(found, vec![(0x40, 0x11), (0x50, 0x10)]);

    // MSI-X: 4 vectors, table and PBA in BAR1.
    assert_eq!(h.cfg16(0x42) & 0x7ff, abi::MSIX_VECTORS - 1);
    assert_eq!(h.cfg32(0x44), abi::MSIX_TABLE_OFFSET | 1);
    assert_eq!(h.cfg32(0x48), abi::MSIX_PBA_OFFSET | 1);
    h.set_cfg16(0x42, 0xffff);
    assert_eq!(
        h.cfg16(0x42),
        0xc000 | (abi::MSIX_VECTORS - 1),
        "enable and mask writable"
    );
    h.set_cfg16(0x42, 0);

    // PCIe: version 2 endpoint, FLR supported.
    assert_eq!(h.cfg16(0x52) & 0xf, 2);
    assert_eq!((h.cfg16(0x52) >> 4) & 0xf, 0, "endpoint");
    assert_ne!(h.cfg32(0x54) & (1 << 28), 0, "FLR capable");
}

#[test]
fn command_register_mask_and_read_only_fields() {
    let h = Harness::new();
    h.set_cfg16(0x04, 0xffff);
    assert_eq!(h.cfg16(0x04), 0x0406, "memory, bus master, INTx disable");
    h.set_cfg16(0x04, 0);
    assert_eq!(h.cfg16(0x04), 0);
    h.set_cfg16(0x06, 0xffff);
    assert_eq!(h.cfg16(0x06), 1 << 4, "status is RO/RW1C");
    h.set_cfg32(0x00, 0);
    assert_eq!(h.cfg32(0x00), 0x0001_fa17);
    h.set_cfg32(0x100, 0xffff_ffff);
    assert_eq!(h.cfg32(0x100), 0);
}

#[test]
fn region_table() {
    let h = Harness::new();
    let rw = |size| RegionInfo {
        size,
        read: true,
        write: true,
    };
    let absent = RegionInfo {
        size: 0,
        read: false,
        write: false,
    };
    assert_eq!(h.dev.region_info(region::BAR0), Some(rw(abi::BAR0_SIZE)));
    assert_eq!(h.dev.region_info(region::BAR1), Some(rw(abi::BAR1_SIZE)));
    assert_eq!(h.dev.region_info(region::CONFIG), Some(rw(0x1000)));
    for i in [2, 3, 4, 5, region::ROM, region::VGA] {
        assert_eq!(h.dev.region_info(i), Some(absent), "region {i}");
    }
    assert_eq!(h.dev.region_info(region::COUNT), None);

    let mut b = [0u8; 4];
    assert_eq!(
        h.dev.region_read(2, 0, &mut b),
        Err(AccessError::NoRegion(2))
    );
    assert_eq!(
        h.dev.region_write(region::ROM, 0, &b),
        Err(AccessError::NoRegion(region::ROM))
    );
    assert_eq!(
        h.dev.region_read(99, 0, &mut b),
        Err(AccessError::NoRegion(99))
    );
    assert!(matches!(
        h.dev.region_read(region::CONFIG, 0xffe, &mut b),
        Err(AccessError::OutOfRange { .. })
    ));
    assert!(matches!(
        h.dev.region_write(region::CONFIG, u64::MAX, &b),
        Err(AccessError::OutOfRange { .. })
    ));
    assert!(matches!(
        h.dev.region_read(region::BAR1, 0x1000, &mut b),
        Err(AccessError::OutOfRange { .. })
    ));
}

#[test]
fn irq_counts() {
    assert_eq!(irq_count(irq::INTX), 0);
    assert_eq!(irq_count(irq::MSI), 0);
    assert_eq!(irq_count(irq::MSIX), u32::from(abi::MSIX_VECTORS));
    assert_eq!(irq_count(irq::ERR), 1);
    assert_eq!(irq_count(irq::REQ), 0);
    assert_eq!(irq_count(irq::COUNT), 0);
    assert_eq!(Device::irq_count(irq::MSIX), 4);
}

#[test]
fn flr_resets_the_function() {
    let mut h = Harness::new();
    h.enable_msix();
    h.set_cfg16(0x04, 0x0006);
    h.set_reg(abi::REG_CONTROL, abi::CTRL_ENABLE);
    h.start_queue(CQ_BASE, 64);
    let devctl = h.cfg16(0x58);

    h.set_cfg16(0x58, devctl | 0x8000);

    assert_eq!(h.cfg16(0x58) & 0x8000, 0, "initiate-FLR reads 0");
    assert_eq!(h.cfg16(0x58), devctl);
    assert_eq!(h.cfg16(0x04), 0, "command register reset");
    assert_eq!(h.cfg16(0x42) & 0xc000, 0, "MSI-X disabled");
    assert_eq!(h.reg(abi::REG_STATUS), 0);
    assert_eq!(h.reg(abi::REG_CQ_CONTROL), 0);
    assert_eq!(h.reg(abi::REG_CQ_BASE_LO), 0);
    assert_eq!(h.reg(abi::REG_WB_LO), 0);
}

#[test]
fn device_reset_resets_config_space_too() {
    let h = Harness::new();
    h.enable_msix();
    h.set_cfg32(0x10, 0xfe00_0000);
    h.dev.reset();
    assert_eq!(h.cfg32(0x10), 0);
    assert_eq!(h.cfg16(0x42) & 0xc000, 0);
    assert_eq!(h.cfg16(0), abi::PCI_VENDOR_ID);
}
