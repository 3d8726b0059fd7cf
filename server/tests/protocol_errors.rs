//! Negative tests with hand-built messages. A bad request gets an error reply with the right
//! errno and the connection stays usable; a stream that cannot be trusted is closed. After each
//! test the server must still be running and serve a new client.

mod common;

use std::os::fd::{AsRawFd, RawFd};

use common::*;
use faultline_device::abi;

/// The connection still works: a synchronous request gets its reply.
fn assert_in_sync(c: &mut Raw) {
    let info = c
        .call(DEVICE_GET_INFO, &info_req(16))
        .expect("DEVICE_GET_INFO after the error");
    assert_eq!(
        info,
        info4(16, 3, 9, 5),
        "device info: PCI|RESET, 9 regions, 5 irqs"
    );
}

fn ready(tag: &str) -> (Server, Raw) {
    let server = Server::start(tag);
    let mut c = server.connect();
    c.negotiate();
    (server, c)
}

/// A header claiming `size` bytes, followed by `payload` (which may be shorter or longer).
fn header_only(id: u16, cmd: u16, size: u32, flags: u32) -> Vec<u8> {
    let mut m = message(id, cmd, flags, &[]);
    m[4..8].copy_from_slice(&size.to_ne_bytes());
    m
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn truncated_header_then_close() {
    let mut server = Server::start("trunc-header");
    let mut c = server.connect();
    c.send_bytes(&[1, 0, 1, 0, 40, 0], &[]);
    drop(c);
    let mut c = server.connect();
    c.negotiate();
    // A truncated message body, then close.
    let p = version_payload(0, 0, "{}");
    let mut m = message(9, DEVICE_GET_INFO, 0, &info_req(16));
    m.truncate(20);
    c.send_bytes(&m, &[]);
    drop(c);
    drop(p);
    server.assert_serves_new_client();
    assert!(server.log_text().contains("middle of a message"));
}

#[test]
fn payload_larger_than_the_command_takes() {
    let (mut server, mut c) = ready("too-long");
    let mut p = info_req(16);
    p.extend_from_slice(&[0xaa; 8]);
    c.expect_errno(DEVICE_GET_INFO, &p, &[], libc::EINVAL);
    assert_in_sync(&mut c);
    let mut p = access(0, BAR0, 4, &[]);
    p.extend_from_slice(&[0; 4]);
    c.expect_errno(REGION_READ, &p, &[], libc::EINVAL);
    let mut p = dma_map_payload(3, 0, 0x1000, 0x1000);
    p.extend_from_slice(&[0; 8]);
    c.expect_errno(DMA_MAP, &p, &[], libc::EINVAL);
    c.expect_errno(DEVICE_RESET, &[0; 4], &[], libc::EINVAL);
    // REGION_WRITE whose data is longer than its count.
    c.expect_errno(
        REGION_WRITE,
        &access(0x30, BAR0, 4, &[0; 8]),
        &[],
        libc::EINVAL,
    );
    assert_in_sync(&mut c);
    drop(c);
    server.assert_serves_new_client();
}

#[test]
fn payload_smaller_than_the_command_needs() {
    let server = Server::start("too-short");
    let mut c = server.connect();
    c.expect_errno(VERSION, &[0, 0], &[], libc::EINVAL);
    c.negotiate();
    c.expect_errno(DMA_MAP, &[0; 16], &[], libc::EINVAL);
    c.expect_errno(DMA_UNMAP, &[0; 8], &[], libc::EINVAL);
    c.expect_errno(REGION_READ, &[0; 8], &[], libc::EINVAL);
    c.expect_errno(
        REGION_WRITE,
        &access(0x30, BAR0, 4, &[0; 2]),
        &[],
        libc::EINVAL,
    );
    c.expect_errno(DEVICE_SET_IRQS, &[0; 10], &[], libc::EINVAL);
    c.expect_errno(DEVICE_GET_REGION_INFO, &info_req(32), &[], libc::EINVAL);
    c.expect_errno(DEVICE_GET_IRQ_INFO, &[0; 4], &[], libc::EINVAL);
    c.expect_errno(REGION_WRITE_MULTI, &[0; 4], &[], libc::EINVAL);
    assert_in_sync(&mut c);
    drop(c);
    let mut server = server;
    server.assert_serves_new_client();
}

#[test]
fn unknown_and_unsupported_commands_get_enosys() {
    let (mut server, mut c) = ready("enosys");
    for cmd in [0u16, 11, 12, 14, DEVICE_FEATURE, 17, 18, 99, 0xffff] {
        c.expect_errno(cmd, &[1, 2, 3, 4, 5, 6, 7, 8, 9], &[], libc::ENOSYS);
    }
    // With a large payload the stream stays in sync too.
    c.expect_errno(77, &vec![0x55; 100_000], &[], libc::ENOSYS);
    assert_in_sync(&mut c);
    drop(c);
    server.assert_serves_new_client();
}

#[test]
fn too_many_fds_are_refused_and_closed() {
    let (mut server, mut c) = ready("fds");
    let pid = server.child.as_ref().unwrap().id();
    assert_in_sync(&mut c);
    let before = open_fds(pid);
    let a = eventfd();
    let b = eventfd();
    let e = eventfd();
    let three: [RawFd; 3] = [a.as_raw_fd(), b.as_raw_fd(), e.as_raw_fd()];
    for _ in 0..10 {
        c.expect_errno(DEVICE_GET_INFO, &info_req(16), &three[..1], libc::EINVAL);
        c.expect_errno(
            DMA_MAP,
            &dma_map_payload(3, 0, 0x10_0000, 0x1000),
            &three[..2],
            libc::EINVAL,
        );
        c.expect_errno(
            DEVICE_SET_IRQS,
            &irq_set(4 | 32, MSIX, 0, 1),
            &three[..2],
            libc::EINVAL,
        );
        c.expect_errno(
            DEVICE_SET_IRQS,
            &irq_set(1 | 32, MSIX, 0, 1),
            &three[..1],
            libc::EINVAL,
        );
    }
    // More descriptors than any command takes (and than max_msg_fds).
    let many: Vec<_> = (0..12).map(|_| eventfd()).collect();
    let raw: Vec<RawFd> = many.iter().map(|f| f.as_raw_fd()).collect();
    c.expect_errno(
        DEVICE_SET_IRQS,
        &irq_set(4 | 32, MSIX, 0, 4),
        &raw,
        libc::EINVAL,
    );
    assert_in_sync(&mut c);
    let after = open_fds(pid);
    assert_eq!(before, after, "refused descriptors were closed");
    drop(c);
    server.assert_serves_new_client();
}

#[test]
fn truncated_control_data_closes_the_connection() {
    let (mut server, mut c) = ready("ctrunc");
    let many: Vec<_> = (0..64).map(|_| eventfd()).collect();
    let raw: Vec<RawFd> = many.iter().map(|f| f.as_raw_fd()).collect();
    c.send(DEVICE_GET_INFO, 0, &info_req(16), &raw);
    c.expect_closed();
    server.assert_serves_new_client();
    assert!(server.log_text().contains("MSG_CTRUNC"));
}

#[test]
fn untrustworthy_headers_close_the_connection() {
    let mut server = Server::start("bad-header");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("size below header", header_only(1, DEVICE_GET_INFO, 8, 0)),
        ("absurd size", header_only(1, REGION_WRITE, 0xffff_0000, 0)),
        (
            "size above limit",
            header_only(1, REGION_WRITE, (1 << 20) + 8193, 0),
        ),
        ("unknown type", header_only(1, DEVICE_GET_INFO, 16, 2)),
        (
            "reserved flag bits",
            header_only(1, DEVICE_GET_INFO, 16, 0x100),
        ),
        (
            "error flag on a command",
            header_only(1, DEVICE_GET_INFO, 16, ERROR),
        ),
    ];
    for (what, bytes) in cases {
        let mut c = server.connect();
        c.negotiate();
        c.send_bytes(&bytes, &[]);
        c.expect_closed();
        server.assert_alive();
        assert!(
            server.log_text().contains("untrustworthy stream"),
            "{what}: no log line"
        );
    }
    server.assert_serves_new_client();
}

#[test]
fn unexpected_reply_is_skipped() {
    let (mut server, mut c) = ready("reply");
    c.send_bytes(&message(5, DEVICE_GET_INFO, REPLY, &[0; 12]), &[]);
    assert_in_sync(&mut c);
    drop(c);
    server.assert_serves_new_client();
}

#[test]
fn dma_map_errors() {
    let (mut server, mut c) = ready("dma");
    let ram = memfd(1 << 20);
    let fd = Some(ram.as_raw_fd());
    c.dma_map(0x10_0000, 1 << 20, fd).expect("first map");
    assert_eq!(c.dma_map(0x18_0000, 1 << 20, fd), Err(libc::EEXIST as u32));
    assert_eq!(c.dma_map(0x0f_f000, 0x2000, None), Err(libc::EEXIST as u32));
    assert_eq!(
        c.dma_map(0x10_0000, 1 << 20, None),
        Err(libc::EEXIST as u32)
    );
    assert_eq!(c.dma_map(0x40_0000, 0, None), Err(libc::EINVAL as u32));
    assert_eq!(c.dma_map(0x40_0800, 0x1000, None), Err(libc::EINVAL as u32));
    assert_eq!(c.dma_map(0x40_0000, 0x1800, None), Err(libc::EINVAL as u32));
    assert_eq!(c.dma_map(!0xfff, 0x2000, None), Err(libc::EINVAL as u32));
    assert_eq!(c.dma_map(1 << 50, 1 << 45, None), Err(libc::ENOSPC as u32));
    // Larger than the file behind it.
    assert_eq!(c.dma_map(0x100_0000, 2 << 20, fd), Err(libc::EINVAL as u32));
    // Not a regular file.
    let ev = eventfd();
    assert_eq!(
        c.dma_map(0x100_0000, 0x1000, Some(ev.as_raw_fd())),
        Err(libc::EINVAL as u32)
    );
    // Unknown or missing flags.
    c.expect_errno(
        DMA_MAP,
        &dma_map_payload(7, 0, 0x200_0000, 0x1000),
        &[],
        libc::EINVAL,
    );
    c.expect_errno(
        DMA_MAP,
        &dma_map_payload(2, 0, 0x200_0000, 0x1000),
        &[],
        libc::EINVAL,
    );
    // Too many regions.
    let mut mapped = 1;
    let err = loop {
        match c.dma_map(0x1_0000_0000 + mapped * 0x1000, 0x1000, None) {
            Ok(()) => mapped += 1,
            Err(e) => break e,
        }
        assert!(mapped < 100_000, "no region limit");
    };
    assert_eq!(err, libc::ENOSPC as u32);
    assert_in_sync(&mut c);

    // Unmap: exact match only; unmap-all; unknown flags; dirty bitmap.
    c.expect_errno(
        DMA_UNMAP,
        &dma_unmap_payload(0, 0x10_0000, 0x1000),
        &[],
        libc::ENOENT,
    );
    c.expect_errno(
        DMA_UNMAP,
        &dma_unmap_payload(4, 0x10_0000, 1 << 20),
        &[],
        libc::EINVAL,
    );
    c.expect_errno(
        DMA_UNMAP,
        &dma_unmap_payload(1, 0x10_0000, 1 << 20),
        &[],
        libc::ENOTSUP,
    );
    c.expect_errno(
        DMA_UNMAP,
        &dma_unmap_payload(2, 0x10_0000, 0),
        &[],
        libc::EINVAL,
    );
    let r = c
        .call(DMA_UNMAP, &dma_unmap_payload(0, 0x10_0000, 1 << 20))
        .expect("exact unmap");
    assert_eq!(
        r,
        dma_unmap_payload(0, 0x10_0000, 1 << 20),
        "reply echoes the request"
    );
    c.call(DMA_UNMAP, &dma_unmap_payload(2, 0, 0))
        .expect("unmap all");
    c.dma_map(0x1_0000_1000, 0x1000, None)
        .expect("table empty after unmap-all");
    assert_in_sync(&mut c);
    drop(c);
    server.assert_serves_new_client();
}

#[test]
fn region_access_errors() {
    let (mut server, mut c) = ready("region");
    assert_eq!(
        c.region_read(BAR0, abi::BAR0_SIZE - 4, 8),
        Err(libc::EINVAL as u32)
    );
    assert_eq!(
        c.region_read(BAR0, u64::MAX - 1, 4),
        Err(libc::EINVAL as u32)
    );
    assert_eq!(c.region_read(9, 0, 4), Err(libc::EINVAL as u32));
    assert_eq!(
        c.region_read(2, 0, 4),
        Err(libc::EINVAL as u32),
        "absent BAR2"
    );
    assert_eq!(c.region_read(BAR0, 0, 0), Err(libc::EINVAL as u32));
    c.expect_errno(
        REGION_READ,
        &access(0, BAR0, (1 << 20) + 1, &[]),
        &[],
        libc::E2BIG,
    );
    assert_eq!(
        c.region_write(BAR1, 0x1000, &[0; 4]),
        Err(libc::EINVAL as u32)
    );
    assert_eq!(
        c.region_write(CONFIG, 0x1000, &[0; 4]),
        Err(libc::EINVAL as u32)
    );
    // Largest allowed read of a region (config space) works.
    assert_eq!(c.region_read(CONFIG, 0, 256).unwrap().len(), 256);
    assert_in_sync(&mut c);
    drop(c);
    server.assert_serves_new_client();
}

#[test]
fn posted_writes_get_no_reply_even_on_error() {
    let (mut server, mut c) = ready("posted");
    c.region_write_posted(BAR0, abi::REG_WB_LO, &0x1240u32.to_le_bytes());
    // A failing posted write: out of range.
    c.region_write_posted(BAR0, abi::BAR0_SIZE, &[0; 4]);
    // A posted unknown command.
    c.send(99, NO_REPLY, &[], &[]);
    // The next reply is the one for this read, and it sees the posted write.
    let id = c.send(REGION_READ, 0, &access(abi::REG_WB_LO, BAR0, 4, &[]), &[]);
    let r = c.recv();
    assert_eq!(r.id, id, "no reply was sent for the posted messages");
    assert_eq!(r.flags, REPLY);
    assert_eq!(u32_at(&r.payload, 16), 0x1240);
    assert!(server.log_text().contains("no reply sent"));
    drop(c);
    server.assert_serves_new_client();
}

#[test]
fn version_negotiation_errors() {
    let mut server = Server::start("version");
    let mut c = server.connect();
    // Anything before VERSION is refused.
    c.expect_errno(DEVICE_GET_INFO, &info_req(16), &[], libc::EINVAL);
    for bad in [
        "not json",
        "[1]",
        "{\"capabilities\":7}",
        "{\"capabilities\":{\"max_msg_fds\":\"x\"}}",
    ] {
        c.expect_errno(VERSION, &version_payload(0, 0, bad), &[], libc::EINVAL);
    }
    // Not NUL-terminated.
    let mut p = version_payload(0, 0, "{}");
    p.pop();
    c.expect_errno(VERSION, &p, &[], libc::EINVAL);
    // Still usable: a good VERSION works, a second one is refused.
    let caps = c.negotiate();
    assert_eq!(caps["capabilities"]["max_msg_fds"], 8);
    assert_eq!(caps["capabilities"]["max_data_xfer_size"], 1 << 20);
    assert_eq!(caps["capabilities"]["pgsizes"], 4096);
    assert_eq!(caps["capabilities"]["write_multiple"], true);
    assert!(caps["capabilities"].get("migration").is_none());
    c.expect_errno(
        VERSION,
        &version_payload(0, 0, QEMU_CAPS),
        &[],
        libc::EINVAL,
    );
    assert_in_sync(&mut c);
    drop(c);

    // A tiny proposal gets a reply no larger than itself.
    let mut c = server.connect();
    let p = version_payload(0, 3, "{\"capabilities\":{\"max_msg_fds\":1}}");
    let r = c.call(VERSION, &p).unwrap();
    assert!(r.len() <= p.len());
    assert_eq!(
        &r[..4],
        &[0, 0, 0, 0],
        "minor never above the proposal, 0 here"
    );
    drop(c);

    // Major 1 is refused and the connection closed.
    let mut c = server.connect();
    c.expect_errno(VERSION, &version_payload(1, 0, "{}"), &[], libc::EINVAL);
    c.expect_closed();
    server.assert_serves_new_client();
}

#[test]
fn info_requests() {
    let (mut server, mut c) = ready("info");
    // Region info: full, argsz below the structure (EINVAL, as kernel VFIO), bad index.
    let r = c
        .call(DEVICE_GET_REGION_INFO, &region_info_req(32, 0))
        .unwrap();
    assert_eq!(r.len(), 32);
    assert_eq!(u32_at(&r, 0), 32);
    assert_eq!(u32_at(&r, 4), 3, "BAR0 read|write, not mmap");
    assert_eq!(u64_at(&r, 16), abi::BAR0_SIZE);
    for argsz in [0, 4, 16, 31] {
        c.expect_errno(
            DEVICE_GET_REGION_INFO,
            &region_info_req(argsz, 1),
            &[],
            libc::EINVAL,
        );
        c.expect_errno(
            DEVICE_GET_INFO,
            &info4(argsz.min(15), 0, 0, 0),
            &[],
            libc::EINVAL,
        );
        c.expect_errno(
            DEVICE_GET_IRQ_INFO,
            &info4(argsz.min(15), 0, MSIX, 0),
            &[],
            libc::EINVAL,
        );
        c.expect_errno(
            DEVICE_GET_REGION_IO_FDS,
            &info4(argsz.min(15), 0, 0, 0),
            &[],
            libc::EINVAL,
        );
    }
    // A larger argsz gets the structure (no capability chain follows).
    let r = c
        .call(DEVICE_GET_REGION_INFO, &region_info_req(4096, 1))
        .unwrap();
    assert_eq!(r.len(), 32);
    assert_eq!(u32_at(&r, 0), 32);
    c.expect_errno(
        DEVICE_GET_REGION_INFO,
        &region_info_req(2, 0),
        &[],
        libc::EINVAL,
    );
    c.expect_errno(
        DEVICE_GET_REGION_INFO,
        &region_info_req(32, 9),
        &[],
        libc::EINVAL,
    );
    let r = c
        .call(DEVICE_GET_REGION_INFO, &region_info_req(32, 8))
        .unwrap();
    assert_eq!((u32_at(&r, 4), u64_at(&r, 16)), (0, 0), "VGA absent");
    // IRQ info.
    let r = c.call(DEVICE_GET_IRQ_INFO, &info4(16, 0, MSIX, 0)).unwrap();
    assert_eq!(r, info4(16, 1, MSIX, 4));
    c.expect_errno(DEVICE_GET_IRQ_INFO, &info4(16, 0, 5, 0), &[], libc::EINVAL);
    // Region I/O fds: an empty list.
    let r = c
        .call(DEVICE_GET_REGION_IO_FDS, &info4(16, 0, 0, 0))
        .unwrap();
    assert_eq!(r, info4(16, 0, 0, 0));
    c.expect_errno(
        DEVICE_GET_REGION_IO_FDS,
        &info4(16, 0, 9, 0),
        &[],
        libc::EINVAL,
    );
    c.expect_errno(
        DEVICE_GET_REGION_IO_FDS,
        &info4(16, 1, 0, 0),
        &[],
        libc::EINVAL,
    );
    assert_in_sync(&mut c);
    drop(c);
    server.assert_serves_new_client();
}

#[test]
fn set_irqs_cases() {
    let (mut server, mut c) = ready("irqs");
    let fds: Vec<_> = (0..4).map(|_| eventfd()).collect();
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    // QEMU's sequence: de-assign without fds, then all vectors at once.
    c.call(DEVICE_SET_IRQS, &irq_set(4 | 32, MSIX, 0, 1))
        .expect("de-assign");
    c.set_irqs_eventfd(MSIX, 0, &raw).expect("assign 4");
    // ERR index takes an eventfd too.
    c.set_irqs_eventfd(3, 0, &raw[..1]).expect("ERR eventfd");
    // Trigger vector 2 from the client (DATA_NONE), vector 3 via DATA_BOOL.
    c.call(DEVICE_SET_IRQS, &irq_set(1 | 32, MSIX, 2, 1))
        .expect("trigger");
    assert!(wait_eventfd(&fds[2], TIMEOUT).is_some());
    let mut p = irq_set(2 | 32, MSIX, 2, 2);
    p.extend_from_slice(&[0, 1]);
    p[0..4].copy_from_slice(&22u32.to_ne_bytes());
    c.call(DEVICE_SET_IRQS, &p).expect("bool trigger");
    assert!(wait_eventfd(&fds[3], TIMEOUT).is_some());
    assert!(wait_eventfd(&fds[2], std::time::Duration::ZERO).is_none());
    // Mask / unmask accepted.
    c.call(DEVICE_SET_IRQS, &irq_set(1 | 8, MSIX, 0, 4))
        .expect("mask");
    c.call(DEVICE_SET_IRQS, &irq_set(1 | 16, MSIX, 0, 4))
        .expect("unmask");
    // Bad ranges, flags, indexes.
    c.expect_errno(
        DEVICE_SET_IRQS,
        &irq_set(1 | 32, MSIX, 3, 2),
        &[],
        libc::EINVAL,
    );
    c.expect_errno(
        DEVICE_SET_IRQS,
        &irq_set(1 | 32, MSIX, u32::MAX, 2),
        &[],
        libc::EINVAL,
    );
    c.expect_errno(
        DEVICE_SET_IRQS,
        &irq_set(1 | 32, 5, 0, 1),
        &[],
        libc::EINVAL,
    );
    c.expect_errno(
        DEVICE_SET_IRQS,
        &irq_set(3 | 32, MSIX, 0, 1),
        &[],
        libc::EINVAL,
    );
    c.expect_errno(
        DEVICE_SET_IRQS,
        &irq_set(1 | 8 | 32, MSIX, 0, 1),
        &[],
        libc::EINVAL,
    );
    c.expect_errno(
        DEVICE_SET_IRQS,
        &irq_set(1 << 6 | 1 | 32, MSIX, 0, 1),
        &[],
        libc::EINVAL,
    );
    c.expect_errno(
        DEVICE_SET_IRQS,
        &irq_set(2 | 32, MSIX, 0, 2),
        &[],
        libc::EINVAL,
    );
    c.expect_errno(
        DEVICE_SET_IRQS,
        &irq_set(4 | 32, MSIX, 0, 3),
        &raw[..2],
        libc::EINVAL,
    );
    c.expect_errno(
        DEVICE_SET_IRQS,
        &irq_set(4 | 32, 0, 0, 1),
        &raw[..1],
        libc::EINVAL,
    );
    // count 0 with DATA_NONE disables the index.
    c.call(DEVICE_SET_IRQS, &irq_set(1 | 32, MSIX, 0, 0))
        .expect("disable");
    c.expect_errno(
        DEVICE_SET_IRQS,
        &irq_set(4 | 32, MSIX, 0, 0),
        &[],
        libc::EINVAL,
    );
    assert_in_sync(&mut c);
    drop(c);
    server.assert_serves_new_client();
}

#[test]
fn region_write_multi() {
    let (mut server, mut c) = ready("multi");
    let entry = |off: u64, region: u32, count: u32, v: u64| {
        let mut e = access(off, region, count, &[]);
        e.extend_from_slice(&v.to_le_bytes());
        e
    };
    let mut p = 2u64.to_ne_bytes().to_vec();
    p.extend(entry(abi::REG_WB_LO, BAR0, 4, 0x2240));
    p.extend(entry(abi::REG_WB_HI, BAR0, 4, 0x1));
    // Posted, as QEMU sends it.
    c.send(REGION_WRITE_MULTI, NO_REPLY, &p, &[]);
    assert_eq!(c.read32(BAR0, abi::REG_WB_LO), 0x2240);
    assert_eq!(c.read32(BAR0, abi::REG_WB_HI), 1);
    // Non-posted: the reply is the count.
    let r = c.call(REGION_WRITE_MULTI, &p).unwrap();
    assert_eq!(r, 2u64.to_ne_bytes().to_vec());
    // Count and size mismatches, oversized entries, bad ranges.
    let mut bad = 3u64.to_ne_bytes().to_vec();
    bad.extend(entry(abi::REG_WB_LO, BAR0, 4, 0));
    c.expect_errno(REGION_WRITE_MULTI, &bad, &[], libc::EINVAL);
    let mut bad = 1u64.to_ne_bytes().to_vec();
    bad.extend(entry(abi::REG_WB_LO, BAR0, 9, 0));
    c.expect_errno(REGION_WRITE_MULTI, &bad, &[], libc::EINVAL);
    let mut bad = 1u64.to_ne_bytes().to_vec();
    bad.extend(entry(abi::BAR0_SIZE, BAR0, 4, 0));
    c.expect_errno(REGION_WRITE_MULTI, &bad, &[], libc::EINVAL);
    c.expect_errno(REGION_WRITE_MULTI, &0u64.to_ne_bytes(), &[], libc::EINVAL);
    // Each entry is its own write, in order: a BAR0 entry of the wrong width is refused (the
    // reply carries its errno), the valid entries beside it are still written.
    let mut bad = 3u64.to_ne_bytes().to_vec();
    bad.extend(entry(abi::REG_WB_LO, BAR0, 4, 0x3340));
    bad.extend(entry(abi::REG_WB_HI, BAR0, 2, 0));
    bad.extend(entry(abi::REG_WB_HI, BAR0, 4, 0x7));
    c.expect_errno(REGION_WRITE_MULTI, &bad, &[], libc::EFAULT);
    assert_eq!(
        c.read32(BAR0, abi::REG_WB_LO),
        0x3340,
        "entry before written"
    );
    assert_eq!(c.read32(BAR0, abi::REG_WB_HI), 0x7, "entry after written");
    // Posted, as QEMU coalesces doorbells under load: an entry outside its region between two
    // valid ones drops neither of them.
    let mut posted = 3u64.to_ne_bytes().to_vec();
    posted.extend(entry(abi::REG_WB_LO, BAR0, 4, 0x4440));
    posted.extend(entry(abi::BAR0_SIZE, BAR0, 4, 0));
    posted.extend(entry(abi::REG_WB_HI, BAR0, 4, 0x9));
    c.send(REGION_WRITE_MULTI, NO_REPLY, &posted, &[]);
    assert_eq!(c.read32(BAR0, abi::REG_WB_LO), 0x4440);
    assert_eq!(c.read32(BAR0, abi::REG_WB_HI), 0x9);
    assert_in_sync(&mut c);
    drop(c);
    server.assert_serves_new_client();
}

#[test]
fn messages_split_across_writes_and_fds_on_any_part() {
    let (mut server, mut c) = ready("split");
    // One byte per write.
    let id = c.next_id();
    let m = message(id, DEVICE_GET_INFO, 0, &info_req(16));
    for b in &m {
        c.send_bytes(std::slice::from_ref(b), &[]);
    }
    let r = c.recv();
    assert_eq!((r.id, r.payload.clone()), (id, info4(16, 3, 9, 5)));
    // The descriptor travels with the second half of the DMA_MAP message.
    let ram = memfd(0x10000);
    let id = c.next_id();
    let m = message(id, DMA_MAP, 0, &dma_map_payload(3, 0, 0x20_0000, 0x10000));
    c.send_bytes(&m[..20], &[]);
    c.send_bytes(&m[20..], &[ram.as_raw_fd()]);
    let r = c.recv();
    assert_eq!((r.id, r.flags), (id, REPLY), "DMA_MAP with its fd accepted");
    // Two messages in one write, the fd on the first one only.
    let a = message(
        c.next_id(),
        DMA_MAP,
        0,
        &dma_map_payload(3, 0, 0x40_0000, 0x10000),
    );
    let b = message(c.next_id(), DEVICE_GET_INFO, 0, &info_req(16));
    c.send_bytes(&[a, b].concat(), &[ram.as_raw_fd()]);
    assert_eq!(c.recv().flags, REPLY);
    assert_eq!(c.recv().flags, REPLY);
    // The regions really are device memory: the same file at two addresses.
    assert_in_sync(&mut c);
    drop(c);
    server.assert_serves_new_client();
}

#[test]
fn pipelined_requests_with_a_slow_reader() {
    let (mut server, mut c) = ready("pipeline");
    // 30000 config-space reads of 256 bytes (8.6 MiB of replies) written by another thread;
    // replies are only read once 10000 requests are out, so the server's output backs up
    // (EPOLLOUT, then it stops reading) and must drain in order.
    const N: usize = 30_000;
    let mut writer = c.s.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let first_id = c.next_id();
    let t = std::thread::spawn(move || {
        use std::io::Write;
        for i in 0..N {
            let id = first_id.wrapping_add(i as u16);
            writer
                .write_all(&message(id, REGION_READ, 0, &access(0, CONFIG, 256, &[])))
                .expect("write request");
            if i == 10_000 {
                tx.send(()).unwrap();
            }
        }
    });
    rx.recv_timeout(TIMEOUT)
        .expect("writer got 10000 requests out");
    for i in 0..N {
        let r = c.recv();
        assert_eq!(r.id, first_id.wrapping_add(i as u16), "replies in order");
        assert_eq!(r.payload.len(), 16 + 256);
        assert_eq!(
            u16::from_le_bytes([r.payload[16], r.payload[17]]),
            abi::PCI_VENDOR_ID
        );
    }
    t.join().unwrap();
    assert_in_sync(&mut c);
    drop(c);
    server.assert_serves_new_client();
}
