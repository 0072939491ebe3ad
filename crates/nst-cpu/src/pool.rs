//! A process-wide pool of freed buffers, so that steady-state work (one render iteration
//! after another) reuses memory that is already mapped instead of faulting in fresh pages.

use crate::Element;
use std::sync::Mutex;

/// Buffers smaller than this many elements are not pooled.
const MIN_POOLED: usize = 4096;
/// The most buffers kept.
const MAX_KEPT: usize = 64;
/// The most bytes kept.
const MAX_BYTES: usize = 4 << 30;

/// Freed vectors, waiting to be reused.
#[derive(Default)]
pub struct BufPool<E> {
    free: Mutex<Vec<Vec<E>>>,
}

impl<E: Element> BufPool<E> {
    /// An empty pool.
    pub const fn new() -> Self {
        BufPool {
            free: Mutex::new(Vec::new()),
        }
    }

    /// A zeroed vector of `len` elements, reusing a freed one of fitting capacity.
    pub(crate) fn zeroed(&self, len: usize) -> Vec<E> {
        let mut v = self.take(len).unwrap_or_default();
        v.clear();
        v.resize(len, E::zero());
        v
    }

    /// A vector of `len` elements with unspecified (stale but valid) values, for callers that
    /// overwrite every element: a reused buffer is not cleared first.
    pub(crate) fn scratch(&self, len: usize) -> Vec<E> {
        match self.take(len) {
            Some(mut v) => {
                v.truncate(len);
                v.resize(len, E::zero());
                v
            }
            None => vec![E::zero(); len],
        }
    }

    fn take(&self, len: usize) -> Option<Vec<E>> {
        if len >= MIN_POOLED {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= len && v.capacity() <= 2 * len)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                return Some(free.swap_remove(i));
            }
        }
        None
    }

    /// Returns a vector to the pool (or frees it when the pool is full).
    pub(crate) fn put(&self, v: Vec<E>) {
        if v.capacity() < MIN_POOLED {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: usize = free.iter().map(|v| v.capacity()).sum::<usize>() * size_of::<E>();
        if free.len() < MAX_KEPT && bytes + v.capacity() * size_of::<E>() <= MAX_BYTES {
            free.push(v);
        }
    }

    /// Frees every pooled vector.
    pub fn clear(&self) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
