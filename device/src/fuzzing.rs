//! Entry points for the coverage-guided fuzz targets in `fuzz/` (not part of the device's API):
//! the decoding of guest-written command-queue entries, checked against the rules of spec
//! section 4. Each function panics when an invariant breaks, which is what the fuzzer looks for.

use crate::abi;
use crate::engine::job::{Job, Op, Pattern, MAX_CHECKSUM_CHUNKS};
use crate::queue::command::Command;
use crate::queue::decode::{decode, Limits};

/// Most chunks a decoded job is walked through (the chunk orders are checked exhaustively).
const WALK_CHUNKS: u64 = 4096;

/// Decodes a 64-byte command entry as the worker does and checks what a job would become.
pub fn command_entry(bytes: &[u8; 64], contexts: u16, engines: u8, lanes: u16) {
    let cmd = Command::parse(bytes);
    assert_eq!(&cmd.to_bytes(), bytes, "entry encoding round trip");
    let limits = Limits {
        contexts: u32::from(contexts.max(1)),
        engines: u32::from(engines.max(1)),
        lanes: u32::from(lanes.max(1)),
    };
    let Ok(d) = decode(&cmd, &limits) else {
        return;
    };
    let spec = d.spec;
    assert!(u32::from(spec.ctx) < limits.contexts);
    assert_eq!(spec.record % abi::COMPL_SIZE, 0);
    assert_ne!(spec.chunk, 0);
    if d.invalid {
        return;
    }
    assert!(spec.engine.is_none_or(|e| u32::from(e) < limits.engines));
    assert!(u32::from(spec.lanes) <= limits.lanes);
    if spec.reads() {
        assert!(spec
            .src
            .checked_add(spec.len)
            .is_some_and(|e| e <= 1 << abi::VA_BITS));
    }
    if spec.writes() {
        assert!(spec
            .dst
            .checked_add(spec.len)
            .is_some_and(|e| e <= 1 << abi::VA_BITS));
    }
    match spec.op {
        Op::Checksum => {
            assert!(spec.chunks() <= MAX_CHECKSUM_CHUNKS);
            assert!(spec.digest_bytes() <= MAX_CHECKSUM_CHUNKS * 8);
        }
        Op::AtomicAdd(_) => assert!(spec.dst % 8 == 0 && spec.len % 8 == 0 && spec.chunk % 8 == 0),
        Op::Copy => assert!(
            spec.len == 0
                || spec.src >= spec.dst.saturating_add(spec.len)
                || spec.dst >= spec.src.saturating_add(spec.len)
        ),
        Op::Fill(_) => {}
    }
    // Every chunk is handed out exactly once, whatever the pattern and the number of slots.
    if spec.chunks() == 0 || spec.chunks() > WALK_CHUNKS {
        return;
    }
    let job = Job::new(0, spec, Some(0), limits.lanes);
    assert!(job.slots >= 1 && u64::from(job.slots) <= spec.chunks().max(1));
    let mut seen = vec![false; spec.chunks() as usize];
    for slot in 0..job.slots {
        let mut k = 0;
        while let Some(c) = job.next_chunk(slot, &mut k) {
            let c = usize::try_from(c).expect("chunk index");
            assert!(!seen[c], "chunk {c} handed out twice ({:?})", spec.pattern);
            seen[c] = true;
        }
    }
    assert!(seen.iter().all(|&s| s), "a chunk was never handed out");
    if spec.pattern == Pattern::Strided {
        assert!(job.slots as usize <= seen.len());
    }
}
