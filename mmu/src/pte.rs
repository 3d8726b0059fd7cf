//! Device page-table entry format (spec section 5).

/// Entry present.
pub const PTE_VALID: u64 = 1 << 0;
/// Leaf: readable.
pub const PTE_READ: u64 = 1 << 1;
/// Leaf: writable.
pub const PTE_WRITE: u64 = 1 << 2;
/// Leaf: atomics allowed.
pub const PTE_ATOMIC: u64 = 1 << 3;
/// Large leaf at level 2 (1 GiB) or level 1 (2 MiB).
pub const PTE_LEAF: u64 = 1 << 7;
/// Next-table or page-frame address bits 51:12.
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Bits that must be zero.
pub const PTE_RESERVED_MASK: u64 =
    !(PTE_ADDR_MASK | PTE_VALID | PTE_READ | PTE_WRITE | PTE_ATOMIC | PTE_LEAF);

/// Number of page-table levels.
pub const PT_LEVELS: u32 = 4;
/// Entries per 4 KiB table.
pub const PT_ENTRIES: u64 = 512;
/// Width of a device virtual address.
pub const VA_BITS: u32 = 48;
/// Base page size.
pub const PAGE_SIZE: u64 = 4096;
/// Page shift.
pub const PAGE_SHIFT: u32 = 12;
/// 2 MiB large page.
pub const LARGE_PAGE_2M: u64 = 2 << 20;
/// 1 GiB huge page.
pub const HUGE_PAGE_1G: u64 = 1 << 30;

/// Leaf permission bits.
pub const PTE_PERM_MASK: u64 = PTE_READ | PTE_WRITE | PTE_ATOMIC;
/// One past the highest device VA.
pub const VA_LIMIT: u64 = 1 << VA_BITS;

/// Shift of the VA bits that index a table at `level` (0 = last level, 3 = root).
pub const fn level_shift(level: u32) -> u32 {
    PAGE_SHIFT + 9 * level
}

/// Index into the table at `level` for `va`.
pub const fn level_index(va: u64, level: u32) -> u64 {
    (va >> level_shift(level)) & (PT_ENTRIES - 1)
}

/// Size of a leaf page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageSize {
    /// 4 KiB, a level-0 leaf.
    Size4K,
    /// 2 MiB, a level-1 leaf with [`PTE_LEAF`].
    Size2M,
    /// 1 GiB, a level-2 leaf with [`PTE_LEAF`].
    Size1G,
}

impl PageSize {
    /// All sizes, smallest first.
    pub const ALL: [PageSize; 3] = [Self::Size4K, Self::Size2M, Self::Size1G];

    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => PAGE_SIZE,
            Self::Size2M => LARGE_PAGE_2M,
            Self::Size1G => HUGE_PAGE_1G,
        }
    }

    /// log2 of the size.
    pub const fn shift(self) -> u32 {
        match self {
            Self::Size4K => 12,
            Self::Size2M => 21,
            Self::Size1G => 30,
        }
    }

    /// The page-table level whose entry maps a page of this size.
    pub const fn level(self) -> u32 {
        match self {
            Self::Size4K => 0,
            Self::Size2M => 1,
            Self::Size1G => 2,
        }
    }

    /// The size mapped by a leaf at `level`, if a leaf may live there.
    pub const fn from_level(level: u32) -> Option<Self> {
        match level {
            0 => Some(Self::Size4K),
            1 => Some(Self::Size2M),
            2 => Some(Self::Size1G),
            _ => None,
        }
    }

    /// Dense index 0..3 (4K, 2M, 1G).
    pub const fn index(self) -> usize {
        self.level() as usize
    }

    /// `va` rounded down to this page size.
    pub const fn align_down(self, va: u64) -> u64 {
        va & !(self.bytes() - 1)
    }
}

/// Leaf permissions: a subset of [`PTE_PERM_MASK`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Perms(u8);

impl Perms {
    /// No permission.
    pub const NONE: Perms = Perms(0);
    /// Read, write and atomic.
    pub const ALL: Perms = Perms(PTE_PERM_MASK as u8);

    /// Takes the permission bits of a PTE; other bits are ignored.
    pub const fn from_pte(pte: u64) -> Perms {
        Perms((pte & PTE_PERM_MASK) as u8)
    }

    /// The permission bits, in PTE position.
    pub const fn bits(self) -> u64 {
        self.0 as u64
    }

    /// Whether `access` is allowed.
    pub fn allows(self, access: crate::fault::AccessType) -> bool {
        self.bits() & access.required_pte_bit() != 0
    }
}
