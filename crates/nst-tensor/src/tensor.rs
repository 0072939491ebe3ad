//! `Tensor<B>`: an immutable, cheaply cloned buffer on a backend together with its shape.

use crate::{
    Backend, BinaryOp, Conv2dParams, Error, Pool2dParams, PoolKind, Result, Shape, UnaryOp,
};
use std::sync::Arc;

/// An immutable tensor on backend `B`: a shared buffer plus its shape.
///
/// Every op validates shapes here, once, and then calls the backend. Cloning is cheap (the
/// buffer is reference-counted).
///
/// ```
/// # fn demo<B: nst_tensor::Backend>(b: &B) -> nst_tensor::Result<()> {
/// use nst_tensor::Tensor;
/// let x = Tensor::from_f32(b, &[1.0, -2.0, 3.0, 4.0], [2, 2])?;
/// let y = x.relu()?.square()?.sum()?;
/// assert_eq!(y.scalar()?, 26.0);
/// # Ok(()) }
/// ```
pub struct Tensor<B: Backend> {
    backend: B,
    buf: Arc<B::Buffer>,
    shape: Shape,
}

impl<B: Backend> Clone for Tensor<B> {
    fn clone(&self) -> Self {
        Tensor {
            backend: self.backend.clone(),
            buf: Arc::clone(&self.buf),
            shape: self.shape.clone(),
        }
    }
}

impl<B: Backend> std::fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor<{}>{}", self.backend.name(), self.shape)
    }
}

fn same_shape(op: &'static str, a: &Shape, b: &Shape) -> Result<()> {
    if a != b {
        return Err(Error::ShapeMismatch {
            op,
            lhs: a.clone(),
            rhs: b.clone(),
        });
    }
    Ok(())
}

fn check_axis(op: &'static str, shape: &Shape, axis: usize) -> Result<()> {
    if axis >= shape.rank() {
        return Err(Error::invalid(
            op,
            format!("axis {axis} out of range for shape {shape}"),
        ));
    }
    Ok(())
}

impl<B: Backend> Tensor<B> {
    /// Wraps a backend buffer. The buffer's length must match the shape.
    pub fn from_buffer(backend: &B, buf: B::Buffer, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        let got = backend.len(&buf);
        if got != shape.numel() {
            return Err(Error::HostLength {
                expected: shape.numel(),
                shape,
                got,
            });
        }
        Ok(Tensor {
            backend: backend.clone(),
            buf: Arc::new(buf),
            shape,
        })
    }

    fn wrap(&self, buf: B::Buffer, shape: Shape) -> Self {
        Tensor {
            backend: self.backend.clone(),
            buf: Arc::new(buf),
            shape,
        }
    }

    fn check_host(shape: &Shape, len: usize) -> Result<()> {
        if len != shape.numel() {
            return Err(Error::HostLength {
                shape: shape.clone(),
                expected: shape.numel(),
                got: len,
            });
        }
        Ok(())
    }

    /// Copies host `f32` data of the given shape to the backend.
    pub fn from_f32(backend: &B, data: &[f32], shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        Self::check_host(&shape, data.len())?;
        let buf = backend.upload_f32(data)?;
        Self::from_buffer(backend, buf, shape)
    }

    /// Copies host `f64` data of the given shape to the backend.
    pub fn from_f64(backend: &B, data: &[f64], shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        Self::check_host(&shape, data.len())?;
        let buf = backend.upload_f64(data)?;
        Self::from_buffer(backend, buf, shape)
    }

    /// A tensor filled with `value`.
    pub fn full(backend: &B, shape: impl Into<Shape>, value: f64) -> Result<Self> {
        let shape = shape.into();
        let buf = backend.full(shape.numel(), value)?;
        Self::from_buffer(backend, buf, shape)
    }

    /// A tensor of zeros.
    pub fn zeros(backend: &B, shape: impl Into<Shape>) -> Result<Self> {
        Self::full(backend, shape, 0.0)
    }

    /// The backend this tensor lives on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend buffer.
    pub fn buffer(&self) -> &B::Buffer {
        &self.buf
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    /// Copies the data to the host as `f32`.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.backend.download_f32(&self.buf)
    }

    /// Copies the data to the host as `f64`.
    pub fn to_f64(&self) -> Result<Vec<f64>> {
        self.backend.download_f64(&self.buf)
    }

    /// The value of a one-element tensor.
    pub fn scalar(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::invalid(
                "scalar",
                format!("tensor of shape {} is not a scalar", self.shape),
            ));
        }
        Ok(self.to_f64()?[0])
    }

    /// The same data under a new shape with the same number of elements (no copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.shape.clone(),
                rhs: shape,
            });
        }
        Ok(Tensor {
            backend: self.backend.clone(),
            buf: Arc::clone(&self.buf),
            shape,
        })
    }

    /// An elementwise op on one operand.
    pub fn unary(&self, op: UnaryOp) -> Result<Self> {
        Ok(self.wrap(self.backend.unary(op, &self.buf)?, self.shape.clone()))
    }

    /// `max(x, 0)`.
    pub fn relu(&self) -> Result<Self> {
        self.unary(UnaryOp::Relu)
    }

    /// `x²`.
    pub fn square(&self) -> Result<Self> {
        self.unary(UnaryOp::Square)
    }

    /// `eˣ`.
    pub fn exp(&self) -> Result<Self> {
        self.unary(UnaryOp::Exp)
    }

    /// `x * mul + add`.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Self> {
        Ok(self.wrap(
            self.backend.affine(&self.buf, mul, add)?,
            self.shape.clone(),
        ))
    }

    /// `x * s`.
    pub fn scale(&self, s: f64) -> Result<Self> {
        self.affine(s, 0.0)
    }

    /// `x + c`.
    pub fn offset(&self, c: f64) -> Result<Self> {
        self.affine(1.0, c)
    }

    /// An elementwise op on two tensors of the same shape.
    pub fn binary(&self, op: BinaryOp, rhs: &Self) -> Result<Self> {
        let name = match op {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::ReluGrad => "relu_grad",
        };
        same_shape(name, &self.shape, &rhs.shape)?;
        Ok(self.wrap(
            self.backend.binary(op, &self.buf, &rhs.buf)?,
            self.shape.clone(),
        ))
    }

    /// `a + b`.
    pub fn add(&self, rhs: &Self) -> Result<Self> {
        self.binary(BinaryOp::Add, rhs)
    }

    /// `a - b`.
    pub fn sub(&self, rhs: &Self) -> Result<Self> {
        self.binary(BinaryOp::Sub, rhs)
    }

    /// `a * b`, elementwise.
    pub fn mul(&self, rhs: &Self) -> Result<Self> {
        self.binary(BinaryOp::Mul, rhs)
    }

    /// `a / b`, elementwise.
    pub fn div(&self, rhs: &Self) -> Result<Self> {
        self.binary(BinaryOp::Div, rhs)
    }

    /// `√x`, elementwise.
    pub fn sqrt(&self) -> Result<Self> {
        self.unary(UnaryOp::Sqrt)
    }

    /// `Σ a_i·b_i` over two tensors of the same shape, accumulated in `f64` where the device
    /// can.
    pub fn dot(&self, rhs: &Self) -> Result<f64> {
        same_shape("dot", &self.shape, &rhs.shape)?;
        self.backend.dot(&self.buf, &rhs.buf)
    }

    /// `a·self + y` (the BLAS `axpy`), for `y` of the same shape.
    pub fn axpy(&self, a: f64, y: &Self) -> Result<Self> {
        same_shape("axpy", &self.shape, &y.shape)?;
        Ok(self.wrap(self.backend.axpy(a, &self.buf, &y.buf)?, self.shape.clone()))
    }

    /// `(Σ |x_i|, max |x_i|)`, NaN when any element is NaN.
    pub fn norms(&self) -> Result<(f64, f64)> {
        self.backend.norms(&self.buf)
    }

    /// The values of one-element tensors, copied back in one transfer (one wait for the
    /// device instead of one per tensor): the same values [`Tensor::scalar`] gives. See
    /// [`BackendExt::scalars`].
    pub fn scalars(ts: &[&Self]) -> Result<Vec<f64>> {
        let Some(first) = ts.first() else {
            return Ok(Vec::new());
        };
        for t in ts {
            if t.numel() != 1 {
                return Err(Error::invalid(
                    "scalars",
                    format!("a tensor of shape {:?} is not a scalar", t.dims()),
                ));
            }
        }
        let bufs: Vec<&B::Buffer> = ts.iter().map(|t| &*t.buf).collect();
        first.backend.scalars(&bufs)
    }

    /// Every `rows[r]·cols[c]`, row-major, in one batch where the device batches (see
    /// [`BackendExt::dots`]); all tensors of one shape.
    pub fn dots(rows: &[&Self], cols: &[&Self]) -> Result<Vec<f64>> {
        let Some(first) = rows.first().or(cols.first()) else {
            return Ok(Vec::new());
        };
        for t in rows.iter().chain(cols) {
            same_shape("dots", &first.shape, &t.shape)?;
        }
        let r: Vec<&B::Buffer> = rows.iter().map(|t| &*t.buf).collect();
        let c: Vec<&B::Buffer> = cols.iter().map(|t| &*t.buf).collect();
        first.backend.dots(&r, &c)
    }

    /// `Σ_j coeffs[j]·vectors[j]` (at least one tensor, all of one shape; see
    /// [`BackendExt::combine`]).
    pub fn combine(coeffs: &[f64], vectors: &[&Self]) -> Result<Self> {
        let first = vectors
            .first()
            .ok_or_else(|| Error::invalid("combine", "no vectors"))?;
        for t in vectors {
            same_shape("combine", &first.shape, &t.shape)?;
        }
        let v: Vec<&B::Buffer> = vectors.iter().map(|t| &*t.buf).collect();
        Ok(first.wrap(first.backend.combine(coeffs, &v)?, first.shape.clone()))
    }

    /// Each plane of the last two axes clamped into the range of its channel (axis
    /// `rank - 3`, cycling through `ranges`): see [`BackendExt::clamp_channels`].
    pub fn clamp_channels(&self, ranges: &[(f32, f32)]) -> Result<Self> {
        let d = self.shape.dims();
        let plane = if d.len() >= 2 {
            d[d.len() - 2] * d[d.len() - 1]
        } else {
            self.numel()
        };
        Ok(self.wrap(
            self.backend.clamp_channels(&self.buf, plane, ranges)?,
            self.shape.clone(),
        ))
    }

    /// Whether both tensors share one buffer (a cheap identity test, not a comparison of values).
    pub fn same_buffer(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }

    /// The sum of all elements, shape `[]`.
    pub fn sum(&self) -> Result<Self> {
        Ok(self.wrap(self.backend.sum_all(&self.buf)?, Shape::new([])))
    }

    /// The mean of all elements, shape `[]`.
    pub fn mean(&self) -> Result<Self> {
        self.sum()?.scale(1.0 / self.numel().max(1) as f64)
    }

    /// Sums along `axis`, which is kept with size 1.
    pub fn sum_axis(&self, axis: usize) -> Result<Self> {
        check_axis("sum_axis", &self.shape, axis)?;
        let out = self.shape.with_dim(axis, 1);
        Ok(self.wrap(self.backend.sum_axis(&self.buf, &self.shape, axis)?, out))
    }

    /// Means along `axis`, which is kept with size 1.
    pub fn mean_axis(&self, axis: usize) -> Result<Self> {
        let n = self.shape.dims().get(axis).copied().unwrap_or(1).max(1);
        self.sum_axis(axis)?.scale(1.0 / n as f64)
    }

    /// Repeats size-1 dimensions up to `shape` (same rank).
    pub fn broadcast_to(&self, shape: impl Into<Shape>) -> Result<Self> {
        let to = shape.into();
        let ok = to.rank() == self.shape.rank()
            && self
                .dims()
                .iter()
                .zip(to.dims())
                .all(|(&f, &t)| f == t || f == 1);
        if !ok {
            return Err(Error::ShapeMismatch {
                op: "broadcast_to",
                lhs: self.shape.clone(),
                rhs: to,
            });
        }
        if to == self.shape {
            return Ok(self.clone());
        }
        Ok(self.wrap(self.backend.broadcast(&self.buf, &self.shape, &to)?, to))
    }

    /// `len` entries of `axis` starting at `start`.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Self> {
        check_axis("narrow", &self.shape, axis)?;
        if start + len > self.shape.dim(axis) {
            return Err(Error::invalid(
                "narrow",
                format!(
                    "range {start}..{} out of bounds for axis {axis} of shape {}",
                    start + len,
                    self.shape
                ),
            ));
        }
        let out = self.shape.with_dim(axis, len);
        Ok(self.wrap(
            self.backend
                .narrow(&self.buf, &self.shape, axis, start, len)?,
            out,
        ))
    }

    /// The adjoint of [`Tensor::narrow`]: `self` placed at `start` along `axis` of zeros of
    /// length `full`.
    pub fn narrow_backward(&self, axis: usize, start: usize, full: usize) -> Result<Self> {
        check_axis("narrow_backward", &self.shape, axis)?;
        if start + self.shape.dim(axis) > full {
            return Err(Error::invalid(
                "narrow_backward",
                format!(
                    "slice of shape {} at {start} exceeds length {full}",
                    self.shape
                ),
            ));
        }
        let out = self.shape.with_dim(axis, full);
        Ok(self.wrap(
            self.backend
                .narrow_backward(&self.buf, &self.shape, axis, start, full)?,
            out,
        ))
    }

    /// Matrix product of two rank-2 tensors, each optionally transposed:
    /// `op(self) · op(rhs)`.
    pub fn matmul_t(&self, rhs: &Self, ta: bool, tb: bool) -> Result<Self> {
        let (a, b) = (self.dims(), rhs.dims());
        if a.len() != 2 || b.len() != 2 {
            return Err(Error::ShapeMismatch {
                op: "matmul",
                lhs: self.shape.clone(),
                rhs: rhs.shape.clone(),
            });
        }
        let (m, k) = if ta { (a[1], a[0]) } else { (a[0], a[1]) };
        let (k2, n) = if tb { (b[1], b[0]) } else { (b[0], b[1]) };
        if k != k2 {
            return Err(Error::ShapeMismatch {
                op: "matmul",
                lhs: self.shape.clone(),
                rhs: rhs.shape.clone(),
            });
        }
        Ok(self.wrap(
            self.backend.matmul(&self.buf, &rhs.buf, m, k, n, ta, tb)?,
            Shape::new([m, n]),
        ))
    }

    /// The transpose of a rank-2 tensor.
    pub fn transpose(&self) -> Result<Self> {
        let &[r, c] = self.dims() else {
            return Err(Error::invalid(
                "transpose",
                format!("expected a matrix, got shape {}", self.shape),
            ));
        };
        Ok(self.wrap(self.backend.transpose(&self.buf, r, c)?, Shape::new([c, r])))
    }

    /// Matrix product `self · rhs`.
    pub fn matmul(&self, rhs: &Self) -> Result<Self> {
        self.matmul_t(rhs, false, false)
    }

    /// Validates a convolution of `self` (NCHW) with `weight` (OIHW) and returns its geometry.
    pub fn conv2d_params(
        &self,
        weight: &Self,
        stride: usize,
        padding: usize,
    ) -> Result<Conv2dParams> {
        let bad = || Error::ShapeMismatch {
            op: "conv2d",
            lhs: self.shape.clone(),
            rhs: weight.shape.clone(),
        };
        let [n, c, h, w] = self.shape.nchw().ok_or_else(bad)?;
        let [o, i, kh, kw] = weight.shape.nchw().ok_or_else(bad)?;
        if i != c {
            return Err(bad());
        }
        if stride == 0 {
            return Err(Error::invalid("conv2d", "stride must be at least 1"));
        }
        if h + 2 * padding < kh || w + 2 * padding < kw || kh == 0 || kw == 0 {
            return Err(Error::invalid(
                "conv2d",
                format!("kernel {kh}x{kw} does not fit input {h}x{w} with padding {padding}"),
            ));
        }
        Ok(Conv2dParams {
            batch: n,
            in_channels: c,
            out_channels: o,
            in_h: h,
            in_w: w,
            kh,
            kw,
            stride,
            padding,
        })
    }

    /// 2-D convolution of `self` (NCHW) with `weight` (OIHW) and an optional bias `[C_out]`.
    pub fn conv2d(
        &self,
        weight: &Self,
        bias: Option<&Self>,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        self.conv_forward(weight, bias, stride, padding, false)
    }

    /// `max(conv2d(self, weight, bias), 0)` in one pass where the backend can (same arguments
    /// and checks as [`Tensor::conv2d`]).
    pub fn conv2d_relu(
        &self,
        weight: &Self,
        bias: Option<&Self>,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        self.conv_forward(weight, bias, stride, padding, true)
    }

    /// [`Tensor::conv2d`], or with `relu` [`Tensor::conv2d_relu`].
    fn conv_forward(
        &self,
        weight: &Self,
        bias: Option<&Self>,
        stride: usize,
        padding: usize,
        relu: bool,
    ) -> Result<Self> {
        let p = self.conv2d_params(weight, stride, padding)?;
        if let Some(b) = bias {
            if b.dims() != [p.out_channels] {
                return Err(Error::ShapeMismatch {
                    op: "conv2d bias",
                    lhs: b.shape.clone(),
                    rhs: Shape::new([p.out_channels]),
                });
            }
        }
        let (x, w, b) = (&self.buf, &weight.buf, bias.map(|b| &*b.buf));
        let y = if relu {
            self.backend.conv2d_relu(x, w, b, &p)?
        } else {
            self.backend.conv2d(x, w, b, &p)?
        };
        Ok(self.wrap(y, p.output_shape()))
    }

    /// The input gradient of [`Tensor::conv2d_relu`] at output `y` (this tensor is the output
    /// gradient, shaped like `y`).
    pub fn conv2d_relu_backward_input(
        &self,
        y: &Self,
        weight: &Self,
        p: &Conv2dParams,
    ) -> Result<Self> {
        same_shape("conv2d_relu_backward_input", &self.shape, &y.shape)?;
        same_shape("conv2d_relu_backward_input", &self.shape, &p.output_shape())?;
        same_shape(
            "conv2d_relu_backward_input",
            &weight.shape,
            &p.weight_shape(),
        )?;
        let buf = self
            .backend
            .conv2d_relu_backward_input(&y.buf, &self.buf, &weight.buf, p)?;
        Ok(self.wrap(buf, p.input_shape()))
    }

    /// Gradient of a convolution w.r.t. its input: `self` is the output gradient.
    pub fn conv2d_backward_input(&self, weight: &Self, p: &Conv2dParams) -> Result<Self> {
        same_shape("conv2d_backward_input", &self.shape, &p.output_shape())?;
        same_shape("conv2d_backward_input", &weight.shape, &p.weight_shape())?;
        let dx = self
            .backend
            .conv2d_backward_input(&self.buf, &weight.buf, p)?;
        Ok(self.wrap(dx, p.input_shape()))
    }

    /// Gradient of a convolution w.r.t. its weights: `self` is the output gradient.
    pub fn conv2d_backward_weight(&self, input: &Self, p: &Conv2dParams) -> Result<Self> {
        same_shape("conv2d_backward_weight", &self.shape, &p.output_shape())?;
        same_shape("conv2d_backward_weight", &input.shape, &p.input_shape())?;
        let dw = self
            .backend
            .conv2d_backward_weight(&input.buf, &self.buf, p)?;
        Ok(self.wrap(dw, p.weight_shape()))
    }

    /// Validates a pooling of `self` (NCHW) and returns its geometry.
    pub fn pool2d_params(
        &self,
        kind: PoolKind,
        kernel: usize,
        stride: usize,
    ) -> Result<Pool2dParams> {
        let [n, c, h, w] = self.shape.nchw().ok_or_else(|| {
            Error::invalid("pool2d", format!("expected NCHW input, got {}", self.shape))
        })?;
        if kernel == 0 || stride == 0 || h < kernel || w < kernel {
            return Err(Error::invalid(
                "pool2d",
                format!("window {kernel} stride {stride} does not fit input {h}x{w}"),
            ));
        }
        Ok(Pool2dParams {
            kind,
            batch: n,
            channels: c,
            in_h: h,
            in_w: w,
            kernel,
            stride,
        })
    }

    /// 2-D max or average pooling, floor mode, no padding.
    pub fn pool2d(&self, kind: PoolKind, kernel: usize, stride: usize) -> Result<Self> {
        let p = self.pool2d_params(kind, kernel, stride)?;
        Ok(self.wrap(self.backend.pool2d(&self.buf, &p)?, p.output_shape()))
    }

    /// Gradient of a pooling w.r.t. its input `self`, given the output gradient `dy`.
    pub fn pool2d_backward(&self, dy: &Self, p: &Pool2dParams) -> Result<Self> {
        same_shape("pool2d_backward", &dy.shape, &p.output_shape())?;
        Ok(self.wrap(
            self.backend.pool2d_backward(&self.buf, &dy.buf, p)?,
            self.shape.clone(),
        ))
    }
}
