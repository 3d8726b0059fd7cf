//! The counter block of FL_OP_STATS (spec section 7).
//!
//! Each component adds its own counters into a [`Counters`]: [`Mmu::add_counters`](crate::context::Mmu::add_counters)
//! (TLB hits and misses, walks, invalidations), [`StallTable::add_counters`](crate::stall::StallTable::add_counters)
//! (faults by access type, duplicates, replays, cancels, latency histogram) and
//! [`FaultRing::add_counters`](crate::ring::FaultRing::add_counters) (overflows, high-water mark). The device
//! fills in `commands` and `jobs` and writes [`Counters::to_array`].
//!
//! Units: `replays` and `cancels` count REPLAY / CANCEL / CANCEL_ALL operations; the faults counters count
//! every fault taken (posted or dropped on overflow); `ring_high_water` is the largest `PUT - GET` seen.

/// Index of `commands`.
pub const STAT_COMMANDS: usize = 0;
/// Index of `jobs`.
pub const STAT_JOBS: usize = 1;
/// Index of `faults_read`.
pub const STAT_FAULTS_READ: usize = 2;
/// Index of `faults_write`.
pub const STAT_FAULTS_WRITE: usize = 3;
/// Index of `faults_atomic`.
pub const STAT_FAULTS_ATOMIC: usize = 4;
/// Index of `faults_prefetch`.
pub const STAT_FAULTS_PREFETCH: usize = 5;
/// Index of `fault_overflows`.
pub const STAT_FAULT_OVERFLOWS: usize = 6;
/// Index of `replays`.
pub const STAT_REPLAYS: usize = 7;
/// Index of `cancels`.
pub const STAT_CANCELS: usize = 8;
/// Index of `invalidations`.
pub const STAT_INVALIDATIONS: usize = 9;
/// Index of `tlb_hits`.
pub const STAT_TLB_HITS: usize = 10;
/// Index of `tlb_misses`.
pub const STAT_TLB_MISSES: usize = 11;
/// Index of `walks`.
pub const STAT_WALKS: usize = 12;
/// Index of `ring_high_water`.
pub const STAT_RING_HIGH_WATER: usize = 13;
/// Index of `duplicates`.
pub const STAT_DUPLICATES: usize = 14;
/// Index of the first latency bucket.
pub const STAT_LAT_BASE: usize = 15;
/// Number of latency buckets.
pub const STAT_LAT_BUCKETS: usize = 24;
/// Number of counters.
pub const STAT_COUNT: usize = STAT_LAT_BASE + STAT_LAT_BUCKETS;

/// The latency bucket of a fault→replay latency of `ns` nanoseconds: bucket `i` holds `[2^i, 2^(i+1))` µs.
/// Latencies under 1 µs go to bucket 0 and those of 2^24 µs or more to the last bucket.
pub fn latency_bucket(ns: u64) -> usize {
    let us = ns / 1000;
    if us == 0 {
        0
    } else {
        (us.ilog2() as usize).min(STAT_LAT_BUCKETS - 1)
    }
}

/// The counters of spec section 7, in index order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Commands executed.
    pub commands: u64,
    /// Jobs started.
    pub jobs: u64,
    /// Read faults taken.
    pub faults_read: u64,
    /// Write faults taken.
    pub faults_write: u64,
    /// Atomic faults taken.
    pub faults_atomic: u64,
    /// Prefetch faults taken.
    pub faults_prefetch: u64,
    /// Faults dropped because the ring was full.
    pub fault_overflows: u64,
    /// REPLAY operations.
    pub replays: u64,
    /// CANCEL and CANCEL_ALL operations.
    pub cancels: u64,
    /// Invalidations (INVALIDATE, INVALIDATE_ALL, and those implied by BIND/UNBIND/reset).
    pub invalidations: u64,
    /// TLB hits.
    pub tlb_hits: u64,
    /// TLB misses.
    pub tlb_misses: u64,
    /// Page-table walks.
    pub walks: u64,
    /// Largest number of pending fault-ring entries seen.
    pub ring_high_water: u64,
    /// Faults posted for a (context, page, access) already posted and not yet replayed.
    pub duplicates: u64,
    /// Fault→replay latency histogram, bucket `i` = `[2^i, 2^(i+1))` µs.
    pub latency: [u64; STAT_LAT_BUCKETS],
}

impl Counters {
    /// The counter array, index = `FL_STAT_*`.
    pub fn to_array(&self) -> [u64; STAT_COUNT] {
        let mut a = [0u64; STAT_COUNT];
        a[STAT_COMMANDS] = self.commands;
        a[STAT_JOBS] = self.jobs;
        a[STAT_FAULTS_READ] = self.faults_read;
        a[STAT_FAULTS_WRITE] = self.faults_write;
        a[STAT_FAULTS_ATOMIC] = self.faults_atomic;
        a[STAT_FAULTS_PREFETCH] = self.faults_prefetch;
        a[STAT_FAULT_OVERFLOWS] = self.fault_overflows;
        a[STAT_REPLAYS] = self.replays;
        a[STAT_CANCELS] = self.cancels;
        a[STAT_INVALIDATIONS] = self.invalidations;
        a[STAT_TLB_HITS] = self.tlb_hits;
        a[STAT_TLB_MISSES] = self.tlb_misses;
        a[STAT_WALKS] = self.walks;
        a[STAT_RING_HIGH_WATER] = self.ring_high_water;
        a[STAT_DUPLICATES] = self.duplicates;
        a[STAT_LAT_BASE..].copy_from_slice(&self.latency);
        a
    }

    /// The little-endian bytes of [`Counters::to_array`], as FL_OP_STATS writes them.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_array()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    /// Total faults taken, all access types.
    pub fn faults(&self) -> u64 {
        self.faults_read + self.faults_write + self.faults_atomic + self.faults_prefetch
    }
}
