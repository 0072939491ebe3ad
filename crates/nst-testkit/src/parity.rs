//! Every backend op on a device against the CPU backend on the same inputs, at odd sizes:
//! the suite the CUDA and wgpu backends' tests share (feature `parity`). Each function takes
//! the device and the tolerances its arithmetic allows, and panics naming the op, the entry
//! and both values where they differ by more.

use nst_cpu::Cpu;
use nst_tensor::{Backend, BinaryOp, PoolKind, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// How near a device's result must be to the CPU's, entry by entry (`x` the CPU's).
#[derive(Clone, Copy, Debug)]
pub enum Tol {
    /// `|x − y| <= t · |x|`.
    Relative(f32),
    /// `|x − y| <= t · (1 + |x|)`.
    RelativeOrAbsolute(f32),
    /// `|x − y| <= t · max|x|`: sums of products in another order.
    OfLargest(f32),
    /// `|x − y| <= t · max(max|x|, 1)`.
    OfLargestOrOne(f32),
}

/// The tolerances of one device.
#[derive(Clone, Copy, Debug)]
pub struct Tolerances {
    /// Elementwise ops, data movement, pooling.
    pub elementwise: Tol,
    /// Matrix products, convolutions, sums.
    pub gemm: Tol,
}

/// `n` uniform values in [-1, 1) from `seed`.
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// The same random tensor on the CPU and on `g`.
pub fn pair<B: Backend>(dims: &[usize], seed: u64, g: &B) -> (Tensor<Cpu>, Tensor<B>) {
    let d = data(dims.iter().product(), seed);
    (
        Tensor::from_f32(&Cpu::new(2), &d, dims.to_vec()).unwrap(),
        Tensor::from_f32(g, &d, dims.to_vec()).unwrap(),
    )
}

/// Asserts `dev` is `cpu` within `tol` (NaN matching NaN).
pub fn close<B: Backend>(what: &str, cpu: &Tensor<Cpu>, dev: &Tensor<B>, tol: Tol) {
    assert_eq!(cpu.dims(), dev.dims(), "{what}");
    let a = cpu.to_f32().unwrap();
    let b = dev.to_f32().unwrap();
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let bound = match tol {
            Tol::Relative(t) => t * x.abs().max(1e-6),
            Tol::RelativeOrAbsolute(t) => t * (1.0 + x.abs()),
            Tol::OfLargest(t) => t * scale.max(1e-30),
            Tol::OfLargestOrOne(t) => t * scale.max(1.0),
        };
        assert!(
            (x - y).abs() <= bound || (x.is_nan() && y.is_nan()),
            "{what}[{i}]: cpu {x} device {y}"
        );
    }
}

/// The elementwise ops and `full`.
pub fn elementwise<B: Backend>(g: &B, t: Tolerances) {
    let ew = t.elementwise;
    let (a, ga) = pair(&[3, 5, 7], 1, g);
    let (b, gb) = pair(&[3, 5, 7], 2, g);
    close("relu", &a.relu().unwrap(), &ga.relu().unwrap(), ew);
    close("square", &a.square().unwrap(), &ga.square().unwrap(), ew);
    close("exp", &a.exp().unwrap(), &ga.exp().unwrap(), ew);
    close("neg", &a.scale(-1.0).unwrap(), &ga.scale(-1.0).unwrap(), ew);
    close(
        "affine",
        &a.affine(-1.5, 0.25).unwrap(),
        &ga.affine(-1.5, 0.25).unwrap(),
        ew,
    );
    close("add", &a.add(&b).unwrap(), &ga.add(&gb).unwrap(), ew);
    close("sub", &a.sub(&b).unwrap(), &ga.sub(&gb).unwrap(), ew);
    close("mul", &a.mul(&b).unwrap(), &ga.mul(&gb).unwrap(), ew);
    close("div", &a.div(&b).unwrap(), &ga.div(&gb).unwrap(), ew);
    close(
        "relu_grad",
        &a.binary(BinaryOp::ReluGrad, &b).unwrap(),
        &ga.binary(BinaryOp::ReluGrad, &gb).unwrap(),
        ew,
    );
    let (pa, gpa) = (a.square().unwrap(), ga.square().unwrap());
    close("sqrt", &pa.sqrt().unwrap(), &gpa.sqrt().unwrap(), ew);
    close(
        "axpy",
        &a.axpy(-0.75, &b).unwrap(),
        &ga.axpy(-0.75, &gb).unwrap(),
        ew,
    );
    let full = Tensor::full(g, [5, 3], 2.5).unwrap();
    assert_eq!(full.to_f32().unwrap(), vec![2.5; 15]);
}

/// An empty buffer, and buffers of other lengths given to a binary op (an error).
pub fn edge_cases<B: Backend>(g: &B) {
    let empty = Tensor::from_f32(g, &[], [0]).unwrap();
    assert!(empty.relu().unwrap().to_f32().unwrap().is_empty());
    let short = Tensor::from_f32(g, &[1.0; 4], [4]).unwrap();
    let long = Tensor::from_f32(g, &[1.0; 5], [5]).unwrap();
    assert!(
        nst_tensor::BackendCore::binary(g, BinaryOp::Add, short.buffer(), long.buffer()).is_err(),
        "buffers of other lengths are an error"
    );
}

/// Sums (along every axis, and of a million elements: the same bits twice), narrow and its
/// adjoint along every axis, transpose, broadcast, `dot` and `norms` (within `dot`,
/// relative).
pub fn reductions_and_movement<B: Backend>(g: &B, t: Tolerances, dot: f64) {
    let (a, ga) = pair(&[3, 5, 7], 1, g);
    close("sum", &a.sum().unwrap(), &ga.sum().unwrap(), t.gemm);
    for axis in 0..3 {
        close(
            "sum_axis",
            &a.sum_axis(axis).unwrap(),
            &ga.sum_axis(axis).unwrap(),
            t.gemm,
        );
        let n = a.narrow(axis, 1, 2).unwrap();
        let gn = ga.narrow(axis, 1, 2).unwrap();
        close("narrow", &n, &gn, t.elementwise);
        let full = a.dims()[axis];
        close(
            "narrow_backward",
            &n.narrow_backward(axis, 1, full).unwrap(),
            &gn.narrow_backward(axis, 1, full).unwrap(),
            t.elementwise,
        );
    }
    let (m, gm) = pair(&[37, 19], 14, g);
    close(
        "transpose",
        &m.transpose().unwrap(),
        &gm.transpose().unwrap(),
        t.elementwise,
    );
    let (c, gc) = pair(&[3, 1, 7], 3, g);
    close(
        "broadcast",
        &c.broadcast_to([3, 5, 7]).unwrap(),
        &gc.broadcast_to([3, 5, 7]).unwrap(),
        t.elementwise,
    );
    let (s, gs) = pair(&[1, 1], 4, g);
    close(
        "broadcast of one element",
        &s.broadcast_to([2, 3]).unwrap(),
        &gs.broadcast_to([2, 3]).unwrap(),
        t.elementwise,
    );
    let big = data(1_000_003, 9);
    let cpu = Tensor::from_f32(&Cpu::new(2), &big, [big.len()]).unwrap();
    let dev = Tensor::from_f32(g, &big, [big.len()]).unwrap();
    let want = cpu.sum().unwrap().scalar().unwrap();
    let s1 = dev.sum().unwrap().scalar().unwrap();
    let s2 = dev.sum().unwrap().scalar().unwrap();
    assert_eq!(s1.to_bits(), s2.to_bits(), "a sum repeats its bits");
    assert!((want - s1).abs() < 1e-2, "sum {want} {s1}");
    let (d1, d2) = (cpu.dot(&cpu).unwrap(), dev.dot(&dev).unwrap());
    assert!((d1 - d2).abs() <= dot * d1.abs().max(1.0), "dot {d1} {d2}");
    let (n1, n2) = (cpu.norms().unwrap(), dev.norms().unwrap());
    assert!(
        (n1.0 - n2.0).abs() <= dot * n1.0 && n1.1 == n2.1,
        "norms {n1:?} {n2:?}"
    );
    let mut nan = data(1000, 4);
    nan[517] = f32::NAN;
    let n = Tensor::from_f32(g, &nan, [1000]).unwrap().norms().unwrap();
    assert!(n.0.is_nan() && n.1.is_nan(), "NaN propagates: {n:?}");
}

/// Matrix products at four sizes with every transpose.
pub fn matmul<B: Backend>(g: &B, t: Tolerances) {
    for (m, k, n) in [(1, 1, 1), (7, 5, 3), (64, 33, 17), (130, 70, 65)] {
        for ta in [false, true] {
            for tb in [false, true] {
                let (a, ga) = pair(&if ta { [k, m] } else { [m, k] }, 4, g);
                let (b, gb) = pair(&if tb { [n, k] } else { [k, n] }, 5, g);
                close(
                    &format!("matmul {m}x{k}x{n} {ta} {tb}"),
                    &a.matmul_t(&b, ta, tb).unwrap(),
                    &ga.matmul_t(&gb, ta, tb).unwrap(),
                    t.gemm,
                );
            }
        }
    }
}

/// Every convolution op (forward with and without bias, fused ReLU, input gradient with and
/// without the ReLU mask, weight gradient) on shapes with strides, padding, 1x1 kernels, and
/// channel counts that fill no tile.
pub fn convolutions<B: Backend>(g: &B, t: Tolerances) {
    for (n, cin, cout, h, w, k, s, p) in [
        (1, 3, 8, 17, 13, 3, 1, 1),
        (2, 4, 5, 9, 11, 3, 2, 0),
        (1, 2, 3, 6, 6, 1, 1, 0),
        (2, 5, 3, 10, 7, 3, 2, 1),
        (1, 32, 70, 15, 10, 3, 1, 1),
    ] {
        let what = format!("{n}x{cin}x{h}x{w} -> {cout}, k{k} s{s} p{p}");
        let (x, gx) = pair(&[n, cin, h, w], 6, g);
        let (wt, gw) = pair(&[cout, cin, k, k], 7, g);
        let (b, gb) = pair(&[cout], 8, g);
        let y = x.conv2d(&wt, Some(&b), s, p).unwrap();
        close(
            &format!("conv2d {what}"),
            &y,
            &gx.conv2d(&gw, Some(&gb), s, p).unwrap(),
            t.gemm,
        );
        close(
            &format!("conv2d without bias {what}"),
            &x.conv2d(&wt, None, s, p).unwrap(),
            &gx.conv2d(&gw, None, s, p).unwrap(),
            t.gemm,
        );
        let pr = x.conv2d_params(&wt, s, p).unwrap();
        let (dy, gdy) = pair(y.dims(), 9, g);
        close(
            &format!("conv2d_backward_input {what}"),
            &dy.conv2d_backward_input(&wt, &pr).unwrap(),
            &gdy.conv2d_backward_input(&gw, &pr).unwrap(),
            t.gemm,
        );
        close(
            &format!("conv2d_backward_weight {what}"),
            &dy.conv2d_backward_weight(&x, &pr).unwrap(),
            &gdy.conv2d_backward_weight(&gx, &pr).unwrap(),
            t.gemm,
        );
        let yr = x.conv2d_relu(&wt, Some(&b), s, p).unwrap();
        close(
            &format!("conv2d_relu {what}"),
            &yr,
            &gx.conv2d_relu(&gw, Some(&gb), s, p).unwrap(),
            t.gemm,
        );
        // The same mask on both sides (an output within rounding of 0 could flip it).
        let gyr = Tensor::from_f32(g, &yr.to_f32().unwrap(), yr.dims().to_vec()).unwrap();
        close(
            &format!("conv2d_relu_backward_input {what}"),
            &dy.conv2d_relu_backward_input(&yr, &wt, &pr).unwrap(),
            &gdy.conv2d_relu_backward_input(&gyr, &gw, &pr).unwrap(),
            t.gemm,
        );
    }
}

/// Max and average pooling forward and backward, with overlapping windows (whose gradients
/// add in another order: within `t.gemm` then), and max-pooling ties, whose gradient must be
/// the CPU's bit for bit.
pub fn pooling<B: Backend>(g: &B, t: Tolerances) {
    for kind in [PoolKind::Max, PoolKind::Avg] {
        for (h, w, k, s) in [(8, 8, 2, 2), (7, 9, 2, 2), (9, 7, 3, 2), (6, 7, 3, 1)] {
            let (x, gx) = pair(&[2, 3, h, w], 10, g);
            let y = x.pool2d(kind, k, s).unwrap();
            close("pool2d", &y, &gx.pool2d(kind, k, s).unwrap(), t.elementwise);
            let pp = x.pool2d_params(kind, k, s).unwrap();
            let (dy, gdy) = pair(y.dims(), 11, g);
            close(
                "pool2d_backward",
                &x.pool2d_backward(&dy, &pp).unwrap(),
                &gx.pool2d_backward(&gdy, &pp).unwrap(),
                if k == s { t.elementwise } else { t.gemm },
            );
        }
    }
    let tied: Vec<f32> = data(2 * 9 * 9, 12)
        .iter()
        .map(|v| (v * 2.0).round())
        .collect();
    let x = Tensor::from_f32(&Cpu::new(1), &tied, [1, 2, 9, 9]).unwrap();
    let gx = Tensor::from_f32(g, &tied, [1, 2, 9, 9]).unwrap();
    let pp = x.pool2d_params(PoolKind::Max, 3, 2).unwrap();
    let (dy, gdy) = pair(pp.output_shape().dims(), 13, g);
    assert_eq!(
        x.pool2d_backward(&dy, &pp).unwrap().to_f32().unwrap(),
        gx.pool2d_backward(&gdy, &pp).unwrap().to_f32().unwrap(),
        "max-pooling ties"
    );
}

/// The pixel projection (`clamp_channels`): the CPU's values exactly.
pub fn projection<B: Backend>(g: &B) {
    let img: Vec<f32> = data(3 * 50 * 40, 40).iter().map(|v| v * 200.0).collect();
    let ranges = [(-100.0f32, 150.0f32), (-20.0, 30.0), (0.0, 1.0)];
    let a = Tensor::from_f32(&Cpu::new(1), &img, [1, 3, 50, 40])
        .unwrap()
        .clamp_channels(&ranges)
        .unwrap();
    let b = Tensor::from_f32(g, &img, [1, 3, 50, 40])
        .unwrap()
        .clamp_channels(&ranges)
        .unwrap();
    assert_eq!(a.to_f32().unwrap(), b.to_f32().unwrap());
}

/// A taped loss through a convolution, ReLU, max pooling and a Gram matrix: the gradient
/// within `tol` of its largest entry.
pub fn taped_gradients<B: Backend>(g: &B, tol: f32) {
    fn grad<D: Backend>(x: Tensor<D>, w: Tensor<D>) -> Vec<f32> {
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
    let a = grad(x, w);
    let b = grad(gx, gw);
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() <= tol * scale, "{p} vs {q}");
    }
}
