//! The context table, lanes, and invalidation fences (spec sections 4 and 6).
//!
//! # Translating
//! An engine lane owns a [`Lane`] (one per lane id, `Send` but not `Sync`) and calls [`Lane::translate`], which
//! returns an [`Access`] guard holding the translation. The lane keeps the guard while it moves the bytes of
//! that page and drops it afterwards. `translate` samples the context's *walk generation* before anything else,
//! looks the TLB up, and on a miss walks the page table and fills the TLB only if the generation is unchanged
//! (checked while the TLB set is locked). A lane that translates several pages for one piece of work can take
//! a [`PinGuard`] with [`Lane::pin`] first: nested translations then skip the pin's barrier.
//!
//! # Invalidating
//! [`Mmu::invalidate`] (and `_ctx`, `_all`, `bind`, `unbind`) runs on the command processor:
//! 1. bump the walk generation of the context(s);
//! 2. remove the TLB entries of the range;
//! 3. a `SeqCst` fence, then scan every lane's pin word and note the lanes pinned on that context;
//! 4. wait (spinning, then yielding) until each noted lane has dropped that pin.
//!
//! A lane pins by storing its pin word (a pin counter, the context, a "pinned" bit) and then issuing a `SeqCst`
//! fence *before* it reads the context, the TLB or a page table. Against step 3 this is Dekker's pattern: either
//! the scan sees the pin (and step 4 waits for it), or the lane's fence comes after the invalidator's, and then
//! everything the lane reads was written before it: the bumped generation, the flushed TLB set and (through the
//! command order) the driver's new PTEs. Unpinning is a `Release` store, read with `Acquire` by step 4, so the
//! lane's memory accesses happen before the invalidation completes. The pin store is a `Release` too: step 4
//! also ends when it reads a *newer* pin of the lane (the pin count moved on), and a relaxed store after the
//! unpin would not carry the unpin's release (C++20 release sequences hold read-modify-writes only), so the
//! lane's accesses under the old pin would not be ordered before the invalidation's return. The loom check
//! `pins_vs_fence_walk_fill` (`tests/loom.rs`) fails with a relaxed pin store.
//!
//! # The guarantee
//! When `invalidate(ctx, va, len)` returns: (a) no TLB entry of `ctx` overlapping the range exists; (b) every
//! [`Access`] of `ctx` that was created before it started has been dropped, so no access is still using an old
//! translation; (c) no walk that sampled the generation before step 1 can insert into the TLB, because its
//! generation check fails or it inserted before step 2 flushed the set; (d) every later `translate` of `ctx`
//! sees the page table as it was when the invalidation started. So once the command that follows (a FENCE) is
//! visible, the device never again uses a translation removed before the INVALIDATE.
//!
//! Guards must be dropped, not leaked (`mem::forget` of an [`Access`] would make every later invalidation of
//! its context wait forever). Waiting makes one rule essential: **a lane must not block (stall for a replay, take a lock held across a
//! command) while it holds an `Access`**, or the command processor would wait for a lane that waits for a
//! command. [`StallTable::register`](crate::stall::StallTable::register) refuses a pinned lane.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::fault::{AccessType, FaultReason};
use crate::mem::PhysMem;
use crate::pad::CachePadded;
use crate::pte::{PageSize, PAGE_SIZE, PTE_ADDR_MASK, VA_LIMIT};
use crate::stats::Counters;
use crate::sync::{fence, spin_wait, AtomicBool, AtomicU64, Ordering};
use crate::tlb::{Tlb, TlbConfig, TlbConfigError};
use crate::walker::{contiguous_after, resolve_leaf, JobFailure, Translation, WalkError};

/// The context value that means "all contexts" in commands.
pub const CONTEXT_ALL: u16 = 0xffff;

/// MMU parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmuConfig {
    /// Number of contexts, 1..=0xffff (0xffff itself is [`CONTEXT_ALL`], never a context).
    pub contexts: u16,
    /// Number of lanes (all engines together).
    pub lanes: usize,
    /// TLB geometry.
    pub tlb: TlbConfig,
}

impl Default for MmuConfig {
    fn default() -> Self {
        MmuConfig {
            contexts: 16,
            lanes: 64,
            tlb: TlbConfig::default(),
        }
    }
}

/// An invalid [`MmuConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No contexts, or 0xffff of them.
    #[error("context count must be in 1..0xffff, got {0}")]
    BadContexts(u16),
    /// Bad TLB geometry.
    #[error(transparent)]
    Tlb(#[from] TlbConfigError),
}

/// A refused MMU command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MmuError {
    /// The context is out of range.
    #[error("context {0} out of range")]
    BadContext(u16),
    /// The page-table root is not a 4 KiB-aligned address below 2^52.
    #[error("page-table root {0:#x} is not 4 KiB aligned")]
    BadRoot(u64),
    /// The lane id is out of range.
    #[error("lane {0} out of range")]
    BadLane(usize),
    /// The lane id is already claimed by a live [`Lane`].
    #[error("lane {0} already in use")]
    LaneInUse(usize),
}

/// Why [`Lane::translate`] produced no translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The context is out of range.
    #[error("context {0} out of range")]
    BadContext(u16),
    /// The context is not bound.
    #[error("context {0} not bound")]
    Unbound(u16),
    /// The walk failed.
    #[error(transparent)]
    Walk(#[from] WalkError),
}

impl TranslateError {
    /// The reason of the fault to post, if this error stalls the lane (miss or permission failure).
    pub fn fault_reason(&self) -> Option<FaultReason> {
        match self {
            Self::Walk(w) => w.fault_reason(),
            _ => None,
        }
    }

    /// How the job fails, if this error fails it without a fault.
    pub fn job_failure(&self) -> Option<JobFailure> {
        match self {
            Self::BadContext(_) => Some(JobFailure::Invalid),
            Self::Unbound(_) => Some(JobFailure::Unbound),
            Self::Walk(w) => w.job_failure(),
        }
    }
}

const BOUND: u64 = 1;

#[derive(Debug, Default)]
struct ContextSlot {
    /// Root GPA | [`BOUND`].
    state: AtomicU64,
    /// Walk generation, bumped by every invalidation that covers this context.
    gen: AtomicU64,
}

const PINNED: u64 = 1;
const CTX_SHIFT: u32 = 1;
const COUNT_SHIFT: u32 = 17;

fn pin_ctx(word: u64) -> u16 {
    (word >> CTX_SHIFT) as u16
}

/// Per-lane state, on its own cache lines. Only the owning [`Lane`] writes it, except `claimed`.
#[derive(Debug, Default)]
struct LaneSlot {
    /// `pin count << 17 | ctx << 1 | pinned`; read by invalidations.
    word: AtomicU64,
    /// Nesting depth of live [`Access`] guards.
    depth: AtomicU64,
    claimed: AtomicBool,
    tlb_hits: AtomicU64,
    tlb_misses: AtomicU64,
    walks: AtomicU64,
}

impl LaneSlot {
    /// Drops one level of pinning; the last one publishes "not pinned" (Release: the lane's accesses happen
    /// before an invalidation that sees it).
    #[inline]
    fn unpin(&self) {
        let depth = self.depth.load(Ordering::Relaxed).saturating_sub(1);
        self.depth.store(depth, Ordering::Relaxed);
        if depth == 0 {
            let word = self.word.load(Ordering::Relaxed);
            self.word.store(word & !PINNED, Ordering::Release);
        }
    }
}

/// Adds one to a counter that only one thread writes (no read-modify-write needed).
#[inline]
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// The device MMU: context table, TLB, lanes, invalidation fences. Shared as `Arc<Mmu>`.
#[derive(Debug)]
pub struct Mmu {
    contexts: Box<[ContextSlot]>,
    lanes: Box<[CachePadded<LaneSlot>]>,
    tlb: Tlb,
    invalidations: AtomicU64,
}

/// Which contexts an invalidation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    One(u16),
    All,
}

/// An invalidation whose TLB flush is done and which may still be waiting for lanes (see
/// [`Mmu::begin_invalidate`]).
#[derive(Debug)]
#[must_use = "an invalidation is complete only once wait() returns or poll() says so"]
pub struct Invalidation<'m> {
    mmu: &'m Mmu,
    /// `(lane, pin word seen)` for each lane the invalidation still waits for.
    waits: Vec<(usize, u64)>,
}

impl Invalidation<'_> {
    /// Drops the lanes that have released the pin seen at the start; returns whether none is left.
    pub fn poll(&mut self) -> bool {
        let lanes = &self.mmu.lanes;
        self.waits.retain(|&(lane, seen)| {
            let now = lanes[lane].word.load(Ordering::Acquire);
            now & PINNED != 0 && now >> COUNT_SHIFT == seen >> COUNT_SHIFT
        });
        self.waits.is_empty()
    }

    /// Number of lanes still waited for (as of the last poll).
    pub fn pending_lanes(&self) -> usize {
        self.waits.len()
    }

    /// Waits, spinning then yielding, until every lane noted at the start has dropped that pin.
    pub fn wait(mut self) {
        let mut i = 0u32;
        while !self.poll() {
            spin_wait(i);
            i = i.saturating_add(1);
        }
    }
}

impl Mmu {
    /// Creates an MMU with every context unbound.
    pub fn new(config: MmuConfig) -> Result<Mmu, ConfigError> {
        if config.contexts == 0 || config.contexts == CONTEXT_ALL {
            return Err(ConfigError::BadContexts(config.contexts));
        }
        Ok(Mmu {
            contexts: (0..config.contexts)
                .map(|_| ContextSlot::default())
                .collect(),
            lanes: (0..config.lanes)
                .map(|_| CachePadded(LaneSlot::default()))
                .collect(),
            tlb: Tlb::new(config.tlb)?,
            invalidations: AtomicU64::new(0),
        })
    }

    /// Number of contexts.
    pub fn contexts(&self) -> u16 {
        self.contexts.len() as u16
    }

    /// Number of lanes.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The TLB.
    pub fn tlb(&self) -> &Tlb {
        &self.tlb
    }

    /// Claims lane `id` for the calling engine thread. The [`Lane`] releases the claim when dropped.
    pub fn lane(self: &Arc<Self>, id: usize) -> Result<Lane, MmuError> {
        let slot = self.lanes.get(id).ok_or(MmuError::BadLane(id))?;
        if slot.claimed.swap(true, Ordering::Acquire) {
            return Err(MmuError::LaneInUse(id));
        }
        Ok(Lane {
            mmu: Arc::clone(self),
            id,
            _not_sync: PhantomData,
        })
    }

    fn context(&self, ctx: u16) -> Result<&ContextSlot, MmuError> {
        self.contexts
            .get(usize::from(ctx))
            .ok_or(MmuError::BadContext(ctx))
    }

    /// The root of `ctx`, if bound.
    pub fn root(&self, ctx: u16) -> Result<Option<u64>, MmuError> {
        let s = self.context(ctx)?.state.load(Ordering::Acquire);
        Ok((s & BOUND != 0).then_some(s & PTE_ADDR_MASK))
    }

    /// Current walk generation of `ctx` (bumped by every invalidation covering it).
    pub fn generation(&self, ctx: u16) -> Result<u64, MmuError> {
        Ok(self.context(ctx)?.gen.load(Ordering::Acquire))
    }

    /// BIND: points `ctx` at the page table at `root` and invalidates all its translations (waits).
    pub fn bind(&self, ctx: u16, root: u64) -> Result<(), MmuError> {
        if root & (PAGE_SIZE - 1) != 0 || root & !PTE_ADDR_MASK != 0 {
            return Err(MmuError::BadRoot(root));
        }
        self.context(ctx)?
            .state
            .store(root | BOUND, Ordering::Release);
        self.invalidate_ctx(ctx)
    }

    /// UNBIND: unbinds `ctx` and invalidates all its translations (waits). Failing the context's stalled jobs
    /// is the caller's business ([`StallTable::fail_ctx`](crate::stall::StallTable::fail_ctx)).
    pub fn unbind(&self, ctx: u16) -> Result<(), MmuError> {
        self.context(ctx)?.state.store(0, Ordering::Release);
        self.invalidate_ctx(ctx)
    }

    /// Device reset: unbinds every context and flushes the TLB (waits for pinned lanes).
    pub fn reset(&self) {
        for c in self.contexts.iter() {
            c.state.store(0, Ordering::Release);
        }
        self.invalidate_all();
    }

    /// INVALIDATE: removes the translations of `ctx` overlapping `[va, va + len)` and waits until no access
    /// uses them (see the module documentation for the exact guarantee).
    pub fn invalidate(&self, ctx: u16, va: u64, len: u64) -> Result<(), MmuError> {
        self.begin_invalidate(ctx, va, len).map(Invalidation::wait)
    }

    /// INVALIDATE_ALL for one context.
    pub fn invalidate_ctx(&self, ctx: u16) -> Result<(), MmuError> {
        self.begin_invalidate_ctx(ctx).map(Invalidation::wait)
    }

    /// INVALIDATE_ALL for every context.
    pub fn invalidate_all(&self) {
        self.begin_invalidate_all().wait();
    }

    /// Steps 1–3 of an invalidation of `[va, va + len)` in `ctx`; the caller completes it with
    /// [`Invalidation::wait`] or by polling [`Invalidation::poll`] until it returns true.
    pub fn begin_invalidate(
        &self,
        ctx: u16,
        va: u64,
        len: u64,
    ) -> Result<Invalidation<'_>, MmuError> {
        self.context(ctx)?;
        Ok(self.begin(Target::One(ctx), |tlb| {
            tlb.invalidate(ctx, va.min(VA_LIMIT), len);
        }))
    }

    /// Like [`Mmu::begin_invalidate`] for every translation of `ctx`.
    pub fn begin_invalidate_ctx(&self, ctx: u16) -> Result<Invalidation<'_>, MmuError> {
        self.context(ctx)?;
        Ok(self.begin(Target::One(ctx), |tlb| {
            tlb.invalidate_ctx(ctx);
        }))
    }

    /// Like [`Mmu::begin_invalidate`] for every translation of every context.
    pub fn begin_invalidate_all(&self) -> Invalidation<'_> {
        self.begin(Target::All, |tlb| {
            tlb.invalidate_all();
        })
    }

    fn begin(&self, target: Target, flush: impl FnOnce(&Tlb)) -> Invalidation<'_> {
        bump_shared(&self.invalidations);
        // 1. No walk that sampled the old generation may fill from now on.
        match target {
            Target::One(ctx) => {
                self.contexts[usize::from(ctx)]
                    .gen
                    .fetch_add(1, Ordering::SeqCst);
            }
            Target::All => {
                for c in self.contexts.iter() {
                    c.gen.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        // 2. Remove the cached translations.
        flush(&self.tlb);
        // 3. Pairs with the fence in `Lane::pin_raw` (Dekker): either we see a lane's pin or it sees steps 1 and 2.
        fence(Ordering::SeqCst);
        let waits = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| {
                let w = slot.word.load(Ordering::Acquire);
                let relevant = match target {
                    Target::All => true,
                    Target::One(ctx) => pin_ctx(w) == ctx || pin_ctx(w) == CONTEXT_ALL,
                };
                (w & PINNED != 0 && relevant).then_some((i, w))
            })
            .collect();
        Invalidation { mmu: self, waits }
    }

    /// Adds this MMU's counters (TLB hits and misses, walks, invalidations) into `c`.
    pub fn add_counters(&self, c: &mut Counters) {
        for l in self.lanes.iter() {
            c.tlb_hits += l.tlb_hits.load(Ordering::Relaxed);
            c.tlb_misses += l.tlb_misses.load(Ordering::Relaxed);
            c.walks += l.walks.load(Ordering::Relaxed);
        }
        c.invalidations += self.invalidations.load(Ordering::Relaxed);
    }
}

fn bump_shared(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One engine lane's handle on the MMU. `Send` (move it to the lane's thread) but not `Sync`: its pin state is
/// written by one thread only.
#[derive(Debug)]
pub struct Lane {
    mmu: Arc<Mmu>,
    id: usize,
    _not_sync: PhantomData<Cell<()>>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.slot().claimed.store(false, Ordering::Release);
    }
}

impl Lane {
    /// The lane id.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The MMU.
    pub fn mmu(&self) -> &Arc<Mmu> {
        &self.mmu
    }

    fn slot(&self) -> &LaneSlot {
        &self.mmu.lanes[self.id]
    }

    /// Whether an [`Access`] of this lane is alive.
    pub fn is_pinned(&self) -> bool {
        self.slot().depth.load(Ordering::Relaxed) != 0
    }

    fn pin_raw(&self, ctx: u16) {
        let slot = self.slot();
        let depth = slot.depth.load(Ordering::Relaxed);
        let word = slot.word.load(Ordering::Relaxed);
        if depth == 0 {
            let count = (word >> COUNT_SHIFT).wrapping_add(1);
            slot.word.store(
                count << COUNT_SHIFT | u64::from(ctx) << CTX_SHIFT | PINNED,
                Ordering::Release,
            );
            // Release: an invalidation that reads this newer pin must see the accesses made under the previous
            // one (see the module docs). The fence pairs with step 3 of `Mmu::begin` (Dekker).
            fence(Ordering::SeqCst);
        } else if pin_ctx(word) != ctx && pin_ctx(word) != CONTEXT_ALL {
            // A nested pin on another context: widen the pin to all contexts (same pin count).
            slot.word.store(
                word | u64::from(CONTEXT_ALL) << CTX_SHIFT,
                Ordering::Relaxed,
            );
            fence(Ordering::SeqCst);
        }
        slot.depth.store(depth + 1, Ordering::Relaxed);
    }

    /// Pins the lane on `ctx` without translating: translations made while the returned guard lives skip the
    /// pin's memory barrier (the dominant cost of a TLB hit), and invalidations of `ctx` wait for the guard.
    /// Use it around one chunk of work (say, the source and destination pages of one copy), never across a
    /// stall. Fails only for an out-of-range context.
    pub fn pin(&self, ctx: u16) -> Result<PinGuard<'_>, TranslateError> {
        if usize::from(ctx) >= self.mmu.contexts.len() {
            return Err(TranslateError::BadContext(ctx));
        }
        self.pin_raw(ctx);
        Ok(PinGuard {
            slot: self.slot(),
            _lane: PhantomData,
        })
    }

    /// Translates an `access` to `va` in context `ctx`, reading page tables from `mem` on a TLB miss.
    ///
    /// On success the returned [`Access`] pins the translation: an invalidation of it waits until the guard is
    /// dropped. A TLB hit whose permissions refuse the access is re-walked (the driver may have upgraded the PTE
    /// without invalidating). On error nothing stays pinned; [`TranslateError::fault_reason`] says whether to
    /// stall and post a fault, [`TranslateError::job_failure`] how to fail the job otherwise.
    #[inline]
    pub fn translate<M: PhysMem + ?Sized>(
        &self,
        ctx: u16,
        va: u64,
        access: AccessType,
        mem: &M,
    ) -> Result<Access<'_>, TranslateError> {
        // A span of at most `va`'s own page.
        self.translate_span(ctx, va, 0, access, mem)
    }

    /// Translates like [`Lane::translate`], and when `va` lies in a 4 KiB page and `max` reaches past it,
    /// extends the access over the following pages that continue it: mapped by the same level-0 table, to
    /// the next frames, allowing `access` (see [`Access::span`]). Only the page of `va` goes through the TLB
    /// (and is counted as a hit or a miss); the following pages' entries are read from the page table under
    /// the same pin, so an invalidation of any of them waits for the returned guard like for the first page.
    /// A page that does not continue the run ends it without an error: translating it reports its fault.
    ///
    /// This is what lets an engine move a run of physically contiguous 4 KiB pages with one translation and
    /// one copy instead of one each per page.
    #[inline]
    pub fn translate_span<M: PhysMem + ?Sized>(
        &self,
        ctx: u16,
        va: u64,
        max: u64,
        access: AccessType,
        mem: &M,
    ) -> Result<Access<'_>, TranslateError> {
        let slot = self
            .mmu
            .contexts
            .get(usize::from(ctx))
            .ok_or(TranslateError::BadContext(ctx))?;
        self.pin_raw(ctx);
        let walked = match self.translate_pinned(slot, ctx, va, access, mem) {
            Ok(w) => w,
            Err(e) => {
                self.slot().unpin();
                return Err(e);
            }
        };
        let t = walked.translation;
        let mut span = t.bytes_to_page_end(va);
        if t.page_size == PageSize::Size4K && max > span {
            // The level-0 table of `va`: from the walk, or (after a TLB hit) from a walk now.
            let table = walked.table.or_else(|| {
                resolve_leaf(mem, walked.root, va)
                    .ok()
                    .filter(|(now, _)| now.page_size == PageSize::Size4K)
                    .map(|(_, table)| table)
            });
            if let Some(table) = table {
                span += contiguous_after(mem, table, va, &t, access, max - span);
            }
        }
        Ok(Access {
            slot: self.slot(),
            translation: t,
            span,
            _lane: PhantomData,
        })
    }

    #[inline(always)]
    fn translate_pinned<M: PhysMem + ?Sized>(
        &self,
        c: &ContextSlot,
        ctx: u16,
        va: u64,
        access: AccessType,
        mem: &M,
    ) -> Result<Walked, TranslateError> {
        let lane = self.slot();
        // The walk generation is sampled before the root, the TLB and any PTE are read.
        let gen = c.gen.load(Ordering::Acquire);
        let state = c.state.load(Ordering::Acquire);
        if state & BOUND == 0 {
            return Err(TranslateError::Unbound(ctx));
        }
        if va >= VA_LIMIT {
            return Err(WalkError::NonCanonical { va }.into());
        }
        let root = state & PTE_ADDR_MASK;
        if let Some(translation) = self.mmu.tlb.lookup(ctx, va) {
            if translation.allows(access) {
                bump(&lane.tlb_hits);
                return Ok(Walked {
                    translation,
                    root,
                    table: None,
                });
            }
        }
        bump(&lane.tlb_misses);
        bump(&lane.walks);
        let (translation, table) = resolve_leaf(mem, root, va)?;
        self.mmu.tlb.insert_if(ctx, va, &translation, || {
            c.gen.load(Ordering::Acquire) == gen
        });
        if translation.allows(access) {
            Ok(Walked {
                translation,
                root,
                table: Some(table),
            })
        } else {
            Err(WalkError::Permission {
                translation,
                access,
            }
            .into())
        }
    }
}

/// What [`Lane::translate_pinned`] found: the translation, the context's root, and the table holding the leaf
/// if it walked.
#[derive(Debug, Clone, Copy)]
struct Walked {
    translation: Translation,
    root: u64,
    table: Option<u64>,
}

/// An explicit pin of a lane on a context (see [`Lane::pin`]); unpins when dropped.
#[derive(Debug)]
#[must_use = "the pin lasts as long as the guard"]
pub struct PinGuard<'l> {
    slot: &'l LaneSlot,
    /// Keeps the guard on the lane's thread (`&Lane` is not `Send`).
    _lane: PhantomData<&'l Lane>,
}

impl Drop for PinGuard<'_> {
    fn drop(&mut self) {
        self.slot.unpin();
    }
}

/// A translation in use by a lane. While it lives, invalidations of its context wait; drop it as soon as the
/// bytes of the page have been accessed, and never block while holding it.
#[derive(Debug)]
pub struct Access<'l> {
    slot: &'l LaneSlot,
    translation: Translation,
    /// Bytes from the translated VA that map contiguously from its PA (see [`Access::span`]).
    span: u64,
    /// Keeps the guard on the lane's thread (`&Lane` is not `Send`).
    _lane: PhantomData<&'l Lane>,
}

impl Access<'_> {
    /// The translation.
    pub fn translation(&self) -> &Translation {
        &self.translation
    }

    /// Bytes from the translated VA on that this access covers, mapped contiguously from `self.pa(va)` with
    /// the access allowed: to the end of the VA's page for [`Lane::translate`]; for
    /// [`Lane::translate_span`] possibly whole pages more, never reaching past the VA plus its `max`.
    pub fn span(&self) -> u64 {
        self.span
    }
}

impl std::ops::Deref for Access<'_> {
    type Target = Translation;
    fn deref(&self) -> &Translation {
        &self.translation
    }
}

impl Drop for Access<'_> {
    #[inline]
    fn drop(&mut self) {
        self.slot.unpin();
    }
}
