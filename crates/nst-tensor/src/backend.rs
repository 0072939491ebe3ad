//! The `Backend` trait: the one seam between the math and the hardware.

use crate::{BinaryOp, Conv2dParams, Pool2dParams, Result, Shape, UnaryOp};
use std::fmt::Debug;

/// A device that stores flat buffers and runs the ops nst needs on them: the core (this
/// trait, which every backend implements) and the extensions ([`BackendExt`], faster paths
/// with default implementations made of the core). Code is generic over [`Backend`], which
/// every type implementing both is.
///
/// Buffers are flat and contiguous; the caller (usually [`crate::Tensor`]) owns the shape and
/// has validated it before calling. `&self` is the device. Every method returns a new buffer;
/// buffers are never mutated after creation, so they can be shared freely.
///
/// A new backend implements these 22 methods and writes `impl BackendExt for MyBackend {}`;
/// it then renders, tiles, checkpoints and passes the gradient checks like the others, and
/// overrides extensions where its hardware has something faster.
pub trait BackendCore: Clone + Debug + Send + Sync + 'static {
    /// A flat buffer of elements on this device.
    type Buffer: Debug + Send + Sync + 'static;

    /// A short name for messages, e.g. `cpu-f32` or `cuda:0`.
    fn name(&self) -> String;

    /// Copies host `f32` data to a new buffer.
    fn upload_f32(&self, data: &[f32]) -> Result<Self::Buffer>;
    /// Copies host `f64` data to a new buffer (rounded when the device works in `f32`).
    fn upload_f64(&self, data: &[f64]) -> Result<Self::Buffer>;
    /// Copies a buffer back to the host as `f32`.
    fn download_f32(&self, buf: &Self::Buffer) -> Result<Vec<f32>>;
    /// Copies a buffer back to the host as `f64`.
    fn download_f64(&self, buf: &Self::Buffer) -> Result<Vec<f64>>;
    /// The number of elements of a buffer.
    fn len(&self, buf: &Self::Buffer) -> usize;

    /// A buffer of `len` copies of `value`.
    fn full(&self, len: usize, value: f64) -> Result<Self::Buffer>;
    /// An elementwise op on one operand.
    fn unary(&self, op: UnaryOp, x: &Self::Buffer) -> Result<Self::Buffer>;
    /// `x * mul + add`, elementwise.
    fn affine(&self, x: &Self::Buffer, mul: f64, add: f64) -> Result<Self::Buffer>;
    /// An elementwise op on two buffers of the same length.
    fn binary(&self, op: BinaryOp, a: &Self::Buffer, b: &Self::Buffer) -> Result<Self::Buffer>;

    /// The sum of all elements, as a one-element buffer.
    fn sum_all(&self, x: &Self::Buffer) -> Result<Self::Buffer>;
    /// Sums a tensor of `shape` along `axis`, which becomes size 1.
    fn sum_axis(&self, x: &Self::Buffer, shape: &Shape, axis: usize) -> Result<Self::Buffer>;
    /// Repeats a tensor of shape `from` to shape `to`: same rank, every dim of `from` is 1 or equal.
    fn broadcast(&self, x: &Self::Buffer, from: &Shape, to: &Shape) -> Result<Self::Buffer>;
    /// `len` entries of `axis` from `start` of a tensor of `shape`.
    fn narrow(
        &self,
        x: &Self::Buffer,
        shape: &Shape,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<Self::Buffer>;
    /// The adjoint of [`BackendCore::narrow`]: places `dy` (shape `shape` with `axis` narrowed) at
    /// `start` of a zero tensor whose `axis` has `full` entries.
    fn narrow_backward(
        &self,
        dy: &Self::Buffer,
        shape: &Shape,
        axis: usize,
        start: usize,
        full: usize,
    ) -> Result<Self::Buffer>;

    /// The transpose of a `rows x cols` row-major matrix.
    fn transpose(&self, x: &Self::Buffer, rows: usize, cols: usize) -> Result<Self::Buffer>;

    /// `op(a) · op(b)` where `op(a)` is `m x k` and `op(b)` is `k x n`; `ta`/`tb` say the
    /// operand is stored transposed (`a` as `k x m`, `b` as `n x k`).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        a: &Self::Buffer,
        b: &Self::Buffer,
        m: usize,
        k: usize,
        n: usize,
        ta: bool,
        tb: bool,
    ) -> Result<Self::Buffer>;

    /// 2-D convolution (cross-correlation) of NCHW `x` with OIHW `w`, plus an optional bias per
    /// output channel.
    fn conv2d(
        &self,
        x: &Self::Buffer,
        w: &Self::Buffer,
        bias: Option<&Self::Buffer>,
        p: &Conv2dParams,
    ) -> Result<Self::Buffer>;
    /// Gradient of the convolution w.r.t. its input, given the output gradient `dy`.
    fn conv2d_backward_input(
        &self,
        dy: &Self::Buffer,
        w: &Self::Buffer,
        p: &Conv2dParams,
    ) -> Result<Self::Buffer>;
    /// Gradient of the convolution w.r.t. its weights, given the input and `dy`.
    fn conv2d_backward_weight(
        &self,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        p: &Conv2dParams,
    ) -> Result<Self::Buffer>;

    /// 2-D max or average pooling.
    fn pool2d(&self, x: &Self::Buffer, p: &Pool2dParams) -> Result<Self::Buffer>;
    /// Gradient of the pooling w.r.t. its input `x`, given the output gradient `dy`.
    fn pool2d_backward(
        &self,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        p: &Pool2dParams,
    ) -> Result<Self::Buffer>;
}

/// The extensions of a backend: fused and batched ops that consumers use to go faster, each
/// with a default built from [`BackendCore`]'s ops (so the result is the same whether a
/// backend overrides it or not, up to the documented rounding).
pub trait BackendExt: BackendCore {
    /// `max(conv2d(x, w, bias), 0)`: a convolution and its ReLU, in one pass over the output
    /// where the device can. The default runs the two ops.
    fn conv2d_relu(
        &self,
        x: &Self::Buffer,
        w: &Self::Buffer,
        bias: Option<&Self::Buffer>,
        p: &Conv2dParams,
    ) -> Result<Self::Buffer> {
        let y = self.conv2d(x, w, bias, p)?;
        self.unary(UnaryOp::Relu, &y)
    }

    /// The input gradient of [`BackendExt::conv2d_relu`], given its output `y` and the output
    /// gradient `dy`: the convolution's input gradient of `dy` where `y > 0` (else 0). The
    /// default masks, then runs [`BackendCore::conv2d_backward_input`].
    fn conv2d_relu_backward_input(
        &self,
        y: &Self::Buffer,
        dy: &Self::Buffer,
        w: &Self::Buffer,
        p: &Conv2dParams,
    ) -> Result<Self::Buffer> {
        let g = self.binary(BinaryOp::ReluGrad, y, dy)?;
        self.conv2d_backward_input(&g, w, p)
    }

    /// `Σ a_i·b_i`, accumulated in `f64` where the device can. The default multiplies, sums and
    /// copies the one-element result back.
    fn dot(&self, a: &Self::Buffer, b: &Self::Buffer) -> Result<f64> {
        let prod = self.binary(BinaryOp::Mul, a, b)?;
        let sum = self.sum_all(&prod)?;
        Ok(self.download_f64(&sum)?.first().copied().unwrap_or(0.0))
    }

    /// `a·x + y`, elementwise (the BLAS `axpy`). The default scales, then adds.
    fn axpy(&self, a: f64, x: &Self::Buffer, y: &Self::Buffer) -> Result<Self::Buffer> {
        let ax = self.affine(x, a, 0.0)?;
        self.binary(BinaryOp::Add, &ax, y)
    }

    /// `(Σ |x_i|, max |x_i|)`: both are NaN when any element is NaN, and the sum is infinite
    /// when any element is. The default copies the buffer to the host; devices override it.
    fn norms(&self, x: &Self::Buffer) -> Result<(f64, f64)> {
        Ok(host_norms(&self.download_f64(x)?))
    }

    /// The values of one-element buffers, in one transfer (one wait for the device instead of
    /// one per buffer). The default places each at its own index of a zero vector, adds them
    /// (exactly) and downloads the sum.
    fn scalars(&self, bufs: &[&Self::Buffer]) -> Result<Vec<f64>> {
        let k = bufs.len();
        let mut acc: Option<Self::Buffer> = None;
        for (i, b) in bufs.iter().enumerate() {
            let placed = self.narrow_backward(b, &Shape::new([1]), 0, i, k)?;
            acc = Some(match acc {
                None => placed,
                Some(a) => self.binary(BinaryOp::Add, &a, &placed)?,
            });
        }
        match acc {
            Some(a) => self.download_f64(&a),
            None => Ok(Vec::new()),
        }
    }

    /// Every `rows[r]·cols[c]`, row-major (`rows.len() x cols.len()`), each accumulated like
    /// [`BackendExt::dot`]: the same value as that call would give, so batching never changes a
    /// result. Devices where every returned scalar is a round trip compute them all in one
    /// (see [`BackendExt::batches_reductions`]); the default calls `dot` for each pair.
    fn dots(&self, rows: &[&Self::Buffer], cols: &[&Self::Buffer]) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(rows.len() * cols.len());
        for r in rows {
            for c in cols {
                out.push(self.dot(r, c)?);
            }
        }
        Ok(out)
    }

    /// `Σ_j coeffs[j]·vectors[j]`, elementwise (the vectors of one length, at least one). The
    /// default chains [`BackendExt::axpy`]s; devices accumulate in `f64` and round once.
    fn combine(&self, coeffs: &[f64], vectors: &[&Self::Buffer]) -> Result<Self::Buffer> {
        crate::check::combine("combine", coeffs.len(), vectors.iter().map(|v| self.len(v)))?;
        let mut acc = self.affine(vectors[0], coeffs[0], 0.0)?;
        for (c, v) in coeffs.iter().zip(vectors).skip(1) {
            acc = self.axpy(*c, v, &acc)?;
        }
        Ok(acc)
    }

    /// Whether each scalar this device returns (a [`BackendExt::dot`], a [`BackendExt::norms`]) costs
    /// a blocking round trip worth avoiding, so that callers should batch them
    /// ([`BackendExt::dots`], [`BackendExt::combine`]): true for GPUs, false (the default) where
    /// the data is in host memory.
    fn batches_reductions(&self) -> bool {
        false
    }

    /// `x` (planes of `plane` elements, plane `p` in channel `p % ranges.len()`) with every
    /// element of channel `c` clamped into `ranges[c] = (lo, hi)`: the projection of an image
    /// into its pixel range, in model space. NaN stays NaN. The default runs on the host;
    /// devices override it so the image stays where it is.
    fn clamp_channels(
        &self,
        x: &Self::Buffer,
        plane: usize,
        ranges: &[(f32, f32)],
    ) -> Result<Self::Buffer> {
        let mut v = self.download_f32(x)?;
        crate::check::clamp_channels("clamp_channels", v.len(), plane, ranges)?;
        for (p, chunk) in v.chunks_mut(plane.max(1)).enumerate() {
            let (lo, hi) = ranges[p % ranges.len()];
            for e in chunk {
                *e = e.max(lo).min(hi);
            }
        }
        self.upload_f32(&v)
    }

    /// Frees memory the device keeps for reuse (pools of freed buffers), e.g. between the
    /// scales of a render, whose buffers differ in size. The default does nothing.
    fn release_cached(&self) {}

    /// The most bytes of freed buffers this backend may keep for reuse. A memory plan sets it
    /// to what its budget leaves over (`MemoryPlan::pool_limit`), on the backend it runs on:
    /// the setting and [`BackendExt::release_cached`] are the one way to the backend's cache.
    /// The default does nothing (a backend without a cache, or one that manages its own).
    fn limit_cached(&self, _bytes: u64) {}

    /// Where this backend keeps its buffers and, on a device, how much of the device's memory
    /// is free now: memory plans take their default budget and their constants from it. The
    /// default: the process's own memory.
    fn memory(&self) -> MemoryKind {
        MemoryKind::Host { available: 0 }
    }

    /// The largest buffer this backend can create, in bytes, where it has such a limit (a
    /// GPU API's storage-binding size): memory plans tile so that no buffer exceeds it. The
    /// default: no limit.
    fn max_buffer_bytes(&self) -> Option<u64> {
        None
    }
}

/// A complete backend: the core and the extensions. Every type implementing both is one; code
/// that runs on any device is generic over `B: Backend`.
pub trait Backend: BackendCore + BackendExt {}

impl<T: BackendCore + BackendExt> Backend for T {}

/// Where a backend keeps its buffers ([`BackendExt::memory`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// The process's own memory (the host's RAM), `available` bytes of it available when
    /// asked (0 when the backend could not say).
    Host {
        /// The host's memory available now, in bytes.
        available: u64,
    },
    /// A device's own memory: `total` bytes, `free` of them free when asked (0 when the
    /// device could not say).
    Device {
        /// The device's memory in bytes.
        total: u64,
        /// The bytes free when asked.
        free: u64,
    },
}

impl MemoryKind {
    /// The host's memory available now, as the operating system reports it (Linux's
    /// `MemAvailable`; 0 where it cannot be read).
    pub fn host_now() -> MemoryKind {
        let available = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                kib.checked_mul(1024)
            })
            .unwrap_or(0);
        MemoryKind::Host { available }
    }
}

/// `(Σ |x_i|, max |x_i|)` of host data, NaN-propagating (see [`BackendExt::norms`]).
pub fn host_norms(x: &[f64]) -> (f64, f64) {
    x.iter().fold((0.0f64, 0.0f64), |(s, m), &v| {
        let a = v.abs();
        let m = if m.is_nan() || a.is_nan() {
            f64::NAN
        } else {
            m.max(a)
        };
        (s + a, m)
    })
}

/// Forwards the core ops a wrapper backend does not change to the backend in its field
/// `$field`: every [`BackendCore`] method but `name`, the four transfers and `conv2d`,
/// which wrappers (counting, poisoning, …) tend to watch. For use inside an
/// `impl BackendCore for …` block whose `Buffer` is the inner backend's.
#[macro_export]
macro_rules! forward_core_ops {
    ($field:ident) => {
        fn len(&self, buf: &Self::Buffer) -> usize {
            self.$field.len(buf)
        }
        fn full(&self, len: usize, value: f64) -> $crate::Result<Self::Buffer> {
            self.$field.full(len, value)
        }
        fn unary(&self, op: $crate::UnaryOp, x: &Self::Buffer) -> $crate::Result<Self::Buffer> {
            self.$field.unary(op, x)
        }
        fn affine(&self, x: &Self::Buffer, mul: f64, add: f64) -> $crate::Result<Self::Buffer> {
            self.$field.affine(x, mul, add)
        }
        fn binary(
            &self,
            op: $crate::BinaryOp,
            a: &Self::Buffer,
            b: &Self::Buffer,
        ) -> $crate::Result<Self::Buffer> {
            self.$field.binary(op, a, b)
        }
        fn sum_all(&self, x: &Self::Buffer) -> $crate::Result<Self::Buffer> {
            self.$field.sum_all(x)
        }
        fn sum_axis(
            &self,
            x: &Self::Buffer,
            shape: &$crate::Shape,
            axis: usize,
        ) -> $crate::Result<Self::Buffer> {
            self.$field.sum_axis(x, shape, axis)
        }
        fn broadcast(
            &self,
            x: &Self::Buffer,
            from: &$crate::Shape,
            to: &$crate::Shape,
        ) -> $crate::Result<Self::Buffer> {
            self.$field.broadcast(x, from, to)
        }
        fn narrow(
            &self,
            x: &Self::Buffer,
            shape: &$crate::Shape,
            axis: usize,
            start: usize,
            len: usize,
        ) -> $crate::Result<Self::Buffer> {
            self.$field.narrow(x, shape, axis, start, len)
        }
        fn narrow_backward(
            &self,
            dy: &Self::Buffer,
            shape: &$crate::Shape,
            axis: usize,
            start: usize,
            full: usize,
        ) -> $crate::Result<Self::Buffer> {
            self.$field.narrow_backward(dy, shape, axis, start, full)
        }
        fn transpose(
            &self,
            x: &Self::Buffer,
            rows: usize,
            cols: usize,
        ) -> $crate::Result<Self::Buffer> {
            self.$field.transpose(x, rows, cols)
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
        ) -> $crate::Result<Self::Buffer> {
            self.$field.matmul(a, b, m, k, n, ta, tb)
        }
        fn conv2d_backward_input(
            &self,
            dy: &Self::Buffer,
            w: &Self::Buffer,
            p: &$crate::Conv2dParams,
        ) -> $crate::Result<Self::Buffer> {
            self.$field.conv2d_backward_input(dy, w, p)
        }
        fn conv2d_backward_weight(
            &self,
            x: &Self::Buffer,
            dy: &Self::Buffer,
            p: &$crate::Conv2dParams,
        ) -> $crate::Result<Self::Buffer> {
            self.$field.conv2d_backward_weight(x, dy, p)
        }
        fn pool2d(
            &self,
            x: &Self::Buffer,
            p: &$crate::Pool2dParams,
        ) -> $crate::Result<Self::Buffer> {
            self.$field.pool2d(x, p)
        }
        fn pool2d_backward(
            &self,
            x: &Self::Buffer,
            dy: &Self::Buffer,
            p: &$crate::Pool2dParams,
        ) -> $crate::Result<Self::Buffer> {
            self.$field.pool2d_backward(x, dy, p)
        }
    };
}
