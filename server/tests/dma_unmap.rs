//! DMA_UNMAP against a running device: the reply comes only once the device no longer references
//! the unmapped memory (vfio-user spec: the server releases every reference, in-flight DMA
//! included, before it replies). A long FILL job writes into its own region while the client
//! unmaps it; from the reply on, the region's pages never change again.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;

use common::queue_guest::*;
use common::*;
use faultline_device::abi;

/// The job's buffer: its own region, mapped by the 1 GiB leaf at BUF_IOVA.
const BUF: u64 = 64 << 20;
const CTX: u16 = 1;

/// The queue guest and the file behind the job's buffer.
struct Guest {
    q: QueueGuest,
    buf: File,
}

impl Guest {
    fn setup(server: &Server) -> Guest {
        let buf = memfd(BUF);
        let q = QueueGuest::setup(server, BUF, Some(buf.as_raw_fd()));
        Guest { q, buf }
    }
}

fn read_all(f: &File) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut v = vec![0u8; BUF as usize];
    f.read_exact_at(&mut v, 0).expect("read buffer");
    v
}

#[test]
fn unmap_reply_waits_until_the_device_no_longer_writes_the_region() {
    let mut server = Server::start("dma-unmap");
    let mut raced = 0;
    for round in 0..6u64 {
        let mut g = Guest::setup(&server);
        g.q.push(abi::OP_BIND, CTX, 0, [IOVA + ROOT, 0, 0, 0, 0, 0]);
        // FILL the whole buffer with every lane of one engine, 512-byte chunks in order (small
        // chunks make the job last long enough for the unmap to meet it).
        let a5 = u64::from(abi::PAT_SEQ) | 0xff << 8 | 512 << 32;
        g.q.push(
            abi::OP_JOB_FILL,
            CTX,
            round,
            [0, BUF_IOVA, BUF, 0xab, IOVA + RECORD, a5],
        );
        // Unmap as soon as the job has started writing.
        assert!(
            wait_until(TIMEOUT, || pread::<1>(&g.buf, 0)[0] == 0xab),
            "the job never wrote its buffer"
        );
        let reply =
            g.q.c
                .call(DMA_UNMAP, &dma_unmap_payload(0, BUF_IOVA, BUF))
                .expect("DMA_UNMAP");
        assert_eq!(reply, dma_unmap_payload(0, BUF_IOVA, BUF));
        let after_reply = read_all(&g.buf);
        // The job ends: DMA error if the unmap cut it short, OK if it had finished.
        assert!(
            wait_until(TIMEOUT, || g.q.status() != 0),
            "job never completed"
        );
        let status = g.q.status();
        if status == abi::JOB_DMA_ERROR {
            raced += 1;
        } else {
            assert_eq!(status, abi::JOB_OK, "round {round}: job status");
        }
        // A device access still in flight would show up as bytes written after the reply.
        let at_end = read_all(&g.buf);
        let changed = after_reply
            .iter()
            .zip(&at_end)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            changed, 0,
            "round {round}: {changed} bytes of the unmapped region changed after the DMA_UNMAP reply"
        );
        // The connection still works.
        assert_eq!(g.q.c.read32(BAR0, abi::REG_ID), abi::ID_MAGIC);
        drop(g);
    }
    assert!(
        raced > 0,
        "no round raced the unmap against the running job"
    );
    server.assert_serves_new_client();
}
