//! A lane thread: claims slots of the jobs at the head of its engine's FIFO and runs them window by
//! window through the MMU, stalling on faults (the engine's module documentation has the protocol).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use faultline_mmu::{
    AccessType, FaultEntry, FaultReason, Lane, StallKey, StallOutcome, TranslateError,
};
use log::warn;
use vm_memory::VolatileMemory;

use super::job::{Job, Op, FNV_OFFSET};
use super::{failure_status, Engine, MAX_SEGMENT};
use crate::abi;
use crate::dma::phys::{slice_at, GuestPhys};
use crate::dma::Mem;
use crate::fault_ring::PostResult;
use crate::sync::lock;

/// Scratch buffer for FILL and CHECKSUM.
const SCRATCH: usize = 4096;

/// The body of a lane thread: claim a slot of the job at the head of the engine's FIFO, run it, complete
/// the job if it was the last slot; until shutdown.
pub(crate) fn lane_thread(eng: Arc<Engine>, engine: usize, index: u16, lane: Lane) {
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
            eng: &eng,
            lane: &lane,
            engine,
            index,
            job: &job,
            scratch: &mut scratch,
        }
        .run_slot(slot);
        if job.slots_done.fetch_add(1, Ordering::AcqRel) + 1 == job.slots {
            eng.complete(&job, job.status());
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
    eng: &'a Engine,
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
            let eng = self.eng;
            let (moved, step) = eng
                .io
                .dma
                .with(|mem| self.window(&mem, off, end, &mut hash));
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

    /// Translates `va` and the run of contiguous 4 KiB pages after it, up to `max` bytes
    /// ([`Lane::translate_span`]); a fault or failure becomes the [`Step`] to take.
    fn translate<'l>(
        lane: &'l Lane,
        ctx: u16,
        va: u64,
        max: u64,
        access: AccessType,
        phys: &GuestPhys<'_>,
    ) -> Result<faultline_mmu::Access<'l>, Step> {
        lane.translate_span(ctx, va, max, access, phys)
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

    /// Moves the bytes from `off` up to the end of the translated run of any operand (its page, or the
    /// physically contiguous 4 KiB pages that follow it: [`Lane::translate_span`]) or `end`; returns how
    /// many. The lane is pinned ([`LaneRun::window`]).
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
                let d = Self::translate(self.lane, ctx, dva, max, AccessType::Write, &phys)?;
                let n = max.min(d.span());
                let pa = d.pa(dva);
                if !full.is_local(pa, n) {
                    let n = n.min(d.bytes_to_page_end(dva));
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
                let s = Self::translate(self.lane, ctx, sva, max, AccessType::Read, &phys)?;
                let n = max.min(s.span());
                let d = Self::translate(self.lane, ctx, dva, n, AccessType::Write, &phys)?;
                let n = n.min(d.span());
                let (spa, dpa) = (s.pa(sva), d.pa(dva));
                if !full.is_local(spa, n) || !full.is_local(dpa, n) {
                    // Client-served memory is reached page by page, as its messages may not cross a
                    // region boundary that a run of pages could.
                    let n = n
                        .min(s.bytes_to_page_end(sva))
                        .min(d.bytes_to_page_end(dva));
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
                let s = Self::translate(self.lane, ctx, sva, max, AccessType::Read, &phys)?;
                let n = max.min(s.span());
                let pa = s.pa(sva);
                if !full.is_local(pa, n) {
                    let n = n.min(s.bytes_to_page_end(sva));
                    return self.remote_segment(full, spec.op, pa, 0, n, hash);
                }
                let buf = &mut self.scratch[..];
                let mut done = 0;
                let mut h = *hash;
                while done < n {
                    let want = (n - done).min(buf.len() as u64) as usize;
                    let from = slice_at(mem, pa + done, want).ok_or(dma)?;
                    let got = from.copy_to(&mut buf[..want]);
                    h = super::job::fnv1a(h, &buf[..got]);
                    done += got as u64;
                }
                *hash = h;
                Ok(n)
            }
            Op::AtomicAdd(addend) => {
                let d = Self::translate(self.lane, ctx, dva, max, AccessType::Atomic, &phys)?;
                let n = max.min(d.span());
                let pa = d.pa(dva);
                if !full.is_local(pa, n) {
                    let n = n.min(d.bytes_to_page_end(dva));
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
                    h = super::job::fnv1a(h, buf);
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
        let eng = self.eng;
        let ctx = self.job.spec.ctx;
        let now = eng.io.clock.now_ns();
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
            let gen = eng.io.control.generation();
            (ticket, eng.io.ring.post(&entry), gen)
        };
        if posted == PostResult::Failed {
            #[cfg(test)]
            if let Some(hook) = lock(&tests::AFTER_FAILED_POST).as_ref() {
                hook();
            }
            eng.io.control.raise_error(gen, abi::ERR_FR_CONFIG, 0);
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

    use std::time::Duration;

    use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

    use super::*;
    use crate::{region, Device, DeviceConfig, InterruptSink};

    /// Test hook: runs on the lane between leaving the gate after a failed fault-ring post and
    /// raising `FL_ERR_FR_CONFIG`.
    pub(super) static AFTER_FAILED_POST: Mutex<Option<Hook>> = Mutex::new(None);

    type Hook = Box<dyn Fn() + Send>;

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
        let dev = Arc::new(Device::new(config, mem.clone(), Arc::new(NoIrq)).unwrap());
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
        let resetter = Arc::clone(&dev);
        *lock(&AFTER_FAILED_POST) = Some(Box::new(move || {
            resetter.reset();
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
