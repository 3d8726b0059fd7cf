//! `Mmu` / `Lane` tests: counters, binding, lanes, permission upgrades, and the invalidation guarantee with
//! real threads.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faultline_mmu::{
    AccessType, ConfigError, Counters, FlatMem, JobFailure, Mmu, MmuConfig, MmuError, PageSize,
    PageTableBuilder, Perms, PhysError, PhysMem, StallError, StallKey, StallTable, TlbConfig,
    TranslateError, WalkError,
};

fn mmu(lanes: usize) -> Arc<Mmu> {
    Arc::new(
        Mmu::new(MmuConfig {
            contexts: 4,
            lanes,
            tlb: TlbConfig { sets: 16, ways: 4 },
        })
        .unwrap(),
    )
}

/// Guest memory of each test: 1 MiB, or 32 KiB under Miri (which builds a `FlatMem` one atomic word at a time,
/// thousands of times slower than native).
const MEM: u64 = if cfg!(miri) { 32 << 10 } else { 1 << 20 };

#[test]
fn config_is_validated() {
    assert_eq!(
        Mmu::new(MmuConfig {
            contexts: 0,
            ..MmuConfig::default()
        })
        .unwrap_err(),
        ConfigError::BadContexts(0)
    );
    assert_eq!(
        Mmu::new(MmuConfig {
            contexts: 0xffff,
            ..MmuConfig::default()
        })
        .unwrap_err(),
        ConfigError::BadContexts(0xffff)
    );
    assert!(matches!(
        Mmu::new(MmuConfig {
            tlb: TlbConfig { sets: 5, ways: 1 },
            ..MmuConfig::default()
        }),
        Err(ConfigError::Tlb(_))
    ));
}

#[test]
fn hits_misses_and_walks_are_counted() {
    let mem = FlatMem::new(0, MEM);
    let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
    pt.map(0x20_0000, 0x4000_0000, PageSize::Size2M, Perms::ALL)
        .unwrap();
    let mmu = mmu(1);
    mmu.bind(2, pt.root()).unwrap();
    let lane = mmu.lane(0).unwrap();
    for i in 0..10u64 {
        let a = lane
            .translate(2, 0x20_0000 + i * 0x1000, AccessType::Read, &mem)
            .unwrap();
        assert_eq!(a.pa(0x20_0000 + i * 0x1000), 0x4000_0000 + i * 0x1000);
    }
    assert!(lane
        .translate(2, 0x60_0000, AccessType::Read, &mem)
        .is_err());
    let mut c = Counters::default();
    mmu.add_counters(&mut c);
    assert_eq!((c.tlb_hits, c.tlb_misses, c.walks), (9, 2, 2));
    assert_eq!(c.invalidations, 1); // the bind
}

#[test]
fn bind_unbind_and_bad_arguments() {
    let mem = FlatMem::new(0, MEM);
    let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
    pt.map(0x1000, 0x1000, PageSize::Size4K, Perms::ALL)
        .unwrap();
    let mmu = mmu(1);
    let lane = mmu.lane(0).unwrap();
    assert_eq!(
        lane.translate(1, 0x1000, AccessType::Read, &mem)
            .unwrap_err(),
        TranslateError::Unbound(1)
    );
    assert_eq!(
        TranslateError::Unbound(1).job_failure(),
        Some(JobFailure::Unbound)
    );
    assert_eq!(
        lane.translate(9, 0x1000, AccessType::Read, &mem)
            .unwrap_err(),
        TranslateError::BadContext(9)
    );
    assert_eq!(
        TranslateError::BadContext(9).job_failure(),
        Some(JobFailure::Invalid)
    );
    assert_eq!(mmu.bind(1, 0x1001).unwrap_err(), MmuError::BadRoot(0x1001));
    assert_eq!(
        mmu.bind(1, 1 << 52).unwrap_err(),
        MmuError::BadRoot(1 << 52)
    );
    assert_eq!(mmu.bind(4, 0).unwrap_err(), MmuError::BadContext(4));
    mmu.bind(1, pt.root()).unwrap();
    assert_eq!(mmu.root(1).unwrap(), Some(pt.root()));
    assert!(lane.translate(1, 0x1000, AccessType::Read, &mem).is_ok());
    let e = lane
        .translate(1, 1 << 48, AccessType::Read, &mem)
        .unwrap_err();
    assert_eq!(
        e,
        TranslateError::Walk(WalkError::NonCanonical { va: 1 << 48 })
    );
    mmu.unbind(1).unwrap();
    assert_eq!(mmu.root(1).unwrap(), None);
    assert!(mmu.tlb().entries().is_empty());
    assert_eq!(
        lane.translate(1, 0x1000, AccessType::Read, &mem)
            .unwrap_err(),
        TranslateError::Unbound(1)
    );
    mmu.bind(1, pt.root()).unwrap();
    let g = mmu.generation(1).unwrap();
    mmu.reset();
    assert_eq!(mmu.root(1).unwrap(), None);
    assert!(mmu.generation(1).unwrap() > g);
}

#[test]
fn lanes_are_claimed_once() {
    let mmu = mmu(2);
    let l0 = mmu.lane(0).unwrap();
    assert_eq!(mmu.lane(0).unwrap_err(), MmuError::LaneInUse(0));
    assert_eq!(mmu.lane(2).unwrap_err(), MmuError::BadLane(2));
    assert_eq!(l0.id(), 0);
    drop(l0);
    assert!(mmu.lane(0).is_ok());
}

#[test]
fn permission_upgrade_without_invalidation_is_seen() {
    let mem = FlatMem::new(0, MEM);
    let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
    pt.map(
        0x1000,
        0x7000,
        PageSize::Size4K,
        Perms::from_pte(faultline_mmu::pte::PTE_READ),
    )
    .unwrap();
    let mmu = mmu(1);
    mmu.bind(0, pt.root()).unwrap();
    let lane = mmu.lane(0).unwrap();
    drop(lane.translate(0, 0x1000, AccessType::Read, &mem).unwrap());
    let e = lane
        .translate(0, 0x1000, AccessType::Write, &mem)
        .unwrap_err();
    assert_eq!(
        e.fault_reason(),
        Some(faultline_mmu::FaultReason::Permission)
    );
    // The driver upgrades the PTE and replays without invalidating: the cached read-only entry is re-walked.
    pt.map(0x1000, 0x7000, PageSize::Size4K, Perms::ALL)
        .unwrap();
    assert!(lane.translate(0, 0x1000, AccessType::Write, &mem).is_ok());
    assert_eq!(mmu.tlb().lookup(0, 0x1000).unwrap().perms, Perms::ALL);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "timing: the lane's 50 ms sleep must outlast the main thread's work, which Miri's interpreted clock does not give"
)]
fn invalidate_waits_for_accesses_in_flight() {
    let mem = Arc::new(FlatMem::new(0, MEM));
    let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
    pt.map(0x1000, 0xa000, PageSize::Size4K, Perms::ALL)
        .unwrap();
    let mmu = mmu(1);
    mmu.bind(0, pt.root()).unwrap();
    let holding = Arc::new(AtomicBool::new(false));
    let released = Arc::new(AtomicBool::new(false));
    let lane_thread = {
        let (mmu, mem, holding, released) =
            (mmu.clone(), mem.clone(), holding.clone(), released.clone());
        std::thread::spawn(move || {
            let lane = mmu.lane(0).unwrap();
            let a = lane.translate(0, 0x1000, AccessType::Read, &*mem).unwrap();
            holding.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
            released.store(true, Ordering::SeqCst);
            drop(a);
        })
    };
    while !holding.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    pt.unmap(0x1000, PageSize::Size4K).unwrap();
    // Another context's invalidation does not wait for this lane.
    assert!(mmu.begin_invalidate(1, 0, u64::MAX).unwrap().poll());
    let mut inv = mmu.begin_invalidate(0, 0x1000, 0x1000).unwrap();
    assert!(!inv.poll());
    assert_eq!(inv.pending_lanes(), 1);
    inv.wait();
    assert!(
        released.load(Ordering::SeqCst),
        "invalidate returned while the access was in flight"
    );
    lane_thread.join().unwrap();
}

/// A memory that runs a hook on its n-th read: used to invalidate in the middle of a walk.
struct HookMem<'a> {
    mem: &'a FlatMem,
    reads: AtomicUsize,
    at: usize,
    hook: Mutex<Option<Box<dyn FnOnce() + Send + 'a>>>,
}

impl PhysMem for HookMem<'_> {
    fn read_u64(&self, gpa: u64) -> Result<u64, PhysError> {
        if self.reads.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
            if let Some(h) = self.hook.lock().unwrap().take() {
                h();
            }
        }
        self.mem.read_u64(gpa)
    }
}

#[test]
fn a_walk_that_started_before_an_invalidation_does_not_fill() {
    let mem = FlatMem::new(0, MEM);
    let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
    pt.map(0x1000, 0xa000, PageSize::Size4K, Perms::ALL)
        .unwrap();
    let mmu = mmu(1);
    mmu.bind(0, pt.root()).unwrap();
    let lane = mmu.lane(0).unwrap();
    let inv = Mutex::new(None);
    let hm = HookMem {
        mem: &mem,
        reads: AtomicUsize::new(0),
        at: 4, // the leaf read: the invalidation runs after the walk sampled the generation
        hook: Mutex::new(Some(Box::new(|| {
            *inv.lock().unwrap() = Some(mmu.begin_invalidate(0, 0x1000, 0x1000).unwrap());
        }))),
    };
    let a = lane.translate(0, 0x1000, AccessType::Read, &hm).unwrap();
    assert_eq!(hm.reads.load(Ordering::SeqCst), 4);
    assert_eq!(a.page_base_pa, 0xa000);
    assert!(
        mmu.tlb().lookup(0, 0x1000).is_none(),
        "stale walk filled the TLB"
    );
    drop(hm);
    let mut inv = inv.into_inner().unwrap().unwrap();
    assert!(!inv.poll(), "the invalidation must wait for the access");
    drop(a);
    assert!(inv.poll());
    // A walk that starts after fills normally.
    drop(lane.translate(0, 0x1000, AccessType::Read, &mem).unwrap());
    assert!(mmu.tlb().lookup(0, 0x1000).is_some());
}

#[test]
fn nested_accesses_and_stall_refusal_while_pinned() {
    let mem = FlatMem::new(0, MEM);
    let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
    pt.map(0x1000, 0xa000, PageSize::Size4K, Perms::ALL)
        .unwrap();
    let mmu = mmu(1);
    mmu.bind(0, pt.root()).unwrap();
    mmu.bind(1, pt.root()).unwrap();
    let stalls = StallTable::new(1);
    let lane = mmu.lane(0).unwrap();
    let src = lane.translate(0, 0x1000, AccessType::Read, &mem).unwrap();
    let dst = lane.translate(1, 0x1000, AccessType::Write, &mem).unwrap();
    assert!(lane.is_pinned());
    let key = StallKey::new(0, 0x2000, AccessType::Write);
    assert_eq!(
        stalls.register(&lane, key, 0).unwrap_err(),
        StallError::Pinned(0)
    );
    // Pinned on contexts 0 and 1: invalidations of either wait.
    assert!(!mmu.begin_invalidate_ctx(0).unwrap().poll());
    assert!(!mmu.begin_invalidate_ctx(1).unwrap().poll());
    drop(dst);
    assert!(lane.is_pinned());
    drop(src);
    assert!(!lane.is_pinned());
    assert!(mmu.begin_invalidate_ctx(1).unwrap().poll());
    let t = stalls.register(&lane, key, 0).unwrap();
    assert_eq!(stalls.cancel_all(0), 1);
    assert_eq!(stalls.wait(t), faultline_mmu::StallOutcome::Cancelled);
}

#[test]
fn many_lanes_translate_while_the_driver_remaps() {
    // A stress run with real threads: each remap is INVALIDATE-fenced; lanes check every access against
    // the frame generation published only after the invalidation returned.
    const PAGES: u64 = 16;
    let mem = Arc::new(FlatMem::new(0, MEM));
    let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
    for p in 0..PAGES {
        pt.map(p << 12, (p << 12) | (1 << 32), PageSize::Size4K, Perms::ALL)
            .unwrap();
    }
    let mmu = mmu(3);
    mmu.bind(0, pt.root()).unwrap();
    // min_gen[p]: the smallest frame generation any access that *starts* now may see.
    let min_gen: Arc<Vec<std::sync::atomic::AtomicU64>> = Arc::new(
        (0..PAGES)
            .map(|_| std::sync::atomic::AtomicU64::new(1))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let lanes: Vec<_> = (0..3)
        .map(|id| {
            let (mmu, mem, min_gen, stop) =
                (mmu.clone(), mem.clone(), min_gen.clone(), stop.clone());
            std::thread::spawn(move || {
                let lane = mmu.lane(id).unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let p = (n * 7 + id as u64) % PAGES;
                    let floor = min_gen[p as usize].load(Ordering::SeqCst);
                    if let Ok(a) = lane.translate(0, p << 12, AccessType::Read, &*mem) {
                        assert!(
                            a.page_base_pa >> 32 >= floor,
                            "page {p}: stale frame after invalidation"
                        );
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for round in 2..300u64 {
        let p = round % PAGES;
        pt.map(
            p << 12,
            (p << 12) | (round << 32),
            PageSize::Size4K,
            Perms::ALL,
        )
        .unwrap();
        mmu.invalidate(0, p << 12, 4096).unwrap();
        min_gen[p as usize].store(round, Ordering::SeqCst);
    }
    stop.store(true, Ordering::Relaxed);
    for l in lanes {
        l.join().unwrap();
    }
}

/// `translate_span` extends a 4 KiB translation over the following pages while they map the next frames and
/// allow the access, and stops (without an error) at the first page that does not, at `max`, and at the end of
/// the level-0 table; on the TLB-hit path as on the walk path.
#[test]
fn spans_cover_contiguous_runs_only() {
    const VA: u64 = 0x4000_0000 + 0x1f_0000; // 16 pages before the 2 MiB boundary
    const PA: u64 = 0x8000_0000;
    let mem = FlatMem::new(0, MEM);
    let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
    // Pages 0..=15 contiguous up to the 2 MiB boundary, then page 16 (next table) contiguous too.
    for i in 0..17 {
        pt.map(VA + i * 4096, PA + i * 4096, PageSize::Size4K, Perms::ALL)
            .unwrap();
    }
    // Page 5 is read-only, page 9 maps a frame out of order, page 12 is not present.
    pt.map(
        VA + 5 * 4096,
        PA + 5 * 4096,
        PageSize::Size4K,
        Perms::from_pte(2),
    )
    .unwrap();
    pt.map(VA + 9 * 4096, PA + 20 * 4096, PageSize::Size4K, Perms::ALL)
        .unwrap();
    pt.unmap(VA + 12 * 4096, PageSize::Size4K).unwrap();
    let mmu = mmu(1);
    mmu.bind(1, pt.root()).unwrap();
    let lane = mmu.lane(0).unwrap();
    let span = |va: u64, max: u64, access: AccessType| {
        let a = lane.translate_span(1, va, max, access, &mem).unwrap();
        assert_eq!(a.pa(va), PA + (va - VA), "first page");
        a.span()
    };
    for round in ["walk", "TLB hit"] {
        // Page 5 allows reads: a read runs to page 9; a write stops before page 5.
        assert_eq!(
            span(VA + 8, 1 << 20, AccessType::Read),
            9 * 4096 - 8,
            "{round}"
        );
        assert_eq!(
            span(VA + 8, 1 << 20, AccessType::Write),
            5 * 4096 - 8,
            "{round}"
        );
        // `max` bounds the pages added, never the first one.
        assert_eq!(
            span(VA + 8, 2 * 4096 - 9, AccessType::Read),
            4096 - 8,
            "{round}"
        );
        assert_eq!(
            span(VA + 8, 2 * 4096 - 8, AccessType::Read),
            2 * 4096 - 8,
            "{round}"
        );
        assert_eq!(span(VA, 100, AccessType::Read), 4096, "{round}");
        // Page 12 is not present: the run from 10 stops at 12; from 13 it stops at the table's end.
        assert_eq!(
            span(VA + 10 * 4096, 1 << 20, AccessType::Write),
            2 * 4096,
            "{round}"
        );
        assert_eq!(
            span(VA + 13 * 4096, 1 << 20, AccessType::Write),
            3 * 4096,
            "{round}"
        );
        // Plain translate covers the page.
        let a = lane
            .translate(1, VA + 13 * 4096 + 1, AccessType::Read, &mem)
            .unwrap();
        assert_eq!(a.span(), 4095);
    }
    // A 2 MiB page spans to its own end only.
    pt.map(0x60_0000, 0x20_0000, PageSize::Size2M, Perms::ALL)
        .unwrap();
    pt.map(0x80_0000, 0x40_0000, PageSize::Size2M, Perms::ALL)
        .unwrap();
    let a = lane
        .translate_span(1, 0x60_1000, 4 << 20, AccessType::Write, &mem)
        .unwrap();
    assert_eq!(a.span(), (2 << 20) - 0x1000);
    drop(a);
    // Faults are the first page's alone.
    let e = lane
        .translate_span(1, VA + 12 * 4096, 1 << 20, AccessType::Read, &mem)
        .unwrap_err();
    assert!(e.fault_reason().is_some());
    assert!(!lane.is_pinned());
    let mut c = Counters::default();
    mmu.add_counters(&mut c);
    assert_eq!(c.tlb_hits + c.tlb_misses, 2 * 7 + 2 + 1 + 1);
}

/// A span never reaches a page whose mapping was changed and invalidated: the run is read from the page table
/// under the pin (no cache of its own), so the driver's remap + INVALIDATE is seen by the next span.
#[test]
fn spans_see_remaps_after_invalidation() {
    const VA: u64 = 0x1000_0000;
    const PA: u64 = 0x8000_0000;
    let mem = FlatMem::new(0, MEM);
    let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
    for i in 0..4 {
        pt.map(VA + i * 4096, PA + i * 4096, PageSize::Size4K, Perms::ALL)
            .unwrap();
    }
    let mmu = mmu(1);
    mmu.bind(0, pt.root()).unwrap();
    let lane = mmu.lane(0).unwrap();
    let span = |lane: &faultline_mmu::Lane| {
        lane.translate_span(0, VA, 1 << 20, AccessType::Write, &mem)
            .unwrap()
            .span()
    };
    assert_eq!(span(&lane), 4 * 4096);
    pt.map(VA + 2 * 4096, 0x9000_0000, PageSize::Size4K, Perms::ALL)
        .unwrap();
    mmu.invalidate(0, VA + 2 * 4096, 4096).unwrap();
    assert_eq!(span(&lane), 2 * 4096);
    pt.unmap(VA + 4096, PageSize::Size4K).unwrap();
    mmu.invalidate(0, VA + 4096, 4096).unwrap();
    assert_eq!(span(&lane), 4096);
    // The first page itself, remapped: the TLB entry was invalidated, the walk finds the new frame.
    pt.map(VA, 0x9000_0000 - 4096, PageSize::Size4K, Perms::ALL)
        .unwrap();
    mmu.invalidate(0, VA, 4096).unwrap();
    let a = lane
        .translate_span(0, VA, 1 << 20, AccessType::Write, &mem)
        .unwrap();
    assert_eq!(a.pa(VA), 0x9000_0000 - 4096);
    assert_eq!(a.span(), 4096, "page 1 is unmapped");
}
