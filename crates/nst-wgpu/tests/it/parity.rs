//! Every backend op on wgpu against the CPU backend on the same inputs, forward and backward,
//! at odd sizes: elementwise ops, pooling and data movement within 1e-5 relative, matrix
//! products and convolutions within 1e-4 of the largest entry.

use crate::{close, data, gpu, pair, Tol};
use nst_cpu::Cpu;
use nst_tensor::{BinaryOp, PoolKind, Tensor};

const EW: Tol = Tol::Relative(1e-5);
const GEMM: Tol = Tol::OfLargest(1e-4);

#[test]
fn elementwise_ops() {
    let g = gpu();
    let (a, ga) = pair(&[3, 5, 7], 1, g);
    let (b, gb) = pair(&[3, 5, 7], 2, g);
    close("relu", &a.relu().unwrap(), &ga.relu().unwrap(), EW);
    close("square", &a.square().unwrap(), &ga.square().unwrap(), EW);
    close("exp", &a.exp().unwrap(), &ga.exp().unwrap(), EW);
    close("neg", &a.scale(-1.0).unwrap(), &ga.scale(-1.0).unwrap(), EW);
    close(
        "affine",
        &a.affine(-1.5, 0.25).unwrap(),
        &ga.affine(-1.5, 0.25).unwrap(),
        EW,
    );
    close("add", &a.add(&b).unwrap(), &ga.add(&gb).unwrap(), EW);
    close("sub", &a.sub(&b).unwrap(), &ga.sub(&gb).unwrap(), EW);
    close("mul", &a.mul(&b).unwrap(), &ga.mul(&gb).unwrap(), EW);
    close("div", &a.div(&b).unwrap(), &ga.div(&gb).unwrap(), EW);
    close(
        "relu_grad",
        &a.binary(BinaryOp::ReluGrad, &b).unwrap(),
        &ga.binary(BinaryOp::ReluGrad, &gb).unwrap(),
        EW,
    );
    let (pa, gpa) = (a.square().unwrap(), ga.square().unwrap());
    close("sqrt", &pa.sqrt().unwrap(), &gpa.sqrt().unwrap(), EW);
    close(
        "axpy",
        &a.axpy(-0.75, &b).unwrap(),
        &ga.axpy(-0.75, &gb).unwrap(),
        EW,
    );
    let full = Tensor::full(g, [5, 3], 2.5).unwrap();
    assert_eq!(full.to_f32().unwrap(), vec![2.5; 15]);
    let empty = Tensor::from_f32(g, &[], [0]).unwrap();
    assert!(empty.relu().unwrap().to_f32().unwrap().is_empty());
    // Mismatched lengths are an error, not a read out of bounds.
    let short = Tensor::from_f32(g, &[1.0; 4], [4]).unwrap();
    let long = Tensor::from_f32(g, &[1.0; 5], [5]).unwrap();
    assert!(
        nst_tensor::BackendCore::binary(g, BinaryOp::Add, short.buffer(), long.buffer()).is_err()
    );
}

#[test]
fn reductions_and_data_movement() {
    let g = gpu();
    let (a, ga) = pair(&[3, 5, 7], 1, g);
    close("sum", &a.sum().unwrap(), &ga.sum().unwrap(), GEMM);
    for axis in 0..3 {
        close(
            "sum_axis",
            &a.sum_axis(axis).unwrap(),
            &ga.sum_axis(axis).unwrap(),
            GEMM,
        );
        close(
            "narrow",
            &a.narrow(axis, 1, 2).unwrap(),
            &ga.narrow(axis, 1, 2).unwrap(),
            EW,
        );
        let n = a.narrow(axis, 1, 2).unwrap();
        let gn = ga.narrow(axis, 1, 2).unwrap();
        let full = a.dims()[axis];
        close(
            "narrow_backward",
            &n.narrow_backward(axis, 1, full).unwrap(),
            &gn.narrow_backward(axis, 1, full).unwrap(),
            EW,
        );
    }
    let (m, gm) = pair(&[37, 19], 14, g);
    close(
        "transpose",
        &m.transpose().unwrap(),
        &gm.transpose().unwrap(),
        EW,
    );
    let (c, gc) = pair(&[3, 1, 7], 3, g);
    close(
        "broadcast",
        &c.broadcast_to([3, 5, 7]).unwrap(),
        &gc.broadcast_to([3, 5, 7]).unwrap(),
        EW,
    );
    let (s, gs) = pair(&[1, 1], 4, g);
    close(
        "broadcast of one element",
        &s.broadcast_to([2, 3]).unwrap(),
        &gs.broadcast_to([2, 3]).unwrap(),
        EW,
    );
    // Several passes of the fixed-order sum, and the same bits every time.
    let big = data(1_000_003, 9);
    let cpu_sum = Tensor::from_f32(&Cpu::new(2), &big, [big.len()])
        .unwrap()
        .sum()
        .unwrap()
        .scalar()
        .unwrap();
    let t = Tensor::from_f32(g, &big, [big.len()]).unwrap();
    let s1 = t.sum().unwrap().scalar().unwrap();
    let s2 = t.sum().unwrap().scalar().unwrap();
    assert_eq!(s1.to_bits(), s2.to_bits());
    assert!((cpu_sum - s1).abs() < 1e-2, "{cpu_sum} {s1}");
    let (d1, d2) = (
        Tensor::from_f32(&Cpu::new(2), &big, [big.len()])
            .unwrap()
            .dot(&Tensor::from_f32(&Cpu::new(2), &big, [big.len()]).unwrap())
            .unwrap(),
        t.dot(&t).unwrap(),
    );
    assert!((d1 - d2).abs() <= 1e-5 * d1, "dot {d1} {d2}");
    let (n1, n2) = (
        Tensor::from_f32(&Cpu::new(2), &big, [big.len()])
            .unwrap()
            .norms()
            .unwrap(),
        t.norms().unwrap(),
    );
    assert!(
        (n1.0 - n2.0).abs() <= 1e-5 * n1.0 && n1.1 == n2.1,
        "{n1:?} {n2:?}"
    );
}

#[test]
fn matmul_with_transposes() {
    let g = gpu();
    for (m, k, n) in [(1, 1, 1), (7, 5, 3), (64, 33, 17), (130, 70, 65)] {
        for ta in [false, true] {
            for tb in [false, true] {
                let (a, ga) = pair(&if ta { [k, m] } else { [m, k] }, 4, g);
                let (b, gb) = pair(&if tb { [n, k] } else { [k, n] }, 5, g);
                close(
                    &format!("matmul {m}x{k}x{n} {ta} {tb}"),
                    &a.matmul_t(&b, ta, tb).unwrap(),
                    &ga.matmul_t(&gb, ta, tb).unwrap(),
                    GEMM,
                );
            }
        }
    }
}

#[test]
fn convolutions_forward_and_backward() {
    let g = gpu();
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
            GEMM,
        );
        close(
            &format!("conv2d without bias {what}"),
            &x.conv2d(&wt, None, s, p).unwrap(),
            &gx.conv2d(&gw, None, s, p).unwrap(),
            GEMM,
        );
        let pr = x.conv2d_params(&wt, s, p).unwrap();
        let (dy, gdy) = pair(y.dims(), 9, g);
        close(
            &format!("conv2d_backward_input {what}"),
            &dy.conv2d_backward_input(&wt, &pr).unwrap(),
            &gdy.conv2d_backward_input(&gw, &pr).unwrap(),
            GEMM,
        );
        close(
            &format!("conv2d_backward_weight {what}"),
            &dy.conv2d_backward_weight(&x, &pr).unwrap(),
            &gdy.conv2d_backward_weight(&gx, &pr).unwrap(),
            GEMM,
        );
        let yr = x.conv2d_relu(&wt, Some(&b), s, p).unwrap();
        close(
            &format!("conv2d_relu {what}"),
            &yr,
            &gx.conv2d_relu(&gw, Some(&gb), s, p).unwrap(),
            GEMM,
        );
        // The same mask on both sides (an output within rounding of 0 could flip it).
        let gyr = Tensor::from_f32(g, &yr.to_f32().unwrap(), yr.dims().to_vec()).unwrap();
        close(
            &format!("conv2d_relu_backward_input {what}"),
            &dy.conv2d_relu_backward_input(&yr, &wt, &pr).unwrap(),
            &gdy.conv2d_relu_backward_input(&gyr, &gw, &pr).unwrap(),
            GEMM,
        );
    }
}

#[test]
fn pooling_forward_and_backward_with_ties() {
    let g = gpu();
    for kind in [PoolKind::Max, PoolKind::Avg] {
        for (h, w, k, s) in [(8, 8, 2, 2), (7, 9, 2, 2), (9, 7, 3, 2), (6, 7, 3, 1)] {
            let (x, gx) = pair(&[2, 3, h, w], 10, g);
            let y = x.pool2d(kind, k, s).unwrap();
            close("pool2d", &y, &gx.pool2d(kind, k, s).unwrap(), EW);
            let pp = x.pool2d_params(kind, k, s).unwrap();
            let (dy, gdy) = pair(y.dims(), 11, g);
            // Overlapping windows add several gradients per input, in another order than
            // the CPU's: relative to the largest then.
            close(
                "pool2d_backward",
                &x.pool2d_backward(&dy, &pp).unwrap(),
                &gx.pool2d_backward(&gdy, &pp).unwrap(),
                if k == s { EW } else { Tol::OfLargest(1e-5) },
            );
        }
    }
    // Ties: rounded values repeat within windows; the gradient goes to the first, as on the CPU.
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
        gx.pool2d_backward(&gdy, &pp).unwrap().to_f32().unwrap()
    );
}

#[test]
fn the_pixel_projection_matches() {
    let g = gpu();
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

/// With bindings of 4 KB (1024 elements), vectors of 5000 elements are split over five: the
/// elementwise ops, sums, broadcasts, narrows and transfers work across the splits as on a
/// whole buffer; the kernels that need an operand whole refuse a split one.
#[test]
fn buffers_over_the_binding_limit_are_split() {
    let small = nst_wgpu::Wgpu::open(
        0,
        nst_wgpu::Options {
            max_binding: Some(4096),
        },
    )
    .unwrap();
    assert_eq!(small.max_binding(), 4096);
    let n = 5000;
    let (a, ga) = pair(&[2, 2500], 20, &small);
    let (b, gb) = pair(&[2, 2500], 21, &small);
    assert_eq!(
        ga.to_f32().unwrap(),
        a.to_f32().unwrap(),
        "upload and download"
    );
    close("relu", &a.relu().unwrap(), &ga.relu().unwrap(), EW);
    close("sub", &a.sub(&b).unwrap(), &ga.sub(&gb).unwrap(), EW);
    close("mul", &a.mul(&b).unwrap(), &ga.mul(&gb).unwrap(), EW);
    close(
        "affine",
        &a.affine(2.0, -1.0).unwrap(),
        &ga.affine(2.0, -1.0).unwrap(),
        EW,
    );
    assert_eq!(
        Tensor::full(&small, [n], 3.0).unwrap().to_f32().unwrap(),
        vec![3.0; n]
    );
    close("sum", &a.sum().unwrap(), &ga.sum().unwrap(), GEMM);
    let (d1, d2) = (a.dot(&b).unwrap(), ga.dot(&gb).unwrap());
    assert!((d1 - d2).abs() <= 1e-5 * d1.abs().max(1.0), "dot {d1} {d2}");
    for (axis, start, len) in [(1, 1000, 1200), (0, 1, 1), (1, 0, 2500)] {
        let cn = a.narrow(axis, start, len).unwrap();
        let gn = ga.narrow(axis, start, len).unwrap();
        close("narrow", &cn, &gn, EW);
        let full = a.dims()[axis];
        close(
            "narrow_backward",
            &cn.narrow_backward(axis, start, full).unwrap(),
            &gn.narrow_backward(axis, start, full).unwrap(),
            EW,
        );
    }
    let (c, gc) = pair(&[2, 1], 22, &small);
    close(
        "broadcast",
        &c.broadcast_to([2, 2500]).unwrap(),
        &gc.broadcast_to([2, 2500]).unwrap(),
        EW,
    );
    let img: Vec<f32> = data(3 * 40 * 50, 23).iter().map(|v| v * 200.0).collect();
    let ranges = [(-100.0f32, 150.0f32), (-20.0, 30.0), (0.0, 1.0)];
    assert_eq!(
        Tensor::from_f32(&Cpu::new(1), &img, [1, 3, 40, 50])
            .unwrap()
            .clamp_channels(&ranges)
            .unwrap()
            .to_f32()
            .unwrap(),
        Tensor::from_f32(&small, &img, [1, 3, 40, 50])
            .unwrap()
            .clamp_channels(&ranges)
            .unwrap()
            .to_f32()
            .unwrap(),
    );
    // A convolution's operand must be whole: a clear error, not a wrong result.
    let (_, gw) = pair(&[1, 2, 3, 3], 24, &small);
    let x = ga.reshape([1, 2, 50, 50]).unwrap();
    let err = x.conv2d(&gw, None, 1, 1).unwrap_err().to_string();
    assert!(err.contains("largest binding"), "{err}");
}
