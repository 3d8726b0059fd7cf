//! A message-aware mutator for vfio-user message streams (the `session_stream` input format).
//!
//! The input is parsed as a sequence of messages (16-byte header, then the payload the header's
//! `message_size` frames; a message whose size does not frame it keeps its raw size and takes the
//! rest of the input, since the connection would stop there). One mutation is applied:
//!
//! * a payload field, chosen from the command's layout (argsz, flags, region or irq index, region
//!   offset, count, DMA address and size, irq start and count, version numbers), set to a value
//!   of its kind (edges, valid values, values taken from other messages of the stream, small
//!   deltas), then the fields derived from it made consistent again (a REGION_WRITE's data to its
//!   count, SET_IRQS's bool bytes and argsz, REGION_WRITE_MULTI's entries to `wr_cnt`), mostly;
//! * a header field (command, id, flags, error);
//! * a whole message inserted (a well-formed one of a chosen command), duplicated, deleted or
//!   swapped with another;
//! * a payload resized, or mutated by libFuzzer's own byte-level mutator;
//! * rarely, `message_size` made inconsistent with the payload (or made consistent again).
//!
//! Sizes are otherwise recomputed when the stream is serialised. Splicing with other corpus inputs
//! is [`crossover`], whole messages at a time. Every decision comes from a small PRNG seeded with
//! libFuzzer's seed, so a seed always gives the same mutation (libFuzzer's byte mutator aside,
//! which has its own).

use faultline_device::region;
use faultline_server::protocol::{
    irq_index, Header, DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE, DMA_MAP_SIZE, DMA_UNMAP_FLAG_ALL,
    DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, DMA_UNMAP_SIZE, FLAG_ERROR, FLAG_NO_REPLY, HEADER_SIZE,
    IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_BOOL,
    IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE, IRQ_SET_SIZE, MAX_DATA_XFER_SIZE, MAX_MESSAGE_SIZE,
    REGION_ACCESS_SIZE, REGION_INFO_SIZE, TYPE_REPLY, WRITE_MULTI_ENTRY_SIZE, WRITE_MULTI_MAX,
};

/// Command numbers (`protocol::Command` decodes them; the mutator needs the numbers).
mod cmd {
    pub const VERSION: u16 = 1;
    pub const DMA_MAP: u16 = 2;
    pub const DMA_UNMAP: u16 = 3;
    pub const GET_INFO: u16 = 4;
    pub const GET_REGION_INFO: u16 = 5;
    pub const GET_REGION_IO_FDS: u16 = 6;
    pub const GET_IRQ_INFO: u16 = 7;
    pub const SET_IRQS: u16 = 8;
    pub const REGION_READ: u16 = 9;
    pub const REGION_WRITE: u16 = 10;
    pub const DMA_READ: u16 = 11;
    pub const DMA_WRITE: u16 = 12;
    pub const RESET: u16 = 13;
    pub const WRITE_MULTI: u16 = 15;
    pub const LAST: u16 = 18;
}

/// The largest data a mutation gives a REGION_WRITE or SET_IRQS on its own (larger counts stay
/// possible, with data that does not match).
const DATA_CAP: usize = 4096;

/// splitmix64: small, fast and good enough to choose mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u32) -> Rng {
        Rng(u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

/// One message of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub id: u16,
    pub command: u16,
    /// `Some`: the header's size as found (or made), not matching the payload; `None`: computed.
    pub size: Option<u32>,
    pub flags: u32,
    pub error: u32,
    pub payload: Vec<u8>,
}

impl Msg {
    fn new(command: u16, payload: Vec<u8>) -> Msg {
        Msg {
            id: 0,
            command,
            size: None,
            flags: 0,
            error: 0,
            payload,
        }
    }

    fn encoded_len(&self) -> usize {
        HEADER_SIZE + self.payload.len()
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        let size = self
            .size
            .unwrap_or_else(|| u32::try_from(self.encoded_len()).unwrap_or(u32::MAX));
        Header {
            id: self.id,
            command: self.command,
            message_size: size,
            flags: self.flags,
            error: self.error,
        }
        .write_to(out);
        out.extend_from_slice(&self.payload);
    }
}

/// A message stream: messages, then fewer than 16 trailing bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stream {
    pub msgs: Vec<Msg>,
    pub tail: Vec<u8>,
}

impl Stream {
    pub fn parse(data: &[u8]) -> Stream {
        let mut msgs = Vec::new();
        let mut rest = data;
        while let Some(h) = Header::parse(rest) {
            let size = h.message_size as usize;
            let (end, explicit) = if (HEADER_SIZE..=rest.len()).contains(&size) {
                (size, None)
            } else {
                (rest.len(), Some(h.message_size))
            };
            msgs.push(Msg {
                id: h.id,
                command: h.command,
                size: explicit,
                flags: h.flags,
                error: h.error,
                payload: rest[HEADER_SIZE..end].to_vec(),
            });
            rest = &rest[end..];
        }
        Stream {
            msgs,
            tail: rest.to_vec(),
        }
    }

    pub fn encoded_len(&self) -> usize {
        self.msgs.iter().map(Msg::encoded_len).sum::<usize>() + self.tail.len()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        for m in &self.msgs {
            m.write_to(&mut out);
        }
        out.extend_from_slice(&self.tail);
        out
    }
}

/// What a payload field holds, which decides the values it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Argsz,
    Flags(&'static [u32]),
    SetIrqsFlags,
    Region,
    Irq,
    /// An offset in a region.
    Offset,
    /// A transfer count (REGION_READ/WRITE).
    Count,
    /// A DMA address.
    Addr,
    /// A DMA size.
    Size,
    /// An irq sub-index or count.
    Vector,
    /// REGION_WRITE_MULTI's `wr_cnt`.
    WrCnt,
    /// VERSION's major or minor.
    Version,
    /// A field the server ignores or only echoes.
    Raw,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    at: usize,
    width: usize,
    kind: Kind,
}

const fn f(at: usize, width: usize, kind: Kind) -> Field {
    Field { at, width, kind }
}

const DMA_MAP_FLAGS: &[u32] = &[DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE];
const DMA_UNMAP_FLAGS: &[u32] = &[DMA_UNMAP_FLAG_ALL, DMA_UNMAP_FLAG_GET_DIRTY_BITMAP];
const NO_FLAGS: &[u32] = &[];
const SET_IRQS_DATA: &[u32] = &[IRQ_SET_DATA_NONE, IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD];
const SET_IRQS_ACTION: &[u32] = &[
    IRQ_SET_ACTION_MASK,
    IRQ_SET_ACTION_UNMASK,
    IRQ_SET_ACTION_TRIGGER,
];
const HEADER_FLAGS: &[u32] = &[TYPE_REPLY, FLAG_NO_REPLY, FLAG_ERROR, 0x2, 0x40];

/// The payload fields of `command` (REGION_WRITE_MULTI: of its first entries).
fn fields(command: u16, payload_len: usize) -> Vec<Field> {
    use Kind::*;
    match command {
        cmd::VERSION => vec![f(0, 2, Version), f(2, 2, Version)],
        cmd::DMA_MAP => vec![
            f(0, 4, Argsz),
            f(4, 4, Flags(DMA_MAP_FLAGS)),
            f(8, 8, Raw),
            f(16, 8, Addr),
            f(24, 8, Size),
        ],
        cmd::DMA_UNMAP => vec![
            f(0, 4, Argsz),
            f(4, 4, Flags(DMA_UNMAP_FLAGS)),
            f(8, 8, Addr),
            f(16, 8, Size),
        ],
        cmd::GET_INFO => vec![f(0, 4, Argsz), f(4, 4, Raw), f(8, 4, Raw), f(12, 4, Raw)],
        cmd::GET_REGION_INFO => vec![
            f(0, 4, Argsz),
            f(4, 4, Raw),
            f(8, 4, Region),
            f(12, 4, Raw),
            f(16, 8, Raw),
            f(24, 8, Raw),
        ],
        cmd::GET_REGION_IO_FDS => vec![
            f(0, 4, Argsz),
            f(4, 4, Flags(NO_FLAGS)),
            f(8, 4, Region),
            f(12, 4, Raw),
        ],
        cmd::GET_IRQ_INFO => vec![f(0, 4, Argsz), f(4, 4, Raw), f(8, 4, Irq), f(12, 4, Vector)],
        cmd::SET_IRQS => vec![
            f(0, 4, Argsz),
            f(4, 4, SetIrqsFlags),
            f(8, 4, Irq),
            f(12, 4, Vector),
            f(16, 4, Vector),
        ],
        cmd::REGION_READ | cmd::REGION_WRITE => {
            vec![f(0, 8, Offset), f(8, 4, Region), f(12, 4, Count)]
        }
        cmd::DMA_READ | cmd::DMA_WRITE => vec![f(0, 8, Addr), f(8, 8, Size)],
        cmd::WRITE_MULTI => {
            let mut v = vec![f(0, 8, WrCnt)];
            let entries = payload_len.saturating_sub(8) / WRITE_MULTI_ENTRY_SIZE;
            for i in 0..entries.min(8) {
                let at = 8 + i * WRITE_MULTI_ENTRY_SIZE;
                v.extend([f(at, 8, Offset), f(at + 8, 4, Region), f(at + 12, 4, Count)]);
            }
            v
        }
        _ => Vec::new(),
    }
}

/// The payload size a well-formed request of `command` has (without variable data).
fn fixed_size(command: u16) -> usize {
    match command {
        cmd::VERSION => 4,
        cmd::DMA_MAP => DMA_MAP_SIZE,
        cmd::DMA_UNMAP => DMA_UNMAP_SIZE,
        cmd::GET_INFO | cmd::GET_REGION_IO_FDS | cmd::GET_IRQ_INFO => 16,
        cmd::GET_REGION_INFO => REGION_INFO_SIZE,
        cmd::SET_IRQS => IRQ_SET_SIZE,
        cmd::REGION_READ | cmd::REGION_WRITE | cmd::DMA_READ | cmd::DMA_WRITE => REGION_ACCESS_SIZE,
        cmd::WRITE_MULTI => 8 + WRITE_MULTI_ENTRY_SIZE,
        _ => 0,
    }
}

fn get(p: &[u8], at: usize, width: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = p.get(at..at + width) {
        b[..width].copy_from_slice(s);
    }
    // Host byte order, as the protocol: the low `width` bytes of a native u64 on little endian.
    match width {
        2 => u64::from(u16::from_ne_bytes([b[0], b[1]])),
        4 => u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        _ => u64::from_ne_bytes(b),
    }
}

fn put(p: &mut Vec<u8>, at: usize, width: usize, v: u64) {
    if p.len() < at + width {
        p.resize(at + width, 0);
    }
    let dst = &mut p[at..at + width];
    match width {
        2 => dst.copy_from_slice(&(v as u16).to_ne_bytes()),
        4 => dst.copy_from_slice(&(v as u32).to_ne_bytes()),
        _ => dst.copy_from_slice(&v.to_ne_bytes()),
    }
}

/// A value close to `v`: a small step, a bit flipped, a power of two around it.
fn nudge(rng: &mut Rng, v: u64) -> u64 {
    match rng.below(5) {
        0 => v.wrapping_add(1 + rng.below(16) as u64),
        1 => v.wrapping_sub(1 + rng.below(16) as u64),
        2 => v ^ (1 << rng.below(64)),
        3 => v.wrapping_shl(1),
        _ => v >> 1,
    }
}

/// Addresses and sizes of the stream's DMA messages, to give others the same.
fn dma_values(s: &Stream) -> (Vec<u64>, Vec<u64>) {
    let mut addrs = Vec::new();
    let mut sizes = Vec::new();
    for m in &s.msgs {
        let (a, sz) = match m.command {
            cmd::DMA_MAP => (16, 24),
            cmd::DMA_UNMAP => (8, 16),
            _ => continue,
        };
        if m.payload.len() >= sz + 8 {
            addrs.push(get(&m.payload, a, 8));
            sizes.push(get(&m.payload, sz, 8));
        }
    }
    (addrs, sizes)
}

/// A value for a field of `kind` in message `m` of `s`.
fn value(rng: &mut Rng, kind: Kind, s: &Stream, m: usize, current: u64) -> u64 {
    if rng.chance(1, 5) {
        return nudge(rng, current);
    }
    let msg = &s.msgs[m];
    match kind {
        Kind::Argsz => {
            let fixed = fixed_size(msg.command) as u64;
            let len = msg.payload.len() as u64;
            rng.pick(&[
                len,
                len,
                fixed,
                fixed.wrapping_sub(1),
                fixed + 1,
                0,
                4,
                8,
                4096,
                u64::from(u32::MAX),
            ])
        }
        Kind::Flags(bits) => match rng.below(5) {
            0 => 0,
            1 if !bits.is_empty() => u64::from(rng.pick(bits)),
            2 => bits
                .iter()
                .filter(|_| rng.chance(1, 2))
                .fold(0u64, |a, &b| a | u64::from(b)),
            3 => current ^ (1 << rng.below(32)),
            _ => u64::from(rng.next() as u32),
        },
        Kind::SetIrqsFlags => {
            if rng.chance(3, 4) {
                u64::from(rng.pick(SET_IRQS_DATA) | rng.pick(SET_IRQS_ACTION))
            } else {
                current ^ (1 << rng.below(8))
            }
        }
        Kind::Region => match rng.below(8) {
            0 => u64::from(u32::MAX),
            1 => u64::from(region::COUNT) + rng.below(4) as u64,
            2 => 1 << 31,
            3..=5 => u64::from(rng.pick(&[region::BAR0, region::BAR1, region::CONFIG])),
            _ => rng.below(region::COUNT as usize) as u64,
        },
        Kind::Irq => match rng.below(6) {
            0 => u64::from(u32::MAX),
            1 => u64::from(irq_index::COUNT) + rng.below(4) as u64,
            _ => rng.below(irq_index::COUNT as usize) as u64,
        },
        Kind::Offset => match rng.below(6) {
            0 => rng.pick(&[0, 4, 0x10, 0x40, 0xffc, 0xffd, 0x1000, 0x1004]),
            1 => rng.pick(&[u64::MAX, u64::MAX - 3, 1 << 32, 1 << 63, 0xffff_fffc]),
            2 => rng.below(4096) as u64,
            _ => rng.below(1024) as u64 * 4,
        },
        Kind::Count => match rng.below(6) {
            0 => rng.pick(&[0, 3, 5, 7, 9, 4095, 4096, 4097]),
            1 => rng.pick(&[
                u64::from(MAX_DATA_XFER_SIZE),
                u64::from(MAX_DATA_XFER_SIZE) + 1,
                u64::from(u32::MAX),
                1 << 31,
            ]),
            2 => rng.below(64) as u64,
            _ => rng.pick(&[1, 2, 4, 8]),
        },
        Kind::Addr => {
            let (addrs, _) = dma_values(s);
            match rng.below(6) {
                0 if !addrs.is_empty() => rng.pick(&addrs),
                1 => rng.pick(&[!0xfff_u64, 1 << 63, 1 << 47, u64::MAX]),
                2 => (rng.below(64) as u64) << 12 | (1 + rng.below(0xfff)) as u64,
                _ => (rng.below(64) as u64) << 12,
            }
        }
        Kind::Size => {
            let (_, sizes) = dma_values(s);
            match rng.below(6) {
                0 if !sizes.is_empty() => rng.pick(&sizes),
                1 => rng.pick(&[0, 1, 0xfff, !0xfff_u64, 1 << 63, u64::MAX]),
                _ => (1 + rng.below(16) as u64) << 12,
            }
        }
        Kind::Vector => match rng.below(5) {
            0 => rng.pick(&[u64::from(u32::MAX), u64::from(u32::MAX) - 1, 2048, 2049]),
            1 => rng.pick(&[31, 32, 33]),
            _ => rng.below(5) as u64,
        },
        Kind::WrCnt => match rng.below(4) {
            0 => rng.pick(&[0, WRITE_MULTI_MAX, WRITE_MULTI_MAX + 1, u64::MAX]),
            _ => 1 + rng.below(8) as u64,
        },
        Kind::Version => rng.pick(&[0, 1, 2, 0xffff]),
        Kind::Raw => match rng.below(3) {
            0 => 0,
            1 => u64::MAX,
            _ => rng.next(),
        },
    }
}

/// Makes the fields derived from others consistent again: data sizes to counts, argsz to the
/// payload. `except` is the field just mutated, which keeps its value.
fn fixup(m: &mut Msg, except: Option<Kind>) {
    let p = &mut m.payload;
    match m.command {
        cmd::REGION_WRITE if p.len() >= REGION_ACCESS_SIZE => {
            let count = get(p, 12, 4) as usize;
            if count <= DATA_CAP {
                p.resize(REGION_ACCESS_SIZE + count, 0xa5);
            }
        }
        cmd::SET_IRQS if p.len() >= IRQ_SET_SIZE => {
            let flags = get(p, 4, 4) as u32;
            let count = get(p, 16, 4) as usize;
            if flags & IRQ_SET_DATA_BOOL != 0 && count <= DATA_CAP {
                p.resize(IRQ_SET_SIZE + count, 1);
            } else if flags & IRQ_SET_DATA_BOOL == 0 {
                p.truncate(IRQ_SET_SIZE);
            }
            if except != Some(Kind::Argsz) {
                put(p, 0, 4, p.len() as u64);
            }
        }
        cmd::WRITE_MULTI if p.len() >= 8 => {
            let n = get(p, 0, 8);
            if (1..=WRITE_MULTI_MAX).contains(&n) {
                let old = (p.len() - 8) / WRITE_MULTI_ENTRY_SIZE;
                p.resize(8 + n as usize * WRITE_MULTI_ENTRY_SIZE, 0);
                // New entries: 4-byte writes to BAR1 at increasing offsets.
                for i in old..n as usize {
                    let at = 8 + i * WRITE_MULTI_ENTRY_SIZE;
                    put(p, at, 8, (i as u64 * 4) & 0xffc);
                    put(p, at + 8, 4, u64::from(region::BAR1));
                    put(p, at + 12, 4, 4);
                }
            }
        }
        cmd::DMA_MAP
        | cmd::DMA_UNMAP
        | cmd::GET_INFO
        | cmd::GET_REGION_INFO
        | cmd::GET_REGION_IO_FDS
        | cmd::GET_IRQ_INFO
            if except != Some(Kind::Argsz) && p.len() >= 4 =>
        {
            // Requests carry their own size (DMA_MAP, DMA_UNMAP) or the reply room they offer:
            // mostly their own size too (what QEMU sends).
            let argsz = get(p, 0, 4) as usize;
            if argsz < fixed_size(m.command) {
                put(p, 0, 4, fixed_size(m.command) as u64);
            }
        }
        _ => {}
    }
}

const VERSION_JSON: &[&[u8]] = &[
    b"{\"capabilities\":{\"max_msg_fds\":16,\"max_data_xfer_size\":1048576,\"pgsizes\":4096,\"max_dma_maps\":65535,\"migration\":{\"pgsize\":4096,\"max_bitmap_size\":268435456},\"write_multiple\":true}}\0",
    b"{\"capabilities\":{\"max_msg_fds\":1,\"pgsizes\":4096,\"write_multiple\":false}}\0",
    b"{\"capabilities\":{\"pgsizes\":8192}}\0",
    b"{}\0",
    b"{\"capabilities\":{\"max_data_xfer_size\":0,\"max_dma_maps\":0}}\0",
];

/// A well-formed request of `command`, with values drawn for its fields.
fn template(rng: &mut Rng, command: u16, s: &Stream) -> Msg {
    let mut payload = Vec::new();
    match command {
        cmd::VERSION => {
            put(&mut payload, 0, 2, 0);
            put(&mut payload, 2, 2, 1);
            payload.extend_from_slice(rng.pick(VERSION_JSON));
        }
        cmd::DMA_MAP => {
            put(&mut payload, 0, 4, DMA_MAP_SIZE as u64);
            put(
                &mut payload,
                4,
                4,
                u64::from(DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE),
            );
            put(&mut payload, 8, 8, 0);
            put(&mut payload, 16, 8, (rng.below(64) as u64) << 12);
            put(&mut payload, 24, 8, (1 + rng.below(16) as u64) << 12);
        }
        cmd::DMA_UNMAP => {
            let (addrs, sizes) = dma_values(s);
            let i = rng.below(addrs.len());
            put(&mut payload, 0, 4, DMA_UNMAP_SIZE as u64);
            if addrs.is_empty() || rng.chance(1, 4) {
                put(&mut payload, 4, 4, u64::from(DMA_UNMAP_FLAG_ALL));
                put(&mut payload, 16, 8, 0);
            } else {
                put(&mut payload, 4, 4, 0);
                put(&mut payload, 8, 8, addrs[i]);
                put(&mut payload, 16, 8, sizes[i]);
            }
        }
        cmd::GET_INFO | cmd::GET_REGION_INFO | cmd::GET_REGION_IO_FDS | cmd::GET_IRQ_INFO => {
            let size = fixed_size(command);
            payload.resize(size, 0);
            put(&mut payload, 0, 4, size as u64);
            let index = if command == cmd::GET_IRQ_INFO {
                rng.below(irq_index::COUNT as usize)
            } else {
                rng.below(region::COUNT as usize)
            };
            if command != cmd::GET_INFO {
                put(&mut payload, 8, 4, index as u64);
            }
        }
        cmd::SET_IRQS => {
            let count = 1 + rng.below(2) as u64;
            put(&mut payload, 0, 4, 0);
            put(
                &mut payload,
                4,
                4,
                u64::from(
                    rng.pick(&[IRQ_SET_DATA_NONE, IRQ_SET_DATA_BOOL]) | rng.pick(SET_IRQS_ACTION),
                ),
            );
            put(
                &mut payload,
                8,
                4,
                rng.below(irq_index::COUNT as usize) as u64,
            );
            put(&mut payload, 12, 4, 0);
            put(&mut payload, 16, 4, count);
        }
        cmd::REGION_READ | cmd::REGION_WRITE => {
            let count = rng.pick(&[1u64, 2, 4, 4, 8]);
            put(
                &mut payload,
                0,
                8,
                (rng.below(1024) as u64 * 4) & !(count - 1),
            );
            put(
                &mut payload,
                8,
                4,
                u64::from(rng.pick(&[region::BAR0, region::BAR1, region::CONFIG])),
            );
            put(&mut payload, 12, 4, count);
        }
        cmd::WRITE_MULTI => put(&mut payload, 0, 8, 1 + rng.below(4) as u64),
        _ => {}
    }
    let mut m = Msg::new(command, payload);
    m.id = rng.next() as u16;
    fixup(&mut m, None);
    m
}

/// A command number to insert: mostly the ones the server implements.
fn pick_command(rng: &mut Rng) -> u16 {
    match rng.below(16) {
        0 => rng.below(usize::from(cmd::LAST) + 3) as u16,
        1 => rng.next() as u16,
        2..=4 => cmd::REGION_WRITE,
        5..=6 => cmd::REGION_READ,
        7 => cmd::WRITE_MULTI,
        8 => cmd::SET_IRQS,
        9 => cmd::DMA_MAP,
        10 => cmd::DMA_UNMAP,
        11 => cmd::RESET,
        12 => cmd::VERSION,
        _ => rng.pick(&[
            cmd::GET_INFO,
            cmd::GET_REGION_INFO,
            cmd::GET_REGION_IO_FDS,
            cmd::GET_IRQ_INFO,
        ]),
    }
}

/// Byte-level mutation of one payload by libFuzzer, within `room` more bytes; false if there is
/// nothing to mutate and no room to grow (libFuzzer's mutator needs a non-zero maximum).
fn mutate_payload(m: &mut Msg, room: usize) -> bool {
    let len = m.payload.len();
    let max = len + room.min(256);
    if max == 0 {
        return false;
    }
    m.payload.resize(max, 0);
    let n = libfuzzer_sys::fuzzer_mutate(&mut m.payload, len, max);
    m.payload.truncate(n);
    true
}

/// One message-level mutation of `s`; false if none applied (the caller falls back to libFuzzer's
/// byte mutator). `room` is how many bytes the stream may grow by.
fn mutate_stream(rng: &mut Rng, s: &mut Stream, room: usize) -> bool {
    let n = s.msgs.len();
    if n == 0 {
        if room < HEADER_SIZE + 200 {
            return false;
        }
        s.msgs.push(template(rng, cmd::VERSION, s));
        return true;
    }
    let i = rng.below(n);
    match rng.below(100) {
        // A payload field, by its layout.
        0..=34 => {
            if s.msgs[i].command == cmd::VERSION && rng.chance(2, 3) {
                // Its JSON is where VERSION's variety is.
                return mutate_payload(&mut s.msgs[i], room);
            }
            let fs = fields(s.msgs[i].command, s.msgs[i].payload.len());
            if fs.is_empty() {
                return false;
            }
            let fd = rng.pick(&fs);
            if fd.at + fd.width > s.msgs[i].payload.len() + room {
                return false;
            }
            let cur = get(&s.msgs[i].payload, fd.at, fd.width);
            let v = value(rng, fd.kind, s, i, cur);
            let m = &mut s.msgs[i];
            put(&mut m.payload, fd.at, fd.width, v);
            if rng.chance(7, 8) {
                fixup(m, Some(fd.kind));
            }
        }
        // A header field.
        35..=42 => {
            let m = &mut s.msgs[i];
            match rng.below(5) {
                0 | 1 => {
                    m.command = pick_command(rng);
                    if rng.chance(1, 2) {
                        fixup(m, None);
                    }
                }
                2 => m.id = rng.next() as u16,
                3 => m.flags ^= rng.pick(HEADER_FLAGS),
                _ => m.error = rng.pick(&[0, 1, 22, u32::MAX]),
            }
        }
        // A new message.
        43..=51 => {
            let command = pick_command(rng);
            let m = template(rng, command, s);
            if m.encoded_len() > room {
                return false;
            }
            s.msgs.insert(rng.below(n + 1), m);
        }
        // A copy of a message.
        52..=57 => {
            if s.msgs[i].encoded_len() > room {
                return false;
            }
            let m = s.msgs[i].clone();
            s.msgs.insert(rng.below(n + 1), m);
        }
        58..=64 => {
            s.msgs.remove(i);
        }
        65..=67 => {
            let end = i + 1 + rng.below(n - i);
            s.msgs.drain(i..end);
        }
        68..=72 => {
            let j = rng.below(n);
            s.msgs.swap(i, j);
        }
        // The payload resized around the size its command expects.
        73..=76 => {
            let m = &mut s.msgs[i];
            let fixed = fixed_size(m.command);
            let len = match rng.below(3) {
                0 => fixed,
                1 => fixed.saturating_sub(1 + rng.below(4)),
                _ => fixed + 1 + rng.below(8),
            };
            if len > m.payload.len() + room {
                return false;
            }
            m.payload.resize(len, 0);
        }
        // message_size: consistent again, or (rarely) not.
        77..=78 => {
            let m = &mut s.msgs[i];
            if m.size.is_some() {
                m.size = None;
            } else if rng.chance(1, 2) {
                let real = m.encoded_len() as u32;
                m.size = Some(rng.pick(&[
                    0,
                    HEADER_SIZE as u32 - 1,
                    real.wrapping_sub(1),
                    real + 1,
                    MAX_MESSAGE_SIZE + 1,
                    u32::MAX,
                ]));
            } else {
                return false;
            }
        }
        // libFuzzer's byte mutator on one payload.
        _ => return mutate_payload(&mut s.msgs[i], room),
    }
    true
}

/// The custom mutator: `data[..size]` mutated in place, the new size returned (at most
/// `max_size`).
pub fn mutate(data: &mut [u8], size: usize, max_size: usize, seed: u32) -> usize {
    let mut rng = Rng::new(seed);
    // One time in four, libFuzzer's own mutator on the whole input: its comparison-guided
    // dictionary and framing damage find edges the message-level mutations do not (measured:
    // the two alone cover different parts).
    if !rng.chance(1, 4) {
        let mut s = Stream::parse(&data[..size]);
        let room = max_size.saturating_sub(s.encoded_len());
        if mutate_stream(&mut rng, &mut s, room) {
            let out = s.to_bytes();
            if out.len() <= max_size && out.len() <= data.len() {
                data[..out.len()].copy_from_slice(&out);
                return out.len();
            }
        }
    }
    let max = max_size.min(data.len());
    if max == 0 {
        return 0;
    }
    libfuzzer_sys::fuzzer_mutate(data, size, max)
}

/// Where the messages of `data` start, then where the last one ends (as [`Stream::parse`] frames
/// them).
fn boundaries(data: &[u8]) -> Vec<usize> {
    let mut at = vec![0];
    let mut pos = 0;
    while let Some(h) = Header::parse(&data[pos..]) {
        let size = h.message_size as usize;
        let rest = data.len() - pos;
        pos += if (HEADER_SIZE..=rest).contains(&size) {
            size
        } else {
            rest
        };
        at.push(pos);
    }
    at
}

/// The custom crossover: the messages of `a` with a run of messages of `b` put among them (the
/// rest of `a` after them or not), written to `out`; the size written returned. Messages are
/// copied whole, as found.
pub fn crossover(a: &[u8], b: &[u8], out: &mut [u8], seed: u32) -> usize {
    let mut rng = Rng::new(seed);
    let ba = boundaries(a);
    let bb = boundaries(b);
    let at = ba[rng.below(ba.len())];
    let from = rng.below(bb.len());
    let to = from + rng.below(bb.len() - from);
    let mut parts = vec![&a[..at], &b[bb[from]..bb[to]]];
    if rng.chance(1, 2) {
        parts.push(&a[at..*ba.last().unwrap_or(&at)]);
    }
    // Whole messages only: stop at the last boundary that fits.
    let mut written = 0;
    for part in parts {
        let fit = out.len() - written;
        let n = if part.len() <= fit {
            part.len()
        } else {
            boundaries(part)
                .into_iter()
                .take_while(|&e| e <= fit)
                .last()
                .unwrap_or(0)
        };
        out[written..written + n].copy_from_slice(&part[..n]);
        written += n;
        if n < part.len() {
            break;
        }
    }
    written
}
