//! The counter block of spec section 7 as the device assembles it from its components: the queue's own
//! counters, the engine's (MMU, stalls) and the fault ring's, since the last reset and over the device's
//! whole life.

use std::sync::{Arc, Mutex};

use faultline_mmu::Counters;

use crate::abi;
use crate::engine::Engine;
use crate::fault_ring::FaultRingHw;
use crate::stats::Stats;
use crate::sync::lock;

/// One block of `FL_STAT_COUNT` counters, indexed by `FL_STAT_*`.
pub(crate) type Block = [u64; abi::STAT_COUNT as usize];

/// Where the counters come from. Cheap to clone; every clone reads the same counters.
#[derive(Clone)]
pub(crate) struct CounterBlock {
    stats: Arc<Stats>,
    engine: Arc<Engine>,
    ring: Arc<FaultRingHw>,
    /// Counters of the periods before earlier resets.
    retired: Arc<Mutex<Block>>,
}

impl CounterBlock {
    /// The counters of `stats`, `engine` and `ring`.
    pub(crate) fn new(stats: Arc<Stats>, engine: Arc<Engine>, ring: Arc<FaultRingHw>) -> Self {
        CounterBlock {
            stats,
            engine,
            ring,
            retired: Arc::new(Mutex::new([0; abi::STAT_COUNT as usize])),
        }
    }

    /// The counters since the last reset.
    pub(crate) fn counters(&self) -> Block {
        let own = self.stats.snapshot();
        let mut c = Counters {
            commands: own[abi::STAT_COMMANDS as usize],
            jobs: own[abi::STAT_JOBS as usize],
            ..Counters::default()
        };
        self.engine.add_counters(&mut c);
        self.ring.add_counters(&mut c);
        c.to_array()
    }

    /// The counters since the device was created: what resets cleared plus what is counted now.
    pub(crate) fn session_counters(&self) -> Block {
        let now = self.counters();
        let retired = lock(&self.retired);
        merge_counters(&retired, &now)
    }

    /// Adds `before` (the counters read just before a reset cleared them) to the retired periods.
    pub(crate) fn retire(&self, before: &Block) {
        let mut retired = lock(&self.retired);
        *retired = merge_counters(&retired, before);
    }
}

/// Combines the counters of two periods: the ring high-water mark is the maximum, the rest add up.
fn merge_counters(
    a: &[u64; abi::STAT_COUNT as usize],
    b: &[u64; abi::STAT_COUNT as usize],
) -> [u64; abi::STAT_COUNT as usize] {
    std::array::from_fn(|i| {
        if i == abi::STAT_RING_HIGH_WATER as usize {
            a[i].max(b[i])
        } else {
            a[i].saturating_add(b[i])
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_counters_add_up_except_the_high_water_mark() {
        let mut a = [0u64; abi::STAT_COUNT as usize];
        let mut b = [0u64; abi::STAT_COUNT as usize];
        a[abi::STAT_COMMANDS as usize] = 3;
        b[abi::STAT_COMMANDS as usize] = 4;
        a[abi::STAT_RING_HIGH_WATER as usize] = 7;
        b[abi::STAT_RING_HIGH_WATER as usize] = 5;
        b[abi::STAT_JOBS as usize] = u64::MAX;
        a[abi::STAT_JOBS as usize] = 1;
        let m = merge_counters(&a, &b);
        assert_eq!(m[abi::STAT_COMMANDS as usize], 7);
        assert_eq!(m[abi::STAT_RING_HIGH_WATER as usize], 7);
        assert_eq!(m[abi::STAT_JOBS as usize], u64::MAX);
    }
}
