//! Guest memory mapped without a file descriptor (QEMU without a shared memory backend): the
//! device reaches it through server→client DMA_READ/DMA_WRITE messages, which this test's client
//! serves from its own buffer, the way QEMU does (`u64 address; u64 count; data[]`, data at byte
//! 32 of the message). Bad replies fail the access cleanly; a client that
//! leaves with requests outstanding wakes every waiting lane at once.

mod common;

use std::time::{Duration, Instant};

use common::queue_guest::*;
use common::*;
use faultline_device::abi;

/// The fd-less region, mapped by the 1 GiB leaf at BUF_IOVA.
const BUF: u64 = 256 << 10;
const CTX: u16 = 1;
const DMA_READ: u16 = 11;
const DMA_WRITE: u16 = 12;
/// The server's wait for one reply (remote_dma::DEFAULT_TIMEOUT).
const REMOTE_TIMEOUT: Duration = Duration::from_secs(2);

struct Guest {
    q: QueueGuest,
    /// The fd-less region, as the client holds it.
    mem: Vec<u8>,
    seq: u64,
}

/// A server→client request as received.
struct Request {
    id: u16,
    command: u16,
    offset: u64,
    count: u32,
    data: Vec<u8>,
}

impl Guest {
    fn setup(server: &Server) -> Guest {
        let mut g = Guest {
            q: QueueGuest::setup(server, BUF, None),
            mem: vec![0u8; BUF as usize],
            seq: 0,
        };
        g.push(abi::OP_BIND, [IOVA + ROOT, 0, 0, 0, 0, 0]);
        g
    }

    fn push(&mut self, opcode: u8, args: [u64; 6]) {
        self.q.push(opcode, CTX, self.seq, args);
        self.seq += 1;
    }

    /// Starts a job whose record is cleared first.
    fn job(&mut self, opcode: u8, src: u64, dst: u64, len: u64, a3: u64, lanes: u64) {
        pwrite(&self.q.ram, RECORD, &[0u8; 64]);
        let a5 = u64::from(abi::PAT_SEQ) | lanes << 16 | 4096 << 32;
        self.push(opcode, [src, dst, len, a3, IOVA + RECORD, a5]);
    }

    fn status(&self) -> u32 {
        self.q.status()
    }

    /// The next server→client request, or `None` within `wait`.
    fn next_request(&mut self, wait: Duration) -> Option<Request> {
        self.q.c.s.set_read_timeout(Some(wait)).unwrap();
        let mut h = [0u8; 16];
        let got = std::io::Read::read(&mut self.q.c.s, &mut h[..1]);
        self.q.c.s.set_read_timeout(Some(TIMEOUT)).unwrap();
        match got {
            Ok(1) => {}
            Ok(_) => panic!("server closed the connection"),
            Err(_) => return None,
        }
        std::io::Read::read_exact(&mut self.q.c.s, &mut h[1..]).expect("request header");
        let size = u32_at(&h, 4) as usize;
        assert!(size >= 32, "request of {size} bytes");
        let mut p = vec![0u8; size - 16];
        std::io::Read::read_exact(&mut self.q.c.s, &mut p).expect("request payload");
        let flags = u32_at(&h, 8);
        assert_eq!(flags & 0xf, 0, "a command");
        let count = u64_at(&p, 8) as u32;
        let command = u16::from_ne_bytes([h[2], h[3]]);
        let data = if command == DMA_WRITE {
            count as usize
        } else {
            0
        };
        assert_eq!(size, data + 32, "QEMU's message size");
        Some(Request {
            id: u16::from_ne_bytes([h[0], h[1]]),
            command,
            offset: u64_at(&p, 0),
            count,
            data: if command == DMA_WRITE {
                p[16..16 + count as usize].to_vec()
            } else {
                Vec::new()
            },
        })
    }

    /// Answers `r` correctly from `mem`.
    fn answer(&mut self, r: &Request) {
        let at = (r.offset - BUF_IOVA) as usize;
        let n = r.count as usize;
        if r.command == DMA_WRITE {
            self.mem[at..at + n].copy_from_slice(&r.data);
            let m = message(r.id, DMA_WRITE, 1, &[]);
            self.q.c.send_bytes(&m, &[]);
        } else {
            assert_eq!(r.command, DMA_READ);
            let mut p = Vec::with_capacity(16 + n);
            p.extend_from_slice(&r.offset.to_le_bytes());
            p.extend_from_slice(&u64::from(r.count).to_le_bytes());
            p.extend_from_slice(&self.mem[at..at + n]);
            let m = message(r.id, DMA_READ, 1, &p);
            self.q.c.send_bytes(&m, &[]);
        }
    }

    /// Serves requests until the job's record is written; returns (reads, writes) served.
    fn serve_until_done(&mut self) -> (u32, u32) {
        let (mut reads, mut writes) = (0, 0);
        let deadline = Instant::now() + TIMEOUT;
        while self.status() == 0 {
            assert!(Instant::now() < deadline, "job never completed");
            if let Some(r) = self.next_request(Duration::from_millis(20)) {
                if r.command == DMA_READ {
                    reads += 1;
                } else {
                    writes += 1;
                }
                self.answer(&r);
            }
        }
        (reads, writes)
    }
}

#[test]
fn fdless_region_is_read_and_written_through_dma_messages() {
    let mut server = Server::start("fdless-rw");
    let mut g = Guest::setup(&server);
    // FILL 64 KiB at +4 KiB with four lanes: writes only.
    g.job(abi::OP_JOB_FILL, 0, BUF_IOVA + 0x1000, 0x10000, 0xab, 4);
    let (r, w) = g.serve_until_done();
    assert_eq!(g.status(), abi::JOB_OK);
    assert_eq!((r, w > 0), (0, true), "FILL: {r} reads, {w} writes");
    assert!(g.mem[0x1000..0x11000].iter().all(|&b| b == 0xab));
    assert!(g.mem[..0x1000].iter().all(|&b| b == 0));
    assert!(g.mem[0x11000..].iter().all(|&b| b == 0));
    // COPY it elsewhere in the region: reads and writes.
    for (i, b) in g.mem[0x1000..0x11000].iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    let want = g.mem[0x1000..0x11000].to_vec();
    g.job(
        abi::OP_JOB_COPY,
        BUF_IOVA + 0x1000,
        BUF_IOVA + 0x20000,
        0x10000,
        0,
        2,
    );
    let (r, w) = g.serve_until_done();
    assert_eq!(g.status(), abi::JOB_OK);
    assert!(r > 0 && w > 0, "COPY: {r} reads, {w} writes");
    assert_eq!(&g.mem[0x20000..0x30000], &want[..]);
    // The counts are logged with the session's stats.
    drop(g);
    assert!(
        wait_until(TIMEOUT, || server.log_text().contains("dma_read=")),
        "no stats line:\n{}",
        server.log_text()
    );
    let log = server.log_text();
    let line = log.lines().find(|l| l.contains("dma_read=")).unwrap();
    assert!(!line.contains("dma_read=0 "), "{line}");
    assert!(!line.contains("dma_write=0 "), "{line}");
    assert!(line.contains("dma_remote_errors=0"), "{line}");
    assert!(
        log.contains("correct, but slow"),
        "the one-time warning:\n{log}"
    );
    server.assert_serves_new_client();
}

#[test]
fn bad_replies_fail_the_access_cleanly() {
    let mut server = Server::start("fdless-bad");
    let mut g = Guest::setup(&server);
    let case = |g: &mut Guest, what: &str, bad: &dyn Fn(&mut Guest, &Request)| {
        g.job(abi::OP_JOB_COPY, BUF_IOVA, BUF_IOVA + 0x10000, 0x1000, 0, 1);
        let r = g
            .next_request(TIMEOUT)
            .unwrap_or_else(|| panic!("{what}: no request"));
        assert_eq!(r.command, DMA_READ, "{what}");
        let start = Instant::now();
        bad(g, &r);
        assert!(
            wait_until(TIMEOUT, || g.status() != 0),
            "{what}: job never completed"
        );
        assert_eq!(g.status(), abi::JOB_DMA_ERROR, "{what}");
        // Nothing else was asked for, nothing written.
        assert!(
            g.next_request(Duration::from_millis(100)).is_none(),
            "{what}"
        );
        start.elapsed()
    };
    let reply = |g: &mut Guest, r: &Request, id: u16, flags: u32, err: u32, p: &[u8]| {
        let mut m = message(id, r.command, flags, p);
        m[12..16].copy_from_slice(&err.to_ne_bytes());
        g.q.c.send_bytes(&m, &[]);
    };
    let fields = |r: &Request| {
        let mut p = r.offset.to_le_bytes().to_vec();
        p.extend_from_slice(&u64::from(r.count).to_le_bytes());
        p
    };
    case(&mut g, "error reply", &|g, r| {
        reply(g, r, r.id, 1 | 0x20, libc::EFAULT as u32, &[])
    });
    case(&mut g, "short reply", &|g, r| {
        let mut p = fields(r);
        p.extend_from_slice(&[0u8; 100]);
        reply(g, r, r.id, 1, 0, &p)
    });
    case(&mut g, "reply for another range", &|g, r| {
        let mut p = (r.offset + 8).to_le_bytes().to_vec();
        p.extend_from_slice(&u64::from(r.count).to_le_bytes());
        p.extend(std::iter::repeat_n(0u8, r.count as usize));
        reply(g, r, r.id, 1, 0, &p)
    });
    case(&mut g, "reply with another command", &|g, r| {
        let m = message(r.id, DMA_WRITE, 1, &[]);
        g.q.c.send_bytes(&m, &[]);
    });
    let waited = case(&mut g, "wrong id, then silence", &|g, r| {
        let mut p = fields(r);
        p.extend(std::iter::repeat_n(0u8, r.count as usize));
        reply(g, r, r.id.wrapping_add(1000), 1, 0, &p)
    });
    assert!(
        waited >= REMOTE_TIMEOUT - Duration::from_millis(100) && waited < TIMEOUT,
        "the silent client was waited for {waited:?}"
    );
    // The device and the connection still work, and so does a correct job.
    assert_eq!(g.q.c.read32(BAR0, abi::REG_ID), abi::ID_MAGIC);
    g.job(abi::OP_JOB_FILL, 0, BUF_IOVA, 0x2000, 0x5a, 1);
    g.serve_until_done();
    assert_eq!(g.status(), abi::JOB_OK);
    assert!(g.mem[..0x2000].iter().all(|&b| b == 0x5a));
    drop(g);
    server.assert_alive();
    server.assert_serves_new_client();
    let log = server.log_text();
    assert!(
        log.contains("errno 14"),
        "the error reply is logged:\n{log}"
    );
    assert!(log.contains("no request of ours waits"), "{log}");
}

#[test]
fn disconnect_with_requests_outstanding_wakes_every_lane() {
    let mut server = Server::start_with("fdless-disconnect", &["--lanes", "4"]);
    let mut g = Guest::setup(&server);
    // One job per engine lane set: every lane ends up waiting for a reply that never comes.
    g.job(abi::OP_JOB_FILL, 0, BUF_IOVA, BUF, 0x11, 4);
    let mut outstanding = 0;
    while outstanding < 4 {
        match g.next_request(Duration::from_millis(500)) {
            Some(_) => outstanding += 1,
            None => break,
        }
    }
    assert!(outstanding >= 2, "only {outstanding} lanes asked");
    let left = Instant::now();
    drop(g);
    // The session ends (device shut down, lanes joined) well before any reply timeout would
    // have freed the lanes, and the next client is served.
    server.assert_serves_new_client();
    assert!(
        wait_until(TIMEOUT, || server
            .log_text()
            .contains("client session ended")),
        "{}",
        server.log_text()
    );
    let took = left.elapsed();
    assert!(
        took < REMOTE_TIMEOUT,
        "the session took {took:?} to end: lanes waited for their timeout"
    );
    server.assert_alive();
}

#[test]
fn unmap_waits_for_accesses_in_flight_and_none_follows_its_reply() {
    let mut server = Server::start("fdless-unmap");
    let mut g = Guest::setup(&server);
    g.job(abi::OP_JOB_FILL, 0, BUF_IOVA, BUF, 0x77, 4);
    // Leave the first requests unanswered, then unmap the region under them.
    let first = g.next_request(TIMEOUT).expect("a request");
    assert_eq!(first.command, DMA_WRITE);
    let id =
        g.q.c
            .send(DMA_UNMAP, 0, &dma_unmap_payload(0, BUF_IOVA, BUF), &[]);
    // Until the reply, requests may still come (accesses that had their region already): answer
    // them. Then no request may follow.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        assert!(Instant::now() < deadline, "no DMA_UNMAP reply");
        let r = g.q.c.recv();
        if r.flags & 0xf == 1 {
            assert_eq!(r.id, id, "reply id");
            assert_eq!(r.flags & 0x20, 0, "DMA_UNMAP failed: errno {}", r.error);
            break;
        }
        let command = r.command;
        assert!(command == DMA_WRITE || command == DMA_READ);
        let req = Request {
            id: r.id,
            command,
            offset: u64_at(&r.payload, 0),
            count: u64_at(&r.payload, 8) as u32,
            data: r.payload[16..].to_vec(),
        };
        g.answer(&req);
    }
    assert!(
        g.next_request(Duration::from_millis(300)).is_none(),
        "a device access to the region after the DMA_UNMAP reply"
    );
    assert!(
        wait_until(TIMEOUT, || g.status() != 0),
        "job never completed"
    );
    assert_eq!(g.status(), abi::JOB_DMA_ERROR);
    assert_eq!(g.q.c.read32(BAR0, abi::REG_ID), abi::ID_MAGIC);
    drop(g);
    server.assert_serves_new_client();
}

/// The fault ring, in the fd-less region (its writeback block is in the control memory).
const RING: u64 = 0x30000;
const RING_ENTRIES: u32 = 16;
/// A VA the page table does not map (L2 entry 2 is not present): a job there faults.
const UNMAPPED_VA: u64 = 0x8000_0000;

impl Guest {
    /// Enables the fault ring at [`RING`] in the fd-less region and starts a FILL that faults; returns
    /// the first DMA_WRITE of the fault entry, left unanswered.
    fn fault_with_write_pending(&mut self) -> Request {
        let c = &mut self.q.c;
        c.write32(abi::REG_FR_BASE_LO, (BUF_IOVA + RING) as u32);
        c.write32(abi::REG_FR_BASE_HI, ((BUF_IOVA + RING) >> 32) as u32);
        c.write32(abi::REG_FR_SIZE, RING_ENTRIES);
        c.write32(abi::REG_FR_CONTROL, abi::FR_CTRL_ENABLE);
        self.job(abi::OP_JOB_FILL, 0, UNMAPPED_VA, 0x1000, 0x33, 1);
        let r = self.next_request(TIMEOUT).expect("the fault entry write");
        assert_eq!(r.command, DMA_WRITE);
        assert!(
            (BUF_IOVA + RING..BUF_IOVA + RING + 0x1000).contains(&r.offset),
            "a write of the fault ring, not at {:#x}",
            r.offset
        );
        r
    }

    /// Sends a BAR0 access and waits for its reply the way QEMU does (its global lock held): the
    /// server→client requests that come meanwhile are kept, unanswered, in `held`. The wait is
    /// bounded by [`TIMEOUT`]; the reply's payload.
    fn bar0_call(&mut self, command: u16, payload: &[u8], held: &mut Vec<Request>) -> Vec<u8> {
        let id = self.q.c.send(command, 0, payload, &[]);
        self.q.c.s.set_read_timeout(Some(TIMEOUT)).unwrap();
        loop {
            let r = self.q.c.recv();
            if r.flags & 0xf == 1 {
                assert_eq!((r.id, r.command), (id, command), "reply id and command");
                assert_eq!(r.flags & 0x20, 0, "error reply: errno {}", r.error);
                return r.payload;
            }
            held.push(Request {
                id: r.id,
                command: r.command,
                offset: u64_at(&r.payload, 0),
                count: u64_at(&r.payload, 8) as u32,
                data: r.payload[16..].to_vec(),
            });
        }
    }

    fn bar0_read(&mut self, offset: u64, held: &mut Vec<Request>) -> u32 {
        let p = self.bar0_call(REGION_READ, &access(offset, BAR0, 4, &[]), held);
        u32_at(&p, 16)
    }

    fn bar0_write(&mut self, offset: u64, val: u32, held: &mut Vec<Request>) {
        let p = access(offset, BAR0, 4, &val.to_le_bytes());
        self.bar0_call(REGION_WRITE, &p, held);
    }

    fn wb_fr_put(&self) -> u32 {
        u32::from_le_bytes(pread::<4>(&self.q.ram, WB + abi::WB_FR_PUT))
    }
}

/// QEMU without a shared memory backend answers DMA_WRITE only while no vCPU waits for a region
/// access with its global lock held. So a BAR0 read or doorbell must be answered while a fault-entry
/// write is unanswered: this client answers the write only after its register accesses were answered.
/// (Before the fix, the register read waited for the ring lock the writing lane held until the server
/// gave up on the write: the ring failed with `FL_ERR_FR_CONFIG`.)
#[test]
fn register_accesses_are_answered_while_a_fault_entry_write_waits_for_the_client() {
    let mut server = Server::start("fdless-fault-read");
    let mut g = Guest::setup(&server);
    let first = g.fault_with_write_pending();
    let mut held = vec![first];
    // The entry is not written yet: PUT is still 0, for the register and the interrupt logic.
    assert_eq!(g.bar0_read(abi::REG_FR_PUT, &mut held), 0);
    let status = g.bar0_read(abi::REG_STATUS, &mut held);
    g.bar0_write(abi::REG_FR_GET, 0, &mut held);
    g.bar0_write(abi::REG_FR_IRQ_DELAY, 0, &mut held);
    assert_eq!(
        g.bar0_read(abi::REG_ERROR, &mut held),
        abi::ERR_NONE,
        "the register accesses waited until the entry write timed out"
    );
    assert_ne!(status & abi::STATUS_FAULT_RING_ENABLED, 0, "ring disabled");
    // Now the client serves the entry's writes; the entry and PUT arrive.
    for r in std::mem::take(&mut held) {
        g.answer(&r);
    }
    let deadline = Instant::now() + TIMEOUT;
    while g.wb_fr_put() != 1 {
        assert!(Instant::now() < deadline, "FL_WB_FR_PUT never became 1");
        if let Some(r) = g.next_request(Duration::from_millis(20)) {
            g.answer(&r);
        }
    }
    let entry = &g.mem[RING as usize..RING as usize + 32];
    assert_eq!(u64_at(entry, 0), UNMAPPED_VA, "the entry's VA");
    assert_ne!(u32_at(entry, 0x1c) & abi::FAULT_VALID, 0, "FL_FAULT_VALID");
    assert_eq!(g.q.c.read32(BAR0, abi::REG_FR_PUT), 1);
    assert_eq!(g.q.c.read32(BAR0, abi::REG_ERROR), abi::ERR_NONE);
    assert!(
        !server.log_text().contains("no reply within"),
        "a remote access timed out:\n{}",
        server.log_text()
    );
    drop(g);
    server.assert_alive();
    server.assert_serves_new_client();
}

/// Disabling the fault ring while an entry write waits for the client: the disable is answered
/// without waiting for the client (the write is failed at once, and not blamed on the ring), and
/// no write to the disabled ring follows its reply.
#[test]
fn fault_ring_disable_does_not_wait_for_an_unanswered_entry_write() {
    let mut server = Server::start("fdless-fault-disable");
    let mut g = Guest::setup(&server);
    let first = g.fault_with_write_pending();
    let mut held = vec![first];
    g.bar0_write(abi::REG_FR_CONTROL, 0, &mut held);
    assert_eq!(g.bar0_read(abi::REG_FR_CONTROL, &mut held), 0);
    assert_eq!(
        g.bar0_read(abi::REG_ERROR, &mut held),
        abi::ERR_NONE,
        "the failed write was blamed on the ring"
    );
    // Late replies are dropped; nothing more is written to the old ring.
    for r in std::mem::take(&mut held) {
        g.answer(&r);
    }
    assert!(
        g.next_request(Duration::from_millis(300)).is_none(),
        "a write to the fault ring after its disable was answered"
    );
    drop(g);
    server.assert_alive();
    server.assert_serves_new_client();
}
