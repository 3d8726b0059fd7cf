//! The command queue (spec section 4): the worker thread that consumes 64-byte commands in order.
//!
//! The worker sleeps in [`Control::next_batch`] until the queue is running and `tail != head`, and
//! executes every command up to that tail (a *batch*). It publishes the head to the writeback block once
//! per batch, and before raising `FL_VEC_QUEUE` for a command with `FL_CMD_F_IRQ`, so the driver sees
//! `head` past the command when the interrupt arrives. Every guest write and interrupt goes through
//! [`Control::effects`], so nothing happens for a queue that a reset, disable or error has replaced (see
//! `control.rs`).
//!
//! - `command.rs`: entries, [`ExecCtx`], the [`Extension`] interface;
//! - `decode.rs`: job commands into job specifications;
//! - `ops.rs`: the device's extension (MMU, replay/cancel, jobs).
//!
//! NOP, FENCE and STATS are executed here. Every other opcode goes to the [`Extension`].

pub(crate) mod command;
pub(crate) mod decode;
pub(crate) mod ops;

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, trace};

use crate::abi;
use crate::control::{Batch, Control};
use crate::counters::CounterBlock;
use crate::dma::Dma;
use crate::stats::Stats;
pub(crate) use command::{CmdError, Command, Done, ExecCtx, Extension};

/// Longest a batch runs without publishing its head (see `Worker::run_batch`).
const PUBLISH_EVERY: Duration = Duration::from_millis(2);

/// The command-queue worker; runs on its own thread until shutdown.
pub(crate) struct Worker {
    control: Arc<Control>,
    dma: Dma,
    stats: Arc<Stats>,
    counters: CounterBlock,
    ext: Box<dyn Extension>,
}

impl Worker {
    /// A worker for the queue `control` holds, reading commands through `dma`, counting them in
    /// `stats`, answering STATS from `counters`, and executing extension opcodes with `ext`.
    pub(crate) fn new(
        control: Arc<Control>,
        dma: Dma,
        stats: Arc<Stats>,
        counters: CounterBlock,
        ext: Box<dyn Extension>,
    ) -> Self {
        Worker {
            control,
            dma,
            stats,
            counters,
            ext,
        }
    }

    /// The thread body.
    pub(crate) fn run(mut self) {
        debug!("command queue worker started");
        while let Some(batch) = self.control.next_batch() {
            self.run_batch(batch);
        }
        debug!("command queue worker stopped");
    }

    fn run_batch(&mut self, b: Batch) {
        let control = Arc::clone(&self.control);
        let dma = self.dma.clone();
        let ctx = ExecCtx {
            control: &control,
            dma: &dma,
            gen: b.gen,
        };
        let (mut head, mut completed) = (b.head, b.completed);
        trace!("batch {head}..{}", b.tail);
        // A long batch publishes its progress now and then: with guest memory the client serves
        // (DMA_READ per command) a batch of a thousand commands takes long enough for a driver
        // to miss the head passing a fence it already saw.
        let mut published = Instant::now();
        while head != b.tail {
            if control.generation() != b.gen {
                return;
            }
            let result = self
                .read_command(b.base, b.size, head)
                .and_then(|cmd| self.execute(&cmd, &ctx));
            match result {
                Ok(done) => {
                    head = head.wrapping_add(1);
                    completed = completed.wrapping_add(1);
                    self.stats.add(abi::STAT_COMMANDS, 1);
                    if done.irq {
                        if !control.publish(b.gen, head, completed, true) {
                            return;
                        }
                        published = Instant::now();
                    } else if completed % 16 == 0 && published.elapsed() >= PUBLISH_EVERY {
                        if !control.publish(b.gen, head, completed, false) {
                            return;
                        }
                        published = Instant::now();
                    }
                }
                Err(CmdError::Queue(code)) => {
                    if control.publish(b.gen, head, completed, false) {
                        control.raise_error(b.gen, code, head);
                    }
                    return;
                }
                Err(CmdError::Abandoned) => return,
            }
        }
        control.publish(b.gen, head, completed, false);
    }

    fn read_command(&self, base: u64, size: u32, index: u32) -> Result<Command, CmdError> {
        let slot = u64::from(index & (size - 1));
        let gpa = base + slot * abi::CMD_SIZE;
        let mut buf = [0u8; abi::CMD_SIZE as usize];
        self.dma.with(|mem| mem.read(gpa, &mut buf)).map_err(|e| {
            debug!("command {index} at {gpa:#x} unreadable: {e}");
            CmdError::Queue(abi::ERR_CQ_DMA)
        })?;
        Ok(Command::parse(&buf))
    }

    fn execute(&mut self, cmd: &Command, ctx: &ExecCtx<'_>) -> Result<Done, CmdError> {
        if cmd.reserved != 0 {
            return Err(CmdError::Queue(abi::ERR_BAD_OPCODE));
        }
        let builtin = Done { irq: cmd.irq() };
        match cmd.opcode {
            abi::OP_NOP => Ok(builtin),
            abi::OP_FENCE => self.fence(cmd, ctx).map(|()| builtin),
            abi::OP_STATS => self.write_stats(cmd, ctx).map(|()| builtin),
            _ => self.ext.execute(cmd, ctx),
        }
    }

    /// FENCE: every earlier command has executed (they run in order on this thread); optionally wait for
    /// jobs; then store the value with release order.
    fn fence(&mut self, cmd: &Command, ctx: &ExecCtx<'_>) -> Result<(), CmdError> {
        let [gpa, value, ..] = cmd.args;
        if gpa & 7 != 0 {
            return Err(CmdError::Queue(abi::ERR_BAD_ARG));
        }
        if crate::trace::enabled() {
            crate::trace::command(
                "FENCE",
                crate::trace::now(),
                format!("{{\"value\":{value}}}"),
            );
        }
        if cmd.flags & abi::CMD_F_WAIT_JOBS != 0 {
            self.ext.wait_jobs(ctx)?;
        }
        ctx.effect(|mem| mem.store_u64(gpa, value))?.map_err(|e| {
            debug!("fence write at {gpa:#x} failed: {e}");
            CmdError::Queue(abi::ERR_FENCE_DMA)
        })
    }

    /// STATS: writes the counter block, at most `a1` bytes, at `a0`.
    fn write_stats(&self, cmd: &Command, ctx: &ExecCtx<'_>) -> Result<(), CmdError> {
        let [gpa, max_bytes, ..] = cmd.args;
        let block: Vec<u8> = self
            .counters
            .counters()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let len = usize::try_from(max_bytes).map_or(block.len(), |n| n.min(block.len()));
        if len == 0 {
            return Ok(());
        }
        ctx.effect(|mem| mem.write(gpa, &block[..len]))?
            .map_err(|e| {
                debug!("stats write at {gpa:#x} failed: {e}");
                CmdError::Queue(abi::ERR_FENCE_DMA)
            })
    }
}
