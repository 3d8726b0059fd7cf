//! Guest-physical memory as the MMU sees it, plus a small in-memory model and a page-table builder for tests
//! and the host simulator.

use crate::pte::{
    level_index, PageSize, Perms, PAGE_SIZE, PTE_ADDR_MASK, PTE_LEAF, PTE_VALID, PT_ENTRIES,
    PT_LEVELS,
};
use crate::sync::{AtomicU64, Ordering};

/// Why guest memory could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhysError {
    /// The address is not backed by DMA-mapped guest memory.
    #[error("GPA {0:#x} is outside guest memory")]
    OutOfRange(u64),
    /// The address is not 8-byte aligned.
    #[error("GPA {0:#x} is not 8-byte aligned")]
    Unaligned(u64),
}

/// Read access to guest-physical memory, as needed by the page-table walker.
///
/// The device implements it over its vm-memory snapshot; tests use [`FlatMem`]. Implementations must be
/// callable from many threads at once and must not block for long: the walker calls it while the lane holds an
/// [`Access`](crate::context::Access) pin, which an invalidation waits for.
pub trait PhysMem: Sync {
    /// Reads the little-endian u64 at `gpa` (8-byte aligned).
    fn read_u64(&self, gpa: u64) -> Result<u64, PhysError>;
}

impl<T: PhysMem + ?Sized> PhysMem for &T {
    fn read_u64(&self, gpa: u64) -> Result<u64, PhysError> {
        (**self).read_u64(gpa)
    }
}

/// A dense, zero-initialised model of guest memory covering `[base, base + len)`, readable and writable from
/// many threads (each u64 is an atomic).
#[derive(Debug)]
pub struct FlatMem {
    base: u64,
    words: Box<[AtomicU64]>,
}

impl FlatMem {
    /// Creates `len` bytes (rounded up to 8) of zeroed memory at GPA `base` (8-byte aligned).
    pub fn new(base: u64, len: u64) -> FlatMem {
        let n = len.div_ceil(8) as usize;
        let words = (0..n).map(|_| AtomicU64::new(0)).collect();
        FlatMem {
            base: base & !7,
            words,
        }
    }

    /// First GPA covered.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Bytes covered.
    pub fn len(&self) -> u64 {
        self.words.len() as u64 * 8
    }

    /// Whether the memory is empty.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    fn word(&self, gpa: u64) -> Result<&AtomicU64, PhysError> {
        if gpa & 7 != 0 {
            return Err(PhysError::Unaligned(gpa));
        }
        let idx = gpa
            .checked_sub(self.base)
            .ok_or(PhysError::OutOfRange(gpa))?
            / 8;
        usize::try_from(idx)
            .ok()
            .and_then(|i| self.words.get(i))
            .ok_or(PhysError::OutOfRange(gpa))
    }

    /// Writes the u64 at `gpa` (8-byte aligned).
    pub fn write_u64(&self, gpa: u64, val: u64) -> Result<(), PhysError> {
        self.word(gpa)?.store(val, Ordering::Release);
        Ok(())
    }
}

impl PhysMem for FlatMem {
    fn read_u64(&self, gpa: u64) -> Result<u64, PhysError> {
        Ok(self.word(gpa)?.load(Ordering::Acquire))
    }
}

/// Why a [`PageTableBuilder`] operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// No room left for another table.
    #[error("page-table builder: out of table memory")]
    OutOfTables,
    /// The VA or PA is not aligned to the page size, or the VA is not below 2^48.
    #[error("page-table builder: bad address")]
    BadAddress,
    /// Guest memory refused an access.
    #[error(transparent)]
    Phys(#[from] PhysError),
}

/// Builds device page tables (spec section 5) in a [`FlatMem`], allocating tables from a bump region.
///
/// A driver-like helper for tests and the host simulator: it writes PTEs but never invalidates; callers pair
/// every change with an invalidation, as the guest driver must.
#[derive(Debug)]
pub struct PageTableBuilder<'m> {
    mem: &'m FlatMem,
    root: u64,
    next: u64,
    end: u64,
}

impl<'m> PageTableBuilder<'m> {
    /// Creates a builder whose tables live in `[table_base, table_base + table_bytes)` of `mem` (4 KiB
    /// aligned), and allocates the root table.
    pub fn new(mem: &'m FlatMem, table_base: u64, table_bytes: u64) -> Result<Self, BuildError> {
        if table_base & (PAGE_SIZE - 1) != 0 {
            return Err(BuildError::BadAddress);
        }
        let mut b = PageTableBuilder {
            mem,
            root: 0,
            next: table_base,
            end: table_base + table_bytes,
        };
        b.root = b.alloc_table()?;
        Ok(b)
    }

    /// GPA of the root table (the value to BIND).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Allocates a zeroed table.
    pub fn alloc_table(&mut self) -> Result<u64, BuildError> {
        if self.next + PAGE_SIZE > self.end {
            return Err(BuildError::OutOfTables);
        }
        let t = self.next;
        self.next += PAGE_SIZE;
        for i in 0..PT_ENTRIES {
            self.mem.write_u64(t + i * 8, 0)?;
        }
        Ok(t)
    }

    /// Returns the GPA of the entry that maps `va` at `level`, creating next-level tables above it as needed
    /// (an invalid or leaf entry on the way is replaced by a fresh empty table).
    pub fn entry_addr(&mut self, va: u64, level: u32) -> Result<u64, BuildError> {
        if va >= crate::pte::VA_LIMIT || level >= PT_LEVELS {
            return Err(BuildError::BadAddress);
        }
        let mut table = self.root;
        for l in (level + 1..PT_LEVELS).rev() {
            let ea = table + level_index(va, l) * 8;
            let e = self.mem.read_u64(ea)?;
            let is_leaf = l > 0 && l < 3 && e & PTE_LEAF != 0;
            table = if e & PTE_VALID == 0 || is_leaf {
                let t = self.alloc_table()?;
                self.mem.write_u64(ea, t | PTE_VALID)?;
                t
            } else {
                e & PTE_ADDR_MASK
            };
        }
        Ok(table + level_index(va, level) * 8)
    }

    /// Maps the page of `size` at `va` to frame `pa` with `perms`.
    pub fn map(
        &mut self,
        va: u64,
        pa: u64,
        size: PageSize,
        perms: Perms,
    ) -> Result<(), BuildError> {
        let mask = size.bytes() - 1;
        if va & mask != 0 || pa & mask != 0 || pa & !PTE_ADDR_MASK != 0 {
            return Err(BuildError::BadAddress);
        }
        let leaf = if size == PageSize::Size4K {
            0
        } else {
            PTE_LEAF
        };
        self.set_entry(va, size.level(), pa | perms.bits() | leaf | PTE_VALID)
    }

    /// Writes a raw entry (possibly malformed) for `va` at `level`.
    pub fn set_entry(&mut self, va: u64, level: u32, pte: u64) -> Result<(), BuildError> {
        let ea = self.entry_addr(va, level)?;
        Ok(self.mem.write_u64(ea, pte)?)
    }

    /// Clears the entry that maps `va` at `size`'s level, or the larger leaf above it if there is one. Returns
    /// the VA range that lost its translation (empty if nothing was mapped there).
    pub fn unmap(&mut self, va: u64, size: PageSize) -> Result<std::ops::Range<u64>, BuildError> {
        if va >= crate::pte::VA_LIMIT {
            return Err(BuildError::BadAddress);
        }
        let mut table = self.root;
        for l in (0..PT_LEVELS).rev() {
            let ea = table + level_index(va, l) * 8;
            let e = self.mem.read_u64(ea)?;
            if e & PTE_VALID == 0 {
                return Ok(va..va);
            }
            let is_leaf = l == 0 || (l < 3 && e & PTE_LEAF != 0);
            if is_leaf || l == size.level() {
                self.mem.write_u64(ea, 0)?;
                let span = 1u64 << crate::pte::level_shift(l);
                let start = va & !(span - 1);
                return Ok(start..start + span);
            }
            table = e & PTE_ADDR_MASK;
        }
        Ok(va..va)
    }
}
