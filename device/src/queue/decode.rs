//! Decoding a job command (spec section 4, `FL_OP_JOB_*`) into a [`JobSpec`] for the engines, with the
//! queue-level and job-level checks the engine module documents (`engine/job.rs`, # Validation).

use crate::abi;
use crate::engine::job::{JobSpec, Op, Pattern, DEFAULT_CHUNK, MAX_CHECKSUM_CHUNKS, VA_LIMIT};
use crate::queue::command::Command;

/// Geometry the decoder checks jobs against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Contexts.
    pub contexts: u32,
    /// Engines.
    pub engines: u32,
    /// Lanes per engine.
    pub lanes: u32,
}

/// A job command that passed the queue-level checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decoded {
    /// The job.
    pub spec: JobSpec,
    /// Complete at once with `FL_JOB_INVALID`, without running.
    pub invalid: bool,
}

/// Why a job command is a queue error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueError(pub u32);

fn range_ok(va: u64, len: u64) -> bool {
    va.checked_add(len).is_some_and(|end| end <= VA_LIMIT)
}

/// Decodes a job command. Queue-level problems are `Err`; job-level ones set [`Decoded::invalid`].
pub(crate) fn decode(cmd: &Command, limits: &Limits) -> Result<Decoded, QueueError> {
    let [a0, a1, a2, a3, a4, a5] = cmd.args;
    if u32::from(cmd.context) >= limits.contexts {
        return Err(QueueError(abi::ERR_BAD_ARG));
    }
    if a4 & (abi::COMPL_SIZE - 1) != 0 {
        return Err(QueueError(abi::ERR_BAD_ARG));
    }
    let op = match cmd.opcode {
        abi::OP_JOB_FILL => Op::Fill(a3 as u8),
        abi::OP_JOB_COPY => Op::Copy,
        abi::OP_JOB_CHECKSUM => Op::Checksum,
        abi::OP_JOB_ATOMIC_ADD => Op::AtomicAdd(a3),
        _ => return Err(QueueError(abi::ERR_BAD_OPCODE)),
    };
    let pattern = match a5 as u8 {
        abi::PAT_SEQ => Some(Pattern::Seq),
        abi::PAT_STRIDED => Some(Pattern::Strided),
        abi::PAT_RANDOM => Some(Pattern::Random),
        _ => None,
    };
    let engine = (a5 >> 8) as u8;
    let lanes = ((a5 >> 16) & 0xff) as u16;
    let chunk = match a5 >> 32 {
        0 => DEFAULT_CHUNK,
        c => c,
    };
    let spec = JobSpec {
        op,
        ctx: cmd.context,
        src: a0,
        dst: a1,
        len: a2,
        chunk,
        pattern: pattern.unwrap_or(Pattern::Seq),
        engine: (engine != abi::ENGINE_ANY).then_some(engine),
        lanes,
        seq: cmd.seq,
        record: a4,
        irq: cmd.flags & abi::CMD_F_IRQ != 0,
    };
    let mut invalid = pattern.is_none()
        || (a5 >> 24) & 0xff != 0
        || spec.engine.is_some_and(|e| u32::from(e) >= limits.engines)
        || u32::from(lanes) > limits.lanes
        || (spec.reads() && !range_ok(a0, a2))
        || (spec.writes() && !range_ok(a1, a2));
    match op {
        Op::Copy => invalid |= a2 != 0 && a0 < a1.saturating_add(a2) && a1 < a0.saturating_add(a2),
        Op::AtomicAdd(_) => invalid |= a1 % 8 != 0 || a2 % 8 != 0 || chunk % 8 != 0,
        Op::Checksum => invalid |= spec.chunks() > MAX_CHECKSUM_CHUNKS,
        Op::Fill(_) => {}
    }
    Ok(Decoded { spec, invalid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::job::Job;

    fn cmd(opcode: u8, args: [u64; 6]) -> Command {
        Command {
            opcode,
            args,
            ..Command::default()
        }
    }

    const LIM: Limits = Limits {
        contexts: 4,
        engines: 2,
        lanes: 4,
    };

    #[test]
    fn decode_checks() {
        let ok = decode(
            &cmd(abi::OP_JOB_COPY, [0, 0x1000, 0x1000, 0, 0x40, 0]),
            &LIM,
        )
        .unwrap();
        assert!(!ok.invalid);
        assert_eq!(ok.spec.chunk, 4096);
        assert_eq!(ok.spec.engine, Some(0));
        let overlap = decode(&cmd(abi::OP_JOB_COPY, [0, 0x800, 0x1000, 0, 0x40, 0]), &LIM).unwrap();
        assert!(overlap.invalid);
        let bad_ctx = Command {
            context: 4,
            ..cmd(abi::OP_JOB_FILL, [0; 6])
        };
        assert_eq!(
            decode(&bad_ctx, &LIM).unwrap_err(),
            QueueError(abi::ERR_BAD_ARG)
        );
        assert_eq!(
            decode(&cmd(abi::OP_JOB_FILL, [0, 0, 8, 0, 0x30, 0]), &LIM).unwrap_err(),
            QueueError(abi::ERR_BAD_ARG)
        );
        for a5 in [3u64, 1 << 24, 2 << 8, 5 << 16] {
            let d = decode(&cmd(abi::OP_JOB_FILL, [0, 0, 8, 0, 0, a5]), &LIM).unwrap();
            assert!(d.invalid, "a5 {a5:#x}");
        }
        let any = decode(
            &cmd(
                abi::OP_JOB_FILL,
                [0, 0, 8, 0, 0, 0xff << 8 | 4 << 16 | 64 << 32],
            ),
            &LIM,
        )
        .unwrap();
        assert!(!any.invalid);
        assert_eq!(any.spec.engine, None);
        assert_eq!(any.spec.chunk, 64);
        assert!(
            decode(&cmd(abi::OP_JOB_ATOMIC_ADD, [0, 4, 8, 0, 0, 0]), &LIM)
                .unwrap()
                .invalid
        );
        assert!(
            decode(&cmd(abi::OP_JOB_ATOMIC_ADD, [0, 8, 12, 0, 0, 0]), &LIM)
                .unwrap()
                .invalid
        );
        assert!(
            decode(
                &cmd(abi::OP_JOB_ATOMIC_ADD, [0, 8, 16, 0, 0, 12 << 32]),
                &LIM
            )
            .unwrap()
            .invalid
        );
        assert!(
            decode(&cmd(abi::OP_JOB_FILL, [0, VA_LIMIT - 8, 16, 0, 0, 0]), &LIM)
                .unwrap()
                .invalid
        );
        assert!(
            !decode(
                &cmd(abi::OP_JOB_FILL, [0, VA_LIMIT - 16, 16, 0, 0, 0]),
                &LIM
            )
            .unwrap()
            .invalid
        );
        assert!(
            decode(
                &cmd(abi::OP_JOB_CHECKSUM, [0, 0, 1 << 21, 0, 0, 1 << 32]),
                &LIM
            )
            .unwrap()
            .invalid
        );
    }

    #[test]
    fn chunk_orders() {
        let spec = decode(&cmd(abi::OP_JOB_FILL, [0, 0, 10, 0, 0, 1 | 1 << 32]), &LIM)
            .unwrap()
            .spec;
        let job = Job::new(0, JobSpec { lanes: 3, ..spec }, Some(0), 4);
        assert_eq!(job.slots, 3);
        let mut k = 0;
        let mine: Vec<u64> = std::iter::from_fn(|| job.next_chunk(1, &mut k)).collect();
        assert_eq!(mine, vec![1, 4, 7]);
        let job = Job::new(
            0,
            JobSpec {
                pattern: Pattern::Random,
                ..spec
            },
            Some(0),
            4,
        );
        let mut all: Vec<u64> = std::iter::from_fn(|| job.next_chunk(0, &mut k)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }
}
