//! End-to-end with hand-built messages: guest memory in a memfd, an MSI-X eventfd, BAR0
//! programming, a FENCE command, the doorbell as a posted write, the interrupt and the fence
//! value in guest memory. Also: a client that leaves with work queued, and the next client.

mod common;

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use common::queue_guest::start_queue;
use common::*;
use faultline_device::abi;

const IOVA: u64 = 0x1_0000_0000;
const RAM: u64 = 2 << 20;
const WB: u64 = 0x1000;
const CQ: u64 = 0x2000;
const FENCE_AT: u64 = 0x9000;
/// MSI-X message control in configuration space (capability at 0x40).
const MSIX_CONTROL: u64 = 0x42;

/// A guest set up as a driver would: RAM mapped, MSI-X vector 0 on an eventfd and enabled,
/// writeback block and command queue configured and running.
struct Guest {
    c: Raw,
    ram: File,
    irq: OwnedFd,
    cq_entries: u32,
    tail: u32,
}

impl Guest {
    fn setup(server: &Server, cq_entries: u32) -> Guest {
        let mut c = server.connect();
        c.negotiate();
        let ram = memfd(RAM);
        c.dma_map(IOVA, RAM, Some(ram.as_raw_fd()))
            .expect("DMA_MAP");
        // QEMU also maps its BIOS ROM without a file descriptor.
        c.dma_map(0xfffc_0000, 0x40000, None)
            .expect("DMA_MAP without fd is accepted");

        let irq = eventfd();
        c.set_irqs_eventfd(MSIX, 0, &[irq.as_raw_fd()])
            .expect("SET_IRQS eventfd");

        // Bus master on, MSI-X enabled and unmasked (QEMU forwards these config writes).
        c.region_write(CONFIG, 0x04, &0x0006u16.to_le_bytes())
            .expect("command register");
        let ctl = u16::from_le_bytes(
            c.region_read(CONFIG, MSIX_CONTROL, 2)
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let ctl = (ctl | 0x8000) & !0x4000;
        c.region_write(CONFIG, MSIX_CONTROL, &ctl.to_le_bytes())
            .expect("MSI-X enable");

        assert_eq!(c.read32(BAR0, abi::REG_ID), abi::ID_MAGIC);
        start_queue(&mut c, IOVA + WB, IOVA + CQ, cq_entries);
        let status = c.read32(BAR0, abi::REG_STATUS);
        assert_ne!(
            status & abi::STATUS_QUEUE_RUNNING,
            0,
            "queue running (status {status:#x}, error {})",
            c.read32(BAR0, abi::REG_ERROR)
        );
        Guest {
            c,
            ram,
            irq,
            cq_entries,
            tail: 0,
        }
    }

    /// Writes a command into the next queue slot (not yet visible to the device).
    fn push(&mut self, opcode: u8, flags: u8, seq: u64, args: [u64; 6]) {
        let mut cmd = [0u8; 64];
        cmd[0] = opcode;
        cmd[1] = flags;
        cmd[8..16].copy_from_slice(&seq.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            cmd[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let slot = u64::from(self.tail & (self.cq_entries - 1));
        pwrite(&self.ram, CQ + slot * 64, &cmd);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Rings the doorbell as QEMU does: a posted write.
    fn doorbell(&mut self) {
        self.c
            .region_write_posted(BAR0, abi::REG_CQ_TAIL, &self.tail.to_le_bytes());
    }
}

#[test]
fn fence_round_trip_raises_msix_and_writes_guest_memory() {
    let mut server = Server::start("fence");
    let mut g = Guest::setup(&server, 16);
    let value = 0xfee1_dead_cafe_f00d_u64;
    g.push(
        abi::OP_FENCE,
        abi::CMD_F_IRQ,
        42,
        [IOVA + FENCE_AT, value, 0, 0, 0, 0],
    );
    g.doorbell();
    // The posted doorbell gets no reply: the next reply is for the next request.
    let n = wait_eventfd(&g.irq, TIMEOUT);
    assert!(
        n.is_some(),
        "no MSI-X interrupt within {TIMEOUT:?}; status {:#x} error {}",
        g.c.read32(BAR0, abi::REG_STATUS),
        g.c.read32(BAR0, abi::REG_ERROR)
    );
    assert_eq!(u64::from_le_bytes(pread::<8>(&g.ram, FENCE_AT)), value);
    let head = u32::from_le_bytes(pread::<4>(&g.ram, WB + abi::WB_CQ_HEAD));
    assert_eq!(head, 1, "writeback head");
    assert_eq!(g.c.read32(BAR0, abi::REG_CQ_HEAD), 1);

    // DEVICE_RESET stops the queue; the connection stays usable.
    g.c.call(DEVICE_RESET, &[]).expect("DEVICE_RESET");
    assert_eq!(
        g.c.read32(BAR0, abi::REG_STATUS) & abi::STATUS_QUEUE_RUNNING,
        0
    );
    drop(g);
    server.assert_serves_new_client();
}

#[test]
fn disconnect_with_queued_work_then_next_client_works() {
    let mut server = Server::start("disconnect");
    let mut g = Guest::setup(&server, 4096);
    for i in 0..4000u64 {
        g.push(abi::OP_FENCE, 0, i, [IOVA + FENCE_AT, i, 0, 0, 0, 0]);
    }
    g.doorbell();
    // Leave without waiting: the device must stop, the mappings go away.
    drop(g);

    // A second client right away gets a fresh device and a working queue.
    let mut g2 = Guest::setup(&server, 16);
    g2.push(
        abi::OP_FENCE,
        abi::CMD_F_IRQ,
        7,
        [IOVA + FENCE_AT, 0x77, 0, 0, 0, 0],
    );
    g2.doorbell();
    assert!(
        wait_eventfd(&g2.irq, TIMEOUT).is_some(),
        "second client gets its interrupt"
    );
    assert_eq!(u64::from_le_bytes(pread::<8>(&g2.ram, FENCE_AT)), 0x77);
    drop(g2);
    server.assert_serves_new_client();
    let log = server.log_text();
    assert!(
        log.contains("client session ended"),
        "stats logged at disconnect:\n{log}"
    );
}
