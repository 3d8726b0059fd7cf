//! Guest memory as the MMU and the engines reach it: [`GuestPhys`], the walker's [`PhysMem`] over a
//! vm-memory snapshot, and [`slice_at`], the bounded host view of a guest-physical range.
//!
//! Every access goes through vm-memory: an address outside the DMA-mapped regions is an error, never a
//! panic and never a host access outside the guest memory.

use std::sync::atomic::Ordering;

use faultline_mmu::{PhysError, PhysMem};

use super::RemoteDma;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, VolatileSlice,
};

/// The walker's view of a guest-memory snapshot, and of the client-served memory if any.
pub(crate) struct GuestPhys<'m>(pub &'m GuestMemoryMmap, pub Option<&'m dyn RemoteDma>);

impl PhysMem for GuestPhys<'_> {
    fn read_u64(&self, gpa: u64) -> Result<u64, PhysError> {
        if gpa & 7 != 0 {
            return Err(PhysError::Unaligned(gpa));
        }
        // The region's own atomic load: an 8-aligned word never straddles two regions, and this skips
        // the generic slice iterator (a walk reads four PTEs per TLB miss).
        if let Some((region, addr)) = self.0.to_region_addr(GuestAddress(gpa)) {
            return region
                .load::<u64>(addr, Ordering::Acquire)
                .map_err(|_| PhysError::OutOfRange(gpa));
        }
        match self.1.filter(|r| r.covers(gpa, 8)) {
            Some(r) => {
                let mut b = [0u8; 8];
                r.read(gpa, &mut b)
                    .map(|()| u64::from_le_bytes(b))
                    .map_err(|_| PhysError::OutOfRange(gpa))
            }
            None => Err(PhysError::OutOfRange(gpa)),
        }
    }
}

/// The host view of at most `len` bytes of guest-physical memory at `gpa`, cut at the end of the memory
/// region that holds `gpa` (so a range spanning two regions takes two calls). `None` if `gpa` is not in
/// guest memory or `len` is 0.
pub(crate) fn slice_at(
    mem: &GuestMemoryMmap,
    gpa: u64,
    len: usize,
) -> Option<VolatileSlice<'_, ()>> {
    let (region, addr) = mem.to_region_addr(GuestAddress(gpa))?;
    let avail = region.len().checked_sub(addr.0)?;
    let n = usize::try_from(avail).map_or(len, |a| a.min(len));
    if n == 0 {
        return None;
    }
    region.get_slice(addr, n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phys_reads_are_bounded() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x2000),
            (GuestAddress(0x10000), 0x1000),
        ])
        .unwrap();
        mem.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x1ff8))
            .unwrap();
        let p = GuestPhys(&mem, None);
        assert_eq!(p.read_u64(0x1ff8), Ok(0x1122_3344_5566_7788));
        assert_eq!(p.read_u64(0x2000), Err(PhysError::OutOfRange(0x2000)));
        assert_eq!(p.read_u64(0x1ffc), Err(PhysError::Unaligned(0x1ffc)));
        assert_eq!(p.read_u64(!7u64), Err(PhysError::OutOfRange(!7u64)));
        assert_eq!(slice_at(&mem, 0x1f00, 0x1000).unwrap().len(), 0x100);
        assert_eq!(slice_at(&mem, 0x10000, 0x10).unwrap().len(), 0x10);
        assert!(slice_at(&mem, 0x3000, 1).is_none());
        assert!(slice_at(&mem, 0, 0).is_none());
    }
}
