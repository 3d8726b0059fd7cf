//! The device clock: nanoseconds since the device was created or last reset, for fault timestamps and
//! interrupt-moderation deadlines. One [`Clock`] is shared (through an `Arc`) by the fault ring, the lanes
//! and the command worker; only a device reset restarts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Nanoseconds since the device was created or last reset: the fault timestamps and moderation deadlines.
#[derive(Debug)]
pub(crate) struct Clock {
    created: Instant,
    offset_ns: AtomicU64,
}

impl Clock {
    /// A clock reading 0 now.
    pub(crate) fn new() -> Self {
        Clock {
            created: Instant::now(),
            offset_ns: AtomicU64::new(0),
        }
    }

    fn raw_ns(&self) -> u64 {
        u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Nanoseconds since the last [`Clock::restart`].
    pub(crate) fn now_ns(&self) -> u64 {
        self.raw_ns()
            .saturating_sub(self.offset_ns.load(Ordering::Relaxed))
    }

    /// Starts counting from 0 again (device reset).
    pub(crate) fn restart(&self) {
        self.offset_ns.store(self.raw_ns(), Ordering::Relaxed);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
