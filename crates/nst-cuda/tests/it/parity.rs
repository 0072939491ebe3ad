//! Every backend op on CUDA against the CPU backend on the same host-generated inputs.
//!
//! Tolerance: `|cuda − cpu| <= 1e-4 · (1 + |cpu|)` for elementwise ops and pooling, and
//! `1e-4 · max|cpu|` for GEMM-based ops (different summation orders in f32).

use nst_cpu::Cpu;
use nst_cuda::Cuda;
use nst_tensor::{Backend, PoolKind, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
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

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

fn pair(dims: &[usize], seed: u64, g: &Cuda) -> (Tensor<Cpu>, Tensor<Cuda>) {
    let d = data(dims.iter().product(), seed);
    (
        Tensor::from_f32(&Cpu::new(2), &d, dims.to_vec()).unwrap(),
        Tensor::from_f32(g, &d, dims.to_vec()).unwrap(),
    )
}

fn close<B: Backend>(what: &str, cpu: &Tensor<Cpu>, cuda: &Tensor<B>, gemm: bool) {
    assert_eq!(cpu.dims(), cuda.dims(), "{what}");
    let a = cpu.to_f32().unwrap();
    let b = cuda.to_f32().unwrap();
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let tol = if gemm {
            1e-4 * scale.max(1.0)
        } else {
            1e-4 * (1.0 + x.abs())
        };
        assert!((x - y).abs() <= tol, "{what}[{i}]: cpu {x} cuda {y}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where there is one"]
fn elementwise_and_reductions() {
    let g = gpu();
    let (a, ga) = pair(&[3, 5, 7], 1, g);
    let (b, gb) = pair(&[3, 5, 7], 2, g);
    close("relu", &a.relu().unwrap(), &ga.relu().unwrap(), false);
    close("square", &a.square().unwrap(), &ga.square().unwrap(), false);
    close("exp", &a.exp().unwrap(), &ga.exp().unwrap(), false);
    close(
        "affine",
        &a.affine(-1.5, 0.25).unwrap(),
        &ga.affine(-1.5, 0.25).unwrap(),
        false,
    );
    close("add", &a.add(&b).unwrap(), &ga.add(&gb).unwrap(), false);
    close("sub", &a.sub(&b).unwrap(), &ga.sub(&gb).unwrap(), false);
    close("mul", &a.mul(&b).unwrap(), &ga.mul(&gb).unwrap(), false);
    close(
        "relu_grad",
        &a.binary(nst_tensor::BinaryOp::ReluGrad, &b).unwrap(),
        &ga.binary(nst_tensor::BinaryOp::ReluGrad, &gb).unwrap(),
        false,
    );
    close("div", &a.div(&b).unwrap(), &ga.div(&gb).unwrap(), false);
    let (pa, gpa) = (a.square().unwrap(), ga.square().unwrap());
    close("sqrt", &pa.sqrt().unwrap(), &gpa.sqrt().unwrap(), false);
    close(
        "axpy",
        &a.axpy(-0.75, &b).unwrap(),
        &ga.axpy(-0.75, &gb).unwrap(),
        false,
    );
    let (d1, d2) = (a.dot(&b).unwrap(), ga.dot(&gb).unwrap());
    assert!((d1 - d2).abs() < 1e-9 * (1.0 + d1.abs()), "dot {d1} {d2}");
    let (n1, n2) = (a.norms().unwrap(), ga.norms().unwrap());
    assert!((n1.0 - n2.0).abs() < 1e-9 * n1.0, "norm1 {n1:?} {n2:?}");
    assert_eq!(n1.1, n2.1, "max norm");
    let mut nan = data(1000, 4);
    nan[517] = f32::NAN;
    let gnan = Tensor::from_f32(g, &nan, [1000]).unwrap().norms().unwrap();
    assert!(
        gnan.0.is_nan() && gnan.1.is_nan(),
        "NaN propagates: {gnan:?}"
    );
    close("sum", &a.sum().unwrap(), &ga.sum().unwrap(), true);
    for axis in 0..3 {
        close(
            "sum_axis",
            &a.sum_axis(axis).unwrap(),
            &ga.sum_axis(axis).unwrap(),
            true,
        );
        close(
            "narrow",
            &a.narrow(axis, 1, 2).unwrap(),
            &ga.narrow(axis, 1, 2).unwrap(),
            false,
        );
        let n = a.narrow(axis, 1, 2).unwrap();
        let gn = ga.narrow(axis, 1, 2).unwrap();
        let full = a.dims()[axis];
        close(
            "narrow_backward",
            &n.narrow_backward(axis, 1, full).unwrap(),
            &gn.narrow_backward(axis, 1, full).unwrap(),
            false,
        );
    }
    let (m, gm) = pair(&[37, 19], 14, g);
    close(
        "transpose",
        &m.transpose().unwrap(),
        &gm.transpose().unwrap(),
        false,
    );
    let (c, gc) = pair(&[3, 1, 7], 3, g);
    close(
        "broadcast",
        &c.broadcast_to([3, 5, 7]).unwrap(),
        &gc.broadcast_to([3, 5, 7]).unwrap(),
        false,
    );
    let big = data(1_000_003, 9);
    let s1 = Tensor::from_f32(&Cpu::new(2), &big, [big.len()])
        .unwrap()
        .sum()
        .unwrap();
    let s2 = Tensor::from_f32(g, &big, [big.len()])
        .unwrap()
        .sum()
        .unwrap();
    assert!((s1.scalar().unwrap() - s2.scalar().unwrap()).abs() < 1e-2);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where there is one"]
fn matmul_with_transposes() {
    let g = gpu();
    for (m, k, n) in [(1, 1, 1), (7, 5, 3), (64, 33, 17)] {
        for ta in [false, true] {
            for tb in [false, true] {
                let (a, ga) = pair(&if ta { [k, m] } else { [m, k] }, 4, g);
                let (b, gb) = pair(&if tb { [n, k] } else { [k, n] }, 5, g);
                close(
                    "matmul",
                    &a.matmul_t(&b, ta, tb).unwrap(),
                    &ga.matmul_t(&gb, ta, tb).unwrap(),
                    true,
                );
            }
        }
    }
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

/// Every convolution op on `g` against the CPU, on shapes with strides, padding and 1x1
/// kernels.
fn conv_parity(g: &Cuda) {
    for (n, cin, cout, h, w, k, s, p) in [
        (1, 3, 8, 17, 13, 3, 1, 1),
        (2, 4, 5, 9, 11, 3, 2, 0),
        (1, 2, 3, 6, 6, 1, 1, 0),
        // Winograd on the CPU side.
        (1, 32, 16, 15, 10, 3, 1, 1),
    ] {
        let (x, gx) = pair(&[n, cin, h, w], 6, g);
        let (wt, gw) = pair(&[cout, cin, k, k], 7, g);
        let (b, gb) = pair(&[cout], 8, g);
        let y = x.conv2d(&wt, Some(&b), s, p).unwrap();
        let gy = gx.conv2d(&gw, Some(&gb), s, p).unwrap();
        close("conv2d", &y, &gy, true);
        let pr = x.conv2d_params(&wt, s, p).unwrap();
        let (dy, gdy) = pair(y.dims(), 9, g);
        close(
            "conv2d_backward_input",
            &dy.conv2d_backward_input(&wt, &pr).unwrap(),
            &gdy.conv2d_backward_input(&gw, &pr).unwrap(),
            true,
        );
        close(
            "conv2d_backward_weight",
            &dy.conv2d_backward_weight(&x, &pr).unwrap(),
            &gdy.conv2d_backward_weight(&gx, &pr).unwrap(),
            true,
        );
        let yr = x.conv2d_relu(&wt, Some(&b), s, p).unwrap();
        let gyr = gx.conv2d_relu(&gw, Some(&gb), s, p).unwrap();
        close("conv2d_relu", &yr, &gyr, true);
        // The same mask on both sides (an output within rounding of 0 could flip it).
        let gyr = Tensor::from_f32(g, &yr.to_f32().unwrap(), yr.dims().to_vec()).unwrap();
        close(
            "conv2d_relu_backward_input",
            &dy.conv2d_relu_backward_input(&yr, &wt, &pr).unwrap(),
            &gdy.conv2d_relu_backward_input(&gyr, &gw, &pr).unwrap(),
            true,
        );
    }
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
        false,
    );
    let sums: Vec<Tensor<Cuda>> = dev.iter().map(|t| t.sum().unwrap()).collect();
    let gathered = Tensor::scalars(&sums.iter().collect::<Vec<_>>()).unwrap();
    for (got, t) in gathered.iter().zip(&sums) {
        assert_eq!(got.to_bits(), t.scalar().unwrap().to_bits());
    }
    let img = data(3 * 50 * 40, 40)
        .iter()
        .map(|v| v * 200.0)
        .collect::<Vec<_>>();
    let ranges = [(-100.0f32, 150.0f32), (-20.0, 30.0), (0.0, 1.0)];
    let a = Tensor::from_f32(&cpu, &img, [1, 3, 50, 40])
        .unwrap()
        .clamp_channels(&ranges)
        .unwrap();
    let b = Tensor::from_f32(g, &img, [1, 3, 50, 40])
        .unwrap()
        .clamp_channels(&ranges)
        .unwrap();
    assert_eq!(a.to_f32().unwrap(), b.to_f32().unwrap());
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where there is one"]
fn pooling_forward_and_backward() {
    let g = gpu();
    for kind in [PoolKind::Max, PoolKind::Avg] {
        for (h, w, k, s) in [(8, 8, 2, 2), (7, 9, 2, 2), (9, 7, 3, 2)] {
            let (x, gx) = pair(&[2, 3, h, w], 10, g);
            let y = x.pool2d(kind, k, s).unwrap();
            close("pool2d", &y, &gx.pool2d(kind, k, s).unwrap(), false);
            let pp = x.pool2d_params(kind, k, s).unwrap();
            let (dy, gdy) = pair(y.dims(), 11, g);
            close(
                "pool2d_backward",
                &x.pool2d_backward(&dy, &pp).unwrap(),
                &gx.pool2d_backward(&gdy, &pp).unwrap(),
                false,
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where there is one"]
fn taped_gradients_agree() {
    let g = gpu();
    fn loss<B: Backend>(x: Tensor<B>, w: Tensor<B>) -> Vec<f32> {
        let tape = nst_autodiff::Tape::new();
        let xv = tape.var(x);
        let wv = tape.constant(w);
        let f = xv
            .conv2d(&wv, None, 1, 1)
            .unwrap()
            .relu()
            .unwrap()
            .pool2d(PoolKind::Max, 2, 2)
            .unwrap();
        let d = f.shape().dims().to_vec();
        let f = f.reshape([d[1], d[2] * d[3]]).unwrap();
        let gram = f.matmul_t(&f, false, true).unwrap();
        let l = gram.square().unwrap().mean().unwrap();
        tape.backward(&l)
            .unwrap()
            .get(&xv)
            .unwrap()
            .to_f32()
            .unwrap()
    }
    let (x, gx) = pair(&[1, 3, 12, 10], 12, g);
    let (w, gw) = pair(&[4, 3, 3, 3], 13, g);
    let a = loss(x, w);
    let b = loss(gx, gw);
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() <= 1e-3 * scale, "{p} vs {q}");
    }
}
