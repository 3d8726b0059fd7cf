//! The device's counter block (spec section 7), readable with `FL_OP_STATS` and [`crate::Device::stats`].

use std::sync::atomic::{AtomicU64, Ordering};

use crate::abi;

/// `FL_STAT_COUNT` free-running u64 counters, updated with relaxed atomics.
pub(crate) struct Stats {
    counters: [AtomicU64; abi::STAT_COUNT as usize],
}

impl Stats {
    /// All counters at zero.
    pub(crate) fn new() -> Self {
        Stats {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Adds `n` to counter `index` (an `FL_STAT_*` value); out-of-range indexes are ignored.
    pub(crate) fn add(&self, index: u32, n: u64) {
        if let Some(c) = self.counters.get(index as usize) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A copy of every counter.
    pub(crate) fn snapshot(&self) -> Vec<u64> {
        self.counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Zeroes every counter (device reset).
    pub(crate) fn clear(&self) {
        for c in &self.counters {
            c.store(0, Ordering::Relaxed);
        }
    }
}
