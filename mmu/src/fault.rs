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

/// Info bits 0–7: the fault reason.
pub const FAULT_REASON_MASK: u32 = 0xff;
/// Offset of the first reserved byte (0x16..0x1c must be zero).
pub const FAULT_OFF_RESERVED: u64 = 0x16;

/// Kind of a device memory access (the `access` byte of a fault entry).
///
/// Permission rules (checked on the leaf PTE only): `Prefetch` and `Read` need [`PTE_READ`](crate::pte::PTE_READ),
/// `Write` needs [`PTE_WRITE`](crate::pte::PTE_WRITE), `Atomic` needs [`PTE_ATOMIC`](crate::pte::PTE_ATOMIC). Each access
/// type checks exactly its own bit; a driver that allows atomics normally sets all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum AccessType {
    /// Speculative read; needs read permission.
    Prefetch = ACCESS_PREFETCH,
    /// Read.
    Read = ACCESS_READ,
    /// Write.
    Write = ACCESS_WRITE,
    /// Atomic read-modify-write.
    Atomic = ACCESS_ATOMIC,
}

impl AccessType {
    /// All access types, in encoding order.
    pub const ALL: [AccessType; 4] = [Self::Prefetch, Self::Read, Self::Write, Self::Atomic];

    /// Decodes the `access` byte of a fault entry.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            ACCESS_PREFETCH => Some(Self::Prefetch),
            ACCESS_READ => Some(Self::Read),
            ACCESS_WRITE => Some(Self::Write),
            ACCESS_ATOMIC => Some(Self::Atomic),
            _ => None,
        }
    }

    /// The encoded value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// This access type's bit in a CANCEL access mask (bit `n` = `FL_ACCESS_*` value `n`).
    pub fn mask_bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The leaf-PTE permission bit this access needs.
    pub fn required_pte_bit(self) -> u64 {
        match self {
            Self::Prefetch | Self::Read => crate::pte::PTE_READ,
            Self::Write => crate::pte::PTE_WRITE,
            Self::Atomic => crate::pte::PTE_ATOMIC,
        }
    }
}

/// Why an access faulted (info bits 0–7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum FaultReason {
    /// No valid translation.
    NotPresent = FAULT_NOT_PRESENT,
    /// The translation lacks the access permission.
    Permission = FAULT_PERMISSION,
}

impl FaultReason {
    /// Decodes info bits 0–7.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            FAULT_NOT_PRESENT => Some(Self::NotPresent),
            FAULT_PERMISSION => Some(Self::Permission),
            _ => None,
        }
    }
}

/// A malformed fault-ring entry, as seen by a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The `access` byte is not an `FL_ACCESS_*` value.
    #[error("fault entry: bad access type {0}")]
    BadAccess(u8),
    /// The reason is not an `FL_FAULT_*` reason.
    #[error("fault entry: bad reason {0}")]
    BadReason(u32),
    /// The VA is not 4 KiB aligned.
    #[error("fault entry: VA {0:#x} not page aligned")]
    UnalignedVa(u64),
    /// A reserved field or reserved info bits are not zero.
    #[error("fault entry: reserved bits set")]
    Reserved,
}

/// One fault-ring entry (spec section 5), in host form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultEntry {
    /// Faulting page VA (4 KiB aligned).
    pub va: u64,
    /// Nanoseconds since the device was enabled.
    pub timestamp: u64,
    /// Address-space context.
    pub context: u16,
    /// Lane within the engine.
    pub lane: u16,
    /// Engine.
    pub engine: u8,
    /// Access that faulted.
    pub access: AccessType,
    /// Why it faulted.
    pub reason: FaultReason,
}

impl FaultEntry {
    /// The info word, with [`FAULT_VALID`] set.
    pub fn info(&self) -> u32 {
        FAULT_VALID | self.reason as u32
    }

    /// Encodes the entry without its info word: the bytes `0..FAULT_OFF_INFO`. A producer writes these first,
    /// then (after a release barrier) the info word from [`FaultEntry::info`], so a consumer that sees
    /// [`FAULT_VALID`] sees the whole entry.
    pub fn encode_body(&self) -> [u8; FAULT_OFF_INFO as usize] {
        let mut b = [0u8; FAULT_OFF_INFO as usize];
        b[0x00..0x08].copy_from_slice(&self.va.to_le_bytes());
        b[0x08..0x10].copy_from_slice(&self.timestamp.to_le_bytes());
        b[0x10..0x12].copy_from_slice(&self.context.to_le_bytes());
        b[0x12..0x14].copy_from_slice(&self.lane.to_le_bytes());
        b[0x14] = self.engine;
        b[0x15] = self.access.as_u8();
        b
    }

    /// Encodes the whole 32-byte entry, valid bit included.
    pub fn encode(&self) -> [u8; FAULT_SIZE as usize] {
        let mut b = [0u8; FAULT_SIZE as usize];
        b[..FAULT_OFF_INFO as usize].copy_from_slice(&self.encode_body());
        b[FAULT_OFF_INFO as usize..].copy_from_slice(&self.info().to_le_bytes());
        b
    }

    /// Decodes a 32-byte entry. `Ok(None)` means [`FAULT_VALID`] is clear (not yet written, or consumed).
    pub fn decode(b: &[u8; FAULT_SIZE as usize]) -> Result<Option<FaultEntry>, DecodeError> {
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let o = FAULT_OFF_INFO as usize;
        let info = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        if info & FAULT_VALID == 0 {
            return Ok(None);
        }
        if info & !(FAULT_VALID | FAULT_REASON_MASK) != 0
            || b[FAULT_OFF_RESERVED as usize..o].iter().any(|&x| x != 0)
        {
            return Err(DecodeError::Reserved);
        }
        let reason = FaultReason::from_u32(info & FAULT_REASON_MASK)
            .ok_or(DecodeError::BadReason(info & FAULT_REASON_MASK))?;
        let access = AccessType::from_u8(b[0x15]).ok_or(DecodeError::BadAccess(b[0x15]))?;
        let va = u64_at(0);
        if va & (crate::pte::PAGE_SIZE - 1) != 0 {
            return Err(DecodeError::UnalignedVa(va));
        }
        Ok(Some(FaultEntry {
            va,
            timestamp: u64_at(8),
            context: u16_at(0x10),
            lane: u16_at(0x12),
            engine: b[0x14],
            access,
            reason,
        }))
    }
}
