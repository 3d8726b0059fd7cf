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

use std::sync::Arc;

use faultline_mmu::{Invalidation, MmuError, CONTEXT_ALL};
use log::debug;

use super::command::{CmdError, Command, Done, ExecCtx, Extension};
use super::decode::{decode, Limits};
use crate::abi;
use crate::clock::Clock;
use crate::engine::{Engine, SubmitError};

/// The `FL_FEAT_*` bits [`DeviceExtension`] implements.
pub(crate) const FEATURES: u32 = abi::FEAT_MMU | abi::FEAT_FAULT_RING | abi::FEAT_ENGINES;

/// The MMU, fault and job opcodes, carried out on the engine.
pub(crate) struct DeviceExtension {
    engine: Arc<Engine>,
    clock: Arc<Clock>,
    limits: Limits,
}

const BAD_ARG: CmdError = CmdError::Queue(abi::ERR_BAD_ARG);

fn mmu_err(e: MmuError) -> CmdError {
    debug!("MMU command refused: {e}");
    BAD_ARG
}

impl DeviceExtension {
    /// The extension for `engine`, whose geometry is `limits`; REPLAY stamps stalls with `clock`.
    pub(crate) fn new(engine: Arc<Engine>, clock: Arc<Clock>, limits: Limits) -> Self {
        DeviceExtension {
            engine,
            clock,
            limits,
        }
    }

    /// The command's context, which must be a real one.
    fn one_ctx(&self, cmd: &Command) -> Result<u16, CmdError> {
        if u32::from(cmd.context) < self.limits.contexts {
            Ok(cmd.context)
        } else {
            Err(BAD_ARG)
        }
    }

    /// The command's context, a real one or [`CONTEXT_ALL`].
    fn ctx_or_all(&self, cmd: &Command) -> Result<u16, CmdError> {
        if cmd.context == CONTEXT_ALL {
            Ok(CONTEXT_ALL)
        } else {
            self.one_ctx(cmd)
        }
    }

    fn invalidate<'m>(
        ctx: &ExecCtx<'_>,
        begin: impl FnOnce() -> Result<Invalidation<'m>, MmuError>,
    ) -> Result<(), CmdError> {
        let t0 = crate::trace::enabled().then(crate::trace::now);
        let inv = ctx.effect(|_| begin())?.map_err(mmu_err)?;
        inv.wait();
        if let Some(t0) = t0 {
            crate::trace::command("INVALIDATE", t0, String::new());
        }
        Ok(())
    }

    fn job(&self, cmd: &Command, ctx: &ExecCtx<'_>) -> Result<(), CmdError> {
        let d = decode(cmd, &self.limits).map_err(|e| CmdError::Queue(e.0))?;
        // Back-pressure: the queue waits here (outside the effects lock) while the device holds
        // as many jobs or digests as it allows. An invalid job runs nothing and keeps no digests.
        let digests = if d.invalid { 0 } else { d.spec.digest_bytes() };
        if !self.engine.wait_for_room(digests, || ctx.is_current()) {
            return Err(CmdError::Abandoned);
        }
        ctx.effect(|mem| self.engine.submit(mem, &d.spec, d.invalid))?
            .map_err(|SubmitError::RecordUnreachable(_)| CmdError::Queue(abi::ERR_FENCE_DMA))
    }
}

impl Extension for DeviceExtension {
    fn execute(&mut self, cmd: &Command, ctx: &ExecCtx<'_>) -> Result<Done, CmdError> {
        let eng = &self.engine;
        let [a0, a1, ..] = cmd.args;
        let done = Done {
            irq: cmd.flags & abi::CMD_F_IRQ != 0,
        };
        match cmd.opcode {
            abi::OP_BIND => {
                let c = self.one_ctx(cmd)?;
                ctx.effect(|_| eng.mmu.bind(c, a0))?.map_err(mmu_err)?;
            }
            abi::OP_UNBIND => {
                let c = self.one_ctx(cmd)?;
                ctx.effect(|_| eng.unbind(c))?.map_err(mmu_err)?;
            }
            abi::OP_INVALIDATE => {
                let c = self.one_ctx(cmd)?;
                Self::invalidate(ctx, || eng.mmu.begin_invalidate(c, a0, a1))?;
            }
            abi::OP_INVALIDATE_ALL => match self.ctx_or_all(cmd)? {
                CONTEXT_ALL => Self::invalidate(ctx, || Ok(eng.mmu.begin_invalidate_all()))?,
                c => Self::invalidate(ctx, || eng.mmu.begin_invalidate_ctx(c))?,
            },
            abi::OP_REPLAY => {
                let c = self.ctx_or_all(cmd)?;
                let now = self.clock.now_ns();
                let traced = crate::trace::enabled().then(crate::trace::now);
                let n = ctx.effect(|_| eng.stalls.replay(c, now))?;
                debug!("REPLAY ctx {c:#x}: {n} lanes released");
                if let Some(t) = traced {
                    crate::trace::replay(t, c, n);
                }
            }
            abi::OP_CANCEL => {
                let c = self.one_ctx(cmd)?;
                let mask = u8::try_from(a1)
                    .ok()
                    .filter(|m| m & !0xf == 0)
                    .ok_or(BAD_ARG)?;
                let n = ctx.effect(|_| eng.stalls.cancel(c, a0, mask))?;
                debug!("CANCEL ctx {c} page {a0:#x} mask {mask:#x}: {n} lanes");
            }
            abi::OP_CANCEL_ALL => {
                let c = self.ctx_or_all(cmd)?;
                let n = ctx.effect(|_| eng.stalls.cancel_all(c))?;
                debug!("CANCEL_ALL ctx {c:#x}: {n} lanes");
            }
            abi::OP_JOB_FILL | abi::OP_JOB_COPY | abi::OP_JOB_CHECKSUM | abi::OP_JOB_ATOMIC_ADD => {
                self.job(cmd, ctx)?;
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
        let eng = &self.engine;
        if eng.wait_jobs(eng.horizon(), || ctx.is_current()) {
            Ok(())
        } else {
            Err(CmdError::Abandoned)
        }
    }
}
