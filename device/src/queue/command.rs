//! Command entries (spec section 4), what executing one may touch ([`ExecCtx`]), and the [`Extension`]
//! interface through which opcodes beyond the worker's own reach the device.

use crate::abi;
use crate::control::Control;
use crate::dma::{Dma, Mem};

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

    /// Whether `FL_CMD_F_IRQ` is set.
    pub(crate) fn irq(&self) -> bool {
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
    pub(super) control: &'a Control,
    pub(super) dma: &'a Dma,
    pub(super) gen: u64,
}

impl ExecCtx<'_> {
    /// Runs `f` on a fresh guest-memory snapshot with the effects lock held, unless the queue was reset,
    /// disabled or failed since the batch started. Keep `f` short: a reset waits for it.
    pub(crate) fn effect<R>(&self, f: impl FnOnce(&Mem<'_>) -> R) -> Result<R, CmdError> {
        let _fx = self.control.effects(self.gen).ok_or(CmdError::Abandoned)?;
        Ok(self.dma.with(|mem| f(&mem)))
    }

    /// Whether the queue this batch runs for is still the current one (no reset, disable or error since).
    pub(crate) fn is_current(&self) -> bool {
        self.control.generation() == self.gen
    }
}

/// Opcodes beyond NOP, FENCE and STATS (MMU, replay/cancel, jobs) plug in here.
pub(crate) trait Extension: Send {
    /// Executes `cmd` (reserved field already checked). Unknown opcodes return
    /// `Err(CmdError::Queue(FL_ERR_BAD_OPCODE))`. Must finish the command's synchronous effects (PTE reads,
    /// invalidations) before returning; jobs may complete later on the engines.
    fn execute(&mut self, cmd: &Command, ctx: &ExecCtx<'_>) -> Result<Done, CmdError>;

    /// `FL_OP_FENCE` with `FL_CMD_F_WAIT_JOBS`: returns once every job started so far has completed.
    fn wait_jobs(&mut self, _ctx: &ExecCtx<'_>) -> Result<(), CmdError> {
        Ok(())
    }
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
