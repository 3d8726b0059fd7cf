//! DMA_UNMAP against a running device: the reply comes only once the device no longer references
//! the unmapped memory (vfio-user spec: the server releases every reference, in-flight DMA
//! included, before it replies). A long FILL job writes into its own region while the client
//! unmaps it; from the reply on, the region's pages never change again.

mod common;

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use common::*;
use faultline_device::abi;

/// Control memory: writeback block, command queue, page tables, completion record.
const IOVA: u64 = 0x1_0000_0000;
const RAM: u64 = 1 << 20;
const WB: u64 = 0x1000;
const CQ: u64 = 0x2000;
const RECORD: u64 = 0x3000;
const ROOT: u64 = 0x10000;
const L2: u64 = 0x11000;
/// The job's buffer: its own region, 1 GiB aligned so one 1 GiB leaf maps it (VA = IOVA).
const BUF_IOVA: u64 = 0x4000_0000;
const BUF: u64 = 64 << 20;
const MSIX_CONTROL: u64 = 0x42;
const CTX: u16 = 1;

struct Guest {
    c: Raw,
    ram: File,
    buf: File,
    _irq: OwnedFd,
    tail: u32,
}

impl Guest {
    fn setup(server: &Server) -> Guest {
        let mut c = server.connect();
        c.negotiate();
        let ram = memfd(RAM);
        let buf = memfd(BUF);
        c.dma_map(IOVA, RAM, Some(ram.as_raw_fd()))
            .expect("map RAM");
        c.dma_map(BUF_IOVA, BUF, Some(buf.as_raw_fd()))
            .expect("map buffer");
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
        c.write32(abi::REG_CONTROL, abi::CTRL_ENABLE);
        c.write32(abi::REG_WB_LO, (IOVA + WB) as u32);
        c.write32(abi::REG_WB_HI, ((IOVA + WB) >> 32) as u32);
        c.write32(abi::REG_CQ_BASE_LO, (IOVA + CQ) as u32);
        c.write32(abi::REG_CQ_BASE_HI, ((IOVA + CQ) >> 32) as u32);
        c.write32(abi::REG_CQ_SIZE, 16);
        c.write32(abi::REG_CQ_CONTROL, abi::CQ_CTRL_ENABLE);
        Guest {
            c,
            ram,
            buf,
            _irq: irq,
            tail: 0,
        }
    }

    fn push(&mut self, opcode: u8, ctx: u16, seq: u64, args: [u64; 6]) {
        let mut cmd = [0u8; 64];
        cmd[0] = opcode;
        cmd[2..4].copy_from_slice(&ctx.to_le_bytes());
        cmd[8..16].copy_from_slice(&seq.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            cmd[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        pwrite(&self.ram, CQ + u64::from(self.tail & 15) * 64, &cmd);
        self.tail += 1;
        self.c
            .region_write_posted(BAR0, abi::REG_CQ_TAIL, &self.tail.to_le_bytes());
    }

    fn status(&self) -> u32 {
        u32::from_le_bytes(pread::<4>(&self.ram, RECORD + abi::COMPL_OFF_STATUS))
    }
}

fn read_all(f: &File) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut v = vec![0u8; BUF as usize];
    f.read_exact_at(&mut v, 0).expect("read buffer");
    v
}

#[test]
fn unmap_reply_waits_until_the_device_no_longer_writes_the_region() {
    let mut server = Server::start("dma-unmap");
    let mut raced = 0;
    for round in 0..6u64 {
        let mut g = Guest::setup(&server);
        g.push(abi::OP_BIND, CTX, 0, [IOVA + ROOT, 0, 0, 0, 0, 0]);
        // FILL the whole buffer with every lane of one engine, 512-byte chunks in order (small
        // chunks make the job last long enough for the unmap to meet it).
        let a5 = u64::from(abi::PAT_SEQ) | 0xff << 8 | 512 << 32;
        g.push(
            abi::OP_JOB_FILL,
            CTX,
            round,
            [0, BUF_IOVA, BUF, 0xab, IOVA + RECORD, a5],
        );
        // Unmap as soon as the job has started writing.
        assert!(
            wait_until(TIMEOUT, || pread::<1>(&g.buf, 0)[0] == 0xab),
            "the job never wrote its buffer"
        );
        let reply =
            g.c.call(DMA_UNMAP, &dma_unmap_payload(0, BUF_IOVA, BUF))
                .expect("DMA_UNMAP");
        assert_eq!(reply, dma_unmap_payload(0, BUF_IOVA, BUF));
        let after_reply = read_all(&g.buf);
        // The job ends: DMA error if the unmap cut it short, OK if it had finished.
        assert!(
            wait_until(TIMEOUT, || g.status() != 0),
            "job never completed"
        );
        let status = g.status();
        if status == abi::JOB_DMA_ERROR {
            raced += 1;
        } else {
            assert_eq!(status, abi::JOB_OK, "round {round}: job status");
        }
        // A device access still in flight would show up as bytes written after the reply.
        let at_end = read_all(&g.buf);
        let changed = after_reply
            .iter()
            .zip(&at_end)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            changed, 0,
            "round {round}: {changed} bytes of the unmapped region changed after the DMA_UNMAP reply"
        );
        // The connection still works.
        assert_eq!(g.c.read32(BAR0, abi::REG_ID), abi::ID_MAGIC);
        drop(g);
    }
    assert!(
        raced > 0,
        "no round raced the unmap against the running job"
    );
    server.assert_serves_new_client();
}
