//! The engines: lane threads that run jobs through the MMU, stall on faults, and complete jobs.
//!
//! # Lanes
//! Every (engine, lane) pair is one thread owning one [`Lane`] of the [`Mmu`] (MMU lane id
//! `engine * lanes + lane`). A submitted job goes to one engine's FIFO with `slots` lane slots
//! (`min(lanes requested, chunks)`); idle lanes of that engine claim the slots of the job at the head of the
//! FIFO, so a job that asks for fewer lanes than the engine has leaves the others to the next job. A slot
//! takes chunks in the pattern's order ([`Job::next_chunk`]) and moves each chunk in *windows* of at most
//! [`MAX_SEGMENT`] bytes: pin the lane ([`Lane::pin`], one memory barrier per window), check the job was
//! not aborted, then page by page translate (the [`Access`](faultline_mmu::Access) guard), move the bytes
//! through vm-memory, drop the guard; unpin. A segment never crosses a page of either operand, so each byte
//! is accessed under a translation that was valid when it was accessed.
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
//! Locks: the device's one lock order is stated in `shared.rs` (# Locks), with which locks may be held
//! while waiting for a pinned lane.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use faultline_mmu::{
    AccessType, Counters, FaultEntry, FaultReason, JobFailure, Lane, Mmu, MmuConfig, MmuError,
    StallKey, StallOutcome, StallTable, TlbConfig, TranslateError,
};
use log::{debug, warn};
use vm_memory::{GuestAddressSpace, VolatileMemory};

use crate::faults::PostResult;
use crate::jobs::{
    sat16, Decoded, Job, Op, QueueError, Record, FNV_OFFSET, MAX_DIGEST_BYTES, MAX_OUTSTANDING_JOBS,
};
use crate::mmu_glue::{slice_at, GuestPhys};
use crate::remote::Mem;
use crate::shared::{lock, Shared};
use crate::{abi, DeviceConfig};

/// Most bytes moved under one translation guard: bounds how long an invalidation or a reset waits for a
/// lane (a 1 GiB page is moved in many segments, each re-translated through the TLB).
pub(crate) const MAX_SEGMENT: u64 = 64 << 10;

/// Scratch buffer for FILL and CHECKSUM.
const SCRATCH: usize = 4096;

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

/// The MMU, the stall table and the engines' job queues.
#[derive(Debug)]
pub(crate) struct Engine {
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
    pub(crate) fn new(config: &DeviceConfig) -> Result<(Engine, LaneHandles), EngineError> {
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

    /// Starts a decoded job (called by the command worker with the effects lock held). A completion record
    /// outside guest memory is a queue error; every other outcome is reported in the record.
    pub(crate) fn submit(
        &self,
        shared: &Shared,
        mem: &Mem<'_>,
        d: &Decoded,
    ) -> Result<(), QueueError> {
        if !mem.range_ok(d.spec.record, abi::COMPL_SIZE) {
            debug!(
                "job seq {}: completion record {:#x} outside guest memory",
                d.spec.seq, d.spec.record
            );
            return Err(QueueError(abi::ERR_FENCE_DMA));
        }
        shared.stats.add(abi::STAT_JOBS, 1);
        let immediate = if d.invalid {
            Some(abi::JOB_INVALID)
        } else if !self.bound(d.spec.ctx) {
            Some(abi::JOB_UNBOUND)
        } else if d.spec.len == 0 {
            Some(abi::JOB_OK)
        } else {
            None
        };
        let engine = immediate.is_none().then(|| self.pick_engine(d.spec.engine));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if crate::trace::enabled() {
            crate::trace::job_start(id);
        }
        let job = Arc::new(Job::new(id, d.spec, engine, self.lanes_per_engine));
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
            self.complete(shared, &job, abi::JOB_ABORTED);
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
            (status, _) => self.complete(shared, &job, status.unwrap_or(abi::JOB_OK)),
        }
        Ok(())
    }

    /// Writes the completion record of `job` unless it was written already; `FL_JOB_ABORTED` if the job was
    /// aborted, else `status`.
    pub(crate) fn complete(&self, shared: &Shared, job: &Job, status: u32) {
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
        match shared.with_mem(|mem| rec.write(&mem, job.spec.record)) {
            Ok(()) => {
                if job.spec.irq && status != abi::JOB_ABORTED {
                    lock(&shared.msix).signal(abi::VEC_QUEUE);
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
    pub(crate) fn abort_all(&self, shared: &Shared) {
        self.abort(shared);
        let mut raw = Counters::default();
        self.raw_counters(&mut raw);
        *lock(&self.baseline) = raw;
    }

    /// [`Engine::abort_all`] without touching the counters.
    fn abort(&self, shared: &Shared) {
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
            self.complete(shared, j, abi::JOB_ABORTED);
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
    pub(crate) fn shutdown(&self, shared: &Shared) {
        lock(&self.book).closed = true;
        self.abort(shared);
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

/// The body of a lane thread: claim a slot of the job at the head of the engine's FIFO, run it, complete
/// the job if it was the last slot; until shutdown.
pub(crate) fn lane_thread(shared: Arc<Shared>, engine: usize, index: u16, lane: Lane) {
    let eng = &shared.engine;
    let q = &eng.queues[engine];
    let mut scratch = vec![0u8; SCRATCH];
    loop {
        let (job, slot) = {
            let mut p = lock(&q.pending);
            loop {
                if p.shutdown {
                    return;
                }
                if let Some(job) = p.jobs.front().cloned() {
                    let slot = job.claimed.fetch_add(1, Ordering::Relaxed);
                    if slot + 1 >= job.slots {
                        p.jobs.pop_front();
                    }
                    break (job, slot);
                }
                p = q
                    .wake
                    .wait(p)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        LaneRun {
            shared: &shared,
            lane: &lane,
            engine,
            index,
            job: &job,
            scratch: &mut scratch,
        }
        .run_slot(slot);
        if job.slots_done.fetch_add(1, Ordering::AcqRel) + 1 == job.slots {
            eng.complete(&shared, &job, job.status());
        }
    }
}

/// Why a segment did not move its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Translation miss or permission failure: stall and post a fault.
    Fault {
        va: u64,
        access: AccessType,
        reason: FaultReason,
    },
    /// Fail the job with this `FL_JOB_*` status.
    Fail(u32),
    /// The job was aborted: stop without touching anything.
    Stop,
}

/// A lane working on one slot of one job.
struct LaneRun<'a> {
    shared: &'a Shared,
    lane: &'a Lane,
    engine: usize,
    index: u16,
    job: &'a Job,
    scratch: &'a mut [u8],
}

impl LaneRun<'_> {
    fn run_slot(&mut self, slot: u32) {
        let mut k = 0;
        while let Some(chunk) = self.job.next_chunk(slot, &mut k) {
            if self.job.should_stop() || !self.run_chunk(chunk) {
                return;
            }
        }
    }

    /// Moves one chunk; false if the slot must stop.
    fn run_chunk(&mut self, chunk: u64) -> bool {
        let spec = &self.job.spec;
        let start = chunk * spec.chunk;
        let end = start.saturating_add(spec.chunk).min(spec.len);
        let mut off = start;
        let mut hash = FNV_OFFSET;
        while off < end {
            if self.job.should_stop() {
                return false;
            }
            let local = self.shared.mem.memory();
            let remote = self.shared.remote.get();
            let (moved, step) =
                self.window(&Mem::new(&local, remote.as_ref()), off, end, &mut hash);
            drop(local);
            off += moved;
            self.job.bytes.fetch_add(moved, Ordering::Relaxed);
            let go_on = match step {
                None => true,
                Some(Step::Fault { va, access, reason }) => self.stall(va, access, reason),
                Some(Step::Fail(status)) => {
                    self.job.fail(status);
                    false
                }
                Some(Step::Stop) => false,
            };
            if !go_on {
                return false;
            }
        }
        if let Some(d) = usize::try_from(chunk)
            .ok()
            .and_then(|c| self.job.digests.get(c))
        {
            d.store(hash, Ordering::Relaxed);
        }
        true
    }

    fn translate<'l>(
        lane: &'l Lane,
        ctx: u16,
        va: u64,
        access: AccessType,
        phys: &GuestPhys<'_>,
    ) -> Result<faultline_mmu::Access<'l>, Step> {
        lane.translate(ctx, va, access, phys)
            .map_err(|e: TranslateError| match e.fault_reason() {
                Some(reason) => Step::Fault { va, access, reason },
                None => Step::Fail(failure_status(e.job_failure())),
            })
    }

    /// Moves up to [`MAX_SEGMENT`] bytes from `off` (not past `end`) under one pin of the lane: pin, check
    /// the job was not aborted (a reset that began before the pin is seen here; one that begins after waits
    /// for the pin), then segment after segment, each under its own translation. Returns the bytes moved and
    /// why it stopped early, if it did. The pin is dropped before returning, so the caller may stall.
    fn window(&mut self, mem: &Mem<'_>, off: u64, end: u64, hash: &mut u64) -> (u64, Option<Step>) {
        let _pin = match self.lane.pin(self.job.spec.ctx) {
            Ok(p) => p,
            Err(e) => return (0, Some(Step::Fail(failure_status(e.job_failure())))),
        };
        if self.job.aborted.load(Ordering::SeqCst) {
            return (0, Some(Step::Stop));
        }
        let limit = end.min(off.saturating_add(MAX_SEGMENT));
        let mut at = off;
        while at < limit {
            match self.segment(mem, at, limit, hash) {
                Ok(n) => at += n,
                Err(step) => return (at - off, Some(step)),
            }
        }
        (at - off, None)
    }

    /// Moves the bytes from `off` up to the first page boundary of any operand or `end`; returns how many.
    /// The lane is pinned ([`LaneRun::window`]).
    fn segment(&mut self, full: &Mem<'_>, off: u64, end: u64, hash: &mut u64) -> Result<u64, Step> {
        let spec = self.job.spec;
        let mem = full.local;
        let phys = GuestPhys(mem, full.remote);
        let max = end - off;
        let dma = Step::Fail(abi::JOB_DMA_ERROR);
        let (sva, dva) = (spec.src.wrapping_add(off), spec.dst.wrapping_add(off));
        let ctx = spec.ctx;
        match spec.op {
            Op::Fill(byte) => {
                let d = Self::translate(self.lane, ctx, dva, AccessType::Write, &phys)?;
                let n = max.min(d.bytes_to_page_end(dva));
                let pa = d.pa(dva);
                if !full.is_local(pa, n) {
                    return self.remote_segment(full, spec.op, 0, pa, n, hash);
                }
                let buf = &mut self.scratch[..];
                buf.fill(byte);
                let mut done = 0;
                while done < n {
                    let want = (n - done).min(buf.len() as u64) as usize;
                    let s = slice_at(mem, pa + done, want).ok_or(dma)?;
                    s.copy_from(&buf[..s.len()]);
                    done += s.len() as u64;
                }
                Ok(n)
            }
            Op::Copy => {
                let s = Self::translate(self.lane, ctx, sva, AccessType::Read, &phys)?;
                let d = Self::translate(self.lane, ctx, dva, AccessType::Write, &phys)?;
                let n = max
                    .min(s.bytes_to_page_end(sva))
                    .min(d.bytes_to_page_end(dva));
                let (spa, dpa) = (s.pa(sva), d.pa(dva));
                if !full.is_local(spa, n) || !full.is_local(dpa, n) {
                    return self.remote_segment(full, spec.op, spa, dpa, n, hash);
                }
                let mut done = 0;
                while done < n {
                    let from = slice_at(mem, spa + done, (n - done) as usize).ok_or(dma)?;
                    let to = slice_at(mem, dpa + done, from.len()).ok_or(dma)?;
                    let moved = to.len();
                    from.copy_to_volatile_slice(to);
                    done += moved as u64;
                }
                Ok(n)
            }
            Op::Checksum => {
                let s = Self::translate(self.lane, ctx, sva, AccessType::Read, &phys)?;
                let n = max.min(s.bytes_to_page_end(sva));
                let pa = s.pa(sva);
                if !full.is_local(pa, n) {
                    return self.remote_segment(full, spec.op, pa, 0, n, hash);
                }
                let buf = &mut self.scratch[..];
                let mut done = 0;
                let mut h = *hash;
                while done < n {
                    let want = (n - done).min(buf.len() as u64) as usize;
                    let from = slice_at(mem, pa + done, want).ok_or(dma)?;
                    let got = from.copy_to(&mut buf[..want]);
                    h = crate::jobs::fnv1a(h, &buf[..got]);
                    done += got as u64;
                }
                *hash = h;
                Ok(n)
            }
            Op::AtomicAdd(addend) => {
                let d = Self::translate(self.lane, ctx, dva, AccessType::Atomic, &phys)?;
                let n = max.min(d.bytes_to_page_end(dva));
                let pa = d.pa(dva);
                if !full.is_local(pa, n) {
                    return self.remote_segment(full, spec.op, 0, pa, n, hash);
                }
                let mut done = 0u64;
                let bytes = &self.job.bytes;
                let partial = |done: u64| {
                    bytes.fetch_add(done, Ordering::Relaxed);
                    dma
                };
                while done < n {
                    let s = slice_at(mem, pa + done, (n - done) as usize)
                        .ok_or_else(|| partial(done))?;
                    let words = s.len() / 8;
                    if words == 0 {
                        // A word straddling two memory regions cannot be accessed atomically.
                        return Err(partial(done));
                    }
                    for w in 0..words {
                        let word = s
                            .get_atomic_ref::<std::sync::atomic::AtomicU64>(w * 8)
                            .map_err(|_| partial(done))?;
                        word.fetch_add(addend, Ordering::SeqCst);
                        done += 8;
                    }
                }
                Ok(n)
            }
        }
    }

    /// [`LaneRun::segment`] over memory the client serves (or a range mixing it with mapped memory):
    /// the bytes go through the scratch buffer, one read or write message at a time. All or nothing:
    /// a failed access fails the job with `FL_JOB_DMA_ERROR` (an ATOMIC_ADD may then have updated a
    /// prefix; those words are counted, as on the mapped path).
    fn remote_segment(
        &mut self,
        mem: &Mem<'_>,
        op: Op,
        spa: u64,
        dpa: u64,
        n: u64,
        hash: &mut u64,
    ) -> Result<u64, Step> {
        let dma = Step::Fail(abi::JOB_DMA_ERROR);
        let mut done = 0u64;
        let mut h = *hash;
        while done < n {
            let want = (n - done).min(self.scratch.len() as u64) as usize;
            let buf = &mut self.scratch[..want];
            match op {
                Op::Fill(byte) => {
                    buf.fill(byte);
                    mem.write(dpa + done, buf).map_err(|_| dma)?;
                }
                Op::Copy => {
                    mem.read(spa + done, buf).map_err(|_| dma)?;
                    mem.write(dpa + done, buf).map_err(|_| dma)?;
                }
                Op::Checksum => {
                    mem.read(spa + done, buf).map_err(|_| dma)?;
                    h = crate::jobs::fnv1a(h, buf);
                }
                Op::AtomicAdd(addend) => {
                    let fail = |d: u64| {
                        self.job.bytes.fetch_add(d, Ordering::Relaxed);
                        dma
                    };
                    if !want.is_multiple_of(8) {
                        return Err(fail(done));
                    }
                    mem.read(dpa + done, buf).map_err(|_| fail(done))?;
                    for w in buf.chunks_exact_mut(8) {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(w);
                        w.copy_from_slice(
                            &u64::from_le_bytes(b).wrapping_add(addend).to_le_bytes(),
                        );
                    }
                    mem.write(dpa + done, buf).map_err(|_| fail(done))?;
                }
            }
            done += want as u64;
        }
        *hash = h;
        Ok(n)
    }

    /// Stalls on a fault (no guard held): registers, posts the entry, waits. True: retry the access.
    fn stall(&self, va: u64, access: AccessType, reason: FaultReason) -> bool {
        let eng = &self.shared.engine;
        let ctx = self.job.spec.ctx;
        let now = self.shared.clock.now_ns();
        let key = StallKey::new(ctx, va, access);
        let traced = crate::trace::enabled().then(crate::trace::now);
        // Registration and posting happen under the gate: a reset (which aborts jobs, then stalls, under
        // the gate) is either entirely before (the job is seen aborted: nothing posted) or entirely after
        // (the entry went to the ring of before the reset); never into a ring enabled after it.
        // The queue generation is read under the gate too: a reset after the gate is left bumps it,
        // so a failed post is reported against the device it happened on, never a fresh one.
        let (ticket, posted, gen) = {
            let _gate = lock(&eng.gate);
            if self.job.aborted.load(Ordering::SeqCst) {
                return false;
            }
            if !eng.bound(ctx) {
                self.job.fail(abi::JOB_UNBOUND);
                return false;
            }
            let ticket = match eng.stalls.register(self.lane, key, now) {
                Ok(t) => t,
                Err(e) => {
                    warn!("lane {}: cannot stall: {e}", self.lane.id());
                    self.job.fail(abi::JOB_ABORTED);
                    return false;
                }
            };
            self.job.faults.fetch_add(1, Ordering::Relaxed);
            let entry = FaultEntry {
                va: key.page,
                timestamp: now,
                context: ctx,
                lane: self.index,
                engine: self.engine as u8,
                access,
                reason,
            };
            let gen = self.shared.generation();
            (ticket, self.shared.faults.post(self.shared, &entry), gen)
        };
        if posted == PostResult::Failed {
            #[cfg(test)]
            if let Some(hook) = lock(&tests::AFTER_FAILED_POST).as_ref() {
                hook(self.shared);
            }
            self.shared.raise_error(gen, abi::ERR_FR_CONFIG, 0);
        }
        let posted_at = traced.map(|_| crate::trace::now());
        let outcome = eng.stalls.wait(ticket);
        if let (Some(t0), Some(tp)) = (traced, posted_at) {
            let tid = (self.engine as u32) << 16 | u32::from(self.index);
            let (acc, out) = (format!("{access:?}"), format!("{outcome:?}"));
            crate::trace::fault(tid, t0, tp, ctx, key.page, &acc, &out);
        }
        match outcome {
            StallOutcome::Replayed => {
                self.job.replays.fetch_add(1, Ordering::Relaxed);
                true
            }
            StallOutcome::Cancelled => {
                self.job.fail(abi::JOB_CANCELLED);
                false
            }
            StallOutcome::Unbound => {
                self.job.fail(abi::JOB_UNBOUND);
                false
            }
            StallOutcome::Aborted => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

    use super::*;
    use crate::{region, Device, InterruptSink};

    /// Test hook: runs on the lane between leaving the gate after a failed fault-ring post and
    /// raising `FL_ERR_FR_CONFIG`.
    pub(super) static AFTER_FAILED_POST: Mutex<Option<Hook>> = Mutex::new(None);

    type Hook = Box<dyn Fn(&Shared) + Send>;

    struct NoIrq;
    impl InterruptSink for NoIrq {
        fn signal(&self, _vector: u16) {}
    }

    fn set(dev: &Device, off: u64, val: u32) {
        dev.region_write(region::BAR0, off, &val.to_le_bytes())
            .unwrap();
    }

    fn reg(dev: &Device, off: u64) -> u32 {
        let mut b = [0u8; 4];
        dev.region_read(region::BAR0, off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    /// A lane whose fault-ring write fails must not report it into a device reset meanwhile: the
    /// fresh device (writeback address 0 after reset) would get `FL_WB_ERROR` at GPA 0x0c.
    #[test]
    fn failed_fault_post_is_not_reported_into_a_reset_device() {
        const WB: u64 = 0x1000;
        const CQ: u64 = 0x2000;
        const REC: u64 = 0x3000;
        const ROOT: u64 = 0x4000;
        const FR: u64 = 0x10000;
        let low = (GuestAddress(0), 0x10000usize);
        let ring = (GuestAddress(FR), 0x1000usize);
        let both = GuestMemoryMmap::<()>::from_ranges(&[low, ring]).unwrap();
        let mem = GuestMemoryAtomic::new(both);
        let config = DeviceConfig {
            contexts: 2,
            engines: 1,
            lanes: 1,
            tlb_sets: 4,
            tlb_ways: 1,
        };
        let dev = Device::new(config, mem.clone(), Arc::new(NoIrq)).unwrap();
        set(&dev, abi::REG_CONTROL, abi::CTRL_ENABLE);
        set(&dev, abi::REG_WB_LO, WB as u32);
        set(&dev, abi::REG_CQ_BASE_LO, CQ as u32);
        set(&dev, abi::REG_CQ_SIZE, 16);
        set(&dev, abi::REG_CQ_CONTROL, abi::CQ_CTRL_ENABLE);
        set(&dev, abi::REG_FR_BASE_LO, FR as u32);
        set(&dev, abi::REG_FR_SIZE, 16);
        set(&dev, abi::REG_FR_CONTROL, abi::FR_CTRL_ENABLE);
        assert_eq!(reg(&dev, abi::REG_ERROR), abi::ERR_NONE);
        // The fault ring's memory goes away: the next fault entry cannot be written.
        let low_only = GuestMemoryMmap::<()>::from_ranges(&[low]).unwrap();
        mem.lock().unwrap().replace(low_only);
        // BIND context 0 to empty tables, then a FILL that faults.
        let m = mem.memory();
        let mut bind = [0u8; 64];
        bind[0] = abi::OP_BIND;
        bind[16..24].copy_from_slice(&ROOT.to_le_bytes());
        m.write_slice(&bind, GuestAddress(CQ)).unwrap();
        let mut fill = [0u8; 64];
        fill[0] = abi::OP_JOB_FILL;
        let args = [0u64, 0x10_0000, 4096, 1, REC, 0xff << 8];
        for (i, a) in args.iter().enumerate() {
            fill[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        m.write_slice(&fill, GuestAddress(CQ + 64)).unwrap();
        drop(m);
        // Between the lane's failed post and its error report, the device is reset.
        let hooked = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&hooked);
        *lock(&AFTER_FAILED_POST) = Some(Box::new(move |shared: &Shared| {
            shared.reset_function();
            flag.store(true, Ordering::SeqCst);
        }));
        set(&dev, abi::REG_CQ_TAIL, 2);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !hooked.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the post never failed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Joins the lane: its error report (if any) has happened.
        dev.shutdown();
        *lock(&AFTER_FAILED_POST) = None;
        let at_0c: u32 = mem.memory().read_obj(GuestAddress(0x0c)).unwrap();
        assert_eq!(
            at_0c, 0,
            "FL_WB_ERROR written into the reset device at GPA 0x0c"
        );
        assert_eq!(reg(&dev, abi::REG_ERROR), abi::ERR_NONE);
    }
}
