//! What a client or guest can make the server hold: DMA files that must be memory, SET_IRQS
//! descriptors that must be eventfds, the descriptor limit behind `max_dma_maps`, and the memory a
//! guest flooding jobs and huge checksums can pin (printed as the server's RSS).

mod common;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;

use common::queue_guest::start_queue;
use common::*;
use faultline_device::abi;
use faultline_device::jobs::{MAX_CHECKSUM_CHUNKS, MAX_DIGEST_BYTES, MAX_OUTSTANDING_JOBS};

fn ready(tag: &str) -> (Server, Raw) {
    let server = Server::start(tag);
    let mut c = server.connect();
    c.negotiate();
    (server, c)
}

/// A regular file of `size` bytes on the disk file system of the build directory.
fn disk_file(tag: &str, size: u64) -> (File, std::path::PathBuf) {
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("faultline-{tag}-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .expect("create disk file");
    f.set_len(size).expect("size disk file");
    (f, p)
}

fn fs_magic(f: &File) -> u32 {
    // SAFETY: `statfs` is plain old data, fully written by a successful fstatfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a descriptor we own and a struct to write into.
    assert_eq!(unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) }, 0);
    st.f_type as u32
}

#[test]
fn dma_files_must_be_memory_backed() {
    let (mut server, mut c) = ready("dma-files");
    let (disk, path) = disk_file("dma", 0x4000);
    let memory = [libc::TMPFS_MAGIC as u32, libc::HUGETLBFS_MAGIC as u32];
    if !memory.contains(&fs_magic(&disk)) {
        // A file on a disk (FUSE, NFS...) file system could block a device access for ever.
        c.expect_errno(
            DMA_MAP,
            &dma_map_payload(3, 0, 0x10000, 0x4000),
            &[disk.as_raw_fd()],
            libc::EBADF,
        );
    }
    let _ = std::fs::remove_file(path);
    // memfds, sealed or not, are memory.
    let m = memfd(0x4000);
    c.dma_map(0x10000, 0x4000, Some(m.as_raw_fd()))
        .expect("memfd accepted");
    let sealed = sealed_memfd(0x4000);
    c.dma_map(0x20000, 0x4000, Some(sealed.as_raw_fd()))
        .expect("sealed memfd accepted");
    // So is a tmpfs file.
    if let Ok(shm) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(format!("/dev/shm/faultline-test-{}", std::process::id()))
    {
        let _ = std::fs::remove_file(format!("/dev/shm/faultline-test-{}", std::process::id()));
        shm.set_len(0x4000).unwrap();
        if fs_magic(&shm) == libc::TMPFS_MAGIC as u32 {
            c.dma_map(0x30000, 0x4000, Some(shm.as_raw_fd()))
                .expect("tmpfs file accepted");
        }
    }
    assert_eq!(c.read32(BAR0, abi::REG_ID), abi::ID_MAGIC);
    drop(c);
    server.assert_serves_new_client();
}

fn sealed_memfd(size: u64) -> File {
    let name = std::ffi::CString::new("faultline-sealed").unwrap();
    // SAFETY: memfd_create with a valid NUL-terminated name.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    // SAFETY: F_ADD_SEALS on a descriptor we own.
    let rc = unsafe {
        libc::fcntl(
            fd,
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    };
    assert_eq!(rc, 0);
    f
}

#[test]
fn set_irqs_descriptors_must_be_eventfds() {
    let (mut server, mut c) = ready("irq-fds");
    let m = memfd(4096);
    c.expect_errno(
        DEVICE_SET_IRQS,
        &irq_set(4 | 32, MSIX, 0, 1),
        &[m.as_raw_fd()],
        libc::EINVAL,
    );
    let mut p = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors we own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    c.expect_errno(
        DEVICE_SET_IRQS,
        &irq_set(4 | 32, MSIX, 0, 2),
        &[w.as_raw_fd(), r.as_raw_fd()],
        libc::EINVAL,
    );
    // One bad descriptor among eventfds refuses the message.
    let (a, b) = (eventfd(), eventfd());
    c.expect_errno(
        DEVICE_SET_IRQS,
        &irq_set(4 | 32, MSIX, 0, 3),
        &[a.as_raw_fd(), m.as_raw_fd(), b.as_raw_fd()],
        libc::EINVAL,
    );
    c.set_irqs_eventfd(MSIX, 0, &[a.as_raw_fd(), b.as_raw_fd()])
        .expect("eventfds accepted");
    drop(c);
    server.assert_serves_new_client();
}

#[test]
fn nofile_limit_is_raised_and_bounds_max_dma_maps() {
    const SOFT: u64 = 64;
    const HARD: u64 = 256;
    let dir = TempDir::new("nofile");
    let socket = dir.0.join("gpu.sock");
    let mut server = Server::start_configured(dir, socket, &[], |cmd| {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: SOFT,
                    rlim_max: HARD,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let mut c = server.connect();
    let caps = c.negotiate();
    let max = caps["capabilities"]["max_dma_maps"]
        .as_u64()
        .expect("max_dma_maps advertised");
    // Raised to the hard limit, and bounded by it.
    assert!(
        max > SOFT && max < HARD,
        "max_dma_maps {max} with RLIMIT_NOFILE {SOFT}/{HARD}"
    );
    // Every advertised map works with its own descriptor; one more is ENOSPC, not a dropped
    // connection.
    for i in 0..max {
        let f = memfd(4096);
        c.dma_map(0x10_0000 + i * 0x1000, 4096, Some(f.as_raw_fd()))
            .unwrap_or_else(|e| panic!("map {i} of {max}: errno {e}"));
    }
    let f = memfd(4096);
    c.expect_errno(
        DMA_MAP,
        &dma_map_payload(3, 0, 0x10_0000 + max * 0x1000, 4096),
        &[f.as_raw_fd()],
        libc::ENOSPC,
    );
    assert_eq!(c.read32(BAR0, abi::REG_ID), abi::ID_MAGIC);
    drop(c);
    server.assert_serves_new_client();
}

/// Guest memory of the flood: writeback block, an empty page table (every access faults and
/// stalls: no fault ring), completion records, a 32 768-entry queue.
const IOVA: u64 = 0x1_0000_0000;
const RAM: u64 = 4 << 20;
const WB: u64 = 0x1000;
const ROOT: u64 = 0x2000;
const RECORDS: u64 = 0x10_0000;
const CQ: u64 = 0x20_0000;
const CQ_ENTRIES: u32 = 32768;

fn job(ram: &File, slot: u32, opcode: u8, seq: u64, args: [u64; 6]) {
    let mut cmd = [0u8; 64];
    cmd[0] = opcode;
    cmd[8..16].copy_from_slice(&seq.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        cmd[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    pwrite(ram, CQ + u64::from(slot) * 64, &cmd);
}

/// `jobs=N` of the last SIGUSR1 stats line.
fn jobs_logged(server: &Server) -> Option<u64> {
    let log = server.log_text();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("device stats: commands="))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("jobs="))
        .and_then(|v| v.parse().ok())
}

#[test]
fn job_flood_and_huge_checksums_leave_rss_bounded() {
    let mut server = Server::start("flood");
    let mut c = server.connect();
    c.negotiate();
    let ram = memfd(RAM);
    c.dma_map(IOVA, RAM, Some(ram.as_raw_fd()))
        .expect("map RAM");
    start_queue(&mut c, IOVA + WB, IOVA + CQ, CQ_ENTRIES);
    job(&ram, 0, abi::OP_BIND, 0, [IOVA + ROOT, 0, 0, 0, 0, 0]);
    // Fill jobs up to four short of the job cap, then the largest CHECKSUMs there are (2^20
    // one-byte chunks: 8 MiB of digests each), then more fill jobs: all stall on faults.
    let fills = MAX_OUTSTANDING_JOBS as u32 - 4;
    let checksums = 40u32;
    let total = fills + checksums + 1000;
    let a5_checksum = 0xff << 8 | 1 << 16 | 1u64 << 32;
    for i in 0..total {
        let rec = IOVA + RECORDS + u64::from(i) * 32;
        if (fills..fills + checksums).contains(&i) {
            job(
                &ram,
                i + 1,
                abi::OP_JOB_CHECKSUM,
                u64::from(i),
                [0x1000_0000, 0, MAX_CHECKSUM_CHUNKS, 0, rec, a5_checksum],
            );
        } else {
            job(
                &ram,
                i + 1,
                abi::OP_JOB_FILL,
                u64::from(i),
                [0, 0x1000_0000, 4096, 1, rec, 0xff << 8],
            );
        }
    }
    let before = server.rss_kib();
    c.region_write_posted(BAR0, abi::REG_CQ_TAIL, &(total + 1).to_le_bytes());
    // The device takes jobs until the cap (the fills and four 8 MiB checksums fill both the job
    // cap and the digest budget), then the queue waits.
    let limit = MAX_OUTSTANDING_JOBS as u64;
    assert!(
        wait_until(TIMEOUT, || {
            server.signal(libc::SIGUSR1);
            jobs_logged(&server) == Some(limit)
        }),
        "device never reached {limit} outstanding jobs:\n{}",
        server
            .log_text()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let after = server.rss_kib();
    let growth_mib = after.saturating_sub(before) as f64 / 1024.0;
    println!(
        "server RSS: {:.1} MiB before the flood, {:.1} MiB with {limit} jobs outstanding and {} MiB of \
         digests (+{growth_mib:.1} MiB); {total} jobs submitted",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        MAX_DIGEST_BYTES >> 20
    );
    let bound = (MAX_DIGEST_BYTES >> 20) as f64 + 32.0;
    assert!(
        growth_mib < bound,
        "RSS grew by {growth_mib:.1} MiB (bound {bound} MiB)"
    );
    // The stalled device still answers, and a reset releases everything.
    assert_eq!(c.read32(BAR0, abi::REG_ID), abi::ID_MAGIC);
    c.call(DEVICE_RESET, &[]).expect("DEVICE_RESET");
    drop(c);
    server.assert_serves_new_client();
}

#[test]
fn writable_memory_without_a_descriptor_is_reported_once_with_the_fix() {
    let (server, mut c) = ready("fdless");
    // QEMU's BIOS ROM arrives read-only without an fd: normal, nothing to report.
    let rom = dma_map_payload(1, 0, 0xfffc_0000, 0x40000);
    c.call(DMA_MAP, &rom).expect("ROM without fd");
    // Guest RAM without an fd: QEMU runs without a shared memory backend.
    for i in 0..3u64 {
        let ram = dma_map_payload(3, 0, 0x1_0000_0000 + i * 0x10_0000, 0x10_0000);
        c.call(DMA_MAP, &ram).expect("RAM without fd is accepted");
    }
    assert_eq!(c.read32(BAR0, abi::REG_ID), abi::ID_MAGIC);
    let log = server.log_text();
    let hits = log.matches("memory-backend-memfd,id=mem").count();
    assert_eq!(hits, 1, "reported once, with the QEMU option:\n{log}");
    assert!(log.contains("share=on"));
}
