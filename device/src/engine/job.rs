//! Jobs (spec section 4): decoding and validating `FL_OP_JOB_*` commands, the running job's shared state,
//! chunk order, the checksum, and completion records.
//!
//! # Validation
//! Queue errors (the command is not consumed; spec section 8): context out of range or 0xffff
//! (`FL_ERR_BAD_ARG`), completion record not 32-byte aligned (`FL_ERR_BAD_ARG`), completion record outside
//! guest memory (`FL_ERR_FENCE_DMA`: the device has nowhere to report anything else).
//!
//! Job errors (`FL_JOB_INVALID` in the record, at once): reserved bits 24–31 of a5 set; unknown pattern;
//! engine neither below `FL_REG_NUM_ENGINES` nor 0xff; more lanes than `FL_REG_NUM_LANES`; a range whose end
//! is above 2^48; COPY with overlapping source and destination ranges; ATOMIC_ADD with a length, destination
//! or chunk that is not a multiple of 8; CHECKSUM with more than [`MAX_CHECKSUM_CHUNKS`] chunks.
//! An unbound context at submission completes the job with `FL_JOB_UNBOUND`; a zero-length job completes
//! with `FL_JOB_OK` at once.
//!
//! # Checksum
//! FNV-1a 64 is a sequential hash: it cannot be computed by lanes that finish chunks in any order. The
//! CHECKSUM result is therefore defined per chunk: each chunk's bytes are hashed with FNV-1a 64, and the
//! result is the FNV-1a 64 of those digests, each as 8 little-endian bytes, in address order
//! ([`job_checksum`]). It depends on the bytes and the chunk size only, never on lanes or pattern.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::abi;

/// FNV-1a 64 offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Largest number of chunks of a CHECKSUM job (the device keeps one digest per chunk).
pub const MAX_CHECKSUM_CHUNKS: u64 = 1 << 20;
/// Most jobs outstanding (submitted, record not yet written) per device; the queue waits at a job
/// command beyond it until an earlier job completes.
pub const MAX_OUTSTANDING_JOBS: usize = 16384;
/// Most bytes of CHECKSUM digests (8 per chunk) the outstanding jobs of a device may hold; the
/// queue waits at a CHECKSUM beyond it. Four times the largest single job's, so a lone job always
/// fits.
pub const MAX_DIGEST_BYTES: u64 = 32 << 20;
/// Default chunk size (a5 bits 32–63 = 0).
pub const DEFAULT_CHUNK: u64 = 4096;
/// One past the highest device VA.
pub(crate) const VA_LIMIT: u64 = 1 << abi::VA_BITS;

/// Continues an FNV-1a 64 hash `h` over `bytes`.
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The CHECKSUM result for `data` (the bytes of the range, in address order) split into chunks of `chunk`
/// bytes (0 means 4096): FNV-1a 64 over the little-endian FNV-1a 64 digests of the chunks.
pub fn job_checksum(data: &[u8], chunk: u64) -> u64 {
    let chunk = if chunk == 0 { DEFAULT_CHUNK } else { chunk };
    let step = usize::try_from(chunk).unwrap_or(usize::MAX);
    data.chunks(step).fold(FNV_OFFSET, |h, c| {
        fnv1a(h, &fnv1a(FNV_OFFSET, c).to_le_bytes())
    })
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Write the byte over the destination.
    Fill(u8),
    /// Copy source to destination.
    Copy,
    /// Hash the source.
    Checksum,
    /// Add the value to every u64 of the destination.
    AtomicAdd(u64),
}

/// Chunk order (a5 bits 0–7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// Lanes take the next chunk in address order.
    Seq,
    /// Lane `l` takes chunks `l, l + lanes, …`.
    Strided,
    /// Lanes take the next chunk of a permutation seeded by `seq`.
    Random,
}

/// A decoded job command.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobSpec {
    /// Operation.
    pub op: Op,
    /// Context.
    pub ctx: u16,
    /// Source VA (COPY, CHECKSUM).
    pub src: u64,
    /// Destination VA (FILL, COPY, ATOMIC_ADD).
    pub dst: u64,
    /// Length in bytes.
    pub len: u64,
    /// Chunk size in bytes (never 0).
    pub chunk: u64,
    /// Chunk order.
    pub pattern: Pattern,
    /// Requested engine (`None`: any).
    pub engine: Option<u8>,
    /// Requested lanes (0: all lanes of the engine).
    pub lanes: u16,
    /// Driver tag.
    pub seq: u64,
    /// Completion record GPA.
    pub record: u64,
    /// Raise `FL_VEC_QUEUE` on completion.
    pub irq: bool,
}

impl JobSpec {
    /// Number of chunks.
    pub(crate) fn chunks(&self) -> u64 {
        self.len.div_ceil(self.chunk)
    }

    /// Bytes of per-chunk digests the job keeps while it runs (CHECKSUM only).
    pub(crate) fn digest_bytes(&self) -> u64 {
        match self.op {
            Op::Checksum => self.chunks().saturating_mul(8),
            _ => 0,
        }
    }

    /// Whether the job reads its source.
    pub(crate) fn reads(&self) -> bool {
        matches!(self.op, Op::Copy | Op::Checksum)
    }

    /// Whether the job touches its destination.
    pub(crate) fn writes(&self) -> bool {
        !matches!(self.op, Op::Checksum)
    }
}

/// The keyed permutation of `[0, n)` used by `FL_PAT_RANDOM`: a 4-round Feistel network over the smallest
/// even power of two ≥ n, cycle-walked into range.
pub(crate) fn permute(i: u64, n: u64, key: u64) -> u64 {
    if n <= 1 {
        return i;
    }
    let bits = 64 - (n - 1).leading_zeros();
    let half = bits.div_ceil(2);
    let mask = (1u64 << half) - 1;
    let mut x = i;
    loop {
        let (mut l, mut r) = (x >> half, x & mask);
        for round in 0..4u64 {
            let f = mix(r ^ key.rotate_left(16 * round as u32) ^ round) & mask;
            (l, r) = (r, l ^ f);
        }
        x = (l << half) | r;
        if x < n {
            return x;
        }
    }
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A running job: its spec and the progress its lanes share.
#[derive(Debug)]
pub(crate) struct Job {
    /// Device-wide submission number (orders jobs for `FL_CMD_F_WAIT_JOBS`).
    pub id: u64,
    /// The command.
    pub spec: JobSpec,
    /// Engine it runs on (`None`: completed at submission without running).
    pub engine: Option<usize>,
    /// Chunks.
    pub n_chunks: u64,
    /// Lane slots (lanes working on it), 1..=lanes.
    pub slots: u32,
    /// Slots claimed by lanes so far (changed under the engine's queue lock).
    pub claimed: AtomicU32,
    /// Slots finished.
    pub slots_done: AtomicU32,
    /// Next position in the chunk order (SEQ, RANDOM).
    pub next_pos: AtomicU64,
    /// Bytes processed.
    pub bytes: AtomicU64,
    /// Faults taken.
    pub faults: AtomicU32,
    /// Replays waited for.
    pub replays: AtomicU32,
    /// First failure status (`FL_JOB_*`), 0 while none.
    pub failure: AtomicU32,
    /// Set by reset / shutdown: lanes stop before their next access.
    pub aborted: AtomicBool,
    /// Completion record written (or given up); changed under the engine's job-book lock.
    pub done: AtomicBool,
    /// CHECKSUM: per-chunk digests.
    pub digests: Box<[AtomicU64]>,
}

impl Job {
    /// A job that has not started.
    pub(crate) fn new(id: u64, spec: JobSpec, engine: Option<usize>, lanes_per_engine: u32) -> Job {
        let n_chunks = spec.chunks();
        let want = if spec.lanes == 0 {
            lanes_per_engine
        } else {
            u32::from(spec.lanes)
        };
        let slots = u64::from(want.max(1)).min(n_chunks.max(1)) as u32;
        // Only a job that runs needs digests (an invalid one may claim 2^48 chunks).
        let digests = if spec.op == Op::Checksum && engine.is_some() {
            (0..n_chunks).map(|_| AtomicU64::new(0)).collect()
        } else {
            Box::default()
        };
        Job {
            id,
            spec,
            engine,
            n_chunks,
            slots,
            claimed: AtomicU32::new(0),
            slots_done: AtomicU32::new(0),
            next_pos: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            faults: AtomicU32::new(0),
            replays: AtomicU32::new(0),
            failure: AtomicU32::new(0),
            aborted: AtomicBool::new(false),
            done: AtomicBool::new(false),
            digests,
        }
    }

    /// Records a failure; the first one wins.
    pub(crate) fn fail(&self, status: u32) {
        let _ = self
            .failure
            .compare_exchange(0, status, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Whether lanes should stop working on this job.
    pub(crate) fn should_stop(&self) -> bool {
        self.aborted.load(Ordering::SeqCst) || self.failure.load(Ordering::Acquire) != 0
    }

    /// The status the lanes reached (`FL_JOB_OK` unless one failed).
    pub(crate) fn status(&self) -> u32 {
        match self.failure.load(Ordering::Acquire) {
            0 => abi::JOB_OK,
            s => s,
        }
    }

    /// The chunk at position `k` of slot `slot`'s order, or `None` when the slot has no more.
    pub(crate) fn next_chunk(&self, slot: u32, k: &mut u64) -> Option<u64> {
        match self.spec.pattern {
            Pattern::Strided => {
                let c = u64::from(slot).checked_add(k.checked_mul(u64::from(self.slots))?)?;
                *k += 1;
                (c < self.n_chunks).then_some(c)
            }
            Pattern::Seq | Pattern::Random => {
                let p = self.next_pos.fetch_add(1, Ordering::Relaxed);
                if p >= self.n_chunks {
                    return None;
                }
                Some(if self.spec.pattern == Pattern::Random {
                    permute(p, self.n_chunks, self.spec.seq)
                } else {
                    p
                })
            }
        }
    }

    /// The `result` field for `status`.
    pub(crate) fn result(&self, status: u32) -> u64 {
        match self.spec.op {
            Op::Checksum if status == abi::JOB_OK => {
                self.digests.iter().fold(FNV_OFFSET, |h, d| {
                    fnv1a(h, &d.load(Ordering::Relaxed).to_le_bytes())
                })
            }
            Op::AtomicAdd(_) => self.bytes.load(Ordering::Relaxed) / 8,
            _ => 0,
        }
    }
}

/// A completion record (spec section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub seq: u64,
    pub bytes: u64,
    pub result: u64,
    pub faults: u16,
    pub replays: u16,
    pub status: u32,
}

impl Record {
    /// Writes the record at `gpa`: everything, then `status` with release order.
    pub(crate) fn write(
        &self,
        mem: &crate::dma::Mem<'_>,
        gpa: u64,
    ) -> Result<(), crate::dma::RemoteDmaError> {
        let mut body = [0u8; abi::COMPL_OFF_STATUS as usize];
        body[0..8].copy_from_slice(&self.seq.to_le_bytes());
        body[8..16].copy_from_slice(&self.bytes.to_le_bytes());
        body[16..24].copy_from_slice(&self.result.to_le_bytes());
        body[24..26].copy_from_slice(&self.faults.to_le_bytes());
        body[26..28].copy_from_slice(&self.replays.to_le_bytes());
        mem.write(gpa, &body)?;
        mem.store_u32(gpa + abi::COMPL_OFF_STATUS, self.status)
    }
}

/// Saturates a counter to the record's u16.
pub(crate) fn sat16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        let data: Vec<u8> = (0..10000u32).map(|i| i as u8).collect();
        let manual = data.chunks(4096).fold(FNV_OFFSET, |h, c| {
            fnv1a(h, &fnv1a(FNV_OFFSET, c).to_le_bytes())
        });
        assert_eq!(job_checksum(&data, 0), manual);
        assert_ne!(job_checksum(&data, 4096), job_checksum(&data, 512));
        assert_eq!(job_checksum(&[], 64), FNV_OFFSET);
    }

    #[test]
    fn permutations_are_bijective() {
        for n in [1u64, 2, 3, 5, 16, 17, 100, 1000] {
            for key in [0u64, 1, 0xdead_beef] {
                let mut seen = vec![false; n as usize];
                for i in 0..n {
                    let p = permute(i, n, key);
                    assert!(p < n);
                    assert!(!seen[p as usize], "n {n} key {key}");
                    seen[p as usize] = true;
                }
            }
        }
    }
}
