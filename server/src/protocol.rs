//! vfio-user wire format: the message header, command numbers, flag bits and the fixed-size
//! payload structures the server reads and writes.
//!
//! Every structure is decoded from and encoded to bytes explicitly (host byte order, as the
//! specification says), so no unaligned or type-punned access to the receive buffer is needed.
//! The layouts follow QEMU's `docs/interop/vfio-user.rst` and `hw/vfio-user/protocol.h`. The
//! flag values shared with the kernel's VFIO ABI come from `vfio-bindings`; only what is
//! vfio-user's own (header, command numbers, message layouts) is defined here.

use std::fmt;

use vfio_bindings::bindings::vfio;

/// Size of the message header that starts every message.
pub const HEADER_SIZE: usize = 16;

/// Largest `count` the server accepts in one REGION_READ/REGION_WRITE (advertised as
/// `max_data_xfer_size`).
pub const MAX_DATA_XFER_SIZE: u32 = 1 << 20;

/// Largest message the server accepts. Anything larger makes the stream untrustworthy and the
/// connection is closed. The largest legitimate message is a REGION_WRITE of
/// [`MAX_DATA_XFER_SIZE`] bytes plus its 16-byte header and 16-byte access descriptor.
pub const MAX_MESSAGE_SIZE: u32 = MAX_DATA_XFER_SIZE + 4096;

/// Most file descriptors the server accepts with one message (advertised as `max_msg_fds`).
pub const MAX_MSG_FDS: usize = 8;

/// Page size the server supports for DMA mappings (advertised as `pgsizes`).
pub const DMA_PGSIZE: u64 = 4096;

/// Most DMA regions that may ever be mapped at once; the limit in force (advertised as
/// `max_dma_maps`) is derived from the descriptor limit at start (`limits.rs`).
pub const MAX_DMA_MAPS: usize = 1024;

/// Mask of the message type in the header flags.
pub const FLAGS_TYPE_MASK: u32 = 0xf;
/// Message type: command.
pub const TYPE_COMMAND: u32 = 0x0;
/// Message type: reply.
pub const TYPE_REPLY: u32 = 0x1;
/// The sender does not want a reply.
pub const FLAG_NO_REPLY: u32 = 0x10;
/// The reply reports an error; the header's error field holds the errno.
pub const FLAG_ERROR: u32 = 0x20;
/// Every flag bit the protocol defines.
pub const FLAGS_KNOWN: u32 = FLAGS_TYPE_MASK | FLAG_NO_REPLY | FLAG_ERROR;

/// vfio-user command numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Version and capability negotiation.
    Version,
    /// Add a DMA region.
    DmaMap,
    /// Remove a DMA region.
    DmaUnmap,
    /// Device flags and region/irq counts.
    DeviceGetInfo,
    /// Size and rights of one region.
    DeviceGetRegionInfo,
    /// ioeventfd/ioregionfd sub-regions of one region.
    DeviceGetRegionIoFds,
    /// Count and flags of one interrupt index.
    DeviceGetIrqInfo,
    /// Configure interrupt eventfds, trigger, mask or unmask.
    DeviceSetIrqs,
    /// Read from a region.
    RegionRead,
    /// Write to a region.
    RegionWrite,
    /// Server-to-client DMA read (never valid from the client).
    DmaRead,
    /// Server-to-client DMA write (never valid from the client).
    DmaWrite,
    /// Reset the device.
    DeviceReset,
    /// Dirty page tracking (obsolete migration v1).
    DirtyPages,
    /// Several small posted writes in one message.
    RegionWriteMulti,
    /// Device features (migration).
    DeviceFeature,
    /// Migration data read.
    MigDataRead,
    /// Migration data write.
    MigDataWrite,
    /// A number the protocol does not define.
    Unknown(u16),
}

impl Command {
    /// Decodes a command number.
    pub fn from_u16(value: u16) -> Command {
        match value {
            1 => Command::Version,
            2 => Command::DmaMap,
            3 => Command::DmaUnmap,
            4 => Command::DeviceGetInfo,
            5 => Command::DeviceGetRegionInfo,
            6 => Command::DeviceGetRegionIoFds,
            7 => Command::DeviceGetIrqInfo,
            8 => Command::DeviceSetIrqs,
            9 => Command::RegionRead,
            10 => Command::RegionWrite,
            11 => Command::DmaRead,
            12 => Command::DmaWrite,
            13 => Command::DeviceReset,
            14 => Command::DirtyPages,
            15 => Command::RegionWriteMulti,
            16 => Command::DeviceFeature,
            17 => Command::MigDataRead,
            18 => Command::MigDataWrite,
            other => Command::Unknown(other),
        }
    }

    /// Most file descriptors this command may carry, before looking at its payload.
    /// DEVICE_SET_IRQS is further limited by its `count` field in the handler.
    pub fn max_fds(self) -> usize {
        match self {
            Command::DmaMap => 1,
            Command::DeviceSetIrqs => MAX_MSG_FDS,
            _ => 0,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Unknown(n) => write!(f, "command {n}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// The 16-byte header in front of every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Message id, echoed in the reply.
    pub id: u16,
    /// Command number.
    pub command: u16,
    /// Size of the whole message, header included.
    pub message_size: u32,
    /// Type, NO_REPLY and ERROR bits.
    pub flags: u32,
    /// errno of an error reply; reserved in commands.
    pub error: u32,
}

impl Header {
    /// Decodes a header from the first [`HEADER_SIZE`] bytes of `buf`; `None` if `buf` is shorter.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let mut r = Reader::new(buf.get(..HEADER_SIZE)?);
        Some(Header {
            id: r.u16()?,
            command: r.u16()?,
            message_size: r.u32()?,
            flags: r.u32()?,
            error: r.u32()?,
        })
    }

    /// Appends the encoded header to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_ne_bytes());
        out.extend_from_slice(&self.command.to_ne_bytes());
        out.extend_from_slice(&self.message_size.to_ne_bytes());
        out.extend_from_slice(&self.flags.to_ne_bytes());
        out.extend_from_slice(&self.error.to_ne_bytes());
    }

    /// The message type bits.
    pub fn msg_type(&self) -> u32 {
        self.flags & FLAGS_TYPE_MASK
    }

    /// Whether the sender asked for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }

    /// The decoded command.
    pub fn cmd(&self) -> Command {
        Command::from_u16(self.command)
    }
}

/// Builds a success reply to `request` carrying `payload`.
pub fn encode_reply(request: &Header, payload: &[u8]) -> Vec<u8> {
    let size = HEADER_SIZE + payload.len();
    let mut out = Vec::with_capacity(size);
    Header {
        id: request.id,
        command: request.command,
        // Payloads are bounded by MAX_MESSAGE_SIZE, far below u32::MAX.
        message_size: u32::try_from(size).unwrap_or(u32::MAX),
        flags: TYPE_REPLY,
        error: 0,
    }
    .write_to(&mut out);
    out.extend_from_slice(payload);
    out
}

/// Builds an error reply (header only) to `request` with a non-zero `errno`.
pub fn encode_error_reply(request: &Header, errno: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_SIZE);
    Header {
        id: request.id,
        command: request.command,
        message_size: HEADER_SIZE as u32,
        flags: TYPE_REPLY | FLAG_ERROR,
        // errno values are small positive numbers; never send 0 (QEMU takes 0 as success).
        error: u32::try_from(errno)
            .ok()
            .filter(|&e| e != 0)
            .unwrap_or(libc::EIO as u32),
    }
    .write_to(&mut out);
    out
}

/// Little helper that decodes host-order integers from a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.buf.split_first_chunk::<N>()?;
        self.buf = rest;
        Some(*head)
    }

    /// Next `u16`.
    pub fn u16(&mut self) -> Option<u16> {
        self.take::<2>().map(u16::from_ne_bytes)
    }

    /// Next `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_ne_bytes)
    }

    /// Next `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_ne_bytes)
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

/// Appends host-order integers to a byte vector.
pub trait Put {
    /// Appends a `u16`.
    fn put_u16(&mut self, v: u16);
    /// Appends a `u32`.
    fn put_u32(&mut self, v: u32);
    /// Appends a `u64`.
    fn put_u64(&mut self, v: u64);
}

impl Put for Vec<u8> {
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_ne_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_ne_bytes());
    }
}

/// VFIO_USER_DMA_MAP payload (`struct vfio_iommu_type1_dma_map` minus vaddr: 32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMap {
    /// Size of this structure.
    pub argsz: u32,
    /// [`DMA_MAP_FLAG_READ`] / [`DMA_MAP_FLAG_WRITE`].
    pub flags: u32,
    /// Offset of the region in the passed file.
    pub offset: u64,
    /// DMA address (IOVA) of the region.
    pub iova: u64,
    /// Size of the region.
    pub size: u64,
}

/// Size of the DMA_MAP payload.
pub const DMA_MAP_SIZE: usize = 32;
/// DMA_MAP flag: the device may read the region.
pub const DMA_MAP_FLAG_READ: u32 = vfio::VFIO_DMA_MAP_FLAG_READ;
/// DMA_MAP flag: the device may write the region.
pub const DMA_MAP_FLAG_WRITE: u32 = vfio::VFIO_DMA_MAP_FLAG_WRITE;

impl DmaMap {
    /// Decodes the payload; `None` if it is too short.
    pub fn parse(p: &[u8]) -> Option<Self> {
        let mut r = Reader::new(p);
        Some(DmaMap {
            argsz: r.u32()?,
            flags: r.u32()?,
            offset: r.u64()?,
            iova: r.u64()?,
            size: r.u64()?,
        })
    }
}

/// VFIO_USER_DMA_UNMAP payload (24 bytes without a dirty bitmap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaUnmap {
    /// Maximum reply payload size.
    pub argsz: u32,
    /// [`DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`] / [`DMA_UNMAP_FLAG_ALL`].
    pub flags: u32,
    /// DMA address of the region.
    pub iova: u64,
    /// Size of the region.
    pub size: u64,
}

/// Size of the DMA_UNMAP payload.
pub const DMA_UNMAP_SIZE: usize = 24;
/// DMA_UNMAP flag: also return a dirty bitmap (not supported).
pub const DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = vfio::VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
/// DMA_UNMAP flag: unmap every region (QEMU sends it with iova 0, size 0).
pub const DMA_UNMAP_FLAG_ALL: u32 = vfio::VFIO_DMA_UNMAP_FLAG_ALL;

impl DmaUnmap {
    /// Decodes the payload; `None` if it is too short.
    pub fn parse(p: &[u8]) -> Option<Self> {
        let mut r = Reader::new(p);
        Some(DmaUnmap {
            argsz: r.u32()?,
            flags: r.u32()?,
            iova: r.u64()?,
            size: r.u64()?,
        })
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(DMA_UNMAP_SIZE);
        v.put_u32(self.argsz);
        v.put_u32(self.flags);
        v.put_u64(self.iova);
        v.put_u64(self.size);
        v
    }
}

/// Size of the DEVICE_GET_INFO payload (`struct vfio_device_info` without caps).
pub const DEVICE_INFO_SIZE: usize = 16;
/// Device flag: supports reset.
pub const DEVICE_FLAGS_RESET: u32 = vfio::VFIO_DEVICE_FLAGS_RESET;
/// Device flag: PCI device.
pub const DEVICE_FLAGS_PCI: u32 = vfio::VFIO_DEVICE_FLAGS_PCI;

/// Size of the DEVICE_GET_REGION_INFO payload (`struct vfio_region_info`).
pub const REGION_INFO_SIZE: usize = 32;
/// Region flag: readable.
pub const REGION_INFO_FLAG_READ: u32 = vfio::VFIO_REGION_INFO_FLAG_READ;
/// Region flag: writable.
pub const REGION_INFO_FLAG_WRITE: u32 = vfio::VFIO_REGION_INFO_FLAG_WRITE;

/// `struct vfio_region_info` as sent and returned by DEVICE_GET_REGION_INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegionInfoMsg {
    /// Request: reply buffer size. Reply: size needed for the full reply.
    pub argsz: u32,
    /// `REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Offset of the first capability (0: none).
    pub cap_offset: u32,
    /// Region size.
    pub size: u64,
    /// mmap offset (unused: nothing is mappable).
    pub offset: u64,
}

impl RegionInfoMsg {
    /// Decodes the payload; `None` if it is too short.
    pub fn parse(p: &[u8]) -> Option<Self> {
        let mut r = Reader::new(p);
        Some(RegionInfoMsg {
            argsz: r.u32()?,
            flags: r.u32()?,
            index: r.u32()?,
            cap_offset: r.u32()?,
            size: r.u64()?,
            offset: r.u64()?,
        })
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(REGION_INFO_SIZE);
        v.put_u32(self.argsz);
        v.put_u32(self.flags);
        v.put_u32(self.index);
        v.put_u32(self.cap_offset);
        v.put_u64(self.size);
        v.put_u64(self.offset);
        v
    }
}

/// Size of the DEVICE_GET_REGION_IO_FDS request payload and of its reply without sub-regions.
pub const REGION_IO_FDS_SIZE: usize = 16;

/// Size of the DEVICE_GET_IRQ_INFO payload (`struct vfio_irq_info`).
pub const IRQ_INFO_SIZE: usize = 16;
/// IRQ info flag: eventfd signalling supported.
pub const IRQ_INFO_EVENTFD: u32 = vfio::VFIO_IRQ_INFO_EVENTFD;

/// Size of the fixed part of DEVICE_SET_IRQS (`struct vfio_irq_set` without data).
pub const IRQ_SET_SIZE: usize = 20;
/// SET_IRQS data: none.
pub const IRQ_SET_DATA_NONE: u32 = vfio::VFIO_IRQ_SET_DATA_NONE;
/// SET_IRQS data: one bool byte per interrupt.
pub const IRQ_SET_DATA_BOOL: u32 = vfio::VFIO_IRQ_SET_DATA_BOOL;
/// SET_IRQS data: eventfds in the ancillary data.
pub const IRQ_SET_DATA_EVENTFD: u32 = vfio::VFIO_IRQ_SET_DATA_EVENTFD;
/// SET_IRQS action: mask.
pub const IRQ_SET_ACTION_MASK: u32 = vfio::VFIO_IRQ_SET_ACTION_MASK;
/// SET_IRQS action: unmask.
pub const IRQ_SET_ACTION_UNMASK: u32 = vfio::VFIO_IRQ_SET_ACTION_UNMASK;
/// SET_IRQS action: trigger.
pub const IRQ_SET_ACTION_TRIGGER: u32 = vfio::VFIO_IRQ_SET_ACTION_TRIGGER;
/// Every SET_IRQS data bit.
pub const IRQ_SET_DATA_MASK: u32 = IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD;
/// Every SET_IRQS action bit.
pub const IRQ_SET_ACTION_MASK_ALL: u32 =
    IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER;

/// VFIO PCI interrupt indexes (`VFIO_PCI_*_IRQ_INDEX`): the device's, defined once from
/// `vfio-bindings`.
pub use faultline_device::irq as irq_index;

/// DEVICE_SET_IRQS fixed part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqSet {
    /// Size of the request payload.
    pub argsz: u32,
    /// `IRQ_SET_DATA_*` | `IRQ_SET_ACTION_*`.
    pub flags: u32,
    /// Interrupt index.
    pub index: u32,
    /// First sub-index.
    pub start: u32,
    /// Number of sub-indexes.
    pub count: u32,
}

impl IrqSet {
    /// Decodes the fixed part; `None` if the payload is too short.
    pub fn parse(p: &[u8]) -> Option<Self> {
        let mut r = Reader::new(p);
        Some(IrqSet {
            argsz: r.u32()?,
            flags: r.u32()?,
            index: r.u32()?,
            start: r.u32()?,
            count: r.u32()?,
        })
    }
}

/// Size of the REGION_READ/REGION_WRITE access descriptor.
pub const REGION_ACCESS_SIZE: usize = 16;

/// REGION_READ / REGION_WRITE access descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionAccess {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes to transfer.
    pub count: u32,
}

impl RegionAccess {
    /// Decodes the descriptor; `None` if the payload is too short.
    pub fn parse(p: &[u8]) -> Option<Self> {
        let mut r = Reader::new(p);
        Some(RegionAccess {
            offset: r.u64()?,
            region: r.u32()?,
            count: r.u32()?,
        })
    }

    /// Appends the encoded descriptor.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.put_u64(self.offset);
        out.put_u32(self.region);
        out.put_u32(self.count);
    }
}

/// Size of one REGION_WRITE_MULTI entry.
pub const WRITE_MULTI_ENTRY_SIZE: usize = 24;
/// Bytes of data one REGION_WRITE_MULTI entry can carry.
pub const WRITE_MULTI_DATA: usize = 8;
/// Most entries QEMU puts in one REGION_WRITE_MULTI (`VFIO_USER_MULTI_MAX`).
pub const WRITE_MULTI_MAX: u64 = 200;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            id: 7,
            command: 9,
            message_size: 32,
            flags: FLAG_NO_REPLY,
            error: 0,
        };
        let mut buf = Vec::new();
        h.write_to(&mut buf);
        assert_eq!(buf.len(), HEADER_SIZE);
        assert_eq!(Header::parse(&buf), Some(h));
        assert_eq!(Header::parse(&buf[..15]), None);
    }

    #[test]
    fn error_reply_never_carries_errno_zero() {
        let h = Header::default();
        let r = encode_error_reply(&h, 0);
        let parsed = Header::parse(&r).unwrap();
        assert_eq!(parsed.flags, TYPE_REPLY | FLAG_ERROR);
        assert_eq!(parsed.error, libc::EIO as u32);
        let r = encode_error_reply(&h, libc::ENOSYS);
        assert_eq!(Header::parse(&r).unwrap().error, libc::ENOSYS as u32);
    }

    #[test]
    fn command_numbers() {
        assert_eq!(Command::from_u16(15), Command::RegionWriteMulti);
        assert_eq!(Command::from_u16(99), Command::Unknown(99));
        assert_eq!(Command::DmaMap.max_fds(), 1);
        assert_eq!(Command::RegionRead.max_fds(), 0);
    }
}
