//! The wgpu backend of nst: [`Wgpu`] implements [`nst_tensor::Backend`] with WGSL compute
//! shaders, on Vulkan (Linux, Windows, Android), Metal (macOS, iOS) and DirectX 12.
//!
//! Every op is a compute shader (sources in `src/shaders/*.wgsl`, compiled once when the device
//! is opened): elementwise ops, reductions in a fixed order, data movement, pooling with the
//! CPU's tie rule, and one tiled matrix product that also runs the convolutions as implicit
//! GEMMs (no im2col buffer). Everything is `f32` and deterministic: the same inputs on the same
//! adapter give the same bytes.
//!
//! The graphics API's loader is opened at run time, so the crate builds without any system
//! library, and a machine without a driver gets an error saying so, never a panic:
//!
//! ```
//! use nst_tensor::Tensor;
//! match nst_wgpu::Wgpu::new(0) {
//!     Ok(gpu) => {
//!         let x = Tensor::from_f32(&gpu, &[1.0, -2.0, 3.0], [3]).unwrap();
//!         assert_eq!(x.relu().unwrap().to_f32().unwrap(), vec![1.0, 0.0, 3.0]);
//!     }
//!     Err(e) => assert!(!e.to_string().is_empty()),
//! }
//! ```
//!
//! Adapters cap the size of one storage binding (often 128 MiB to 2 GiB): the backend reports
//! it ([`nst_tensor::BackendExt::max_buffer_bytes`]), memory plans tile renders so that no
//! buffer exceeds it, and an op whose result would is an error.

#![warn(missing_docs)]

mod device;
#[cfg(not(target_arch = "wasm32"))]
mod memory;
mod ops;

pub use device::{adapters, AdapterSummary, Options};

use std::sync::{Arc, Mutex};

/// Errors of the wgpu backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No adapter, driver or loader.
    #[error("wgpu is unavailable: {0}")]
    Unavailable(String),
    /// The device reported an error (validation, out of memory, lost device).
    #[error("wgpu device: {0}")]
    Device(String),
}

/// The wgpu backend: a device and queue on one adapter, and the compiled kernels. Cloning
/// shares the device.
#[derive(Clone)]
pub struct Wgpu {
    inner: Arc<device::Inner>,
}

impl std::fmt::Debug for Wgpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wgpu")
            .field("adapter", &self.inner.summary)
            .field("max_binding", &self.inner.max_binding)
            .finish()
    }
}

/// A buffer of `f32` on the device: one binding, or several where it exceeds the adapter's
/// largest (image-sized vectors at large sizes; see [`Wgpu::max_binding`]). At least 4 bytes
/// each: the APIs refuse empty bindings.
pub struct WgpuBuffer {
    chunks: Vec<wgpu::Buffer>,
    len: usize,
}

impl std::fmt::Debug for WgpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuBuffer({} elements)", self.len)
    }
}

impl Wgpu {
    /// Opens adapter `ordinal` of [`adapters`] with the default options.
    pub fn new(ordinal: usize) -> Result<Self, Error> {
        Self::open(ordinal, Options::default())
    }

    /// Opens adapter `ordinal` of [`adapters`].
    pub fn open(ordinal: usize, options: Options) -> Result<Self, Error> {
        Ok(Wgpu {
            inner: Arc::new(device::Inner::open(ordinal, options)?),
        })
    }

    /// The adapter this backend runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.inner.summary
    }

    /// The largest buffer this backend creates, in bytes: the adapter's storage-binding and
    /// buffer limits (or [`Options::max_binding`], when lower).
    pub fn max_binding(&self) -> u64 {
        self.inner.max_binding
    }

    fn err(&self, e: Error) -> nst_tensor::Error {
        nst_tensor::Error::Backend {
            backend: self.name_short(),
            msg: e.to_string(),
        }
    }

    fn name_short(&self) -> String {
        format!("wgpu:{}", self.inner.summary.ordinal)
    }
}

/// The first error the device reported and nothing has returned yet (the device's errors
/// arrive through a callback).
type ErrorSlot = Arc<Mutex<Option<String>>>;
