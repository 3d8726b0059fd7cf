//! The page-table walker (spec section 5): four levels, 48-bit VA, 4 KiB / 2 MiB / 1 GiB leaves.

use crate::fault::{AccessType, FaultReason};
use crate::mem::{PhysError, PhysMem};
use crate::pte::{
    level_index, PageSize, Perms, PAGE_SIZE, PTE_ADDR_MASK, PTE_LEAF, PTE_RESERVED_MASK, PTE_VALID,
    PT_ENTRIES, PT_LEVELS, VA_LIMIT,
};

/// A resolved leaf translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Translation {
    /// Guest-physical address of the first byte of the page.
    pub page_base_pa: u64,
    /// Size of the page.
    pub page_size: PageSize,
    /// Leaf permissions.
    pub perms: Perms,
}

impl Translation {
    /// Guest-physical address of `va`, which must lie in the translated page.
    pub fn pa(&self, va: u64) -> u64 {
        self.page_base_pa | (va & (self.page_size.bytes() - 1))
    }

    /// Bytes from `va` to the end of its page.
    pub fn bytes_to_page_end(&self, va: u64) -> u64 {
        self.page_size.bytes() - (va & (self.page_size.bytes() - 1))
    }

    /// Whether the translation allows `access`.
    pub fn allows(&self, access: AccessType) -> bool {
        self.perms.allows(access)
    }
}

/// How a job fails when its access cannot be translated and no fault is posted (spec section 4, job status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobFailure {
    /// A page table lies outside guest memory (`FL_JOB_DMA_ERROR`).
    DmaError,
    /// A malformed PTE: reserved bits, misaligned large page (`FL_JOB_PT_ERROR`).
    PtError,
    /// The VA is not below 2^48, or the context is out of range (`FL_JOB_INVALID`).
    Invalid,
    /// The context is not bound (`FL_JOB_UNBOUND`); reported by [`Mmu`](crate::context::Mmu), never by the walker.
    Unbound,
}

/// Why a walk did not produce a usable translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// The VA is at or above 2^48.
    #[error("VA {va:#x} is not below 2^48")]
    NonCanonical {
        /// The VA.
        va: u64,
    },
    /// An entry on the path has `FL_PTE_VALID` clear (reason `FL_FAULT_NOT_PRESENT`).
    #[error("not present at level {level}")]
    NotPresent {
        /// Level of the invalid entry (3 = root table).
        level: u32,
    },
    /// The leaf does not allow the access (reason `FL_FAULT_PERMISSION`).
    #[error("{access:?} not allowed by leaf permissions {:?}", translation.perms)]
    Permission {
        /// The leaf's translation.
        translation: Translation,
        /// The refused access.
        access: AccessType,
    },
    /// A valid entry has reserved bits set, or `FL_PTE_LEAF` in the root table (which has no large leaves).
    #[error("reserved bits in PTE {pte:#x} at level {level}")]
    Reserved {
        /// Level of the entry.
        level: u32,
        /// The entry.
        pte: u64,
    },
    /// A large leaf's frame is not aligned to its page size.
    #[error("misaligned large page PTE {pte:#x} at level {level}")]
    Misaligned {
        /// Level of the entry.
        level: u32,
        /// The entry.
        pte: u64,
    },
    /// A table lies outside guest memory.
    #[error("page table at level {level} unreadable: {source}")]
    Dma {
        /// Level of the table that could not be read.
        level: u32,
        /// The underlying error.
        source: PhysError,
    },
}

impl WalkError {
    /// The fault reason to post, for errors that stall the lane and post a fault.
    pub fn fault_reason(&self) -> Option<FaultReason> {
        match self {
            Self::NotPresent { .. } => Some(FaultReason::NotPresent),
            Self::Permission { .. } => Some(FaultReason::Permission),
            _ => None,
        }
    }

    /// The job failure, for errors that fail the job without a fault.
    pub fn job_failure(&self) -> Option<JobFailure> {
        match self {
            Self::NotPresent { .. } | Self::Permission { .. } => None,
            Self::NonCanonical { .. } => Some(JobFailure::Invalid),
            Self::Reserved { .. } | Self::Misaligned { .. } => Some(JobFailure::PtError),
            Self::Dma { .. } => Some(JobFailure::DmaError),
        }
    }
}

/// Resolves `va` through the page table rooted at `root` without checking permissions.
///
/// Rules: an entry with `FL_PTE_VALID` clear ends the walk with [`WalkError::NotPresent`] whatever its other
/// bits; a valid entry with reserved bits, or with `FL_PTE_LEAF` at level 3, is [`WalkError::Reserved`]; at
/// levels 2 and 1 `FL_PTE_LEAF` makes a 1 GiB / 2 MiB leaf whose frame must be aligned to its size; a level-0
/// entry is always a 4 KiB leaf (`FL_PTE_LEAF` ignored). Permission bits of non-leaf entries are ignored.
#[inline]
pub fn resolve<M: PhysMem + ?Sized>(mem: &M, root: u64, va: u64) -> Result<Translation, WalkError> {
    resolve_leaf(mem, root, va).map(|(translation, _)| translation)
}

/// [`resolve`], also returning the GPA of the table that holds the leaf entry (for a 4 KiB leaf, the level-0
/// table that [`contiguous_after`] continues in).
#[inline(always)]
pub(crate) fn resolve_leaf<M: PhysMem + ?Sized>(
    mem: &M,
    root: u64,
    va: u64,
) -> Result<(Translation, u64), WalkError> {
    if va >= VA_LIMIT {
        return Err(WalkError::NonCanonical { va });
    }
    let mut table = root & PTE_ADDR_MASK;
    for level in (0..PT_LEVELS).rev() {
        let pte = mem
            .read_u64(table + level_index(va, level) * 8)
            .map_err(|source| WalkError::Dma { level, source })?;
        if pte & PTE_VALID == 0 {
            return Err(WalkError::NotPresent { level });
        }
        if pte & PTE_RESERVED_MASK != 0 || (level == PT_LEVELS - 1 && pte & PTE_LEAF != 0) {
            return Err(WalkError::Reserved { level, pte });
        }
        let leaf_size = match level {
            0 => Some(PageSize::Size4K),
            _ if pte & PTE_LEAF != 0 => PageSize::from_level(level),
            _ => None,
        };
        let addr = pte & PTE_ADDR_MASK;
        match leaf_size {
            Some(page_size) => {
                if addr & (page_size.bytes() - 1) != 0 {
                    return Err(WalkError::Misaligned { level, pte });
                }
                let translation = Translation {
                    page_base_pa: addr,
                    page_size,
                    perms: Perms::from_pte(pte),
                };
                return Ok((translation, table));
            }
            None => table = addr,
        }
    }
    // Level 0 always returns above.
    Err(WalkError::NotPresent { level: 0 })
}

/// How many bytes after the 4 KiB page of `va` continue its translation `first` for `access`, up to `max`:
/// the level-0 entries that follow `va`'s in `table` (the level-0 table that maps `va`), read in order, as long
/// as each one is valid, has no reserved bits, allows `access` and maps the frame right after the previous
/// page's. Stops at the end of the table (a 2 MiB boundary), at the first entry that does not qualify (a later
/// translation of that page reports its fault or error) and at `max`. Returns a multiple of 4 KiB.
///
/// Each entry read is a walk of its page that reuses the upper-level entries of `va`'s walk: the caller reads
/// them under the same lane pin, so they are as current as that walk's (an invalidation of any of them waits
/// for the pin).
pub(crate) fn contiguous_after<M: PhysMem + ?Sized>(
    mem: &M,
    table: u64,
    va: u64,
    first: &Translation,
    access: AccessType,
    max: u64,
) -> u64 {
    let index = level_index(va, 0);
    let pages = (PT_ENTRIES - 1 - index).min(max / PAGE_SIZE);
    let mut expect = first.page_base_pa;
    let mut done = 0;
    while done < pages {
        expect += PAGE_SIZE;
        let Ok(pte) = mem.read_u64(table + (index + 1 + done) * 8) else {
            break;
        };
        if pte & PTE_VALID == 0
            || pte & PTE_RESERVED_MASK != 0
            || pte & PTE_ADDR_MASK != expect
            || !Perms::from_pte(pte).allows(access)
        {
            break;
        }
        done += 1;
    }
    done * PAGE_SIZE
}

/// Walks the page table rooted at `root` for an `access` to `va` (spec section 5). On success the leaf allows
/// the access; see [`resolve`] for the format rules.
pub fn walk<M: PhysMem + ?Sized>(
    mem: &M,
    root: u64,
    va: u64,
    access: AccessType,
) -> Result<Translation, WalkError> {
    let translation = resolve(mem, root, va)?;
    if translation.allows(access) {
        Ok(translation)
    } else {
        Err(WalkError::Permission {
            translation,
            access,
        })
    }
}
