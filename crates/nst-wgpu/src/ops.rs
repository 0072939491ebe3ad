//! [`BackendCore`] and [`BackendExt`] for [`Wgpu`]: argument checks, then one kernel per op.

use crate::{Wgpu, WgpuBuffer};
use nst_tensor::{
    check, BackendCore, BackendExt, BinaryOp, Conv2dParams, Error, MemoryKind, Pool2dParams,
    PoolKind, Result, Shape, UnaryOp,
};

/// Elements per workgroup in a pass of `sum_chunks`.
pub(crate) const CHUNK: usize = 4096;

fn u(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(op, format!("{v} exceeds the device's indices")))
}

/// The output's length and the parameters of `narrow` and its adjoint: a tensor seen as
/// `[outer, full, inner]`, the slice `start..start + len` of the middle axis, and an output
/// whose middle axis has `out_mid` entries.
fn narrow_params(
    op: &'static str,
    (outer, full, inner): (usize, usize, usize),
    start: usize,
    len: usize,
    out_mid: usize,
) -> Result<(usize, [u32; 6])> {
    let n = outer * out_mid * inner;
    let p = [n, outer, full, inner, start, len];
    let mut out = [0u32; 6];
    for (o, v) in out.iter_mut().zip(p) {
        *o = u(op, v)?;
    }
    Ok((n, out))
}

impl Wgpu {
    /// A buffer in one binding, or an error naming the op: kernels other than the
    /// elementwise ones and the copies read their operands whole.
    fn whole<'a>(&self, op: &'static str, b: &'a WgpuBuffer) -> Result<&'a wgpu::Buffer> {
        match b.chunks.as_slice() {
            [one] => Ok(one),
            _ => Err(Error::invalid(
                op,
                format!(
                    "an operand of {} elements is larger than this adapter's largest binding \
                     ({} bytes)",
                    b.len, self.inner.max_binding
                ),
            )),
        }
    }

    /// A new output of `len` elements in one binding, written by `entry` over `len`
    /// invocations from whole operands.
    fn map(
        &self,
        entry: &'static str,
        len: usize,
        params: &[u32],
        inputs: &[&WgpuBuffer],
    ) -> Result<WgpuBuffer> {
        let ins = inputs
            .iter()
            .map(|b| self.whole(entry, b))
            .collect::<Result<Vec<_>>>()?;
        let out = self.inner.alloc_whole(len).map_err(|e| self.err(e))?;
        let grid = self.inner.grid(len).map_err(|e| self.err(e))?;
        self.inner
            .dispatch(entry, params, &ins, &out.chunks[0], grid)
            .map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// A new output of `len` elements, split over bindings like any buffer of that length,
    /// written binding by binding by `entry`: `params(first, count)` for the binding holding
    /// elements `first..first + count`, whose operands are the same bindings of `split` (all
    /// of length `len`) followed by the whole buffers `whole`.
    fn map_split(
        &self,
        entry: &'static str,
        len: usize,
        params: impl Fn(u32, u32) -> Vec<u32>,
        split: &[&WgpuBuffer],
        whole: &[&WgpuBuffer],
    ) -> Result<WgpuBuffer> {
        let whole = whole
            .iter()
            .map(|b| self.whole(entry, b))
            .collect::<Result<Vec<_>>>()?;
        let out = self.inner.alloc(len).map_err(|e| self.err(e))?;
        for (i, r) in self.inner.ranges(len).into_iter().enumerate() {
            let mut ins: Vec<&wgpu::Buffer> = split.iter().map(|b| &b.chunks[i]).collect();
            ins.extend(&whole);
            let grid = self.inner.grid(r.len()).map_err(|e| self.err(e))?;
            let p = params(u(entry, r.start)?, u(entry, r.len())?);
            self.inner
                .dispatch(entry, &p, &ins, &out.chunks[i], grid)
                .map_err(|e| self.err(e))?;
        }
        Ok(out)
    }

    /// The tiled product in `mode` (see `gemm.wgsl`): an `m x n` result of `len` elements
    /// over `k`.
    fn gemm_with(
        &self,
        mode: u32,
        len: usize,
        (m, n, k): (usize, usize, usize),
        params: &[u32],
        inputs: &[&WgpuBuffer],
    ) -> Result<WgpuBuffer> {
        const OP: &str = "gemm";
        let ins = inputs
            .iter()
            .map(|b| self.whole(OP, b))
            .collect::<Result<Vec<_>>>()?;
        if k == 0 && m > 0 && n > 0 {
            // An empty sum: zeros.
            return self.full(len, 0.0);
        }
        let out = self.inner.alloc_whole(len).map_err(|e| self.err(e))?;
        if m == 0 || n == 0 {
            return Ok(out);
        }
        let mut p = vec![mode, u(OP, m)?, u(OP, n)?, u(OP, k)?];
        p.extend_from_slice(params);
        let (x, z, _) = self.inner.spread(n.div_ceil(64)).map_err(|e| self.err(e))?;
        let y = u(OP, m.div_ceil(64))?;
        self.inner
            .dispatch("gemm", &p, &ins, &out.chunks[0], (x, y, z))
            .map_err(|e| self.err(e))?;
        Ok(out)
    }

    fn conv_params(op: &'static str, p: &Conv2dParams) -> Result<Vec<u32>> {
        [
            p.batch,
            p.in_channels,
            p.out_channels,
            p.in_h,
            p.in_w,
            p.kh,
            p.kw,
            p.stride,
            p.padding,
            p.out_h(),
            p.out_w(),
        ]
        .iter()
        .map(|&v| u(op, v))
        .collect()
    }

    fn conv(
        &self,
        x: &WgpuBuffer,
        w: &WgpuBuffer,
        bias: Option<&WgpuBuffer>,
        p: &Conv2dParams,
        relu: bool,
    ) -> Result<WgpuBuffer> {
        const OP: &str = "conv2d";
        p.check_forward(OP, x.len, w.len, bias.map(|b| b.len))?;
        let mut params = Self::conv_params(OP, p)?;
        params.push(u32::from(bias.is_some()) | if relu { 2 } else { 0 });
        let mut inputs = vec![x, w];
        inputs.extend(bias);
        let (m, n, k) = (
            p.out_channels,
            p.batch * p.out_h() * p.out_w(),
            p.in_channels * p.kh * p.kw,
        );
        self.gemm_with(1, p.output_shape().numel(), (m, n, k), &params, &inputs)
    }

    fn conv_input_grad(
        &self,
        dy: &WgpuBuffer,
        w: &WgpuBuffer,
        y: Option<&WgpuBuffer>,
        p: &Conv2dParams,
    ) -> Result<WgpuBuffer> {
        const OP: &str = "conv2d_backward_input";
        p.check_backward_input(OP, dy.len, w.len)?;
        if let Some(y) = y {
            if y.len != dy.len {
                return Err(Error::invalid(
                    OP,
                    "the output and its gradient differ in length",
                ));
            }
        }
        let mut params = Self::conv_params(OP, p)?;
        params.push(if y.is_some() { 4 } else { 0 });
        let mut inputs = vec![dy, w];
        inputs.extend(y);
        let (m, n, k) = (
            p.in_channels,
            p.batch * p.in_h * p.in_w,
            p.out_channels * p.kh * p.kw,
        );
        self.gemm_with(2, p.input_shape().numel(), (m, n, k), &params, &inputs)
    }
}

impl BackendCore for Wgpu {
    type Buffer = WgpuBuffer;

    fn name(&self) -> String {
        format!(
            "wgpu:{}:{}",
            self.inner.summary.ordinal, self.inner.summary.name
        )
    }

    fn upload_f32(&self, data: &[f32]) -> Result<WgpuBuffer> {
        self.inner.upload(data).map_err(|e| self.err(e))
    }

    fn upload_f64(&self, data: &[f64]) -> Result<WgpuBuffer> {
        let v: Vec<f32> = data.iter().map(|&x| x as f32).collect();
        self.upload_f32(&v)
    }

    fn download_f32(&self, buf: &WgpuBuffer) -> Result<Vec<f32>> {
        self.inner.download(buf).map_err(|e| self.err(e))
    }

    fn download_f64(&self, buf: &WgpuBuffer) -> Result<Vec<f64>> {
        Ok(self.download_f32(buf)?.into_iter().map(f64::from).collect())
    }

    fn len(&self, buf: &WgpuBuffer) -> usize {
        buf.len
    }

    fn full(&self, len: usize, value: f64) -> Result<WgpuBuffer> {
        let v = (value as f32).to_bits();
        self.map_split("fill", len, |_, n| vec![n, v], &[], &[])
    }

    fn unary(&self, op: UnaryOp, x: &WgpuBuffer) -> Result<WgpuBuffer> {
        let code = match op {
            UnaryOp::Relu => 0,
            UnaryOp::Square => 1,
            UnaryOp::Exp => 2,
            UnaryOp::Neg => 3,
            UnaryOp::Sqrt => 4,
        };
        self.map_split("unary", x.len, |_, n| vec![n, code], &[x], &[])
    }

    fn affine(&self, x: &WgpuBuffer, mul: f64, add: f64) -> Result<WgpuBuffer> {
        let (m, a) = ((mul as f32).to_bits(), (add as f32).to_bits());
        self.map_split("affine", x.len, |_, n| vec![n, m, a], &[x], &[])
    }

    fn binary(&self, op: BinaryOp, a: &WgpuBuffer, b: &WgpuBuffer) -> Result<WgpuBuffer> {
        if a.len != b.len {
            return Err(Error::ShapeMismatch {
                op: "binary",
                lhs: Shape::new([a.len]),
                rhs: Shape::new([b.len]),
            });
        }
        let code = match op {
            BinaryOp::Add => 0,
            BinaryOp::Sub => 1,
            BinaryOp::Mul => 2,
            BinaryOp::Div => 3,
            BinaryOp::ReluGrad => 4,
        };
        self.map_split("binary", a.len, |_, n| vec![n, code], &[a, b], &[])
    }

    fn sum_all(&self, x: &WgpuBuffer) -> Result<WgpuBuffer> {
        const OP: &str = "sum_all";
        // Passes of fixed chunks until one value is left: the same order every time. The
        // first pass reads each binding of a split buffer into its place among the partial
        // sums (the bindings hold whole chunks, so the partials are a whole buffer's).
        let first = self.inner.ranges(x.len);
        let groups: usize = first.iter().map(|r| r.len().div_ceil(CHUNK).max(1)).sum();
        let mut cur = self.inner.alloc_whole(groups).map_err(|e| self.err(e))?;
        let mut at = 0usize;
        for (r, chunk) in first.iter().zip(&x.chunks) {
            let g = r.len().div_ceil(CHUNK).max(1);
            let grid = self.inner.spread(g).map_err(|e| self.err(e))?;
            self.inner
                .dispatch(
                    "sum_chunks",
                    &[u(OP, r.len())?, CHUNK as u32, u(OP, at)?],
                    &[chunk],
                    &cur.chunks[0],
                    grid,
                )
                .map_err(|e| self.err(e))?;
            at += g;
        }
        let mut n = groups;
        while n > 1 {
            let g = n.div_ceil(CHUNK);
            let out = self.inner.alloc_whole(g).map_err(|e| self.err(e))?;
            let grid = self.inner.spread(g).map_err(|e| self.err(e))?;
            self.inner
                .dispatch(
                    "sum_chunks",
                    &[u(OP, n)?, CHUNK as u32, 0],
                    &[&cur.chunks[0]],
                    &out.chunks[0],
                    grid,
                )
                .map_err(|e| self.err(e))?;
            n = g;
            cur = out;
        }
        Ok(cur)
    }

    fn sum_axis(&self, x: &WgpuBuffer, shape: &Shape, axis: usize) -> Result<WgpuBuffer> {
        const OP: &str = "sum_axis";
        check::shape_axis(OP, x.len, shape, axis)?;
        let (outer, n, inner) = shape.split_at_axis(axis);
        let len = outer * inner;
        let p = [u(OP, len)?, u(OP, outer)?, u(OP, n)?, u(OP, inner)?];
        self.map("sum_axis", len, &p, &[x])
    }

    fn broadcast(&self, x: &WgpuBuffer, from: &Shape, to: &Shape) -> Result<WgpuBuffer> {
        const OP: &str = "broadcast";
        check::broadcast(OP, x.len, from, to)?;
        if to.rank() > 8 {
            return Err(Error::invalid(OP, "more than 8 dimensions"));
        }
        let len = to.numel();
        let mut p = vec![0u32; 19];
        p[1] = to.rank() as u32;
        let same_rank = from.rank() == to.rank() && x.len != 1;
        let mut stride = 1usize;
        for d in (0..to.rank()).rev() {
            p[2 + d] = u(OP, to.dim(d))?;
            let f = if same_rank { from.dim(d) } else { 1 };
            p[10 + d] = if f == 1 { 0 } else { u(OP, stride)? };
            stride *= f;
        }
        let params = |first: u32, n: u32| {
            let mut q = p.clone();
            q[0] = n;
            q[18] = first;
            q
        };
        self.map_split("broadcast", len, params, &[], &[x])
    }

    fn narrow(
        &self,
        x: &WgpuBuffer,
        shape: &Shape,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<WgpuBuffer> {
        const OP: &str = "narrow";
        check::narrow(OP, x.len, shape, axis, start, len)?;
        let (outer, full, inner) = shape.split_at_axis(axis);
        let (n, p) = narrow_params(OP, (outer, full, inner), start, len, len)?;
        if x.chunks.len() == 1 && n <= self.inner.chunk {
            return self.map("narrow", n, &p, &[x]);
        }
        // Split buffers: one copy per contiguous run.
        let out = self.inner.alloc(n).map_err(|e| self.err(e))?;
        let runs: Vec<(usize, usize, usize)> = (0..outer)
            .map(|o| ((o * full + start) * inner, o * len * inner, len * inner))
            .collect();
        self.inner.copy(x, &out, &runs).map_err(|e| self.err(e))?;
        Ok(out)
    }

    fn narrow_backward(
        &self,
        dy: &WgpuBuffer,
        shape: &Shape,
        axis: usize,
        start: usize,
        full: usize,
    ) -> Result<WgpuBuffer> {
        const OP: &str = "narrow_backward";
        check::narrow_backward(OP, dy.len, shape, axis, start, full)?;
        let (outer, len, inner) = shape.split_at_axis(axis);
        let (n, p) = narrow_params(OP, (outer, full, inner), start, len, full)?;
        if dy.chunks.len() == 1 && n <= self.inner.chunk {
            return self.map("narrow_backward", n, &p, &[dy]);
        }
        // Split buffers: zeros, then one copy per contiguous run.
        let out = self.full(n, 0.0)?;
        let runs: Vec<(usize, usize, usize)> = (0..outer)
            .map(|o| (o * len * inner, (o * full + start) * inner, len * inner))
            .collect();
        self.inner.copy(dy, &out, &runs).map_err(|e| self.err(e))?;
        Ok(out)
    }

    fn transpose(&self, x: &WgpuBuffer, rows: usize, cols: usize) -> Result<WgpuBuffer> {
        const OP: &str = "transpose";
        let n = rows
            .checked_mul(cols)
            .filter(|&n| n == x.len)
            .ok_or_else(|| {
                Error::invalid(OP, format!("{} elements are not {rows}x{cols}", x.len))
            })?;
        self.map(
            "transpose",
            n,
            &[u(OP, n)?, u(OP, rows)?, u(OP, cols)?],
            &[x],
        )
    }

    fn matmul(
        &self,
        a: &WgpuBuffer,
        b: &WgpuBuffer,
        m: usize,
        k: usize,
        n: usize,
        ta: bool,
        tb: bool,
    ) -> Result<WgpuBuffer> {
        check::matmul("matmul", a.len, b.len, m, k, n)?;
        self.gemm_with(
            0,
            m * n,
            (m, n, k),
            &[u32::from(ta), u32::from(tb)],
            &[a, b],
        )
    }

    fn conv2d(
        &self,
        x: &WgpuBuffer,
        w: &WgpuBuffer,
        bias: Option<&WgpuBuffer>,
        p: &Conv2dParams,
    ) -> Result<WgpuBuffer> {
        self.conv(x, w, bias, p, false)
    }

    fn conv2d_backward_input(
        &self,
        dy: &WgpuBuffer,
        w: &WgpuBuffer,
        p: &Conv2dParams,
    ) -> Result<WgpuBuffer> {
        self.conv_input_grad(dy, w, None, p)
    }

    fn conv2d_backward_weight(
        &self,
        x: &WgpuBuffer,
        dy: &WgpuBuffer,
        p: &Conv2dParams,
    ) -> Result<WgpuBuffer> {
        const OP: &str = "conv2d_backward_weight";
        p.check_backward_weight(OP, x.len, dy.len)?;
        let mut params = Self::conv_params(OP, p)?;
        params.push(0);
        let (m, n, k) = (
            p.out_channels,
            p.in_channels * p.kh * p.kw,
            p.batch * p.out_h() * p.out_w(),
        );
        self.gemm_with(3, p.weight_shape().numel(), (m, n, k), &params, &[dy, x])
    }

    fn pool2d(&self, x: &WgpuBuffer, p: &Pool2dParams) -> Result<WgpuBuffer> {
        const OP: &str = "pool2d";
        p.check(OP, x.len, None)?;
        let len = p.output_shape().numel();
        let mut params = vec![u(OP, len)?];
        params.extend(Self::pool_params(OP, p)?);
        self.map("pool_forward", len, &params, &[x])
    }

    fn pool2d_backward(
        &self,
        x: &WgpuBuffer,
        dy: &WgpuBuffer,
        p: &Pool2dParams,
    ) -> Result<WgpuBuffer> {
        const OP: &str = "pool2d_backward";
        p.check(OP, x.len, Some(dy.len))?;
        let mut params = vec![u(OP, x.len)?];
        params.extend(Self::pool_params(OP, p)?);
        self.map("pool_backward", x.len, &params, &[x, dy])
    }
}

impl Wgpu {
    fn pool_params(op: &'static str, p: &Pool2dParams) -> Result<Vec<u32>> {
        let kind = match p.kind {
            PoolKind::Max => 0,
            PoolKind::Avg => 1,
        };
        let mut v = vec![kind];
        for d in [p.in_h, p.in_w, p.kernel, p.stride, p.out_h(), p.out_w()] {
            v.push(u(op, d)?);
        }
        Ok(v)
    }
}

impl BackendExt for Wgpu {
    fn conv2d_relu(
        &self,
        x: &WgpuBuffer,
        w: &WgpuBuffer,
        bias: Option<&WgpuBuffer>,
        p: &Conv2dParams,
    ) -> Result<WgpuBuffer> {
        self.conv(x, w, bias, p, true)
    }

    fn conv2d_relu_backward_input(
        &self,
        y: &WgpuBuffer,
        dy: &WgpuBuffer,
        w: &WgpuBuffer,
        p: &Conv2dParams,
    ) -> Result<WgpuBuffer> {
        self.conv_input_grad(dy, w, Some(y), p)
    }

    fn clamp_channels(
        &self,
        x: &WgpuBuffer,
        plane: usize,
        ranges: &[(f32, f32)],
    ) -> Result<WgpuBuffer> {
        const OP: &str = "clamp_channels";
        check::clamp_channels(OP, x.len, plane, ranges)?;
        let flat: Vec<f32> = ranges.iter().flat_map(|&(lo, hi)| [lo, hi]).collect();
        let r = self.upload_f32(&flat)?;
        let (plane, channels) = (u(OP, plane)?, u(OP, ranges.len())?);
        self.map_split(
            "clamp_channels",
            x.len,
            |first, n| vec![n, plane, channels, first],
            &[x],
            &[&r],
        )
    }

    fn batches_reductions(&self) -> bool {
        !self.inner.host_memory
    }

    fn memory(&self) -> MemoryKind {
        if self.inner.host_memory {
            // A software adapter (lavapipe, WARP) keeps its buffers in the host's memory.
            MemoryKind::host_now()
        } else {
            // Read through the API where it can (Vulkan); otherwise 0, and a budget must be
            // given.
            let (total, free) = self.inner.memory_now();
            MemoryKind::Device { total, free }
        }
    }

    fn max_buffer_bytes(&self) -> Option<u64> {
        Some(self.inner.max_binding)
    }
}
