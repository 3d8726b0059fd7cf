//! Loom model checks of the two weak-memory protocols of the crate: the TLB seqlock and the lane pins against
//! the invalidation fence.
//!
//! Built only with `RUSTFLAGS="--cfg loom"` (`qemu/modelcheck` runs it): loom is a dev-dependency for that
//! cfg alone, and this file is empty without it. Like `tests/model_check.rs` (shuttle), it compiles the
//! crate's own `tlb.rs`, `context.rs`, `walker.rs`, ... through `#[path]` modules next to a `sync` module that
//! re-exports loom's atomics, so the checked code is the production code, orderings and all. Unlike shuttle,
//! which runs every schedule sequentially consistently, loom also lets each `Relaxed`/`Acquire` load return any
//! store the C++11 memory model allows (not only the latest), so a missing `Release`, `Acquire` or fence shows
//! up as a torn read, a stale translation or a data race.
//!
//! The state space is bounded by loom's preemption bound: `LOOM_MAX_PREEMPTIONS` (default 2 here; loom's own
//! default is unbounded). `LOOM_MAX_BRANCHES` (default 1000 in loom, raised here to 10,000 for the spin loops)
//! bounds one execution. Loom models `fence(SeqCst)` as a join through one global clock, a little stronger than
//! C++'s SC fences: the Dekker check below shows that *both* fences are needed, not that they suffice on every
//! hardware (that argument is in the `context` module docs).
#![cfg(loom)]
// Not every item of the included modules is used here; and two API-shape lints that clippy waives for the
// library's exported items (`avoid-breaking-exported-api`) fire on this private copy of them.
#![allow(
    dead_code,
    unused_imports,
    clippy::enum_variant_names,
    clippy::wrong_self_convention
)]

mod sync {
    pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
    pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};

    /// Every spin-wait iteration is a yield, so loom schedules the thread being waited for.
    pub(crate) fn spin_wait(_iteration: u32) {
        loom::thread::yield_now();
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
#[path = "../src/stats.rs"]
mod stats;
#[path = "../src/tlb.rs"]
mod tlb;
#[path = "../src/walker.rs"]
mod walker;

use std::sync::Arc;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::thread;

use context::{Mmu, MmuConfig};
use fault::AccessType;
use mem::{PhysError, PhysMem};
use pte::{PageSize, Perms, PTE_READ, PTE_VALID, PTE_WRITE};
use tlb::{Tlb, TlbConfig};
use walker::Translation;

/// Runs `f` under loom with this file's default bounds (see the module docs) and prints how many executions
/// loom explored (`--nocapture` shows it; `qemu/modelcheck` reports it).
fn model<F: Fn() + Sync + Send + 'static>(name: &str, f: F) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        b.max_branches = 10_000;
    }
    let executions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&executions);
    let start = std::time::Instant::now();
    b.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    eprintln!(
        "loom: {name}: {} executions in {:.1} s, preemption bound {}",
        executions.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        b.preemption_bound.unwrap_or(0)
    );
}

const P: u64 = 0x4000_0000; // the page that gets remapped or invalidated
const Q: u64 = 0x4000_1000; // another page of the same context (same TLB set: the TLB has one)
const FRAME_A: u64 = 0xa000_0000; // P's frame before the invalidation
const FRAME_B: u64 = 0xb000_0000; // P's frame after it; Q's frame in the seqlock check
const FRAME_A2: u64 = FRAME_A + 0x1000; // Q's frame in the Mmu checks: P and Q form a contiguous run

fn translation(page_base_pa: u64, perms: Perms) -> Translation {
    Translation {
        page_base_pa,
        page_size: PageSize::Size4K,
        perms,
    }
}

/// TLB seqlock: a writer invalidates P's entry and fills Q into the same (only) way while a reader looks both
/// up. Every hit must be an entry that was really in the TLB, never the tag of one with the data of the other
/// (a torn read: P translated to Q's frame or permissions), and a lookup that starts after the invalidation
/// returned must miss P.
#[test]
fn tlb_seqlock() {
    model("tlb_seqlock", || {
        let tlb = Arc::new(Tlb::new(TlbConfig { sets: 1, ways: 1 }).unwrap());
        let old_p = translation(FRAME_A, Perms::ALL);
        let new_q = translation(FRAME_B, Perms::from_pte(PTE_READ));
        tlb.insert(1, P, &old_p);
        let invalidated = Arc::new(AtomicBool::new(false));

        let writer = {
            let (tlb, invalidated) = (tlb.clone(), invalidated.clone());
            thread::spawn(move || {
                tlb.invalidate(1, P, 4096);
                invalidated.store(true, Ordering::Release);
                tlb.insert(1, Q, &new_q);
            })
        };

        let after = invalidated.load(Ordering::Acquire);
        if let Some(t) = tlb.lookup(1, P) {
            assert!(!after, "P hit after its invalidation returned: {t:?}");
            assert_eq!(t, old_p, "torn TLB read for P");
        }
        if let Some(t) = tlb.lookup(1, Q) {
            assert_eq!(t, new_q, "torn TLB read for Q");
        }
        writer.join().unwrap();
        assert_eq!(tlb.lookup(1, P), None);
        assert_eq!(tlb.lookup(1, Q), Some(new_q));
    });
}

/// The page tables of the Mmu checks (P mapped to FRAME_A), built once with the real (std) crate; each
/// execution copies the non-zero words into a [`SparseMem`] of loom atomics.
struct TableImage {
    words: Vec<(u64, u64)>,
    root: u64,
    pte_p: u64,
    pte_q: u64,
}

static PAGE_TABLES: std::sync::LazyLock<TableImage> = std::sync::LazyLock::new(|| {
    use faultline_mmu::{FlatMem, PageSize, PageTableBuilder, Perms, PhysMem};
    const BYTES: u64 = 16 << 10;
    let mem = FlatMem::new(0, BYTES);
    let mut pt = PageTableBuilder::new(&mem, 0, BYTES).unwrap();
    pt.map(P, FRAME_A, PageSize::Size4K, Perms::ALL).unwrap();
    pt.map(Q, FRAME_A2, PageSize::Size4K, Perms::ALL).unwrap();
    TableImage {
        words: (0..BYTES / 8)
            .map(|i| (i * 8, mem.read_u64(i * 8).unwrap()))
            .filter(|&(_, v)| v != 0)
            .collect(),
        root: pt.root(),
        pte_p: pt.entry_addr(P, 0).unwrap(),
        pte_q: pt.entry_addr(Q, 0).unwrap(),
    }
});

/// Guest memory holding only the page-table words of [`PAGE_TABLES`] (every other GPA reads as zero, "not
/// present"), with [`mem::FlatMem`]'s orderings: a dense `FlatMem` would cost loom thousands of atomics.
struct SparseMem(Vec<(u64, AtomicU64)>);

impl SparseMem {
    fn new(image: &TableImage) -> SparseMem {
        SparseMem(
            image
                .words
                .iter()
                .map(|&(gpa, v)| (gpa, AtomicU64::new(v)))
                .collect(),
        )
    }

    /// The driver's PTE update.
    fn write_u64(&self, gpa: u64, val: u64) {
        let word = self.0.iter().find(|(g, _)| *g == gpa).expect("a PTE word");
        word.1.store(val, Ordering::Release);
    }
}

impl PhysMem for SparseMem {
    fn read_u64(&self, gpa: u64) -> Result<u64, PhysError> {
        Ok(self
            .0
            .iter()
            .find(|(g, _)| *g == gpa)
            .map_or(0, |(_, w)| w.load(Ordering::Acquire)))
    }
}

/// The guest frames, as cells whose accesses loom's race detector tracks: a lane's access through a
/// translation and the driver's reuse of the old frame after the invalidation must be ordered by
/// happens-before, or loom reports a data race on FRAME_A.
struct Frames {
    a: UnsafeCell<u64>,
    a2: UnsafeCell<u64>,
    b: UnsafeCell<u64>,
}

impl Frames {
    /// Records a write to the frame at `pa` (loom tracks the access when `with_mut` is called; the pointer is
    /// never dereferenced, so no `unsafe` is needed).
    fn touch(&self, pa: u64) {
        match pa {
            FRAME_A => self.a.with_mut(|_| ()),
            FRAME_A2 => self.a2.with_mut(|_| ()),
            FRAME_B => self.b.with_mut(|_| ()),
            other => panic!("translation to unexpected frame {other:#x}"),
        }
    }
}

/// One remap of P (FRAME_A to FRAME_B) by the driver, then INVALIDATE, then reuse of FRAME_A, against one lane
/// translating P `rounds` times. `prefill`: P's old translation is in the TLB at the start (the TLB-hit path);
/// otherwise the lane walks and fills (the walk-generation path).
fn invalidate_vs_lane(prefill: bool, rounds: usize) {
    let image = &*PAGE_TABLES;
    let mem = Arc::new(SparseMem::new(image));
    let mmu = Arc::new(
        Mmu::new(MmuConfig {
            contexts: 1,
            lanes: 1,
            tlb: TlbConfig { sets: 1, ways: 1 },
        })
        .unwrap(),
    );
    mmu.bind(0, image.root).unwrap();
    if prefill {
        let lane = mmu.lane(0).unwrap();
        let acc = lane.translate(0, P, AccessType::Read, &*mem).unwrap();
        assert_eq!(acc.page_base_pa, FRAME_A);
    }
    // loom's `UnsafeCell` is not `Sync`; loom runs its threads on one OS thread and its `spawn` needs no `Send`.
    #[allow(clippy::arc_with_non_send_sync)]
    let frames = Arc::new(Frames {
        a: UnsafeCell::new(0),
        a2: UnsafeCell::new(0),
        b: UnsafeCell::new(0),
    });

    let lane = {
        let (mmu, mem, frames) = (mmu.clone(), mem.clone(), frames.clone());
        thread::spawn(move || {
            let lane = mmu.lane(0).unwrap();
            for _ in 0..rounds {
                let acc = lane.translate(0, P, AccessType::Write, &*mem).unwrap();
                frames.touch(acc.page_base_pa);
                drop(acc);
            }
        })
    };

    // The driver: new PTE, INVALIDATE (the command processor runs it after reading the command, so in program
    // order here), then the old frame is reused.
    mem.write_u64(image.pte_p, FRAME_B | PTE_READ | PTE_WRITE | PTE_VALID);
    mmu.invalidate(0, P, 4096).unwrap();
    frames.touch(FRAME_A);
    if let Some(t) = mmu.tlb().lookup(0, P) {
        assert_eq!(t.page_base_pa, FRAME_B, "stale TLB entry after invalidate");
    }
    lane.join().unwrap();
}

/// Lane pins vs the invalidation fence, TLB-hit path (Dekker: the pin store and `SeqCst` fence in
/// `Lane::pin_raw` against the generation bump, TLB flush and `SeqCst` fence before the pin scan in
/// `Mmu::begin`). Once `invalidate` returns, the lane either has dropped its access through FRAME_A
/// (happens-before, via the `Release` unpin and the `Acquire` poll) or translates P to FRAME_B.
#[test]
fn pins_vs_fence_tlb_hit() {
    model("pins_vs_fence_tlb_hit", || invalidate_vs_lane(true, 1));
}

/// Lane pins vs the invalidation fence, walk-and-fill path: a walk that read the old PTE must not leave it in
/// the TLB after the invalidation (the generation check under the set lock in `Tlb::insert_if`), so the
/// lane's second translation, which the invalidation does not wait for, uses FRAME_B.
#[test]
fn pins_vs_fence_walk_fill() {
    model("pins_vs_fence_walk_fill", || invalidate_vs_lane(false, 2));
}

/// Lane pins vs the invalidation fence, span path (`Lane::translate_span`): the lane translates P with a span
/// over Q (P and Q map FRAME_A and FRAME_A2, a contiguous run) twice, touching every frame of the span, while
/// the driver remaps Q to FRAME_B, invalidates Q and reuses FRAME_A2. Q's entry is read from the page table
/// under the lane's pin, never through the TLB, so the pin protocol alone must order it: a span that still
/// covers FRAME_A2 is dropped before `invalidate` returns (else loom reports a race on FRAME_A2), and a span
/// that starts after it stops at P (FRAME_B does not continue the run).
#[test]
fn pins_vs_fence_span() {
    model("pins_vs_fence_span", || {
        let image = &*PAGE_TABLES;
        let mem = Arc::new(SparseMem::new(image));
        let mmu = Arc::new(
            Mmu::new(MmuConfig {
                contexts: 1,
                lanes: 1,
                tlb: TlbConfig { sets: 1, ways: 1 },
            })
            .unwrap(),
        );
        mmu.bind(0, image.root).unwrap();
        #[allow(clippy::arc_with_non_send_sync)]
        let frames = Arc::new(Frames {
            a: UnsafeCell::new(0),
            a2: UnsafeCell::new(0),
            b: UnsafeCell::new(0),
        });
        let invalidated = Arc::new(AtomicBool::new(false));
        let lane = {
            let (mmu, mem, frames, invalidated) = (
                mmu.clone(),
                mem.clone(),
                frames.clone(),
                invalidated.clone(),
            );
            thread::spawn(move || {
                let lane = mmu.lane(0).unwrap();
                for _ in 0..2 {
                    let after = invalidated.load(Ordering::Acquire);
                    let acc = lane
                        .translate_span(0, P, 0x2000, AccessType::Write, &*mem)
                        .unwrap();
                    assert_eq!(acc.pa(P), FRAME_A);
                    for off in (0..acc.span()).step_by(0x1000) {
                        frames.touch(FRAME_A + off);
                    }
                    assert!(
                        !after || acc.span() == 0x1000,
                        "span over Q's old frame after the invalidation returned"
                    );
                    drop(acc);
                }
            })
        };
        mem.write_u64(image.pte_q, FRAME_B | PTE_READ | PTE_WRITE | PTE_VALID);
        mmu.invalidate(0, Q, 4096).unwrap();
        invalidated.store(true, Ordering::Release);
        frames.touch(FRAME_A2);
        lane.join().unwrap();
    });
}
