//! A minimal guest for tests that drive the device's command queue directly: a control memfd (the
//! writeback block, a 16-entry command queue, page tables, a completion record) DMA-mapped at
//! [`IOVA`], MSI-X enabled on one eventfd, and a page table whose one 1 GiB leaf maps a test
//! buffer at [`BUF_IOVA`] (VA = IOVA), read/write. The buffer itself is mapped by the caller's
//! choice: from a file, or without one.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use faultline_device::abi;

use super::*;

/// Control memory: writeback block, command queue, page tables, completion record.
pub const IOVA: u64 = 0x1_0000_0000;
pub const RAM: u64 = 1 << 20;
pub const WB: u64 = 0x1000;
pub const CQ: u64 = 0x2000;
pub const RECORD: u64 = 0x3000;
pub const ROOT: u64 = 0x10000;
pub const L2: u64 = 0x11000;
/// The test buffer's IOVA: 1 GiB aligned, so one 1 GiB leaf maps it.
pub const BUF_IOVA: u64 = 0x4000_0000;
const MSIX_CONTROL: u64 = 0x42;
const CQ_ENTRIES: u32 = 16;

/// Enables the device and its command queue: writeback block at `wb`, `entries` commands at `cq`
/// (guest physical addresses).
pub fn start_queue(c: &mut Raw, wb: u64, cq: u64, entries: u32) {
    c.write32(abi::REG_CONTROL, abi::CTRL_ENABLE);
    c.write32(abi::REG_WB_LO, wb as u32);
    c.write32(abi::REG_WB_HI, (wb >> 32) as u32);
    c.write32(abi::REG_CQ_BASE_LO, cq as u32);
    c.write32(abi::REG_CQ_BASE_HI, (cq >> 32) as u32);
    c.write32(abi::REG_CQ_SIZE, entries);
    c.write32(abi::REG_CQ_CONTROL, abi::CQ_CTRL_ENABLE);
}

/// The guest side of one connection.
pub struct QueueGuest {
    pub c: Raw,
    pub ram: File,
    _irq: OwnedFd,
    tail: u32,
}

impl QueueGuest {
    /// Connects, maps the control memory and the buffer (`buf_fd` `None`: without a file
    /// descriptor), enables MSI-X and the queue.
    pub fn setup(server: &Server, buf_len: u64, buf_fd: Option<RawFd>) -> QueueGuest {
        let mut c = server.connect();
        c.negotiate();
        let ram = memfd(RAM);
        c.dma_map(IOVA, RAM, Some(ram.as_raw_fd()))
            .expect("map RAM");
        c.dma_map(BUF_IOVA, buf_len, buf_fd).expect("map buffer");
        let irq = eventfd();
        c.set_irqs_eventfd(MSIX, 0, &[irq.as_raw_fd()])
            .expect("SET_IRQS");
        c.region_write(CONFIG, 0x04, &0x0006u16.to_le_bytes())
            .expect("command register");
        c.region_write(CONFIG, MSIX_CONTROL, &0x8000u16.to_le_bytes())
            .expect("MSI-X enable");
        // Page tables: root[0] -> L2, L2[1] = 1 GiB leaf at BUF_IOVA, read/write.
        pwrite(&ram, ROOT, &((IOVA + L2) | abi::PTE_VALID).to_le_bytes());
        let leaf = BUF_IOVA | abi::PTE_VALID | abi::PTE_READ | abi::PTE_WRITE | abi::PTE_LEAF;
        pwrite(&ram, L2 + 8, &leaf.to_le_bytes());
        start_queue(&mut c, IOVA + WB, IOVA + CQ, CQ_ENTRIES);
        QueueGuest {
            c,
            ram,
            _irq: irq,
            tail: 0,
        }
    }

    /// Writes one command into the queue and rings the (posted) doorbell.
    pub fn push(&mut self, opcode: u8, ctx: u16, seq: u64, args: [u64; 6]) {
        let mut cmd = [0u8; 64];
        cmd[0] = opcode;
        cmd[2..4].copy_from_slice(&ctx.to_le_bytes());
        cmd[8..16].copy_from_slice(&seq.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            cmd[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        pwrite(&self.ram, CQ + u64::from(self.tail % CQ_ENTRIES) * 64, &cmd);
        self.tail += 1;
        self.c
            .region_write_posted(BAR0, abi::REG_CQ_TAIL, &self.tail.to_le_bytes());
    }

    /// The completion record's status (0: not complete).
    pub fn status(&self) -> u32 {
        u32::from_le_bytes(pread::<4>(&self.ram, RECORD + abi::COMPL_OFF_STATUS))
    }
}
