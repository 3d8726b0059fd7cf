//! The command queue (spec section 4): the worker thread that consumes 64-byte commands in order.
//!
//! The worker sleeps on `Shared::wake` until the queue is running and `tail != head`, snapshots the queue
//! and its generation, and executes every command up to that tail (a *batch*). It publishes the head to
//! the writeback block once per batch, and before raising `FL_VEC_QUEUE` for a command with
//! `FL_CMD_F_IRQ`, so the driver sees `head` past the command when the interrupt arrives. Every guest
//! write and interrupt goes through [`Shared::effects`], so nothing happens for a queue that a reset,
//! disable or error has replaced (see `shared.rs`).
//!
//! NOP, FENCE and STATS are executed here. Every other opcode goes to an [`Extension`]: the device's is
//! `commands.rs` (MMU, replay/cancel, jobs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::remote::Mem;
use log::{debug, trace};

use crate::abi;
use crate::shared::{lock, Shared};

/// Longest a batch runs without publishing its head (see `Worker::run_batch`).
const PUBLISH_EVERY: Duration = Duration::from_millis(2);

/// A command entry, decoded from its 64 little-endian bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Command {
    /// `FL_OP_*`.
    pub opcode: u8,
    /// `FL_CMD_F_*`.
    pub flags: u8,
    /// Address-space context.
    pub context: u16,
    /// Must be 0.
    pub reserved: u32,
    /// Driver tag.
    pub seq: u64,
    /// Arguments a0..a5.
    pub args: [u64; 6],
}

impl Command {
    /// Decodes an entry.
    pub(crate) fn parse(b: &[u8; abi::CMD_SIZE as usize]) -> Self {
        let u64_at = |off: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[off..off + 8]);
            u64::from_le_bytes(w)
        };
        Command {
            opcode: b[abi::CMD_OFF_OPCODE as usize],
            flags: b[abi::CMD_OFF_FLAGS as usize],
            context: u16::from_le_bytes([b[2], b[3]]),
            reserved: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            seq: u64_at(abi::CMD_OFF_SEQ as usize),
            args: std::array::from_fn(|i| u64_at(abi::CMD_OFF_ARGS as usize + 8 * i)),
        }
    }

    /// Encodes an entry (the inverse of [`Command::parse`]).
    pub(crate) fn to_bytes(self) -> [u8; abi::CMD_SIZE as usize] {
        let mut b = [0u8; abi::CMD_SIZE as usize];
        b[0] = self.opcode;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.context.to_le_bytes());
        b[4..8].copy_from_slice(&self.reserved.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        for (i, a) in self.args.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        b
    }

    fn irq(&self) -> bool {
        self.flags & abi::CMD_F_IRQ != 0
    }
}

/// Why a command did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmdError {
    /// A queue error (`FL_ERR_*`): the queue stops with `ERROR_INFO` = the command's index.
    Queue(u32),
    /// The queue was reset, disabled or failed meanwhile: drop the batch without touching anything.
    Abandoned,
}

/// What the queue does once a command completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Done {
    /// Publish the head and raise `FL_VEC_QUEUE` now.
    pub irq: bool,
}

/// What a command may touch: guest memory and interrupts, through generation-checked effects.
pub(crate) struct ExecCtx<'a> {
    shared: &'a Shared,
    gen: u64,
}

impl ExecCtx<'_> {
    /// Runs `f` on a fresh guest-memory snapshot with the effects lock held, unless the queue was reset,
    /// disabled or failed since the batch started. Keep `f` short: a reset waits for it.
    pub(crate) fn effect<R>(&self, f: impl FnOnce(&Mem<'_>) -> R) -> Result<R, CmdError> {
        let _fx = self.shared.effects(self.gen).ok_or(CmdError::Abandoned)?;
        Ok(self.shared.with_mem(|mem| f(&mem)))
    }

    /// The device state (MMU, engines, clock). Guest-visible effects must still go through
    /// [`ExecCtx::effect`].
    pub(crate) fn shared(&self) -> &Shared {
        self.shared
    }

    /// Whether the queue this batch runs for is still the current one (no reset, disable or error since).
    pub(crate) fn is_current(&self) -> bool {
        self.shared.generation() == self.gen
    }
}

/// Opcodes beyond NOP, FENCE and STATS (MMU, replay/cancel, jobs) plug in here.
pub(crate) trait Extension: Send {
    /// `FL_FEAT_*` bits this extension implements.
    fn features(&self) -> u32;

    /// Executes `cmd` (reserved field already checked). Unknown opcodes return
    /// `Err(CmdError::Queue(FL_ERR_BAD_OPCODE))`. Must finish the command's synchronous effects (PTE reads,
    /// invalidations) before returning; jobs may complete later on the engines.
    fn execute(&mut self, cmd: &Command, ctx: &ExecCtx<'_>) -> Result<Done, CmdError>;

    /// `FL_OP_FENCE` with `FL_CMD_F_WAIT_JOBS`: returns once every job started so far has completed.
    fn wait_jobs(&mut self, _ctx: &ExecCtx<'_>) -> Result<(), CmdError> {
        Ok(())
    }
}

/// The queue as the worker saw it when it started a batch.
#[derive(Debug, Clone, Copy)]
struct Batch {
    gen: u64,
    base: u64,
    size: u32,
    head: u32,
    tail: u32,
    completed: u64,
}

/// The command-queue worker; runs on its own thread until shutdown.
pub(crate) struct Worker {
    shared: Arc<Shared>,
    ext: Box<dyn Extension>,
}

impl Worker {
    /// A worker executing extension opcodes with `ext`.
    pub(crate) fn new(shared: Arc<Shared>, ext: Box<dyn Extension>) -> Self {
        Worker { shared, ext }
    }

    /// The thread body.
    pub(crate) fn run(mut self) {
        debug!("command queue worker started");
        while let Some(batch) = self.wait_for_work() {
            self.run_batch(batch);
        }
        debug!("command queue worker stopped");
    }

    fn wait_for_work(&self) -> Option<Batch> {
        let mut regs = lock(&self.shared.regs);
        loop {
            if regs.shutdown {
                return None;
            }
            if regs.queue_running() {
                if let Some(q) = regs.cq.filter(|q| q.tail != q.head) {
                    return Some(Batch {
                        gen: self.shared.generation(),
                        base: q.base,
                        size: q.size,
                        head: q.head,
                        tail: q.tail,
                        completed: q.completed,
                    });
                }
            }
            regs = self
                .shared
                .wake
                .wait(regs)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn run_batch(&mut self, b: Batch) {
        let shared = Arc::clone(&self.shared);
        let ctx = ExecCtx {
            shared: &shared,
            gen: b.gen,
        };
        let (mut head, mut completed) = (b.head, b.completed);
        trace!("batch {head}..{}", b.tail);
        // A long batch publishes its progress now and then: with guest memory the client serves
        // (DMA_READ per command) a batch of a thousand commands takes long enough for a driver
        // to miss the head passing a fence it already saw.
        let mut published = Instant::now();
        while head != b.tail {
            if shared.generation() != b.gen {
                return;
            }
            let result = self
                .read_command(b.base, b.size, head)
                .and_then(|cmd| self.execute(&cmd, &ctx));
            match result {
                Ok(done) => {
                    head = head.wrapping_add(1);
                    completed = completed.wrapping_add(1);
                    shared.stats.add(abi::STAT_COMMANDS, 1);
                    if done.irq {
                        if !shared.publish(b.gen, head, completed, true) {
                            return;
                        }
                        published = Instant::now();
                    } else if completed % 16 == 0 && published.elapsed() >= PUBLISH_EVERY {
                        if !shared.publish(b.gen, head, completed, false) {
                            return;
                        }
                        published = Instant::now();
                    }
                }
                Err(CmdError::Queue(code)) => {
                    if shared.publish(b.gen, head, completed, false) {
                        shared.raise_error(b.gen, code, head);
                    }
                    return;
                }
                Err(CmdError::Abandoned) => return,
            }
        }
        shared.publish(b.gen, head, completed, false);
    }

    fn read_command(&self, base: u64, size: u32, index: u32) -> Result<Command, CmdError> {
        let slot = u64::from(index & (size - 1));
        let gpa = base + slot * abi::CMD_SIZE;
        let mut buf = [0u8; abi::CMD_SIZE as usize];
        self.shared
            .with_mem(|mem| mem.read(gpa, &mut buf))
            .map_err(|e| {
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
            abi::OP_STATS => stats(cmd, ctx).map(|()| builtin),
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
}

/// STATS: writes the counter block, at most `a1` bytes, at `a0`.
fn stats(cmd: &Command, ctx: &ExecCtx<'_>) -> Result<(), CmdError> {
    let [gpa, max_bytes, ..] = cmd.args;
    let block: Vec<u8> = ctx
        .shared()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trip() {
        let cmd = Command {
            opcode: abi::OP_FENCE,
            flags: abi::CMD_F_IRQ,
            context: 0x1234,
            reserved: 0,
            seq: 0xdead_beef_0000_0001,
            args: [1, 2, 3, 4, 5, u64::MAX],
        };
        let bytes = cmd.to_bytes();
        assert_eq!(bytes[abi::CMD_OFF_ARGS as usize], 1);
        assert_eq!(Command::parse(&bytes), cmd);
    }
}
