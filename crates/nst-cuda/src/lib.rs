//! The CUDA backend of nst: [`Cuda`] implements [`nst_tensor::Backend`] with cudarc.
//!
//! Convolutions run on cuDNN when it is found (else on im2col + cuBLAS, see
//! [`Cuda::convolutions`]), matrix products on cuBLAS, everything else in NVRTC-compiled kernels
//! (sources in `src/kernels/*.cu`, compiled once per process for the GPU's architecture).
//! [`Precision::Default`] is strict f32 (no tensor-core TF32); [`Precision::Fast`] allows TF32.
//! Libraries are loaded at run time, so the crate builds without a CUDA toolkit, and a missing
//! driver or library is a typed error, never a panic.
//!
//! ```
//! use nst_tensor::Tensor;
//! // Runs everywhere: on a machine without a GPU (or without the CUDA libraries) the
//! // constructor returns an error saying what is missing.
//! match nst_cuda::Cuda::new(0) {
//!     Ok(gpu) => {
//!         let x = Tensor::from_f32(&gpu, &[1.0, -2.0, 3.0], [3]).unwrap();
//!         assert_eq!(x.relu().unwrap().to_f32().unwrap(), vec![1.0, 0.0, 3.0]);
//!     }
//!     Err(e) => assert!(!e.to_string().is_empty()),
//! }
//! ```

#![warn(missing_docs)]

#[cfg(not(any(feature = "cuda-12", feature = "cuda-13")))]
compile_error!("nst-cuda: enable one of the features cuda-13 (the default) or cuda-12");

// The bindings: cudarc 0.19 built for CUDA 13, or cudarc 0.18 built for CUDA 12.8, each its own
// crate instance (one crate cannot hold both: cudarc defines its bindings once per enabled
// version). With both features on (`--all-features`), CUDA 13 wins and the other goes unused.
#[cfg(all(feature = "cuda-12", not(feature = "cuda-13")))]
extern crate cudarc_12 as cudarc;
#[cfg(all(feature = "cuda-12", feature = "cuda-13"))]
use cudarc_12 as _;

mod dnn;
pub mod kernels;
mod ops;
pub mod probe;

/// The CUDA version of the bindings this crate was built with (`cuda-12` or `cuda-13`).
pub const BINDINGS: &str = if cfg!(feature = "cuda-13") {
    "13.0"
} else {
    "12.8"
};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Errors of the CUDA backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No usable GPU, driver or library.
    #[error("CUDA is unavailable: {0}")]
    Unavailable(String),
    /// A kernel source failed to compile; `log` is NVRTC's log.
    #[error("compiling {file} with NVRTC failed: {log}")]
    Compile {
        /// The source file.
        file: String,
        /// NVRTC's log.
        log: String,
    },
    /// The driver reported an error.
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// cuBLAS reported an error.
    #[error("cuBLAS: {0:?}")]
    Blas(#[from] cudarc::cublas::result::CublasError),
    /// cuDNN reported an error.
    #[error("cuDNN: {0}")]
    Cudnn(String),
}

/// The arithmetic of the matrix products and convolutions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Strict f32: no tensor-core math (cuBLAS default math, cuDNN FMA-only kernels) and, on
    /// cuDNN, only GEMM-family convolution algorithms, so results meet the same tolerances as
    /// the CPU's default.
    #[default]
    Default,
    /// TF32 tensor cores allowed in cuBLAS and cuDNN, and any deterministic cuDNN algorithm
    /// (FFT, Winograd): what PyTorch gives by default with `cudnn.allow_tf32`. Faster on
    /// Ampere and later; about 1e-3 relative error per product.
    Fast,
}

/// How to open a GPU ([`Cuda::open_with`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The arithmetic of the matrix products and convolutions.
    pub precision: Precision,
    /// Use cuDNN for the convolutions when it is found (else, or when false, im2col + cuBLAS).
    pub cudnn: bool,
    /// The most memory one im2col column buffer may take, in bytes: the fallback convolutions
    /// run in bands of output rows that fit (at least one row per band).
    pub column_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            precision: Precision::Default,
            cudnn: true,
            column_bytes: 256 << 20,
        }
    }
}

/// What runs the convolutions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Convolutions {
    /// cuDNN, of this version (e.g. 90100 for 9.1.0).
    Cudnn(usize),
    /// im2col kernels and cuBLAS GEMMs, because cuDNN is missing or failed its check (the
    /// reason).
    Im2col(String),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for nst_tensor::Error {
    fn from(e: Error) -> Self {
        nst_tensor::Error::Backend {
            backend: "cuda".into(),
            msg: e.to_string(),
        }
    }
}

/// A flat f32 buffer in device memory.
#[derive(Debug)]
pub struct CudaBuffer(pub(crate) CudaSlice<f32>);

type Compiled = Vec<(&'static str, cudarc::nvrtc::Ptx)>;
type PtxCache = Mutex<HashMap<Option<(i32, i32)>, Arc<Compiled>>>;

/// The PTX of every kernel source for an architecture (`None`: NVRTC's default), compiled once
/// per process and architecture.
fn ptx(arch: Option<(i32, i32)>) -> Result<Arc<Compiled>> {
    static PTX: OnceLock<PtxCache> = OnceLock::new();
    let cache = PTX.get_or_init(Default::default);
    if let Some(p) = cache.lock().ok().and_then(|c| c.get(&arch).cloned()) {
        return Ok(p);
    }
    let compiled = Arc::new(kernels::compile_all_for(arch)?);
    if let Ok(mut c) = cache.lock() {
        c.insert(arch, compiled.clone());
    }
    Ok(compiled)
}

/// NVRTC's and the driver's CUDA versions, for messages, e.g. ("13.0", "12.4").
fn versions() -> (String, String) {
    let (mut major, mut minor, mut driver) = (0, 0, 0);
    // SAFETY: out-pointers to live integers; both libraries were probed present.
    unsafe {
        let _ = cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor);
        let _ = cudarc::driver::sys::cuDriverGetVersion(&mut driver);
    }
    (
        format!("{major}.{minor}"),
        format!("{}.{}", driver / 1000, (driver % 1000) / 10),
    )
}

pub(crate) struct Inner {
    pub(crate) ordinal: usize,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: CudaBlas,
    pub(crate) funcs: HashMap<&'static str, CudaFunction>,
    pub(crate) precision: Precision,
    pub(crate) dnn: Option<dnn::Dnn>,
    /// The most memory one im2col column buffer may take (the fallback convolutions run in
    /// bands of output rows that fit).
    pub(crate) column_bytes: usize,
    convolutions: Convolutions,
    arch: (i32, i32),
}

/// The CUDA backend on one GPU.
#[derive(Clone)]
pub struct Cuda {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cuda({})", self.inner.ordinal)
    }
}

// SAFETY: cudarc's handles are used only through the stream they belong to, and every
// operation of this backend is issued in order on that one stream.
unsafe impl Send for Inner {}
// SAFETY: as above; shared access only enqueues work on the stream.
unsafe impl Sync for Inner {}

impl Cuda {
    /// Opens GPU `ordinal` in strict f32 ([`Precision::Default`]); see [`Cuda::open`].
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::open(ordinal, Precision::Default)
    }

    /// Opens GPU `ordinal`: checks first that the driver, NVRTC and cuBLAS load and that the
    /// GPU exists, compiles the kernels for its architecture and loads them all (so a driver
    /// too old for NVRTC's PTX is an error here, not mid-render), and sets up cuDNN when it is
    /// found (else the convolutions fall back to im2col, see [`Cuda::convolutions`]).
    pub fn open(ordinal: usize, precision: Precision) -> Result<Self> {
        Self::open_with(
            ordinal,
            Options {
                precision,
                ..Options::default()
            },
        )
    }

    /// Opens GPU `ordinal` with every choice spelled out (see [`Cuda::open`]).
    pub fn open_with(ordinal: usize, options: Options) -> Result<Self> {
        let precision = options.precision;
        probe::driver()?;
        probe::nvrtc()?;
        probe::cublas()?;
        let count = std::panic::catch_unwind(CudaContext::device_count)
            .map_err(|_| Error::Unavailable("the CUDA driver failed to initialise".into()))?
            .map_err(|e| {
                Error::Unavailable(format!("the CUDA driver failed to initialise: {e}"))
            })?;
        if ordinal as i64 >= count as i64 {
            return Err(Error::Unavailable(format!(
                "GPU {ordinal} requested but {count} found"
            )));
        }
        let ctx = CudaContext::new(ordinal)?;
        // SAFETY: every buffer of this backend is created, used and freed on the one stream
        // below, in order, so cudarc's cross-stream events (two per allocation) are not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let arch = ctx.compute_capability()?;
        let funcs = load_kernels(&ctx, arch)?;
        let blas = CudaBlas::new(stream.clone())?;
        let mode = match precision {
            Precision::Default => cudarc::cublas::sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
            Precision::Fast => cudarc::cublas::sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
        };
        // SAFETY: a live handle.
        unsafe { cudarc::cublas::sys::cublasSetMathMode(*blas.handle(), mode) }.result()?;
        let dnn = if options.cudnn {
            open_dnn(&stream, precision)
        } else {
            Err("cuDNN was turned off".to_string())
        };
        let (dnn, convolutions) = match dnn {
            Ok(d) => {
                let v = d.version;
                (Some(d), Convolutions::Cudnn(v))
            }
            Err(why) => (None, Convolutions::Im2col(why)),
        };
        let gpu = Cuda {
            inner: Arc::new(Inner {
                ordinal,
                stream,
                blas,
                funcs,
                precision,
                dnn,
                column_bytes: options.column_bytes.max(1),
                convolutions,
                arch,
            }),
        };
        // A performance setting: a driver that refuses it still runs everything correctly.
        let _ = gpu.keep_freed_memory();
        Ok(gpu)
    }

    /// The precision this backend computes in.
    pub fn precision(&self) -> Precision {
        self.inner.precision
    }

    /// What runs the convolutions: cuDNN, or im2col + cuBLAS and why.
    pub fn convolutions(&self) -> &Convolutions {
        &self.inner.convolutions
    }

    /// A one-line note for the user when the convolutions fell back to im2col (`None` on
    /// cuDNN).
    pub fn note(&self) -> Option<String> {
        match &self.inner.convolutions {
            Convolutions::Cudnn(_) => None,
            Convolutions::Im2col(why) => Some(format!(
                "note: {why}; convolutions run on im2col + cuBLAS (slower, more memory)"
            )),
        }
    }

    /// The GPU's compute capability, e.g. (9, 0).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.inner.arch
    }

    /// The cuDNN algorithms chosen so far, one line per convolution shape.
    pub fn algorithms(&self) -> Vec<String> {
        self.inner
            .dnn
            .as_ref()
            .map(|d| d.chosen())
            .unwrap_or_default()
    }

    /// Waits for all queued work (for timing).
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.inner.stream.synchronize()?)
    }

    /// The default memory pool of this GPU, from which every buffer of this backend is
    /// allocated (stream-ordered allocation).
    fn mem_pool(&self) -> Result<cudarc::driver::sys::CUmemoryPool> {
        use cudarc::driver::sys;
        let ctx = self.inner.stream.context();
        // The attribute cudarc reads for its own stream-ordered allocations.
        let pools = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)
            .unwrap_or(0);
        if pools == 0 {
            return Err(Error::Unavailable(
                "this GPU has no stream-ordered memory pool to measure".into(),
            ));
        }
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: `pool` is a valid out-pointer and the device handle comes from a live context.
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }.result()?;
        Ok(pool)
    }

    /// Keeps freed memory in the pool for reuse instead of returning it to the driver at every
    /// synchronisation (a release threshold of "everything"); [`BackendExt::release_cached`]
    /// trims it.
    ///
    /// [`BackendExt::release_cached`]: nst_tensor::BackendExt::release_cached
    fn keep_freed_memory(&self) -> Result<()> {
        use cudarc::driver::sys;
        let Ok(pool) = self.mem_pool() else {
            return Ok(());
        };
        let mut threshold: u64 = u64::MAX;
        let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
        // SAFETY: RELEASE_THRESHOLD is a 64-bit attribute and the pointer is to a live u64.
        unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                attr,
                &mut threshold as *mut u64 as *mut std::ffi::c_void,
            )
        }
        .result()?;
        Ok(())
    }

    /// This GPU's memory, total and free now (both 0 when the driver cannot say). Memory the
    /// stream's pool keeps for reuse counts as free: this backend reuses it.
    pub fn device_memory(&self) -> nst_tensor::MemoryKind {
        let info = self
            .inner
            .stream
            .context()
            .bind_to_thread()
            .and_then(|()| cudarc::driver::result::mem_get_info());
        let (free, total) = info.unwrap_or((0, 0));
        let pooled = self.pool_kept().unwrap_or(0);
        nst_tensor::MemoryKind::Device {
            total: total as u64,
            free: (free as u64 + pooled).min(total as u64),
        }
    }

    /// Bytes the stream's pool keeps for reuse: reserved from the driver, not in use.
    fn pool_kept(&self) -> Result<u64> {
        use cudarc::driver::sys;
        let pool = self.mem_pool()?;
        let read = |attr| -> Result<u64> {
            let mut v: u64 = 0;
            // SAFETY: a live pool; both attributes are 64-bit values written to `v`.
            unsafe {
                sys::cuMemPoolGetAttribute(pool, attr, &mut v as *mut u64 as *mut std::ffi::c_void)
            }
            .result()?;
            Ok(v)
        };
        let reserved = read(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?;
        let used = read(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
        Ok(reserved.saturating_sub(used))
    }

    /// Returns the pool's unused memory to the driver.
    pub(crate) fn trim_pool(&self) {
        if let Ok(pool) = self.mem_pool() {
            let _ = self.synchronize();
            // SAFETY: a live pool; trimming only releases memory no allocation holds.
            let _ = unsafe { cudarc::driver::sys::cuMemPoolTrimTo(pool, 0) };
        }
    }

    /// The memory pool's `USED_MEM_HIGH` attribute: read it, or with `reset`, zero it (which
    /// restarts it from the memory in use now).
    fn used_mem_high(&self, reset: bool) -> Result<u64> {
        use cudarc::driver::sys;
        let pool = self.mem_pool()?;
        self.synchronize()?;
        let mut value: u64 = 0;
        let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
        let ptr = &mut value as *mut u64 as *mut std::ffi::c_void;
        // SAFETY: USED_MEM_HIGH is a 64-bit attribute and `ptr` points at a live u64; the
        // only value it may be set to is zero.
        unsafe {
            if reset {
                sys::cuMemPoolSetAttribute(pool, attr, ptr)
            } else {
                sys::cuMemPoolGetAttribute(pool, attr, ptr)
            }
        }
        .result()?;
        Ok(value)
    }

    /// The most device memory this backend's buffers used at once since the context was
    /// created or [`Cuda::reset_peak_memory`] was called, in bytes (the memory pool's high
    /// watermark; cuBLAS's own workspace is not included).
    pub fn peak_memory(&self) -> Result<u64> {
        self.used_mem_high(false)
    }

    /// Restarts [`Cuda::peak_memory`] from the memory in use now.
    pub fn reset_peak_memory(&self) -> Result<()> {
        self.used_mem_high(true).map(|_| ())
    }

    pub(crate) fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.inner
            .funcs
            .get(name)
            .ok_or_else(|| Error::Unavailable(format!("kernel {name} was not loaded")))
    }
}

/// Compiles the kernels for the GPU's architecture (falling back to NVRTC's default target
/// when this NVRTC does not know the architecture) and loads every one of them.
fn load_kernels(
    ctx: &Arc<CudaContext>,
    arch: (i32, i32),
) -> Result<HashMap<&'static str, CudaFunction>> {
    let compiled = ptx(Some(arch)).or_else(|_| ptx(None))?;
    let mut funcs = HashMap::new();
    for ((name, ptx), (_, _, names)) in compiled.iter().zip(kernels::SOURCES) {
        let module = ctx.load_module(ptx.clone()).map_err(|e| {
            use cudarc::driver::sys::CUresult as R;
            let (nvrtc, driver) = versions();
            match e.0 {
                R::CUDA_ERROR_UNSUPPORTED_PTX_VERSION
                | R::CUDA_ERROR_INVALID_PTX
                | R::CUDA_ERROR_NO_BINARY_FOR_GPU => Error::Unavailable(format!(
                    "the driver (CUDA {driver}) cannot load the kernels NVRTC (CUDA {nvrtc}) compiled from {name}: \
                     install a driver for CUDA {nvrtc} or newer, or put an NVRTC no newer than CUDA {driver} on LD_LIBRARY_PATH"
                )),
                _ => Error::Driver(e),
            }
        })?;
        for k in names.iter() {
            funcs.insert(*k, module.load_function(k)?);
        }
    }
    Ok(funcs)
}

/// cuDNN on `stream`, checked by running each convolution entry point once on a tiny problem
/// (a missing library or symbol, or a failing call, becomes the reason for the fallback).
fn open_dnn(
    stream: &Arc<CudaStream>,
    precision: Precision,
) -> std::result::Result<dnn::Dnn, String> {
    probe::cudnn().map_err(|e| e.to_string())?;
    let free = cudarc::driver::result::mem_get_info()
        .map(|(f, _)| f)
        .unwrap_or(1 << 30);
    let run = || -> Result<dnn::Dnn> {
        let d = dnn::Dnn::new(stream.clone(), precision, free)?;
        d.self_test()?;
        Ok(d)
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(format!("cuDNN failed its check ({e})")),
        Err(_) => Err("cuDNN could not be used (a function is missing from the library)".into()),
    }
}
