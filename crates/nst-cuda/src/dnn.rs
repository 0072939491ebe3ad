//! Convolutions through cuDNN (loaded at run time): descriptors and algorithms chosen once per
//! shape and cached, workspaces from the stream's memory pool, math restricted to FMA (strict
//! f32) or open to TF32 tensor cores (`Precision::Fast`).
//!
//! Algorithms come from cuDNN's heuristics (`*_v7`), not from timing runs, so the same shape
//! always gets the same algorithm and a render gives the same bytes every time. Backward
//! algorithms must be deterministic; in strict mode only the GEMM-family algorithms (no FFT,
//! no Winograd) are allowed, so the error stays that of an f32 dot product.

use crate::{Error, Precision, Result};
use cudarc::cudnn::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use nst_tensor::Conv2dParams;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

fn err(what: &str, e: result::CudnnError) -> Error {
    Error::Cudnn(format!("{what}: {e:?}"))
}

fn check(what: &str, status: sys::cudnnStatus_t) -> Result<()> {
    status.result().map_err(|e| err(what, e))
}

/// A tensor descriptor (NCHW, f32), destroyed on drop.
struct TensorDesc(sys::cudnnTensorDescriptor_t);

impl TensorDesc {
    fn new(dims: [usize; 4]) -> Result<Self> {
        let d = TensorDesc(result::create_tensor_descriptor().map_err(|e| err("tensor", e))?);
        let dims = dims.map(|v| v as i32);
        // SAFETY: a freshly created descriptor; NCHW f32 with positive dimensions.
        unsafe {
            result::set_tensor4d_descriptor(
                d.0,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                dims,
            )
        }
        .map_err(|e| err("tensor", e))?;
        Ok(d)
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created by cuDNN, destroyed once.
        let _ = unsafe { result::destroy_tensor_descriptor(self.0) };
    }
}

struct FilterDesc(sys::cudnnFilterDescriptor_t);

impl FilterDesc {
    fn new(dims: [usize; 4]) -> Result<Self> {
        let d = FilterDesc(result::create_filter_descriptor().map_err(|e| err("filter", e))?);
        let dims = dims.map(|v| v as i32);
        // SAFETY: a freshly created descriptor; OIHW (NCHW) f32.
        unsafe {
            result::set_filter4d_descriptor(
                d.0,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                dims,
            )
        }
        .map_err(|e| err("filter", e))?;
        Ok(d)
    }
}

impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created by cuDNN, destroyed once.
        let _ = unsafe { result::destroy_filter_descriptor(self.0) };
    }
}

struct ConvDesc(sys::cudnnConvolutionDescriptor_t);

impl ConvDesc {
    fn new(p: &Conv2dParams, math: sys::cudnnMathType_t) -> Result<Self> {
        let d = ConvDesc(result::create_convolution_descriptor().map_err(|e| err("conv", e))?);
        let (pad, stride) = (p.padding as i32, p.stride as i32);
        // SAFETY: a freshly created descriptor; cross-correlation computed in f32.
        unsafe {
            result::set_convolution2d_descriptor(
                d.0,
                pad,
                pad,
                stride,
                stride,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )
            .map_err(|e| err("conv", e))?;
            result::set_convolution_math_type(d.0, math).map_err(|e| err("math type", e))?;
        }
        Ok(d)
    }
}

impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created by cuDNN, destroyed once.
        let _ = unsafe { result::destroy_convolution_descriptor(self.0) };
    }
}

struct ActDesc(sys::cudnnActivationDescriptor_t);

impl ActDesc {
    fn relu() -> Result<Self> {
        let d = ActDesc(result::create_activation_descriptor().map_err(|e| err("activation", e))?);
        // SAFETY: a freshly created descriptor.
        unsafe {
            result::set_activation_descriptor(
                d.0,
                sys::cudnnActivationMode_t::CUDNN_ACTIVATION_RELU,
                sys::cudnnNanPropagation_t::CUDNN_NOT_PROPAGATE_NAN,
                0.0,
            )
        }
        .map_err(|e| err("activation", e))?;
        Ok(d)
    }
}

impl Drop for ActDesc {
    fn drop(&mut self) {
        // SAFETY: created by cuDNN, destroyed once.
        let _ = unsafe { sys::cudnnDestroyActivationDescriptor(self.0) };
    }
}

/// An algorithm and its workspace in bytes; `None` when cuDNN offers none that is allowed (the
/// convolution then runs on the im2col fallback); the error when asking failed.
type Choice<A> = std::result::Result<Option<(A, usize)>, String>;

/// The descriptors of one convolution shape and the algorithms chosen for it (each on first
/// use).
struct Plan {
    x: TensorDesc,
    y: TensorDesc,
    bias: TensorDesc,
    w: FilterDesc,
    conv: ConvDesc,
    relu: ActDesc,
    forward: OnceLock<Choice<sys::cudnnConvolutionFwdAlgo_t>>,
    backward_data: OnceLock<Choice<sys::cudnnConvolutionBwdDataAlgo_t>>,
    backward_filter: OnceLock<Choice<sys::cudnnConvolutionBwdFilterAlgo_t>>,
}

// SAFETY: a plan's descriptors are set once when it is built and only read afterwards, which
// cuDNN allows from any thread; the algorithm slots are `OnceLock`s.
unsafe impl Send for Plan {}
// SAFETY: as above.
unsafe impl Sync for Plan {}

/// A cuDNN handle. cuDNN lets a handle move between threads but forbids two threads to use
/// it at once, so [`Dnn`] keeps it behind a mutex and holds the lock for each call.
struct Handle(sys::cudnnHandle_t);

// SAFETY: cuDNN allows a handle to be used from any thread, one at a time; the mutex around
// it in `Dnn` provides the one at a time.
unsafe impl Send for Handle {}

/// cuDNN on one stream. `Sync` with no unsafe claim of its own: the handle is behind a mutex.
pub(crate) struct Dnn {
    handle: Mutex<Handle>,
    stream: Arc<CudaStream>,
    math: sys::cudnnMathType_t,
    strict: bool,
    /// The most workspace one call may take, in bytes.
    workspace_limit: usize,
    plans: Mutex<HashMap<Conv2dParams, Arc<Plan>>>,
    /// cuDNN's version, e.g. 90100 for 9.1.0.
    pub(crate) version: usize,
}

impl Drop for Dnn {
    fn drop(&mut self) {
        self.plans.lock().map(|mut p| p.clear()).ok();
        let handle = self.handle.get_mut().unwrap_or_else(|p| p.into_inner()).0;
        // SAFETY: the handle was created by `Dnn::new` and is destroyed once, after its plans.
        let _ = unsafe { result::destroy_handle(handle) };
    }
}

/// The first algorithm of cuDNN's ranking that succeeded, fits the workspace limit and passes
/// `allowed`.
fn choose<A: Copy>(
    perf: &[(A, sys::cudnnStatus_t, usize, sys::cudnnDeterminism_t)],
    limit: usize,
    allowed: impl Fn(A, sys::cudnnDeterminism_t) -> bool,
) -> Option<(A, usize)> {
    perf.iter()
        .find(|(a, status, memory, det)| {
            *status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
                && *memory <= limit
                && allowed(*a, *det)
        })
        .map(|(a, _, m, _)| (*a, *m))
}

/// An algorithm slot for reports: the algorithm, `im2col` (none allowed), or not yet chosen.
fn describe<A: std::fmt::Debug>(c: Option<&Choice<A>>) -> String {
    match c {
        None => "not used yet".into(),
        Some(Ok(Some((a, ws)))) => format!("{a:?} ({} MB workspace)", ws >> 20),
        Some(Ok(None)) => "im2col (no allowed cuDNN algorithm)".into(),
        Some(Err(e)) => format!("error: {e}"),
    }
}

/// A cuDNN performance record: the fields [`choose`] ranks by.
trait Perf: Copy {
    type Algo: Copy + std::fmt::Debug;
    fn fields(
        &self,
    ) -> (
        Self::Algo,
        sys::cudnnStatus_t,
        usize,
        sys::cudnnDeterminism_t,
    );
}

macro_rules! perf {
    ($record:ty, $algo:ty) => {
        impl Perf for $record {
            type Algo = $algo;
            fn fields(&self) -> ($algo, sys::cudnnStatus_t, usize, sys::cudnnDeterminism_t) {
                (self.algo, self.status, self.memory, self.determinism)
            }
        }
    };
}
perf!(
    sys::cudnnConvolutionFwdAlgoPerf_t,
    sys::cudnnConvolutionFwdAlgo_t
);
perf!(
    sys::cudnnConvolutionBwdDataAlgoPerf_t,
    sys::cudnnConvolutionBwdDataAlgo_t
);
perf!(
    sys::cudnnConvolutionBwdFilterAlgoPerf_t,
    sys::cudnnConvolutionBwdFilterAlgo_t
);

fn deterministic(d: sys::cudnnDeterminism_t) -> bool {
    d == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC
}

impl Dnn {
    /// A cuDNN handle on `stream` (the library must have been probed present).
    pub(crate) fn new(
        stream: Arc<CudaStream>,
        precision: Precision,
        free_memory: usize,
    ) -> Result<Self> {
        stream.context().bind_to_thread()?;
        let version = result::get_version();
        let handle = result::create_handle().map_err(|e| err("creating a handle", e))?;
        // SAFETY: a live handle and the stream of this backend.
        unsafe { result::set_stream(handle, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(|e| err("setting the stream", e))?;
        let strict = precision == Precision::Default;
        Ok(Dnn {
            handle: Mutex::new(Handle(handle)),
            stream,
            math: if strict {
                sys::cudnnMathType_t::CUDNN_FMA_MATH
            } else {
                sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
            },
            strict,
            workspace_limit: (free_memory / 4).min(4 << 30),
            plans: Mutex::new(HashMap::new()),
            version,
        })
    }

    /// The handle, locked for one call (a panic elsewhere leaves it usable: the lock is only
    /// for exclusion).
    fn handle(&self) -> std::sync::MutexGuard<'_, Handle> {
        self.handle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn plan(&self, p: &Conv2dParams) -> Result<Arc<Plan>> {
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| Error::Cudnn("the plan cache was poisoned".into()))?;
        if let Some(plan) = plans.get(p) {
            return Ok(plan.clone());
        }
        let plan = Arc::new(Plan {
            x: TensorDesc::new([p.batch, p.in_channels, p.in_h, p.in_w])?,
            y: TensorDesc::new([p.batch, p.out_channels, p.out_h(), p.out_w()])?,
            bias: TensorDesc::new([1, p.out_channels, 1, 1])?,
            w: FilterDesc::new([p.out_channels, p.in_channels, p.kh, p.kw])?,
            conv: ConvDesc::new(p, self.math)?,
            relu: ActDesc::relu()?,
            forward: OnceLock::new(),
            backward_data: OnceLock::new(),
            backward_filter: OnceLock::new(),
        });
        plans.insert(*p, plan.clone());
        Ok(plan)
    }

    /// The algorithm in `slot`, chosen on first use: `query` fills up to `N` of cuDNN's
    /// ranked performance records, and [`choose`] takes the first that is allowed.
    fn pick<P: Perf, const N: usize>(
        &self,
        slot: &OnceLock<Choice<P::Algo>>,
        what: &str,
        query: impl FnOnce(&mut i32, *mut P) -> std::result::Result<(), result::CudnnError>,
        allowed: impl Fn(P::Algo, sys::cudnnDeterminism_t) -> bool,
    ) -> Result<Option<(P::Algo, usize)>> {
        slot.get_or_init(|| {
            let mut count = 0;
            // SAFETY: the records are plain C structs, for which all zeroes is a valid value.
            let mut perf: [P; N] = unsafe { std::mem::zeroed() };
            query(&mut count, perf.as_mut_ptr())
                .map_err(|e| format!("choosing {what} algorithm: {e:?}"))?;
            let list: Vec<_> = perf[..count.clamp(0, N as i32) as usize]
                .iter()
                .map(Perf::fields)
                .collect();
            Ok(choose(&list, self.workspace_limit, allowed))
        })
        .clone()
        .map_err(Error::Cudnn)
    }

    fn forward_algo(&self, plan: &Plan) -> Result<Option<(sys::cudnnConvolutionFwdAlgo_t, usize)>> {
        use sys::cudnnConvolutionFwdAlgo_t as F;
        let strict = self.strict;
        self.pick::<sys::cudnnConvolutionFwdAlgoPerf_t, 8>(
            &plan.forward,
            "a forward",
            // SAFETY: `perf` has room for the 8 records asked for; the descriptors are live.
            |count, perf| unsafe {
                result::get_convolution_forward_algorithm(
                    self.handle().0,
                    plan.x.0,
                    plan.w.0,
                    plan.conv.0,
                    plan.y.0,
                    8,
                    count,
                    perf,
                )
            },
            |a, _| {
                !strict
                    || matches!(
                        a,
                        F::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM
                            | F::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM
                            | F::CUDNN_CONVOLUTION_FWD_ALGO_GEMM
                            | F::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT
                    )
            },
        )
    }

    fn backward_data_algo(
        &self,
        plan: &Plan,
    ) -> Result<Option<(sys::cudnnConvolutionBwdDataAlgo_t, usize)>> {
        use sys::cudnnConvolutionBwdDataAlgo_t as D;
        let strict = self.strict;
        self.pick::<sys::cudnnConvolutionBwdDataAlgoPerf_t, 6>(
            &plan.backward_data,
            "a backward-data",
            // SAFETY: as in `forward_algo`, for 6 records.
            |count, perf| unsafe {
                result::get_convolution_backward_data_algorithm(
                    self.handle().0,
                    plan.w.0,
                    plan.y.0,
                    plan.conv.0,
                    plan.x.0,
                    6,
                    count,
                    perf,
                )
            },
            |a, det| {
                deterministic(det)
                    && a != D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0
                    && (!strict || a == D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1)
            },
        )
    }

    fn backward_filter_algo(
        &self,
        plan: &Plan,
    ) -> Result<Option<(sys::cudnnConvolutionBwdFilterAlgo_t, usize)>> {
        use sys::cudnnConvolutionBwdFilterAlgo_t as W;
        let strict = self.strict;
        self.pick::<sys::cudnnConvolutionBwdFilterAlgoPerf_t, 7>(
            &plan.backward_filter,
            "a backward-filter",
            // SAFETY: as in `forward_algo`, for 7 records.
            |count, perf| unsafe {
                result::get_convolution_backward_filter_algorithm(
                    self.handle().0,
                    plan.x.0,
                    plan.y.0,
                    plan.conv.0,
                    plan.w.0,
                    7,
                    count,
                    perf,
                )
            },
            |a, det| {
                deterministic(det)
                    && !matches!(
                        a,
                        W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0
                            | W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3
                    )
                    && (!strict || a == W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1)
            },
        )
    }

    /// A workspace of `bytes` from the stream's pool (none for 0).
    fn workspace(&self, bytes: usize) -> Result<Option<CudaSlice<u8>>> {
        if bytes == 0 {
            return Ok(None);
        }
        // SAFETY: cuDNN only writes the workspace before reading it.
        Ok(Some(unsafe { self.stream.alloc::<u8>(bytes) }?))
    }

    /// `y = conv(x, w)` (+ bias, then ReLU, fused into the convolution where cuDNN's chosen
    /// algorithm allows it). Returns whether bias and ReLU were applied (when not, the caller
    /// applies them in one pass), or `None` when cuDNN has no allowed algorithm for this
    /// shape (the caller falls back to im2col).
    pub(crate) fn forward(
        &self,
        p: &Conv2dParams,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        bias_relu: Option<&CudaSlice<f32>>,
        y: &mut CudaSlice<f32>,
    ) -> Result<Option<bool>> {
        // cuDNN works in the context current on the calling thread.
        self.stream.context().bind_to_thread()?;
        let plan = self.plan(p)?;
        let Some((algo, ws_bytes)) = self.forward_algo(&plan)? else {
            return Ok(None);
        };
        let mut ws = self.workspace(ws_bytes)?;
        let s = &self.stream;
        let (xp, _gx) = x.device_ptr(s);
        let (wp, _gw) = w.device_ptr(s);
        let ws_ptr = ws.as_mut().map_or(std::ptr::null_mut(), |b| {
            b.device_ptr_mut(s).0 as *mut c_void
        });
        let (yp, _gy) = y.device_ptr_mut(s);
        let (one, zero) = (1.0f32, 0.0f32);
        let fused = bias_relu.filter(|_| {
            algo == sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM
        });
        // SAFETY: the buffers hold what the plan's descriptors describe (the caller checked the
        // lengths against `p`), the workspace has the size the algorithm asked for, and `y`
        // does not alias `x` or `w`. With alpha2 = 0 the z input (y itself) is not read.
        unsafe {
            match fused {
                Some(b) => {
                    let (bp, _gb) = b.device_ptr(s);
                    check(
                        "fused convolution",
                        sys::cudnnConvolutionBiasActivationForward(
                            self.handle().0,
                            &one as *const f32 as *const c_void,
                            plan.x.0,
                            xp as *const c_void,
                            plan.w.0,
                            wp as *const c_void,
                            plan.conv.0,
                            algo,
                            ws_ptr,
                            ws_bytes,
                            &zero as *const f32 as *const c_void,
                            plan.y.0,
                            yp as *const c_void,
                            plan.bias.0,
                            bp as *const c_void,
                            plan.relu.0,
                            plan.y.0,
                            yp as *mut c_void,
                        ),
                    )?;
                }
                None => check(
                    "convolution",
                    sys::cudnnConvolutionForward(
                        self.handle().0,
                        &one as *const f32 as *const c_void,
                        plan.x.0,
                        xp as *const c_void,
                        plan.w.0,
                        wp as *const c_void,
                        plan.conv.0,
                        algo,
                        ws_ptr,
                        ws_bytes,
                        &zero as *const f32 as *const c_void,
                        plan.y.0,
                        yp as *mut c_void,
                    ),
                )?,
            }
        }
        Ok(Some(fused.is_some()))
    }

    /// `dx = convᵀ(dy, w)`: the input gradient; false (nothing done) when cuDNN has no allowed
    /// algorithm for this shape.
    pub(crate) fn backward_data(
        &self,
        p: &Conv2dParams,
        dy: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<bool> {
        // cuDNN works in the context current on the calling thread.
        self.stream.context().bind_to_thread()?;
        let plan = self.plan(p)?;
        let Some((algo, ws_bytes)) = self.backward_data_algo(&plan)? else {
            return Ok(false);
        };
        let mut ws = self.workspace(ws_bytes)?;
        let s = &self.stream;
        let (dyp, _g1) = dy.device_ptr(s);
        let (wp, _g2) = w.device_ptr(s);
        let ws_ptr = ws.as_mut().map_or(std::ptr::null_mut(), |b| {
            b.device_ptr_mut(s).0 as *mut c_void
        });
        let (dxp, _g3) = dx.device_ptr_mut(s);
        let (one, zero) = (1.0f32, 0.0f32);
        // SAFETY: as in `forward`, with the roles of x and y exchanged.
        unsafe {
            check(
                "convolution input gradient",
                sys::cudnnConvolutionBackwardData(
                    self.handle().0,
                    &one as *const f32 as *const c_void,
                    plan.w.0,
                    wp as *const c_void,
                    plan.y.0,
                    dyp as *const c_void,
                    plan.conv.0,
                    algo,
                    ws_ptr,
                    ws_bytes,
                    &zero as *const f32 as *const c_void,
                    plan.x.0,
                    dxp as *mut c_void,
                ),
            )
        }?;
        Ok(true)
    }

    /// `dw = Σ_batch dy ⋆ x`: the weight gradient; false (nothing done) when cuDNN has no
    /// allowed algorithm for this shape.
    pub(crate) fn backward_filter(
        &self,
        p: &Conv2dParams,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
    ) -> Result<bool> {
        // cuDNN works in the context current on the calling thread.
        self.stream.context().bind_to_thread()?;
        let plan = self.plan(p)?;
        let Some((algo, ws_bytes)) = self.backward_filter_algo(&plan)? else {
            return Ok(false);
        };
        let mut ws = self.workspace(ws_bytes)?;
        let s = &self.stream;
        let (xp, _g1) = x.device_ptr(s);
        let (dyp, _g2) = dy.device_ptr(s);
        let ws_ptr = ws.as_mut().map_or(std::ptr::null_mut(), |b| {
            b.device_ptr_mut(s).0 as *mut c_void
        });
        let (dwp, _g3) = dw.device_ptr_mut(s);
        let (one, zero) = (1.0f32, 0.0f32);
        // SAFETY: as in `forward`.
        unsafe {
            check(
                "convolution weight gradient",
                sys::cudnnConvolutionBackwardFilter(
                    self.handle().0,
                    &one as *const f32 as *const c_void,
                    plan.x.0,
                    xp as *const c_void,
                    plan.y.0,
                    dyp as *const c_void,
                    plan.conv.0,
                    algo,
                    ws_ptr,
                    ws_bytes,
                    &zero as *const f32 as *const c_void,
                    plan.w.0,
                    dwp as *mut c_void,
                ),
            )
        }?;
        Ok(true)
    }

    /// Runs the forward (plain and fused), input-gradient and weight-gradient convolutions once
    /// on a tiny problem and checks the forward result against a direct sum on the host, so a
    /// library that loads but cannot run is found at start-up.
    pub(crate) fn self_test(&self) -> Result<()> {
        let p = Conv2dParams {
            batch: 1,
            in_channels: 2,
            out_channels: 3,
            in_h: 5,
            in_w: 4,
            kh: 3,
            kw: 3,
            stride: 1,
            padding: 1,
        };
        let x: Vec<f32> = (0..40).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let w: Vec<f32> = (0..54).map(|i| ((i * 5) % 9) as f32 - 4.0).collect();
        let b = [0.5f32, -100.0, 1.0];
        let s = &self.stream;
        let (xd, wd, bd) = (s.clone_htod(&x)?, s.clone_htod(&w)?, s.clone_htod(&b)?);
        let mut y = s.alloc_zeros::<f32>(60)?;
        if self.forward(&p, &xd, &wd, None, &mut y)?.is_none() {
            return Err(Error::Cudnn(
                "no allowed algorithm for the test convolution".into(),
            ));
        }
        let got = s.clone_dtoh(&y)?;
        for o in 0..3 {
            for r in 0..5i64 {
                for c in 0..4i64 {
                    let mut acc = 0.0f32;
                    for i in 0..2 {
                        for ky in 0..3i64 {
                            for kx in 0..3i64 {
                                let (yy, xx) = (r + ky - 1, c + kx - 1);
                                if (0..5).contains(&yy) && (0..4).contains(&xx) {
                                    acc += x[(i * 20) + (yy * 4 + xx) as usize]
                                        * w[((o * 2 + i) * 9) + (ky * 3 + kx) as usize];
                                }
                            }
                        }
                    }
                    let v = got[o * 20 + (r * 4 + c) as usize];
                    if (v - acc).abs() > 1e-3 * (1.0 + acc.abs()) {
                        return Err(Error::Cudnn(format!(
                            "the test convolution gave {v} where {acc} was expected"
                        )));
                    }
                }
            }
        }
        self.forward(&p, &xd, &wd, Some(&bd), &mut y)?;
        let mut dx = s.alloc_zeros::<f32>(40)?;
        let mut dw = s.alloc_zeros::<f32>(54)?;
        if !self.backward_data(&p, &y, &wd, &mut dx)?
            || !self.backward_filter(&p, &xd, &y, &mut dw)?
        {
            return Err(Error::Cudnn(
                "no allowed gradient algorithm for the test convolution".into(),
            ));
        }
        s.synchronize()?;
        Ok(())
    }

    /// The algorithms chosen so far, for reports: (shape, forward, backward data).
    pub(crate) fn chosen(&self) -> Vec<String> {
        let Ok(plans) = self.plans.lock() else {
            return Vec::new();
        };
        let mut out: Vec<String> = plans
            .iter()
            .map(|(p, plan)| {
                format!(
                    "{}x{}x{}->{}: forward {}, input gradient {}",
                    p.in_channels,
                    p.in_h,
                    p.in_w,
                    p.out_channels,
                    describe(plan.forward.get()),
                    describe(plan.backward_data.get()),
                )
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    /// `Dnn` is shared by every thread that holds the backend: it must be `Sync` by its own
    /// fields (the handle behind a mutex; the plans' descriptors, read-only once built, are
    /// the one unsafe claim), not by the backend's.
    #[test]
    fn the_cudnn_state_is_sync_without_an_unsafe_claim() {
        fn sync<T: Sync + Send>() {}
        sync::<super::Dnn>();
    }
}
