//! The session's message handling, as the connection drives it: framing checks, the descriptor
//! count, then `Session::handle` against a small fake device behind `DeviceBackend`.
//!
//! Structure-aware: the input is a sequence of typed messages (each field free, so sizes, flags
//! and counts still take every value), plus raw messages, with real memfds and eventfds attached
//! where the command takes descriptors. Checked: no panic, no error reply with errno 0, replies of
//! the sizes the protocol fixes, DMA_UNMAP's retired mappings released (the fake device holds no
//! snapshot), and the session's teardown.
#![no_main]

mod common;

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

use arbitrary::Arbitrary;
use faultline_server::protocol::{Header, HEADER_SIZE};
use faultline_server::session::Session;
use libfuzzer_sys::fuzz_target;

/// A descriptor attached to a message.
#[derive(Debug, Arbitrary, Clone, Copy)]
enum Fd {
    /// A memfd of this many 4 KiB pages (0..=16).
    Mem(u8),
    Event,
}

#[derive(Debug, Arbitrary)]
enum Msg {
    Version {
        major: u16,
        minor: u16,
        max_msg_fds: Option<u32>,
        max_xfer: Option<u32>,
        pgsizes: Option<u64>,
        write_multiple: Option<bool>,
        tail: Vec<u8>,
    },
    DmaMap {
        argsz: u32,
        flags: u32,
        offset: u64,
        page: u16,
        pages: u8,
        fd: Option<Fd>,
    },
    DmaUnmap {
        argsz: u32,
        flags: u32,
        page: u16,
        pages: u8,
    },
    Info {
        cmd: u8,
        argsz: u32,
        b: u32,
        index: u32,
        d: u32,
        extra: Vec<u8>,
    },
    SetIrqs {
        argsz: u32,
        flags: u32,
        index: u8,
        start: u32,
        count: u32,
        data: Vec<u8>,
        fds: u8,
    },
    RegionRead {
        offset: u16,
        region: u8,
        count: u32,
    },
    RegionWrite {
        offset: u16,
        region: u8,
        count_delta: i8,
        data: Vec<u8>,
    },
    WriteMulti {
        entries: Vec<(u16, u8, u8, u64)>,
        wr_cnt_delta: i8,
    },
    Reset,
    Raw {
        command: u16,
        flags: u32,
        payload: Vec<u8>,
        fds: Vec<Fd>,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    negotiate_first: bool,
    msgs: Vec<(Msg, bool)>,
}

fn memfd(pages: u8) -> OwnedFd {
    let name = CString::new("fuzz").unwrap();
    // SAFETY: memfd_create with a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(u64::from(pages % 17) * 4096).unwrap();
    OwnedFd::from(f)
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd() returns a fresh descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn make(fd: Fd) -> OwnedFd {
    match fd {
        Fd::Mem(p) => memfd(p),
        Fd::Event => eventfd(),
    }
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

/// The command number, payload and descriptors of a message.
fn encode(m: &Msg) -> (u16, Vec<u8>, Vec<OwnedFd>) {
    match m {
        Msg::Version {
            major,
            minor,
            max_msg_fds,
            max_xfer,
            pgsizes,
            write_multiple,
            tail,
        } => {
            let mut caps = serde_json::Map::new();
            if let Some(v) = max_msg_fds {
                caps.insert("max_msg_fds".into(), (*v).into());
            }
            if let Some(v) = max_xfer {
                caps.insert("max_data_xfer_size".into(), (*v).into());
            }
            if let Some(v) = pgsizes {
                caps.insert("pgsizes".into(), (*v).into());
            }
            if let Some(v) = write_multiple {
                caps.insert("write_multiple".into(), (*v).into());
            }
            let json = serde_json::json!({ "capabilities": caps }).to_string();
            let mut p = major.to_ne_bytes().to_vec();
            p.extend_from_slice(&minor.to_ne_bytes());
            p.extend_from_slice(json.as_bytes());
            p.push(0);
            p.extend_from_slice(tail);
            (1, p, vec![])
        }
        Msg::DmaMap {
            argsz,
            flags,
            offset,
            page,
            pages,
            fd,
        } => {
            let mut p = u32s(&[*argsz, *flags]);
            p.extend_from_slice(&offset.to_ne_bytes());
            p.extend_from_slice(&(u64::from(*page) << 12).to_ne_bytes());
            p.extend_from_slice(&(u64::from(*pages) << 12).to_ne_bytes());
            (2, p, fd.iter().map(|&f| make(f)).collect())
        }
        Msg::DmaUnmap {
            argsz,
            flags,
            page,
            pages,
        } => {
            let mut p = u32s(&[*argsz, *flags]);
            p.extend_from_slice(&(u64::from(*page) << 12).to_ne_bytes());
            p.extend_from_slice(&(u64::from(*pages) << 12).to_ne_bytes());
            (3, p, vec![])
        }
        Msg::Info {
            cmd,
            argsz,
            b,
            index,
            d,
            extra,
        } => {
            let cmd = 4 + u16::from(*cmd % 4);
            let mut p = u32s(&[*argsz, *b, *index, *d]);
            if cmd == 5 {
                p.extend_from_slice(&[0; 16]);
            }
            p.extend_from_slice(extra);
            (cmd, p, vec![])
        }
        Msg::SetIrqs {
            argsz,
            flags,
            index,
            start,
            count,
            data,
            fds,
        } => {
            let mut p = u32s(&[*argsz, *flags, u32::from(*index % 6), *start, *count]);
            p.extend_from_slice(data);
            let fds = (0..fds % 10).map(|_| eventfd()).collect();
            (8, p, fds)
        }
        Msg::RegionRead {
            offset,
            region,
            count,
        } => {
            let mut p = u64::from(*offset).to_ne_bytes().to_vec();
            p.extend(u32s(&[u32::from(*region % 10), *count % 8192]));
            (9, p, vec![])
        }
        Msg::RegionWrite {
            offset,
            region,
            count_delta,
            data,
        } => {
            let count = (data.len() as i64 + i64::from(*count_delta)).max(0) as u32;
            let mut p = u64::from(*offset).to_ne_bytes().to_vec();
            p.extend(u32s(&[u32::from(*region % 10), count]));
            p.extend_from_slice(data);
            (10, p, vec![])
        }
        Msg::WriteMulti {
            entries,
            wr_cnt_delta,
        } => {
            let n = (entries.len() as i64 + i64::from(*wr_cnt_delta)).max(0) as u64;
            let mut p = n.to_ne_bytes().to_vec();
            for (offset, region, count, data) in entries {
                p.extend_from_slice(&u64::from(*offset).to_ne_bytes());
                p.extend(u32s(&[u32::from(*region % 10), u32::from(*count % 12)]));
                p.extend_from_slice(&data.to_le_bytes());
            }
            (15, p, vec![])
        }
        Msg::Reset => (13, vec![], vec![]),
        Msg::Raw {
            command,
            payload,
            fds,
            ..
        } => (
            *command,
            payload.clone(),
            fds.iter().take(10).map(|&f| make(f)).collect(),
        ),
    }
}

fuzz_target!(|input: Input| {
    let factory = common::factory();
    let mut session = Session::new(&factory).expect("session");
    let mut msgs: Vec<(Msg, bool)> = Vec::new();
    if input.negotiate_first {
        msgs.push((
            Msg::Version {
                major: 0,
                minor: 0,
                max_msg_fds: Some(16),
                max_xfer: Some(1 << 20),
                pgsizes: Some(4096),
                write_multiple: Some(true),
                tail: vec![],
            },
            false,
        ));
    }
    msgs.extend(input.msgs);
    for (id, (msg, posted)) in msgs.iter().take(48).enumerate() {
        let (command, payload, fds) = encode(msg);
        let mut flags = if *posted { 0x10 } else { 0 };
        if let Msg::Raw { flags: f, .. } = msg {
            flags = *f;
        }
        let hdr = Header {
            id: id as u16,
            command,
            message_size: (HEADER_SIZE + payload.len()).try_into().unwrap_or(u32::MAX),
            flags,
            error: 0,
        };
        if !common::run_message(&mut session, &hdr, &payload, fds) {
            return;
        }
    }
});
