//! Walker rules (spec section 5): page sizes, permissions, not-present levels, malformed PTEs, DMA errors.

use faultline_mmu::pte::*;
use faultline_mmu::{
    resolve, walk, AccessType, FaultReason, FlatMem, JobFailure, PageSize, PageTableBuilder, Perms,
    PhysError, WalkError,
};

/// Guest memory of each test: 1 MiB, or 32 KiB under Miri (which builds a `FlatMem` one atomic word at a time,
/// thousands of times slower than native).
const MEM: u64 = if cfg!(miri) { 32 << 10 } else { 1 << 20 };

fn setup() -> (FlatMem, u64) {
    let mem = FlatMem::new(0, MEM);
    let root = PageTableBuilder::new(&mem, 0, MEM).unwrap().root();
    (mem, root)
}

#[test]
fn every_size_and_permission_combination() {
    for size in PageSize::ALL {
        for bits in 0..8u64 {
            let mem = FlatMem::new(0, MEM);
            let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
            let va = 0x0000_7f80_0000_0000 | (3 << 30) | (5 << 21) | (7 << 12);
            let pa = 0x0000_0040_0000_0000;
            let perms = Perms::from_pte(bits << 1);
            pt.map(size.align_down(va), pa, size, perms).unwrap();
            for access in AccessType::ALL {
                let r = walk(&mem, pt.root(), va + 0x123, access);
                if perms.allows(access) {
                    let t = r.unwrap();
                    assert_eq!(t.page_size, size);
                    assert_eq!(t.page_base_pa, pa);
                    assert_eq!(t.perms, perms);
                    assert_eq!(t.pa(va + 0x123), pa + (va + 0x123 - size.align_down(va)));
                } else {
                    let e = r.unwrap_err();
                    assert!(matches!(e, WalkError::Permission { access: a, .. } if a == access));
                    assert_eq!(e.fault_reason(), Some(FaultReason::Permission));
                    assert_eq!(e.job_failure(), None);
                }
            }
        }
    }
}

#[test]
fn permission_rules() {
    let r = Perms::from_pte(PTE_READ);
    assert!(r.allows(AccessType::Prefetch) && r.allows(AccessType::Read));
    assert!(!r.allows(AccessType::Write) && !r.allows(AccessType::Atomic));
    let a = Perms::from_pte(PTE_ATOMIC);
    assert!(a.allows(AccessType::Atomic) && !a.allows(AccessType::Read));
    assert!(Perms::from_pte(PTE_WRITE).allows(AccessType::Write));
}

#[test]
fn not_present_at_each_level() {
    let (mem, root) = setup();
    let va = 0x1234_5678_9000;
    assert_eq!(
        walk(&mem, root, va, AccessType::Read),
        Err(WalkError::NotPresent { level: 3 })
    );
    let mut pt = PageTableBuilder::new(&mem, MEM / 2, MEM / 2).unwrap();
    for level in (0..3).rev() {
        // Create the path down to `level + 1` and leave the entry at `level` invalid.
        pt.entry_addr(va, level).unwrap();
        let e = walk(&mem, pt.root(), va, AccessType::Read).unwrap_err();
        assert_eq!(e, WalkError::NotPresent { level });
        assert_eq!(e.fault_reason(), Some(FaultReason::NotPresent));
    }
    // An invalid entry's other bits are ignored, reserved ones included.
    pt.set_entry(va, 0, !PTE_VALID).unwrap();
    assert_eq!(
        walk(&mem, pt.root(), va, AccessType::Read),
        Err(WalkError::NotPresent { level: 0 })
    );
}

#[test]
fn reserved_bits_fail_with_pt_error() {
    for bit in [4u32, 5, 6, 52, 60, 63] {
        for level in 0..4 {
            let mem = FlatMem::new(0, MEM);
            let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
            let va = 0x40_0000_0000;
            pt.map(va, 0x20_0000, PageSize::Size4K, Perms::ALL).unwrap();
            let ea = pt.entry_addr(va, level).unwrap();
            use faultline_mmu::PhysMem;
            let pte = mem.read_u64(ea).unwrap();
            mem.write_u64(ea, pte | 1 << bit).unwrap();
            let e = resolve(&mem, pt.root(), va).unwrap_err();
            assert_eq!(
                e,
                WalkError::Reserved {
                    level,
                    pte: pte | 1 << bit
                },
                "bit {bit} level {level}"
            );
            assert_eq!(e.job_failure(), Some(JobFailure::PtError));
            assert_eq!(e.fault_reason(), None);
        }
    }
}

#[test]
fn leaf_bit_at_root_is_reserved_and_ignored_at_level_0() {
    let (mem, _) = setup();
    let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
    pt.set_entry(0, 3, PTE_VALID | PTE_LEAF | PTE_READ).unwrap();
    assert!(matches!(
        resolve(&mem, pt.root(), 0),
        Err(WalkError::Reserved { level: 3, .. })
    ));
    pt.set_entry(0x80_0000_0000, 0, 0x5000 | PTE_VALID | PTE_LEAF | PTE_READ)
        .unwrap();
    let t = resolve(&mem, pt.root(), 0x80_0000_0000).unwrap();
    assert_eq!((t.page_size, t.page_base_pa), (PageSize::Size4K, 0x5000));
}

#[test]
fn misaligned_large_pages_fail_with_pt_error() {
    for (size, pa) in [
        (PageSize::Size2M, 0x1000u64),
        (PageSize::Size2M, 0x10_0000),
        (PageSize::Size1G, 0x20_0000),
    ] {
        let (mem, _) = setup();
        let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
        let pte = pa | PTE_VALID | PTE_LEAF | PTE_READ;
        pt.set_entry(0, size.level(), pte).unwrap();
        let e = walk(&mem, pt.root(), 0x10, AccessType::Read).unwrap_err();
        assert_eq!(
            e,
            WalkError::Misaligned {
                level: size.level(),
                pte
            }
        );
        assert_eq!(e.job_failure(), Some(JobFailure::PtError));
    }
}

#[test]
fn tables_outside_memory_fail_with_dma_error() {
    let (mem, _) = setup();
    // Root outside memory.
    let e = walk(&mem, 1 << 40, 0, AccessType::Read).unwrap_err();
    assert_eq!(
        e,
        WalkError::Dma {
            level: 3,
            source: PhysError::OutOfRange(1 << 40)
        }
    );
    assert_eq!(e.job_failure(), Some(JobFailure::DmaError));
    // A next-table pointer outside memory.
    let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
    pt.set_entry(0, 3, (1 << 36) | PTE_VALID).unwrap();
    assert!(matches!(
        walk(&mem, pt.root(), 0, AccessType::Read),
        Err(WalkError::Dma { level: 2, .. })
    ));
}

#[test]
fn non_canonical_va_is_invalid() {
    let (mem, root) = setup();
    for va in [1u64 << 48, u64::MAX, 0xffff_8000_0000_0000] {
        let e = walk(&mem, root, va, AccessType::Read).unwrap_err();
        assert_eq!(e, WalkError::NonCanonical { va });
        assert_eq!(e.job_failure(), Some(JobFailure::Invalid));
    }
}

#[test]
fn non_leaf_permissions_are_ignored() {
    let (mem, _) = setup();
    let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
    pt.map(0x1000, 0x9000, PageSize::Size4K, Perms::ALL)
        .unwrap();
    use faultline_mmu::PhysMem;
    for level in 1..4 {
        let ea = pt.entry_addr(0x1000, level).unwrap();
        let e = mem.read_u64(ea).unwrap();
        mem.write_u64(ea, e & !PTE_PERM_MASK).unwrap();
    }
    assert_eq!(
        walk(&mem, pt.root(), 0x1000, AccessType::Atomic)
            .unwrap()
            .page_base_pa,
        0x9000
    );
}

#[test]
fn physical_address_uses_bits_51_to_12() {
    let (mem, _) = setup();
    let mut pt = PageTableBuilder::new(&mem, 0, MEM).unwrap();
    let pa = 0x000f_ffff_c000_0000;
    pt.map(0x4000_0000, pa, PageSize::Size1G, Perms::ALL)
        .unwrap();
    let t = walk(&mem, pt.root(), 0x7fff_ffff, AccessType::Read).unwrap();
    assert_eq!(t.pa(0x7fff_ffff), pa + 0x3fff_ffff);
    assert_eq!(t.bytes_to_page_end(0x7fff_f000), 0x1000);
}
