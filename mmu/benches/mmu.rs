//! Benchmarks: TLB hit (raw lookup and full `Lane::translate`), page-table walks, the miss path, and the
//! fault-ring push + drain cycle. Run: `cargo bench -p faultline-mmu --bench mmu` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use faultline_mmu::{
    walk, AccessType, FaultEntry, FaultReason, FaultRing, FlatMem, Mmu, MmuConfig, PageSize,
    PageTableBuilder, Perms, PostOutcome, RingConsumer, StallKey, StallTable, Tlb, TlbConfig,
    Translation,
};

const VA_4K: u64 = 0x0000_1234_5678_9000;
const VA_2M: u64 = 0x0000_2000_0020_0000;

fn tables() -> (FlatMem, u64) {
    let mem = FlatMem::new(0, 1 << 20);
    let mut pt = PageTableBuilder::new(&mem, 0, 1 << 20).unwrap();
    // 16 contiguous 4 KiB pages, all in one level-0 table (entries 393..409).
    for k in 0..16 {
        pt.map(
            VA_4K + k * 0x1000,
            0x1_0000_0000 + k * 0x1000,
            PageSize::Size4K,
            Perms::ALL,
        )
        .unwrap();
    }
    pt.map(VA_2M, 0x2_0000_0000, PageSize::Size2M, Perms::ALL)
        .unwrap();
    let root = pt.root();
    (mem, root)
}

fn tlb_hit(c: &mut Criterion) {
    let tlb = Tlb::new(TlbConfig { sets: 64, ways: 8 }).unwrap();
    let t = Translation {
        page_base_pa: 0x1_0000_0000,
        page_size: PageSize::Size4K,
        perms: Perms::ALL,
    };
    for i in 0..512u64 {
        tlb.insert(1, VA_4K + (i << 12), &t);
    }
    c.bench_function("tlb_lookup_hit_4k", |b| {
        b.iter(|| tlb.lookup(black_box(1), black_box(VA_4K + 0x10)))
    });

    let (mem, root) = tables();
    let mmu = Arc::new(Mmu::new(MmuConfig::default()).unwrap());
    mmu.bind(1, root).unwrap();
    let lane = mmu.lane(0).unwrap();
    drop(lane.translate(1, VA_4K, AccessType::Read, &mem).unwrap());
    drop(lane.translate(1, VA_2M, AccessType::Read, &mem).unwrap());
    c.bench_function("translate_hit_4k", |b| {
        b.iter(|| {
            lane.translate(1, black_box(VA_4K + 0x10), AccessType::Read, &mem)
                .map(|a| a.pa(VA_4K + 0x10))
        })
    });
    {
        let _pin = lane.pin(1).unwrap();
        c.bench_function("translate_hit_4k_inside_pin", |b| {
            b.iter(|| {
                lane.translate(1, black_box(VA_4K + 0x10), AccessType::Read, &mem)
                    .map(|a| a.pa(VA_4K + 0x10))
            })
        });
    }
    c.bench_function("translate_hit_2m", |b| {
        b.iter(|| {
            lane.translate(1, black_box(VA_2M + 0x1234), AccessType::Write, &mem)
                .map(|a| a.pa(VA_2M))
        })
    });

    // The same hit while another lane thread hammers the same TLB set.
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (mmu, stop) = (mmu.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mem, _) = tables();
            let lane = mmu.lane(1).unwrap();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..1000 {
                    black_box(
                        lane.translate(1, VA_4K, AccessType::Read, &mem)
                            .map(|a| a.page_base_pa)
                            .ok(),
                    );
                }
            }
        })
    };
    c.bench_function("translate_hit_4k_with_concurrent_lane", |b| {
        b.iter(|| {
            lane.translate(1, black_box(VA_4K + 0x10), AccessType::Read, &mem)
                .map(|a| a.pa(VA_4K + 0x10))
        })
    });
    stop.store(true, Ordering::Relaxed);
    other.join().unwrap();
}

fn walks(c: &mut Criterion) {
    let (mem, root) = tables();
    c.bench_function("walk_4k", |b| {
        b.iter(|| walk(&mem, root, black_box(VA_4K + 8), AccessType::Read))
    });
    c.bench_function("walk_2m", |b| {
        b.iter(|| walk(&mem, root, black_box(VA_2M + 8), AccessType::Read))
    });

    // Full miss path: one set, one way, two pages alternating, so every translate walks and fills.
    let mmu = Arc::new(
        Mmu::new(MmuConfig {
            tlb: TlbConfig { sets: 1, ways: 1 },
            ..MmuConfig::default()
        })
        .unwrap(),
    );
    mmu.bind(1, root).unwrap();
    let lane = mmu.lane(0).unwrap();
    let mut i = 0u64;
    c.bench_function("translate_miss_walk_fill_4k", |b| {
        b.iter(|| {
            i ^= 0x1000;
            lane.translate(1, black_box(VA_4K + i), AccessType::Read, &mem)
                .map(|a| a.page_base_pa)
        })
    });
    // The miss path in a full 8-way set whose ways are all recently used: the fill's CLOCK sweep passes
    // every way (nine pages cycling through one set).
    let mmu8 = Arc::new(
        Mmu::new(MmuConfig {
            tlb: TlbConfig { sets: 1, ways: 8 },
            ..MmuConfig::default()
        })
        .unwrap(),
    );
    mmu8.bind(1, root).unwrap();
    let lane8 = mmu8.lane(0).unwrap();
    let mut k = 0u64;
    c.bench_function("translate_miss_walk_fill_4k_8way", |b| {
        b.iter(|| {
            k = (k + 1) % 9;
            lane8
                .translate(1, black_box(VA_4K + (k << 12)), AccessType::Read, &mem)
                .map(|a| a.page_base_pa)
        })
    });
    // 32 KiB of contiguous 4 KiB pages (half an engine window) under one pin, every page missing the TLB
    // (one set, one way; the two halves of the 16 pages alternate): one span, against one translation per
    // page.
    let mut h = 0u64;
    c.bench_function("translate_32k_span", |b| {
        b.iter(|| {
            let _pin = lane.pin(1).unwrap();
            h ^= 0x8000;
            lane.translate_span(1, black_box(VA_4K + h), 32 << 10, AccessType::Read, &mem)
                .map(|a| a.span())
        })
    });
    c.bench_function("translate_32k_per_page", |b| {
        b.iter(|| {
            let _pin = lane.pin(1).unwrap();
            h ^= 0x8000;
            (0..8u64)
                .map(|p| {
                    lane.translate(1, black_box(VA_4K + h + (p << 12)), AccessType::Read, &mem)
                        .map_or(0, |a| a.page_base_pa)
                })
                .sum::<u64>()
        })
    });
    let mut j = 0u64;
    c.bench_function("translate_miss_walk_fill_2m", |b| {
        b.iter(|| {
            j ^= 1;
            let va = if j == 0 { VA_2M } else { VA_4K };
            lane.translate(1, black_box(va), AccessType::Read, &mem)
                .map(|a| a.page_base_pa)
        })
    });
}

fn fault_ring(c: &mut Criterion) {
    const SIZE: u32 = 256;
    let mut ring = FaultRing::new(SIZE, 0).unwrap();
    let mut consumer = RingConsumer::new(SIZE).unwrap();
    let mut mem = vec![[0u8; 32]; SIZE as usize];
    let mut n = 0u64;
    // One fault: reserve, encode body + info into ring memory, consumer decode + clear valid, GET doorbell.
    c.bench_function("fault_push_drain", |b| {
        b.iter(|| {
            n += 1;
            let e = FaultEntry {
                va: (n & 0xffff) << 12,
                timestamp: n,
                context: 1,
                lane: 3,
                engine: 0,
                access: AccessType::Write,
                reason: FaultReason::NotPresent,
            };
            if let PostOutcome::Posted { slot, .. } = ring.post(n) {
                let s = &mut mem[slot as usize];
                s[..28].copy_from_slice(&e.encode_body());
                s[28..].copy_from_slice(&e.info().to_le_bytes());
            }
            let slot = consumer.slot() as usize;
            let got = consumer.pop(&mem[slot]).ok().flatten();
            mem[slot][28..].fill(0);
            let _ = ring.on_get_write(consumer.get(), n);
            black_box(got)
        })
    });

    // Batches of 64: post 64, then drain 64 and write GET once (the driver's batching).
    c.bench_function("fault_push_drain_batch64", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for it in 0..iters {
                for k in 0..64u64 {
                    let e = FaultEntry {
                        va: k << 12,
                        timestamp: it,
                        context: 1,
                        lane: k as u16,
                        engine: 0,
                        access: AccessType::Read,
                        reason: FaultReason::NotPresent,
                    };
                    if let PostOutcome::Posted { slot, .. } = ring.post(it) {
                        mem[slot as usize] = e.encode();
                    }
                }
                for _ in 0..64 {
                    let slot = consumer.slot() as usize;
                    black_box(consumer.pop(&mem[slot]).ok().flatten());
                    mem[slot][28..].fill(0);
                }
                let _ = ring.on_get_write(consumer.get(), it);
            }
            start.elapsed() / 64
        })
    });

    // The stall bookkeeping around one fault: register, replay, collect.
    let stalls = StallTable::new(64);
    c.bench_function("stall_register_replay_take", |b| {
        b.iter(|| {
            let t = stalls
                .register_lane(5, StallKey::new(1, VA_4K, AccessType::Read), 0)
                .unwrap();
            stalls.replay(1, 1_000);
            black_box(stalls.try_take(t).ok())
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! { name = benches; config = config(); targets = tlb_hit, walks, fault_ring }
criterion_main!(benches);
