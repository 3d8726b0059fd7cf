//! The host-side driver simulator: a Rust "guest driver" playing against the real [`Device`] over
//! memfd-backed guest memory, the way the C driver does inside QEMU.
//!
//! Each *schedule* (one seed) builds a small device, page tables and a pool of backing pages, then:
//! - the main thread submits jobs (random operation, context, range, pattern, engine, lanes, chunk) under a
//!   reader/writer discipline that makes their results predictable, services the fault ring in batches
//!   (dedupe, sort, map, INVALIDATE what changed, write FL_REG_FR_GET, REPLAY), designates some jobs as
//!   victims whose write faults it CANCELs, occasionally CANCEL_ALLs a context, and checks completions;
//! - an "mm" thread races invalidations against it, as a Linux `mmu_interval_notifier` would: unmap and
//!   migrate a page (clear PTE → INVALIDATE → FENCE → copy to a new frame → poison the old one), write-protect
//!   a page (PTE read-only → INVALIDATE → FENCE → snapshot) and later check the snapshot before restoring
//!   write access, prefault pages, spurious INVALIDATE_ALLs;
//! - a few schedules end with a device reset, an FL_CTRL_RESET or a shutdown while jobs run or stall.
//!
//! Checked: every job completes with the status it may have (victims and CANCEL_ALLed jobs may be
//! cancelled, jobs caught by a reset are aborted, every other one succeeds) and the bytes / result the
//! reference model predicts; at the end every page equals the model; no stale access: freed frames stay
//! poisoned and write-protected pages keep their snapshot (a write after the fence of its unmap or
//! write-protect would change them); every fault entry is well formed and belongs to a job; the device's
//! counters agree with the jobs' fault counts and the writeback overflow count; nothing hangs (every wait
//! is bounded and fails with a message).
//!
//! `FAULTLINE_SIM_SCHEDULES=N` runs N schedules (default 10 000), `FAULTLINE_SIM_SEED=S` replays one seed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::FromRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use faultline_device::jobs::job_checksum;
use faultline_device::{abi, region, Device, DeviceConfig, GuestMem, InterruptSink};
use faultline_mmu::{AccessType, FaultEntry, FaultReason};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap,
};

// ---------------------------------------------------------------------------------------------------
// Layout of the guest memory of one schedule.

const MEM_SIZE: u64 = 512 << 10;
const WB: u64 = 0x0;
const CQ: u64 = 0x1000;
const CQ_SIZE: u32 = 64;
const FR: u64 = 0x2000;
const FENCE_MM: u64 = 0x3000;
const RECORDS: u64 = 0x4000;
const MAX_JOBS: usize = 64;
const PT: u64 = 0x8000;
const POOL: u64 = 0x2_0000;
const PAGE: u64 = 4096;
/// Virtual pages per context.
const NV: u64 = 6;
const CONTEXTS: u16 = 3;
const POISON: u8 = 0xd7;
/// A poisoned frame.
static POISONED: [u8; PAGE as usize] = [POISON; PAGE as usize];
/// Bound for every wait of a schedule.
const WAIT: Duration = Duration::from_secs(20);

/// `FAULTLINE_SIM_TRACE=1` prints the driver's actions (for replaying a seed).
fn trace_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FAULTLINE_SIM_TRACE").is_some())
}

macro_rules! trace {
    ($($t:tt)*) => {
        if trace_on() {
            eprintln!($($t)*);
        }
    };
}

/// What the schedules exercised, summed over a shard (checked so the simulator cannot become vacuous).
#[derive(Debug, Default)]
struct Coverage {
    jobs: std::sync::atomic::AtomicU64,
    faults: std::sync::atomic::AtomicU64,
    overflows: std::sync::atomic::AtomicU64,
    cancelled: std::sync::atomic::AtomicU64,
    aborted: std::sync::atomic::AtomicU64,
    migrations: std::sync::atomic::AtomicU64,
    write_protects: std::sync::atomic::AtomicU64,
    resets: std::sync::atomic::AtomicU64,
}

static COVERAGE: Coverage = Coverage {
    jobs: std::sync::atomic::AtomicU64::new(0),
    faults: std::sync::atomic::AtomicU64::new(0),
    overflows: std::sync::atomic::AtomicU64::new(0),
    cancelled: std::sync::atomic::AtomicU64::new(0),
    aborted: std::sync::atomic::AtomicU64::new(0),
    migrations: std::sync::atomic::AtomicU64::new(0),
    write_protects: std::sync::atomic::AtomicU64::new(0),
    resets: std::sync::atomic::AtomicU64::new(0),
};

fn count(c: &std::sync::atomic::AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn va_base(ctx: u16) -> u64 {
    (u64::from(ctx) + 1) << 30
}

// ---------------------------------------------------------------------------------------------------
// Small helpers.

/// SplitMix64.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Memfd-backed guest memory of `MEM_SIZE` bytes at GPA 0.
fn memfd_memory() -> GuestMem {
    // SAFETY: memfd_create with a valid NUL-terminated name and no flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"faultline-sim".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor owned by nothing else; the File takes ownership.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEM_SIZE).expect("memfd size");
    let ram = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(0),
        MEM_SIZE as usize,
        Some(FileOffset::new(file, 0)),
    )])
    .expect("memfd guest memory");
    GuestMemoryAtomic::new(ram)
}

fn load_u32(mem: &GuestMem, gpa: u64) -> u32 {
    mem.memory()
        .load(GuestAddress(gpa), Ordering::Acquire)
        .expect("guest load")
}

fn load_u64(mem: &GuestMem, gpa: u64) -> u64 {
    mem.memory()
        .load(GuestAddress(gpa), Ordering::Acquire)
        .expect("guest load")
}

fn store_u64(mem: &GuestMem, gpa: u64, v: u64) {
    mem.memory()
        .store(v, GuestAddress(gpa), Ordering::Release)
        .expect("guest store");
}

fn store_u32(mem: &GuestMem, gpa: u64, v: u32) {
    mem.memory()
        .store(v, GuestAddress(gpa), Ordering::Release)
        .expect("guest store");
}

fn read(mem: &GuestMem, gpa: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.memory()
        .read_slice(&mut v, GuestAddress(gpa))
        .expect("guest read");
    v
}

fn write(mem: &GuestMem, gpa: u64, data: &[u8]) {
    mem.memory()
        .write_slice(data, GuestAddress(gpa))
        .expect("guest write");
}

/// Records signals per vector and wakes waiters.
#[derive(Default)]
struct Sink {
    counts: Mutex<[u64; 4]>,
    cond: Condvar,
}

impl InterruptSink for Sink {
    fn signal(&self, vector: u16) {
        let mut c = self.counts.lock().unwrap();
        if let Some(n) = c.get_mut(usize::from(vector)) {
            *n += 1;
        }
        self.cond.notify_all();
    }
}

impl Sink {
    fn total(&self) -> u64 {
        self.counts.lock().unwrap().iter().sum()
    }

    /// Waits up to `d` for any signal after `seen` signals in all.
    fn wait_after(&self, seen: u64, d: Duration) {
        let c = self.counts.lock().unwrap();
        let _ = self
            .cond
            .wait_timeout_while(c, d, |c| c.iter().sum::<u64>() == seen)
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------------
// The driver.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Fill(u8),
    Copy,
    Checksum,
    Atomic(u64),
}

#[derive(Debug, Clone)]
struct Job {
    seq: u64,
    slot: usize,
    op: Op,
    ctx: u16,
    src: u64,
    dst: u64,
    len: u64,
    chunk: u64,
    victim: bool,
    /// Caught by a CANCEL_ALL of its context.
    may_cancel: bool,
    read_pages: Vec<u64>,
    write_pages: Vec<u64>,
    done: bool,
    faults: u64,
    /// Free-running command-queue index of the job's command.
    cq_index: u32,
}

#[derive(Debug, Clone, Default)]
struct VPage {
    /// The frame holding the page's bytes (mapped or not).
    home: u64,
    /// Leaf permission bits while mapped, 0 while unmapped.
    perms: u64,
    /// Write-protected by the mm thread: the snapshot taken after the fence.
    wp: Option<Vec<u8>>,
    /// The reference content.
    model: Vec<u8>,
    readers: u32,
    writers: u32,
    atomics: u32,
    /// A failed job wrote it unpredictably: repaired (fresh content) once no job claims it.
    dirty: bool,
}

struct State {
    pages: BTreeMap<(u16, u64), VPage>,
    /// Free frames, all poisoned.
    free: Vec<u64>,
    /// Next free page-table frame.
    pt_next: u64,
    roots: Vec<u64>,
    jobs: Vec<Job>,
    /// (ctx, page, access) of every job ever submitted, for checking fault entries.
    accesses: BTreeSet<(u16, u64, u8)>,
}

struct Queue {
    tail: u32,
}

/// What the two driver threads share.
struct Driver {
    seed: u64,
    dev: Device,
    mem: GuestMem,
    sink: Arc<Sink>,
    state: Mutex<State>,
    cq: Mutex<Queue>,
    mm_stop: AtomicBool,
}

fn cmd_bytes(opcode: u8, flags: u8, ctx: u16, seq: u64, args: [u64; 6]) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0] = opcode;
    b[1] = flags;
    b[2..4].copy_from_slice(&ctx.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    b
}

impl Driver {
    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!("seed {:#x}: {msg}", self.seed)
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_reg(&self, off: u64, v: u32) {
        self.dev
            .region_write(region::BAR0, off, &v.to_le_bytes())
            .expect("BAR0 write");
    }

    fn reg(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev
            .region_read(region::BAR0, off, &mut b)
            .expect("BAR0 read");
        u32::from_le_bytes(b)
    }

    /// Writes `cmds` into the command queue (waiting for room) and rings the doorbell. Returns the queue
    /// index of the first.
    fn submit(&self, cmds: &[[u8; 64]]) -> u32 {
        let mut q = self.cq.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = Instant::now() + WAIT;
        let first = q.tail;
        for c in cmds {
            while q
                .tail
                .wrapping_sub(load_u32(&self.mem, WB + abi::WB_CQ_HEAD))
                >= CQ_SIZE
            {
                if Instant::now() > deadline {
                    self.fail("command queue never drained");
                }
                self.check_error();
                std::thread::yield_now();
            }
            let slot = u64::from(q.tail & (CQ_SIZE - 1));
            write(&self.mem, CQ + slot * abi::CMD_SIZE, c);
            q.tail = q.tail.wrapping_add(1);
        }
        self.set_reg(abi::REG_CQ_TAIL, q.tail);
        first
    }

    fn check_error(&self) {
        let e = load_u32(&self.mem, WB + abi::WB_ERROR);
        if e != abi::ERR_NONE {
            self.fail(format!(
                "device error {e}, command {}",
                self.reg(abi::REG_ERROR_INFO)
            ));
        }
    }

    /// Waits (bounded) until `cond` holds, sleeping on the interrupt sink in between.
    fn wait_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.sink.total();
            if cond() {
                return;
            }
            self.check_error();
            if Instant::now() > deadline {
                self.fail(format!("timed out waiting for {what}"));
            }
            self.sink.wait_after(seen, Duration::from_micros(500));
        }
    }

    /// Submits `cmds` followed by a FENCE with an interrupt at `slot`, and waits for its value.
    fn fenced(&self, slot: u64, counter: &mut u64, cmds: &[[u8; 64]]) {
        *counter += 1;
        let v = *counter;
        let mut all = cmds.to_vec();
        all.push(cmd_bytes(
            abi::OP_FENCE,
            abi::CMD_F_IRQ,
            0,
            0,
            [slot, v, 0, 0, 0, 0],
        ));
        self.submit(&all);
        self.wait_until("a fence", || load_u64(&self.mem, slot) == v);
    }

    /// Allocates a free frame, checking its poison first.
    fn alloc(&self, st: &mut State) -> u64 {
        let Some(f) = st.free.pop() else {
            self.fail("frame pool exhausted")
        };
        if read(&self.mem, f, PAGE as usize)
            .iter()
            .any(|&b| b != POISON)
        {
            self.fail(format!("stale write: freed frame {f:#x} lost its poison"));
        }
        f
    }

    fn free(&self, st: &mut State, f: u64) {
        write(&self.mem, f, &POISONED);
        st.free.push(f);
    }

    fn pte_addr(&self, st: &mut State, ctx: u16, va: u64) -> u64 {
        let mut table = st.roots[usize::from(ctx)];
        for level in (1..4).rev() {
            let ea = table + ((va >> (12 + 9 * level)) & 511) * 8;
            let e = load_u64(&self.mem, ea);
            table = if e & abi::PTE_VALID == 0 {
                let t = st.pt_next;
                assert!(t + PAGE <= POOL, "page-table area exhausted");
                st.pt_next += PAGE;
                write(&self.mem, t, &[0u8; PAGE as usize]);
                store_u64(&self.mem, ea, t | abi::PTE_VALID);
                t
            } else {
                e & abi::PTE_ADDR_MASK
            };
        }
        table + ((va >> 12) & 511) * 8
    }

    /// Sets the leaf of (ctx, page) to `perms` (0: unmapped) on its home frame.
    fn set_pte(&self, st: &mut State, ctx: u16, page: u64, perms: u64) {
        let ea = self.pte_addr(st, ctx, page);
        let home = st.pages[&(ctx, page)].home;
        let pte = if perms == 0 {
            0
        } else {
            home | perms | abi::PTE_VALID
        };
        store_u64(&self.mem, ea, pte);
        st.pages.get_mut(&(ctx, page)).unwrap().perms = perms;
    }
}

fn inv(ctx: u16, va: u64, len: u64) -> [u8; 64] {
    cmd_bytes(abi::OP_INVALIDATE, 0, ctx, 0, [va, len, 0, 0, 0, 0])
}

const RWA: u64 = abi::PTE_READ | abi::PTE_WRITE | abi::PTE_ATOMIC;

/// Reads the model bytes of `[va, va+len)` of `ctx`.
fn model_read(st: &State, ctx: u16, va: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    let mut v = va;
    while v < va + len {
        let page = v & !(PAGE - 1);
        let off = (v - page) as usize;
        let n = ((PAGE - (v - page)).min(va + len - v)) as usize;
        out.extend_from_slice(&st.pages[&(ctx, page)].model[off..off + n]);
        v += n as u64;
    }
    out
}

fn model_write(st: &mut State, ctx: u16, va: u64, data: &[u8]) {
    let mut v = va;
    let mut i = 0;
    while i < data.len() {
        let page = v & !(PAGE - 1);
        let off = (v - page) as usize;
        let n = ((PAGE as usize) - off).min(data.len() - i);
        st.pages.get_mut(&(ctx, page)).unwrap().model[off..off + n]
            .copy_from_slice(&data[i..i + n]);
        v += n as u64;
        i += n;
    }
}

fn pages_of(va: u64, len: u64) -> Vec<u64> {
    let first = va & !(PAGE - 1);
    let last = (va + len - 1) & !(PAGE - 1);
    (0..=(last - first) / PAGE)
        .map(|i| first + i * PAGE)
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Schedule parameters.

#[derive(Debug, Clone, Copy)]
struct Params {
    contexts: u16,
    ring: u32,
    irq_delay: u32,
    jobs: usize,
    concurrency: usize,
    mm_ops: u32,
    victim_per_8: u64,
    cancel_all: bool,
    /// 0: none; 1: Device::reset; 2: FL_CTRL_RESET; 3: shutdown.
    reset: u32,
    reset_after: usize,
}

impl Params {
    fn draw(rng: &mut Rng) -> Params {
        let jobs = rng.range(1, 6) as usize;
        Params {
            contexts: rng.range(1, u64::from(CONTEXTS)) as u16,
            ring: [2, 2, 4, 8][rng.below(4) as usize],
            irq_delay: if rng.chance(1, 5) { 30 } else { 0 },
            jobs,
            concurrency: rng.range(1, 4) as usize,
            mm_ops: rng.range(0, 6) as u32,
            victim_per_8: rng.range(0, 2),
            cancel_all: rng.chance(1, 20),
            reset: if rng.chance(1, 16) {
                rng.range(1, 3) as u32
            } else {
                0
            },
            reset_after: rng.range(0, jobs as u64 - 1) as usize,
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// One schedule.

fn setup(seed: u64, rng: &mut Rng, p: &Params) -> Arc<Driver> {
    let mem = memfd_memory();
    let sink = Arc::new(Sink::default());
    let config = DeviceConfig {
        contexts: CONTEXTS,
        engines: 2,
        lanes: 2,
        tlb_sets: 4,
        tlb_ways: 2,
    };
    let dev = Device::new(config, mem.clone(), sink.clone()).expect("device");
    let mut st = State {
        pages: BTreeMap::new(),
        free: Vec::new(),
        pt_next: PT,
        roots: Vec::new(),
        jobs: Vec::new(),
        accesses: BTreeSet::new(),
    };
    let d = Driver {
        seed,
        dev,
        mem: mem.clone(),
        sink,
        state: Mutex::new(State {
            pages: BTreeMap::new(),
            free: Vec::new(),
            pt_next: PT,
            roots: Vec::new(),
            jobs: Vec::new(),
            accesses: BTreeSet::new(),
        }),
        cq: Mutex::new(Queue { tail: 0 }),
        mm_stop: AtomicBool::new(false),
    };
    // Frames: poisoned pool.
    let mut frame = POOL;
    while frame < MEM_SIZE {
        d.free(&mut st, frame);
        frame += PAGE;
    }
    // Shuffle the pool so homes are scattered.
    for i in (1..st.free.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        st.free.swap(i, j);
    }
    for ctx in 0..p.contexts {
        let root = st.pt_next;
        st.pt_next += PAGE;
        write(&mem, root, &[0u8; PAGE as usize]);
        st.roots.push(root);
        for v in 0..NV {
            let page = va_base(ctx) + v * PAGE;
            let home = d.alloc(&mut st);
            let model = rng.bytes(PAGE as usize);
            write(&mem, home, &model);
            st.pages.insert(
                (ctx, page),
                VPage {
                    home,
                    model,
                    ..VPage::default()
                },
            );
            // Some pages start mapped, some read-only, most unmapped (demand faulting).
            let perms = match rng.below(4) {
                0 => RWA,
                1 => abi::PTE_READ,
                _ => 0,
            };
            if perms != 0 {
                d.set_pte(&mut st, ctx, page, perms);
            }
        }
    }
    *d.lock_state() = st;
    // MSI-X on, queue, fault ring.
    d.dev
        .region_write(region::CONFIG, 0x42, &0x8000u16.to_le_bytes())
        .expect("MSI-X enable");
    d.set_reg(abi::REG_WB_LO, WB as u32);
    d.set_reg(abi::REG_CQ_BASE_LO, CQ as u32);
    d.set_reg(abi::REG_CQ_SIZE, CQ_SIZE);
    d.set_reg(abi::REG_CQ_CONTROL, abi::CQ_CTRL_ENABLE);
    d.set_reg(abi::REG_FR_BASE_LO, FR as u32);
    d.set_reg(abi::REG_FR_SIZE, p.ring);
    d.set_reg(abi::REG_FR_IRQ_DELAY, p.irq_delay);
    d.set_reg(abi::REG_FR_CONTROL, abi::FR_CTRL_ENABLE);
    if d.reg(abi::REG_ERROR) != abi::ERR_NONE {
        d.fail("setup refused");
    }
    let roots = d.lock_state().roots.clone();
    let binds: Vec<_> = roots
        .iter()
        .enumerate()
        .map(|(c, &r)| cmd_bytes(abi::OP_BIND, 0, c as u16, 0, [r, 0, 0, 0, 0, 0]))
        .collect();
    d.submit(&binds);
    Arc::new(d)
}

/// Picks a job that the reader/writer discipline allows now, claims its pages, and returns its command.
fn new_job(d: &Driver, st: &mut State, rng: &mut Rng, p: &Params) -> Option<[u8; 64]> {
    if st.jobs.len() >= MAX_JOBS {
        return None;
    }
    let ctx = rng.below(u64::from(p.contexts)) as u16;
    let window = NV * PAGE;
    let base = va_base(ctx);
    let kind = rng.below(4);
    let atomic = kind == 3;
    let mut len = rng.range(1, 3 * PAGE);
    if rng.chance(1, 4) {
        len = rng.range(1, 64);
    }
    if atomic {
        len = (len / 8).max(1) * 8;
    }
    let place = |rng: &mut Rng, align: u64| -> u64 {
        let off = rng.below(window - len + 1);
        base + off / align * align
    };
    let dst = place(rng, if atomic { 8 } else { 1 });
    let src = place(rng, 1);
    let op = match kind {
        0 => Op::Fill(rng.next() as u8),
        1 => Op::Copy,
        2 => Op::Checksum,
        _ => Op::Atomic(rng.next()),
    };
    if op == Op::Copy && src < dst + len && dst < src + len {
        return None;
    }
    let reads = matches!(op, Op::Copy | Op::Checksum);
    let writes = !matches!(op, Op::Checksum);
    let read_pages = if reads { pages_of(src, len) } else { vec![] };
    let write_pages = if writes { pages_of(dst, len) } else { vec![] };
    for pg in &write_pages {
        let v = &st.pages[&(ctx, *pg)];
        if v.dirty || v.readers != 0 || v.writers != 0 || (!atomic && v.atomics != 0) {
            return None;
        }
    }
    for pg in &read_pages {
        let v = &st.pages[&(ctx, *pg)];
        if v.dirty || v.writers != 0 || v.atomics != 0 {
            return None;
        }
    }
    for pg in &read_pages {
        st.pages.get_mut(&(ctx, *pg)).unwrap().readers += 1;
        st.accesses.insert((ctx, *pg, abi::ACCESS_READ));
    }
    for pg in &write_pages {
        let v = st.pages.get_mut(&(ctx, *pg)).unwrap();
        if atomic {
            v.atomics += 1;
        } else {
            v.writers += 1;
        }
        let acc = if atomic {
            abi::ACCESS_ATOMIC
        } else {
            abi::ACCESS_WRITE
        };
        st.accesses.insert((ctx, *pg, acc));
    }
    let pattern = rng.below(3) as u8;
    let engine: u64 = if rng.chance(1, 2) { 0xff } else { rng.below(2) };
    let lanes = rng.below(3);
    let chunk = match rng.below(6) {
        0 => 0,
        1 => 64,
        2 => 512,
        3 => 4096,
        4 => 8192,
        _ if atomic => 1024,
        _ => 1000,
    };
    let slot = st.jobs.len();
    let seq = (d.seed << 8) ^ slot as u64;
    let victim = matches!(op, Op::Fill(_) | Op::Copy) && rng.below(8) < p.victim_per_8;
    let (value, opcode) = match op {
        Op::Fill(b) => (u64::from(b), abi::OP_JOB_FILL),
        Op::Copy => (0, abi::OP_JOB_COPY),
        Op::Checksum => (0, abi::OP_JOB_CHECKSUM),
        Op::Atomic(v) => (v, abi::OP_JOB_ATOMIC_ADD),
    };
    let rec = RECORDS + slot as u64 * abi::COMPL_SIZE;
    write(&d.mem, rec, &[0u8; 32]);
    st.jobs.push(Job {
        seq,
        slot,
        op,
        ctx,
        src,
        dst,
        len,
        chunk: if chunk == 0 { 4096 } else { chunk },
        victim,
        may_cancel: false,
        read_pages,
        write_pages,
        done: false,
        faults: 0,
        cq_index: 0,
    });
    let a5 = u64::from(pattern) | engine << 8 | lanes << 16 | chunk << 32;
    trace!("submit job {slot}: {:?} a5 {a5:#x}", st.jobs[slot]);
    Some(cmd_bytes(
        opcode,
        abi::CMD_F_IRQ,
        ctx,
        seq,
        [src, dst, len, value, rec, a5],
    ))
}

/// Releases a completed job's pages. `failed`: its writes are unpredictable, so its pages get fresh
/// content once no running job claims them any more (the device no longer touches them then).
fn release(d: &Driver, st: &mut State, rng: &mut Rng, j: &Job, failed: bool) {
    for pg in &j.read_pages {
        st.pages.get_mut(&(j.ctx, *pg)).unwrap().readers -= 1;
    }
    for pg in &j.write_pages {
        let v = st.pages.get_mut(&(j.ctx, *pg)).unwrap();
        if matches!(j.op, Op::Atomic(_)) {
            v.atomics -= 1;
        } else {
            v.writers -= 1;
        }
        v.dirty |= failed;
        if v.dirty && v.readers == 0 && v.writers == 0 && v.atomics == 0 {
            let fresh = rng.bytes(PAGE as usize);
            write(&d.mem, v.home, &fresh);
            if let Some(snap) = v.wp.as_mut() {
                snap.clone_from(&fresh);
            }
            v.model = fresh;
            v.dirty = false;
        }
    }
}

/// Checks completed jobs against the model. `aborted_ok`: a reset happened (jobs may say ABORTED).
fn check_completions(d: &Driver, st: &mut State, rng: &mut Rng, aborted_ok: bool) -> usize {
    let mut completed = 0;
    for i in 0..st.jobs.len() {
        if st.jobs[i].done {
            continue;
        }
        let j = st.jobs[i].clone();
        let rec = RECORDS + j.slot as u64 * abi::COMPL_SIZE;
        let status = load_u32(&d.mem, rec + abi::COMPL_OFF_STATUS);
        if status == 0 {
            continue;
        }
        let b = read(&d.mem, rec, 28);
        let word = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let (seq, bytes, result) = (word(0), word(8), word(16));
        let faults = u16::from_le_bytes([b[24], b[25]]);
        let replays = u16::from_le_bytes([b[26], b[27]]);
        trace!("complete job {i}: status {status} bytes {bytes} faults {faults} replays {replays}");
        if seq != j.seq {
            d.fail(format!("job {i}: record seq {seq:#x}, want {:#x}", j.seq));
        }
        if replays > faults {
            d.fail(format!("job {i}: {replays} replays > {faults} faults"));
        }
        let allowed_fail = match status {
            abi::JOB_CANCELLED => j.victim || j.may_cancel,
            abi::JOB_ABORTED => aborted_ok,
            abi::JOB_OK => true,
            _ => false,
        };
        if !allowed_fail {
            d.fail(format!("job {i} {j:?}: status {status}"));
        }
        if status == abi::JOB_OK {
            if bytes != j.len {
                d.fail(format!("job {i}: {bytes} bytes, want {}", j.len));
            }
            match j.op {
                Op::Fill(v) => model_write(st, j.ctx, j.dst, &vec![v; j.len as usize]),
                Op::Copy => {
                    let data = model_read(st, j.ctx, j.src, j.len);
                    model_write(st, j.ctx, j.dst, &data);
                }
                Op::Checksum => {
                    let want = job_checksum(&model_read(st, j.ctx, j.src, j.len), j.chunk);
                    if result != want {
                        d.fail(format!(
                            "job {i} {j:?}: checksum {result:#x}, want {want:#x}"
                        ));
                    }
                }
                Op::Atomic(v) => {
                    if result != j.len / 8 {
                        d.fail(format!("job {i}: atomic result {result}"));
                    }
                    let mut data = model_read(st, j.ctx, j.dst, j.len);
                    for w in data.chunks_mut(8) {
                        let x = u64::from_le_bytes((&*w).try_into().unwrap()).wrapping_add(v);
                        w.copy_from_slice(&x.to_le_bytes());
                    }
                    model_write(st, j.ctx, j.dst, &data);
                }
            }
        }
        st.jobs[i].done = true;
        st.jobs[i].faults = u64::from(faults);
        count(&COVERAGE.jobs, 1);
        count(&COVERAGE.faults, u64::from(faults));
        match status {
            abi::JOB_CANCELLED => count(&COVERAGE.cancelled, 1),
            abi::JOB_ABORTED => count(&COVERAGE.aborted, 1),
            _ => {}
        }
        release(d, st, rng, &j, status != abi::JOB_OK);
        completed += 1;
    }
    completed
}

/// Takes the valid entries at GET (clearing their valid bits) and checks each is well formed and matches
/// an access some job makes.
fn read_batch(d: &Driver, get: &mut u32, ring: u32) -> Vec<FaultEntry> {
    let mut batch = Vec::new();
    loop {
        let gpa = FR + u64::from(*get & (ring - 1)) * abi::FAULT_SIZE;
        let info = load_u32(&d.mem, gpa + abi::FAULT_OFF_INFO);
        if info & abi::FAULT_VALID == 0 {
            break;
        }
        let bytes: [u8; 32] = read(&d.mem, gpa, 32).try_into().unwrap();
        let e = match FaultEntry::decode(&bytes) {
            Ok(Some(e)) => e,
            other => d.fail(format!("malformed fault entry {other:?}: {bytes:?}")),
        };
        store_u32(&d.mem, gpa + abi::FAULT_OFF_INFO, 0);
        *get = get.wrapping_add(1);
        batch.push(e);
    }
    if !batch.is_empty() {
        let st = d.lock_state();
        for e in &batch {
            if !st.accesses.contains(&(e.context, e.va, e.access.as_u8())) {
                d.fail(format!("fault entry for an access no job makes: {e:?}"));
            }
            if e.engine >= 2 || e.lane >= 2 {
                d.fail(format!(
                    "fault entry from a lane that does not exist: {e:?}"
                ));
            }
        }
    }
    batch
}

/// The driver's fault handler: drain a batch, dedupe and sort, map or cancel, INVALIDATE what changed,
/// write GET, REPLAY. Returns the number of entries consumed.
fn service_faults(d: &Driver, get: &mut u32, ring: u32, seen: &mut Vec<FaultEntry>) -> usize {
    let batch = read_batch(d, get, ring);
    if batch.is_empty() {
        return 0;
    }
    let n = batch.len();
    trace!("fault batch {batch:?}");
    // Most intrusive access per (ctx, page), sorted.
    let mut want: BTreeMap<(u16, u64), AccessType> = BTreeMap::new();
    for e in &batch {
        let a = want.entry((e.context, e.va)).or_insert(e.access);
        *a = (*a).max(e.access);
    }
    let mut cmds = Vec::new();
    {
        let mut st = d.lock_state();
        for (&(ctx, page), &access) in &want {
            let victim_write = access == AccessType::Write
                && st
                    .jobs
                    .iter()
                    .any(|j| !j.done && j.victim && j.ctx == ctx && j.write_pages.contains(&page));
            if victim_write {
                trace!("cancel {ctx} {page:#x}");
                cmds.push(cmd_bytes(
                    abi::OP_CANCEL,
                    0,
                    ctx,
                    0,
                    [page, 1 << abi::ACCESS_WRITE, 0, 0, 0, 0],
                ));
                continue;
            }
            let v = &st.pages[&(ctx, page)];
            let perms = if v.wp.is_some() { abi::PTE_READ } else { RWA };
            if v.perms != perms {
                trace!("map {ctx} {page:#x} perms {perms:#x}");
                d.set_pte(&mut st, ctx, page, perms);
                cmds.push(inv(ctx, page, PAGE));
            }
        }
        // Re-arm before replaying, then replay everything (rule 3: even if nothing was serviced).
        d.set_reg(abi::REG_FR_GET, *get);
        cmds.push(cmd_bytes(abi::OP_REPLAY, 0, 0xffff, 0, [0; 6]));
        d.submit(&cmds);
    }
    seen.extend(batch);
    n
}

/// The mm thread: races invalidations against the jobs and the fault handler.
fn mm_thread(d: &Driver, mut rng: Rng, ops: u32, contexts: u16) {
    let mut fence = 0u64;
    let mut done = 0;
    while !d.mm_stop.load(Ordering::Acquire) {
        if done >= ops {
            // Lift every write protection, then idle.
            lift_all(d, &mut fence);
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        done += 1;
        std::thread::sleep(Duration::from_micros(rng.below(150)));
        let ctx = rng.below(u64::from(contexts)) as u16;
        let page = va_base(ctx) + rng.below(NV) * PAGE;
        let mut st = d.lock_state();
        let v = st.pages[&(ctx, page)].clone();
        match rng.below(5) {
            // Unmap and migrate to a new frame; poison the old one.
            0 | 1 => {
                if v.wp.is_some() {
                    continue;
                }
                trace!("mm: unmap {ctx} {page:#x}");
                d.set_pte(&mut st, ctx, page, 0);
                d.fenced(FENCE_MM, &mut fence, &[inv(ctx, page, PAGE)]);
                let new = d.alloc(&mut st);
                trace!("mm: migrated {ctx} {page:#x} {:#x} -> {new:#x}", v.home);
                let bytes = read(&d.mem, v.home, PAGE as usize);
                write(&d.mem, new, &bytes);
                st.pages.get_mut(&(ctx, page)).unwrap().home = new;
                d.free(&mut st, v.home);
                count(&COVERAGE.migrations, 1);
            }
            // Write-protect: after the fence, the page must not change until write access returns.
            2 => {
                if v.perms & abi::PTE_WRITE == 0 || v.wp.is_some() {
                    continue;
                }
                trace!("mm: write-protect {ctx} {page:#x}");
                d.set_pte(&mut st, ctx, page, abi::PTE_READ);
                d.fenced(FENCE_MM, &mut fence, &[inv(ctx, page, PAGE)]);
                let snap = read(&d.mem, v.home, PAGE as usize);
                st.pages.get_mut(&(ctx, page)).unwrap().wp = Some(snap);
                count(&COVERAGE.write_protects, 1);
            }
            // Lift write protections.
            3 => {
                drop(st);
                lift_all(d, &mut fence);
            }
            // Prefault, or a spurious INVALIDATE_ALL.
            _ => {
                if v.perms == 0 && v.wp.is_none() {
                    trace!("mm: prefault {ctx} {page:#x}");
                    d.set_pte(&mut st, ctx, page, RWA);
                } else {
                    let all = cmd_bytes(abi::OP_INVALIDATE_ALL, 0, ctx, 0, [0; 6]);
                    d.fenced(FENCE_MM, &mut fence, &[all]);
                }
            }
        }
    }
    lift_all(d, &mut fence);
}

/// Checks every write-protected page against its snapshot and gives write access back.
fn lift_all(d: &Driver, fence: &mut u64) {
    let mut st = d.lock_state();
    let wp: Vec<(u16, u64)> = st
        .pages
        .iter()
        .filter(|(_, v)| v.wp.is_some())
        .map(|(k, _)| *k)
        .collect();
    for (ctx, page) in wp {
        let v = st.pages.get_mut(&(ctx, page)).unwrap();
        let snap = v.wp.take().unwrap();
        let now = read(&d.mem, v.home, PAGE as usize);
        if now != snap {
            d.fail(format!(
                "stale write: write-protected page {page:#x} of ctx {ctx} changed after its fence"
            ));
        }
        if v.perms != 0 {
            d.set_pte(&mut st, ctx, page, RWA);
        }
    }
    let _ = fence;
}

fn run_schedule(seed: u64) {
    let mut rng = Rng(seed);
    let p = Params::draw(&mut rng);
    let d = setup(seed, &mut rng, &p);
    let mm = {
        let d = Arc::clone(&d);
        let mm_rng = Rng(rng.next());
        std::thread::Builder::new()
            .name("sim-mm".into())
            .spawn(move || mm_thread(&d, mm_rng, p.mm_ops, p.contexts))
            .expect("mm thread")
    };
    let mut mm = Some(mm);
    let stop_mm = |mm: &mut Option<std::thread::JoinHandle<()>>| {
        d.mm_stop.store(true, Ordering::Release);
        if let Some(h) = mm.take() {
            if let Err(e) = h.join() {
                std::panic::resume_unwind(e);
            }
        }
    };
    let mut get = 0u32;
    let mut seen = Vec::new();
    let mut submitted = 0usize;
    let mut attempts = 0usize;
    let mut reset_done = false;
    let mut cancel_all_done = false;
    let deadline = Instant::now() + WAIT;
    loop {
        let signals = d.sink.total();
        let mut progress = false;
        // Submit.
        if !reset_done && submitted < p.jobs && attempts < 64 {
            let mut st = d.lock_state();
            let running = st.jobs.iter().filter(|j| !j.done).count();
            if running < p.concurrency {
                attempts += 1;
                if let Some(cmd) = new_job(&d, &mut st, &mut rng, &p) {
                    let index = d.submit(&[cmd]);
                    if let Some(j) = st.jobs.last_mut() {
                        j.cq_index = index;
                    }
                    submitted += 1;
                    progress = true;
                }
            }
        }
        if attempts >= 64 && submitted < p.jobs {
            // The discipline refused too often: run fewer jobs.
            attempts = 0;
            submitted = p.jobs;
        }
        // Faults.
        if !reset_done && service_faults(&d, &mut get, p.ring, &mut seen) > 0 {
            progress = true;
        }
        // Completions.
        {
            let mut st = d.lock_state();
            if check_completions(&d, &mut st, &mut rng, reset_done) > 0 {
                progress = true;
            }
        }
        // A CANCEL_ALL of one context.
        if p.cancel_all && !cancel_all_done && submitted > 0 && !reset_done && rng.chance(1, 8) {
            cancel_all_done = true;
            trace!("cancel_all");
            let mut st = d.lock_state();
            let ctx = rng.below(u64::from(p.contexts)) as u16;
            for j in st.jobs.iter_mut().filter(|j| !j.done && j.ctx == ctx) {
                j.may_cancel = true;
            }
            d.submit(&[cmd_bytes(abi::OP_CANCEL_ALL, 0, ctx, 0, [0; 6])]);
        }
        // A reset while jobs run or stall.
        if p.reset != 0 && !reset_done && submitted > p.reset_after {
            stop_mm(&mut mm);
            reset_done = true;
            count(&COVERAGE.resets, 1);
            match p.reset {
                1 => d.dev.reset(),
                2 => d.set_reg(abi::REG_CONTROL, abi::CTRL_RESET),
                _ => d.dev.shutdown(),
            }
            // Every job whose command the device consumed (head published past it) has its record the
            // moment the reset returns; later commands are the driver's (spec section 9).
            let mut st = d.lock_state();
            check_completions(&d, &mut st, &mut rng, true);
            let head = load_u32(&d.mem, WB + abi::WB_CQ_HEAD);
            let tail = d.cq.lock().unwrap().tail;
            for i in 0..st.jobs.len() {
                let j = st.jobs[i].clone();
                if j.done {
                    continue;
                }
                if tail.wrapping_sub(j.cq_index) <= tail.wrapping_sub(head) {
                    // Never consumed: the driver fails it; its pages are untouched.
                    st.jobs[i].done = true;
                    release(&d, &mut st, &mut rng, &j, false);
                } else {
                    d.fail(format!("job lost across the reset (head {head}): {j:?}"));
                }
            }
            if p.reset != 3 {
                // The driver brings a fault ring up again at once: no lane of an old job may post
                // into it.
                d.set_reg(abi::REG_FR_BASE_LO, FR as u32);
                d.set_reg(abi::REG_FR_SIZE, p.ring);
                d.set_reg(abi::REG_FR_CONTROL, abi::FR_CTRL_ENABLE);
            }
            let snapshot = read(&d.mem, 0, MEM_SIZE as usize);
            drop(st);
            std::thread::sleep(Duration::from_micros(300));
            if read(&d.mem, 0, MEM_SIZE as usize) != snapshot {
                d.fail("guest memory written after the reset returned");
            }
        }
        let all_done = d.lock_state().jobs.iter().all(|j| j.done);
        if (submitted >= p.jobs || reset_done) && all_done {
            break;
        }
        if Instant::now() > deadline {
            let st = d.lock_state();
            let running: Vec<_> = st.jobs.iter().filter(|j| !j.done).collect();
            d.fail(format!(
                "hang: jobs still running {running:?}; PUT {} GET {get} params {p:?}",
                load_u32(&d.mem, WB + abi::WB_FR_PUT)
            ));
        }
        if !progress {
            d.sink.wait_after(signals, Duration::from_micros(300));
        }
    }
    stop_mm(&mut mm);
    if !reset_done {
        // Entries nobody serviced (their jobs were cancelled or replayed meanwhile) are still checked.
        seen.extend(read_batch(&d, &mut get, p.ring));
    }
    let st = d.lock_state();
    // Every page equals the model; every free frame is still poisoned.
    for ((ctx, page), v) in &st.pages {
        let now = read(&d.mem, v.home, PAGE as usize);
        if now != v.model {
            let at = now
                .iter()
                .zip(&v.model)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            d.fail(format!(
                "ctx {ctx} page {page:#x}: byte {at} is {:#x}, model {:#x}; params {p:?}",
                now[at], v.model[at]
            ));
        }
    }
    for &f in &st.free {
        if read(&d.mem, f, PAGE as usize) != POISONED {
            d.fail(format!("stale write: freed frame {f:#x} lost its poison"));
        }
    }
    if !reset_done {
        // Counters agree with the jobs and the writeback block.
        let stats = d.dev.stats();
        let faults: u64 = [
            abi::STAT_FAULTS_READ,
            abi::STAT_FAULTS_WRITE,
            abi::STAT_FAULTS_ATOMIC,
        ]
        .iter()
        .map(|&i| stats[i as usize])
        .sum();
        let by_jobs: u64 = st.jobs.iter().map(|j| j.faults).sum();
        if faults != by_jobs {
            d.fail(format!("STATS faults {faults}, jobs report {by_jobs}"));
        }
        let overflows = u64::from(load_u32(&d.mem, WB + abi::WB_FR_OVERFLOWS));
        if stats[abi::STAT_FAULT_OVERFLOWS as usize] != overflows {
            d.fail("STATS overflows disagree with FL_WB_FR_OVERFLOWS");
        }
        if stats[abi::STAT_JOBS as usize] != st.jobs.len() as u64 {
            d.fail("STATS jobs disagree");
        }
        count(&COVERAGE.overflows, overflows);
        let put = u64::from(load_u32(&d.mem, WB + abi::WB_FR_PUT));
        if seen.len() as u64 != put || faults != put + overflows {
            d.fail(format!(
                "{faults} faults taken, {put} posted, {overflows} overflows, {} entries read",
                seen.len()
            ));
        }
        if stats[abi::STAT_FAULTS_PREFETCH as usize] != 0 {
            d.fail("prefetch faults from a device that never prefetches");
        }
        if seen
            .iter()
            .any(|e| e.reason != FaultReason::NotPresent && e.reason != FaultReason::Permission)
        {
            d.fail("bad fault reason");
        }
    }
    drop(st);
    d.dev.shutdown();
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Runs schedules `first..first + count` (by index), printing the seed of a failure.
fn run_range(first: u64, count: u64) {
    for i in first..first + count {
        let seed = 0x5eed_0000_0000 ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| run_schedule(seed)));
        if let Err(e) = r {
            eprintln!("simulator: schedule {i} failed; replay with FAULTLINE_SIM_SEED={seed:#x}");
            std::panic::resume_unwind(e);
        }
    }
}

const DEFAULT_SCHEDULES: u64 = 10_000;
const SHARDS: u64 = 4;

/// The schedules of one shard (the test harness runs the shards in parallel).
fn shard(k: u64) {
    if let Some(seed) = env_u64("FAULTLINE_SIM_SEED") {
        if k == 0 {
            eprintln!("simulator: replaying seed {seed:#x}");
            run_schedule(seed);
        }
        return;
    }
    let total = env_u64("FAULTLINE_SIM_SCHEDULES").unwrap_or(DEFAULT_SCHEDULES);
    let per = total.div_ceil(SHARDS);
    let first = k * per;
    let count = per.min(total.saturating_sub(first));
    let start = Instant::now();
    run_range(first, count);
    if k == 0 {
        check_coverage(count);
    }
    eprintln!(
        "simulator shard {k}: {count} schedules in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// Checks that the schedules counted so far in this process (at least this shard's) exercised every
/// feature, so the simulator cannot quietly stop testing something.
fn check_coverage(expected_schedules: u64) {
    let c = &COVERAGE;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    eprintln!("simulator coverage: {c:?}");
    if expected_schedules >= 2000 {
        for (name, v) in [
            ("jobs", get(&c.jobs)),
            ("faults", get(&c.faults)),
            ("overflows", get(&c.overflows)),
            ("cancelled jobs", get(&c.cancelled)),
            ("aborted jobs", get(&c.aborted)),
            ("migrations", get(&c.migrations)),
            ("write protections", get(&c.write_protects)),
            ("resets", get(&c.resets)),
        ] {
            assert!(v > 0, "the simulator never exercised {name}: {c:?}");
        }
    }
}

#[test]
fn simulator_shard_0() {
    shard(0);
}

#[test]
fn simulator_shard_1() {
    shard(1);
}

#[test]
fn simulator_shard_2() {
    shard(2);
}

#[test]
fn simulator_shard_3() {
    shard(3);
}
