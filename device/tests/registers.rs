//! BAR0 registers and BAR1 (MSI-X table, PBA).

mod common;

use common::{Cmd, Harness, CQ_BASE, SCRATCH, WB};
use faultline_device::{abi, region, AccessError};

#[test]
fn identity_registers() {
    let h = Harness::new();
    assert_eq!(h.reg(abi::REG_ID), 0x464c_5431);
    assert_eq!(h.reg(abi::REG_VERSION), 0x0001_0000);
    assert_eq!(
        h.reg(abi::REG_FEATURES),
        abi::FEAT_MMU | abi::FEAT_FAULT_RING | abi::FEAT_ENGINES,
        "MMU, fault ring and engines implemented"
    );
    assert_eq!(h.reg(abi::REG_NUM_CONTEXTS), 16);
    assert_eq!(h.reg(abi::REG_NUM_ENGINES), 4);
    assert_eq!(h.reg(abi::REG_NUM_LANES), 16);
    assert_eq!(h.reg(abi::REG_TLB_ENTRIES), 64 * 8);
    // Read-only registers ignore writes; unlisted offsets read 0 and ignore writes.
    h.set_reg(abi::REG_ID, 0);
    assert_eq!(h.reg(abi::REG_ID), abi::ID_MAGIC);
    h.set_reg(0x100, 0xffff_ffff);
    assert_eq!(h.reg(0x100), 0);
    assert_eq!(h.reg(0xfffc), 0);
    assert_eq!(h.reg(abi::REG_CQ_TAIL), 0, "write-only reads 0");
}

#[test]
fn reset_state() {
    let h = Harness::new();
    for off in (abi::REG_CONTROL..=abi::REG_FR_IRQ_DELAY).step_by(4) {
        assert_eq!(h.reg(off), 0, "register {off:#x} after power-on");
    }
}

#[test]
fn bad_access_widths_are_refused_and_counted() {
    let h = Harness::new();
    h.set_reg(abi::REG_WB_LO, 0x1000);
    let mut b8 = [0u8; 8];
    let mut b2 = [0u8; 2];
    let mut b1 = [0u8; 1];
    let mut b4 = [0u8; 4];
    let bad = |offset, len| {
        Err(AccessError::BadAccess {
            region: region::BAR0,
            offset,
            len,
        })
    };
    assert_eq!(
        h.dev.region_read(region::BAR0, abi::REG_WB_LO, &mut b8),
        bad(abi::REG_WB_LO, 8)
    );
    assert_eq!(b8, [0xff; 8], "refused reads fill all-ones");
    assert_eq!(
        h.dev.region_read(region::BAR0, abi::REG_ID, &mut b2),
        bad(abi::REG_ID, 2)
    );
    assert_eq!(h.dev.region_read(region::BAR0, 1, &mut b1), bad(1, 1));
    assert_eq!(h.dev.region_read(region::BAR0, 2, &mut b4), bad(2, 4));
    assert_eq!(
        h.dev.region_write(region::BAR0, abi::REG_WB_LO, &[0; 2]),
        bad(abi::REG_WB_LO, 2)
    );
    assert_eq!(
        h.dev
            .region_write(region::BAR0, abi::REG_WB_LO + 1, &[0; 4]),
        bad(abi::REG_WB_LO + 1, 4)
    );
    assert_eq!(
        h.dev.region_write(region::BAR0, abi::REG_WB_LO, &[0; 8]),
        bad(abi::REG_WB_LO, 8)
    );
    assert_eq!(h.dev.bad_accesses(), 7);
    assert_eq!(
        h.reg(abi::REG_WB_LO),
        0x1000,
        "refused writes change nothing"
    );
    assert!(matches!(
        h.dev.region_read(region::BAR0, abi::BAR0_SIZE, &mut b4),
        Err(AccessError::OutOfRange { .. })
    ));
    assert!(matches!(
        h.dev
            .region_write(region::BAR0, abi::BAR0_SIZE - 2, &[0; 4]),
        Err(AccessError::OutOfRange { .. })
    ));
}

#[test]
fn plain_registers_round_trip() {
    let h = Harness::new();
    for (off, val) in [
        (abi::REG_WB_LO, 0x1234_5640),
        (abi::REG_WB_HI, 0x1),
        (abi::REG_CQ_BASE_LO, 0xabcd_e000),
        (abi::REG_CQ_BASE_HI, 0x2),
        (abi::REG_CQ_SIZE, 4096),
        (abi::REG_FR_BASE_LO, 0x7000),
        (abi::REG_FR_BASE_HI, 0x3),
        (abi::REG_FR_SIZE, 256),
        (abi::REG_FR_IRQ_DELAY, 250),
    ] {
        h.set_reg(off, val);
        assert_eq!(h.reg(off), val, "register {off:#x}");
    }
    h.set_reg(abi::REG_FR_IRQ_DELAY, 1 << 30);
    assert_eq!(h.reg(abi::REG_FR_IRQ_DELAY), abi::FR_IRQ_DELAY_MAX);
}

#[test]
fn control_enable_and_reset() {
    let mut h = Harness::new();
    h.set_reg(abi::REG_CONTROL, abi::CTRL_ENABLE);
    assert_eq!(h.reg(abi::REG_CONTROL), abi::CTRL_ENABLE);
    assert_eq!(h.reg(abi::REG_STATUS), abi::STATUS_ENABLED);
    h.start_queue(CQ_BASE, 64);
    assert_eq!(
        h.reg(abi::REG_STATUS),
        abi::STATUS_ENABLED | abi::STATUS_QUEUE_RUNNING
    );
    assert_eq!(h.reg(abi::REG_CQ_CONTROL), abi::CQ_CTRL_ENABLE);
    h.set_reg(abi::REG_CONTROL, abi::CTRL_RESET | abi::CTRL_ENABLE);
    assert_eq!(h.reg(abi::REG_CONTROL), 0, "RESET self-clears; reset wins");
    assert_eq!(h.reg(abi::REG_STATUS), 0);
    assert_eq!(h.reg(abi::REG_CQ_CONTROL), 0);
    assert_eq!(h.reg(abi::REG_CQ_BASE_LO), 0);
}

#[test]
fn fault_ring_registers_validate() {
    let h = Harness::new();
    h.set_reg(abi::REG_WB_LO, WB as u32);
    h.set_reg(abi::REG_FR_BASE_LO, SCRATCH as u32);
    h.set_reg(abi::REG_FR_SIZE, 256);
    h.set_reg(abi::REG_FR_CONTROL, abi::FR_CTRL_ENABLE);
    assert_eq!(h.reg(abi::REG_STATUS), abi::STATUS_FAULT_RING_ENABLED);
    assert_eq!(h.reg(abi::REG_FR_CONTROL), abi::FR_CTRL_ENABLE);
    assert_eq!(h.reg(abi::REG_FR_PUT), 0);
    h.set_reg(abi::REG_FR_CONTROL, 0);
    assert_eq!(h.reg(abi::REG_STATUS), 0);
    h.set_reg(abi::REG_FR_SIZE, 3);
    h.set_reg(abi::REG_FR_CONTROL, abi::FR_CTRL_ENABLE);
    assert_eq!(h.wait_error(), abi::ERR_FR_CONFIG);
    assert_eq!(h.reg(abi::REG_FR_CONTROL), 0);
}

#[test]
fn msix_table_storage() {
    let h = Harness::new();
    let mut b = [0u8; 16];
    h.dev.region_read(region::BAR1, 0, &mut b).unwrap();
    assert_eq!(&b[12..16], &1u32.to_le_bytes(), "vectors start masked");
    let entry = [
        0x00, 0x00, 0xe0, 0xfe, 0, 0, 0, 0, 0x41, 0, 0, 0, 0, 0, 0, 0,
    ];
    h.dev.region_write(region::BAR1, 16, &entry).unwrap();
    h.dev.region_read(region::BAR1, 16, &mut b).unwrap();
    assert_eq!(b, entry);
    let mut q = [0u8; 8];
    h.dev.region_read(region::BAR1, 0x400, &mut q).unwrap();
    assert_eq!(q, [0; 8], "between table and PBA reads 0");
}

fn pba(h: &Harness) -> u64 {
    let mut b = [0u8; 8];
    h.dev
        .region_read(region::BAR1, u64::from(abi::MSIX_PBA_OFFSET), &mut b)
        .unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn function_mask_holds_interrupts_in_the_pba() {
    let mut h = Harness::new();
    h.set_cfg16(0x42, 0xc000); // enabled, function masked
    h.start_queue(CQ_BASE, 64);
    h.submit(&[Cmd::fence(SCRATCH, 7, abi::CMD_F_IRQ)]);
    h.drain();
    assert_eq!(h.read_u64(SCRATCH), 7);
    assert_eq!(h.sink.count(abi::VEC_QUEUE), 0);
    assert_eq!(pba(&h), 1 << abi::VEC_QUEUE);
    h.set_cfg16(0x42, 0x8000); // unmask
    h.sink.wait_for(abi::VEC_QUEUE, 1);
    assert_eq!(pba(&h), 0);
}

#[test]
fn no_interrupts_while_msix_disabled() {
    let mut h = Harness::new();
    h.start_queue(CQ_BASE, 64);
    h.submit(&[Cmd::fence(SCRATCH, 9, abi::CMD_F_IRQ)]);
    h.drain();
    assert_eq!(h.read_u64(SCRATCH), 9);
    assert!(h.sink.irqs().is_empty());
    assert_eq!(pba(&h), 0);
}
