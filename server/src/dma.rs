//! DMA regions of one client, and the guest memory the device sees.
//!
//! Every DMA_MAP/DMA_UNMAP updates the region table, then rebuilds a `GuestMemoryMmap` from the
//! device-visible regions and swaps it into the shared [`GuestMem`]; the device reads snapshots.
//!
//! Device-visible regions are the ones the client passed a file descriptor for and allowed the
//! device to read and write: they are `mmap`ed `MAP_SHARED`. Two kinds are recorded (so they can
//! be unmapped, and overlap checks see them) but kept out of the device-visible memory, so a
//! device access there fails cleanly as "outside guest memory":
//! - regions without a file descriptor (QEMU sends the BIOS ROM this way at startup, and all guest
//!   RAM when it has no shared memory backend): writable ones are served through the client with
//!   DMA_READ/DMA_WRITE messages when a [`DmaChannel`] is attached (`remote_dma.rs`), read-only
//!   ones are recorded only;
//! - read-only regions: vm-memory has no per-region permissions, and a device write into a
//!   `PROT_READ` mapping would kill the server.
//!
//! An unmapped region's `mmap` is released when the last device snapshot that still holds it is
//! dropped, so an in-flight device access finishes safely; accesses that start after the swap no
//! longer see the region. [`DmaSpace::unmap`] returns the removed mappings as a [`Retired`] set,
//! and the DMA_UNMAP reply is sent only once [`Retired::is_released`] holds (the vfio-user spec:
//! the server must release every reference, in-flight DMA included, before it replies). Device
//! snapshots are short-lived (one access window of at most 64 KiB, or one completion-record or
//! fault-entry write), so that wait is bounded; the connection waits for it off the socket
//! thread (see `conn.rs`).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use faultline_device::GuestMem;
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::error::RequestError;
use crate::protocol::{DmaMap, DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE, DMA_PGSIZE, MAX_DMA_MAPS};
use crate::remote_dma::{DmaChannel, FdlessRegion};

/// Largest single DMA region accepted (1 TiB).
pub const MAX_DMA_REGION_SIZE: u64 = 1 << 40;

/// How a recorded region can be reached by the device.
#[derive(Debug)]
enum Backing {
    /// `mmap`ed and part of the device-visible memory.
    Mapped(Arc<GuestRegionMmap>),
    /// No file descriptor: served through the client (DMA_READ/DMA_WRITE).
    Remote(Arc<FdlessRegion>),
    /// Recorded only; the reason is logged.
    NotAccessible(&'static str),
}

#[derive(Debug)]
struct Region {
    size: u64,
    backing: Backing,
}

/// Mappings removed from the device-visible memory whose device snapshots (or client-served
/// accesses) may still be alive.
#[derive(Debug, Default)]
pub struct Retired(Vec<Arc<GuestRegionMmap>>, Vec<Arc<FdlessRegion>>);

impl Retired {
    /// Whether no device snapshot or remote access references any of the mappings any more:
    /// `self` holds the last reference of each.
    pub fn is_released(&self) -> bool {
        self.0.iter().all(|r| Arc::strong_count(r) == 1)
            && self.1.iter().all(|r| Arc::strong_count(r) == 1)
    }

    /// Whether nothing was removed from the device-visible memory.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty() && self.1.is_empty()
    }
}

/// The DMA regions of one client.
#[derive(Debug)]
pub struct DmaSpace {
    mem: GuestMem,
    /// Where regions without a file descriptor are served, if anywhere.
    remote: Option<DmaChannel>,
    /// Most regions (`max_dma_maps`).
    max_maps: usize,
    /// Regions by IOVA; never overlapping.
    regions: BTreeMap<u64, Region>,
    /// Writable regions that came without a file descriptor (guest RAM of a QEMU without a
    /// shared memory backend); the first one is reported loudly.
    fdless_writable: u64,
}

impl DmaSpace {
    /// An empty table publishing into `mem`, with at most [`MAX_DMA_MAPS`] regions.
    pub fn new(mem: GuestMem) -> Self {
        Self::with_limit(mem, MAX_DMA_MAPS)
    }

    /// An empty table publishing into `mem`, with at most `max_maps` regions.
    pub fn with_limit(mem: GuestMem, max_maps: usize) -> Self {
        DmaSpace {
            mem,
            remote: None,
            max_maps,
            regions: BTreeMap::new(),
            fdless_writable: 0,
        }
    }

    /// Serves writable regions without a file descriptor through `remote`.
    pub fn with_remote(mut self, remote: DmaChannel) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Number of recorded regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether no region is recorded.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Handles DMA_MAP.
    pub fn map(&mut self, req: &DmaMap, fd: Option<OwnedFd>) -> Result<(), RequestError> {
        let known = DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE;
        if req.flags & !known != 0 {
            return Err(RequestError::invalid(format!(
                "DMA_MAP: unknown flags {:#x}",
                req.flags & !known
            )));
        }
        if req.flags & DMA_MAP_FLAG_READ == 0 {
            return Err(RequestError::invalid("DMA_MAP: region is not readable"));
        }
        if req.size == 0 {
            return Err(RequestError::invalid("DMA_MAP: zero size"));
        }
        if req.iova % DMA_PGSIZE != 0 || req.size % DMA_PGSIZE != 0 {
            return Err(RequestError::invalid(format!(
                "DMA_MAP: {:#x}+{:#x} is not 4 KiB aligned",
                req.iova, req.size
            )));
        }
        let end = req.iova.checked_add(req.size).ok_or_else(|| {
            RequestError::invalid(format!(
                "DMA_MAP: {:#x}+{:#x} overflows the address space",
                req.iova, req.size
            ))
        })?;
        if req.size > MAX_DMA_REGION_SIZE {
            return Err(RequestError::NoSpace(format!(
                "DMA_MAP: region of {:#x} bytes exceeds the {:#x}-byte limit",
                req.size, MAX_DMA_REGION_SIZE
            )));
        }
        if self.regions.len() >= self.max_maps {
            return Err(RequestError::NoSpace(format!(
                "DMA_MAP: {} regions already mapped (max_dma_maps)",
                self.max_maps
            )));
        }
        if let Some((&other_iova, other)) = self.first_overlap(req.iova, end) {
            return Err(RequestError::Overlap {
                iova: req.iova,
                size: req.size,
                other_iova,
                other_size: other.size,
            });
        }

        if fd.is_none() && req.flags & DMA_MAP_FLAG_WRITE != 0 {
            self.fdless_writable += 1;
            if self.fdless_writable == 1 {
                let how = if self.remote.is_some() {
                    "the device reaches it through DMA_READ/DMA_WRITE messages to the client, one \
                     socket round trip per access: correct, but slow"
                } else {
                    "the device cannot reach it, and jobs, rings and records placed there fail \
                     with DMA errors"
                };
                log::error!(
                    "DMA_MAP {:#x}+{:#x}: writable guest memory without a file descriptor: {how}. \
                     Give QEMU a shared memory backend: -object memory-backend-memfd,id=mem,size=<RAM>,share=on \
                     -machine memory-backend=mem (libvirt: <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>)",
                    req.iova,
                    req.size
                );
            }
        }
        let backing = match fd {
            None if req.flags & DMA_MAP_FLAG_WRITE != 0 && self.remote.is_some() => {
                Backing::Remote(Arc::new(FdlessRegion {
                    iova: req.iova,
                    size: req.size,
                    writable: true,
                }))
            }
            None => Backing::NotAccessible("no file descriptor"),
            Some(_) if req.flags & DMA_MAP_FLAG_WRITE == 0 => Backing::NotAccessible("read-only"),
            Some(fd) => Backing::Mapped(Arc::new(mmap_region(req, fd)?)),
        };
        match &backing {
            Backing::Mapped(_) => log::debug!(
                "DMA map {:#x}+{:#x} (file offset {:#x}): device-visible",
                req.iova,
                req.size,
                req.offset
            ),
            Backing::Remote(_) => log::debug!(
                "DMA map {:#x}+{:#x}: no file descriptor, served through DMA_READ/DMA_WRITE",
                req.iova,
                req.size
            ),
            Backing::NotAccessible(why) => log::debug!(
                "DMA map {:#x}+{:#x}: {why}, recorded but not accessible to the device",
                req.iova,
                req.size
            ),
        }
        if let (Backing::Remote(r), Some(remote)) = (&backing, &self.remote) {
            remote.add_region(Arc::clone(r));
        }
        let publish = matches!(backing, Backing::Mapped(_));
        self.regions.insert(
            req.iova,
            Region {
                size: req.size,
                backing,
            },
        );
        if publish {
            if let Err(e) = self.publish() {
                self.regions.remove(&req.iova);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Handles DMA_UNMAP of one region: `iova` and `size` must match a mapping exactly. Returns
    /// the mapping removed from the device-visible memory, to be waited for before replying.
    pub fn unmap(&mut self, iova: u64, size: u64) -> Result<Retired, RequestError> {
        match self.regions.get(&iova) {
            Some(r) if r.size == size => {}
            _ => return Err(RequestError::NotFound { iova, size }),
        }
        let removed = self.regions.remove(&iova);
        log::debug!("DMA unmap {iova:#x}+{size:#x}");
        match removed {
            Some(Region {
                backing: Backing::Mapped(m),
                size,
            }) => {
                if let Err(e) = self.publish() {
                    // Keep the table consistent with what the device still sees.
                    self.regions.insert(
                        iova,
                        Region {
                            size,
                            backing: Backing::Mapped(m),
                        },
                    );
                    return Err(e);
                }
                Ok(Retired(vec![m], Vec::new()))
            }
            Some(Region {
                backing: Backing::Remote(r),
                ..
            }) => {
                if let Some(remote) = &self.remote {
                    remote.remove_region(iova);
                }
                Ok(Retired(Vec::new(), vec![r]))
            }
            _ => Ok(Retired::default()),
        }
    }

    /// Handles DMA_UNMAP with the unmap-all flag, and client disconnects. Returns the mappings
    /// removed from the device-visible memory.
    pub fn unmap_all(&mut self) -> Retired {
        if self.regions.is_empty() {
            return Retired::default();
        }
        log::info!("DMA unmap all ({} regions)", self.regions.len());
        let mut retired = Retired::default();
        for r in std::mem::take(&mut self.regions).into_values() {
            match r.backing {
                Backing::Mapped(m) => retired.0.push(m),
                Backing::Remote(f) => retired.1.push(f),
                Backing::NotAccessible(_) => {}
            }
        }
        if let Some(remote) = &self.remote {
            remote.remove_all_regions();
        }
        self.swap_in(GuestMemoryMmap::new());
        retired
    }

    fn first_overlap(&self, start: u64, end: u64) -> Option<(&u64, &Region)> {
        // The last region starting before `end` is the only candidate: regions never overlap,
        // so any earlier one ends before it starts.
        self.regions
            .range(..end)
            .next_back()
            .filter(|(&iova, r)| iova.saturating_add(r.size) > start)
    }

    /// Rebuilds the device-visible memory from the mapped regions and swaps it in.
    fn publish(&mut self) -> Result<(), RequestError> {
        let regions: Vec<Arc<GuestRegionMmap>> = self
            .regions
            .values()
            .filter_map(|r| match &r.backing {
                Backing::Mapped(m) => Some(Arc::clone(m)),
                Backing::Remote(_) | Backing::NotAccessible(_) => None,
            })
            .collect();
        let mem = if regions.is_empty() {
            GuestMemoryMmap::new()
        } else {
            GuestMemoryMmap::from_arc_regions(regions).map_err(|e| {
                RequestError::invalid(format!("DMA: cannot build guest memory: {e}"))
            })?
        };
        self.swap_in(mem);
        Ok(())
    }

    fn swap_in(&self, mem: GuestMemoryMmap) {
        // A poisoned lock only means another holder panicked; the map itself is still whole.
        let guard = self.mem.lock().unwrap_or_else(|e| e.into_inner());
        guard.replace(mem);
    }
}

/// Maps `req.size` bytes at `req.offset` of the client's file, shared and read-write.
fn mmap_region(req: &DmaMap, fd: OwnedFd) -> Result<GuestRegionMmap, RequestError> {
    let file = File::from(fd);
    let meta = file.metadata().map_err(|source| RequestError::Os {
        what: "DMA_MAP: fstat",
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(RequestError::invalid(
            "DMA_MAP: file descriptor is not a regular file (memfd, hugetlbfs or tmpfs file)",
        ));
    }
    // Mapping beyond the end of the file would turn device accesses into SIGBUS.
    match req.offset.checked_add(req.size) {
        Some(end) if end <= meta.len() => {}
        _ => {
            return Err(RequestError::invalid(format!(
                "DMA_MAP: file range {:#x}+{:#x} is beyond the file's {:#x} bytes",
                req.offset,
                req.size,
                meta.len()
            )))
        }
    }
    if req.offset % DMA_PGSIZE != 0 {
        return Err(RequestError::invalid(format!(
            "DMA_MAP: file offset {:#x} is not 4 KiB aligned",
            req.offset
        )));
    }
    check_memory_backed(&file)?;
    let size = usize::try_from(req.size)
        .map_err(|_| RequestError::invalid("DMA_MAP: size does not fit in the address space"))?;
    let mapping = MmapRegion::build(
        Some(FileOffset::new(file, req.offset)),
        size,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
    )
    .map_err(|e| match e {
        vm_memory::mmap::MmapRegionError::Mmap(source) => RequestError::Os {
            what: "DMA_MAP: mmap",
            source,
        },
        other => RequestError::invalid(format!("DMA_MAP: {other}")),
    })?;
    GuestRegionMmap::new(mapping, GuestAddress(req.iova))
        .ok_or_else(|| RequestError::invalid("DMA_MAP: region end overflows"))
}

/// `statfs` magic numbers of the memory file systems a DMA file may live on.
/// (Compared as 32-bit values: the kernel's magics are, whatever the width of `f_type`.)
const MEMORY_FS: [(u32, &str); 2] = [
    (libc::TMPFS_MAGIC as u32, "tmpfs/memfd"),
    (libc::HUGETLBFS_MAGIC as u32, "hugetlbfs"),
];

/// A DMA file must be memory: on tmpfs or hugetlbfs (memfds are), or sealed against shrinking.
/// A file on a disk, FUSE or NFS file system could block a device access in a page fault for as
/// long as the file system likes (hanging resets and shutdown), and one that shrinks turns
/// accesses past its new end into SIGBUS.
fn check_memory_backed(file: &File) -> Result<(), RequestError> {
    // SAFETY: F_GET_SEALS only reads the seals of a descriptor we own.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    let sealed = seals >= 0 && seals & libc::F_SEAL_SHRINK != 0;
    // SAFETY: `statfs` is plain old data, fully written by a successful fstatfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes into the struct we pass, for a descriptor we own.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    if rc != 0 {
        return Err(RequestError::Os {
            what: "DMA_MAP: fstatfs",
            source: std::io::Error::last_os_error(),
        });
    }
    let fs = st.f_type as u32;
    match MEMORY_FS.iter().find(|(magic, _)| *magic == fs) {
        Some((_, name)) => {
            if !sealed {
                // QEMU's memory-backend-memfd seals its files; a tmpfs file the client truncates
                // would still fault the server.
                log::debug!("DMA_MAP: {name} file is not sealed against shrinking; the client must not truncate it");
            }
            Ok(())
        }
        None if sealed => Ok(()),
        None => Err(RequestError::NotMemory(format!(
            "DMA_MAP: the file is on a file system with magic {fs:#x}, not tmpfs, memfd or \
             hugetlbfs, and not sealed against shrinking (use -object memory-backend-memfd,share=on)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::fd::FromRawFd;
    use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryBackend};

    fn memfd(size: u64) -> OwnedFd {
        let name = CString::new("dma-test").unwrap();
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fd was just created and is owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        File::from(fd.try_clone().unwrap()).set_len(size).unwrap();
        fd
    }

    fn req(iova: u64, size: u64, flags: u32) -> DmaMap {
        DmaMap {
            argsz: 32,
            flags,
            offset: 0,
            iova,
            size,
        }
    }

    const RW: u32 = DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE;

    #[test]
    fn map_publish_unmap() {
        let mem = GuestMem::new(GuestMemoryMmap::new());
        let mut d = DmaSpace::new(mem.clone());
        d.map(&req(0x10000, 0x4000, RW), Some(memfd(0x4000)))
            .unwrap();
        let m = mem.memory();
        m.write_obj(0x1234_5678u32, GuestAddress(0x10010)).unwrap();
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(0x10010)).unwrap(),
            0x1234_5678
        );
        assert!(m.read_obj::<u32>(GuestAddress(0x14000)).is_err());
        d.unmap(0x10000, 0x4000).unwrap();
        assert!(mem.memory().read_obj::<u32>(GuestAddress(0x10010)).is_err());
        assert!(d.is_empty());
    }

    #[test]
    fn errors() {
        let mem = GuestMem::new(GuestMemoryMmap::new());
        let mut d = DmaSpace::new(mem.clone());
        d.map(&req(0x10000, 0x4000, RW), Some(memfd(0x4000)))
            .unwrap();
        let e = |r: Result<(), RequestError>| r.unwrap_err().errno();
        assert_eq!(
            e(d.map(&req(0x12000, 0x4000, RW), Some(memfd(0x4000)))),
            libc::EEXIST
        );
        assert_eq!(e(d.map(&req(0xe000, 0x4000, RW), None)), libc::EEXIST);
        assert_eq!(e(d.map(&req(0x20000, 0, RW), None)), libc::EINVAL);
        assert_eq!(e(d.map(&req(0x20001, 0x1000, RW), None)), libc::EINVAL);
        assert_eq!(e(d.map(&req(0x20000, 0x1000, RW | 4), None)), libc::EINVAL);
        assert_eq!(
            e(d.map(&req(0x20000, 0x1000, DMA_MAP_FLAG_WRITE), None)),
            libc::EINVAL
        );
        assert_eq!(
            e(d.map(&req(u64::MAX - 0xfff, 0x2000, RW), None)),
            libc::EINVAL
        );
        assert_eq!(e(d.map(&req(0, 2 << 40, RW), None)), libc::ENOSPC);
        // File too small for the region.
        assert_eq!(
            e(d.map(&req(0x40000, 0x8000, RW), Some(memfd(0x4000)))),
            libc::EINVAL
        );
        assert_eq!(e(d.unmap(0x10000, 0x1000).map(drop)), libc::ENOENT);
        assert_eq!(e(d.unmap(0x90000, 0x1000).map(drop)), libc::ENOENT);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn fdless_and_readonly_are_recorded_not_visible() {
        let mem = GuestMem::new(GuestMemoryMmap::new());
        let mut d = DmaSpace::new(mem.clone());
        d.map(&req(0xfffc0000, 0x40000, DMA_MAP_FLAG_READ), None)
            .unwrap();
        d.map(&req(0x1000, 0x1000, DMA_MAP_FLAG_READ), Some(memfd(0x1000)))
            .unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(mem.memory().num_regions(), 0);
        d.unmap(0xfffc0000, 0x40000).unwrap();
        d.unmap_all();
        assert!(d.is_empty());
    }

    #[test]
    fn unmapped_region_is_released_only_when_no_snapshot_holds_it() {
        let mem = GuestMem::new(GuestMemoryMmap::new());
        let mut d = DmaSpace::new(mem.clone());
        d.map(&req(0x10000, 0x4000, RW), Some(memfd(0x4000)))
            .unwrap();
        d.map(&req(0x20000, 0x1000, RW), Some(memfd(0x1000)))
            .unwrap();
        let snapshot = mem.memory();
        let retired = d.unmap(0x10000, 0x4000).unwrap();
        assert!(!retired.is_empty());
        assert!(!retired.is_released(), "a device snapshot still maps it");
        // The snapshot still reaches the old mapping; new snapshots do not.
        snapshot.write_obj(7u32, GuestAddress(0x10000)).unwrap();
        assert!(mem.memory().read_obj::<u32>(GuestAddress(0x10000)).is_err());
        drop(snapshot);
        assert!(retired.is_released());
        let all = d.unmap_all();
        assert!(all.is_released());
        // Regions the device never saw have nothing to wait for.
        d.map(&req(0x1000, 0x1000, DMA_MAP_FLAG_READ), None)
            .unwrap();
        assert!(d.unmap(0x1000, 0x1000).unwrap().is_empty());
    }

    #[test]
    fn too_many_regions() {
        let mem = GuestMem::new(GuestMemoryMmap::new());
        let mut d = DmaSpace::new(mem);
        for i in 0..MAX_DMA_MAPS as u64 {
            d.map(&req(i * 0x1000, 0x1000, DMA_MAP_FLAG_READ), None)
                .unwrap();
        }
        let e = d
            .map(&req(0x1000_0000, 0x1000, DMA_MAP_FLAG_READ), None)
            .unwrap_err();
        assert_eq!(e.errno(), libc::ENOSPC);
    }
}
