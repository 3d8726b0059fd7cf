//! Shuttle model checks of the crate's concurrent protocols.
//!
//! The crate's own source files are compiled into this test crate (`#[path]` modules below) with a `sync`
//! module that re-exports shuttle's atomics, locks and condition variables, so the scheduler explores
//! interleavings of the *production* code at every atomic operation and lock. Shuttle runs each schedule as
//! sequentially consistent: these checks prove the interleaving-level protocols (who waits for whom, what a
//! fill may do after an invalidation, who decides a stall); the weak-memory argument (SeqCst fences, seqlock
//! orderings) is in the `context` and `tlb` module docs.
//!
//! Schedules per check: `FAULTLINE_MODEL_ITERS` (default 1000) random plus as many PCT (depth 3) schedules,
//! scaled down to 30% for the heavier invalidation checks; the default keeps `cargo test -p faultline-mmu`
//! well under a minute on two cores. Raise it for a soak: `FAULTLINE_MODEL_ITERS=100000`.

// Not every item of the included modules is used here; and two API-shape lints that clippy waives for the
// library's exported items (`avoid-breaking-exported-api`) fire on this private copy of them.
#![allow(
    dead_code,
    unused_imports,
    clippy::enum_variant_names,
    clippy::wrong_self_convention
)]

mod sync {
    pub(crate) use shuttle::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
    pub(crate) use shuttle::sync::{Condvar, Mutex, MutexGuard};

    pub(crate) fn spin_wait(_iteration: u32) {
        shuttle::thread::yield_now();
    }
}

#[path = "../src/context.rs"]
mod context;
#[path = "../src/fault.rs"]
mod fault;
#[path = "../src/mem.rs"]
mod mem;
#[path = "../src/pad.rs"]
mod pad;
#[path = "../src/pte.rs"]
mod pte;
#[path = "../src/ring.rs"]
mod ring;
#[path = "../src/stall.rs"]
mod stall;
#[path = "../src/stats.rs"]
mod stats;
#[path = "../src/tlb.rs"]
mod tlb;
#[path = "../src/walker.rs"]
mod walker;

use std::sync::Arc;

use shuttle::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use shuttle::sync::{Condvar, Mutex};
use shuttle::thread;

use context::{Mmu, MmuConfig, CONTEXT_ALL};
use fault::{AccessType, FaultEntry, FaultReason};
use mem::{FlatMem, PageTableBuilder, PhysMem};
use pte::{PageSize, Perms, PTE_READ, PTE_VALID, PTE_WRITE};
use ring::{FaultRing, IrqAction, PostOutcome, RingConsumer};
use stall::{StallKey, StallOutcome, StallTable};
use tlb::TlbConfig;

/// Schedules per scheduler per check: `FAULTLINE_MODEL_ITERS` (default 1000) times `weight` / 100.
fn iterations(weight: usize) -> usize {
    let base = std::env::var("FAULTLINE_MODEL_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000usize);
    (base * weight / 100).max(1)
}

/// Runs `f` under the random scheduler and under PCT (depth 3), `iterations(weight)` schedules each.
fn check<F: Fn() + Send + Sync + 'static>(weight: usize, f: F) {
    let f = Arc::new(f);
    let g = Arc::clone(&f);
    let mut config = shuttle::Config::new();
    config.silence_warnings = true;
    shuttle::Runner::new(
        shuttle::scheduler::RandomScheduler::new(iterations(weight)),
        config.clone(),
    )
    .run(move || g());
    shuttle::Runner::new(
        shuttle::scheduler::PctScheduler::new(3, iterations(weight)),
        config,
    )
    .run(move || f());
}

const P: u64 = 0x4000_0000; // the page that gets remapped
const Q: u64 = 0x4000_1000; // a page of another context, and an eviction partner
const FRAME_A: u64 = 0xa000_0000;
const FRAME_B: u64 = 0xb000_0000;
const FRAME_Q: u64 = 0xc000_0000;

const TABLE_BYTES: u64 = 32 << 10;

/// The page tables of the invalidation scenario, built once with the real (std) crate and copied into each
/// execution's shuttle-backed memory (building them under shuttle would cost thousands of scheduling points).
struct TableImage {
    words: Vec<(u64, u64)>,
    root0: u64,
    root1: u64,
    pte_p: u64,
}

static PAGE_TABLES: std::sync::LazyLock<TableImage> = std::sync::LazyLock::new(|| {
    use faultline_mmu::{FlatMem, PageSize, PageTableBuilder, Perms, PhysMem};
    let mem = FlatMem::new(0, TABLE_BYTES);
    let mut pt0 = PageTableBuilder::new(&mem, 0, TABLE_BYTES / 2).unwrap();
    let mut pt1 = PageTableBuilder::new(&mem, TABLE_BYTES / 2, TABLE_BYTES / 2).unwrap();
    pt0.map(P, FRAME_A, PageSize::Size4K, Perms::ALL).unwrap();
    pt0.map(Q, FRAME_Q, PageSize::Size4K, Perms::ALL).unwrap();
    pt1.map(Q, FRAME_Q, PageSize::Size4K, Perms::ALL).unwrap();
    let words = (0..TABLE_BYTES / 8)
        .map(|i| (i * 8, mem.read_u64(i * 8).unwrap()))
        .filter(|&(_, v)| v != 0)
        .collect();
    TableImage {
        words,
        root0: pt0.root(),
        root1: pt1.root(),
        pte_p: pt0.entry_addr(P, 0).unwrap(),
    }
});

/// INVALIDATE vs translations in flight, TLB fills by walks that started before it, nested pins on two
/// contexts. After `invalidate` returns: no access holding the old translation is still alive, and no
/// translation (TLB hit or walk) ever again yields the old frame.
#[test]
#[cfg_attr(
    miri,
    ignore = "shuttle switches stacks with inline assembly, which Miri cannot run"
)]
fn invalidate_vs_inflight_walk_and_fill() {
    // 4 ways: nothing is evicted, so a stale fill would survive to be seen.
    check(30, || invalidate_scenario(4));
}

#[test]
#[cfg_attr(
    miri,
    ignore = "shuttle switches stacks with inline assembly, which Miri cannot run"
)]
fn invalidate_vs_inflight_walk_and_fill_with_evictions() {
    // One way: every alternate access evicts, so lanes keep walking and filling.
    check(30, || invalidate_scenario(1));
}

fn invalidate_scenario(ways: u32) {
    {
        let image = &*PAGE_TABLES;
        let mem = Arc::new(FlatMem::new(0, TABLE_BYTES));
        for &(gpa, val) in &image.words {
            mem.write_u64(gpa, val).unwrap();
        }
        let (root0, root1, pte_p) = (image.root0, image.root1, image.pte_p);
        let mmu = Arc::new(
            Mmu::new(MmuConfig {
                contexts: 2,
                lanes: 3,
                tlb: TlbConfig { sets: 1, ways },
            })
            .unwrap(),
        );
        mmu.bind(0, root0).unwrap();
        mmu.bind(1, root1).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let using_a = Arc::new(AtomicUsize::new(0));

        let lanes: Vec<_> = (0..2)
            .map(|id| {
                let (mmu, mem, done, using_a) =
                    (mmu.clone(), mem.clone(), done.clone(), using_a.clone());
                thread::spawn(move || {
                    let lane = mmu.lane(id).unwrap();
                    for round in 0..2 {
                        let after = done.load(SeqCst);
                        // Lane 1 holds a pin on context 1 and translates context 0 inside it (nested pin).
                        let outer = (id == 1)
                            .then(|| lane.translate(1, Q, AccessType::Read, &*mem).unwrap());
                        let acc = lane.translate(0, P, AccessType::Write, &*mem).unwrap();
                        if acc.page_base_pa == FRAME_A {
                            assert!(!after, "old translation used after invalidate returned");
                            using_a.fetch_add(1, SeqCst);
                            thread::yield_now();
                            assert!(
                                !done.load(SeqCst),
                                "invalidate returned while the old translation was in use"
                            );
                            using_a.fetch_sub(1, SeqCst);
                        } else {
                            assert_eq!(acc.page_base_pa, FRAME_B);
                        }
                        drop(acc);
                        drop(outer);
                        if round == 0 && id == 0 {
                            // Evict P with another page of context 0.
                            drop(lane.translate(0, Q, AccessType::Read, &*mem).unwrap());
                        }
                    }
                })
            })
            .collect();

        let driver = {
            let (mmu, mem, done, using_a) =
                (mmu.clone(), mem.clone(), done.clone(), using_a.clone());
            thread::spawn(move || {
                mem.write_u64(pte_p, FRAME_B | PTE_READ | PTE_WRITE | PTE_VALID)
                    .unwrap();
                mmu.invalidate(0, P, 4096).unwrap();
                assert_eq!(using_a.load(SeqCst), 0);
                done.store(true, SeqCst);
                if let Some(t) = mmu.tlb().lookup(0, P) {
                    assert_eq!(t.page_base_pa, FRAME_B, "stale TLB entry after invalidate");
                }
                // A lane that starts after the invalidation returned.
                let late = mmu.lane(2).unwrap();
                let acc = late.translate(0, P, AccessType::Read, &*mem).unwrap();
                assert_eq!(
                    acc.page_base_pa, FRAME_B,
                    "old translation used after invalidate returned"
                );
            })
        };
        for l in lanes {
            l.join().unwrap();
        }
        driver.join().unwrap();
        assert!(mmu
            .tlb()
            .entries()
            .iter()
            .all(|e| e.translation.page_base_pa != FRAME_A));
        let lane = mmu.lane(0).unwrap();
        assert_eq!(
            lane.translate(0, P, AccessType::Read, &*mem)
                .unwrap()
                .page_base_pa,
            FRAME_B
        );
    }
}

/// REPLAY vs CANCEL of WRITE|ATOMIC on one page, with lanes (re-)registering concurrently: every stall gets
/// exactly one outcome, the READ lane is never cancelled, no lane is lost (a lost lane would hang the test).
#[test]
#[cfg_attr(
    miri,
    ignore = "shuttle switches stacks with inline assembly, which Miri cannot run"
)]
fn replay_vs_cancel() {
    check(100, || {
        let stalls = Arc::new(StallTable::new(3));
        let finished = Arc::new(AtomicUsize::new(0));
        let registrations = Arc::new(AtomicU64::new(0));
        let outcomes = Arc::new(AtomicU64::new(0));
        let accesses = [AccessType::Read, AccessType::Write, AccessType::Atomic];
        let lanes: Vec<_> = (0..3)
            .map(|lane| {
                let (stalls, finished, registrations, outcomes) = (
                    stalls.clone(),
                    finished.clone(),
                    registrations.clone(),
                    outcomes.clone(),
                );
                let access = accesses[lane];
                thread::spawn(move || {
                    // Fault, wait; a replayed WRITE/ATOMIC access faults again until cancelled; READ finishes
                    // on its first replay.
                    loop {
                        let t = stalls
                            .register_lane(lane, StallKey::new(0, 0x7000, access), 0)
                            .unwrap();
                        registrations.fetch_add(1, SeqCst);
                        let o = stalls.wait(t);
                        outcomes.fetch_add(1, SeqCst);
                        match (access, o) {
                            (AccessType::Read, StallOutcome::Replayed) => break,
                            (AccessType::Read, o) => panic!("read lane got {o:?}"),
                            (_, StallOutcome::Cancelled) => break,
                            (_, StallOutcome::Replayed) => continue,
                            (_, o) => panic!("unexpected {o:?}"),
                        }
                    }
                    finished.fetch_add(1, SeqCst);
                })
            })
            .collect();
        let driver = {
            let (stalls, finished) = (stalls.clone(), finished.clone());
            thread::spawn(move || {
                while finished.load(SeqCst) < 3 {
                    stalls.cancel(
                        0,
                        0x7abc,
                        AccessType::Write.mask_bit() | AccessType::Atomic.mask_bit(),
                    );
                    stalls.replay(0, 1);
                    thread::yield_now();
                }
            })
        };
        for l in lanes {
            l.join().unwrap();
        }
        driver.join().unwrap();
        assert_eq!(registrations.load(SeqCst), outcomes.load(SeqCst));
        assert_eq!(stalls.stalled(), 0);
    });
}

/// Guest memory of the fault ring: per slot the entry body and its valid flag.
struct RingMem {
    body: Vec<AtomicU64>,
    valid: Vec<AtomicBool>,
}

/// What the driver thread waits for: vector 1, or every lane finished.
#[derive(Default)]
struct Wake {
    irq: bool,
    finished: usize,
}

/// Fault-ring producers (lanes, each faulting on its own page of its own context) vs the consumer (a driver
/// that runs only when vector 1 fires, with moderation 0): drain in index order, clear valid, write GET,
/// service, replay. `replay_all`: REPLAY 0xffff after each batch (rule 3), else REPLAY only the contexts just
/// serviced.
/// Checks: PUT - GET never exceeds the size; a slot is never overwritten before it is consumed; entries are
/// consumed in index order; every lane completes — a fault lost beyond what replay recovers, or a stranded
/// interrupt, would leave the driver waiting forever, which shuttle reports as a deadlock; posted + overflowed
/// = faults taken.
fn fault_ring_scenario(lanes: usize, size: u32, replay_all: bool) {
    let stalls = Arc::new(StallTable::new(lanes));
    let ring = Arc::new(Mutex::new(FaultRing::new(size, 0).unwrap()));
    let rmem = Arc::new(RingMem {
        body: (0..size).map(|_| AtomicU64::new(0)).collect(),
        valid: (0..size).map(|_| AtomicBool::new(false)).collect(),
    });
    let mapped: Arc<Vec<AtomicBool>> =
        Arc::new((0..lanes).map(|_| AtomicBool::new(false)).collect());
    let wake = Arc::new((Mutex::new(Wake::default()), Condvar::new()));

    let handles: Vec<_> = (0..lanes)
        .map(|lane| {
            let (stalls, ring, rmem, mapped, wake) = (
                stalls.clone(),
                ring.clone(),
                rmem.clone(),
                mapped.clone(),
                wake.clone(),
            );
            thread::spawn(move || {
                let ctx = lane as u16;
                let page = 0x10_0000 + lane as u64 * 0x1000;
                while !mapped[lane].load(SeqCst) {
                    // Register before the entry can be seen, then post under the ring lock.
                    let t = stalls
                        .register_lane(lane, StallKey::new(ctx, page, AccessType::Read), 0)
                        .unwrap();
                    let action = {
                        let mut r = ring.lock().unwrap();
                        match r.post(0) {
                            PostOutcome::Posted { index, slot, irq } => {
                                assert_eq!(index.wrapping_add(1), r.put());
                                assert!(r.pending() <= size);
                                let s = slot as usize;
                                assert!(
                                    !rmem.valid[s].load(SeqCst),
                                    "slot reused before it was consumed"
                                );
                                rmem.body[s].store(page | lane as u64, SeqCst);
                                rmem.valid[s].store(true, SeqCst);
                                irq
                            }
                            PostOutcome::Overflow => IrqAction::None,
                        }
                    };
                    if action == IrqAction::Now {
                        wake.0.lock().unwrap().irq = true;
                        wake.1.notify_one();
                    }
                    assert_eq!(stalls.wait(t), StallOutcome::Replayed);
                }
                wake.0.lock().unwrap().finished += 1;
                wake.1.notify_one();
            })
        })
        .collect();

    let driver = {
        let (stalls, ring, rmem, mapped, wake) = (
            stalls.clone(),
            ring.clone(),
            rmem.clone(),
            mapped.clone(),
            wake.clone(),
        );
        thread::spawn(move || {
            let mut consumer = RingConsumer::new(size).unwrap();
            let mut consumed = 0u64;
            loop {
                {
                    let mut w = wake.0.lock().unwrap();
                    while !w.irq && w.finished < lanes {
                        w = wake.1.wait(w).unwrap();
                    }
                    if !w.irq {
                        break;
                    }
                    w.irq = false;
                }
                let mut serviced = Vec::new();
                loop {
                    let s = consumer.slot() as usize;
                    if !rmem.valid[s].load(SeqCst) {
                        break;
                    }
                    let body = rmem.body[s].load(SeqCst);
                    let lane = (body & 0xfff) as u16;
                    let e = FaultEntry {
                        va: body & !0xfff,
                        timestamp: 0,
                        context: lane,
                        lane,
                        engine: 0,
                        access: AccessType::Read,
                        reason: FaultReason::NotPresent,
                    };
                    let got = consumer.pop(&e.encode()).unwrap().unwrap();
                    rmem.valid[s].store(false, SeqCst);
                    consumed += 1;
                    mapped[usize::from(got.lane)].store(true, SeqCst);
                    serviced.push(got.context);
                }
                let action = ring
                    .lock()
                    .unwrap()
                    .on_get_write(consumer.get(), 0)
                    .unwrap();
                if action == IrqAction::Now {
                    wake.0.lock().unwrap().irq = true;
                }
                if replay_all {
                    stalls.replay(CONTEXT_ALL, 0);
                } else {
                    for ctx in serviced {
                        stalls.replay(ctx, 0);
                    }
                }
            }
            consumed
        })
    };
    for h in handles {
        h.join().unwrap();
    }
    let consumed = driver.join().unwrap();
    let r = ring.lock().unwrap();
    let mut c = stats::Counters::default();
    stalls.add_counters(&mut c);
    r.add_counters(&mut c);
    assert_eq!(
        r.posted() + r.overflows(),
        c.faults_read,
        "every fault is posted or counted as overflow"
    );
    assert!(consumed <= r.posted());
    assert!(r.high_water() <= size);
    assert_eq!(stalls.stalled(), 0);
}

/// Three lanes on a two-entry ring: overflows, recovered by the replay after each batch (rules 2 and 3).
#[test]
#[cfg_attr(
    miri,
    ignore = "shuttle switches stacks with inline assembly, which Miri cannot run"
)]
fn fault_ring_producers_vs_consumer_with_overflow() {
    check(100, || fault_ring_scenario(3, 2, true));
}

/// No overflow, targeted replays: entries posted between the driver's drain and its GET write are only
/// noticed because the GET write re-raises vector 1 when PUT != GET (rule 4).
#[test]
#[cfg_attr(
    miri,
    ignore = "shuttle switches stacks with inline assembly, which Miri cannot run"
)]
fn fault_ring_interrupt_rearm_on_get_write() {
    check(100, || fault_ring_scenario(2, 2, false));
}
