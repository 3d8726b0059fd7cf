//! Fault-ring entry format (spec section 5).

/// Size of one fault-ring entry in bytes.
pub const FAULT_SIZE: u64 = 32;
/// Offset of the faulting page VA (u64).
pub const FAULT_OFF_VA: u64 = 0x00;
/// Offset of the timestamp (u64, ns).
pub const FAULT_OFF_TIMESTAMP: u64 = 0x08;
/// Offset of the context (u16).
pub const FAULT_OFF_CONTEXT: u64 = 0x10;
/// Offset of the lane (u16).
pub const FAULT_OFF_LANE: u64 = 0x12;
/// Offset of the engine (u8).
pub const FAULT_OFF_ENGINE: u64 = 0x14;
/// Offset of the access type (u8).
pub const FAULT_OFF_ACCESS: u64 = 0x15;
/// Offset of the info word (u32), written last.
pub const FAULT_OFF_INFO: u64 = 0x1c;
/// Info bit 31: the entry is valid.
pub const FAULT_VALID: u32 = 1 << 31;
/// Reason: no valid translation.
pub const FAULT_NOT_PRESENT: u32 = 1;
/// Reason: translation lacks the access permission.
pub const FAULT_PERMISSION: u32 = 2;

/// Access type: prefetch.
pub const ACCESS_PREFETCH: u8 = 0;
/// Access type: read.
pub const ACCESS_READ: u8 = 1;
/// Access type: write.
pub const ACCESS_WRITE: u8 = 2;
/// Access type: atomic.
pub const ACCESS_ATOMIC: u8 = 3;
