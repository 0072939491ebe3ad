//! The kernel sources (`src/kernels/*.cu`), compiled with NVRTC at run time.

use crate::{Error, Result};

/// Every kernel source: (file name, source text, kernel names).
pub const SOURCES: &[(&str, &str, &[&str])] = &[
    (
        "elementwise.cu",
        include_str!("kernels/elementwise.cu"),
        &[
            "fill_f32",
            "unary_f32",
            "affine_f32",
            "binary_f32",
            "axpy_f32",
        ],
    ),
    (
        "reduce.cu",
        include_str!("kernels/reduce.cu"),
        &[
            "sum_partial_f32",
            "sum_final_f32",
            "norms_partial_f32",
            "sum_axis_f32",
            "broadcast_f32",
            "narrow_f32",
            "narrow_backward_f32",
            "transpose_f32",
        ],
    ),
    (
        "conv.cu",
        include_str!("kernels/conv.cu"),
        &["im2col_f32", "col2im_f32", "add_bias_f32"],
    ),
    (
        "batched.cu",
        include_str!("kernels/batched.cu"),
        &[
            "dots_partial_f32",
            "dots_final_f64",
            "combine_f32",
            "clamp_channels_f32",
            "bias_relu_f32",
            "gather_scalars_f32",
        ],
    ),
    (
        "pool.cu",
        include_str!("kernels/pool.cu"),
        &["pool_forward_f32", "pool_backward_f32"],
    ),
];

/// Compiles one source to PTX with NVRTC for NVRTC's default target (no GPU needed). The error
/// carries NVRTC's log.
pub fn compile(name: &str, src: &str) -> Result<cudarc::nvrtc::Ptx> {
    compile_for(name, src, None)
}

/// Compiles one source to PTX for compute capability `arch` (e.g. `(9, 0)`: the virtual
/// architecture `compute_90`, which the driver turns into code for exactly that GPU), or for
/// NVRTC's default target.
pub fn compile_for(name: &str, src: &str, arch: Option<(i32, i32)>) -> Result<cudarc::nvrtc::Ptx> {
    crate::probe::nvrtc()?;
    let options = arch
        .map(|(major, minor)| vec![format!("--gpu-architecture=compute_{major}{minor}")])
        .unwrap_or_default();
    cudarc::nvrtc::compile_ptx_with_opts(
        src,
        cudarc::nvrtc::CompileOptions {
            use_fast_math: Some(false),
            options,
            ..Default::default()
        },
    )
    .map_err(|e| Error::Compile {
        file: name.to_string(),
        log: format!("{e:?}"),
    })
}

/// Compiles every kernel source; used by the tests that CI runs without a GPU.
pub fn compile_all() -> Result<Vec<(&'static str, cudarc::nvrtc::Ptx)>> {
    compile_all_for(None)
}

/// Compiles every kernel source for `arch` (see [`compile_for`]).
pub fn compile_all_for(
    arch: Option<(i32, i32)>,
) -> Result<Vec<(&'static str, cudarc::nvrtc::Ptx)>> {
    SOURCES
        .iter()
        .map(|(name, src, _)| Ok((*name, compile_for(name, src, arch)?)))
        .collect()
}
