//! Every backend op on wgpu against the CPU backend (the shared suite,
//! `nst_testkit::parity`): elementwise ops, pooling and data movement within 1e-5 relative,
//! matrix products, convolutions, sums and overlapping pooling windows' gradients within 1e-4
//! of the largest entry. Then what is wgpu's own: buffers split over bindings.

use crate::gpu;
use nst_cpu::Cpu;
use nst_tensor::Tensor;
use nst_testkit::parity::{self, close, data, pair, Tol, Tolerances};

const T: Tolerances = Tolerances {
    elementwise: Tol::Relative(1e-5),
    gemm: Tol::OfLargest(1e-4),
};
const EW: Tol = T.elementwise;
const GEMM: Tol = T.gemm;

#[test]
fn elementwise_ops() {
    parity::elementwise(gpu(), T);
    parity::edge_cases(gpu());
}

#[test]
fn reductions_and_data_movement() {
    // The optimizer's dot products and norms are f32 sums on the device (the trait's
    // defaults), not the CPU's f64.
    parity::reductions_and_movement(gpu(), T, 1e-5);
}

#[test]
fn matmul_with_transposes() {
    parity::matmul(gpu(), T);
}

#[test]
fn convolutions_forward_and_backward() {
    parity::convolutions(gpu(), T);
}

#[test]
fn pooling_forward_and_backward_with_ties() {
    parity::pooling(
        gpu(),
        Tolerances {
            gemm: Tol::OfLargest(1e-5),
            ..T
        },
    );
}

#[test]
fn the_pixel_projection_matches() {
    parity::projection(gpu());
}

#[test]
fn taped_gradients_agree() {
    parity::taped_gradients(gpu(), 1e-4);
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
