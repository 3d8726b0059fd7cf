//! The device's [`Extension`]: MMU commands (BIND, UNBIND, INVALIDATE, INVALIDATE_ALL), fault commands
//! (REPLAY, CANCEL, CANCEL_ALL), jobs, and FENCE's `FL_CMD_F_WAIT_JOBS`.
//!
//! Every state change a command makes (binding, stall decisions, job submission) happens inside
//! [`ExecCtx::effect`], so a command of a queue that a reset replaced changes nothing. INVALIDATE and
//! INVALIDATE_ALL flush inside the effect and wait for pinned lanes outside it; they return only once the
//! guarantee of spec section 6 holds, so the next command starts after it.
//!
//! Argument checks (queue error `FL_ERR_BAD_ARG`): a context that is neither below `FL_REG_NUM_CONTEXTS`
//! nor, where the opcode allows it (INVALIDATE_ALL, REPLAY, CANCEL_ALL), 0xffff; a BIND root that is not
//! 4 KiB aligned or not below 2^52; a CANCEL access mask with bits above 3. A root outside guest memory is
//! accepted: jobs on it fail with `FL_JOB_DMA_ERROR` (guest memory can change after BIND anyway).

use faultline_mmu::{Invalidation, MmuError, CONTEXT_ALL};
use log::debug;

use crate::abi;
use crate::jobs::{decode, Limits};
use crate::queue::{CmdError, Command, Done, ExecCtx, Extension};

/// The MMU, fault and job opcodes.
#[derive(Debug, Default)]
pub(crate) struct DeviceExtension;

const BAD_ARG: CmdError = CmdError::Queue(abi::ERR_BAD_ARG);

fn mmu_err(e: MmuError) -> CmdError {
    debug!("MMU command refused: {e}");
    BAD_ARG
}

/// The command's context, which must be a real one.
fn one_ctx(cmd: &Command, ctx: &ExecCtx<'_>) -> Result<u16, CmdError> {
    if u32::from(cmd.context) < ctx.shared().id.contexts {
        Ok(cmd.context)
    } else {
        Err(BAD_ARG)
    }
}

/// The command's context, a real one or [`CONTEXT_ALL`].
fn ctx_or_all(cmd: &Command, ctx: &ExecCtx<'_>) -> Result<u16, CmdError> {
    if cmd.context == CONTEXT_ALL {
        Ok(CONTEXT_ALL)
    } else {
        one_ctx(cmd, ctx)
    }
}

impl DeviceExtension {
    fn invalidate<'m>(
        ctx: &ExecCtx<'_>,
        begin: impl FnOnce() -> Result<Invalidation<'m>, MmuError>,
    ) -> Result<(), CmdError> {
        let inv = ctx.effect(|_| begin())?.map_err(mmu_err)?;
        inv.wait();
        Ok(())
    }

    fn job(cmd: &Command, ctx: &ExecCtx<'_>) -> Result<(), CmdError> {
        let sh = ctx.shared();
        let limits = Limits {
            contexts: sh.id.contexts,
            engines: sh.id.engines,
            lanes: sh.id.lanes,
        };
        let d = decode(cmd, &limits).map_err(|e| CmdError::Queue(e.0))?;
        // Back-pressure: the queue waits here (outside the effects lock) while the device holds
        // as many jobs or digests as it allows. An invalid job runs nothing and keeps no digests.
        let digests = if d.invalid { 0 } else { d.spec.digest_bytes() };
        if !sh.engine.wait_for_room(digests, || ctx.is_current()) {
            return Err(CmdError::Abandoned);
        }
        ctx.effect(|mem| sh.engine.submit(sh, mem, &d))?
            .map_err(|e| CmdError::Queue(e.0))
    }
}

impl Extension for DeviceExtension {
    fn features(&self) -> u32 {
        abi::FEAT_MMU | abi::FEAT_FAULT_RING | abi::FEAT_ENGINES
    }

    fn execute(&mut self, cmd: &Command, ctx: &ExecCtx<'_>) -> Result<Done, CmdError> {
        let sh = ctx.shared();
        let eng = &sh.engine;
        let [a0, a1, ..] = cmd.args;
        let done = Done {
            irq: cmd.flags & abi::CMD_F_IRQ != 0,
        };
        match cmd.opcode {
            abi::OP_BIND => {
                let c = one_ctx(cmd, ctx)?;
                ctx.effect(|_| eng.mmu.bind(c, a0))?.map_err(mmu_err)?;
            }
            abi::OP_UNBIND => {
                let c = one_ctx(cmd, ctx)?;
                ctx.effect(|_| eng.unbind(c))?.map_err(mmu_err)?;
            }
            abi::OP_INVALIDATE => {
                let c = one_ctx(cmd, ctx)?;
                Self::invalidate(ctx, || eng.mmu.begin_invalidate(c, a0, a1))?;
            }
            abi::OP_INVALIDATE_ALL => match ctx_or_all(cmd, ctx)? {
                CONTEXT_ALL => Self::invalidate(ctx, || Ok(eng.mmu.begin_invalidate_all()))?,
                c => Self::invalidate(ctx, || eng.mmu.begin_invalidate_ctx(c))?,
            },
            abi::OP_REPLAY => {
                let c = ctx_or_all(cmd, ctx)?;
                let now = sh.clock.now_ns();
                let n = ctx.effect(|_| eng.stalls.replay(c, now))?;
                debug!("REPLAY ctx {c:#x}: {n} lanes released");
            }
            abi::OP_CANCEL => {
                let c = one_ctx(cmd, ctx)?;
                let mask = u8::try_from(a1)
                    .ok()
                    .filter(|m| m & !0xf == 0)
                    .ok_or(BAD_ARG)?;
                let n = ctx.effect(|_| eng.stalls.cancel(c, a0, mask))?;
                debug!("CANCEL ctx {c} page {a0:#x} mask {mask:#x}: {n} lanes");
            }
            abi::OP_CANCEL_ALL => {
                let c = ctx_or_all(cmd, ctx)?;
                let n = ctx.effect(|_| eng.stalls.cancel_all(c))?;
                debug!("CANCEL_ALL ctx {c:#x}: {n} lanes");
            }
            abi::OP_JOB_FILL | abi::OP_JOB_COPY | abi::OP_JOB_CHECKSUM | abi::OP_JOB_ATOMIC_ADD => {
                Self::job(cmd, ctx)?;
                // The job raises FL_VEC_QUEUE itself when it completes.
                return Ok(Done { irq: false });
            }
            _ => {
                debug!("opcode {:#04x} not supported", cmd.opcode);
                return Err(CmdError::Queue(abi::ERR_BAD_OPCODE));
            }
        }
        Ok(done)
    }

    fn wait_jobs(&mut self, ctx: &ExecCtx<'_>) -> Result<(), CmdError> {
        let eng = &ctx.shared().engine;
        if eng.wait_jobs(eng.horizon(), || ctx.is_current()) {
            Ok(())
        } else {
            Err(CmdError::Abandoned)
        }
    }
}
