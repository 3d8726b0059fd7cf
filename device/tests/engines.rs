//! The MMU, the fault ring and the engines, one opcode and one rule at a time: jobs on 4 KiB, 2 MiB and
//! 1 GiB pages, faults and replays, cancels, invalidation, overflow, interrupt arming, malformed setups,
//! reset and shutdown.

mod common;

use std::time::{Duration, Instant};

use common::gpu::{
    a5, load_u32, read_bytes, write_bytes, Completion, FaultReader, PageTables, A, R, RWA, W,
};
use common::{wait_until, Cmd, Harness, CQ_BASE, RAM_SIZE, SCRATCH, WB};
use faultline_device::jobs::job_checksum;
use faultline_device::{abi, DeviceConfig};
use faultline_mmu::{AccessType, FaultReason, PageSize};

const FR_BASE: u64 = 0x20_0000;
const REC: u64 = 0x30_0000;
const PT: u64 = 0x50_0000;
const PT_BYTES: u64 = 1 << 20;
/// Data pages for 4 KiB mappings: 0x60_0000..0x80_0000.
const DATA: u64 = 0x60_0000;
/// A 2 MiB frame.
const FRAME_2M: u64 = 0x80_0000;
/// Inside the 1 GiB frame at 0: the bytes the 1 GiB tests touch.
const WINDOW_1G: u64 = 0xa0_0000;

const VA: u64 = 0x1_0000_0000;
const VA_2M: u64 = 0x2_0000_0000;
const VA_1G: u64 = 0x80_0000_0000;

const PAGE: u64 = 4096;

fn config() -> DeviceConfig {
    DeviceConfig {
        contexts: 4,
        engines: 2,
        lanes: 4,
        tlb_sets: 16,
        tlb_ways: 4,
    }
}

/// A running queue, a 64-entry fault ring without moderation, and context 0 bound to empty tables.
fn setup() -> (Harness, PageTables) {
    let mut h = Harness::with_config(config());
    h.enable_msix();
    h.start_queue(CQ_BASE, 256);
    h.program_fault_ring(FR_BASE, 64, 0);
    assert_eq!(h.reg(abi::REG_ERROR), abi::ERR_NONE);
    let pt = PageTables::new(&h.mem, PT, PT_BYTES);
    h.run(&[Cmd::bind(0, pt.root())]);
    (h, pt)
}

fn rec(i: u64) -> u64 {
    REC + i * abi::COMPL_SIZE
}

fn pattern_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn stat(h: &Harness, i: u32) -> u64 {
    h.dev.stats()[i as usize]
}

/// Reads `len` bytes at `va` through `pa_of` (which must map page by page).
fn read_va(h: &Harness, pa_of: &dyn Fn(u64) -> u64, va: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    let mut v = va;
    while v < va + len {
        let n = (PAGE - v % PAGE).min(va + len - v);
        out.extend(read_bytes(&h.mem, pa_of(v), n as usize));
        v += n;
    }
    out
}

fn write_va(h: &Harness, pa_of: &dyn Fn(u64) -> u64, va: u64, data: &[u8]) {
    let mut v = va;
    let mut i = 0usize;
    while i < data.len() {
        let n = ((PAGE - v % PAGE) as usize).min(data.len() - i);
        write_bytes(&h.mem, pa_of(v), &data[i..i + n]);
        v += n as u64;
        i += n;
    }
}

/// FILL, COPY, CHECKSUM and ATOMIC_ADD over `[src, src+len)` and `[dst, dst+len)`, every byte checked.
fn run_suite(h: &mut Harness, pa_of: &dyn Fn(u64) -> u64, src: u64, dst: u64, len: u64, tag: u64) {
    let data = pattern_bytes(len as usize, tag);
    write_va(h, pa_of, src, &data);
    let modes = [
        a5(abi::PAT_SEQ, 0xff, 0, 0),
        a5(abi::PAT_STRIDED, 0, 3, 1000),
        a5(abi::PAT_RANDOM, 1, 0, 512),
        a5(abi::PAT_SEQ, 0xff, 1, 1 << 20),
    ];
    let mut seq = tag << 16;
    for (m, &mode) in modes.iter().enumerate() {
        let chunk = match mode >> 32 {
            0 => 4096,
            c => c,
        };
        // FILL
        seq += 1;
        h.run(&[Cmd::job(
            abi::OP_JOB_FILL,
            0,
            0,
            dst,
            len,
            0x5a + m as u64,
            rec(0),
            mode,
            seq,
        )]);
        let c = h.wait_completion(rec(0));
        assert_eq!(
            (c.status, c.seq, c.bytes),
            (abi::JOB_OK, seq, len),
            "fill {mode:#x}"
        );
        assert!(
            read_va(h, pa_of, dst, len)
                .iter()
                .all(|&b| b == 0x5a + m as u8),
            "fill bytes {mode:#x}"
        );
        // COPY
        seq += 1;
        h.run(&[Cmd::job(
            abi::OP_JOB_COPY,
            0,
            src,
            dst,
            len,
            0,
            rec(1),
            mode,
            seq,
        )]);
        let c = h.wait_completion(rec(1));
        assert_eq!((c.status, c.bytes), (abi::JOB_OK, len), "copy {mode:#x}");
        assert!(read_va(h, pa_of, dst, len) == data, "copy bytes {mode:#x}");
        // CHECKSUM
        seq += 1;
        h.run(&[Cmd::job(
            abi::OP_JOB_CHECKSUM,
            0,
            src,
            0,
            len,
            0,
            rec(2),
            mode,
            seq,
        )]);
        let c = h.wait_completion(rec(2));
        assert_eq!(c.status, abi::JOB_OK, "checksum {mode:#x}");
        assert_eq!(c.result, job_checksum(&data, chunk), "checksum {mode:#x}");
        // ATOMIC_ADD
        seq += 1;
        let addend = 0x0101_0101_0101_0101u64.wrapping_mul(m as u64 + 1) | 1 << 63;
        let atomic_mode = mode & 0xffff_ffff | ((chunk / 8) * 8) << 32;
        h.run(&[Cmd::job(
            abi::OP_JOB_ATOMIC_ADD,
            0,
            0,
            dst,
            len,
            addend,
            rec(3),
            atomic_mode,
            seq,
        )]);
        let c = h.wait_completion(rec(3));
        assert_eq!(
            (c.status, c.result),
            (abi::JOB_OK, len / 8),
            "atomic {mode:#x}"
        );
        let after = read_va(h, pa_of, dst, len);
        for (w, (a, b)) in after.chunks(8).zip(data.chunks(8)).enumerate() {
            let want = u64::from_le_bytes(b.try_into().unwrap()).wrapping_add(addend);
            assert_eq!(
                u64::from_le_bytes(a.try_into().unwrap()),
                want,
                "word {w} {mode:#x}"
            );
        }
        for r in 0..4 {
            write_bytes(&h.mem, rec(r), &[0u8; 32]);
        }
    }
}

#[test]
fn jobs_on_4k_pages() {
    let (mut h, mut pt) = setup();
    // 32 pages, scattered: VA page i → DATA page (i * 7) % 32.
    let pa_of = |va: u64| DATA + ((((va - VA) / PAGE) * 7) % 32) * PAGE + va % PAGE;
    for i in 0..32 {
        pt.map(VA + i * PAGE, pa_of(VA + i * PAGE), PageSize::Size4K, RWA);
    }
    run_suite(
        &mut h,
        &pa_of,
        VA + 100,
        VA + 16 * PAGE + 8,
        15 * PAGE + 96,
        1,
    );
    assert_eq!(
        stat(&h, abi::STAT_FAULTS_WRITE) + stat(&h, abi::STAT_FAULTS_READ),
        0
    );
    assert!(stat(&h, abi::STAT_TLB_HITS) > 0);
    assert!(stat(&h, abi::STAT_WALKS) > 0);
    assert_eq!(stat(&h, abi::STAT_JOBS), 16);
}

#[test]
fn jobs_on_2m_pages() {
    let (mut h, mut pt) = setup();
    pt.map(VA_2M, FRAME_2M, PageSize::Size2M, RWA);
    let pa_of = |va: u64| FRAME_2M + (va - VA_2M);
    run_suite(
        &mut h,
        &pa_of,
        VA_2M + 8,
        VA_2M + (1 << 20) + 64,
        (1 << 20) - 256,
        2,
    );
}

#[test]
fn jobs_on_1g_pages() {
    let (mut h, mut pt) = setup();
    pt.map(VA_1G, 0, PageSize::Size1G, RWA);
    let pa_of = |va: u64| va - VA_1G;
    let base = VA_1G + WINDOW_1G;
    run_suite(&mut h, &pa_of, base, base + (512 << 10), 300 << 10, 3);
}

/// Services faults until the record at `gpa` completes: maps each faulting page with `perms`, writes
/// FL_REG_FR_GET, replays. Returns the entries seen and the completion.
fn service_until(
    h: &mut Harness,
    pt: &mut PageTables,
    ring: &mut FaultReader,
    gpa: u64,
    pa_of: &dyn Fn(u64) -> u64,
) -> (Vec<faultline_mmu::FaultEntry>, Completion) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = common::gpu::read_completion(&h.mem, gpa);
        if c.status != 0 {
            return (seen, c);
        }
        assert!(
            Instant::now() < deadline,
            "job at {gpa:#x} never completed; faults {seen:?}"
        );
        let batch = ring.drain(&h.mem);
        if batch.is_empty() {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        for e in &batch {
            pt.map(e.va, pa_of(e.va), PageSize::Size4K, RWA);
        }
        h.set_reg(abi::REG_FR_GET, ring.get);
        h.run(&[Cmd::replay(0)]);
        seen.extend(batch);
    }
}

#[test]
fn faults_are_posted_serviced_and_replayed() {
    let (mut h, mut pt) = setup();
    let mut ring = FaultReader::new(FR_BASE, 64);
    let pa_of = |va: u64| DATA + (va - VA);
    h.run(&[Cmd::job(
        abi::OP_JOB_FILL,
        0,
        0,
        VA,
        3 * PAGE,
        0x77,
        rec(0),
        a5(0, 0, 1, 0),
        42,
    )]);
    // The first fault: entry contents, writeback PUT, interrupt.
    wait_until("first fault", || load_u32(&h.mem, WB + abi::WB_FR_PUT) == 1);
    h.sink.wait_for(abi::VEC_FAULT, 1);
    let first = ring.drain(&h.mem);
    assert_eq!(first.len(), 1);
    let e = first[0];
    assert_eq!(e.va, VA);
    assert_eq!(e.context, 0);
    assert_eq!(e.access, AccessType::Write);
    assert_eq!(e.reason, FaultReason::NotPresent);
    assert_eq!(e.engine, 0);
    assert!(e.lane < 4);
    assert_eq!(h.reg(abi::REG_FR_PUT), 1);
    assert_eq!(
        load_u32(&h.mem, FR_BASE + abi::FAULT_OFF_INFO),
        0,
        "driver cleared the valid bit"
    );
    assert_eq!(
        common::gpu::read_completion(&h.mem, rec(0)).status,
        0,
        "stalled, not complete"
    );
    pt.map(VA, pa_of(VA), PageSize::Size4K, RWA);
    h.set_reg(abi::REG_FR_GET, ring.get);
    h.run(&[Cmd::replay(0)]);
    let (rest, c) = service_until(&mut h, &mut pt, &mut ring, rec(0), &pa_of);
    assert_eq!(
        rest.iter().map(|e| e.va).collect::<Vec<_>>(),
        vec![VA + PAGE, VA + 2 * PAGE]
    );
    assert_eq!(
        (c.status, c.seq, c.bytes, c.faults, c.replays),
        (abi::JOB_OK, 42, 3 * PAGE, 3, 3)
    );
    assert!(read_bytes(&h.mem, DATA, 3 * PAGE as usize)
        .iter()
        .all(|&b| b == 0x77));
    assert_eq!(stat(&h, abi::STAT_FAULTS_WRITE), 3);
    assert_eq!(stat(&h, abi::STAT_REPLAYS), 3);
    assert_eq!(stat(&h, abi::STAT_RING_HIGH_WATER), 1);
    let lat: u64 = h.dev.stats()[abi::STAT_LAT_BASE as usize..].iter().sum();
    assert_eq!(lat, 3, "one latency sample per replayed stall");
    assert_eq!(h.sink.count(abi::VEC_QUEUE), 1, "FL_CMD_F_IRQ on the job");
}

#[test]
fn permission_faults_and_upgrades() {
    let (mut h, mut pt) = setup();
    let mut ring = FaultReader::new(FR_BASE, 64);
    pt.map(VA, DATA, PageSize::Size4K, R);
    h.run(&[Cmd::job(
        abi::OP_JOB_CHECKSUM,
        0,
        VA,
        0,
        PAGE,
        0,
        rec(0),
        0,
        1,
    )]);
    assert_eq!(
        h.wait_completion(rec(0)).status,
        abi::JOB_OK,
        "read allowed"
    );
    h.run(&[Cmd::job(
        abi::OP_JOB_ATOMIC_ADD,
        0,
        0,
        VA,
        64,
        1,
        rec(1),
        0,
        2,
    )]);
    wait_until("permission fault", || {
        load_u32(&h.mem, WB + abi::WB_FR_PUT) == 1
    });
    let e = ring.drain(&h.mem)[0];
    assert_eq!(
        (e.va, e.access, e.reason),
        (VA, AccessType::Atomic, FaultReason::Permission)
    );
    pt.map(VA, DATA, PageSize::Size4K, R | W);
    h.set_reg(abi::REG_FR_GET, ring.get);
    h.run(&[Cmd::replay(0)]);
    wait_until("second permission fault", || {
        load_u32(&h.mem, WB + abi::WB_FR_PUT) == 2
    });
    let e = ring.drain(&h.mem)[0];
    assert_eq!(
        (e.access, e.reason),
        (AccessType::Atomic, FaultReason::Permission),
        "W is not A"
    );
    pt.map(VA, DATA, PageSize::Size4K, R | W | A);
    h.set_reg(abi::REG_FR_GET, ring.get);
    h.run(&[Cmd::replay(0xffff)]);
    let c = h.wait_completion(rec(1));
    assert_eq!(
        (c.status, c.faults, c.replays, c.result),
        (abi::JOB_OK, 2, 2, 8)
    );
}

#[test]
fn targeted_cancel_fails_writers_and_keeps_readers() {
    let (mut h, mut pt) = setup();
    let mut ring = FaultReader::new(FR_BASE, 64);
    h.run(&[
        Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, PAGE, 1, rec(0), 0, 1),
        Cmd::job(
            abi::OP_JOB_CHECKSUM,
            0,
            VA,
            0,
            PAGE,
            0,
            rec(1),
            a5(0, 1, 0, 0),
            2,
        ),
    ]);
    wait_until("two faults", || load_u32(&h.mem, WB + abi::WB_FR_PUT) == 2);
    let mut accesses: Vec<_> = ring
        .drain(&h.mem)
        .iter()
        .map(|e| (e.va, e.access))
        .collect();
    accesses.sort();
    assert_eq!(
        accesses,
        vec![(VA, AccessType::Read), (VA, AccessType::Write)]
    );
    let wa = 1 << abi::ACCESS_WRITE | 1 << abi::ACCESS_ATOMIC;
    h.run(&[Cmd::cancel(0, VA + 123, wa)]);
    let c = h.wait_completion(rec(0));
    assert_eq!(
        (c.status, c.faults, c.replays, c.bytes),
        (abi::JOB_CANCELLED, 1, 0, 0)
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        load_u32(&h.mem, rec(1) + abi::COMPL_OFF_STATUS),
        0,
        "the reader is still stalled"
    );
    write_bytes(&h.mem, DATA, &pattern_bytes(PAGE as usize, 9));
    pt.map(VA, DATA, PageSize::Size4K, R);
    h.set_reg(abi::REG_FR_GET, ring.get);
    h.run(&[Cmd::replay(0)]);
    let c = h.wait_completion(rec(1));
    assert_eq!(c.status, abi::JOB_OK);
    assert_eq!(c.result, job_checksum(&pattern_bytes(PAGE as usize, 9), 0));
    assert_eq!(stat(&h, abi::STAT_CANCELS), 1);
}

#[test]
fn cancel_all_per_context_and_everywhere() {
    let (mut h, _pt) = setup();
    let pt1 = PageTables::new(&h.mem, PT + PT_BYTES, PT_BYTES);
    h.run(&[
        Cmd::bind(1, pt1.root()),
        Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, PAGE, 1, rec(0), 0, 1),
        Cmd::job(
            abi::OP_JOB_COPY,
            1,
            VA,
            VA + PAGE,
            PAGE,
            0,
            rec(1),
            a5(0, 1, 0, 0),
            2,
        ),
    ]);
    wait_until("two faults", || load_u32(&h.mem, WB + abi::WB_FR_PUT) == 2);
    h.run(&[Cmd::cancel_all(0)]);
    assert_eq!(h.wait_completion(rec(0)).status, abi::JOB_CANCELLED);
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(load_u32(&h.mem, rec(1) + abi::COMPL_OFF_STATUS), 0);
    h.run(&[Cmd::cancel_all(0xffff)]);
    assert_eq!(h.wait_completion(rec(1)).status, abi::JOB_CANCELLED);
    // A CANCEL with an access mask beyond the four access types is an argument error.
    h.submit(&[Cmd::cancel(0, VA, 0x10)]);
    assert_eq!(h.wait_error(), abi::ERR_BAD_ARG);
}

#[test]
fn invalidate_after_pte_clear_makes_accesses_fault_again() {
    let (mut h, mut pt) = setup();
    let mut ring = FaultReader::new(FR_BASE, 64);
    pt.map(VA, DATA, PageSize::Size4K, RWA);
    h.run(&[Cmd::job(
        abi::OP_JOB_CHECKSUM,
        0,
        VA,
        0,
        PAGE,
        0,
        rec(0),
        0,
        1,
    )]);
    assert_eq!(h.wait_completion(rec(0)).faults, 0);
    pt.unmap(VA, PageSize::Size4K);
    h.run(&[
        Cmd::invalidate(0, VA, PAGE),
        Cmd::fence(SCRATCH, 7, 0),
        Cmd::job(abi::OP_JOB_CHECKSUM, 0, VA, 0, PAGE, 0, rec(1), 0, 2),
    ]);
    assert_eq!(h.read_u64(SCRATCH), 7);
    wait_until("fault after invalidation", || {
        load_u32(&h.mem, WB + abi::WB_FR_PUT) == 1
    });
    assert_eq!(ring.drain(&h.mem)[0].va, VA);
    pt.map(VA, DATA, PageSize::Size4K, RWA);
    h.set_reg(abi::REG_FR_GET, ring.get);
    h.run(&[Cmd::replay(0)]);
    let c = h.wait_completion(rec(1));
    assert_eq!((c.status, c.faults, c.replays), (abi::JOB_OK, 1, 1));
    // INVALIDATE_ALL of every context, then the same again.
    pt.unmap(VA, PageSize::Size4K);
    h.run(&[
        Cmd::invalidate_all(0xffff),
        Cmd::job(abi::OP_JOB_CHECKSUM, 0, VA, 0, PAGE, 0, rec(2), 0, 3),
    ]);
    wait_until("fault after INVALIDATE_ALL", || {
        load_u32(&h.mem, WB + abi::WB_FR_PUT) == 2
    });
    h.run(&[Cmd::cancel_all(0)]);
    assert_eq!(h.wait_completion(rec(2)).status, abi::JOB_CANCELLED);
    assert!(
        stat(&h, abi::STAT_INVALIDATIONS) >= 3,
        "BIND, INVALIDATE, INVALIDATE_ALL"
    );
}

#[test]
fn ring_overflow_loses_nothing() {
    let (mut h, mut pt) = setup();
    h.set_reg(abi::REG_FR_CONTROL, 0);
    h.program_fault_ring(FR_BASE, 2, 0);
    let mut ring = FaultReader::new(FR_BASE, 2);
    let pa_of = |va: u64| DATA + (va - VA);
    // 4 lanes strided over 16 pages: 4 faults at once into a ring of 2.
    h.run(&[Cmd::job(
        abi::OP_JOB_FILL,
        0,
        0,
        VA,
        16 * PAGE,
        0xee,
        rec(0),
        a5(1, 0, 4, 0),
        5,
    )]);
    wait_until("overflows", || {
        load_u32(&h.mem, WB + abi::WB_FR_OVERFLOWS) >= 2
    });
    assert_eq!(h.reg(abi::REG_FR_PUT), 2);
    let (seen, c) = service_until(&mut h, &mut pt, &mut ring, rec(0), &pa_of);
    assert_eq!(c.status, abi::JOB_OK);
    assert!(read_bytes(&h.mem, DATA, 16 * PAGE as usize)
        .iter()
        .all(|&b| b == 0xee));
    let mut pages: Vec<u64> = seen.iter().map(|e| e.va).collect();
    pages.sort_unstable();
    pages.dedup();
    assert_eq!(pages.len(), 16, "every page faulted and was serviced");
    let overflows = u64::from(load_u32(&h.mem, WB + abi::WB_FR_OVERFLOWS));
    assert!(overflows >= 2);
    assert_eq!(stat(&h, abi::STAT_FAULT_OVERFLOWS), overflows);
    assert_eq!(stat(&h, abi::STAT_RING_HIGH_WATER), 2);
    assert_eq!(
        stat(&h, abi::STAT_FAULTS_WRITE),
        seen.len() as u64 + overflows,
        "every fault taken is either posted or counted as an overflow"
    );
    assert_eq!(u64::from(c.faults), seen.len() as u64 + overflows);
}

#[test]
fn fault_interrupt_rearms_on_get_and_never_strands() {
    let (mut h, _pt) = setup();
    let mut ring = FaultReader::new(FR_BASE, 64);
    h.run(&[Cmd::job(
        abi::OP_JOB_FILL,
        0,
        0,
        VA,
        2 * PAGE,
        1,
        rec(0),
        a5(1, 0, 2, 0),
        1,
    )]);
    wait_until("two faults", || h.reg(abi::REG_FR_PUT) == 2);
    h.sink.wait_for(abi::VEC_FAULT, 1);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(h.sink.count(abi::VEC_FAULT), 1, "raising disarms: no storm");
    let batch = ring.drain(&h.mem);
    assert_eq!(batch.len(), 2);
    h.set_reg(abi::REG_FR_GET, 1);
    h.sink.wait_for(abi::VEC_FAULT, 2);
    h.set_reg(abi::REG_FR_GET, 2);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(
        h.sink.count(abi::VEC_FAULT),
        2,
        "GET == PUT: armed, nothing to signal"
    );
    // Replay without servicing: both faults come back as duplicates-in-time, one interrupt.
    h.run(&[Cmd::replay(0)]);
    wait_until("re-faults", || h.reg(abi::REG_FR_PUT) == 4);
    h.sink.wait_for(abi::VEC_FAULT, 3);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(h.sink.count(abi::VEC_FAULT), 3);
    // A GET beyond PUT is ignored.
    h.set_reg(abi::REG_FR_GET, 9);
    assert_eq!(h.reg(abi::REG_ERROR), abi::ERR_NONE);
    h.run(&[Cmd::cancel_all(0)]);
    assert_eq!(h.wait_completion(rec(0)).status, abi::JOB_CANCELLED);
}

#[test]
fn fault_interrupt_moderation_delays_the_signal() {
    let (mut h, _pt) = setup();
    h.set_reg(abi::REG_FR_CONTROL, 0);
    h.program_fault_ring(FR_BASE, 64, 10_000);
    let start = Instant::now();
    h.run(&[Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, PAGE, 1, rec(0), 0, 1)]);
    wait_until("fault", || h.reg(abi::REG_FR_PUT) == 1);
    if start.elapsed() < Duration::from_millis(8) {
        assert_eq!(h.sink.count(abi::VEC_FAULT), 0, "moderated");
    }
    h.sink.wait_for(abi::VEC_FAULT, 1);
    assert!(
        start.elapsed() >= Duration::from_millis(10),
        "not before the delay"
    );
    h.run(&[Cmd::cancel_all(0)]);
    assert_eq!(h.wait_completion(rec(0)).status, abi::JOB_CANCELLED);
}

#[test]
fn page_table_errors_fail_the_job() {
    let (mut h, mut pt) = setup();
    // PTE target outside guest memory.
    pt.map(VA, 0x2000_0000, PageSize::Size4K, RWA);
    // Reserved bit 5 in a leaf.
    pt.set(
        VA + PAGE,
        PageSize::Size4K,
        DATA | RWA | abi::PTE_VALID | 1 << 5,
    );
    // A 2 MiB leaf whose frame is not 2 MiB aligned.
    pt.set(
        VA_2M,
        PageSize::Size2M,
        (FRAME_2M + PAGE) | RWA | abi::PTE_VALID | abi::PTE_LEAF,
    );
    // A table pointer outside guest memory.
    pt.set(VA_1G, PageSize::Size1G, 0x4000_0000_0000 | abi::PTE_VALID);
    h.run(&[
        Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, 8, 1, rec(0), 0, 1),
        Cmd::job(abi::OP_JOB_FILL, 0, 0, VA + PAGE, 8, 1, rec(1), 0, 2),
        Cmd::job(abi::OP_JOB_FILL, 0, 0, VA_2M, 8, 1, rec(2), 0, 3),
        Cmd::job(abi::OP_JOB_FILL, 0, 0, VA_1G, 8, 1, rec(3), 0, 4),
        Cmd::job(abi::OP_JOB_FILL, 0, 0, (1 << 48) - 4, 8, 1, rec(4), 0, 5),
        Cmd::job(abi::OP_JOB_FILL, 2, 0, VA, 8, 1, rec(5), 0, 6),
        Cmd::job(abi::OP_JOB_ATOMIC_ADD, 0, 0, VA + 4, 8, 1, rec(6), 0, 7),
        Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, 8, 1, rec(7), a5(0, 7, 0, 0), 8),
    ]);
    let status: Vec<u32> = (0..8).map(|i| h.wait_completion(rec(i)).status).collect();
    assert_eq!(
        status,
        vec![
            abi::JOB_DMA_ERROR,
            abi::JOB_PT_ERROR,
            abi::JOB_PT_ERROR,
            abi::JOB_DMA_ERROR,
            abi::JOB_INVALID,
            abi::JOB_UNBOUND,
            abi::JOB_INVALID,
            abi::JOB_INVALID,
        ]
    );
    assert_eq!(
        h.reg(abi::REG_ERROR),
        abi::ERR_NONE,
        "job errors are not queue errors"
    );
}

#[test]
fn root_outside_memory_fails_jobs_and_misaligned_root_is_bad_arg() {
    let (mut h, _pt) = setup();
    h.run(&[
        Cmd::bind(1, RAM_SIZE + (64 << 20)),
        Cmd::job(abi::OP_JOB_CHECKSUM, 1, VA, 0, 8, 0, rec(0), 0, 1),
    ]);
    assert_eq!(h.wait_completion(rec(0)).status, abi::JOB_DMA_ERROR);
    h.submit(&[Cmd::bind(1, PT + 8)]);
    assert_eq!(h.wait_error(), abi::ERR_BAD_ARG);
    assert_eq!(
        h.reg(abi::REG_ERROR_INFO),
        3,
        "BIND, BIND, CHECKSUM, bad BIND"
    );
}

#[test]
fn bad_fault_rings_are_fr_config() {
    for (base, size) in [
        (RAM_SIZE - 1024, 64),
        (FR_BASE, 3),
        (FR_BASE + 64, 4),
        (FR_BASE, 1),
    ] {
        let mut h = Harness::with_config(config());
        h.enable_msix();
        h.start_queue(CQ_BASE, 16);
        h.program_fault_ring(base, size, 0);
        assert_eq!(
            h.wait_error(),
            abi::ERR_FR_CONFIG,
            "ring {base:#x} x {size}"
        );
        assert_eq!(h.reg(abi::REG_STATUS) & abi::STATUS_FAULT_RING_ENABLED, 0);
    }
}

#[test]
fn completion_record_outside_memory_is_a_queue_error() {
    let (mut h, _pt) = setup();
    h.submit(&[Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, 8, 1, RAM_SIZE, 0, 1)]);
    assert_eq!(h.wait_error(), abi::ERR_FENCE_DMA);
    assert_eq!(h.reg(abi::REG_ERROR_INFO), 1);
    let (mut h, _pt) = setup();
    h.submit(&[Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, 8, 1, REC + 8, 0, 1)]);
    assert_eq!(h.wait_error(), abi::ERR_BAD_ARG);
}

#[test]
fn unbind_fails_stalled_jobs_with_unbound() {
    let (mut h, _pt) = setup();
    h.run(&[Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, PAGE, 1, rec(0), 0, 1)]);
    wait_until("fault", || h.reg(abi::REG_FR_PUT) == 1);
    h.run(&[
        Cmd::unbind(0),
        Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, PAGE, 1, rec(1), 0, 2),
    ]);
    assert_eq!(h.wait_completion(rec(0)).status, abi::JOB_UNBOUND);
    assert_eq!(h.wait_completion(rec(1)).status, abi::JOB_UNBOUND);
}

#[test]
fn fence_wait_jobs_waits_for_earlier_jobs() {
    let (mut h, mut pt) = setup();
    for i in 0..64 {
        pt.map(VA + i * PAGE, DATA + i * PAGE, PageSize::Size4K, RWA);
    }
    let mut cmds = Vec::new();
    for i in 0..8 {
        cmds.push(Cmd::job(
            abi::OP_JOB_CHECKSUM,
            0,
            VA,
            0,
            64 * PAGE,
            0,
            rec(i),
            a5(0, 0xff, 1, 64),
            i,
        ));
    }
    cmds.push(Cmd {
        flags: abi::CMD_F_WAIT_JOBS,
        ..Cmd::fence(SCRATCH, 1, 0)
    });
    h.run(&cmds);
    assert_eq!(h.read_u64(SCRATCH), 1);
    for i in 0..8 {
        assert_eq!(
            load_u32(&h.mem, rec(i) + abi::COMPL_OFF_STATUS),
            abi::JOB_OK,
            "job {i} complete before the fence"
        );
    }
}

#[test]
fn stats_block_includes_mmu_counters() {
    let (mut h, mut pt) = setup();
    pt.map(VA, DATA, PageSize::Size4K, RWA);
    h.run(&[
        Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, PAGE, 1, rec(0), 0, 1),
        Cmd {
            flags: abi::CMD_F_WAIT_JOBS,
            ..Cmd::fence(SCRATCH + 4096, 1, 0)
        },
        Cmd::stats(SCRATCH, 4096),
    ]);
    let block: Vec<u64> = (0..u64::from(abi::STAT_COUNT))
        .map(|i| h.read_u64(SCRATCH + 8 * i))
        .collect();
    assert_eq!(block[abi::STAT_JOBS as usize], 1);
    assert_eq!(block[abi::STAT_COMMANDS as usize], 3, "BIND, FILL, FENCE");
    assert!(block[abi::STAT_WALKS as usize] >= 1);
    assert!(
        block[abi::STAT_INVALIDATIONS as usize] >= 1,
        "BIND invalidates"
    );
    assert_eq!(
        block[abi::STAT_TLB_MISSES as usize],
        block[abi::STAT_WALKS as usize]
    );
}

/// Starts a long mapped COPY and two stalled jobs, resets with `reset`, and checks: every record says
/// ABORTED the moment the reset returns, and no byte of guest memory changes afterwards.
fn reset_aborts_everything(reset: impl FnOnce(&Harness)) {
    let (mut h, mut pt) = setup();
    let big = 512 * PAGE;
    for i in 0..512 {
        pt.map(
            VA + i * PAGE,
            DATA + (i % 256) * PAGE,
            PageSize::Size4K,
            RWA,
        );
    }
    pt.map(VA_2M, FRAME_2M, PageSize::Size2M, RWA);
    h.run(&[
        Cmd::job(
            abi::OP_JOB_FILL,
            0,
            0,
            VA + 0x100_0000,
            PAGE,
            1,
            rec(0),
            a5(0, 0, 1, 0),
            1,
        ),
        Cmd::job(
            abi::OP_JOB_CHECKSUM,
            0,
            VA + 0x200_0000,
            0,
            PAGE,
            0,
            rec(1),
            a5(0, 0, 1, 0),
            2,
        ),
    ]);
    wait_until("two stalls", || h.reg(abi::REG_FR_PUT) == 2);
    // Many big jobs so that some are surely running when the reset comes.
    let mut cmds = Vec::new();
    for i in 0..16 {
        cmds.push(Cmd::job(
            abi::OP_JOB_ATOMIC_ADD,
            0,
            0,
            VA_2M,
            2 << 20,
            1,
            rec(2 + i),
            a5(2, 1, 0, 8192),
            3 + i,
        ));
    }
    cmds.push(Cmd::job(
        abi::OP_JOB_COPY,
        0,
        VA,
        VA_2M,
        big,
        0,
        rec(18),
        a5(0, 1, 0, 0),
        99,
    ));
    h.run(&cmds);
    reset(&h);
    let statuses: Vec<u32> = (0..19)
        .map(|i| load_u32(&h.mem, rec(i) + abi::COMPL_OFF_STATUS))
        .collect();
    assert_eq!(
        &statuses[..2],
        &[abi::JOB_ABORTED, abi::JOB_ABORTED],
        "stalled jobs"
    );
    assert!(
        statuses
            .iter()
            .all(|&s| s == abi::JOB_ABORTED || s == abi::JOB_OK),
        "{statuses:?}"
    );
    assert!(statuses.contains(&abi::JOB_ABORTED));
    let snapshot = read_bytes(&h.mem, 0, RAM_SIZE as usize);
    std::thread::sleep(Duration::from_millis(30));
    assert!(
        read_bytes(&h.mem, 0, RAM_SIZE as usize) == snapshot,
        "guest memory written after reset"
    );
}

#[test]
fn device_reset_aborts_running_and_stalled_jobs() {
    reset_aborts_everything(|h| h.dev.reset());
}

#[test]
fn control_reset_aborts_running_and_stalled_jobs() {
    reset_aborts_everything(|h| h.set_reg(abi::REG_CONTROL, abi::CTRL_RESET));
}

#[test]
fn shutdown_aborts_running_and_stalled_jobs_and_joins() {
    reset_aborts_everything(|h| h.dev.shutdown());
}

#[test]
fn device_works_again_after_reset() {
    let (mut h, mut pt) = setup();
    h.run(&[Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, PAGE, 1, rec(0), 0, 1)]);
    wait_until("stall", || h.reg(abi::REG_FR_PUT) == 1);
    h.dev.reset();
    assert_eq!(
        load_u32(&h.mem, rec(0) + abi::COMPL_OFF_STATUS),
        abi::JOB_ABORTED
    );
    assert_eq!(
        h.dev.stats().iter().sum::<u64>(),
        0,
        "counters cleared by reset"
    );
    h.enable_msix();
    h.start_queue(CQ_BASE, 64);
    h.program_fault_ring(FR_BASE, 64, 0);
    pt.map(VA, DATA, PageSize::Size4K, RWA);
    h.run(&[
        Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, PAGE, 2, rec(1), 0, 2),
        Cmd::bind(0, pt.root()),
        Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, PAGE, 3, rec(2), 0, 3),
    ]);
    assert_eq!(
        h.wait_completion(rec(1)).status,
        abi::JOB_UNBOUND,
        "reset unbinds"
    );
    assert_eq!(h.wait_completion(rec(2)).status, abi::JOB_OK);
    assert!(read_bytes(&h.mem, DATA, PAGE as usize)
        .iter()
        .all(|&b| b == 3));
}

#[test]
fn a_wait_jobs_fence_stuck_behind_a_stall_is_released_by_reset() {
    let (mut h, mut pt) = setup();
    h.run(&[Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, PAGE, 1, rec(0), 0, 1)]);
    wait_until("stall", || h.reg(abi::REG_FR_PUT) == 1);
    // The FENCE waits for the stalled job; the REPLAY behind it cannot run (spec: queue order).
    h.submit(&[
        Cmd {
            flags: abi::CMD_F_WAIT_JOBS,
            ..Cmd::fence(SCRATCH, 1, 0)
        },
        Cmd::replay(0),
    ]);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(h.read_u64(SCRATCH), 0, "the fence waits");
    h.dev.reset();
    assert_eq!(
        load_u32(&h.mem, rec(0) + abi::COMPL_OFF_STATUS),
        abi::JOB_ABORTED
    );
    assert_eq!(
        h.read_u64(SCRATCH),
        0,
        "the old queue's fence is never written"
    );
    // The worker is free again: a new queue runs.
    h.enable_msix();
    h.start_queue(CQ_BASE, 64);
    pt.map(VA, DATA, PageSize::Size4K, RWA);
    h.run(&[
        Cmd::bind(0, pt.root()),
        Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, PAGE, 4, rec(1), 0, 2),
        Cmd {
            flags: abi::CMD_F_WAIT_JOBS,
            ..Cmd::fence(SCRATCH, 2, 0)
        },
    ]);
    assert_eq!(h.read_u64(SCRATCH), 2);
    assert_eq!(
        load_u32(&h.mem, rec(1) + abi::COMPL_OFF_STATUS),
        abi::JOB_OK
    );
}

#[test]
fn counters_survive_shutdown_for_the_final_report() {
    let (mut h, mut pt) = setup();
    pt.map(VA, DATA, PageSize::Size4K, RWA);
    h.run(&[Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, PAGE, 1, rec(0), 0, 1)]);
    h.wait_completion(rec(0));
    h.dev.shutdown();
    let stats = h.dev.stats();
    assert_eq!(stats[abi::STAT_JOBS as usize], 1);
    assert!(stats[abi::STAT_WALKS as usize] >= 1);
    // Commands after shutdown are never consumed (the driver owns them).
    h.submit(&[Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, PAGE, 2, rec(1), 0, 2)]);
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(load_u32(&h.mem, rec(1) + abi::COMPL_OFF_STATUS), 0);
}

#[test]
fn atomic_add_is_a_real_rmw_against_concurrent_cpu_atomics() {
    use std::sync::atomic::AtomicU64;
    use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryBackend, VolatileMemory};
    let (mut h, mut pt) = setup();
    pt.map(VA, DATA, PageSize::Size4K, RWA);
    write_bytes(&h.mem, DATA, &[0u8; PAGE as usize]);
    const JOBS: u64 = 24;
    const CPU_ROUNDS: u64 = 2000;
    let mem = h.mem.clone();
    let cpu = std::thread::spawn(move || {
        let m = mem.memory();
        let s = m.get_slice(GuestAddress(DATA), PAGE as usize).unwrap();
        for _ in 0..CPU_ROUNDS {
            for w in 0..(PAGE as usize / 8) {
                s.get_atomic_ref::<AtomicU64>(w * 8)
                    .unwrap()
                    .fetch_add(1 << 32, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let cmds: Vec<Cmd> = (0..JOBS)
        .map(|i| {
            Cmd::job(
                abi::OP_JOB_ATOMIC_ADD,
                0,
                0,
                VA,
                PAGE,
                1,
                rec(i),
                a5(2, 0xff, 0, 64),
                i,
            )
        })
        .collect();
    h.run(&cmds);
    for i in 0..JOBS {
        assert_eq!(h.wait_completion(rec(i)).status, abi::JOB_OK);
    }
    cpu.join().unwrap();
    let words = read_bytes(&h.mem, DATA, PAGE as usize);
    for (w, b) in words.chunks(8).enumerate() {
        let v = u64::from_le_bytes(b.try_into().unwrap());
        assert_eq!(v, JOBS + (CPU_ROUNDS << 32), "word {w}: an add was lost");
    }
}

/// The driver DMA-unmaps memory the device still uses: a fault ring (the next post is FL_ERR_FR_CONFIG,
/// the lane stays stalled until reset) and a completion record (the job completes without a record and the
/// device goes on).
#[test]
fn memory_unmapped_under_the_device_is_reported_not_touched() {
    use common::{HIGH_RAM, HIGH_RAM_SIZE};
    use vm_memory::{GuestAddress, GuestAddressSpace};
    let drop_high_ram = |h: &Harness| {
        let smaller = h
            .mem
            .memory()
            .remove_region(GuestAddress(HIGH_RAM), HIGH_RAM_SIZE)
            .unwrap()
            .0;
        h.mem.lock().unwrap().replace(smaller);
    };
    // The fault ring disappears.
    let (mut h, _pt) = setup();
    h.set_reg(abi::REG_FR_CONTROL, 0);
    h.program_fault_ring(HIGH_RAM, 64, 0);
    drop_high_ram(&h);
    // Not `run`: the lane's error may stop the queue before the head is published past the job.
    h.submit(&[Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, PAGE, 9, rec(0), 0, 1)]);
    assert_eq!(h.wait_error(), abi::ERR_FR_CONFIG);
    assert_eq!(h.reg(abi::REG_STATUS) & abi::STATUS_FAULT_RING_ENABLED, 0);
    h.dev.reset();
    assert_eq!(
        load_u32(&h.mem, rec(0) + abi::COMPL_OFF_STATUS),
        abi::JOB_ABORTED
    );
    // The completion record disappears while the job is stalled.
    let (mut h, mut pt) = setup();
    let mut ring = FaultReader::new(FR_BASE, 64);
    h.run(&[Cmd::job(
        abi::OP_JOB_FILL,
        0,
        0,
        VA,
        PAGE,
        9,
        HIGH_RAM,
        0,
        1,
    )]);
    wait_until("fault", || h.reg(abi::REG_FR_PUT) == 1);
    drop_high_ram(&h);
    pt.map(VA, DATA, PageSize::Size4K, RWA);
    ring.drain(&h.mem);
    h.set_reg(abi::REG_FR_GET, ring.get);
    h.run(&[
        Cmd::replay(0),
        Cmd {
            flags: abi::CMD_F_WAIT_JOBS,
            ..Cmd::fence(SCRATCH, 1, 0)
        },
    ]);
    assert_eq!(h.read_u64(SCRATCH), 1, "the job completed");
    assert!(read_bytes(&h.mem, DATA, PAGE as usize)
        .iter()
        .all(|&b| b == 9));
    assert_eq!(h.reg(abi::REG_ERROR), abi::ERR_NONE);
}

#[test]
fn huge_invalid_jobs_complete_without_running() {
    let (mut h, _pt) = setup();
    h.run(&[
        // 2^40 chunks of one byte: over the checksum chunk limit.
        Cmd::job(
            abi::OP_JOB_CHECKSUM,
            0,
            0,
            0,
            1 << 40,
            0,
            rec(0),
            a5(0, 0, 0, 1),
            1,
        ),
        // A zero-length job completes at once.
        Cmd::job(abi::OP_JOB_CHECKSUM, 0, VA, 0, 0, 0, rec(1), 0, 2),
    ]);
    assert_eq!(h.wait_completion(rec(0)).status, abi::JOB_INVALID);
    let c = h.wait_completion(rec(1));
    assert_eq!(
        (c.status, c.bytes, c.result),
        (abi::JOB_OK, 0, job_checksum(&[], 0))
    );
}

#[test]
fn faults_on_a_page_already_faulted_count_as_duplicates() {
    let (mut h, mut pt) = setup();
    let mut ring = FaultReader::new(FR_BASE, 64);
    // Two writers of the same page on different engines: the second fault duplicates the first.
    h.run(&[
        Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, 64, 1, rec(0), a5(0, 0, 1, 0), 1),
        Cmd::job(
            abi::OP_JOB_FILL,
            0,
            0,
            VA + 64,
            64,
            2,
            rec(1),
            a5(0, 1, 1, 0),
            2,
        ),
    ]);
    wait_until("two faults", || h.reg(abi::REG_FR_PUT) == 2);
    assert_eq!(stat(&h, abi::STAT_DUPLICATES), 1);
    let batch = ring.drain(&h.mem);
    assert_eq!(batch[0].va, batch[1].va);
    assert_ne!(batch[0].engine, batch[1].engine);
    pt.map(VA, DATA, PageSize::Size4K, RWA);
    h.set_reg(abi::REG_FR_GET, ring.get);
    h.run(&[Cmd::replay(0)]);
    assert_eq!(h.wait_completion(rec(0)).status, abi::JOB_OK);
    assert_eq!(h.wait_completion(rec(1)).status, abi::JOB_OK);
    let page = read_bytes(&h.mem, DATA, 128);
    assert!(page[..64].iter().all(|&b| b == 1) && page[64..].iter().all(|&b| b == 2));
}

/// A device whose every job stalls (context 0 bound to empty tables) behind a 32 768-entry queue.
fn setup_big_queue() -> (Harness, PageTables) {
    const BIG_CQ: u64 = 0xc0_0000;
    let mut h = Harness::with_config(config());
    h.enable_msix();
    h.start_queue(BIG_CQ, 32768);
    h.program_fault_ring(FR_BASE, 64, 0);
    let pt = PageTables::new(&h.mem, PT, PT_BYTES);
    h.run(&[Cmd::bind(0, pt.root())]);
    (h, pt)
}

/// Jobs the device accepted over its life (`FL_STAT_JOBS`, summed across resets).
fn jobs_accepted(h: &Harness) -> u64 {
    h.dev.session_stats()[abi::STAT_JOBS as usize]
}

#[test]
fn outstanding_jobs_are_capped_and_the_queue_waits() {
    use faultline_device::jobs::MAX_OUTSTANDING_JOBS;
    let (mut h, _pt) = setup_big_queue();
    let n = MAX_OUTSTANDING_JOBS as u64 + 16;
    let cmds: Vec<Cmd> = (0..n)
        .map(|i| Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, PAGE, 1, rec(i), 0, i))
        .collect();
    // Every job stalls on a fault nobody services: the worker must stop at the cap.
    h.submit(&cmds);
    wait_until("the cap of outstanding jobs", || {
        jobs_accepted(&h) >= MAX_OUTSTANDING_JOBS as u64
    });
    // A reset waits for the worker's current step, so after it nothing more was accepted.
    h.dev.reset();
    assert_eq!(
        jobs_accepted(&h),
        MAX_OUTSTANDING_JOBS as u64,
        "jobs accepted beyond the cap"
    );
    let aborted = (0..n)
        .filter(|&i| h.read_u32(rec(i) + abi::COMPL_OFF_STATUS) == abi::JOB_ABORTED)
        .count();
    let untouched = (0..n)
        .filter(|&i| h.read_u32(rec(i) + abi::COMPL_OFF_STATUS) == 0)
        .count();
    assert_eq!((aborted, untouched), (MAX_OUTSTANDING_JOBS, 16));
}

#[test]
fn jobs_beyond_the_cap_run_once_earlier_ones_complete() {
    use faultline_device::jobs::MAX_OUTSTANDING_JOBS;
    let (mut h, mut pt) = setup_big_queue();
    pt.map(VA, DATA, PageSize::Size4K, RWA);
    let n = MAX_OUTSTANDING_JOBS as u64 + 64;
    let mut cmds: Vec<Cmd> = (0..n)
        .map(|i| Cmd::job(abi::OP_JOB_FILL, 0, 0, VA, 64, 1, rec(i), 0, i))
        .collect();
    cmds.push(Cmd {
        flags: abi::CMD_F_WAIT_JOBS,
        ..Cmd::fence(SCRATCH, 7, 0)
    });
    h.run(&cmds);
    assert_eq!(h.read_u64(SCRATCH), 7);
    for i in 0..n {
        assert_eq!(
            h.read_u32(rec(i) + abi::COMPL_OFF_STATUS),
            abi::JOB_OK,
            "job {i}"
        );
    }
}

#[test]
fn checksum_digests_are_bounded() {
    use faultline_device::jobs::{MAX_CHECKSUM_CHUNKS, MAX_DIGEST_BYTES};
    let (mut h, _pt) = setup_big_queue();
    // CHECKSUMs of 2^16 one-byte chunks, 512 KiB of digests each (a sixteenth of the largest
    // there is); all stall.
    let chunks = MAX_CHECKSUM_CHUNKS / 16;
    let per_job = chunks * 8;
    let fit = MAX_DIGEST_BYTES / per_job;
    let cmds: Vec<Cmd> = (0..fit + 16)
        .map(|i| {
            Cmd::job(
                abi::OP_JOB_CHECKSUM,
                0,
                VA,
                0,
                chunks,
                0,
                rec(i),
                a5(0, 0xff, 1, 1),
                i,
            )
        })
        .collect();
    h.submit(&cmds);
    wait_until("the digest budget to fill", || jobs_accepted(&h) >= fit);
    h.dev.reset();
    assert_eq!(
        jobs_accepted(&h),
        fit,
        "CHECKSUM jobs accepted beyond the digest budget"
    );
}
