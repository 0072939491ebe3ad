//! `Backend` for [`Cuda`]: each op is one safe wrapper around its kernel launch or cuBLAS call.

use crate::{Cuda, CudaBuffer, Result};
use cudarc::cublas::{sys::cublasOperation_t, Gemm, GemmConfig};
use cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use nst_tensor::{
    check, BackendCore, BackendExt, BinaryOp, Conv2dParams, Error as TError, Pool2dParams,
    PoolKind, Result as TResult, Shape, UnaryOp,
};

const THREADS: u32 = 256;
/// Blocks of the first pass of a full sum: fixed, so the split never depends on the size.
const SUM_PARTS: u32 = 256;
/// Rows of one `dots_partial_f32` launch (`MAX_DOT_ROWS` in batched.cu).
const MAX_DOT_ROWS: usize = 8;

fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The launch of a first reduction pass: a fixed number of blocks, whatever the size.
fn sum_config() -> LaunchConfig {
    LaunchConfig {
        grid_dim: (SUM_PARTS, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A row-major matrix operand for [`Cuda::gemm`]: a device view, its row stride, and whether
/// it is stored transposed.
struct Mat<V> {
    v: V,
    ld: usize,
    t: bool,
}

impl Cuda {
    /// A device buffer of exactly `n` elements (an empty one for 0), not initialised: for
    /// outputs every element of which the op then writes.
    fn alloc(&self, n: usize) -> Result<CudaSlice<f32>> {
        if n == 0 {
            return Ok(self.inner.stream.null::<f32>()?);
        }
        // SAFETY: every caller writes all `n` elements before the buffer is read.
        Ok(unsafe { self.inner.stream.alloc::<f32>(n) }?)
    }

    /// A zeroed device buffer of `n` elements, for outputs not every element of which is
    /// written (an empty product, accumulation).
    fn alloc_zeroed(&self, n: usize) -> Result<CudaSlice<f32>> {
        if n == 0 {
            return Ok(self.inner.stream.null::<f32>()?);
        }
        Ok(self.inner.stream.alloc_zeros::<f32>(n)?)
    }

    /// Device pointers of buffers, uploaded as an array for the batched kernels.
    fn pointers(&self, bufs: &[&CudaBuffer]) -> Result<CudaSlice<u64>> {
        let s = &self.inner.stream;
        let ptrs: Vec<u64> = bufs.iter().map(|b| b.0.device_ptr(s).0).collect();
        Ok(s.clone_htod(&ptrs)?)
    }

    /// `y = max(y + b, 0)` in place, per output channel (`b` absent: the ReLU alone).
    fn bias_relu(
        &self,
        y: &mut CudaSlice<f32>,
        b: Option<&CudaBuffer>,
        p: &Conv2dParams,
    ) -> Result<()> {
        let hw = p.out_h() * p.out_w();
        let total = p.batch * p.out_channels * hw;
        if total == 0 {
            return Ok(());
        }
        let (planes, c, hw64) = (
            (p.batch * p.out_channels) as u64,
            p.out_channels as i32,
            hw as u64,
        );
        let s = &self.inner.stream;
        let null = 0u64;
        let bias_ptr = b.map_or(null, |b| b.0.device_ptr(s).0);
        let f = self.func("bias_relu_f32")?;
        let mut l = s.launch_builder(f);
        l.arg(y).arg(&bias_ptr).arg(&planes).arg(&c).arg(&hw64);
        // SAFETY: `y` holds planes·hw elements and the bias (when not null) one per channel; the
        // kernel's second parameter is a pointer, passed as its 64-bit value.
        unsafe { l.launch(grid(total)) }?;
        Ok(())
    }

    /// The convolution without bias: cuDNN when present (with bias and ReLU fused when
    /// `fuse` is given and cuDNN's algorithm allows; the bool says whether they were), else
    /// im2col + cuBLAS.
    fn conv_core(
        &self,
        x: &CudaBuffer,
        w: &CudaBuffer,
        p: &Conv2dParams,
        fuse: Option<&CudaBuffer>,
    ) -> Result<(CudaSlice<f32>, bool)> {
        let hw = p.out_h() * p.out_w();
        let kk = p.in_channels * p.kh * p.kw;
        let cout = p.out_channels;
        if hw * kk * cout * p.batch == 0 {
            return Ok((self.alloc_zeroed(p.batch * cout * hw)?, false));
        }
        let mut y = self.alloc(p.batch * cout * hw)?;
        if let Some(d) = &self.inner.dnn {
            // `None`: no allowed cuDNN algorithm for this shape, so im2col below.
            if let Some(fused) = d.forward(p, &x.0, &w.0, fuse.map(|b| &b.0), &mut y)? {
                return Ok((y, fused));
            }
        }
        let in_img = p.in_channels * p.in_h * p.in_w;
        let ow = p.out_w();
        let bands = self.bands(p);
        let mut col = self.alloc(kk * bands[0].1 * ow)?;
        let wv = w.0.slice(..);
        for img in 0..p.batch {
            for &(oy0, rows) in &bands {
                self.im2col(
                    &x.0.slice(img * in_img..(img + 1) * in_img),
                    &mut col,
                    p,
                    (oy0, rows),
                )?;
                let cv = col.slice(..);
                let start = img * cout * hw + oy0 * ow;
                let mut yv = y.slice_mut(start..(img + 1) * cout * hw);
                self.gemm(
                    cout,
                    rows * ow,
                    kk,
                    Mat {
                        v: &wv,
                        ld: kk,
                        t: false,
                    },
                    Mat {
                        v: &cv,
                        ld: rows * ow,
                        t: false,
                    },
                    &mut yv,
                    hw,
                    0.0,
                )?;
            }
        }
        Ok((y, false))
    }

    /// `c = op(a)·op(b) + beta·c` for row-major matrices (`op(a)` is m x k, `op(b)` k x n),
    /// through cuBLAS's column-major GEMM as `cᵀ = op(b)ᵀ·op(a)ᵀ`.
    #[allow(clippy::too_many_arguments)]
    fn gemm<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: Mat<&A>,
        b: Mat<&B>,
        c: &mut C,
        ldc: usize,
        beta: f32,
    ) -> Result<()> {
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let cfg = GemmConfig {
            transa: op(b.t),
            transb: op(a.t),
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: 1.0f32,
            lda: b.ld as i32,
            ldb: a.ld as i32,
            beta,
            ldc: ldc as i32,
        };
        // SAFETY: the callers pass views holding at least the elements the sizes and leading
        // dimensions address, and `c` does not alias `a` or `b`.
        unsafe { self.inner.blas.gemm(cfg, b.v, a.v, c) }?;
        Ok(())
    }

    /// The column buffer of output rows `oy0 .. oy0 + rows` of one image (`x`: C·H·W).
    fn im2col(
        &self,
        x: &CudaView<'_, f32>,
        col: &mut CudaSlice<f32>,
        p: &Conv2dParams,
        (oy0, rows): (usize, usize),
    ) -> Result<()> {
        let n = p.in_channels * p.kh * p.kw * rows * p.out_w();
        let dims = conv_dims(p);
        let band = [oy0 as i32, rows as i32];
        let f = self.func("im2col_f32")?;
        let mut l = self.inner.stream.launch_builder(f);
        l.arg(x).arg(col);
        for d in dims.iter().chain(&band) {
            l.arg(d);
        }
        // SAFETY: `x` holds C·H·W and `col` at least C·kh·kw·rows·ow elements; the signature
        // is (const float*, float*, int × 11).
        unsafe { l.launch(grid(n)) }?;
        Ok(())
    }

    /// Adds the input gradient of one band of output rows (its columns in `col`) into `dx`
    /// (one image, C·H·W), over the input rows the band reaches.
    fn col2im(
        &self,
        col: &CudaSlice<f32>,
        dx: &mut CudaViewMut<'_, f32>,
        p: &Conv2dParams,
        (oy0, rows): (usize, usize),
    ) -> Result<()> {
        let (y0, y1) = band_input_rows(p, (oy0, rows));
        if y1 <= y0 {
            return Ok(());
        }
        let n = p.in_channels * (y1 - y0) * p.in_w;
        let dims = conv_dims(p);
        let band = [oy0 as i32, rows as i32, y0 as i32, y1 as i32];
        let f = self.func("col2im_f32")?;
        let mut l = self.inner.stream.launch_builder(f);
        l.arg(col).arg(dx);
        for d in dims.iter().chain(&band) {
            l.arg(d);
        }
        // SAFETY: as im2col, with the roles of the buffers exchanged; the kernel writes only
        // rows y0 .. y1 < H of `dx`.
        unsafe { l.launch(grid(n)) }?;
        Ok(())
    }

    /// The bands of output rows whose column buffers fit the backend's limit.
    fn bands(&self, p: &Conv2dParams) -> Vec<(usize, usize)> {
        bands(p, self.inner.column_bytes)
    }
}

/// The bands `(first row, rows)` of a convolution's output rows whose im2col column buffers
/// (C·kh·kw·rows·W_out floats) fit `column_bytes`: at least one row each, covering every row
/// once, in order.
pub(crate) fn bands(p: &Conv2dParams, column_bytes: usize) -> Vec<(usize, usize)> {
    let row_bytes = p.in_channels * p.kh * p.kw * p.out_w() * std::mem::size_of::<f32>();
    let rows = (column_bytes / row_bytes.max(1)).clamp(1, p.out_h().max(1));
    (0..p.out_h())
        .step_by(rows)
        .map(|oy0| (oy0, rows.min(p.out_h() - oy0)))
        .collect()
}

/// The input rows `y0 .. y1` that output rows `oy0 .. oy0 + rows` read: where a band's input
/// gradient lands.
pub(crate) fn band_input_rows(p: &Conv2dParams, (oy0, rows): (usize, usize)) -> (usize, usize) {
    let first = (oy0 * p.stride).saturating_sub(p.padding);
    let last = ((oy0 + rows - 1) * p.stride + p.kh).saturating_sub(p.padding);
    (first.min(p.in_h), last.min(p.in_h))
}

/// The geometry arguments of the pooling kernels (after the buffers and the plane count).
fn pool_args(p: &Pool2dParams) -> [i32; 7] {
    [
        p.in_h as i32,
        p.in_w as i32,
        p.kernel as i32,
        p.stride as i32,
        p.out_h() as i32,
        p.out_w() as i32,
        (p.kind == PoolKind::Avg) as i32,
    ]
}

/// The geometry arguments of the im2col and col2im kernels.
fn conv_dims(p: &Conv2dParams) -> [i32; 9] {
    [
        p.in_channels as i32,
        p.in_h as i32,
        p.in_w as i32,
        p.kh as i32,
        p.kw as i32,
        p.stride as i32,
        p.padding as i32,
        p.out_h() as i32,
        p.out_w() as i32,
    ]
}

impl Cuda {
    /// Launches a kernel `(const float* in, float* out, u64 args...)` with one thread per
    /// output element and returns the output.
    fn launch_indexed(
        &self,
        name: &str,
        input: &CudaSlice<f32>,
        total: usize,
        args: &[u64],
    ) -> Result<CudaBuffer> {
        let mut out = self.alloc(total)?;
        let f = self.func(name)?;
        let mut l = self.inner.stream.launch_builder(f);
        l.arg(input).arg(&mut out);
        for v in args {
            l.arg(v);
        }
        // SAFETY: the callers size `input` and `total` from the same shape the arguments
        // describe, which the kernel indexes within.
        unsafe { l.launch(grid(total)) }?;
        Ok(CudaBuffer(out))
    }
}

/// Refuses an operand that lives on another GPU than the backend's (`ordinal`): the lengths
/// may fit, but its memory is not this device's.
pub(crate) fn same_device(
    op: &'static str,
    ordinal: usize,
    operands: impl IntoIterator<Item = usize>,
) -> TResult<()> {
    match operands.into_iter().find(|&o| o != ordinal) {
        Some(other) => Err(TError::invalid(
            op,
            format!("an operand is on cuda:{other}, but this backend is cuda:{ordinal}"),
        )),
        None => Ok(()),
    }
}

impl Cuda {
    /// [`same_device`] for this backend's operands.
    fn here<'b>(
        &self,
        op: &'static str,
        operands: impl IntoIterator<Item = &'b CudaBuffer>,
    ) -> TResult<()> {
        same_device(
            op,
            self.inner.ordinal,
            operands.into_iter().map(|b| b.0.ordinal()),
        )
    }
}

fn check_len(op: &'static str, got: usize, want: usize) -> TResult<()> {
    if got != want {
        return Err(TError::invalid(
            op,
            format!("buffer of {got} elements, expected {want}"),
        ));
    }
    Ok(())
}

impl BackendCore for Cuda {
    type Buffer = CudaBuffer;

    fn name(&self) -> String {
        format!("cuda:{}", self.inner.ordinal)
    }

    fn upload_f32(&self, data: &[f32]) -> TResult<CudaBuffer> {
        if data.is_empty() {
            return Ok(CudaBuffer(self.alloc(0)?));
        }
        Ok(CudaBuffer(
            self.inner
                .stream
                .clone_htod(data)
                .map_err(crate::Error::from)?,
        ))
    }

    fn upload_f64(&self, data: &[f64]) -> TResult<CudaBuffer> {
        let v: Vec<f32> = data.iter().map(|&x| x as f32).collect();
        self.upload_f32(&v)
    }

    fn download_f32(&self, buf: &CudaBuffer) -> TResult<Vec<f32>> {
        self.here("download_f32", [buf])?;
        Ok(self
            .inner
            .stream
            .clone_dtoh(&buf.0)
            .map_err(crate::Error::from)?)
    }

    fn download_f64(&self, buf: &CudaBuffer) -> TResult<Vec<f64>> {
        self.here("download_f64", [buf])?;
        Ok(self.download_f32(buf)?.into_iter().map(f64::from).collect())
    }

    fn len(&self, buf: &CudaBuffer) -> usize {
        buf.0.len()
    }

    fn full(&self, len: usize, value: f64) -> TResult<CudaBuffer> {
        if value == 0.0 {
            return Ok(CudaBuffer(self.alloc_zeroed(len)?));
        }
        let mut out = self.alloc(len)?;
        if len > 0 {
            let (n, v) = (len as u64, value as f32);
            let f = self.func("fill_f32")?;
            let mut l = self.inner.stream.launch_builder(f);
            l.arg(&mut out).arg(&n).arg(&v);
            // SAFETY: `out` holds `len` elements; signature (float*, u64, float).
            unsafe { l.launch(grid(len)) }.map_err(crate::Error::from)?;
        }
        Ok(CudaBuffer(out))
    }

    fn unary(&self, op: UnaryOp, x: &CudaBuffer) -> TResult<CudaBuffer> {
        self.here("unary", [x])?;
        let code: i32 = match op {
            UnaryOp::Relu => 0,
            UnaryOp::Square => 1,
            UnaryOp::Exp => 2,
            UnaryOp::Neg => 3,
            UnaryOp::Sqrt => 4,
        };
        let n = x.0.len();
        let mut out = self.alloc(n)?;
        let n64 = n as u64;
        let f = self.func("unary_f32")?;
        let mut l = self.inner.stream.launch_builder(f);
        l.arg(&x.0).arg(&mut out).arg(&n64).arg(&code);
        // SAFETY: both buffers hold n elements; signature (const float*, float*, u64, int).
        unsafe { l.launch(grid(n)) }.map_err(crate::Error::from)?;
        Ok(CudaBuffer(out))
    }

    fn affine(&self, x: &CudaBuffer, mul: f64, add: f64) -> TResult<CudaBuffer> {
        self.here("affine", [x])?;
        let (m, a) = (mul as f32, add as f32);
        let n = x.0.len();
        let mut out = self.alloc(n)?;
        let n64 = n as u64;
        let f = self.func("affine_f32")?;
        let mut l = self.inner.stream.launch_builder(f);
        l.arg(&x.0).arg(&mut out).arg(&n64).arg(&m).arg(&a);
        // SAFETY: both buffers hold n elements; signature (const float*, float*, u64, float, float).
        unsafe { l.launch(grid(n)) }.map_err(crate::Error::from)?;
        Ok(CudaBuffer(out))
    }

    fn binary(&self, op: BinaryOp, a: &CudaBuffer, b: &CudaBuffer) -> TResult<CudaBuffer> {
        self.here("binary", [a, b])?;
        check_len("binary", b.0.len(), a.0.len())?;
        let code: i32 = match op {
            BinaryOp::Add => 0,
            BinaryOp::Sub => 1,
            BinaryOp::Mul => 2,
            BinaryOp::ReluGrad => 3,
            BinaryOp::Div => 4,
        };
        let n = a.0.len();
        let mut out = self.alloc(n)?;
        let n64 = n as u64;
        let f = self.func("binary_f32")?;
        let mut l = self.inner.stream.launch_builder(f);
        l.arg(&a.0).arg(&b.0).arg(&mut out).arg(&n64).arg(&code);
        // SAFETY: all three buffers hold n elements; signature (const float*, const float*,
        // float*, u64, int).
        unsafe { l.launch(grid(n)) }.map_err(crate::Error::from)?;
        Ok(CudaBuffer(out))
    }

    fn sum_all(&self, x: &CudaBuffer) -> TResult<CudaBuffer> {
        self.here("sum_all", [x])?;
        let s = &self.inner.stream;
        let mut partial = s
            .alloc_zeros::<f64>(SUM_PARTS as usize)
            .map_err(crate::Error::from)?;
        let mut out = self.alloc(1)?;
        let n64 = x.0.len() as u64;
        let parts = SUM_PARTS;
        let f = self.func("sum_partial_f32")?;
        let mut l = s.launch_builder(f);
        l.arg(&x.0).arg(&n64).arg(&mut partial);
        // SAFETY: `partial` has one slot per block; the block size matches the shared array.
        unsafe { l.launch(sum_config()) }.map_err(crate::Error::from)?;
        let f = self.func("sum_final_f32")?;
        let mut l = s.launch_builder(f);
        l.arg(&partial).arg(&parts).arg(&mut out);
        // SAFETY: one thread reads `parts` partials and writes one element.
        unsafe { l.launch(grid(1)) }.map_err(crate::Error::from)?;
        Ok(CudaBuffer(out))
    }

    fn sum_axis(&self, x: &CudaBuffer, shape: &Shape, axis: usize) -> TResult<CudaBuffer> {
        self.here("sum_axis", [x])?;
        check::shape_axis("sum_axis", x.0.len(), shape, axis)?;
        let (outer, n, inner) = shape.split_at_axis(axis);
        let args = [outer, n, inner].map(|v| v as u64);
        Ok(self.launch_indexed("sum_axis_f32", &x.0, outer * inner, &args)?)
    }

    fn broadcast(&self, x: &CudaBuffer, from: &Shape, to: &Shape) -> TResult<CudaBuffer> {
        self.here("broadcast", [x])?;
        check::broadcast("broadcast", x.0.len(), from, to)?;
        let rank = to.rank();
        if rank > 8 {
            return Err(TError::invalid("broadcast", "at most 8 dimensions on CUDA"));
        }
        let mut strides = vec![0u64; rank];
        let mut s = 1u64;
        for d in (0..rank).rev() {
            strides[d] = if from.dim(d) == 1 { 0 } else { s };
            s *= from.dim(d) as u64;
        }
        let dims: Vec<u64> = to.dims().iter().map(|&d| d as u64).collect();
        let st = &self.inner.stream;
        let (dims_d, strides_d) = if rank == 0 {
            (st.alloc_zeros::<u64>(1), st.alloc_zeros::<u64>(1))
        } else {
            (st.clone_htod(&dims), st.clone_htod(&strides))
        };
        let (dims_d, strides_d) = (
            dims_d.map_err(crate::Error::from)?,
            strides_d.map_err(crate::Error::from)?,
        );
        let n = to.numel();
        let mut out = self.alloc(n)?;
        let (n64, r) = (n as u64, rank as i32);
        let f = self.func("broadcast_f32")?;
        let mut l = st.launch_builder(f);
        l.arg(&x.0)
            .arg(&mut out)
            .arg(&n64)
            .arg(&r)
            .arg(&dims_d)
            .arg(&strides_d);
        // SAFETY: `dims`/`strides` hold `rank` entries addressing inside `x`; `out` holds n.
        unsafe { l.launch(grid(n)) }.map_err(crate::Error::from)?;
        Ok(CudaBuffer(out))
    }

    fn narrow(
        &self,
        x: &CudaBuffer,
        shape: &Shape,
        axis: usize,
        start: usize,
        len: usize,
    ) -> TResult<CudaBuffer> {
        self.here("narrow", [x])?;
        check::narrow("narrow", x.0.len(), shape, axis, start, len)?;
        let (outer, n, inner) = shape.split_at_axis(axis);
        let args = [outer, n, inner, start, len].map(|v| v as u64);
        Ok(self.launch_indexed("narrow_f32", &x.0, outer * len * inner, &args)?)
    }

    fn narrow_backward(
        &self,
        dy: &CudaBuffer,
        shape: &Shape,
        axis: usize,
        start: usize,
        full: usize,
    ) -> TResult<CudaBuffer> {
        self.here("narrow_backward", [dy])?;
        check::narrow_backward("narrow_backward", dy.0.len(), shape, axis, start, full)?;
        let (outer, len, inner) = shape.split_at_axis(axis);
        let args = [outer, len, inner, start, full].map(|v| v as u64);
        Ok(self.launch_indexed("narrow_backward_f32", &dy.0, outer * full * inner, &args)?)
    }

    fn transpose(&self, x: &CudaBuffer, rows: usize, cols: usize) -> TResult<CudaBuffer> {
        self.here("transpose", [x])?;
        check_len("transpose", x.0.len(), rows.saturating_mul(cols))?;
        let args = [rows, cols].map(|v| v as u64);
        Ok(self.launch_indexed("transpose_f32", &x.0, rows * cols, &args)?)
    }

    fn matmul(
        &self,
        a: &CudaBuffer,
        b: &CudaBuffer,
        m: usize,
        k: usize,
        n: usize,
        ta: bool,
        tb: bool,
    ) -> TResult<CudaBuffer> {
        self.here("matmul", [a, b])?;
        check::matmul("matmul", a.0.len(), b.0.len(), m, k, n)?;
        check_len("matmul", a.0.len(), m * k)?;
        check_len("matmul", b.0.len(), k * n)?;
        let mut out = if k == 0 {
            self.alloc_zeroed(m * n)?
        } else {
            self.alloc(m * n)?
        };
        if m * n * k > 0 {
            let av = a.0.slice(..);
            let bv = b.0.slice(..);
            self.gemm(
                m,
                n,
                k,
                Mat {
                    v: &av,
                    ld: if ta { m } else { k },
                    t: ta,
                },
                Mat {
                    v: &bv,
                    ld: if tb { k } else { n },
                    t: tb,
                },
                &mut out,
                n,
                0.0,
            )?;
        }
        Ok(CudaBuffer(out))
    }

    fn conv2d(
        &self,
        x: &CudaBuffer,
        w: &CudaBuffer,
        bias: Option<&CudaBuffer>,
        p: &Conv2dParams,
    ) -> TResult<CudaBuffer> {
        self.here("conv2d", [x, w].into_iter().chain(bias))?;
        p.check_forward("conv2d", x.0.len(), w.0.len(), bias.map(|b| b.0.len()))?;
        let (mut y, _) = self.conv_core(x, w, p, None)?;
        let hw = p.out_h() * p.out_w();
        let cout = p.out_channels;
        if let (Some(b), true) = (bias, p.batch * cout * hw > 0) {
            let (planes, c, hw64) = ((p.batch * cout) as u64, cout as i32, hw as u64);
            let f = self.func("add_bias_f32")?;
            let mut l = self.inner.stream.launch_builder(f);
            l.arg(&mut y).arg(&b.0).arg(&planes).arg(&c).arg(&hw64);
            // SAFETY: `y` holds planes·hw elements and `b` one per output channel.
            unsafe { l.launch(grid(p.batch * cout * hw)) }.map_err(crate::Error::from)?;
        }
        Ok(CudaBuffer(y))
    }

    fn conv2d_backward_input(
        &self,
        dy: &CudaBuffer,
        w: &CudaBuffer,
        p: &Conv2dParams,
    ) -> TResult<CudaBuffer> {
        self.here("conv2d_backward_input", [dy, w])?;
        p.check_backward_input("conv2d_backward_input", dy.0.len(), w.0.len())?;
        let hw = p.out_h() * p.out_w();
        let kk = p.in_channels * p.kh * p.kw;
        let cout = p.out_channels;
        let in_img = p.in_channels * p.in_h * p.in_w;
        if hw * kk * cout * p.batch == 0 {
            return Ok(CudaBuffer(self.alloc_zeroed(p.batch * in_img)?));
        }
        if let Some(d) = &self.inner.dnn {
            let mut dx = self.alloc(p.batch * in_img)?;
            if d.backward_data(p, &dy.0, &w.0, &mut dx)? {
                return Ok(CudaBuffer(dx));
            }
        }
        // The bands add into dx.
        let mut dx = self.alloc_zeroed(p.batch * in_img)?;
        let ow = p.out_w();
        let bands = self.bands(p);
        let mut col = self.alloc(kk * bands[0].1 * ow)?;
        let wv = w.0.slice(..);
        for img in 0..p.batch {
            for &(oy0, rows) in &bands {
                let start = img * cout * hw + oy0 * ow;
                let dyv = dy.0.slice(start..(img + 1) * cout * hw);
                self.gemm(
                    kk,
                    rows * ow,
                    cout,
                    Mat {
                        v: &wv,
                        ld: kk,
                        t: true,
                    },
                    Mat {
                        v: &dyv,
                        ld: hw,
                        t: false,
                    },
                    &mut col,
                    rows * ow,
                    0.0,
                )?;
                self.col2im(
                    &col,
                    &mut dx.slice_mut(img * in_img..(img + 1) * in_img),
                    p,
                    (oy0, rows),
                )?;
            }
        }
        Ok(CudaBuffer(dx))
    }

    fn conv2d_backward_weight(
        &self,
        x: &CudaBuffer,
        dy: &CudaBuffer,
        p: &Conv2dParams,
    ) -> TResult<CudaBuffer> {
        self.here("conv2d_backward_weight", [x, dy])?;
        p.check_backward_weight("conv2d_backward_weight", x.0.len(), dy.0.len())?;
        let hw = p.out_h() * p.out_w();
        let kk = p.in_channels * p.kh * p.kw;
        let cout = p.out_channels;
        let in_img = p.in_channels * p.in_h * p.in_w;
        let mut dw = self.alloc_zeroed(cout * kk)?;
        if hw * kk * cout * p.batch == 0 {
            return Ok(CudaBuffer(dw));
        }
        if let Some(d) = &self.inner.dnn {
            if d.backward_filter(p, &x.0, &dy.0, &mut dw)? {
                return Ok(CudaBuffer(dw));
            }
        }
        let ow = p.out_w();
        let bands = self.bands(p);
        let mut col = self.alloc(kk * bands[0].1 * ow)?;
        for img in 0..p.batch {
            for &(oy0, rows) in &bands {
                self.im2col(
                    &x.0.slice(img * in_img..(img + 1) * in_img),
                    &mut col,
                    p,
                    (oy0, rows),
                )?;
                let start = img * cout * hw + oy0 * ow;
                let dyv = dy.0.slice(start..(img + 1) * cout * hw);
                let cv = col.slice(..);
                self.gemm(
                    cout,
                    kk,
                    rows * ow,
                    Mat {
                        v: &dyv,
                        ld: hw,
                        t: false,
                    },
                    Mat {
                        v: &cv,
                        ld: rows * ow,
                        t: true,
                    },
                    &mut dw,
                    kk,
                    1.0,
                )?;
            }
        }
        Ok(CudaBuffer(dw))
    }

    fn pool2d(&self, x: &CudaBuffer, p: &Pool2dParams) -> TResult<CudaBuffer> {
        self.here("pool2d", [x])?;
        p.check("pool2d", x.0.len(), None)?;
        let planes = p.batch * p.channels;
        let (oh, ow) = (p.out_h(), p.out_w());
        let mut y = self.alloc(planes * oh * ow)?;
        let a = pool_args(p);
        let pl = planes as u64;
        let f = self.func("pool_forward_f32")?;
        let mut l = self.inner.stream.launch_builder(f);
        l.arg(&x.0).arg(&mut y).arg(&pl);
        for v in &a {
            l.arg(v);
        }
        // SAFETY: `x` holds planes·h·w and `y` planes·oh·ow elements.
        unsafe { l.launch(grid(planes * oh * ow)) }.map_err(crate::Error::from)?;
        Ok(CudaBuffer(y))
    }

    fn pool2d_backward(
        &self,
        x: &CudaBuffer,
        dy: &CudaBuffer,
        p: &Pool2dParams,
    ) -> TResult<CudaBuffer> {
        self.here("pool2d_backward", [x, dy])?;
        p.check("pool2d_backward", x.0.len(), Some(dy.0.len()))?;
        let planes = p.batch * p.channels;
        let mut dx = self.alloc(planes * p.in_h * p.in_w)?;
        let a = pool_args(p);
        let pl = planes as u64;
        let f = self.func("pool_backward_f32")?;
        let mut l = self.inner.stream.launch_builder(f);
        l.arg(&x.0).arg(&dy.0).arg(&mut dx).arg(&pl);
        for v in &a {
            l.arg(v);
        }
        // SAFETY: `x`/`dx` hold planes·h·w and `dy` planes·oh·ow elements.
        unsafe { l.launch(grid(planes * p.in_h * p.in_w)) }.map_err(crate::Error::from)?;
        Ok(CudaBuffer(dx))
    }
}

impl BackendExt for Cuda {
    fn axpy(&self, a: f64, x: &CudaBuffer, y: &CudaBuffer) -> TResult<CudaBuffer> {
        self.here("axpy", [x, y])?;
        check_len("axpy", y.0.len(), x.0.len())?;
        let n = x.0.len();
        let mut out = self.alloc(n)?;
        let n64 = n as u64;
        let f = self.func("axpy_f32")?;
        let mut l = self.inner.stream.launch_builder(f);
        l.arg(&x.0).arg(&y.0).arg(&mut out).arg(&n64).arg(&a);
        // SAFETY: all three buffers hold n elements; signature (const float*, const float*,
        // float*, u64, double).
        unsafe { l.launch(grid(n)) }.map_err(crate::Error::from)?;
        Ok(CudaBuffer(out))
    }

    fn dot(&self, a: &CudaBuffer, b: &CudaBuffer) -> TResult<f64> {
        self.here("dot", [a, b])?;
        Ok(self.dots(&[a], &[b])?[0])
    }

    fn dots(&self, rows: &[&CudaBuffer], cols: &[&CudaBuffer]) -> TResult<Vec<f64>> {
        self.here("dots", rows.iter().chain(cols).copied())?;
        let (nr, nc) = (rows.len(), cols.len());
        if nr * nc == 0 {
            return Ok(Vec::new());
        }
        let n = rows[0].0.len();
        for b in rows.iter().chain(cols) {
            check_len("dots", b.0.len(), n)?;
        }
        if n == 0 {
            return Ok(vec![0.0; nr * nc]);
        }
        if nc > i32::MAX as usize || nr > i32::MAX as usize {
            return Err(TError::invalid("dots", "too many vectors"));
        }
        let s = &self.inner.stream;
        let (rp, cp) = (self.pointers(rows)?, self.pointers(cols)?);
        let count = nr * nc;
        // SAFETY: the first pass writes every partial (each row chunk its own rows).
        let mut partial =
            unsafe { s.alloc::<f64>(count * SUM_PARTS as usize) }.map_err(crate::Error::from)?;
        let (n64, nc32) = (n as u64, nc as i32);
        let f = self.func("dots_partial_f32")?;
        for row0 in (0..nr).step_by(MAX_DOT_ROWS) {
            let chunk = (nr - row0).min(MAX_DOT_ROWS) as i32;
            let r0 = row0 as i32;
            let rv = rp.slice(row0..);
            let mut l = s.launch_builder(f);
            l.arg(&rv)
                .arg(&chunk)
                .arg(&r0)
                .arg(&cp)
                .arg(&nc32)
                .arg(&n64)
                .arg(&mut partial);
            let cfg = LaunchConfig {
                grid_dim: (nc as u32, SUM_PARTS, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the pointer arrays hold `chunk` rows from `row0` and `nc` columns, each
            // of `n` f32 elements; `partial` has `SUM_PARTS` slots per product; the block size
            // matches the kernel's shared array.
            unsafe { l.launch(cfg) }.map_err(crate::Error::from)?;
        }
        // SAFETY: the second pass writes every entry.
        let mut out = unsafe { s.alloc::<f64>(count) }.map_err(crate::Error::from)?;
        let (parts, count64) = (SUM_PARTS, count as u64);
        let f = self.func("dots_final_f64")?;
        let mut l = s.launch_builder(f);
        l.arg(&partial).arg(&parts).arg(&count64).arg(&mut out);
        // SAFETY: `partial` holds count·parts values and `out` count.
        unsafe { l.launch(grid(count)) }.map_err(crate::Error::from)?;
        Ok(s.clone_dtoh(&out).map_err(crate::Error::from)?)
    }

    fn combine(&self, coeffs: &[f64], vectors: &[&CudaBuffer]) -> TResult<CudaBuffer> {
        self.here("combine", vectors.iter().copied())?;
        check::combine("combine", coeffs.len(), vectors.iter().map(|v| v.0.len()))?;
        if vectors.len() > i32::MAX as usize {
            return Err(TError::invalid("combine", "too many vectors"));
        }
        let n = vectors[0].0.len();
        let mut out = self.alloc(n)?;
        if n > 0 {
            let s = &self.inner.stream;
            let vp = self.pointers(vectors)?;
            let cd = s.clone_htod(coeffs).map_err(crate::Error::from)?;
            let (count, n64) = (vectors.len() as i32, n as u64);
            let f = self.func("combine_f32")?;
            let mut l = s.launch_builder(f);
            l.arg(&vp).arg(&cd).arg(&count).arg(&n64).arg(&mut out);
            // SAFETY: `count` pointers to vectors of n elements, `count` coefficients, and an
            // output of n elements.
            unsafe { l.launch(grid(n)) }.map_err(crate::Error::from)?;
        }
        Ok(CudaBuffer(out))
    }

    fn batches_reductions(&self) -> bool {
        true
    }

    fn scalars(&self, bufs: &[&CudaBuffer]) -> TResult<Vec<f64>> {
        self.here("scalars", bufs.iter().copied())?;
        if bufs.is_empty() {
            return Ok(Vec::new());
        }
        for b in bufs {
            check_len("scalars", b.0.len(), 1)?;
        }
        let s = &self.inner.stream;
        let ptrs = self.pointers(bufs)?;
        // SAFETY: the kernel writes every entry.
        let mut out = unsafe { s.alloc::<f64>(bufs.len()) }.map_err(crate::Error::from)?;
        let k = bufs.len() as i32;
        let f = self.func("gather_scalars_f32")?;
        let mut l = s.launch_builder(f);
        l.arg(&ptrs).arg(&k).arg(&mut out);
        // SAFETY: `k` pointers to one-element buffers and an output of `k` doubles.
        unsafe { l.launch(grid(bufs.len())) }.map_err(crate::Error::from)?;
        Ok(s.clone_dtoh(&out).map_err(crate::Error::from)?)
    }

    fn clamp_channels(
        &self,
        x: &CudaBuffer,
        plane: usize,
        ranges: &[(f32, f32)],
    ) -> TResult<CudaBuffer> {
        self.here("clamp_channels", [x])?;
        check::clamp_channels("clamp_channels", x.0.len(), plane, ranges)?;
        let n = x.0.len();
        let mut out = self.alloc(n)?;
        if n > 0 {
            let s = &self.inner.stream;
            let lo: Vec<f32> = ranges.iter().map(|r| r.0).collect();
            let hi: Vec<f32> = ranges.iter().map(|r| r.1).collect();
            let (lo, hi) = (
                s.clone_htod(&lo).map_err(crate::Error::from)?,
                s.clone_htod(&hi).map_err(crate::Error::from)?,
            );
            let (n64, plane64, channels) = (n as u64, plane as u64, ranges.len() as i32);
            let f = self.func("clamp_channels_f32")?;
            let mut l = s.launch_builder(f);
            l.arg(&x.0)
                .arg(&mut out)
                .arg(&n64)
                .arg(&plane64)
                .arg(&channels)
                .arg(&lo)
                .arg(&hi);
            // SAFETY: input and output hold n elements, the ranges `channels` entries each.
            unsafe { l.launch(grid(n)) }.map_err(crate::Error::from)?;
        }
        Ok(CudaBuffer(out))
    }

    fn release_cached(&self) {
        self.trim_pool();
    }

    fn memory(&self) -> nst_tensor::MemoryKind {
        self.device_memory()
    }

    fn norms(&self, x: &CudaBuffer) -> TResult<(f64, f64)> {
        self.here("norms", [x])?;
        let s = &self.inner.stream;
        let alloc = || {
            s.alloc_zeros::<f64>(SUM_PARTS as usize)
                .map_err(crate::Error::from)
        };
        let (mut sums, mut maxes) = (alloc()?, alloc()?);
        let n64 = x.0.len() as u64;
        let f = self.func("norms_partial_f32")?;
        let mut l = s.launch_builder(f);
        l.arg(&x.0).arg(&n64).arg(&mut sums).arg(&mut maxes);
        // SAFETY: both outputs have one slot per block; the block size matches the shared arrays.
        unsafe { l.launch(sum_config()) }.map_err(crate::Error::from)?;
        let sums = s.clone_dtoh(&sums).map_err(crate::Error::from)?;
        let maxes = s.clone_dtoh(&maxes).map_err(crate::Error::from)?;
        Ok((sums.iter().sum(), nst_tensor::host_norms(&maxes).1))
    }

    fn conv2d_relu(
        &self,
        x: &CudaBuffer,
        w: &CudaBuffer,
        bias: Option<&CudaBuffer>,
        p: &Conv2dParams,
    ) -> TResult<CudaBuffer> {
        self.here("conv2d_relu", [x, w].into_iter().chain(bias))?;
        p.check_forward("conv2d_relu", x.0.len(), w.0.len(), bias.map(|b| b.0.len()))?;
        let (mut y, fused) = self.conv_core(x, w, p, bias)?;
        if !fused {
            self.bias_relu(&mut y, bias, p)?;
        }
        Ok(CudaBuffer(y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(in_h: usize, kh: usize, stride: usize, padding: usize) -> Conv2dParams {
        Conv2dParams {
            batch: 1,
            in_channels: 3,
            out_channels: 2,
            in_h,
            in_w: 5,
            kh,
            kw: kh,
            stride,
            padding,
        }
    }

    #[test]
    fn operands_of_another_gpu_are_refused() {
        assert!(super::same_device("matmul", 0, [0, 0]).is_ok());
        assert!(super::same_device("matmul", 1, []).is_ok());
        let e = super::same_device("matmul", 0, [0, 1])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("matmul") && e.contains("cuda:1") && e.contains("cuda:0"),
            "{e}"
        );
    }

    #[test]
    fn bands_cover_every_output_row_once_within_the_limit() {
        for (h, k, s, pad) in [(9, 3, 1, 1), (9, 3, 2, 0), (10, 1, 1, 0), (7, 3, 2, 1)] {
            let p = params(h, k, s, pad);
            let row = 3 * k * k * p.out_w() * 4;
            for limit in [0, 1, row, 2 * row + 1, 5 * row, usize::MAX / 2] {
                let b = bands(&p, limit);
                let mut next = 0;
                for &(oy0, rows) in &b {
                    assert_eq!(oy0, next, "{p:?} limit {limit}: {b:?}");
                    assert!(rows >= 1 && (rows == 1 || rows * row <= limit), "{b:?}");
                    next += rows;
                }
                assert_eq!(next, p.out_h(), "{p:?} limit {limit}: {b:?}");
            }
        }
    }

    #[test]
    fn a_band_reaches_exactly_the_input_rows_its_outputs_read() {
        for (h, k, s, pad) in [
            (9, 3, 1, 1),
            (9, 3, 2, 0),
            (10, 1, 1, 0),
            (7, 3, 2, 1),
            (4, 3, 1, 2),
        ] {
            let p = params(h, k, s, pad);
            for oy0 in 0..p.out_h() {
                for rows in 1..=p.out_h() - oy0 {
                    // Brute force: the input rows any tap of the band's outputs lands on.
                    let read: Vec<usize> = (oy0..oy0 + rows)
                        .flat_map(|oy| (0..k).map(move |ky| (oy * s + ky) as i64 - pad as i64))
                        .filter(|&y| y >= 0 && y < h as i64)
                        .map(|y| y as usize)
                        .collect();
                    let (y0, y1) = band_input_rows(&p, (oy0, rows));
                    let lo = read.iter().copied().min().unwrap_or(y0);
                    let hi = read.iter().copied().max().map_or(y0, |m| m + 1);
                    assert_eq!((y0, y1), (lo, hi), "{p:?} band ({oy0}, {rows})");
                }
            }
        }
    }
}
