//! The engines: lane threads that run jobs through the MMU, stall on faults, and complete jobs.
//!
//! # Lanes
//! Every (engine, lane) pair is one thread owning one [`Lane`] of the [`Mmu`] (MMU lane id
//! `engine * lanes + lane`). A submitted job goes to one engine's FIFO with `slots` lane slots
//! (`min(lanes requested, chunks)`); idle lanes of that engine claim the slots of the job at the head of the
//! FIFO, so a job that asks for fewer lanes than the engine has leaves the others to the next job. A slot
//! takes chunks in the pattern's order ([`Job::next_chunk`]) and moves each chunk in *windows* of at most
//! [`MAX_SEGMENT`] bytes: pin the lane ([`Lane::pin`], one memory barrier per window), check the job was
//! not aborted, then segment by segment translate (the [`Access`](faultline_mmu::Access) guard), move the
//! bytes through vm-memory, drop the guard; unpin. A segment is one page of each operand, or a run of 4 KiB
//! pages that map contiguous frames ([`Lane::translate_span`](faultline_mmu::Lane::translate_span): the
//! following pages' entries are read under the same pin), and never more, so each byte is accessed under a
//! translation that was valid when it was accessed.
//!
//! # Stalls
//! A miss or permission failure returns from the window, which drops every guard and the pin, and then
//! [`LaneRun::stall`]: under the *gate* mutex the lane checks that its job was not aborted and its context is
//! still bound, registers in the [`StallTable`] and posts the fault entry; then, outside the gate, it blocks
//! until REPLAY (retry the access), CANCEL (`FL_JOB_CANCELLED`), UNBIND (`FL_JOB_UNBOUND`) or reset (stop;
//! the reset writes `FL_JOB_ABORTED`). The gate closes the window between "fault seen" and "registered and
//! posted" against UNBIND and reset, which decide stalls under the same gate.
//!
//! # Invalidation
//! INVALIDATE waits only for pinned lanes, and a pinned lane never blocks: it only reads page tables and
//! moves at most [`MAX_SEGMENT`] bytes before unpinning. Stalled lanes hold no guard, so the command worker
//! never waits for a lane that waits for a command.
//!
//! # Reset and shutdown
//! [`Engine::abort_all`]: mark every live job aborted; drop unclaimed slots; [`Mmu::reset`] (unbind all,
//! flush, wait for every pinned lane); abort every stall under the gate; write `FL_JOB_ABORTED` records. A
//! lane checks `aborted` *after* pinning its translation (the pin's `SeqCst` fence against the reset's
//! invalidation fence, Dekker's pattern), so once the reset returns no lane touches guest memory for an old
//! job. Each job's record is written once, under the job-book lock (`Job::done`).
//!
//! The engine gets its handles at construction ([`Handles`]: guest memory, interrupts, the fault ring,
//! the control state for error reports, counters, the clock); the lane threads (`lane.rs`) share it.
//!
//! Locks: the device's one lock order is stated in `sync.rs`, with which locks may be held while waiting
//! for a pinned lane.

pub mod job;
mod lane;

pub(crate) use lane::lane_thread;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use faultline_mmu::{
    Counters, JobFailure, Lane, Mmu, MmuConfig, MmuError, StallOutcome, StallTable, TlbConfig,
};
use log::{debug, warn};

use crate::clock::Clock;
use crate::control::Control;
use crate::dma::{Dma, Mem};
use crate::fault_ring::FaultRingHw;
use crate::pci::Interrupts;
use crate::stats::Stats;
use crate::sync::lock;
use crate::{abi, DeviceConfig};
use job::{sat16, Job, JobSpec, Record, MAX_DIGEST_BYTES, MAX_OUTSTANDING_JOBS};

/// Most bytes moved under one translation guard: bounds how long an invalidation or a reset waits for a
/// lane (a 1 GiB page is moved in many segments, each re-translated through the TLB).
pub(crate) const MAX_SEGMENT: u64 = 64 << 10;

/// One engine's FIFO of jobs with unclaimed lane slots.
#[derive(Debug, Default)]
struct Pending {
    jobs: VecDeque<Arc<Job>>,
    /// Jobs submitted to this engine and not completed (for `FL_ENGINE_ANY`).
    load: usize,
    shutdown: bool,
}

#[derive(Debug, Default)]
struct EngineQueue {
    pending: Mutex<Pending>,
    /// Wakes the engine's idle lanes; used with `pending`.
    wake: Condvar,
}

/// Jobs submitted and not completed, by submission number.
#[derive(Debug, Default)]
struct Book {
    live: BTreeMap<u64, Arc<Job>>,
    /// Digest bytes the live jobs hold (bounded by [`MAX_DIGEST_BYTES`]).
    digest_bytes: u64,
    /// Shutdown: new jobs complete with `FL_JOB_ABORTED` at once.
    closed: bool,
}

/// What the engine and its lanes reach outside themselves, given at construction.
pub(crate) struct Handles {
    /// Guest memory.
    pub dma: Dma,
    /// Interrupt delivery (`FL_VEC_QUEUE` for job completions).
    pub irq: Interrupts,
    /// The fault ring the lanes post to.
    pub ring: Arc<FaultRingHw>,
    /// Where a lane reports a failed fault-ring write (`FL_ERR_FR_CONFIG`).
    pub control: Arc<Control>,
    /// The device counters (`FL_STAT_JOBS`).
    pub stats: Arc<Stats>,
    /// Fault timestamps.
    pub clock: Arc<Clock>,
}

/// Why a job was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SubmitError {
    /// The completion record is outside guest memory: the device has nowhere to report anything.
    #[error("completion record {0:#x} outside guest memory")]
    RecordUnreachable(u64),
}

/// The MMU, the stall table and the engines' job queues.
pub(crate) struct Engine {
    io: Handles,
    /// Contexts, TLB, lanes, invalidation.
    pub mmu: Arc<Mmu>,
    /// Stalled lanes.
    pub stalls: StallTable,
    queues: Box<[EngineQueue]>,
    lanes_per_engine: u32,
    /// Serialises stall registration against UNBIND and reset (see the module documentation).
    gate: Mutex<()>,
    book: Mutex<Book>,
    /// Signalled when a job completes; used with `book`.
    book_cv: Condvar,
    next_id: AtomicU64,
    rr: AtomicUsize,
    /// MMU and stall-table counters at the last reset (those counters are never cleared).
    baseline: Mutex<Counters>,
    reset_lock: Mutex<()>,
}

/// The MMU lanes handed to the lane threads: `(engine, lane within engine, lane)`.
pub(crate) type LaneHandles = Vec<(usize, u16, Lane)>;

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EngineError {
    /// The MMU refused the configuration.
    #[error(transparent)]
    Config(#[from] faultline_mmu::ConfigError),
    /// A lane could not be claimed.
    #[error(transparent)]
    Lane(#[from] MmuError),
}

fn failure_status(f: Option<JobFailure>) -> u32 {
    match f {
        Some(JobFailure::DmaError) => abi::JOB_DMA_ERROR,
        Some(JobFailure::PtError) => abi::JOB_PT_ERROR,
        Some(JobFailure::Unbound) => abi::JOB_UNBOUND,
        Some(JobFailure::Invalid) | None => abi::JOB_INVALID,
    }
}

/// `c - base` for the counters the MMU and the stall table keep.
fn rebased(mut c: Counters, base: &Counters) -> Counters {
    let sub = |a: &mut u64, b: u64| *a = a.saturating_sub(b);
    sub(&mut c.faults_read, base.faults_read);
    sub(&mut c.faults_write, base.faults_write);
    sub(&mut c.faults_atomic, base.faults_atomic);
    sub(&mut c.faults_prefetch, base.faults_prefetch);
    sub(&mut c.replays, base.replays);
    sub(&mut c.cancels, base.cancels);
    sub(&mut c.invalidations, base.invalidations);
    sub(&mut c.tlb_hits, base.tlb_hits);
    sub(&mut c.tlb_misses, base.tlb_misses);
    sub(&mut c.walks, base.walks);
    sub(&mut c.duplicates, base.duplicates);
    for (a, b) in c.latency.iter_mut().zip(base.latency.iter()) {
        sub(a, *b);
    }
    c
}

impl Engine {
    /// The engine for `config`, and the lanes for its threads.
    pub(crate) fn new(
        config: &DeviceConfig,
        io: Handles,
    ) -> Result<(Engine, LaneHandles), EngineError> {
        let lanes = usize::from(config.lanes);
        let engines = usize::from(config.engines);
        let mmu = Arc::new(Mmu::new(MmuConfig {
            contexts: config.contexts,
            lanes: engines * lanes,
            tlb: TlbConfig {
                sets: config.tlb_sets,
                ways: config.tlb_ways,
            },
        })?);
        let mut handles = Vec::with_capacity(engines * lanes);
        for e in 0..engines {
            for l in 0..config.lanes {
                handles.push((e, l, mmu.lane(e * lanes + usize::from(l))?));
            }
        }
        let engine = Engine {
            io,
            stalls: StallTable::new(mmu.lanes()),
            mmu,
            queues: (0..engines).map(|_| EngineQueue::default()).collect(),
            lanes_per_engine: u32::from(config.lanes),
            gate: Mutex::new(()),
            book: Mutex::new(Book::default()),
            book_cv: Condvar::new(),
            next_id: AtomicU64::new(0),
            rr: AtomicUsize::new(0),
            baseline: Mutex::new(Counters::default()),
            reset_lock: Mutex::new(()),
        };
        Ok((engine, handles))
    }

    /// Whether `ctx` is bound.
    fn bound(&self, ctx: u16) -> bool {
        matches!(self.mmu.root(ctx), Ok(Some(_)))
    }

    fn pick_engine(&self, requested: Option<u8>) -> usize {
        if let Some(e) = requested {
            return usize::from(e);
        }
        let n = self.queues.len();
        let start = self.rr.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|i| (start + i) % n)
            .min_by_key(|&e| lock(&self.queues[e].pending).load)
            .unwrap_or(0)
    }

    /// Starts a job (called by the command worker with the effects lock held); an `invalid` one completes
    /// with `FL_JOB_INVALID` at once. A completion record outside guest memory is refused; every other
    /// outcome is reported in the record.
    pub(crate) fn submit(
        &self,
        mem: &Mem<'_>,
        spec: &JobSpec,
        invalid: bool,
    ) -> Result<(), SubmitError> {
        if !mem.range_ok(spec.record, abi::COMPL_SIZE) {
            debug!(
                "job seq {}: completion record {:#x} outside guest memory",
                spec.seq, spec.record
            );
            return Err(SubmitError::RecordUnreachable(spec.record));
        }
        self.io.stats.add(abi::STAT_JOBS, 1);
        let immediate = if invalid {
            Some(abi::JOB_INVALID)
        } else if !self.bound(spec.ctx) {
            Some(abi::JOB_UNBOUND)
        } else if spec.len == 0 {
            Some(abi::JOB_OK)
        } else {
            None
        };
        let engine = immediate.is_none().then(|| self.pick_engine(spec.engine));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if crate::trace::enabled() {
            crate::trace::job_start(id);
        }
        let job = Arc::new(Job::new(id, *spec, engine, self.lanes_per_engine));
        let closed = {
            let mut book = lock(&self.book);
            if !book.closed {
                book.live.insert(id, Arc::clone(&job));
                book.digest_bytes += job.digests.len() as u64 * 8;
            }
            book.closed
        };
        if closed {
            job.aborted.store(true, Ordering::SeqCst);
            self.complete(&job, abi::JOB_ABORTED);
            return Ok(());
        }
        match (immediate, engine) {
            (None, Some(e)) => {
                let q = &self.queues[e];
                let mut p = lock(&q.pending);
                p.load += 1;
                p.jobs.push_back(job);
                drop(p);
                q.wake.notify_all();
            }
            (status, _) => self.complete(&job, status.unwrap_or(abi::JOB_OK)),
        }
        Ok(())
    }

    /// Writes the completion record of `job` unless it was written already; `FL_JOB_ABORTED` if the job was
    /// aborted, else `status`.
    pub(crate) fn complete(&self, job: &Job, status: u32) {
        let status = if job.aborted.load(Ordering::SeqCst) {
            abi::JOB_ABORTED
        } else {
            status
        };
        let mut book = lock(&self.book);
        if job.done.swap(true, Ordering::AcqRel) {
            return;
        }
        if book.live.remove(&job.id).is_some() {
            book.digest_bytes = book
                .digest_bytes
                .saturating_sub(job.digests.len() as u64 * 8);
        }
        let rec = Record {
            seq: job.spec.seq,
            bytes: job.bytes.load(Ordering::Relaxed),
            result: job.result(status),
            faults: sat16(job.faults.load(Ordering::Relaxed)),
            replays: sat16(job.replays.load(Ordering::Relaxed)),
            status,
        };
        if crate::trace::enabled() {
            let faults = job.faults.load(Ordering::Relaxed);
            crate::trace::job_end(job.id, job.spec.seq, status, faults);
        }
        match self.io.dma.with(|mem| rec.write(&mem, job.spec.record)) {
            Ok(()) => {
                if job.spec.irq && status != abi::JOB_ABORTED {
                    self.io.irq.signal(abi::VEC_QUEUE);
                }
            }
            Err(e) => warn!(
                "job seq {}: completion record at {:#x} unreachable: {e}",
                job.spec.seq, job.spec.record
            ),
        }
        drop(book);
        self.book_cv.notify_all();
        if let Some(e) = job.engine {
            let mut p = lock(&self.queues[e].pending);
            p.load = p.load.saturating_sub(1);
        }
    }

    /// Back-pressure before a job is submitted: waits until fewer than [`MAX_OUTSTANDING_JOBS`] jobs
    /// are outstanding and `digest_bytes` more fit in [`MAX_DIGEST_BYTES`] (always true with no job
    /// outstanding). Gives up (false) as soon as `still_wanted` says so (reset, queue disabled).
    /// Called by the command worker without the effects lock, so a reset is never held up by it.
    pub(crate) fn wait_for_room(&self, digest_bytes: u64, still_wanted: impl Fn() -> bool) -> bool {
        let mut book = lock(&self.book);
        let mut logged = false;
        loop {
            let fits = book.live.is_empty()
                || (book.live.len() < MAX_OUTSTANDING_JOBS
                    && book.digest_bytes.saturating_add(digest_bytes) <= MAX_DIGEST_BYTES);
            if fits {
                return true;
            }
            if !still_wanted() {
                return false;
            }
            if !logged {
                debug!(
                    "queue waits: {} jobs outstanding, {} digest bytes held, {digest_bytes} wanted",
                    book.live.len(),
                    book.digest_bytes
                );
                logged = true;
            }
            book = self
                .book_cv
                .wait_timeout(book, Duration::from_millis(5))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// The submission number the next job will get (a FENCE's horizon for `FL_CMD_F_WAIT_JOBS`).
    pub(crate) fn horizon(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// Waits until every job submitted before `horizon` has completed; gives up (false) as soon as
    /// `still_wanted` says so.
    pub(crate) fn wait_jobs(&self, horizon: u64, still_wanted: impl Fn() -> bool) -> bool {
        let mut book = lock(&self.book);
        loop {
            if book.live.range(..horizon).next().is_none() {
                return true;
            }
            if !still_wanted() {
                return false;
            }
            book = self
                .book_cv
                .wait_timeout(book, Duration::from_millis(5))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// UNBIND: unbinds `ctx` (waiting for its pinned lanes) and fails its stalled lanes' jobs with
    /// `FL_JOB_UNBOUND`; running lanes fail at their next translation.
    pub(crate) fn unbind(&self, ctx: u16) -> Result<(), MmuError> {
        self.mmu.unbind(ctx)?;
        let _gate = lock(&self.gate);
        self.stalls.fail_ctx(ctx, StallOutcome::Unbound);
        Ok(())
    }

    /// Device reset: every live job completes with `FL_JOB_ABORTED`, contexts are unbound and the TLB
    /// flushed, counters restart from 0; when this returns no lane accesses guest memory for those jobs.
    pub(crate) fn abort_all(&self) {
        self.abort();
        let mut raw = Counters::default();
        self.raw_counters(&mut raw);
        *lock(&self.baseline) = raw;
    }

    /// [`Engine::abort_all`] without touching the counters.
    fn abort(&self) {
        let _reset = lock(&self.reset_lock);
        let jobs: Vec<Arc<Job>> = lock(&self.book).live.values().cloned().collect();
        for j in &jobs {
            j.aborted.store(true, Ordering::SeqCst);
        }
        for q in self.queues.iter() {
            lock(&q.pending).jobs.clear();
        }
        self.mmu.reset();
        let stalled = {
            let _gate = lock(&self.gate);
            self.stalls.abort_all()
        };
        for j in &jobs {
            self.complete(j, abi::JOB_ABORTED);
        }
        if !jobs.is_empty() {
            debug!(
                "reset: {} jobs aborted, {stalled} stalled lanes released",
                jobs.len()
            );
        }
    }

    /// Shutdown (client disconnect): aborts everything, refuses new jobs, and tells the lane threads to
    /// exit. The counters keep their values for a final report.
    pub(crate) fn shutdown(&self) {
        lock(&self.book).closed = true;
        self.abort();
        for q in self.queues.iter() {
            lock(&q.pending).shutdown = true;
            q.wake.notify_all();
        }
    }

    fn raw_counters(&self, c: &mut Counters) {
        self.mmu.add_counters(c);
        self.stalls.add_counters(c);
    }

    /// Adds the MMU and stall-table counters since the last reset into `c`.
    pub(crate) fn add_counters(&self, c: &mut Counters) {
        let mut raw = Counters::default();
        self.raw_counters(&mut raw);
        let mine = rebased(raw, &lock(&self.baseline));
        c.faults_read += mine.faults_read;
        c.faults_write += mine.faults_write;
        c.faults_atomic += mine.faults_atomic;
        c.faults_prefetch += mine.faults_prefetch;
        c.replays += mine.replays;
        c.cancels += mine.cancels;
        c.invalidations += mine.invalidations;
        c.tlb_hits += mine.tlb_hits;
        c.tlb_misses += mine.tlb_misses;
        c.walks += mine.walks;
        c.duplicates += mine.duplicates;
        for (a, b) in c.latency.iter_mut().zip(mine.latency.iter()) {
            *a += b;
        }
    }
}
