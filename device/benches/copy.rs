//! Engine COPY bandwidth through the MMU on mapped 4 KiB and 2 MiB pages, against a plain memcpy of the
//! same size in the same run.
//!
//! Each sample submits one `FL_OP_JOB_COPY` of [`SIZE`] bytes over fully mapped pages (no faults) and
//! waits for its completion interrupt; the memcpy baseline copies the same bytes between the same guest frames
//! with one plain `memmove` (vm-memory's `copy_to_volatile_slice`), so both sides see the same host memory
//! (transparent huge pages or not). After the criterion groups, the bench prints the median bandwidths and the ratios
//! engine / memcpy, for one lane (the fair comparison with a single-threaded memcpy) and for all lanes of
//! one engine.
//!
//! Run: `cargo bench -p faultline-device --bench copy`.

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use faultline_device::{abi, region, Device, DeviceConfig, GuestMem, InterruptSink};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
};

/// Bytes per COPY.
const SIZE: u64 = 16 << 20;
const MEM: u64 = 160 << 20;
const WB: u64 = 0x1000;
const CQ: u64 = 0x2000;
const CQ_SIZE: u32 = 64;
const REC: u64 = 0x3000;
const PT: u64 = 0x10_0000;
const PT_END: u64 = 0x100_0000;
const SRC_PA: u64 = 0x200_0000;
const DST_PA: u64 = 0x400_0000 + (SIZE.next_multiple_of(2 << 20));
const VA_4K: u64 = 0x10_0000_0000;
const VA_2M: u64 = 0x20_0000_0000;
const LANES: u16 = 2;

/// Counts interrupts and wakes the waiting "driver".
#[derive(Default)]
struct Irq {
    count: Mutex<u64>,
    cv: Condvar,
}

impl InterruptSink for Irq {
    fn signal(&self, _vector: u16) {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_all();
    }
}

struct Bench {
    dev: Device,
    irq: Arc<Irq>,
    mem: GuestMem,
    next_table: u64,
    root: u64,
    tail: u32,
    seq: u64,
}

impl Bench {
    fn new() -> Bench {
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)])
            .expect("guest memory");
        let mem = GuestMemoryAtomic::new(ram);
        let config = DeviceConfig {
            contexts: 1,
            engines: 1,
            lanes: LANES,
            ..DeviceConfig::default()
        };
        let irq = Arc::new(Irq::default());
        let dev = Device::new(config, mem.clone(), irq.clone()).expect("device");
        dev.region_write(region::CONFIG, 0x42, &0x8000u16.to_le_bytes())
            .expect("MSI-X enable");
        let mut b = Bench {
            dev,
            irq,
            mem,
            next_table: PT,
            root: 0,
            tail: 0,
            seq: 0,
        };
        b.root = b.table();
        b.set_reg(abi::REG_WB_LO, WB as u32);
        b.set_reg(abi::REG_CQ_BASE_LO, CQ as u32);
        b.set_reg(abi::REG_CQ_SIZE, CQ_SIZE);
        b.set_reg(abi::REG_CQ_CONTROL, abi::CQ_CTRL_ENABLE);
        let rwa = abi::PTE_READ | abi::PTE_WRITE | abi::PTE_ATOMIC | abi::PTE_VALID;
        for off in (0..SIZE).step_by(4096) {
            b.map(VA_4K + off, SRC_PA + off, 0, rwa);
            b.map(VA_4K + SIZE + off, DST_PA + off, 0, rwa);
        }
        for off in (0..SIZE).step_by(2 << 20) {
            b.map(VA_2M + off, SRC_PA + off, 1, rwa | abi::PTE_LEAF);
            b.map(VA_2M + SIZE + off, DST_PA + off, 1, rwa | abi::PTE_LEAF);
        }
        let root = b.root;
        b.command(abi::OP_BIND, 0, [root, 0, 0, 0, 0, 0]);
        let pattern: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 4096) as u8).collect();
        b.mem
            .memory()
            .write_slice(&pattern, GuestAddress(SRC_PA))
            .expect("source");
        b
    }

    fn set_reg(&self, off: u64, v: u32) {
        self.dev
            .region_write(region::BAR0, off, &v.to_le_bytes())
            .expect("BAR0 write");
    }

    fn load_u64(&self, gpa: u64) -> u64 {
        self.mem
            .memory()
            .load(GuestAddress(gpa), Ordering::Acquire)
            .expect("load")
    }

    fn store_u64(&self, gpa: u64, v: u64) {
        self.mem
            .memory()
            .store(v, GuestAddress(gpa), Ordering::Release)
            .expect("store");
    }

    fn table(&mut self) -> u64 {
        assert!(self.next_table < PT_END, "page-table area exhausted");
        let t = self.next_table;
        self.next_table += 4096;
        t
    }

    /// Writes the leaf `pte` for `va` at `level` (0: 4 KiB, 1: 2 MiB).
    fn map(&mut self, va: u64, pa: u64, level: u32, pte: u64) {
        let mut table = self.root;
        for l in (level + 1..4).rev() {
            let ea = table + ((va >> (12 + 9 * l)) & 511) * 8;
            let e = self.load_u64(ea);
            table = if e & abi::PTE_VALID == 0 {
                let t = self.table();
                self.store_u64(ea, t | abi::PTE_VALID);
                t
            } else {
                e & abi::PTE_ADDR_MASK
            };
        }
        self.store_u64(table + ((va >> (12 + 9 * level)) & 511) * 8, pa | pte);
    }

    fn command(&mut self, opcode: u8, flags: u8, args: [u64; 6]) {
        self.seq += 1;
        let mut c = [0u8; 64];
        c[0] = opcode;
        c[1] = flags;
        c[8..16].copy_from_slice(&self.seq.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            c[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let slot = u64::from(self.tail & (CQ_SIZE - 1));
        self.mem
            .memory()
            .write_slice(&c, GuestAddress(CQ + slot * 64))
            .expect("command");
        self.tail = self.tail.wrapping_add(1);
        self.set_reg(abi::REG_CQ_TAIL, self.tail);
    }

    /// One COPY of `SIZE` bytes from `va` to `va + SIZE` on `lanes` lanes (0: all); returns its duration.
    fn copy(&mut self, va: u64, lanes: u64) -> Duration {
        self.store_u64(REC + 24, 0);
        let chunk = 1u64 << 20;
        let a5 = lanes << 16 | chunk << 32;
        let before = *self.irq.count.lock().unwrap();
        let start = Instant::now();
        self.command(
            abi::OP_JOB_COPY,
            abi::CMD_F_IRQ,
            [va, va + SIZE, SIZE, 0, REC, a5],
        );
        // Wait for the completion interrupt, as a driver does.
        let mut n = self.irq.count.lock().unwrap();
        while *n == before {
            n = self.irq.cv.wait(n).unwrap();
        }
        drop(n);
        let status: u32 = self
            .mem
            .memory()
            .load(GuestAddress(REC + abi::COMPL_OFF_STATUS), Ordering::Acquire)
            .expect("record");
        let t = start.elapsed();
        assert_eq!(status, abi::JOB_OK, "copy failed");
        t
    }
}

/// The baseline: one memmove of `SIZE` bytes from the source frames to the destination frames.
fn memcpy(mem: &GuestMem) -> Duration {
    let m = mem.memory();
    let src = m
        .get_slice(GuestAddress(SRC_PA), SIZE as usize)
        .expect("src");
    let dst = m
        .get_slice(GuestAddress(DST_PA), SIZE as usize)
        .expect("dst");
    let start = Instant::now();
    black_box(&src).copy_to_volatile_slice(dst);
    start.elapsed()
}

/// The same memmove in 4 KiB pieces: what a 4 KiB-page copy costs with no MMU at all.
fn memcpy_4k_pieces(mem: &GuestMem) -> Duration {
    let m = mem.memory();
    let src = m
        .get_slice(GuestAddress(SRC_PA), SIZE as usize)
        .expect("src");
    let dst = m
        .get_slice(GuestAddress(DST_PA), SIZE as usize)
        .expect("dst");
    let start = Instant::now();
    for off in (0..SIZE as usize).step_by(4096) {
        let from = src.subslice(off, 4096).expect("piece");
        let to = dst.subslice(off, 4096).expect("piece");
        black_box(&from).copy_to_volatile_slice(to);
    }
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn gbps(d: Duration) -> f64 {
    SIZE as f64 / d.as_secs_f64() / 1e9
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut b = Bench::new();
    // Check the data once.
    b.copy(VA_4K, 0);
    let mut got = vec![0u8; SIZE as usize];
    b.mem
        .memory()
        .read_slice(&mut got, GuestAddress(DST_PA))
        .expect("read");
    let mut want = vec![0u8; SIZE as usize];
    b.mem
        .memory()
        .read_slice(&mut want, GuestAddress(SRC_PA))
        .expect("read");
    assert!(got == want, "COPY through the MMU produced wrong bytes");

    let mem = b.mem.clone();
    let mut g = c.benchmark_group("copy_16MiB");
    g.throughput(Throughput::Bytes(SIZE));
    g.bench_function("memcpy", |bench| {
        bench.iter_custom(|n| (0..n).map(|_| memcpy(&mem)).sum())
    });
    for (name, va) in [("4k", VA_4K), ("2m", VA_2M)] {
        for lanes in [1u64, 0] {
            let id = BenchmarkId::new(
                format!("engine_{name}"),
                if lanes == 0 { "all_lanes" } else { "1_lane" },
            );
            g.bench_function(id, |bench| {
                bench.iter_custom(|n| (0..n).map(|_| b.copy(va, lanes)).sum())
            });
        }
    }
    g.finish();

    // The ratios, from interleaved runs in the same process (not under `cargo test`, which runs each
    // benchmark once as a smoke test).
    if !std::env::args().any(|a| a == "--bench") {
        c.final_summary();
        return;
    }
    const RUNS: usize = 31;
    let mut t_memcpy = Vec::new();
    let mut t_pieces = Vec::new();
    let mut t = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    for _ in 0..RUNS {
        t_memcpy.push(memcpy(&mem));
        t_pieces.push(memcpy_4k_pieces(&mem));
        for (i, va) in [VA_4K, VA_2M].into_iter().enumerate() {
            for (j, lanes) in [1u64, 0].into_iter().enumerate() {
                t[i][j].push(b.copy(va, lanes));
            }
        }
    }
    let m = gbps(median(t_memcpy));
    println!(
        "\ncopy of {} MiB, medians of {RUNS} interleaved runs:",
        SIZE >> 20
    );
    println!("  memcpy                      {m:6.2} GB/s");
    let p = gbps(median(t_pieces));
    println!(
        "  memcpy in 4 KiB pieces      {p:6.2} GB/s   ratio {:.2} (no MMU)",
        p / m
    );
    for (i, name) in ["4 KiB pages", "2 MiB pages"].into_iter().enumerate() {
        for (j, lanes) in ["1 lane ", format!("{LANES} lanes").as_str()]
            .into_iter()
            .enumerate()
        {
            let e = gbps(median(std::mem::take(&mut t[i][j])));
            println!(
                "  engine {name}, {lanes}  {e:6.2} GB/s   ratio {:.2}",
                e / m
            );
        }
    }
    c.final_summary();
}
