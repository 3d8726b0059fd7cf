//! Cache-line padding for data written by one thread and read by many.

use std::ops::Deref;

/// Aligns `T` to 128 bytes (two cache lines, covering the adjacent-line prefetcher) so that independently
/// written values do not share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
