//! The CPU backend's ops against naive f64 references, in f32 and f64, and its determinism.

use nst_cpu::{Cpu, Cpu64, CpuBackend, Element, Precision, Products};
use nst_tensor::{PoolKind, Tensor};
use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

fn rand_vec(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// Direct-loop convolution in f64.
#[allow(clippy::too_many_arguments)]
fn naive_conv(
    x: &[f64],
    w: &[f64],
    b: &[f64],
    [n, cin, h, wd]: [usize; 4],
    cout: usize,
    k: usize,
    s: usize,
    pad: usize,
) -> Vec<f64> {
    let oh = (h + 2 * pad - k) / s + 1;
    let ow = (wd + 2 * pad - k) / s + 1;
    let mut y = vec![0.0; n * cout * oh * ow];
    for img in 0..n {
        for o in 0..cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b[o];
                    for c in 0..cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as isize - pad as isize;
                                let ix = (ox * s + kx) as isize - pad as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    acc += x
                                        [((img * cin + c) * h + iy as usize) * wd + ix as usize]
                                        * w[((o * cin + c) * k + ky) * k + kx];
                                }
                            }
                        }
                    }
                    y[((img * cout + o) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    y
}

fn naive_pool(x: &[f64], [n, c, h, w]: [usize; 4], k: usize, s: usize, max: bool) -> Vec<f64> {
    let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
    let mut y = Vec::new();
    for pl in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let vals: Vec<f64> = (0..k)
                    .flat_map(|ky| (0..k).map(move |kx| (ky, kx)))
                    .map(|(ky, kx)| x[pl * h * w + (oy * s + ky) * w + ox * s + kx])
                    .collect();
                y.push(if max {
                    vals.iter().cloned().fold(f64::MIN, f64::max)
                } else {
                    vals.iter().sum::<f64>() / vals.len() as f64
                });
            }
        }
    }
    y
}

/// How close a result must be to the expected one.
#[derive(Clone, Copy, Debug)]
enum Tol {
    /// Every element: `|got - want| <= tol·(1 + |want|)`.
    Each(f64),
    /// As a whole: `‖got - want‖₂ <= tol·‖want‖₂`, for rounding errors that scale with the
    /// terms of the sums rather than with each result (bf16 operands).
    Whole(f64),
}

impl From<f64> for Tol {
    fn from(tol: f64) -> Self {
        Tol::Each(tol)
    }
}

fn assert_close(got: &[f64], want: &[f64], tol: impl Into<Tol>) {
    assert_eq!(got.len(), want.len());
    match tol.into() {
        Tol::Each(tol) => {
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= tol * (1.0 + w.abs()),
                    "element {i}: {g} vs {w}"
                );
            }
        }
        Tol::Whole(tol) => {
            let err: f64 = got.iter().zip(want).map(|(g, w)| (g - w) * (g - w)).sum();
            let norm: f64 = want.iter().map(|w| w * w).sum();
            assert!(
                err.sqrt() <= tol * norm.sqrt(),
                "relative L2 error {:e} > {tol:e}",
                (err / norm).sqrt()
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn conv_case<E: Element>(
    be: &CpuBackend<E>,
    dims: [usize; 4],
    cout: usize,
    k: usize,
    s: usize,
    pad: usize,
    seed: u64,
    tol: impl Into<Tol>,
) where
    CpuBackend<E>: nst_tensor::Backend,
{
    let [n, cin, h, w] = dims;
    let x = rand_vec(n * cin * h * w, seed);
    let wt = rand_vec(cout * cin * k * k, seed ^ 1);
    let b = rand_vec(cout, seed ^ 2);
    let tx = Tensor::from_f64(be, &x, dims).unwrap();
    let tw = Tensor::from_f64(be, &wt, [cout, cin, k, k]).unwrap();
    let tb = Tensor::from_f64(be, &b, [cout]).unwrap();
    let y = tx.conv2d(&tw, Some(&tb), s, pad).unwrap();
    assert_close(
        &y.to_f64().unwrap(),
        &naive_conv(&x, &wt, &b, dims, cout, k, s, pad),
        tol,
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn conv_matches_naive(
        n in 1usize..3, cin in 1usize..5, cout in 1usize..6, h in 1usize..12, w in 1usize..12,
        k in 1usize..4, s in 1usize..3, pad in 0usize..3, seed in any::<u64>(),
    ) {
        prop_assume!(h + 2 * pad >= k && w + 2 * pad >= k);
        conv_case(&Cpu64::new(2), [n, cin, h, w], cout, k, s, pad, seed, 1e-12);
        conv_case(&Cpu::new(2), [n, cin, h, w], cout, k, s, pad, seed, 1e-5);
    }

    #[test]
    fn pool_matches_naive(
        n in 1usize..3, c in 1usize..4, h in 1usize..12, w in 1usize..12,
        k in 1usize..4, s in 1usize..4, max: bool, seed in any::<u64>(),
    ) {
        prop_assume!(h >= k && w >= k);
        let be = Cpu64::new(2);
        let x = rand_vec(n * c * h * w, seed);
        let t = Tensor::from_f64(&be, &x, [n, c, h, w]).unwrap();
        let kind = if max { PoolKind::Max } else { PoolKind::Avg };
        let y = t.pool2d(kind, k, s).unwrap();
        assert_close(&y.to_f64().unwrap(), &naive_pool(&x, [n, c, h, w], k, s, max), 1e-12);
    }

    #[test]
    fn matmul_matches_naive(m in 1usize..20, k in 1usize..20, n in 1usize..20, ta: bool, tb: bool, seed in any::<u64>()) {
        let be = Cpu64::new(2);
        let a = rand_vec(m * k, seed);
        let b = rand_vec(k * n, seed ^ 3);
        let ta_t = Tensor::from_f64(&be, &a, if ta { [k, m] } else { [m, k] }).unwrap();
        let tb_t = Tensor::from_f64(&be, &b, if tb { [n, k] } else { [k, n] }).unwrap();
        let c = ta_t.matmul_t(&tb_t, ta, tb).unwrap().to_f64().unwrap();
        let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
        let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
                prop_assert!((c[i * n + j] - want).abs() < 1e-12);
            }
        }
    }
}

/// Forward (with bias) and input gradient of a 3x3, stride-1, padding-1 convolution with at
/// least 16 channels each side, which goes through Winograd (the variant of the backend's
/// precision and the layer's channel pairs): against the naive
/// loop, and the input gradient against the im2col path.
fn winograd_case<E: Element>(
    be: &CpuBackend<E>,
    dims: [usize; 4],
    cout: usize,
    seed: u64,
    tol: impl Into<Tol>,
) where
    CpuBackend<E>: nst_tensor::Backend,
{
    let tol = tol.into();
    winograd_case_with(be, dims, cout, seed, tol, tol);
}

/// [`winograd_case`] with one tolerance for the forward pass and another for the input
/// gradient.
fn winograd_case_with<E: Element>(
    be: &CpuBackend<E>,
    dims: [usize; 4],
    cout: usize,
    seed: u64,
    tol: Tol,
    grad_tol: Tol,
) where
    CpuBackend<E>: nst_tensor::Backend,
{
    conv_case(be, dims, cout, 3, 1, 1, seed, tol);
    let [n, _, h, w] = dims;
    let direct = be.clone().with_winograd(false);
    let dy = rand_vec(n * cout * h * w, seed ^ 5);
    let wt = rand_vec(cout * dims[1] * 9, seed ^ 6);
    let grad = |be: &CpuBackend<E>| {
        let x = Tensor::zeros(be, dims).unwrap();
        let tw = Tensor::from_f64(be, &wt, [cout, dims[1], 3, 3]).unwrap();
        let p = x.conv2d_params(&tw, 1, 1).unwrap();
        Tensor::from_f64(be, &dy, [n, cout, h, w])
            .unwrap()
            .conv2d_backward_input(&tw, &p)
            .unwrap()
            .to_f64()
            .unwrap()
    };
    assert_close(&grad(be), &grad(&direct), grad_tol);
    // The fused ReLU: forward, and the input gradient with the mask applied while reading
    // (both sides use this backend's output as the mask, so no output within rounding of
    // zero can flip it).
    let x = rand_vec(n * dims[1] * h * w, seed ^ 8);
    let conv_relu = |be: &CpuBackend<E>| {
        let x = Tensor::from_f64(be, &x, dims).unwrap();
        let tw = Tensor::from_f64(be, &wt, [cout, dims[1], 3, 3]).unwrap();
        let p = x.conv2d_params(&tw, 1, 1).unwrap();
        (x.conv2d_relu(&tw, None, 1, 1).unwrap(), tw, p)
    };
    let (y, tw, p) = conv_relu(be);
    let (yd, twd, _) = conv_relu(&direct);
    assert_close(&y.to_f64().unwrap(), &yd.to_f64().unwrap(), tol);
    let g = Tensor::from_f64(be, &dy, [n, cout, h, w]).unwrap();
    let fused = g.conv2d_relu_backward_input(&y, &tw, &p).unwrap();
    let yd = Tensor::from_f64(&direct, &y.to_f64().unwrap(), [n, cout, h, w]).unwrap();
    let gd = Tensor::from_f64(&direct, &dy, [n, cout, h, w]).unwrap();
    let plain = yd
        .binary(nst_tensor::BinaryOp::ReluGrad, &gd)
        .unwrap()
        .conv2d_backward_input(&twd, &p)
        .unwrap();
    assert_close(&fused.to_f64().unwrap(), &plain.to_f64().unwrap(), grad_tol);
}

/// The tolerance of the fast mode with bf16 products (Winograd F(2x2, 3x3)) against the exact
/// convolution, as a relative L2 error: each operand rounded to 8 significant bits (a relative
/// error of up to 2⁻⁹), summed over the channels and through the transforms (measured: 4e-3
/// on a 64-channel 40x40 layer; 2.5e-2 with F(4x4, 3x3), which is why bf16 products use
/// F(2x2, 3x3)).
const BF16_TOL: Tol = Tol::Whole(1e-2);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn winograd_matches_naive(
        n in 1usize..3, cin in 16usize..40, cout in 16usize..40, h in 1usize..20,
        w in 1usize..20, seed in any::<u64>(),
    ) {
        winograd_case(&Cpu64::new(2), [n, cin, h, w], cout, seed, 1e-12);
        // The input gradient in F(3x3, 3x3) at these channel counts (`F3_MAX_CHANNEL_PAIRS`):
        // about 3x F(2x2, 3x3)'s rounding error, so 5x the forward pass's bound (half F(4x4,
        // 3x3)'s).
        let (forward, gradient) = (Tol::Each(2e-5), Tol::Each(1e-4));
        winograd_case_with(&Cpu::new(2), [n, cin, h, w], cout, seed, forward, gradient);
        // F(4x4, 3x3): exact in f64 up to rounding, less exact in f32.
        winograd_case(&Cpu64::new(2).with_precision(Precision::Fast), [n, cin, h, w], cout, seed, 1e-11);
        let fast = Cpu::new(2).with_precision(Precision::Fast);
        winograd_case(&fast.clone().with_products(Products::F32), [n, cin, h, w], cout, seed, 2e-4);
        // bf16 products (on this CPU's kernel, or emulated): operands rounded to 8 bits.
        winograd_case(&fast.with_products(Products::Bf16), [n, cin, h, w], cout, seed, BF16_TOL);
    }
}

#[test]
fn winograd_blocks_match_naive() {
    // Several tile-row blocks, odd sizes, and layer shapes of VGG19.
    // f32 sums of 576 and more products: the tolerance of the im2col test of that size.
    for fast in [false, true] {
        let precision = if fast {
            Precision::Fast
        } else {
            Precision::Default
        };
        let tol = if fast { 1e-3 } else { 1e-4 };
        // The default's input gradient in F(3x3, 3x3) where `F3_MAX_CHANNEL_PAIRS` allows.
        let grad_tol = if fast { 1e-3 } else { 3e-4 };
        let cpu = Cpu::new(2)
            .with_precision(precision)
            .with_products(Products::F32);
        // At the default precision the input gradient in F(3x3, 3x3) on the first two, in
        // F(2x2, 3x3) on the third (more channel pairs than `F3_MAX_CHANNEL_PAIRS`).
        let (tol, grad_tol) = (Tol::Each(tol), Tol::Each(grad_tol));
        winograd_case_with(&cpu, [1, 64, 61, 37], 64, 3, tol, grad_tol);
        winograd_case_with(&cpu, [1, 128, 33, 20], 256, 4, tol, grad_tol);
        const { assert!(512 * 384 > nst_cpu::F3_MAX_CHANNEL_PAIRS) };
        winograd_case(&cpu, [1, 512, 11, 7], 384, 5, tol);
        if fast {
            let bf16 = cpu.with_products(Products::Bf16);
            winograd_case(&bf16, [1, 64, 61, 37], 64, 3, BF16_TOL);
            winograd_case(&bf16, [1, 128, 33, 20], 256, 4, BF16_TOL);
        }
        winograd_case(
            &Cpu64::new(2).with_precision(precision),
            [1, 256, 17, 9],
            16,
            5,
            1e-11,
        );
    }
}

#[test]
fn large_conv_blocks_match_naive() {
    // Wide enough that the spatial dimension is split into several column blocks.
    conv_case(&Cpu::new(2), [1, 3, 140, 130], 4, 3, 1, 1, 7, 1e-5);
    conv_case(&Cpu::new(2), [1, 64, 40, 41], 8, 3, 1, 1, 8, 1e-4);
}

#[test]
fn reductions_and_movement() {
    let be = Cpu64::new(2);
    let x = Tensor::from_f64(&be, &(0..24).map(f64::from).collect::<Vec<_>>(), [2, 3, 4]).unwrap();
    assert_eq!(x.sum().unwrap().scalar().unwrap(), 276.0);
    assert_eq!(
        x.sum_axis(1).unwrap().to_f64().unwrap(),
        vec![12., 15., 18., 21., 48., 51., 54., 57.]
    );
    assert_eq!(
        x.narrow(2, 1, 2).unwrap().to_f64().unwrap()[..4],
        [1., 2., 5., 6.]
    );
    let back = x
        .narrow(2, 1, 2)
        .unwrap()
        .narrow_backward(2, 1, 4)
        .unwrap()
        .to_f64()
        .unwrap();
    assert_eq!(back[..8], [0., 1., 2., 0., 0., 5., 6., 0.]);
    let col = Tensor::from_f64(&be, &[1.0, 2.0], [2, 1]).unwrap();
    assert_eq!(
        col.broadcast_to([2, 3]).unwrap().to_f64().unwrap(),
        vec![1., 1., 1., 2., 2., 2.]
    );
    let m = Tensor::from_f64(&be, &(0..6).map(f64::from).collect::<Vec<_>>(), [2, 3]).unwrap();
    assert_eq!(m.transpose().unwrap().dims(), &[3, 2]);
    assert_eq!(
        m.transpose().unwrap().to_f64().unwrap(),
        vec![0., 3., 1., 4., 2., 5.]
    );
    let big = Tensor::from_f64(&be, &rand_vec(70 * 45, 4), [70, 45]).unwrap();
    let tt = big.transpose().unwrap().transpose().unwrap();
    assert_eq!(tt.to_f64().unwrap(), big.to_f64().unwrap());
    assert!(x.transpose().is_err());
    assert!(x.narrow(2, 3, 2).is_err());
    assert!(x.sum_axis(3).is_err());
    assert!(col.broadcast_to([3, 3]).is_err());
}

#[test]
fn optimizer_arithmetic_matches_plain_loops() {
    let be = Cpu::new(2);
    // Longer than one parallel chunk, so the chunked sums are exercised.
    let a64 = rand_vec(300_001, 11);
    let b64 = rand_vec(300_001, 12);
    let a32: Vec<f32> = a64.iter().map(|&v| v as f32).collect();
    let b32: Vec<f32> = b64.iter().map(|&v| v as f32).collect();
    let a = Tensor::from_f32(&be, &a32, [a32.len()]).unwrap();
    let b = Tensor::from_f32(&be, &b32, [b32.len()]).unwrap();
    let dot: f64 = a32
        .iter()
        .zip(&b32)
        .map(|(x, y)| *x as f64 * *y as f64)
        .sum();
    assert!((a.dot(&b).unwrap() - dot).abs() < 1e-9 * dot.abs().max(1.0));
    let l1: f64 = a32.iter().map(|v| v.abs() as f64).sum();
    let max = a32.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    let (n1, ninf) = a.norms().unwrap();
    assert!((n1 - l1).abs() < 1e-9 * l1);
    assert_eq!(ninf, max);
    let y = a.axpy(-2.5, &b).unwrap().to_f32().unwrap();
    for i in [0, 77, 300_000] {
        assert_eq!(y[i], (-2.5 * a32[i] as f64 + b32[i] as f64) as f32);
    }
    let q = a.square().unwrap().sqrt().unwrap().div(&b).unwrap();
    let q = q.to_f32().unwrap();
    for i in [0, 5, 300_000] {
        assert_eq!(q[i], a32[i].abs() / b32[i]);
    }
    // A NaN anywhere shows in both norms; an infinity in the 1-norm.
    let mut bad = a32.clone();
    bad[123_456] = f32::NAN;
    let (n1, ninf) = Tensor::from_f32(&be, &bad, [bad.len()])
        .unwrap()
        .norms()
        .unwrap();
    assert!(n1.is_nan() && ninf.is_nan());
    bad[123_456] = f32::INFINITY;
    let (n1, ninf) = Tensor::from_f32(&be, &bad, [bad.len()])
        .unwrap()
        .norms()
        .unwrap();
    assert!(n1.is_infinite() && ninf.is_infinite());
    assert!(a.dot(&a.narrow(0, 0, 5).unwrap()).is_err());
}

#[test]
fn same_inputs_same_bytes_across_runs_and_threads() {
    for (precision, products) in [
        (Precision::Default, Products::Auto),
        (Precision::Fast, Products::F32),
        (Precision::Fast, Products::Bf16),
    ] {
        same_bytes_at(precision, products);
    }
}

/// Winograd forward, fused ReLU and input gradient, and a sum, at `precision` with `products`: at 50x50
/// (several tile-row blocks) and at 6x6 (one block, fewer than the threads, whose products
/// then run in parallel).
fn same_bytes_at(precision: Precision, products: Products) {
    for side in [50, 6] {
        same_bytes_at_side(precision, products, side);
    }
}

fn same_bytes_at_side(precision: Precision, products: Products, side: usize) {
    let run = |threads: usize| {
        let be = Cpu::new(threads)
            .with_precision(precision)
            .with_products(products);
        let dims = [1, 64, side, side];
        let x = Tensor::from_f64(&be, &rand_vec(64 * side * side, 1), dims).unwrap();
        let w = Tensor::from_f64(&be, &rand_vec(64 * 64 * 9, 2), [64, 64, 3, 3]).unwrap();
        let y = x.conv2d(&w, None, 1, 1).unwrap();
        let p = x.conv2d_params(&w, 1, 1).unwrap();
        let dx = y.conv2d_backward_input(&w, &p).unwrap();
        let r = x.conv2d_relu(&w, None, 1, 1).unwrap();
        let dr = y.conv2d_relu_backward_input(&r, &w, &p).unwrap();
        (
            [y, dx, r, dr].map(|t| t.to_f32().unwrap()),
            x.sum().unwrap().to_f32().unwrap(),
        )
    };
    let a = run(2);
    assert!(
        a == run(2),
        "two runs with 2 threads differ ({precision:?}, {side} px)"
    );
    assert!(
        a == run(1),
        "1 and 2 threads differ ({precision:?}, {side} px)"
    );
    assert!(
        a == run(4),
        "2 and 4 threads differ ({precision:?}, {side} px)"
    );
}

#[test]
fn ndarray_round_trip() {
    let be = Cpu::new(1);
    let a = ndarray::Array::from_shape_fn(ndarray::IxDyn(&[2, 3]), |i| (i[0] * 3 + i[1]) as f32);
    let t = be.tensor_from_array(&a).unwrap();
    assert_eq!(t.dims(), &[2, 3]);
    assert_eq!(Cpu::tensor_to_array(&t).unwrap(), a);
}

/// A Gram matrix over many positions (`A·Aᵀ` with a long `k`) is computed in fixed chunks:
/// it matches the plain sum, in f64 and f32, and its bytes do not depend on the threads.
#[test]
fn long_gram_products_match_and_do_not_depend_on_threads() {
    let (m, k) = (5, 70_001);
    let a = rand_vec(m * k, 11);
    let mut want = vec![0.0; m * m];
    for i in 0..m {
        for j in 0..m {
            want[i * m + j] = (0..k).map(|p| a[i * k + p] * a[j * k + p]).sum();
        }
    }
    let be = Cpu64::new(2);
    let t = Tensor::from_f64(&be, &a, [m, k]).unwrap();
    assert_close(
        &t.matmul_t(&t, false, true).unwrap().to_f64().unwrap(),
        &want,
        1e-12,
    );
    let a32: Vec<f32> = a.iter().map(|v| *v as f32).collect();
    let run = |threads: usize| {
        let be = Cpu::new(threads);
        let t = Tensor::from_f32(&be, &a32, [m, k]).unwrap();
        t.matmul_t(&t, false, true).unwrap().to_f32().unwrap()
    };
    let one = run(1);
    assert_eq!(one, run(2));
    let got: Vec<f64> = one.iter().map(|v| *v as f64).collect();
    assert_close(&got, &want, 1e-4);
}

/// The backend's safe methods check every buffer against the parameters: short buffers and
/// impossible geometry are errors, never reads out of bounds.
#[test]
fn backend_calls_with_mismatched_buffers_are_errors() {
    use nst_tensor::{BackendCore, BackendExt, Conv2dParams, Pool2dParams, Shape};
    let be = Cpu::new(1);
    let buf = |n: usize| be.upload_f32(&vec![1.0; n]).unwrap();
    let p = Conv2dParams {
        batch: 1,
        in_channels: 64,
        out_channels: 64,
        in_h: 8,
        in_w: 8,
        kh: 3,
        kw: 3,
        stride: 1,
        padding: 1,
    };
    let (x, w, b) = (buf(64 * 64), buf(64 * 64 * 9), buf(64));
    assert!(be.conv2d(&x, &w, Some(&b), &p).is_ok());
    // A weight buffer one element short, on the Winograd and the im2col paths.
    let short = buf(64 * 64 * 9 - 1);
    assert!(be.conv2d(&x, &short, Some(&b), &p).is_err());
    assert!(be.conv2d_relu(&x, &short, None, &p).is_err());
    assert!(be.conv2d(&buf(10), &w, None, &p).is_err());
    assert!(be.conv2d(&x, &w, Some(&buf(3)), &p).is_err());
    assert!(be.conv2d_backward_input(&buf(5), &w, &p).is_err());
    assert!(be.conv2d_backward_weight(&x, &buf(5), &p).is_err());
    assert!(be
        .conv2d_relu_backward_input(&buf(5), &buf(5), &w, &p)
        .is_err());
    // Impossible geometry: a kernel larger than the padded input, a zero stride.
    for bad in [
        Conv2dParams { kh: 11, ..p },
        Conv2dParams { stride: 0, ..p },
        Conv2dParams {
            in_h: usize::MAX / 2,
            ..p
        },
    ] {
        assert!(be.conv2d(&x, &w, None, &bad).is_err(), "{bad:?}");
        let _ = (bad.out_h(), bad.out_w(), bad.flops());
    }
    let pool = Pool2dParams {
        kind: PoolKind::Max,
        batch: 1,
        channels: 2,
        in_h: 4,
        in_w: 4,
        kernel: 2,
        stride: 2,
    };
    assert!(be.pool2d(&buf(32), &pool).is_ok());
    assert!(be.pool2d(&buf(31), &pool).is_err());
    assert!(be.pool2d_backward(&buf(32), &buf(3), &pool).is_err());
    assert!(be
        .pool2d(&buf(32), &Pool2dParams { kernel: 5, ..pool })
        .is_err());
    assert!(be
        .pool2d(&buf(32), &Pool2dParams { stride: 0, ..pool })
        .is_err());
    let s = Shape::new([2, 3]);
    assert!(be.sum_axis(&buf(5), &s, 0).is_err());
    assert!(be.sum_axis(&buf(6), &s, 2).is_err());
    assert!(be.narrow(&buf(6), &s, 1, 2, 2).is_err());
    assert!(be.narrow(&buf(6), &s, 1, usize::MAX, 2).is_err());
    assert!(be.narrow_backward(&buf(6), &s, 1, 1, 3).is_err());
    assert!(be
        .broadcast(&buf(3), &Shape::new([3, 1]), &Shape::new([2, 3]))
        .is_err());
    assert!(be.matmul(&buf(6), &buf(5), 2, 3, 2, false, false).is_err());
    assert!(be
        .matmul(&buf(6), &buf(6), usize::MAX, 3, 2, false, false)
        .is_err());
    assert!(be.transpose(&buf(6), usize::MAX, 2).is_err());
}

#[test]
fn batched_reductions_combinations_scalars_and_the_projection() {
    let be = Cpu::new(2);
    let mut rng = StdRng::seed_from_u64(77);
    let host: Vec<Vec<f32>> = (0..5)
        .map(|_| (0..1001).map(|_| rng.gen_range(-2.0..2.0)).collect())
        .collect();
    let t: Vec<Tensor<Cpu>> = host
        .iter()
        .map(|v| Tensor::from_f32(&be, v, [7, 11, 13]).unwrap())
        .collect();
    let rows = [&t[0], &t[1]];
    let cols = [&t[2], &t[3], &t[4]];
    let d = Tensor::dots(&rows, &cols).unwrap();
    assert_eq!(d.len(), 6);
    for (r, a) in rows.iter().enumerate() {
        for (c, b) in cols.iter().enumerate() {
            assert_eq!(d[r * 3 + c].to_bits(), a.dot(b).unwrap().to_bits());
        }
    }
    let coeffs = [0.5, -1.25, 2.0, 0.0, 3.5];
    let all: Vec<&Tensor<Cpu>> = t.iter().collect();
    let comb = Tensor::combine(&coeffs, &all).unwrap().to_f32().unwrap();
    for (i, v) in comb.iter().enumerate() {
        let want: f64 = coeffs.iter().zip(&host).map(|(c, h)| c * h[i] as f64).sum();
        assert!(
            (*v as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "{v} vs {want}"
        );
    }
    assert!(Tensor::combine(&[1.0], &all).is_err());
    // One-element tensors back in one transfer, the values `scalar` gives.
    let sums: Vec<Tensor<Cpu>> = t.iter().map(|x| x.sum().unwrap()).collect();
    let got = Tensor::scalars(&sums.iter().collect::<Vec<_>>()).unwrap();
    for (g, s) in got.iter().zip(&sums) {
        assert_eq!(g.to_bits(), s.scalar().unwrap().to_bits());
    }
    assert!(Tensor::scalars(&[&t[0]]).is_err());
    // Each channel's plane clamped into its range.
    let img = Tensor::from_f32(&be, &host[0][..2 * 3 * 4 * 5], [2, 3, 4, 5]).unwrap();
    let ranges = [(-1.0f32, 1.0f32), (0.0, 0.5), (-0.25, 2.0)];
    let out = img.clamp_channels(&ranges).unwrap().to_f32().unwrap();
    for (i, (v, x)) in out.iter().zip(&host[0]).enumerate() {
        let (lo, hi) = ranges[(i / 20) % 3];
        assert_eq!(*v, x.clamp(lo, hi));
    }
    assert!(img.clamp_channels(&[(1.0, 0.0)]).is_err());
}
