//! Test harness: a device over anonymous guest memory, a recording interrupt sink, register and queue
//! helpers. Waits are bounded and fail with a message; nothing asserts on timing.

#![allow(dead_code)] // each test binary uses a different subset

pub mod gpu;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use faultline_device::{abi, region, Device, DeviceConfig, GuestMem, InterruptSink};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

/// Guest RAM: 16 MiB at 0, and 64 KiB at 1 GiB (a hole in between).
pub const RAM_SIZE: u64 = 16 << 20;
pub const HIGH_RAM: u64 = 1 << 30;
pub const HIGH_RAM_SIZE: u64 = 64 << 10;

pub const CQ_BASE: u64 = 0x10_0000;
pub const WB: u64 = 0x8000;
pub const SCRATCH: u64 = 0x40_0000;

/// Generous bound for anything the worker has to do.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// An interrupt as recorded by [`RecordingSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Irq {
    pub vector: u16,
    /// `FL_WB_CQ_HEAD` as read from guest memory at the moment of the signal.
    pub wb_head: u32,
}

/// Records every signalled vector together with the writeback head visible at that moment.
pub struct RecordingSink {
    mem: GuestMem,
    irqs: Mutex<Vec<Irq>>,
    cond: Condvar,
}

impl RecordingSink {
    pub fn new(mem: GuestMem) -> Self {
        RecordingSink {
            mem,
            irqs: Mutex::new(Vec::new()),
            cond: Condvar::new(),
        }
    }

    pub fn irqs(&self) -> Vec<Irq> {
        self.irqs.lock().unwrap().clone()
    }

    pub fn count(&self, vector: u16) -> usize {
        self.irqs().iter().filter(|i| i.vector == vector).count()
    }

    /// Waits until at least `n` signals of `vector` were recorded.
    pub fn wait_for(&self, vector: u16, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        let mut irqs = self.irqs.lock().unwrap();
        while irqs.iter().filter(|i| i.vector == vector).count() < n {
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for {n} interrupts on vector {vector}; got {:?}",
                *irqs
            );
            irqs = self.cond.wait_timeout(irqs, deadline - now).unwrap().0;
        }
    }
}

impl InterruptSink for RecordingSink {
    fn signal(&self, vector: u16) {
        let wb_head = self
            .mem
            .memory()
            .load(GuestAddress(WB + abi::WB_CQ_HEAD), Ordering::Acquire)
            .unwrap_or(u32::MAX);
        self.irqs.lock().unwrap().push(Irq { vector, wb_head });
        self.cond.notify_all();
    }
}

/// Polls `cond` until it holds, failing with `what` after [`TIMEOUT`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A 64-byte command entry.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cmd {
    pub opcode: u8,
    pub flags: u8,
    pub context: u16,
    pub reserved: u32,
    pub seq: u64,
    pub args: [u64; 6],
}

impl Cmd {
    pub fn nop() -> Self {
        Cmd::default()
    }

    pub fn fence(gpa: u64, value: u64, flags: u8) -> Self {
        Cmd {
            opcode: abi::OP_FENCE,
            flags,
            args: [gpa, value, 0, 0, 0, 0],
            ..Cmd::default()
        }
    }

    pub fn stats(gpa: u64, bytes: u64) -> Self {
        Cmd {
            opcode: abi::OP_STATS,
            args: [gpa, bytes, 0, 0, 0, 0],
            ..Cmd::default()
        }
    }

    pub fn op(opcode: u8) -> Self {
        Cmd {
            opcode,
            ..Cmd::default()
        }
    }

    pub fn bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0] = self.opcode;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.context.to_le_bytes());
        b[4..8].copy_from_slice(&self.reserved.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        for (i, a) in self.args.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        b
    }
}

/// A device plus the guest-side state a driver would keep.
pub struct Harness {
    pub dev: Device,
    pub mem: GuestMem,
    pub sink: Arc<RecordingSink>,
    /// Queue the driver set up: (base, size).
    pub queue: Option<(u64, u32)>,
    /// Driver-side free-running tail.
    pub tail: u32,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_config(DeviceConfig::default())
    }

    /// A harness whose device has `config`.
    pub fn with_config(config: DeviceConfig) -> Self {
        let ram = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), RAM_SIZE as usize),
            (GuestAddress(HIGH_RAM), HIGH_RAM_SIZE as usize),
        ])
        .expect("anonymous guest memory");
        let mem = GuestMemoryAtomic::new(ram);
        let sink = Arc::new(RecordingSink::new(mem.clone()));
        let dev = Device::new(config, mem.clone(), sink.clone()).expect("device");
        Harness {
            dev,
            mem,
            sink,
            queue: None,
            tail: 0,
        }
    }

    pub fn reg(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev
            .region_read(region::BAR0, off, &mut b)
            .expect("BAR0 read");
        u32::from_le_bytes(b)
    }

    pub fn set_reg(&self, off: u64, val: u32) {
        self.dev
            .region_write(region::BAR0, off, &val.to_le_bytes())
            .expect("BAR0 write");
    }

    pub fn cfg16(&self, off: u64) -> u16 {
        let mut b = [0u8; 2];
        self.dev
            .region_read(region::CONFIG, off, &mut b)
            .expect("config read");
        u16::from_le_bytes(b)
    }

    pub fn cfg32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev
            .region_read(region::CONFIG, off, &mut b)
            .expect("config read");
        u32::from_le_bytes(b)
    }

    pub fn set_cfg16(&self, off: u64, val: u16) {
        self.dev
            .region_write(region::CONFIG, off, &val.to_le_bytes())
            .expect("config write");
    }

    pub fn set_cfg32(&self, off: u64, val: u32) {
        self.dev
            .region_write(region::CONFIG, off, &val.to_le_bytes())
            .expect("config write");
    }

    /// Enables MSI-X (unmasked) in configuration space, as the guest's MSI-X setup does.
    pub fn enable_msix(&self) {
        self.set_cfg16(0x42, 0x8000);
    }

    pub fn write_u64(&self, gpa: u64, val: u64) {
        self.mem
            .memory()
            .write_obj(val, GuestAddress(gpa))
            .expect("guest write");
    }

    pub fn read_u64(&self, gpa: u64) -> u64 {
        self.mem
            .memory()
            .load(GuestAddress(gpa), Ordering::Acquire)
            .expect("guest read")
    }

    pub fn read_u32(&self, gpa: u64) -> u32 {
        self.mem
            .memory()
            .load(GuestAddress(gpa), Ordering::Acquire)
            .expect("guest read")
    }

    pub fn write_u32(&self, gpa: u64, val: u32) {
        self.mem
            .memory()
            .write_obj(val, GuestAddress(gpa))
            .expect("guest write");
    }

    pub fn wb_head(&self) -> u32 {
        self.read_u32(WB + abi::WB_CQ_HEAD)
    }

    pub fn wb_completed(&self) -> u64 {
        self.read_u64(WB + abi::WB_COMPLETED)
    }

    pub fn wb_error(&self) -> u32 {
        self.read_u32(WB + abi::WB_ERROR)
    }

    /// Programs the queue and writeback registers and sets `FL_CQ_CTRL_ENABLE` (no checks).
    pub fn program_queue(&mut self, base: u64, size: u32, wb: u64) {
        self.set_reg(abi::REG_WB_LO, wb as u32);
        self.set_reg(abi::REG_WB_HI, (wb >> 32) as u32);
        self.set_reg(abi::REG_CQ_BASE_LO, base as u32);
        self.set_reg(abi::REG_CQ_BASE_HI, (base >> 32) as u32);
        self.set_reg(abi::REG_CQ_SIZE, size);
        self.set_reg(abi::REG_CQ_CONTROL, abi::CQ_CTRL_ENABLE);
        self.queue = Some((base, size));
        self.tail = 0;
    }

    /// Programs a queue that must come up running.
    pub fn start_queue(&mut self, base: u64, size: u32) {
        self.program_queue(base, size, WB);
        assert_eq!(self.reg(abi::REG_ERROR), abi::ERR_NONE);
        assert_ne!(self.reg(abi::REG_STATUS) & abi::STATUS_QUEUE_RUNNING, 0);
    }

    /// Writes `cmds` at the tail (which must have room) and rings the doorbell once.
    pub fn submit(&mut self, cmds: &[Cmd]) {
        let (base, size) = self.queue.expect("queue set up");
        let mem = self.mem.memory();
        for cmd in cmds {
            let slot = u64::from(self.tail & (size - 1));
            mem.write_slice(&cmd.bytes(), GuestAddress(base + slot * abi::CMD_SIZE))
                .expect("write command");
            self.tail = self.tail.wrapping_add(1);
        }
        self.set_reg(abi::REG_CQ_TAIL, self.tail);
    }

    /// Free slots as the driver sees them (from the writeback head).
    pub fn room(&self) -> u32 {
        let (_, size) = self.queue.expect("queue set up");
        size - self.tail.wrapping_sub(self.wb_head())
    }

    /// Waits until the writeback head reaches the driver's tail.
    pub fn drain(&self) {
        let tail = self.tail;
        wait_until(&format!("writeback head to reach {tail}"), || {
            self.wb_head() == tail
        });
    }

    /// Waits until the device reports an error and returns `FL_REG_ERROR`.
    pub fn wait_error(&self) -> u32 {
        wait_until("the device to enter the error state", || {
            self.reg(abi::REG_STATUS) & abi::STATUS_ERROR != 0
        });
        self.reg(abi::REG_ERROR)
    }
}

impl Harness {
    /// Programs and enables the fault ring (no checks).
    pub fn program_fault_ring(&self, base: u64, size: u32, delay_us: u32) {
        self.set_reg(abi::REG_FR_BASE_LO, base as u32);
        self.set_reg(abi::REG_FR_BASE_HI, (base >> 32) as u32);
        self.set_reg(abi::REG_FR_SIZE, size);
        self.set_reg(abi::REG_FR_IRQ_DELAY, delay_us);
        self.set_reg(abi::REG_FR_CONTROL, abi::FR_CTRL_ENABLE);
    }

    /// Waits until the completion record at `gpa` has a status and returns it.
    pub fn wait_completion(&self, gpa: u64) -> gpu::Completion {
        wait_until(&format!("completion record at {gpa:#x}"), || {
            self.read_u32(gpa + abi::COMPL_OFF_STATUS) != 0
        });
        gpu::read_completion(&self.mem, gpa)
    }

    /// Submits `cmds` and waits until the device consumed them.
    pub fn run(&mut self, cmds: &[Cmd]) {
        self.submit(cmds);
        self.drain();
    }
}
