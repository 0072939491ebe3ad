//! [`Counting`]: a backend wrapper that counts the copies between host and device, to check
//! that code keeps its data on the device (only scalars crossing), on any backend.

use crate::{Backend, BackendCore, BackendExt, Conv2dParams, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// What crossed between host and device through a [`Counting`] backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfers {
    /// Uploads of more than one element.
    pub uploads: usize,
    /// Downloads of more than one element.
    pub downloads: usize,
    /// Uploads and downloads of a single element (scalars), and the scalars that
    /// [`BackendExt::dot`], [`BackendExt::dots`], [`BackendExt::norms`] and [`BackendExt::scalars`]
    /// return.
    pub scalars: usize,
    /// The calls that wait for the device to return something: every download, and every
    /// [`BackendExt::dot`], [`BackendExt::dots`], [`BackendExt::norms`] and [`BackendExt::scalars`] (one
    /// each, whatever the number of scalars).
    pub round_trips: usize,
}

#[derive(Debug, Default)]
struct Counters {
    uploads: AtomicUsize,
    downloads: AtomicUsize,
    scalars: AtomicUsize,
    round_trips: AtomicUsize,
}

/// Wraps backend `B`, forwarding every op and counting host transfers ([`Counting::transfers`]).
///
/// ```
/// # use nst_tensor::{Backend, Counting, Tensor};
/// # fn check<B: Backend>(inner: B) -> nst_tensor::Result<()> {
/// let be = Counting::new(inner);
/// let x = Tensor::from_f32(&be, &[1.0, 2.0, 3.0], [3])?; // one upload
/// let s = x.square()?.sum()?.scalar()?; // one scalar download
/// assert_eq!((be.transfers().uploads, be.transfers().scalars), (1, 1));
/// # let _ = s; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Counting<B: Backend> {
    inner: B,
    counters: Arc<Counters>,
    batches: Option<bool>,
}

impl<B: Backend> Counting<B> {
    /// Wraps `inner` with zeroed counters.
    pub fn new(inner: B) -> Self {
        Counting {
            inner,
            counters: Arc::default(),
            batches: None,
        }
    }

    /// The same backend claiming (or denying) that it batches reductions
    /// ([`BackendExt::batches_reductions`]), e.g. to run a GPU's code path on the CPU.
    pub fn with_batching(mut self, batches: bool) -> Self {
        self.batches = Some(batches);
        self
    }

    /// The transfers so far (shared by every clone of this backend).
    pub fn transfers(&self) -> Transfers {
        let c = &self.counters;
        Transfers {
            uploads: c.uploads.load(Ordering::SeqCst),
            downloads: c.downloads.load(Ordering::SeqCst),
            scalars: c.scalars.load(Ordering::SeqCst),
            round_trips: c.round_trips.load(Ordering::SeqCst),
        }
    }

    fn trip(&self) {
        self.counters.round_trips.fetch_add(1, Ordering::SeqCst);
    }

    fn count(&self, len: usize, big: &AtomicUsize) {
        let c = if len > 1 { big } else { &self.counters.scalars };
        c.fetch_add(1, Ordering::SeqCst);
    }
}

impl<B: Backend> BackendCore for Counting<B> {
    type Buffer = B::Buffer;

    fn name(&self) -> String {
        format!("counting({})", self.inner.name())
    }
    fn upload_f32(&self, data: &[f32]) -> Result<Self::Buffer> {
        self.count(data.len(), &self.counters.uploads);
        self.inner.upload_f32(data)
    }
    fn upload_f64(&self, data: &[f64]) -> Result<Self::Buffer> {
        self.count(data.len(), &self.counters.uploads);
        self.inner.upload_f64(data)
    }
    fn download_f32(&self, buf: &Self::Buffer) -> Result<Vec<f32>> {
        self.trip();
        self.count(self.inner.len(buf), &self.counters.downloads);
        self.inner.download_f32(buf)
    }
    fn download_f64(&self, buf: &Self::Buffer) -> Result<Vec<f64>> {
        self.trip();
        self.count(self.inner.len(buf), &self.counters.downloads);
        self.inner.download_f64(buf)
    }
    crate::forward_core_ops!(inner);
    fn conv2d(
        &self,
        x: &Self::Buffer,
        w: &Self::Buffer,
        bias: Option<&Self::Buffer>,
        p: &Conv2dParams,
    ) -> Result<Self::Buffer> {
        self.inner.conv2d(x, w, bias, p)
    }
}

impl<B: Backend> BackendExt for Counting<B> {
    fn release_cached(&self) {
        self.inner.release_cached();
    }
    fn limit_cached(&self, bytes: u64) {
        self.inner.limit_cached(bytes);
    }
    fn memory(&self) -> crate::MemoryKind {
        self.inner.memory()
    }
    fn conv2d_relu(
        &self,
        x: &Self::Buffer,
        w: &Self::Buffer,
        bias: Option<&Self::Buffer>,
        p: &Conv2dParams,
    ) -> Result<Self::Buffer> {
        self.inner.conv2d_relu(x, w, bias, p)
    }
    fn conv2d_relu_backward_input(
        &self,
        y: &Self::Buffer,
        dy: &Self::Buffer,
        w: &Self::Buffer,
        p: &Conv2dParams,
    ) -> Result<Self::Buffer> {
        self.inner.conv2d_relu_backward_input(y, dy, w, p)
    }
    fn dot(&self, a: &Self::Buffer, b: &Self::Buffer) -> Result<f64> {
        self.trip();
        self.counters.scalars.fetch_add(1, Ordering::SeqCst);
        self.inner.dot(a, b)
    }
    fn dots(&self, rows: &[&Self::Buffer], cols: &[&Self::Buffer]) -> Result<Vec<f64>> {
        self.trip();
        self.counters
            .scalars
            .fetch_add(rows.len() * cols.len(), Ordering::SeqCst);
        self.inner.dots(rows, cols)
    }
    fn scalars(&self, bufs: &[&Self::Buffer]) -> Result<Vec<f64>> {
        self.trip();
        self.counters
            .scalars
            .fetch_add(bufs.len(), Ordering::SeqCst);
        self.inner.scalars(bufs)
    }
    fn combine(&self, coeffs: &[f64], vectors: &[&Self::Buffer]) -> Result<Self::Buffer> {
        self.inner.combine(coeffs, vectors)
    }
    fn batches_reductions(&self) -> bool {
        self.batches
            .unwrap_or_else(|| self.inner.batches_reductions())
    }
    fn clamp_channels(
        &self,
        x: &Self::Buffer,
        plane: usize,
        ranges: &[(f32, f32)],
    ) -> Result<Self::Buffer> {
        self.inner.clamp_channels(x, plane, ranges)
    }
    fn axpy(&self, a: f64, x: &Self::Buffer, y: &Self::Buffer) -> Result<Self::Buffer> {
        self.inner.axpy(a, x, y)
    }
    fn norms(&self, x: &Self::Buffer) -> Result<(f64, f64)> {
        self.trip();
        self.counters.scalars.fetch_add(1, Ordering::SeqCst);
        self.inner.norms(x)
    }
}
