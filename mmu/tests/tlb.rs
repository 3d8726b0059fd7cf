//! TLB unit tests: page-size classes, context tagging, invalidation flavours, replacement, geometry.

use faultline_mmu::{PageSize, Perms, Tlb, TlbConfig, TlbConfigError, Translation};

fn t(pa: u64, size: PageSize) -> Translation {
    Translation {
        page_base_pa: pa,
        page_size: size,
        perms: Perms::ALL,
    }
}

#[test]
fn geometry_is_validated() {
    assert_eq!(
        Tlb::new(TlbConfig { sets: 3, ways: 4 }).unwrap_err(),
        TlbConfigError::BadSets(3)
    );
    assert_eq!(
        Tlb::new(TlbConfig { sets: 0, ways: 4 }).unwrap_err(),
        TlbConfigError::BadSets(0)
    );
    assert_eq!(
        Tlb::new(TlbConfig { sets: 4, ways: 0 }).unwrap_err(),
        TlbConfigError::BadWays(0)
    );
    assert_eq!(
        Tlb::new(TlbConfig { sets: 4, ways: 65 }).unwrap_err(),
        TlbConfigError::BadWays(65)
    );
    let tlb = Tlb::new(TlbConfig { sets: 64, ways: 8 }).unwrap();
    assert_eq!((tlb.sets(), tlb.ways(), tlb.capacity()), (64, 8, 512));
}

#[test]
fn each_page_size_covers_its_range() {
    let tlb = Tlb::new(TlbConfig::default()).unwrap();
    tlb.insert(1, 0x1000, &t(0xa000, PageSize::Size4K));
    tlb.insert(1, 0x4000_0000 + 0x1234, &t(0x20_0000, PageSize::Size2M));
    tlb.insert(1, 0x80_0000_0000, &t(0x4000_0000, PageSize::Size1G));
    assert_eq!(tlb.lookup(1, 0x1fff).unwrap().pa(0x1fff), 0xafff);
    assert!(tlb.lookup(1, 0x2000).is_none());
    assert_eq!(
        tlb.lookup(1, 0x401f_ffff).unwrap().pa(0x401f_ffff),
        0x3f_ffff
    );
    assert!(tlb.lookup(1, 0x4020_0000).is_none());
    assert_eq!(
        tlb.lookup(1, 0x80_3fff_ffff).unwrap().page_size,
        PageSize::Size1G
    );
    assert!(tlb.lookup(1, 0x80_4000_0000).is_none());
    assert!(tlb.lookup(1, 1 << 48).is_none());
}

#[test]
fn entries_are_tagged_by_context() {
    let tlb = Tlb::new(TlbConfig::default()).unwrap();
    tlb.insert(1, 0x5000, &t(0x1000, PageSize::Size4K));
    tlb.insert(2, 0x5000, &t(0x2000, PageSize::Size4K));
    assert_eq!(tlb.lookup(1, 0x5000).unwrap().page_base_pa, 0x1000);
    assert_eq!(tlb.lookup(2, 0x5000).unwrap().page_base_pa, 0x2000);
    assert!(tlb.lookup(3, 0x5000).is_none());
    assert_eq!(tlb.invalidate_ctx(1), 1);
    assert!(tlb.lookup(1, 0x5000).is_none());
    assert!(tlb.lookup(2, 0x5000).is_some());
}

#[test]
fn reinsert_replaces() {
    let tlb = Tlb::new(TlbConfig { sets: 1, ways: 4 }).unwrap();
    tlb.insert(1, 0x5000, &t(0x1000, PageSize::Size4K));
    tlb.insert(1, 0x5abc, &t(0x2000, PageSize::Size4K));
    assert_eq!(tlb.occupancy(), 1);
    assert_eq!(tlb.lookup(1, 0x5000).unwrap().page_base_pa, 0x2000);
}

#[test]
fn range_invalidation_removes_exactly_the_overlapping_entries() {
    let tlb = Tlb::new(TlbConfig { sets: 64, ways: 8 }).unwrap();
    for i in 0..8u64 {
        tlb.insert(1, i << 12, &t(0x10_0000 + (i << 12), PageSize::Size4K));
    }
    tlb.insert(1, 0x20_0000, &t(0x40_0000, PageSize::Size2M));
    tlb.insert(1, 0x4000_0000, &t(0x4000_0000, PageSize::Size1G));
    // [0x3000, 0x5000) hits pages 3 and 4 only.
    assert_eq!(tlb.invalidate(1, 0x3000, 0x2000), 2);
    assert!(tlb.lookup(1, 0x2fff).is_some() && tlb.lookup(1, 0x5000).is_some());
    assert!(tlb.lookup(1, 0x3000).is_none() && tlb.lookup(1, 0x4fff).is_none());
    // One byte inside the 2 MiB page removes it.
    assert_eq!(tlb.invalidate(1, 0x3f_ffff, 1), 1);
    assert!(tlb.lookup(1, 0x20_0000).is_none());
    // A large range takes the full-scan path and spares other contexts.
    tlb.insert(2, 0x4000_0000, &t(0x8000_0000, PageSize::Size1G));
    assert_eq!(tlb.invalidate(1, 0, 1 << 31), 7);
    assert_eq!(tlb.occupancy(), 1);
    assert_eq!(tlb.invalidate(1, 0, 0), 0);
    assert_eq!(tlb.invalidate(2, u64::MAX - 5, 100), 0);
    assert_eq!(tlb.invalidate_all(), 1);
    assert_eq!(tlb.occupancy(), 0);
}

#[test]
fn clock_replacement_keeps_recently_used_entries() {
    let tlb = Tlb::new(TlbConfig { sets: 1, ways: 4 }).unwrap();
    for i in 0..4u64 {
        tlb.insert(0, i << 12, &t(i << 12, PageSize::Size4K));
    }
    // A fifth page evicts one; then keep touching page 0 while streaming new pages through.
    for i in 4..20u64 {
        assert!(
            tlb.lookup(0, 0).is_some() || i == 4,
            "hot page evicted at {i}"
        );
        tlb.insert(0, i << 12, &t(i << 12, PageSize::Size4K));
        assert_eq!(tlb.occupancy(), 4);
        if i == 4 {
            // Re-reference page 0 if the first sweep took it.
            if tlb.lookup(0, 0).is_none() {
                tlb.insert(0, 0, &t(0, PageSize::Size4K));
            }
        }
    }
    assert!(tlb.lookup(0, 0).is_some());
}

#[test]
fn insert_if_false_leaves_the_set_untouched() {
    let tlb = Tlb::new(TlbConfig { sets: 1, ways: 1 }).unwrap();
    tlb.insert(0, 0x1000, &t(0x1000, PageSize::Size4K));
    assert!(!tlb.insert_if(0, 0x2000, &t(0x2000, PageSize::Size4K), || false));
    assert_eq!(tlb.lookup(0, 0x1000).unwrap().page_base_pa, 0x1000);
    assert!(tlb.insert_if(0, 0x2000, &t(0x2000, PageSize::Size4K), || true));
    assert!(tlb.lookup(0, 0x1000).is_none());
}

#[test]
fn concurrent_lookups_and_invalidations_never_return_torn_entries() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let tlb = Arc::new(Tlb::new(TlbConfig { sets: 2, ways: 2 }).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (tlb, stop) = (tlb.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // The frame always encodes the page, so a torn read would show a mismatch.
                let va = (i % 8) << 12;
                tlb.insert(3, va, &t(0x100_0000 | va, PageSize::Size4K));
                if i % 5 == 1 {
                    tlb.invalidate(3, va, 4096);
                }
                i += 1;
            }
        })
    };
    // Miri interprets every lookup: 200 of them still interleave with the writer's fills and flushes.
    let lookups = if cfg!(miri) { 200 } else { 200_000u64 };
    for n in 0..lookups {
        let va = (n % 8) << 12;
        if let Some(tr) = tlb.lookup(3, va) {
            assert_eq!(tr.page_base_pa, 0x100_0000 | va);
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}
