//! The CUDA backend of nst: [`Cuda`] implements [`nst_tensor::Backend`] with cudarc.
//!
//! Elementwise ops, reductions, im2col/col2im and pooling are NVRTC-compiled kernels (sources in
//! `src/kernels/*.cu`, compiled once per process); matrix products and the convolutions' GEMMs
//! run on cuBLAS in f32 (no TF32). Libraries are loaded at run time, so the crate builds without
//! a CUDA toolkit, and a missing driver or library is a typed error, never a panic.
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

pub mod kernels;
mod ops;
pub mod probe;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

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

/// The PTX of every kernel source, compiled once per process.
fn ptx() -> Result<&'static [(&'static str, cudarc::nvrtc::Ptx)]> {
    static PTX: OnceLock<std::result::Result<Vec<(&'static str, cudarc::nvrtc::Ptx)>, String>> =
        OnceLock::new();
    PTX.get_or_init(|| kernels::compile_all().map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| Error::Unavailable(e.clone()))
}

pub(crate) struct Inner {
    pub(crate) ordinal: usize,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: CudaBlas,
    pub(crate) funcs: HashMap<&'static str, CudaFunction>,
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
    /// Opens GPU `ordinal`, checking first that the driver, NVRTC and cuBLAS load and that
    /// the GPU exists.
    pub fn new(ordinal: usize) -> Result<Self> {
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
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone())?;
        let mut funcs = HashMap::new();
        for ((_, ptx), (_, _, names)) in ptx()?.iter().zip(kernels::SOURCES) {
            let module = ctx.load_module(ptx.clone())?;
            for name in names.iter() {
                funcs.insert(*name, module.load_function(name)?);
            }
        }
        Ok(Cuda {
            inner: Arc::new(Inner {
                ordinal,
                stream,
                blas,
                funcs,
            }),
        })
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
        if !ctx.has_async_alloc() {
            return Err(Error::Unavailable(
                "this GPU has no stream-ordered memory pool to measure".into(),
            ));
        }
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: `pool` is a valid out-pointer and the device handle comes from a live context.
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }.result()?;
        Ok(pool)
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
