//! Driver-side helpers for the MMU, the fault ring and jobs: page tables in guest memory, command
//! builders, a fault-ring consumer and completion records. Shared by the engine tests and the simulator.

use std::sync::atomic::Ordering;

use faultline_device::{abi, GuestMem};
use faultline_mmu::{FaultEntry, PageSize};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

use super::Cmd;

/// Leaf permission bits.
pub const R: u64 = abi::PTE_READ;
pub const W: u64 = abi::PTE_WRITE;
pub const A: u64 = abi::PTE_ATOMIC;
pub const RWA: u64 = R | W | A;

pub fn store_u64(mem: &GuestMem, gpa: u64, val: u64) {
    mem.memory()
        .store(val, GuestAddress(gpa), Ordering::Release)
        .expect("guest store");
}

pub fn load_u64(mem: &GuestMem, gpa: u64) -> u64 {
    mem.memory()
        .load(GuestAddress(gpa), Ordering::Acquire)
        .expect("guest load")
}

pub fn load_u32(mem: &GuestMem, gpa: u64) -> u32 {
    mem.memory()
        .load(GuestAddress(gpa), Ordering::Acquire)
        .expect("guest load")
}

pub fn store_u32(mem: &GuestMem, gpa: u64, val: u32) {
    mem.memory()
        .store(val, GuestAddress(gpa), Ordering::Release)
        .expect("guest store");
}

pub fn write_bytes(mem: &GuestMem, gpa: u64, data: &[u8]) {
    mem.memory()
        .write_slice(data, GuestAddress(gpa))
        .expect("guest write");
}

pub fn read_bytes(mem: &GuestMem, gpa: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.memory()
        .read_slice(&mut v, GuestAddress(gpa))
        .expect("guest read");
    v
}

/// Device page tables (spec section 5) built in guest memory, tables bump-allocated from a region.
pub struct PageTables {
    mem: GuestMem,
    root: u64,
    next: u64,
    end: u64,
}

impl PageTables {
    /// Tables in `[base, base + bytes)` (4 KiB aligned); allocates the root.
    pub fn new(mem: &GuestMem, base: u64, bytes: u64) -> Self {
        let mut pt = PageTables {
            mem: mem.clone(),
            root: 0,
            next: base,
            end: base + bytes,
        };
        pt.root = pt.alloc();
        pt
    }

    pub fn root(&self) -> u64 {
        self.root
    }

    fn alloc(&mut self) -> u64 {
        assert!(self.next + 4096 <= self.end, "out of page-table memory");
        let t = self.next;
        self.next += 4096;
        write_bytes(&self.mem, t, &[0u8; 4096]);
        t
    }

    fn index(va: u64, level: u32) -> u64 {
        (va >> (12 + 9 * level)) & 511
    }

    /// The GPA of the entry for `va` at `level`, creating tables above it.
    pub fn entry_addr(&mut self, va: u64, level: u32) -> u64 {
        let mut table = self.root;
        for l in (level + 1..4).rev() {
            let ea = table + Self::index(va, l) * 8;
            let e = load_u64(&self.mem, ea);
            table = if e & abi::PTE_VALID == 0 || (l < 3 && e & abi::PTE_LEAF != 0) {
                let t = self.alloc();
                store_u64(&self.mem, ea, t | abi::PTE_VALID);
                t
            } else {
                e & abi::PTE_ADDR_MASK
            };
        }
        table + Self::index(va, level) * 8
    }

    /// Maps `va` → `pa` with a page of `size` and `perms`.
    pub fn map(&mut self, va: u64, pa: u64, size: PageSize, perms: u64) {
        let leaf = if size == PageSize::Size4K {
            0
        } else {
            abi::PTE_LEAF
        };
        self.set(va, size, pa | perms | leaf | abi::PTE_VALID);
    }

    /// Writes a raw entry for `va` at `size`'s level.
    pub fn set(&mut self, va: u64, size: PageSize, pte: u64) {
        let ea = self.entry_addr(va, size.level());
        store_u64(&self.mem, ea, pte);
    }

    /// Clears the leaf for `va` at `size`'s level.
    pub fn unmap(&mut self, va: u64, size: PageSize) {
        self.set(va, size, 0);
    }

    /// The raw entry for `va` at `size`'s level.
    pub fn get(&mut self, va: u64, size: PageSize) -> u64 {
        let ea = self.entry_addr(va, size.level());
        load_u64(&self.mem, ea)
    }
}

/// `a5` of a job: pattern, engine (0xff any), lanes (0 all), chunk bytes (0 = 4096).
pub fn a5(pattern: u8, engine: u8, lanes: u8, chunk: u32) -> u64 {
    u64::from(pattern) | u64::from(engine) << 8 | u64::from(lanes) << 16 | u64::from(chunk) << 32
}

impl Cmd {
    pub fn ctx(opcode: u8, context: u16, args: [u64; 6]) -> Self {
        Cmd {
            opcode,
            context,
            args,
            ..Cmd::default()
        }
    }

    pub fn bind(context: u16, root: u64) -> Self {
        Cmd::ctx(abi::OP_BIND, context, [root, 0, 0, 0, 0, 0])
    }

    pub fn unbind(context: u16) -> Self {
        Cmd::ctx(abi::OP_UNBIND, context, [0; 6])
    }

    pub fn invalidate(context: u16, va: u64, len: u64) -> Self {
        Cmd::ctx(abi::OP_INVALIDATE, context, [va, len, 0, 0, 0, 0])
    }

    pub fn invalidate_all(context: u16) -> Self {
        Cmd::ctx(abi::OP_INVALIDATE_ALL, context, [0; 6])
    }

    pub fn replay(context: u16) -> Self {
        Cmd::ctx(abi::OP_REPLAY, context, [0; 6])
    }

    pub fn cancel(context: u16, va: u64, mask: u64) -> Self {
        Cmd::ctx(abi::OP_CANCEL, context, [va, mask, 0, 0, 0, 0])
    }

    pub fn cancel_all(context: u16) -> Self {
        Cmd::ctx(abi::OP_CANCEL_ALL, context, [0; 6])
    }

    /// A job command with `FL_CMD_F_IRQ`.
    #[allow(clippy::too_many_arguments)]
    pub fn job(
        opcode: u8,
        context: u16,
        src: u64,
        dst: u64,
        len: u64,
        value: u64,
        record: u64,
        a5: u64,
        seq: u64,
    ) -> Self {
        Cmd {
            opcode,
            flags: abi::CMD_F_IRQ,
            context,
            seq,
            args: [src, dst, len, value, record, a5],
            ..Cmd::default()
        }
    }
}

/// A completion record as the driver reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Completion {
    pub seq: u64,
    pub bytes: u64,
    pub result: u64,
    pub faults: u16,
    pub replays: u16,
    pub status: u32,
}

/// Reads the record at `gpa` (status first, with acquire order, then the rest).
pub fn read_completion(mem: &GuestMem, gpa: u64) -> Completion {
    let status = load_u32(mem, gpa + abi::COMPL_OFF_STATUS);
    let b = read_bytes(mem, gpa, 28);
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    Completion {
        seq: u64_at(0),
        bytes: u64_at(8),
        result: u64_at(16),
        faults: u16::from_le_bytes([b[24], b[25]]),
        replays: u16::from_le_bytes([b[26], b[27]]),
        status,
    }
}

/// The driver's side of the fault ring.
pub struct FaultReader {
    pub base: u64,
    pub size: u32,
    pub get: u32,
}

impl FaultReader {
    pub fn new(base: u64, size: u32) -> Self {
        FaultReader { base, size, get: 0 }
    }

    /// Takes every valid entry at GET (clearing its valid bit), in order; does not write FL_REG_FR_GET.
    pub fn drain(&mut self, mem: &GuestMem) -> Vec<FaultEntry> {
        let mut out = Vec::new();
        loop {
            let slot = u64::from(self.get & (self.size - 1));
            let gpa = self.base + slot * abi::FAULT_SIZE;
            let info = load_u32(mem, gpa + abi::FAULT_OFF_INFO);
            if info & abi::FAULT_VALID == 0 {
                return out;
            }
            let bytes: [u8; 32] = read_bytes(mem, gpa, 32).try_into().unwrap();
            let e = FaultEntry::decode(&bytes)
                .expect("well-formed fault entry")
                .expect("valid entry");
            store_u32(mem, gpa + abi::FAULT_OFF_INFO, 0);
            out.push(e);
            self.get = self.get.wrapping_add(1);
        }
    }
}
