//! Every backend op on CUDA against the CPU backend on the same host-generated inputs: the
//! shared suite (`nst_testkit::parity`, which the wgpu backend runs too), then what is
//! CUDA's own (the im2col fallback, TF32, the batched reductions).
//!
//! Tolerance: `|cuda − cpu| <= 1e-4 · (1 + |cpu|)` for elementwise ops and pooling, and
//! `1e-4 · max|cpu|` for GEMM-based ops (different summation orders in f32).

use nst_cpu::Cpu;
use nst_cuda::Cuda;
use nst_tensor::{Backend, Tensor};
use nst_testkit::parity::{self, close, data, pair, Tol, Tolerances};
use std::sync::OnceLock;

/// The GPU. The parity tests are `#[ignore]`d (a machine without a GPU counts them as
/// ignored, not passed); run with `--include-ignored` where there is one, and they fail when
/// there is none.
fn gpu() -> &'static Cuda {
    static GPU: OnceLock<Result<Cuda, String>> = OnceLock::new();
    match GPU.get_or_init(|| Cuda::new(0).map_err(|e| e.to_string())) {
        Ok(c) => c,
        Err(e) => panic!("a CUDA GPU is required for the parity tests: {e}"),
    }
}

/// The GPU with TF32 allowed (`Precision::Fast`).
fn gpu_fast() -> &'static Cuda {
    static GPU: OnceLock<Result<Cuda, String>> = OnceLock::new();
    match GPU.get_or_init(|| Cuda::open(0, nst_cuda::Precision::Fast).map_err(|e| e.to_string())) {
        Ok(c) => c,
        Err(e) => panic!("a CUDA GPU is required for the parity tests: {e}"),
    }
}

/// The largest `|cuda − cpu| / max|cpu|` of two results.
fn worst<B: Backend>(cpu: &Tensor<Cpu>, cuda: &Tensor<B>) -> f32 {
    let a = cpu.to_f32().unwrap();
    let b = cuda.to_f32().unwrap();
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter()
        .zip(&b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs() / scale))
}

/// `1e-4 · (1 + |cpu|)` entry by entry for elementwise ops and pooling, `1e-4 · max|cpu|`
/// (at least 1e-4) for GEMM-based ops: different summation orders in f32.
const T: Tolerances = Tolerances {
    elementwise: Tol::RelativeOrAbsolute(1e-4),
    gemm: Tol::OfLargestOrOne(1e-4),
};

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where there is one"]
fn elementwise_and_reductions() {
    let g = gpu();
    parity::elementwise(g, T);
    // Dot products and norms accumulate in f64 on the GPU, as on the CPU.
    parity::reductions_and_movement(g, T, 1e-9);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where there is one"]
fn matmul_with_transposes() {
    parity::matmul(gpu(), T);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where there is one"]
fn convolution_forward_and_backward() {
    let g = gpu();
    eprintln!(
        "convolutions on {:?}, compute capability {:?}",
        g.convolutions(),
        g.compute_capability()
    );
    conv_parity(g);
    eprintln!("cuDNN algorithms chosen: {:#?}", g.algorithms());
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where there is one"]
fn the_im2col_fallback_in_bands_matches_the_cpu() {
    // Column buffers of 4 KB: every convolution below runs in several bands of output rows.
    let g = Cuda::open_with(
        0,
        nst_cuda::Options {
            cudnn: false,
            column_bytes: 4096,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("a CUDA GPU is required for the parity tests: {e}"));
    assert!(matches!(
        g.convolutions(),
        nst_cuda::Convolutions::Im2col(_)
    ));
    conv_parity(&g);
}

/// Every convolution op on `g` against the CPU (the shared suite).
fn conv_parity(g: &Cuda) {
    parity::convolutions(g, T);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where there is one"]
fn convolutions_in_fast_precision_stay_within_tf32_error() {
    let g = gpu_fast();
    eprintln!("convolutions on {:?}", g.convolutions());
    let mut worst_seen = 0.0f32;
    for (n, cin, cout, h, w) in [
        (1, 3, 64, 64, 48),
        (1, 64, 64, 32, 32),
        (2, 128, 32, 16, 20),
    ] {
        let (x, gx) = pair(&[n, cin, h, w], 20, g);
        let (wt, gw) = pair(&[cout, cin, 3, 3], 21, g);
        let (b, gb) = pair(&[cout], 22, g);
        let y = x.conv2d_relu(&wt, Some(&b), 1, 1).unwrap();
        let e = worst(&y, &gx.conv2d_relu(&gw, Some(&gb), 1, 1).unwrap());
        let pr = x.conv2d_params(&wt, 1, 1).unwrap();
        let (dy, gdy) = pair(y.dims(), 23, g);
        let e2 = worst(
            &dy.conv2d_backward_input(&wt, &pr).unwrap(),
            &gdy.conv2d_backward_input(&gw, &pr).unwrap(),
        );
        eprintln!("fast precision, {cin}->{cout} at {h}x{w}: forward {e:.2e}, input gradient {e2:.2e} of the largest entry");
        worst_seen = worst_seen.max(e).max(e2);
    }
    // TF32 keeps 10 mantissa bits: products err by about 5e-4 relative, sums average it down.
    assert!(worst_seen <= 5e-3, "worst {worst_seen:e}");
    let strict = gpu();
    let (x, gx) = pair(&[1, 64, 32, 32], 24, strict);
    let (wt, gw) = pair(&[64, 64, 3, 3], 25, strict);
    let e = worst(
        &x.conv2d(&wt, None, 1, 1).unwrap(),
        &gx.conv2d(&gw, None, 1, 1).unwrap(),
    );
    eprintln!("strict precision, 64->64 at 32x32: forward {e:.2e} of the largest entry");
    assert!(e <= 1e-5, "strict f32 convolution off by {e:e}");
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where there is one"]
fn batched_reductions_and_the_projection() {
    let g = gpu();
    let cpu = Cpu::new(2);
    let n = 100_003;
    let host: Vec<Vec<f32>> = (0..11).map(|i| data(n, 30 + i)).collect();
    let dev: Vec<Tensor<Cuda>> = host
        .iter()
        .map(|v| Tensor::from_f32(g, v, [n]).unwrap())
        .collect();
    let cpu_t: Vec<Tensor<Cpu>> = host
        .iter()
        .map(|v| Tensor::from_f32(&cpu, v, [n]).unwrap())
        .collect();
    let rows: Vec<&Tensor<Cuda>> = dev[..9].iter().collect();
    let cols: Vec<&Tensor<Cuda>> = dev[4..].iter().collect();
    let batched = Tensor::dots(&rows, &cols).unwrap();
    for (r, a) in rows.iter().enumerate() {
        for (c, b) in cols.iter().enumerate() {
            // Batching never changes a bit, and the value is the CPU's to f64 rounding.
            assert_eq!(
                batched[r * cols.len() + c].to_bits(),
                a.dot(b).unwrap().to_bits()
            );
            let want = cpu_t[r].dot(&cpu_t[4 + c]).unwrap();
            assert!((batched[r * cols.len() + c] - want).abs() <= 1e-9 * (1.0 + want.abs()));
        }
    }
    let coeffs: Vec<f64> = (0..11).map(|i| i as f64 * 0.37 - 2.0).collect();
    let all: Vec<&Tensor<Cuda>> = dev.iter().collect();
    let all_cpu: Vec<&Tensor<Cpu>> = cpu_t.iter().collect();
    close(
        "combine",
        &Tensor::combine(&coeffs, &all_cpu).unwrap(),
        &Tensor::combine(&coeffs, &all).unwrap(),
        T.elementwise,
    );
    let sums: Vec<Tensor<Cuda>> = dev.iter().map(|t| t.sum().unwrap()).collect();
    let gathered = Tensor::scalars(&sums.iter().collect::<Vec<_>>()).unwrap();
    for (got, t) in gathered.iter().zip(&sums) {
        assert_eq!(got.to_bits(), t.scalar().unwrap().to_bits());
    }
    parity::projection(g);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where there is one"]
fn pooling_forward_and_backward() {
    parity::pooling(gpu(), T);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where there is one"]
fn taped_gradients_agree() {
    parity::taped_gradients(gpu(), 1e-3);
}
