//! Checks that the CUDA libraries can be loaded before cudarc touches them: cudarc panics when
//! a library is missing, so every probe runs under `catch_unwind` and becomes a typed error.

use crate::{Error, Result};

fn present(lib: &'static str, f: unsafe fn() -> bool) -> Result<()> {
    // SAFETY: the probes only try to open the shared library by its usual names.
    let found = std::panic::catch_unwind(|| unsafe { f() }).unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "the CUDA library {lib} was not found (install the NVIDIA driver / CUDA libraries, or add their folder to LD_LIBRARY_PATH; see docs/cuda.md)"
        )))
    }
}

/// The driver library (`libcuda`).
pub fn driver() -> Result<()> {
    present("libcuda", cudarc::driver::sys::is_culib_present)
}

/// NVRTC (`libnvrtc`).
pub fn nvrtc() -> Result<()> {
    present("libnvrtc", cudarc::nvrtc::sys::is_culib_present)
}

/// cuBLAS (`libcublas`).
pub fn cublas() -> Result<()> {
    present("libcublas", cudarc::cublas::sys::is_culib_present)
}

/// cuDNN (`libcudnn`), optional: without it the convolutions run on im2col + cuBLAS.
pub fn cudnn() -> Result<()> {
    present("libcudnn", cudarc::cudnn::sys::is_culib_present)
}
