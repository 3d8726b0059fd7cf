//! Property test: the walker and the TLB, through `Lane::translate`, against a plain reference model
//! (per context, a map from page to (size, frame, permissions)), for every page size and permission
//! combination, with random remappings, unmappings and invalidations of every flavour.

use std::collections::BTreeMap;
use std::sync::Arc;

use faultline_mmu::{
    walk, AccessType, Counters, FlatMem, Mmu, MmuConfig, PageSize, PageTableBuilder, Perms,
    TlbConfig, TranslateError, WalkError,
};
use proptest::prelude::*;

/// Reference: page base VA → (size, frame, perms).
type RefMap = BTreeMap<u64, (PageSize, u64, Perms)>;

fn ref_lookup(m: &RefMap, va: u64) -> Option<(u64, PageSize, u64, Perms)> {
    m.range(..=va)
        .next_back()
        .filter(|(&b, &(s, _, _))| va < b + s.bytes())
        .map(|(&b, &(s, pa, p))| (b, s, pa, p))
}

/// Removes every entry overlapping `[s, e)`; returns the union range of what was removed and `[s, e)`.
fn ref_remove(m: &mut RefMap, s: u64, e: u64) -> (u64, u64) {
    let hit: Vec<u64> = m
        .iter()
        .filter(|(&b, &(sz, _, _))| b < e && s < b + sz.bytes())
        .map(|(&b, _)| b)
        .collect();
    let (mut lo, mut hi) = (s, e);
    for b in hit {
        if let Some((sz, _, _)) = m.remove(&b) {
            lo = lo.min(b);
            hi = hi.max(b + sz.bytes());
        }
    }
    (lo, hi)
}

#[derive(Debug, Clone, Copy)]
enum Inval {
    Range,
    Ctx,
    All,
}

#[derive(Debug, Clone)]
enum Op {
    Map {
        ctx: usize,
        va: u64,
        size: PageSize,
        frame: u64,
        perms: u8,
        inval: Inval,
    },
    Unmap {
        ctx: usize,
        va: u64,
        size: PageSize,
        inval: Inval,
    },
    Translate {
        ctx: usize,
        va: u64,
        access: AccessType,
    },
    Invalidate {
        ctx: usize,
        va: u64,
        len: u64,
    },
    /// `pages` 4 KiB maps from `va` on with the same `frame`: a contiguous run (see `Op::Map`), every page
    /// with `perms` but the last, which gets `last_perms`.
    MapRun {
        ctx: usize,
        va: u64,
        pages: u64,
        frame: u64,
        perms: u8,
        last_perms: u8,
    },
    /// `Lane::translate_span` of up to `max` bytes.
    Span {
        ctx: usize,
        va: u64,
        max: u64,
        access: AccessType,
    },
}

fn size_strategy() -> impl Strategy<Value = PageSize> {
    prop_oneof![4 => Just(PageSize::Size4K), 2 => Just(PageSize::Size2M), 1 => Just(PageSize::Size1G)]
}

/// VAs from a small grid so that mappings of different sizes collide: 2 root slots × 2 GiB × 3 × 2 MiB × 4 pages.
fn va_strategy() -> impl Strategy<Value = u64> {
    (
        prop_oneof![Just(0u64), Just(511u64)],
        0u64..2,
        0u64..3,
        0u64..4,
        0u64..4096,
    )
        .prop_map(|(l3, l2, l1, l0, off)| (l3 << 39) | (l2 << 30) | (l1 << 21) | (l0 << 12) | off)
}

fn inval_strategy() -> impl Strategy<Value = Inval> {
    prop_oneof![6 => Just(Inval::Range), 1 => Just(Inval::Ctx), 1 => Just(Inval::All)]
}

fn access_strategy() -> impl Strategy<Value = AccessType> {
    prop::sample::select(AccessType::ALL.to_vec())
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..2, va_strategy(), size_strategy(), prop_oneof![Just(0u64), 0u64..6], 0u8..8, inval_strategy())
            .prop_map(|(ctx, va, size, frame, perms, inval)| Op::Map { ctx, va, size, frame, perms, inval }),
        1 => (0usize..2, va_strategy(), size_strategy(), inval_strategy())
            .prop_map(|(ctx, va, size, inval)| Op::Unmap { ctx, va, size, inval }),
        6 => (0usize..2, va_strategy(), access_strategy()).prop_map(|(ctx, va, access)| Op::Translate { ctx, va, access }),
        1 => (0usize..2, va_strategy(), 0u64..(3 << 21)).prop_map(|(ctx, va, len)| Op::Invalidate { ctx, va, len }),
        2 => (0usize..2, va_strategy(), 2u64..5, prop_oneof![Just(0u64), 0u64..6], prop_oneof![Just(7u8), 0u8..8], 0u8..8)
            .prop_map(|(ctx, va, pages, frame, perms, last_perms)| Op::MapRun { ctx, va, pages, frame, perms, last_perms }),
        3 => (0usize..2, va_strategy(), 0u64..(5 << 12), access_strategy())
            .prop_map(|(ctx, va, max, access)| Op::Span { ctx, va, max, access }),
    ]
}

const CTXS: [u16; 2] = [3, 7];

/// Page-table bytes per context: room for the tables of every op. Miri (which builds a `FlatMem` one atomic
/// word at a time) gets a few short cases in a small memory.
const TABLE_BYTES: u64 = if cfg!(miri) { 128 << 10 } else { 4 << 20 };
const MAX_OPS: usize = if cfg!(miri) { 8 } else { 80 };
const CASES: u32 = if cfg!(miri) { 4 } else { 256 };

fn run(ops: Vec<Op>, sets: u32, ways: u32) -> Result<(), TestCaseError> {
    let mem = FlatMem::new(0, 2 * TABLE_BYTES);
    let mut pts = [
        PageTableBuilder::new(&mem, 0, TABLE_BYTES)
            .map_err(|e| TestCaseError::fail(e.to_string()))?,
        PageTableBuilder::new(&mem, TABLE_BYTES, TABLE_BYTES)
            .map_err(|e| TestCaseError::fail(e.to_string()))?,
    ];
    let mmu = Arc::new(
        Mmu::new(MmuConfig {
            contexts: 8,
            lanes: 1,
            tlb: TlbConfig { sets, ways },
        })
        .unwrap(),
    );
    for (i, pt) in pts.iter().enumerate() {
        mmu.bind(CTXS[i], pt.root()).unwrap();
    }
    let lane = mmu.lane(0).unwrap();
    let mut refs = [RefMap::new(), RefMap::new()];
    let mut translates = 0u64;

    let ops = ops.into_iter().flat_map(|op| match op {
        Op::MapRun {
            ctx,
            va,
            pages,
            frame,
            perms,
            last_perms,
        } => (0..pages)
            .map(|i| Op::Map {
                ctx,
                va: (va & !4095) + i * 4096,
                size: PageSize::Size4K,
                frame,
                perms: if i + 1 == pages { last_perms } else { perms },
                inval: Inval::Range,
            })
            .collect(),
        op => vec![op],
    });
    for op in ops {
        match op {
            Op::Map {
                ctx,
                va,
                size,
                frame,
                perms,
                inval,
            } => {
                let base = size.align_down(va);
                // Frames high in the 52-bit space, aligned to the page size. A 4 KiB page's frame follows its
                // VA within a 2 MiB frame, so neighbouring pages with the same `frame` map contiguously
                // (the runs `Lane::translate_span` covers).
                let pa = 0x000f_0000_0000_0000
                    + match size {
                        PageSize::Size4K => (frame << 21) + (base & ((1 << 21) - 1)),
                        _ => frame * size.bytes(),
                    };
                let perms = Perms::from_pte(u64::from(perms) << 1);
                pts[ctx].map(base, pa, size, perms).unwrap();
                let (lo, hi) = ref_remove(&mut refs[ctx], base, base + size.bytes());
                refs[ctx].insert(base, (size, pa, perms));
                invalidate(&mmu, CTXS[ctx], lo, hi, inval);
            }
            Op::Unmap {
                ctx,
                va,
                size,
                inval,
            } => {
                let r = pts[ctx].unmap(va, size).unwrap();
                if !r.is_empty() {
                    let (lo, hi) = ref_remove(&mut refs[ctx], r.start, r.end);
                    invalidate(&mmu, CTXS[ctx], lo, hi, inval);
                }
            }
            Op::MapRun { .. } => unreachable!("expanded above"),
            Op::Invalidate { ctx, va, len } => mmu.invalidate(CTXS[ctx], va, len).unwrap(),
            Op::Span {
                ctx,
                va,
                max,
                access,
            } => {
                translates += 1;
                let got = lane.translate_span(CTXS[ctx], va, max, access, &mem);
                let direct = walk(&mem, pts[ctx].root(), va, access);
                let span = match (got, direct) {
                    (Ok(a), Ok(t)) => {
                        prop_assert_eq!(*a.translation(), t, "first page at {:#x}", va);
                        a.span()
                    }
                    (Err(TranslateError::Walk(e)), Err(w)) => {
                        prop_assert_eq!(e, w, "span and walk disagree at {:#x}", va);
                        continue;
                    }
                    (got, direct) => {
                        prop_assert!(false, "span {:?}, walk {:?} at {:#x}", got, direct, va);
                        unreachable!()
                    }
                };
                let (_, size, pa0, _) = ref_lookup(&refs[ctx], va).expect("mapped");
                let pa = pa0 + (va - size.align_down(va));
                let first = size.bytes() - (va - size.align_down(va));
                prop_assert!(span >= first, "span {:#x} ends inside the first page", span);
                prop_assert!(span == first || (size == PageSize::Size4K && span <= max));
                // Every page of the span continues the run in the model and allows the access.
                let continues = |p: u64| {
                    ref_lookup(&refs[ctx], va + p).is_some_and(|(b, s, f, perms)| {
                        s == PageSize::Size4K && perms.allows(access) && f + (va + p - b) == pa + p
                    })
                };
                for p in (first..span).step_by(4096) {
                    prop_assert!(continues(p), "page {:#x} of the span at {:#x}", va + p, va);
                }
                // And it is maximal: it stops at `max`, at a 2 MiB boundary or at a page that does not continue it.
                let end = va + span;
                if size == PageSize::Size4K && span + 4096 <= max && end % (2 << 20) != 0 {
                    prop_assert!(
                        !continues(span),
                        "span at {:#x} stops early at {:#x}",
                        va,
                        end
                    );
                }
            }
            Op::Translate { ctx, va, access } => {
                translates += 1;
                let got = lane
                    .translate(CTXS[ctx], va, access, &mem)
                    .map(|a| *a.translation());
                let direct = walk(&mem, pts[ctx].root(), va, access);
                prop_assert_eq!(
                    &got.map_err(|e| match e {
                        TranslateError::Walk(w) => w,
                        other => panic!("unexpected {other:?}"),
                    }),
                    &direct,
                    "translate and walk disagree at {:#x}",
                    va
                );
                match (ref_lookup(&refs[ctx], va), got) {
                    (None, Err(e)) => {
                        let not_present =
                            matches!(e, TranslateError::Walk(WalkError::NotPresent { .. }));
                        prop_assert!(not_present, "{:?}", e);
                    }
                    (Some((_, s, pa, p)), Ok(t)) => {
                        prop_assert!(p.allows(access));
                        prop_assert_eq!(t.page_size, s);
                        prop_assert_eq!(t.page_base_pa, pa);
                        prop_assert_eq!(t.perms, p);
                        prop_assert_eq!(t.pa(va), pa + (va - s.align_down(va)));
                    }
                    (
                        Some((_, s, pa, p)),
                        Err(TranslateError::Walk(WalkError::Permission {
                            translation,
                            access: a,
                        })),
                    ) => {
                        prop_assert!(!p.allows(access));
                        prop_assert_eq!(a, access);
                        prop_assert_eq!(
                            (
                                translation.page_size,
                                translation.page_base_pa,
                                translation.perms
                            ),
                            (s, pa, p)
                        );
                    }
                    (want, got) => prop_assert!(
                        false,
                        "va {:#x} {:?}: model {:?}, mmu {:?}",
                        va,
                        access,
                        want,
                        got
                    ),
                }
            }
        }
        // Every cached entry agrees with the model.
        for e in mmu.tlb().entries() {
            let ctx = CTXS.iter().position(|&c| c == e.ctx).unwrap();
            let want = ref_lookup(&refs[ctx], e.va_base);
            prop_assert_eq!(
                want,
                Some((
                    e.va_base,
                    e.translation.page_size,
                    e.translation.page_base_pa,
                    e.translation.perms
                )),
                "stale TLB entry {:?}",
                e
            );
        }
    }
    let mut c = Counters::default();
    mmu.add_counters(&mut c);
    prop_assert_eq!(c.tlb_hits + c.tlb_misses, translates);
    prop_assert_eq!(c.walks, c.tlb_misses);
    prop_assert!(mmu.tlb().occupancy() <= mmu.tlb().capacity());
    Ok(())
}

fn invalidate(mmu: &Mmu, ctx: u16, lo: u64, hi: u64, how: Inval) {
    match how {
        Inval::Range => mmu.invalidate(ctx, lo, hi - lo).unwrap(),
        Inval::Ctx => mmu.invalidate_ctx(ctx).unwrap(),
        Inval::All => mmu.invalidate_all(),
    }
}

fn geometry() -> impl Strategy<Value = (u32, u32)> {
    prop_oneof![
        Just((1, 1)),
        Just((1, 4)),
        Just((4, 2)),
        Just((16, 4)),
        Just((64, 8))
    ]
}

proptest! {
    // Miri's isolation forbids the regression file (getcwd, open): no failure persistence there.
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: if cfg!(miri) { None } else { ProptestConfig::default().failure_persistence },
        ..ProptestConfig::default()
    })]

    #[test]
    fn translate_matches_reference(ops in prop::collection::vec(op_strategy(), 1..MAX_OPS), (sets, ways) in geometry()) {
        run(ops, sets, ways)?;
    }
}
