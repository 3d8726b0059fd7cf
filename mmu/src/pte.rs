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
