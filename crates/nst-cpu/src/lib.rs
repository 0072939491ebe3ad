//! The CPU backend of nst: flat `ndarray` buffers, Winograd and GEMM-lowered convolutions,
//! rayon threads.
//!
//! [`Cpu`] (`f32`, the working precision) and [`Cpu64`] (`f64`, for gradient checks) implement
//! [`nst_tensor::Backend`]. 3x3 stride-1 convolutions with enough channels use Winograd
//! F(2x2, 3x3) (the input gradients of small layers F(3x3, 3x3), [`F3_MAX_CHANNEL_PAIRS`]), or
//! F(4x4, 3x3) with [`Precision::Fast`], with the filters transformed once per weight buffer;
//! other convolutions are lowered to a cache-blocked im2col. Both run on the `gemm` crate's
//! kernels (AVX-512 chosen at run time where the processor has it); everything
//! else is parallel loops over large chunks. At [`Precision::Fast`] on a CPU with AMX or
//! AVX512-BF16, Winograd's products take bf16 operands with f32 sums instead ([`Products`]).
//! All reductions and Winograd's blocks use a fixed split that does not depend on the thread
//! count, so results are bit-identical across runs.
//!
//! ```
//! use nst_cpu::Cpu;
//! use nst_tensor::Tensor;
//! # fn main() -> nst_tensor::Result<()> {
//! // A 3x3 convolution of a 1x1x4x4 image with one all-ones filter and padding 1.
//! let conv = |threads| -> nst_tensor::Result<Vec<f32>> {
//!     let cpu = Cpu::new(threads);
//!     let x = Tensor::from_f32(&cpu, &(0..16).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 4, 4])?;
//!     let w = Tensor::from_f32(&cpu, &[1.0; 9], [1, 1, 3, 3])?;
//!     x.conv2d(&w, None, 1, 1)?.to_f32()
//! };
//! let y = conv(1)?;
//! // The corner sums its 2x2 neighbourhood: 0 + 1 + 4 + 5.
//! assert_eq!(y[0], 10.0);
//! // The same bytes with any number of threads.
//! assert_eq!(y, conv(2)?);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod element;
pub mod host;
mod ops;
mod pool;

pub use element::Element;
pub use pool::BufPool;

use ndarray::{Array1, ArrayD, IxDyn};
use nst_tensor::{
    check, BackendCore, BackendExt, BinaryOp, Conv2dParams, Error, Pool2dParams, Result, Shape,
    Tensor, UnaryOp,
};
use ops::bf16::Kernel;
use ops::winograd::{Filters, Fused, Variant};
use std::sync::{Arc, Mutex, OnceLock};

/// A flat buffer of the CPU backend.
#[derive(Debug, Clone)]
pub struct CpuBuffer<E: Element> {
    data: Array1<E>,
    /// This buffer's Winograd transforms as 3x3 convolution weights, made on first use
    /// (buffers never change, so the cache never goes stale): F(2x2), F(3x3) and F(4x4), each
    /// forward then input gradient.
    winograd: [OnceLock<Arc<Filters<E>>>; 6],
}

impl<E: Element> CpuBuffer<E> {
    /// The elements.
    pub fn as_slice(&self) -> &[E] {
        self.data
            .as_slice()
            .expect("CpuBuffer is always contiguous")
    }

    pub(crate) fn from_vec(v: Vec<E>) -> Self {
        CpuBuffer {
            data: Array1::from_vec(v),
            winograd: Default::default(),
        }
    }

    /// The elements, mutably (only for a buffer not yet shared).
    fn as_mut_slice(&mut self) -> &mut [E] {
        self.data
            .as_slice_mut()
            .expect("CpuBuffer is always contiguous")
    }

    /// The number of elements.
    fn len(&self) -> usize {
        self.data.len()
    }

    /// This buffer, as `k x c x 3 x 3` weights, transformed for Winograd `variant` (with
    /// `rotated`, the input gradient's bank; with `bf16`, for bf16 products); cached on the
    /// buffer.
    fn filters(
        &self,
        k: usize,
        c: usize,
        variant: Variant,
        rotated: bool,
        bf16: bool,
    ) -> Arc<Filters<E>> {
        let make = || Filters::new(self.as_slice(), k, c, variant, rotated, bf16);
        let v = match variant {
            Variant::F2 => 0,
            Variant::F3 => 1,
            Variant::F4 => 2,
        };
        let slot = 2 * v + usize::from(rotated);
        let f = self.winograd[slot].get_or_init(|| Arc::new(make()));
        let (fk, fc) = if rotated { (c, k) } else { (k, c) };
        if f.matches(fk, fc, variant, bf16) {
            Arc::clone(f)
        } else {
            // The same buffer used under another shape: transform without caching.
            Arc::new(make())
        }
    }
}

impl<E: Element> Drop for CpuBuffer<E> {
    fn drop(&mut self) {
        let a = std::mem::replace(&mut self.data, Array1::from_vec(Vec::new()));
        let (v, _) = a.into_raw_vec_and_offset();
        E::pool().put(v);
    }
}

/// The fewest input and output channels for which a 3x3 convolution uses Winograd.
pub const WINOGRAD_MIN_CHANNELS: usize = 16;

/// At the default precision in f32, the most input-output channel pairs (`C·K`) for which a
/// convolution's input gradient uses Winograd F(3x3, 3x3) instead of F(2x2, 3x3): VGG19's
/// conv1_2 to conv4_1 (conv1_1, with 3 input channels, is below [`WINOGRAD_MIN_CHANNELS`]).
///
/// F(3x3, 3x3) takes 25 products per 3x3 output tile and channel pair, 2.8 per output,
/// against F(2x2, 3x3)'s 4, and its transformed input is 2.8 values per pixel against 4. Its
/// rounding error is about 3x F(2x2, 3x3)'s per convolution (9.0e-7 against 2.8e-7 relative,
/// f32, random data); in the gradient that stays far inside the default precision's bounds
/// against f64 (`docs/benchmarks.md#precision`).
///
/// Only the input gradient: the forward pass stays on F(2x2, 3x3), whose transforms use only
/// ±1 and ½. Max pooling picks the largest of activations that can be equal up to rounding,
/// and F(3x3, 3x3)'s larger rounding breaks such near-ties differently from the direct
/// method, sending the gradient to another pixel of the window (measured: one such pixel made
/// the gradient differ from NumPy's by 8.8e-2 of its largest entry on the reference crop).
/// The input gradient's rounding moves no maximum.
///
/// Its cached filters are 25/9 of the weights against 16/9, so only where the weights are
/// small: on all layers the bank would grow by 52 MB, 6% of a 512 px render's peak memory.
/// Measured side by side, 2 threads, medians of five alternating runs: a render iteration
/// 3.7% faster at 512x512 and 6% at 1024x1024, peak memory +3% (docs/benchmarks.md).
pub const F3_MAX_CHANNEL_PAIRS: usize = 256 * 512;

/// The CPU backend, generic over its element type.
#[derive(Clone)]
pub struct CpuBackend<E: Element> {
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    scratch: Arc<Mutex<Vec<E>>>,
    winograd: bool,
    precision: Precision,
    products: Products,
}

/// How exactly the CPU backend computes 3x3 convolutions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Winograd F(2x2, 3x3), with the input gradients of layers with small weights in
    /// F(3x3, 3x3) ([`F3_MAX_CHANNEL_PAIRS`]): about as exact as the direct method (see
    /// `docs/benchmarks.md` for the measured errors against f64).
    #[default]
    Default,
    /// Winograd F(4x4, 3x3): 1.8x fewer multiplications than F(2x2, 3x3), with larger
    /// rounding errors (measured and documented in `docs/benchmarks.md`).
    Fast,
}

/// What [`Precision::Fast`]'s convolution products (Winograd's batched matrix products)
/// compute in. The default precision always computes in the element type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Products {
    /// bf16 operands with f32 sums where the CPU multiplies bf16 natively (AMX tiles, else
    /// AVX512-BF16, chosen at run time), else f32.
    #[default]
    Auto,
    /// f32 (the element type) always.
    F32,
    /// bf16 operands with f32 sums always, emulated in portable code on a CPU without the
    /// instructions (slow: for testing the numerics anywhere).
    Bf16,
}

/// The CPU backend in `f32`, the working precision.
pub type Cpu = CpuBackend<f32>;
/// The CPU backend in `f64`, for gradient checks.
pub type Cpu64 = CpuBackend<f64>;

impl<E: Element> std::fmt::Debug for CpuBackend<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuBackend<{}>({} threads)", E::NAME, self.threads)
    }
}

impl<E: Element> Default for CpuBackend<E> {
    fn default() -> Self {
        Self::new(0)
    }
}

impl<E: Element> CpuBackend<E> {
    /// A backend with its own pool of `threads` threads (0: one per core).
    pub fn new(threads: usize) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("nst-cpu-{i}"))
            .build()
            .or_else(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build())
            .expect("a one-thread pool can always be built");
        CpuBackend {
            pool: Arc::new(pool),
            threads,
            scratch: Arc::new(Mutex::new(Vec::new())),
            winograd: true,
            precision: Precision::Default,
            products: Products::Auto,
        }
    }

    /// This backend computing 3x3 convolutions at `precision`.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The precision of 3x3 convolutions.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// This backend computing [`Precision::Fast`]'s products as `products` says.
    pub fn with_products(mut self, products: Products) -> Self {
        self.products = products;
        self
    }

    /// The bf16 kernel the convolutions' products run on, if any: only in `f32` at
    /// [`Precision::Fast`].
    fn bf16(&self) -> Option<Kernel> {
        if self.precision != Precision::Fast || E::NAME != "f32" {
            return None;
        }
        match self.products {
            Products::F32 => None,
            Products::Auto => Kernel::detect(),
            Products::Bf16 => Some(Kernel::detect().unwrap_or(Kernel::Portable)),
        }
    }

    /// The name of the bf16 kernel the convolutions' products run on (`amx`, `avx512-bf16`,
    /// `portable`), or `None` where they compute in the element type.
    pub fn bf16_kernel(&self) -> Option<&'static str> {
        self.bf16().map(Kernel::name)
    }

    /// The Winograd variant of the current precision for a convolution of `p`'s shape, or (with
    /// `rotated`) for its input gradient.
    fn variant(&self, p: &Conv2dParams, rotated: bool) -> Variant {
        match self.precision {
            // The input gradient of layers with small weights in F(3x3, 3x3), the rest in
            // F(2x2, 3x3): see [`F3_MAX_CHANNEL_PAIRS`].
            Precision::Default
                if rotated
                    && E::NAME == "f32"
                    && p.in_channels * p.out_channels <= F3_MAX_CHANNEL_PAIRS =>
            {
                Variant::F3
            }
            Precision::Default => Variant::F2,
            // bf16 rounding is amplified by F(4x4, 3x3)'s transform constants (2.5% relative
            // error per convolution on random data, against 0.4% with F(2x2, 3x3)).
            Precision::Fast if self.bf16().is_some() => Variant::F2,
            Precision::Fast => Variant::F4,
        }
    }

    /// This backend with Winograd for 3x3 stride-1 padding-1 convolutions turned
    /// on (the default) or off (every convolution through im2col and GEMM), e.g. to compare.
    pub fn with_winograd(mut self, on: bool) -> Self {
        self.winograd = on;
        self
    }

    /// A convolution, through ReLU with `relu`: Winograd with the bias and ReLU in its output
    /// pass where it applies, else im2col and GEMM with the ReLU in place on the fresh output.
    fn conv_forward(
        &self,
        x: &CpuBuffer<E>,
        w: &CpuBuffer<E>,
        bias: Option<&CpuBuffer<E>>,
        p: &Conv2dParams,
        relu: bool,
    ) -> CpuBuffer<E> {
        let bias = bias.map(|b| b.as_slice());
        if self.use_winograd(p) {
            let f = self.winograd_filters(w, p, false);
            let fused = Fused {
                bias,
                relu,
                mask: None,
            };
            return self.run(|| ops::conv::winograd(x.as_slice(), &f, fused, p, self.bf16()));
        }
        let mut y = self.run(|| ops::conv::forward(self, x.as_slice(), w.as_slice(), bias, p));
        if relu {
            self.run(|| ops::elementwise::relu_in_place(y.as_mut_slice()));
        }
        y
    }

    /// A convolution's input gradient, of `dy` masked where `relu_out` (the output of a fused
    /// ReLU) is not positive: Winograd applies the mask while reading `dy`; im2col masks first.
    fn conv_backward_input(
        &self,
        dy: &CpuBuffer<E>,
        w: &CpuBuffer<E>,
        relu_out: Option<&CpuBuffer<E>>,
        p: &Conv2dParams,
    ) -> CpuBuffer<E> {
        if self.use_winograd(p) {
            let f = self.winograd_filters(w, p, true);
            let fused = Fused {
                mask: relu_out.map(|y| y.as_slice()),
                ..Fused::default()
            };
            return self.run(|| ops::conv::winograd(dy.as_slice(), &f, fused, p, self.bf16()));
        }
        self.run(|| match relu_out {
            None => ops::conv::backward_input(self, dy.as_slice(), w.as_slice(), p),
            Some(y) => {
                let g = ops::elementwise::binary(BinaryOp::ReluGrad, y.as_slice(), dy.as_slice());
                ops::conv::backward_input(self, g.as_slice(), w.as_slice(), p)
            }
        })
    }

    /// `w`'s Winograd filters for this backend's precision and products (with `rotated`, the
    /// input gradient's bank), cached on the buffer.
    fn winograd_filters(
        &self,
        w: &CpuBuffer<E>,
        p: &Conv2dParams,
        rotated: bool,
    ) -> Arc<Filters<E>> {
        let bf16 = self.bf16().is_some();
        w.filters(
            p.out_channels,
            p.in_channels,
            self.variant(p, rotated),
            rotated,
            bf16,
        )
    }

    /// Whether a convolution goes through Winograd: 3x3 kernels, stride 1,
    /// padding 1, and at least [`WINOGRAD_MIN_CHANNELS`] channels on both sides (below that
    /// the transforms cost more than they save).
    fn use_winograd(&self, p: &Conv2dParams) -> bool {
        self.winograd
            && p.kh == 3
            && p.kw == 3
            && p.stride == 1
            && p.padding == 1
            && p.in_channels.min(p.out_channels) >= WINOGRAD_MIN_CHANNELS
    }

    /// The number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on this backend's thread pool.
    pub(crate) fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Borrows the reusable scratch buffer, grown to at least `len` elements.
    pub(crate) fn with_scratch<R>(&self, len: usize, f: impl FnOnce(&mut [E]) -> R) -> R {
        let mut buf = std::mem::take(&mut *self.scratch.lock().unwrap_or_else(|e| e.into_inner()));
        if buf.len() < len {
            buf.resize(len, E::zero());
        }
        let r = f(&mut buf[..len]);
        let mut slot = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if slot.len() < buf.len() {
            *slot = buf;
        }
        r
    }
}

impl<E: Element> CpuBackend<E>
where
    Self: nst_tensor::Backend<Buffer = CpuBuffer<E>>,
{
    /// Wraps an `ndarray` array (any shape, converted to a contiguous buffer) as a tensor.
    pub fn tensor_from_array(&self, a: &ArrayD<E>) -> Result<Tensor<Self>> {
        let shape = Shape::new(a.shape());
        let data: Vec<E> = a.iter().copied().collect();
        Tensor::from_buffer(self, CpuBuffer::from_vec(data), shape)
    }

    /// Copies a tensor into an `ndarray` array of its shape.
    pub fn tensor_to_array(t: &Tensor<Self>) -> Result<ArrayD<E>> {
        ArrayD::from_shape_vec(IxDyn(t.dims()), t.buffer().as_slice().to_vec())
            .map_err(|e| Error::invalid("to_array", e.to_string()))
    }
}

fn lengths<E: Element>(op: &'static str, a: &CpuBuffer<E>, b: &CpuBuffer<E>) -> Result<()> {
    if a.len() != b.len() {
        return Err(Error::ShapeMismatch {
            op,
            lhs: Shape::new([a.len()]),
            rhs: Shape::new([b.len()]),
        });
    }
    Ok(())
}

/// The backend traits for one element type. They are implemented for `f32` and `f64` each,
/// not for any `E`, so that their methods are not generic: every kernel below them is
/// compiled once, here, at this crate's optimisation level (3, in every profile), instead of
/// again in every crate, test and example that renders on the CPU, at theirs.
macro_rules! impl_backend {
    ($E:ty) => {
        impl BackendCore for CpuBackend<$E> {
            type Buffer = CpuBuffer<$E>;

            fn name(&self) -> String {
                match (self.precision, self.bf16()) {
                    (Precision::Default, _) => format!("cpu-{}", <$E as Element>::NAME),
                    (Precision::Fast, None) => format!("cpu-{}-fast", <$E as Element>::NAME),
                    (Precision::Fast, Some(k)) => {
                        format!("cpu-{}-fast-{}", <$E as Element>::NAME, k.name())
                    }
                }
            }

            fn upload_f32(&self, data: &[f32]) -> Result<Self::Buffer> {
                Ok(CpuBuffer::from_vec(
                    data.iter().map(|&v| <$E as Element>::of32(v)).collect(),
                ))
            }

            fn upload_f64(&self, data: &[f64]) -> Result<Self::Buffer> {
                Ok(CpuBuffer::from_vec(
                    data.iter().map(|&v| <$E as Element>::of(v)).collect(),
                ))
            }

            fn download_f32(&self, buf: &Self::Buffer) -> Result<Vec<f32>> {
                Ok(buf.as_slice().iter().map(|v| v.f32()).collect())
            }

            fn download_f64(&self, buf: &Self::Buffer) -> Result<Vec<f64>> {
                Ok(buf.as_slice().iter().map(|v| v.f64()).collect())
            }

            fn len(&self, buf: &Self::Buffer) -> usize {
                buf.len()
            }

            fn full(&self, len: usize, value: f64) -> Result<Self::Buffer> {
                let mut v = <$E as Element>::pool().zeroed(len);
                v.iter_mut().for_each(|x| *x = <$E as Element>::of(value));
                Ok(CpuBuffer::from_vec(v))
            }

            fn unary(&self, op: UnaryOp, x: &Self::Buffer) -> Result<Self::Buffer> {
                Ok(self.run(|| ops::elementwise::unary(op, x.as_slice())))
            }

            fn affine(&self, x: &Self::Buffer, mul: f64, add: f64) -> Result<Self::Buffer> {
                Ok(self.run(|| {
                    ops::elementwise::affine(
                        x.as_slice(),
                        <$E as Element>::of(mul),
                        <$E as Element>::of(add),
                    )
                }))
            }

            fn binary(
                &self,
                op: BinaryOp,
                a: &Self::Buffer,
                b: &Self::Buffer,
            ) -> Result<Self::Buffer> {
                lengths("binary", a, b)?;
                Ok(self.run(|| ops::elementwise::binary(op, a.as_slice(), b.as_slice())))
            }

            fn sum_all(&self, x: &Self::Buffer) -> Result<Self::Buffer> {
                Ok(self.run(|| ops::reduce::sum_all(x.as_slice())))
            }

            fn sum_axis(
                &self,
                x: &Self::Buffer,
                shape: &Shape,
                axis: usize,
            ) -> Result<Self::Buffer> {
                check::shape_axis("sum_axis", x.len(), shape, axis)?;
                Ok(self.run(|| ops::reduce::sum_axis(x.as_slice(), shape, axis)))
            }

            fn broadcast(
                &self,
                x: &Self::Buffer,
                from: &Shape,
                to: &Shape,
            ) -> Result<Self::Buffer> {
                check::broadcast("broadcast", x.len(), from, to)?;
                Ok(self.run(|| ops::reduce::broadcast(x.as_slice(), from, to)))
            }

            fn narrow(
                &self,
                x: &Self::Buffer,
                shape: &Shape,
                axis: usize,
                start: usize,
                len: usize,
            ) -> Result<Self::Buffer> {
                check::narrow("narrow", x.len(), shape, axis, start, len)?;
                Ok(self.run(|| ops::reduce::narrow(x.as_slice(), shape, axis, start, len)))
            }

            fn narrow_backward(
                &self,
                dy: &Self::Buffer,
                shape: &Shape,
                axis: usize,
                start: usize,
                full: usize,
            ) -> Result<Self::Buffer> {
                check::narrow_backward("narrow_backward", dy.len(), shape, axis, start, full)?;
                Ok(self
                    .run(|| ops::reduce::narrow_backward(dy.as_slice(), shape, axis, start, full)))
            }

            fn transpose(
                &self,
                x: &Self::Buffer,
                rows: usize,
                cols: usize,
            ) -> Result<Self::Buffer> {
                if rows.checked_mul(cols) != Some(x.len()) {
                    return Err(Error::invalid(
                        "transpose",
                        "buffer does not match its shape",
                    ));
                }
                Ok(self.run(|| ops::reduce::transpose(x.as_slice(), rows, cols)))
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
                check::matmul("matmul", a.len(), b.len(), m, k, n)?;
                Ok(self.run(|| ops::matmul::matmul(a.as_slice(), b.as_slice(), m, k, n, ta, tb)))
            }

            fn conv2d(
                &self,
                x: &Self::Buffer,
                w: &Self::Buffer,
                bias: Option<&Self::Buffer>,
                p: &Conv2dParams,
            ) -> Result<Self::Buffer> {
                p.check_forward("conv2d", x.len(), w.len(), bias.map(|b| b.len()))?;
                Ok(self.conv_forward(x, w, bias, p, false))
            }

            fn conv2d_backward_input(
                &self,
                dy: &Self::Buffer,
                w: &Self::Buffer,
                p: &Conv2dParams,
            ) -> Result<Self::Buffer> {
                p.check_backward_input("conv2d_backward_input", dy.len(), w.len())?;
                Ok(self.conv_backward_input(dy, w, None, p))
            }

            fn conv2d_backward_weight(
                &self,
                x: &Self::Buffer,
                dy: &Self::Buffer,
                p: &Conv2dParams,
            ) -> Result<Self::Buffer> {
                p.check_backward_weight("conv2d_backward_weight", x.len(), dy.len())?;
                Ok(self.run(|| ops::conv::backward_weight(self, x.as_slice(), dy.as_slice(), p)))
            }

            fn pool2d(&self, x: &Self::Buffer, p: &Pool2dParams) -> Result<Self::Buffer> {
                p.check("pool2d", x.len(), None)?;
                Ok(self.run(|| ops::pool::forward(x.as_slice(), p)))
            }

            fn pool2d_backward(
                &self,
                x: &Self::Buffer,
                dy: &Self::Buffer,
                p: &Pool2dParams,
            ) -> Result<Self::Buffer> {
                p.check("pool2d_backward", x.len(), Some(dy.len()))?;
                Ok(self.run(|| ops::pool::backward(x.as_slice(), dy.as_slice(), p)))
            }
        }

        impl BackendExt for CpuBackend<$E> {
            fn dot(&self, a: &Self::Buffer, b: &Self::Buffer) -> Result<f64> {
                lengths("dot", a, b)?;
                Ok(self.run(|| ops::reduce::dot(a.as_slice(), b.as_slice())))
            }

            fn dots(&self, rows: &[&Self::Buffer], cols: &[&Self::Buffer]) -> Result<Vec<f64>> {
                if let Some(first) = rows.first().or(cols.first()) {
                    for b in rows.iter().chain(cols) {
                        lengths("dots", first, b)?;
                    }
                }
                let r: Vec<&[$E]> = rows.iter().map(|b| b.as_slice()).collect();
                let c: Vec<&[$E]> = cols.iter().map(|b| b.as_slice()).collect();
                Ok(self.run(|| ops::reduce::dots(&r, &c)))
            }

            fn combine(&self, coeffs: &[f64], vectors: &[&Self::Buffer]) -> Result<Self::Buffer> {
                check::combine("combine", coeffs.len(), vectors.iter().map(|v| v.len()))?;
                let v: Vec<&[$E]> = vectors.iter().map(|b| b.as_slice()).collect();
                Ok(self.run(|| ops::reduce::combine(coeffs, &v)))
            }

            fn axpy(&self, a: f64, x: &Self::Buffer, y: &Self::Buffer) -> Result<Self::Buffer> {
                lengths("axpy", x, y)?;
                Ok(self.run(|| ops::elementwise::axpy(a, x.as_slice(), y.as_slice())))
            }

            fn release_cached(&self) {
                <$E as Element>::pool().clear();
            }

            fn memory(&self) -> nst_tensor::MemoryKind {
                host::memory()
            }

            fn limit_cached(&self, bytes: u64) {
                <$E as Element>::pool().set_limit(usize::try_from(bytes).unwrap_or(usize::MAX));
            }

            fn norms(&self, x: &Self::Buffer) -> Result<(f64, f64)> {
                Ok(self.run(|| ops::reduce::norms(x.as_slice())))
            }

            fn conv2d_relu(
                &self,
                x: &Self::Buffer,
                w: &Self::Buffer,
                bias: Option<&Self::Buffer>,
                p: &Conv2dParams,
            ) -> Result<Self::Buffer> {
                p.check_forward("conv2d_relu", x.len(), w.len(), bias.map(|b| b.len()))?;
                Ok(self.conv_forward(x, w, bias, p, true))
            }

            fn conv2d_relu_backward_input(
                &self,
                y: &Self::Buffer,
                dy: &Self::Buffer,
                w: &Self::Buffer,
                p: &Conv2dParams,
            ) -> Result<Self::Buffer> {
                lengths("conv2d_relu_backward_input", y, dy)?;
                p.check_backward_input("conv2d_relu_backward_input", dy.len(), w.len())?;
                Ok(self.conv_backward_input(dy, w, Some(y), p))
            }
        }
    };
}

impl_backend!(f32);
impl_backend!(f64);
