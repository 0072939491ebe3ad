//! A process-wide pool of freed buffers, so that steady-state work (one render iteration
//! after another) reuses memory that is already mapped instead of faulting in fresh pages.
//!
//! A request takes the smallest pooled buffer that fits (at most twice its size); when none
//! fits, pooled buffers too small for it are freed, oldest first, up to its size, so the
//! pool trades page faults for memory only up to the footprint the work already has.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Buffers smaller than this many elements are not pooled.
const MIN_POOLED: usize = 4096;
/// The most buffers kept.
const MAX_KEPT: usize = 64;
/// The most bytes kept, unless [`BufPool::set_limit`] says otherwise.
const MAX_BYTES: usize = 4 << 30;

/// Buffers of at least this many bytes are backed by transparent huge pages where the
/// kernel offers them on request (Linux `madvise`).
const HUGE_PAGE_MIN: usize = 4 << 20;

/// An empty vector with room for `len` elements, not yet touched. A large one is marked for
/// transparent huge pages first, so that filling it faults in 2 MB pages instead of 4 KB
/// ones: allocating fresh activation buffers costs a fraction of the kernel time.
fn fresh<E>(len: usize) -> Vec<E> {
    let v: Vec<E> = Vec::with_capacity(len);
    let bytes = v.capacity() * size_of::<E>();
    #[cfg(target_os = "linux")]
    if bytes >= HUGE_PAGE_MIN {
        // The range of whole pages inside the allocation; advice only, so a failure (an
        // old kernel, huge pages off) changes nothing but speed.
        let start = v.as_ptr() as usize;
        let page = 4096;
        let first = start.div_ceil(page) * page;
        let end = (start + bytes) / page * page;
        if end > first {
            // SAFETY: `first..end` lies inside the vector's own allocation, which is live
            // and not yet initialised; MADV_HUGEPAGE only changes how its pages are backed.
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
    v
}

/// Freed vectors, waiting to be reused, up to a limit in bytes (4 GiB unless the backend is
/// told otherwise: `BackendExt::limit_cached`, which a memory plan sets).
pub struct BufPool<E> {
    free: Mutex<Vec<Vec<E>>>,
    limit: AtomicUsize,
}

impl<E: Copy + Default> Default for BufPool<E> {
    fn default() -> Self {
        Self::new()
    }
}

/// Over any plain element (`Default` is its zero: 0.0 for the floats).
impl<E: Copy + Default> BufPool<E> {
    /// An empty pool.
    pub const fn new() -> Self {
        BufPool {
            free: Mutex::new(Vec::new()),
            limit: AtomicUsize::new(MAX_BYTES),
        }
    }

    /// Keeps at most `bytes` of freed vectors from now on (frees the oldest beyond it).
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept: usize = free.iter().map(|v| v.capacity() * size_of::<E>()).sum();
        while kept > bytes && !free.is_empty() {
            kept -= free.remove(0).capacity() * size_of::<E>();
        }
    }

    /// A zeroed vector of `len` elements, reusing a freed one of fitting capacity.
    pub(crate) fn zeroed(&self, len: usize) -> Vec<E> {
        let mut v = self.take(len).unwrap_or_else(|| fresh(len));
        v.clear();
        v.resize(len, E::default());
        v
    }

    /// A vector of `len` elements with unspecified (stale but valid) values, for callers that
    /// overwrite every element: a reused buffer is not cleared first.
    pub(crate) fn scratch(&self, len: usize) -> Vec<E> {
        match self.take(len) {
            Some(mut v) => {
                v.truncate(len);
                v.resize(len, E::default());
                v
            }
            None => {
                let mut v = fresh(len);
                v.resize(len, E::default());
                v
            }
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
                return Some(free.remove(i));
            }
            // A miss: a fresh buffer is about to be mapped. Free at least as many bytes of
            // pooled buffers too small to serve it, oldest first, so that the footprint (live
            // plus pooled) does not grow by the whole request. Without this, a backward pass
            // that frees small gradients while asking for ever larger ones keeps them all.
            let mut freed = 0;
            while freed < len {
                match free.iter().position(|v| v.capacity() < len) {
                    Some(i) => freed += free.remove(i).capacity(),
                    None => break,
                }
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
        if free.len() < MAX_KEPT
            && bytes + v.capacity() * size_of::<E>() <= self.limit.load(Ordering::Relaxed)
        {
            free.push(v);
        }
    }

    /// Frees every pooled vector.
    pub fn clear(&self) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooled(p: &BufPool<f32>) -> Vec<usize> {
        p.free
            .lock()
            .unwrap()
            .iter()
            .map(|v| v.capacity())
            .collect()
    }

    #[test]
    fn reuses_fitting_buffers_and_evicts_small_ones_on_a_miss() {
        let p = BufPool::<f32>::new();
        p.put(vec![0.0; 10_000]);
        p.put(vec![0.0; 6_000]);
        p.put(vec![0.0; 9_000]);
        // The smallest that fits (within twice the request).
        assert_eq!(p.scratch(8_000).capacity(), 9_000);
        assert_eq!(pooled(&p), [10_000, 6_000]);
        // Nothing fits 50 000: the smaller buffers go, oldest first, up to the request.
        let big = p.zeroed(50_000);
        assert_eq!(big.len(), 50_000);
        assert!(pooled(&p).is_empty());
        p.put(vec![0.0; 40_000]);
        p.put(vec![0.0; 30_000]);
        p.put(vec![0.0; 5_000]);
        // A miss frees only about what it asks for: 40 000 + 30 000 covers 60 000.
        let _ = p.scratch(60_000);
        assert_eq!(pooled(&p), [5_000]);
        // Tiny buffers are never pooled.
        p.put(vec![0.0; 100]);
        assert_eq!(pooled(&p), [5_000]);
    }

    #[test]
    fn the_limit_frees_the_oldest_beyond_it_and_bounds_what_is_kept() {
        let p = BufPool::<f32>::new();
        p.put(vec![0.0; 10_000]);
        p.put(vec![0.0; 20_000]);
        p.set_limit(100_000);
        assert_eq!(pooled(&p), [20_000]);
        p.put(vec![0.0; 10_000]);
        assert_eq!(pooled(&p), [20_000], "over the limit: freed, not kept");
        p.set_limit(1 << 30);
        p.put(vec![0.0; 10_000]);
        assert_eq!(pooled(&p), [20_000, 10_000]);
    }
}
