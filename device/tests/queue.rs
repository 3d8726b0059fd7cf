//! The command queue: ordering, fences, interrupts, errors and reset.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{Cmd, Harness, CQ_BASE, HIGH_RAM, HIGH_RAM_SIZE, RAM_SIZE, SCRATCH, TIMEOUT, WB};
use faultline_device::abi;

/// A harness with MSI-X enabled and a running queue of `size` entries at [`CQ_BASE`].
fn setup(size: u32) -> Harness {
    let mut h = Harness::new();
    h.enable_msix();
    h.start_queue(CQ_BASE, size);
    h
}

/// Asserts the complete error report of spec section 8.
fn assert_error(h: &Harness, code: u32) {
    assert_eq!(h.wait_error(), code, "FL_REG_ERROR");
    assert_eq!(h.reg(abi::REG_STATUS) & abi::STATUS_QUEUE_RUNNING, 0);
    h.sink.wait_for(abi::VEC_ERROR, 1);
    assert_eq!(h.sink.count(abi::VEC_ERROR), 1);
}

#[test]
fn nops_and_fences_in_order_100k() {
    const TOTAL: u32 = 100_000;
    const FENCE_EVERY: u32 = 64;
    const FENCES: u64 = SCRATCH;
    let mut h = setup(1024);
    let mut fences = 0u64; // fences submitted
    let mut checked = 0u64; // fences verified against the writeback head
    let mut fence_index = Vec::new(); // command index of each fence
    let mut submitted = 0u32;
    while submitted < TOTAL {
        let room = h.room();
        if room == 0 {
            std::thread::yield_now();
        }
        let n = room.min(TOTAL - submitted).min(200);
        let mut chunk = Vec::with_capacity(n as usize);
        for i in submitted..submitted + n {
            if i % FENCE_EVERY == FENCE_EVERY - 1 {
                chunk.push(Cmd::fence(FENCES + 8 * fences, fences + 1, 0));
                fence_index.push(i);
                fences += 1;
            } else {
                chunk.push(Cmd::nop());
            }
        }
        if n > 0 {
            h.submit(&chunk);
            submitted += n;
        }
        // Every fence the device reports consumed has its value in memory (effects before head).
        let head = h.wb_head();
        while (checked as usize) < fence_index.len() && fence_index[checked as usize] < head {
            assert_eq!(
                h.read_u64(FENCES + 8 * checked),
                checked + 1,
                "fence {checked} not visible with head {head}"
            );
            checked += 1;
        }
    }
    // A final fence with an interrupt; its IRQ must find the head past it. The loop may have left the
    // queue full: wait for a free slot first (or the doorbell would be FL_ERR_BAD_TAIL).
    common::wait_until("a free queue slot", || h.room() > 0);
    h.submit(&[Cmd::fence(FENCES + 8 * fences, u64::MAX, abi::CMD_F_IRQ)]);
    h.sink.wait_for(abi::VEC_QUEUE, 1);
    let irq = h.sink.irqs()[0];
    assert_eq!(
        irq.wb_head,
        TOTAL + 1,
        "head published before the interrupt"
    );
    h.drain();
    assert_eq!(h.wb_completed(), u64::from(TOTAL) + 1);
    assert_eq!(h.reg(abi::REG_CQ_HEAD), TOTAL + 1);
    for k in 0..fences {
        assert_eq!(h.read_u64(FENCES + 8 * k), k + 1, "fence {k}");
    }
    assert_eq!(h.read_u64(FENCES + 8 * fences), u64::MAX);
    assert_eq!(
        h.dev.stats()[abi::STAT_COMMANDS as usize],
        u64::from(TOTAL) + 1
    );
    assert_eq!(h.reg(abi::REG_ERROR), abi::ERR_NONE);
    assert_eq!(h.sink.count(abi::VEC_ERROR), 0);
}

#[test]
fn fence_writes_value_then_raises_vector_0() {
    let mut h = setup(16);
    h.write_u64(SCRATCH, 0);
    h.submit(&[
        Cmd::nop(),
        Cmd::nop(),
        Cmd::fence(SCRATCH, 0x1234_5678_9abc_def0, abi::CMD_F_IRQ),
    ]);
    h.sink.wait_for(abi::VEC_QUEUE, 1);
    assert_eq!(h.read_u64(SCRATCH), 0x1234_5678_9abc_def0);
    let irqs = h.sink.irqs();
    assert_eq!(irqs.len(), 1);
    assert_eq!(
        irqs[0].wb_head, 3,
        "writeback head covers the fence when the IRQ fires"
    );
    h.drain();
    assert_eq!(h.wb_completed(), 3);
    // Without FL_CMD_F_IRQ: value written, no interrupt.
    h.submit(&[Cmd::fence(SCRATCH + 8, 5, 0)]);
    h.drain();
    assert_eq!(h.read_u64(SCRATCH + 8), 5);
    assert_eq!(h.sink.irqs().len(), 1);
    // A fence into the second memory region.
    h.submit(&[Cmd::fence(HIGH_RAM + 8, 6, 0)]);
    h.drain();
    assert_eq!(h.read_u64(HIGH_RAM + 8), 6);
}

#[test]
fn stats_command_writes_the_counter_block() {
    let mut h = setup(16);
    let buf = SCRATCH;
    let len = u64::from(abi::STAT_COUNT) * 8;
    for off in (0..len + 8).step_by(8) {
        h.write_u64(buf + off, 0xdead);
    }
    h.submit(&[Cmd::nop(), Cmd::nop(), Cmd::nop(), Cmd::stats(buf, 4096)]);
    h.drain();
    assert_eq!(h.read_u64(buf + 8 * u64::from(abi::STAT_COMMANDS)), 3);
    for k in 1..u64::from(abi::STAT_COUNT) {
        assert_eq!(h.read_u64(buf + 8 * k), 0, "counter {k}");
    }
    assert_eq!(h.read_u64(buf + len), 0xdead, "nothing past the block");
    // At most a1 bytes.
    h.write_u64(buf, 0xdead);
    h.write_u64(buf + 8, 0xdead);
    h.submit(&[Cmd::stats(buf, 8)]);
    h.drain();
    assert_eq!(h.read_u64(buf), 4);
    assert_eq!(h.read_u64(buf + 8), 0xdead);
    assert_eq!(h.dev.stats().len(), abi::STAT_COUNT as usize);
    assert_eq!(h.dev.stats()[abi::STAT_COMMANDS as usize], 5);
}

#[test]
fn base_outside_memory_is_cq_config() {
    let mut h = Harness::new();
    h.enable_msix();
    h.program_queue(RAM_SIZE, 64, WB);
    assert_error(&h, abi::ERR_CQ_CONFIG);
    assert_eq!(
        h.wb_error(),
        abi::ERR_CQ_CONFIG,
        "writeback block was valid"
    );
    assert_eq!(h.reg(abi::REG_CQ_CONTROL), 0);
}

#[test]
fn ring_crossing_the_end_of_memory_is_cq_config() {
    let mut h = Harness::new();
    h.enable_msix();
    h.program_queue(HIGH_RAM + HIGH_RAM_SIZE - 4096, 128, WB);
    assert_error(&h, abi::ERR_CQ_CONFIG);
}

#[test]
fn misaligned_base_is_cq_config() {
    let mut h = Harness::new();
    h.enable_msix();
    h.program_queue(CQ_BASE + 64, 64, WB);
    assert_error(&h, abi::ERR_CQ_CONFIG);
}

#[test]
fn bad_sizes_are_cq_config() {
    for size in [0, 1, 3, 100, abi::CQ_MAX_ENTRIES * 2] {
        let mut h = Harness::new();
        h.enable_msix();
        h.program_queue(CQ_BASE, size, WB);
        assert_error(&h, abi::ERR_CQ_CONFIG);
    }
}

#[test]
fn misaligned_writeback_is_wb_config() {
    let mut h = Harness::new();
    h.enable_msix();
    h.program_queue(CQ_BASE, 64, WB + 32);
    assert_error(&h, abi::ERR_WB_CONFIG);
}

#[test]
fn writeback_outside_memory_is_wb_config() {
    let mut h = Harness::new();
    h.enable_msix();
    h.program_queue(CQ_BASE, 64, RAM_SIZE + 0x1000);
    assert_error(&h, abi::ERR_WB_CONFIG);
}

#[test]
fn unknown_opcode_stops_the_queue_at_its_index() {
    let mut h = setup(16);
    h.submit(&[
        Cmd::nop(),
        Cmd::nop(),
        Cmd::nop(),
        Cmd::op(0x7f),
        Cmd::nop(),
    ]);
    assert_error(&h, abi::ERR_BAD_OPCODE);
    assert_eq!(h.reg(abi::REG_ERROR_INFO), 3);
    assert_eq!(h.wb_error(), abi::ERR_BAD_OPCODE);
    assert_eq!(h.wb_head(), 3, "head stops at the failing command");
    assert_eq!(h.wb_completed(), 3);
    assert_eq!(h.reg(abi::REG_CQ_HEAD), 3);
}

#[test]
fn mmu_and_job_opcodes_check_their_context() {
    let h = setup(4);
    assert_eq!(
        h.reg(abi::REG_FEATURES),
        abi::FEAT_MMU | abi::FEAT_FAULT_RING | abi::FEAT_ENGINES
    );
    drop(h);
    for (op, context) in [
        (abi::OP_BIND, 16),
        (abi::OP_UNBIND, 0xffff),
        (abi::OP_INVALIDATE, 0xffff),
        (abi::OP_INVALIDATE_ALL, 16),
        (abi::OP_REPLAY, 100),
        (abi::OP_CANCEL, 0xffff),
        (abi::OP_CANCEL_ALL, 16),
        (abi::OP_JOB_FILL, 16),
        (abi::OP_JOB_COPY, 0xffff),
        (abi::OP_JOB_CHECKSUM, 16),
        (abi::OP_JOB_ATOMIC_ADD, 16),
    ] {
        let mut h = setup(4);
        h.submit(&[
            Cmd::nop(),
            Cmd {
                context,
                ..Cmd::op(op)
            },
        ]);
        assert_error(&h, abi::ERR_BAD_ARG);
        assert_eq!(h.reg(abi::REG_ERROR_INFO), 1, "opcode {op:#x}");
    }
    let mut h = setup(4);
    h.submit(&[Cmd::nop(), Cmd::op(0x7f)]);
    assert_error(&h, abi::ERR_BAD_OPCODE);
}

#[test]
fn nonzero_reserved_field_is_bad_opcode() {
    let mut h = setup(4);
    h.submit(&[Cmd {
        reserved: 1,
        ..Cmd::nop()
    }]);
    assert_error(&h, abi::ERR_BAD_OPCODE);
    assert_eq!(h.reg(abi::REG_ERROR_INFO), 0);
}

#[test]
fn misaligned_fence_is_bad_arg() {
    let mut h = setup(4);
    h.submit(&[Cmd::nop(), Cmd::fence(SCRATCH + 4, 1, abi::CMD_F_IRQ)]);
    assert_error(&h, abi::ERR_BAD_ARG);
    assert_eq!(h.reg(abi::REG_ERROR_INFO), 1);
    assert_eq!(h.sink.count(abi::VEC_QUEUE), 0);
}

#[test]
fn fence_outside_memory_is_fence_dma() {
    let mut h = setup(4);
    h.submit(&[Cmd::fence(RAM_SIZE, 1, 0)]);
    assert_error(&h, abi::ERR_FENCE_DMA);
    let mut h = setup(4);
    h.submit(&[Cmd::stats(HIGH_RAM + HIGH_RAM_SIZE - 8, 64)]);
    assert_error(&h, abi::ERR_FENCE_DMA);
}

#[test]
fn tail_beyond_head_plus_size_is_bad_tail() {
    let h = setup(8);
    h.set_reg(abi::REG_CQ_TAIL, 9);
    assert_error(&h, abi::ERR_BAD_TAIL);
    assert_eq!(h.reg(abi::REG_ERROR_INFO), 9);
    // A tail behind the head is just as bad.
    let h = setup(8);
    h.set_reg(abi::REG_CQ_TAIL, u32::MAX);
    assert_error(&h, abi::ERR_BAD_TAIL);
    // Exactly full is fine.
    let mut h = setup(8);
    h.submit(&[Cmd::nop(); 8]);
    h.drain();
    assert_eq!(h.reg(abi::REG_ERROR), abi::ERR_NONE);
}

#[test]
fn error_state_is_sticky_until_reset() {
    let mut h = setup(8);
    h.submit(&[Cmd::op(0x7f)]);
    assert_error(&h, abi::ERR_BAD_OPCODE);
    // Doorbells and re-enable are ignored.
    h.submit(&[Cmd::fence(SCRATCH, 1, 0)]);
    h.set_reg(abi::REG_CQ_CONTROL, 0);
    h.set_reg(abi::REG_CQ_CONTROL, abi::CQ_CTRL_ENABLE);
    assert_eq!(h.reg(abi::REG_ERROR), abi::ERR_BAD_OPCODE);
    assert_eq!(h.reg(abi::REG_STATUS) & abi::STATUS_QUEUE_RUNNING, 0);
    assert_eq!(h.sink.count(abi::VEC_ERROR), 1, "one error, one interrupt");
    // Recover with FL_CTRL_RESET.
    h.set_reg(abi::REG_CONTROL, abi::CTRL_RESET);
    assert_eq!(h.reg(abi::REG_ERROR), abi::ERR_NONE);
    assert_eq!(h.reg(abi::REG_STATUS), 0);
    h.start_queue(CQ_BASE, 8);
    assert_eq!(h.wb_error(), 0, "enable clears FL_WB_ERROR");
    h.submit(&[Cmd::fence(SCRATCH, 2, abi::CMD_F_IRQ)]);
    h.sink.wait_for(abi::VEC_QUEUE, 1);
    assert_eq!(h.read_u64(SCRATCH), 2);
}

#[test]
fn doorbell_on_disabled_queue_is_ignored() {
    let mut h = Harness::new();
    h.set_reg(abi::REG_CQ_TAIL, 5);
    assert_eq!(h.reg(abi::REG_ERROR), abi::ERR_NONE);
    h.start_queue(CQ_BASE, 8);
    h.set_reg(abi::REG_CQ_CONTROL, 0);
    h.set_reg(abi::REG_CQ_TAIL, 3);
    assert_eq!(h.reg(abi::REG_ERROR), abi::ERR_NONE);
    assert_eq!(h.reg(abi::REG_CQ_HEAD), 0);
}

/// Fills the ring with work, resets while the worker is busy, and checks that nothing is written
/// after the reset returned; then brings the queue up again elsewhere.
fn reset_mid_stream(reset: impl Fn(&Harness)) {
    let mut h = setup(abi::CQ_MAX_ENTRIES);
    let mut cmds = Vec::new();
    for i in 0..abi::CQ_MAX_ENTRIES as u64 {
        cmds.push(if i % 16 == 15 {
            Cmd::fence(SCRATCH + 8 * (i % 512), i, abi::CMD_F_IRQ)
        } else {
            Cmd::nop()
        });
    }
    h.submit(&cmds);
    reset(&h);
    assert_eq!(h.reg(abi::REG_STATUS) & abi::STATUS_QUEUE_RUNNING, 0);
    // From here on the device must not touch the old queue's writeback block or fence targets,
    // nor raise interrupts.
    let irqs = h.sink.irqs().len();
    h.write_u32(WB + abi::WB_CQ_HEAD, 0xdead_beef);
    for k in 0..512 {
        h.write_u64(SCRATCH + 8 * k, 0xdead_beef);
    }
    let stats_after_reset = h.dev.stats()[abi::STAT_COMMANDS as usize];
    // Give a misbehaving worker every chance to write (this is a negative check, not a timing one).
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(h.wb_head(), 0xdead_beef, "writeback written after reset");
    for k in 0..512 {
        assert_eq!(
            h.read_u64(SCRATCH + 8 * k),
            0xdead_beef,
            "fence {k} after reset"
        );
    }
    assert_eq!(h.sink.irqs().len(), irqs, "interrupt after reset");
    assert!(h.dev.stats()[abi::STAT_COMMANDS as usize] <= stats_after_reset + 1);

    // Re-initialise at a different place and run.
    h.enable_msix();
    let wb2 = WB + 0x40;
    h.program_queue(CQ_BASE + 0x40_0000, 32, wb2);
    assert_eq!(h.reg(abi::REG_ERROR), abi::ERR_NONE);
    assert_eq!(h.read_u32(wb2 + abi::WB_CQ_HEAD), 0);
    let before = h.sink.count(abi::VEC_QUEUE);
    h.submit(&[Cmd::nop(), Cmd::fence(SCRATCH + 0x1000, 42, abi::CMD_F_IRQ)]);
    h.sink.wait_for(abi::VEC_QUEUE, before + 1);
    assert_eq!(h.read_u64(SCRATCH + 0x1000), 42);
    assert_eq!(h.read_u32(wb2 + abi::WB_CQ_HEAD), 2);
    assert_eq!(h.read_u64(wb2 + abi::WB_COMPLETED), 2);
    assert_eq!(h.wb_head(), 0xdead_beef, "old writeback block untouched");
}

#[test]
fn device_reset_mid_stream_then_reinit() {
    reset_mid_stream(|h| h.dev.reset());
}

#[test]
fn control_reset_mid_stream_then_reinit() {
    reset_mid_stream(|h| h.set_reg(abi::REG_CONTROL, abi::CTRL_RESET));
}

#[test]
fn flr_mid_stream_then_reinit() {
    reset_mid_stream(|h| {
        let devctl = h.cfg16(0x58);
        h.set_cfg16(0x58, devctl | 0x8000);
    });
}

#[test]
fn repeated_resets_against_a_busy_worker_never_deadlock() {
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let mut h = Harness::new();
        h.enable_msix();
        for round in 0..200u32 {
            h.start_queue(CQ_BASE, 256);
            let cmds: Vec<Cmd> = (0..256)
                .map(|i| Cmd::fence(SCRATCH + 8 * (i % 64), u64::from(round), abi::CMD_F_IRQ))
                .collect();
            h.submit(&cmds);
            if round % 2 == 0 {
                h.dev.reset();
                h.enable_msix();
            } else {
                h.set_reg(abi::REG_CONTROL, abi::CTRL_RESET);
            }
        }
        h.dev.shutdown();
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(TIMEOUT)
        .expect("resets deadlocked against the worker");
    worker.join().unwrap();
}

#[test]
fn shutdown_is_idempotent_and_regions_still_answer() {
    let mut h = setup(8);
    h.submit(&[Cmd::nop()]);
    h.drain();
    h.dev.shutdown();
    h.dev.shutdown();
    assert_eq!(h.reg(abi::REG_ID), abi::ID_MAGIC);
    h.dev.reset();
}

#[test]
fn addresses_at_the_top_of_the_address_space_fail_cleanly() {
    let mut h = setup(4);
    h.submit(&[Cmd::fence(u64::MAX - 7, 1, 0)]);
    assert_error(&h, abi::ERR_FENCE_DMA);
    let mut h = setup(4);
    h.submit(&[Cmd::stats(u64::MAX - 3, u64::MAX)]);
    assert_error(&h, abi::ERR_FENCE_DMA);
    let mut h = Harness::new();
    h.enable_msix();
    h.program_queue(!0xfff_u64, abi::CQ_MAX_ENTRIES, WB);
    assert_error(&h, abi::ERR_CQ_CONFIG);
    let mut h = Harness::new();
    h.enable_msix();
    h.program_queue(CQ_BASE, 8, !0x3f_u64);
    assert_error(&h, abi::ERR_WB_CONFIG);
}

#[test]
fn ring_unmapped_after_enable_is_cq_dma() {
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    let mut h = setup(8);
    h.submit(&[Cmd::nop()]);
    h.drain();
    // DMA_UNMAP of the ring: guest memory now ends below it (the writeback block stays mapped).
    let smaller =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), CQ_BASE as usize)]).unwrap();
    h.mem.lock().unwrap().replace(smaller);
    h.set_reg(abi::REG_CQ_TAIL, 2);
    assert_error(&h, abi::ERR_CQ_DMA);
    assert_eq!(h.reg(abi::REG_ERROR_INFO), 1);
    assert_eq!(h.wb_error(), abi::ERR_CQ_DMA);
}

#[test]
fn session_stats_survive_resets_that_clear_stats() {
    let mut h = setup(16);
    h.submit(&[Cmd::nop(), Cmd::nop(), Cmd::nop()]);
    h.drain();
    assert_eq!(h.dev.stats()[abi::STAT_COMMANDS as usize], 3);
    h.dev.reset();
    assert_eq!(
        h.dev.stats()[abi::STAT_COMMANDS as usize],
        0,
        "reset clears the guest-visible counters"
    );
    assert_eq!(
        h.dev.session_stats()[abi::STAT_COMMANDS as usize],
        3,
        "the session keeps them"
    );
    h.enable_msix();
    h.start_queue(CQ_BASE, 16);
    h.submit(&[Cmd::nop(), Cmd::nop()]);
    h.drain();
    assert_eq!(h.dev.stats()[abi::STAT_COMMANDS as usize], 2);
    assert_eq!(h.dev.session_stats()[abi::STAT_COMMANDS as usize], 5);
}
