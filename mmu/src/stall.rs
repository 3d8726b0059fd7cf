//! Stalled lanes, REPLAY and CANCEL (spec section 5, rules 1–5).
//!
//! A lane whose translation faults (after dropping every [`Access`](crate::context::Access)):
//! 1. [`StallTable::register`]s the stall — *before* the fault entry can be seen by the driver, so a REPLAY
//!    issued for that entry cannot miss the lane;
//! 2. posts the entry on the fault ring (or overflows);
//! 3. [`StallTable::wait`]s for the outcome: [`StallOutcome::Replayed`] (re-execute the access, which may fault
//!    again), [`StallOutcome::Cancelled`] (fail the job with `FL_JOB_CANCELLED`) or a failure set by
//!    [`StallTable::fail_ctx`] / [`StallTable::abort_all`].
//!
//! Each stall gets exactly one outcome: the first REPLAY / CANCEL / failure that matches it while it waits
//! decides, under the table's lock, and later operations skip it. A REPLAY between registration and posting
//! releases the lane at once; the entry it then posts is stale and harmless (replays are idempotent).
//!
//! Bookkeeping kept here: faults by access type, duplicates (a fault for a (context, page, access) that already
//! has a stalled lane not yet replayed or cancelled), REPLAY and CANCEL operations, and the fault→replay latency
//! histogram from timestamps the caller passes in (no clock inside).

use std::collections::HashMap;

use crate::context::{Lane, CONTEXT_ALL};
use crate::fault::AccessType;
use crate::pte::PAGE_SIZE;
use crate::stats::{latency_bucket, Counters, STAT_LAT_BUCKETS};
use crate::sync::{Condvar, Mutex, MutexGuard};

/// What a lane is stalled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StallKey {
    /// Context.
    pub ctx: u16,
    /// Faulting page VA (rounded down to 4 KiB by [`StallKey::new`]).
    pub page: u64,
    /// Access that faulted.
    pub access: AccessType,
}

impl StallKey {
    /// A key for an `access` to `va` in `ctx`.
    pub fn new(ctx: u16, va: u64, access: AccessType) -> StallKey {
        StallKey {
            ctx,
            page: va & !(PAGE_SIZE - 1),
            access,
        }
    }
}

/// How a stall ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StallOutcome {
    /// REPLAY: re-execute the faulting access.
    Replayed,
    /// CANCEL / CANCEL_ALL: fail the job with `FL_JOB_CANCELLED`.
    Cancelled,
    /// UNBIND of the context: fail the job with `FL_JOB_UNBOUND`.
    Unbound,
    /// Device reset or disconnect: fail the job with `FL_JOB_ABORTED`.
    Aborted,
}

/// A refused stall registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StallError {
    /// The lane id is out of range.
    #[error("lane {0} out of range")]
    BadLane(usize),
    /// The lane already has a stall (registered, or decided and not yet collected).
    #[error("lane {0} is already stalled")]
    AlreadyStalled(usize),
    /// The lane holds an `Access`: stalling now could deadlock an invalidation.
    #[error("lane {0} holds a translation; drop it before stalling")]
    Pinned(usize),
}

/// Proof of a registered stall, to be handed to [`StallTable::wait`] or [`StallTable::try_take`].
#[derive(Debug)]
#[must_use = "a registered stall must be waited for"]
pub struct StallTicket {
    lane: usize,
    duplicate: bool,
}

impl StallTicket {
    /// The lane.
    pub fn lane(&self) -> usize {
        self.lane
    }

    /// Whether the fault duplicates another lane's outstanding fault on the same (context, page, access).
    pub fn is_duplicate(&self) -> bool {
        self.duplicate
    }
}

#[derive(Debug, Clone, Copy)]
struct Stall {
    key: StallKey,
    since_ns: u64,
    outcome: Option<StallOutcome>,
}

#[derive(Debug, Default)]
struct Inner {
    lanes: Vec<Option<Stall>>,
    /// Number of undecided stalls per key.
    waiting: HashMap<StallKey, u32>,
    faults: [u64; 4],
    duplicates: u64,
    replays: u64,
    cancels: u64,
    latency: [u64; STAT_LAT_BUCKETS],
}

impl Inner {
    /// Decides every undecided stall matching `pred`; returns how many.
    fn decide(
        &mut self,
        outcome: StallOutcome,
        now_ns: Option<u64>,
        pred: impl Fn(&StallKey) -> bool,
    ) -> Vec<usize> {
        let mut woken = Vec::new();
        for (lane, slot) in self.lanes.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            if s.outcome.is_some() || !pred(&s.key) {
                continue;
            }
            s.outcome = Some(outcome);
            if let Some(now) = now_ns {
                self.latency[latency_bucket(now.saturating_sub(s.since_ns))] += 1;
            }
            if let Some(n) = self.waiting.get_mut(&s.key) {
                *n -= 1;
                if *n == 0 {
                    self.waiting.remove(&s.key);
                }
            }
            woken.push(lane);
        }
        woken
    }
}

fn ctx_matches(ctx: u16) -> impl Fn(&StallKey) -> bool {
    move |k| ctx == CONTEXT_ALL || k.ctx == ctx
}

/// The stalled lanes of the device. Shared by the lanes and the command processor.
#[derive(Debug)]
pub struct StallTable {
    inner: Mutex<Inner>,
    /// One condition variable per lane, all used with `inner`.
    wake: Box<[Condvar]>,
}

impl StallTable {
    /// A table for `lanes` lanes (ids `0..lanes`, the same ids as the [`Mmu`](crate::context::Mmu)'s).
    pub fn new(lanes: usize) -> StallTable {
        StallTable {
            inner: Mutex::new(Inner {
                lanes: vec![None; lanes],
                ..Inner::default()
            }),
            wake: (0..lanes).map(|_| Condvar::new()).collect(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the table consistent (every update is a single step).
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wake(&self, lanes: &[usize]) {
        for &l in lanes {
            self.wake[l].notify_one();
        }
    }

    /// Registers a stall of `lane` on `key`, faulted at `now_ns`. Refused if the lane still holds an
    /// [`Access`](crate::context::Access).
    pub fn register(
        &self,
        lane: &Lane,
        key: StallKey,
        now_ns: u64,
    ) -> Result<StallTicket, StallError> {
        if lane.is_pinned() {
            return Err(StallError::Pinned(lane.id()));
        }
        self.register_lane(lane.id(), key, now_ns)
    }

    /// Like [`StallTable::register`] by lane id, without the pin check (for callers that track lanes
    /// themselves, and tests).
    pub fn register_lane(
        &self,
        lane: usize,
        key: StallKey,
        now_ns: u64,
    ) -> Result<StallTicket, StallError> {
        let key = StallKey::new(key.ctx, key.page, key.access);
        let mut g = self.lock();
        let inner = &mut *g;
        let slot = inner.lanes.get_mut(lane).ok_or(StallError::BadLane(lane))?;
        if slot.is_some() {
            return Err(StallError::AlreadyStalled(lane));
        }
        *slot = Some(Stall {
            key,
            since_ns: now_ns,
            outcome: None,
        });
        inner.faults[key.access as usize] += 1;
        let n = inner.waiting.entry(key).or_insert(0);
        *n += 1;
        let duplicate = *n > 1;
        if duplicate {
            inner.duplicates += 1;
        }
        Ok(StallTicket { lane, duplicate })
    }

    /// Blocks until the stall is decided, then clears it and returns the outcome.
    pub fn wait(&self, ticket: StallTicket) -> StallOutcome {
        let mut g = self.lock();
        loop {
            if let Some(o) = Self::take_decided(&mut g, ticket.lane) {
                return o;
            }
            g = self.wake[ticket.lane]
                .wait(g)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Returns the outcome if the stall is decided (clearing it), else gives the ticket back.
    pub fn try_take(&self, ticket: StallTicket) -> Result<StallOutcome, StallTicket> {
        Self::take_decided(&mut self.lock(), ticket.lane).ok_or(ticket)
    }

    fn take_decided(inner: &mut Inner, lane: usize) -> Option<StallOutcome> {
        let slot = inner.lanes.get_mut(lane)?;
        let outcome = slot.as_ref()?.outcome?;
        *slot = None;
        Some(outcome)
    }

    /// REPLAY at `now_ns`: releases every stalled lane of `ctx` ([`CONTEXT_ALL`]: of all contexts) to re-execute.
    /// Returns the number released.
    pub fn replay(&self, ctx: u16, now_ns: u64) -> usize {
        let mut g = self.lock();
        g.replays += 1;
        let woken = g.decide(StallOutcome::Replayed, Some(now_ns), ctx_matches(ctx));
        drop(g);
        self.wake(&woken);
        woken.len()
    }

    /// CANCEL: fails the lanes of `ctx` stalled on the page of `page_va` with an access whose bit is set in
    /// `access_mask` (bit n = `FL_ACCESS_*` n). Returns the number cancelled.
    pub fn cancel(&self, ctx: u16, page_va: u64, access_mask: u8) -> usize {
        let page = page_va & !(PAGE_SIZE - 1);
        let mut g = self.lock();
        g.cancels += 1;
        let woken = g.decide(StallOutcome::Cancelled, None, |k| {
            k.ctx == ctx && k.page == page && access_mask & k.access.mask_bit() != 0
        });
        drop(g);
        self.wake(&woken);
        woken.len()
    }

    /// CANCEL_ALL: fails every stalled lane of `ctx` ([`CONTEXT_ALL`]: of all contexts).
    pub fn cancel_all(&self, ctx: u16) -> usize {
        let mut g = self.lock();
        g.cancels += 1;
        let woken = g.decide(StallOutcome::Cancelled, None, ctx_matches(ctx));
        drop(g);
        self.wake(&woken);
        woken.len()
    }

    /// Ends every stall of `ctx` ([`CONTEXT_ALL`]: all) with `outcome` (UNBIND: [`StallOutcome::Unbound`]).
    pub fn fail_ctx(&self, ctx: u16, outcome: StallOutcome) -> usize {
        let mut g = self.lock();
        let woken = g.decide(outcome, None, ctx_matches(ctx));
        drop(g);
        self.wake(&woken);
        woken.len()
    }

    /// Device reset: ends every stall with [`StallOutcome::Aborted`].
    pub fn abort_all(&self) -> usize {
        self.fail_ctx(CONTEXT_ALL, StallOutcome::Aborted)
    }

    /// Stalls not yet decided.
    pub fn stalled(&self) -> usize {
        self.lock()
            .lanes
            .iter()
            .flatten()
            .filter(|s| s.outcome.is_none())
            .count()
    }

    /// The undecided stalls, as `(lane, key)`.
    pub fn stalled_lanes(&self) -> Vec<(usize, StallKey)> {
        let g = self.lock();
        g.lanes
            .iter()
            .enumerate()
            .filter_map(|(l, s)| s.filter(|s| s.outcome.is_none()).map(|s| (l, s.key)))
            .collect()
    }

    /// Adds the fault, duplicate, replay, cancel and latency counters into `c`.
    pub fn add_counters(&self, c: &mut Counters) {
        let g = self.lock();
        c.faults_prefetch += g.faults[AccessType::Prefetch as usize];
        c.faults_read += g.faults[AccessType::Read as usize];
        c.faults_write += g.faults[AccessType::Write as usize];
        c.faults_atomic += g.faults[AccessType::Atomic as usize];
        c.duplicates += g.duplicates;
        c.replays += g.replays;
        c.cancels += g.cancels;
        for (d, s) in c.latency.iter_mut().zip(g.latency.iter()) {
            *d += s;
        }
    }
}
