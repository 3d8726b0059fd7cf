//! Shuttle model checks of the crate's concurrent protocols.
//!
//! The crate's own source files are compiled into this test crate (`#[path]` modules below) with a `sync`
//! module that re-exports shuttle's atomics, locks and condition variables, so the scheduler explores
//! interleavings of the *production* code at every atomic operation and lock. Shuttle runs each schedule as
//! sequentially consistent: these checks prove the interleaving-level protocols (who waits for whom, what a
//! fill may do after an invalidation, who decides a stall); the weak-memory argument (SeqCst fences, seqlock
//! orderings) is in the `context` and `tlb` module docs.
//!
//! Iterations per check: `FAULTLINE_MODEL_ITERS` (default 300 random + 300 PCT schedules per check; the
//! default keeps `cargo test -p faultline-mmu` well under a minute on two cores).

#![allow(dead_code, unused_imports)]

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

fn iterations() -> usize {
    std::env::var("FAULTLINE_MODEL_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// Runs `f` under the random scheduler and under PCT (depth 3), `iterations()` schedules each.
fn check<F: Fn() + Send + Sync + 'static>(f: F) {
    let f = Arc::new(f);
    let g = Arc::clone(&f);
    let mut config = shuttle::Config::new();
    config.silence_warnings = true;
    shuttle::Runner::new(
        shuttle::scheduler::RandomScheduler::new(iterations()),
        config.clone(),
    )
    .run(move || g());
    shuttle::Runner::new(
        shuttle::scheduler::PctScheduler::new(3, iterations()),
        config,
    )
    .run(move || f());
}

const P: u64 = 0x4000_0000; // the page that gets remapped
const Q: u64 = 0x4000_1000; // a page of another context, and an eviction partner
const FRAME_A: u64 = 0xa000_0000;
const FRAME_B: u64 = 0xb000_0000;
const FRAME_Q: u64 = 0xc000_0000;

/// INVALIDATE vs translations in flight, TLB fills by walks that started before it, nested pins on two
/// contexts. After `invalidate` returns: no access holding the old translation is still alive, and no
/// translation (TLB hit or walk) ever again yields the old frame.
#[test]
fn invalidate_vs_inflight_walk_and_fill() {
    // 4 ways: nothing is evicted, so a stale fill would survive to be seen.
    check(|| invalidate_scenario(4));
}

#[test]
fn invalidate_vs_inflight_walk_and_fill_with_evictions() {
    // One way: every alternate access evicts, so lanes keep walking and filling.
    check(|| invalidate_scenario(1));
}

fn invalidate_scenario(ways: u32) {
    {
        let mem = Arc::new(FlatMem::new(0, 64 << 10));
        let (root0, root1, pte_p) = {
            let mut pt0 = PageTableBuilder::new(&mem, 0, 32 << 10).unwrap();
            let mut pt1 = PageTableBuilder::new(&mem, 32 << 10, 32 << 10).unwrap();
            pt0.map(P, FRAME_A, PageSize::Size4K, Perms::ALL).unwrap();
            pt0.map(Q, FRAME_Q, PageSize::Size4K, Perms::ALL).unwrap();
            pt1.map(Q, FRAME_Q, PageSize::Size4K, Perms::ALL).unwrap();
            (pt0.root(), pt1.root(), pt0.entry_addr(P, 0).unwrap())
        };
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

        // A lane that starts only after the invalidation returned.
        let late = {
            let (mmu, mem, done) = (mmu.clone(), mem.clone(), done.clone());
            thread::spawn(move || {
                let lane = mmu.lane(2).unwrap();
                while !done.load(SeqCst) {
                    thread::yield_now();
                }
                let acc = lane.translate(0, P, AccessType::Read, &*mem).unwrap();
                assert_eq!(
                    acc.page_base_pa, FRAME_B,
                    "old translation used after invalidate returned"
                );
            })
        };
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
            })
        };
        for l in lanes {
            l.join().unwrap();
        }
        driver.join().unwrap();
        late.join().unwrap();
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
fn replay_vs_cancel() {
    check(|| {
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

/// Fault ring producers (lanes) vs the consumer (driver), ring of 2 entries for 3 faulting lanes so it
/// overflows. The driver only runs when vector 1 fires (delay 0), drains, writes GET, services, replays.
/// Checks: PUT - GET never exceeds the size; entries are consumed in index order, each once, each valid; every
/// lane completes (no fault lost beyond what replay recovers, no stranded interrupt — either would hang);
/// posted + overflowed = faults taken.
#[test]
fn fault_ring_producers_vs_consumer_with_overflow() {
    const LANES: usize = 3;
    const SIZE: u32 = 2;
    check(|| {
        let stalls = Arc::new(StallTable::new(LANES));
        let ring = Arc::new(Mutex::new(FaultRing::new(SIZE, 0).unwrap()));
        let rmem = Arc::new(RingMem {
            body: (0..SIZE).map(|_| AtomicU64::new(0)).collect(),
            valid: (0..SIZE).map(|_| AtomicBool::new(false)).collect(),
        });
        let mapped: Arc<Vec<AtomicBool>> =
            Arc::new((0..LANES).map(|_| AtomicBool::new(false)).collect());
        let irq = Arc::new((Mutex::new(false), Condvar::new()));
        let finished = Arc::new(AtomicUsize::new(0));

        let signal = |irq: &(Mutex<bool>, Condvar)| {
            *irq.0.lock().unwrap() = true;
            irq.1.notify_one();
        };

        let lanes: Vec<_> = (0..LANES)
            .map(|lane| {
                let (stalls, ring, rmem, mapped, irq, finished) = (
                    stalls.clone(),
                    ring.clone(),
                    rmem.clone(),
                    mapped.clone(),
                    irq.clone(),
                    finished.clone(),
                );
                thread::spawn(move || {
                    let page = 0x10_0000 + lane as u64 * 0x1000;
                    while !mapped[lane].load(SeqCst) {
                        // Register before the entry can be seen, then post under the ring lock.
                        let t = stalls
                            .register_lane(lane, StallKey::new(0, page, AccessType::Read), 0)
                            .unwrap();
                        let action = {
                            let mut r = ring.lock().unwrap();
                            match r.post(0) {
                                PostOutcome::Posted { index, slot, irq } => {
                                    assert_eq!(index.wrapping_add(1), r.put());
                                    assert!(r.pending() <= SIZE);
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
                            signal(&irq);
                        }
                        assert_eq!(stalls.wait(t), StallOutcome::Replayed);
                    }
                    finished.fetch_add(1, SeqCst);
                    signal(&irq); // lets the driver notice the end
                })
            })
            .collect();

        let driver = {
            let (stalls, ring, rmem, mapped, irq, finished) = (
                stalls.clone(),
                ring.clone(),
                rmem.clone(),
                mapped.clone(),
                irq.clone(),
                finished.clone(),
            );
            thread::spawn(move || {
                let mut consumer = RingConsumer::new(SIZE).unwrap();
                let mut consumed = 0u64;
                loop {
                    {
                        let mut pending = irq.0.lock().unwrap();
                        while !*pending {
                            pending = irq.1.wait(pending).unwrap();
                        }
                        *pending = false;
                    }
                    if finished.load(SeqCst) == LANES {
                        break;
                    }
                    // Drain in index order, clearing the valid flag of each entry consumed.
                    loop {
                        let s = consumer.slot() as usize;
                        if !rmem.valid[s].load(SeqCst) {
                            break;
                        }
                        let body = rmem.body[s].load(SeqCst);
                        let e = FaultEntry {
                            va: body & !0xfff,
                            timestamp: 0,
                            context: 0,
                            lane: (body & 0xfff) as u16,
                            engine: 0,
                            access: AccessType::Read,
                            reason: FaultReason::NotPresent,
                        };
                        let got = consumer.pop(&e.encode()).unwrap().unwrap();
                        rmem.valid[s].store(false, SeqCst);
                        consumed += 1;
                        mapped[usize::from(got.lane)].store(true, SeqCst);
                    }
                    let action = ring
                        .lock()
                        .unwrap()
                        .on_get_write(consumer.get(), 0)
                        .unwrap();
                    if action == IrqAction::Now {
                        signal(&irq);
                    }
                    // Rule 3: replay after every batch, even an empty one.
                    stalls.replay(CONTEXT_ALL, 0);
                }
                consumed
            })
        };
        for l in lanes {
            l.join().unwrap();
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
        assert!(r.high_water() <= SIZE);
    });
}
