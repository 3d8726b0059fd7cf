//! The MMU's page-table walker over arbitrary page-table bytes: never panics, and every
//! translation it returns is well formed (aligned page base, consistent size and permissions).
#![no_main]

use arbitrary::Arbitrary;
use faultline_mmu::{resolve, walk, AccessType, PageSize, PhysError, PhysMem};
use libfuzzer_sys::fuzz_target;

/// Guest memory: `bytes` at GPA `base`; everything else is outside guest memory.
struct Bytes<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl PhysMem for Bytes<'_> {
    fn read_u64(&self, gpa: u64) -> Result<u64, PhysError> {
        if !gpa.is_multiple_of(8) {
            return Err(PhysError::Unaligned(gpa));
        }
        let off = gpa
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or(PhysError::OutOfRange(gpa))?;
        let b = self
            .bytes
            .get(off..off.checked_add(8).ok_or(PhysError::OutOfRange(gpa))?)
            .ok_or(PhysError::OutOfRange(gpa))?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    /// Page number of the memory's base.
    base_page: u16,
    /// Root table, as a page offset into the memory (may point outside it).
    root_page: u16,
    root_low: u16,
    vas: Vec<(u64, u8)>,
    tables: &'a [u8],
}

fuzz_target!(|i: Input<'_>| {
    let mem = Bytes {
        base: u64::from(i.base_page) << 12,
        bytes: i.tables,
    };
    let root = mem.base + (u64::from(i.root_page) << 12) + u64::from(i.root_low);
    for &(va, a) in i.vas.iter().take(64) {
        let access = match a % 3 {
            0 => AccessType::Read,
            1 => AccessType::Write,
            _ => AccessType::Atomic,
        };
        let resolved = resolve(&mem, root, va);
        match walk(&mem, root, va, access) {
            Ok(t) => {
                assert!(va < 1 << 48);
                let size = t.page_size.bytes();
                assert_eq!(t.page_base_pa % size, 0, "unaligned page base");
                assert!(PageSize::ALL.contains(&t.page_size));
                assert!(t.allows(access));
                assert_eq!(t.pa(va) & !(size - 1), t.page_base_pa);
                assert!(t.bytes_to_page_end(va) >= 1 && t.bytes_to_page_end(va) <= size);
                assert_eq!(resolved.ok(), Some(t), "walk and resolve disagree");
            }
            Err(e) => {
                // A permission failure is a translation that does not allow the access.
                if e.fault_reason().is_none() {
                    assert!(
                        e.job_failure().is_some(),
                        "{e} is neither a fault nor a failure"
                    );
                }
            }
        }
    }
});
