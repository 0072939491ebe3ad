//! [`Counting`]: a backend wrapper that counts the copies between host and device, to check
//! that code keeps its data on the device (only scalars crossing), on any backend.

use crate::{Backend, BinaryOp, Conv2dParams, Pool2dParams, Result, Shape, UnaryOp};
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
    /// [`Backend::dot`], [`Backend::dots`], [`Backend::norms`] and [`Backend::scalars`]
    /// return.
    pub scalars: usize,
    /// The calls that wait for the device to return something: every download, and every
    /// [`Backend::dot`], [`Backend::dots`], [`Backend::norms`] and [`Backend::scalars`] (one
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
    /// ([`Backend::batches_reductions`]), e.g. to run a GPU's code path on the CPU.
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

impl<B: Backend> Backend for Counting<B> {
    type Buffer = B::Buffer;

    fn name(&self) -> String {
        format!("counting({})", self.inner.name())
    }

    fn release_cached(&self) {
        self.inner.release_cached();
    }
    fn memory(&self) -> crate::MemoryKind {
        self.inner.memory()
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
    fn len(&self, buf: &Self::Buffer) -> usize {
        self.inner.len(buf)
    }
    fn full(&self, len: usize, value: f64) -> Result<Self::Buffer> {
        self.inner.full(len, value)
    }
    fn unary(&self, op: UnaryOp, x: &Self::Buffer) -> Result<Self::Buffer> {
        self.inner.unary(op, x)
    }
    fn affine(&self, x: &Self::Buffer, mul: f64, add: f64) -> Result<Self::Buffer> {
        self.inner.affine(x, mul, add)
    }
    fn binary(&self, op: BinaryOp, a: &Self::Buffer, b: &Self::Buffer) -> Result<Self::Buffer> {
        self.inner.binary(op, a, b)
    }
    fn sum_all(&self, x: &Self::Buffer) -> Result<Self::Buffer> {
        self.inner.sum_all(x)
    }
    fn sum_axis(&self, x: &Self::Buffer, shape: &Shape, axis: usize) -> Result<Self::Buffer> {
        self.inner.sum_axis(x, shape, axis)
    }
    fn broadcast(&self, x: &Self::Buffer, from: &Shape, to: &Shape) -> Result<Self::Buffer> {
        self.inner.broadcast(x, from, to)
    }
    fn narrow(
        &self,
        x: &Self::Buffer,
        shape: &Shape,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<Self::Buffer> {
        self.inner.narrow(x, shape, axis, start, len)
    }
    fn narrow_backward(
        &self,
        dy: &Self::Buffer,
        shape: &Shape,
        axis: usize,
        start: usize,
        full: usize,
    ) -> Result<Self::Buffer> {
        self.inner.narrow_backward(dy, shape, axis, start, full)
    }
    fn transpose(&self, x: &Self::Buffer, rows: usize, cols: usize) -> Result<Self::Buffer> {
        self.inner.transpose(x, rows, cols)
    }
    fn matmul(
        &self,
        a: &Self::Buffer,
        b: &Self::Buffer,
        m: usize,
        k: usize,
        n: usize,
        ta: bool,
        tb: bool,
    ) -> Result<Self::Buffer> {
        self.inner.matmul(a, b, m, k, n, ta, tb)
    }
    fn conv2d(
        &self,
        x: &Self::Buffer,
        w: &Self::Buffer,
        bias: Option<&Self::Buffer>,
        p: &Conv2dParams,
    ) -> Result<Self::Buffer> {
        self.inner.conv2d(x, w, bias, p)
    }
    fn conv2d_backward_input(
        &self,
        dy: &Self::Buffer,
        w: &Self::Buffer,
        p: &Conv2dParams,
    ) -> Result<Self::Buffer> {
        self.inner.conv2d_backward_input(dy, w, p)
    }
    fn conv2d_backward_weight(
        &self,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        p: &Conv2dParams,
    ) -> Result<Self::Buffer> {
        self.inner.conv2d_backward_weight(x, dy, p)
    }
    fn pool2d(&self, x: &Self::Buffer, p: &Pool2dParams) -> Result<Self::Buffer> {
        self.inner.pool2d(x, p)
    }
    fn pool2d_backward(
        &self,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        p: &Pool2dParams,
    ) -> Result<Self::Buffer> {
        self.inner.pool2d_backward(x, dy, p)
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
