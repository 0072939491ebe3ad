//! The tensor layer's own checks, on the CPU backend: shapes that do not fit are errors
//! naming the operation and both shapes, host data must match its shape, and the geometry of
//! convolution and pooling follows the documented formulas (never panicking).

use nst_cpu::Cpu;
use nst_tensor::{Conv2dParams, Error, Pool2dParams, PoolKind, Shape, Tensor};

fn t(data: &[f32], shape: &[usize]) -> Tensor<Cpu> {
    Tensor::from_f32(&Cpu::new(1), data, shape.to_vec()).unwrap()
}

#[test]
fn host_data_must_match_its_shape() {
    let err = Tensor::from_f32(&Cpu::new(1), &[1.0, 2.0, 3.0], [2, 2]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::HostLength {
                expected: 4,
                got: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("3 elements"), "{err}");
    let z = Tensor::zeros(&Cpu::new(1), [2, 3]).unwrap();
    assert_eq!(z.dims(), &[2, 3]);
    assert_eq!(z.to_f32().unwrap(), vec![0.0; 6]);
}

#[test]
fn elementwise_ops_refuse_other_shapes_naming_both() {
    let a = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let b = t(&[1.0, 2.0, 3.0, 4.0], &[4, 1]);
    for r in [a.add(&b), a.sub(&b), a.mul(&b)] {
        let err = r.unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("[2, 2]") && msg.contains("[4, 1]"), "{msg}");
    }
    assert_eq!(
        a.add(&a).unwrap().to_f32().unwrap(),
        vec![2.0, 4.0, 6.0, 8.0]
    );
}

#[test]
fn reshape_keeps_the_data_and_refuses_another_count() {
    let a = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let r = a.reshape([3, 2]).unwrap();
    assert_eq!(r.dims(), &[3, 2]);
    assert_eq!(r.to_f32().unwrap(), a.to_f32().unwrap());
    let err = a.reshape([4, 2]).unwrap_err();
    assert!(
        err.to_string().contains("reshape") && err.to_string().contains("[4, 2]"),
        "{err}"
    );
}

#[test]
fn a_scalar_is_one_element() {
    assert_eq!(t(&[2.5], &[1]).scalar().unwrap(), 2.5);
    let err = t(&[1.0, 2.0], &[2]).scalar().unwrap_err();
    assert!(err.to_string().contains("not a scalar"), "{err}");
}

#[test]
fn shapes_answer_rank_count_and_nchw() {
    let s = Shape::new([2, 3, 4, 5]);
    assert_eq!((s.rank(), s.numel(), s.dim(2)), (4, 120, 4));
    assert_eq!(s.nchw(), Some([2, 3, 4, 5]));
    assert_eq!(Shape::new([3, 4]).nchw(), None);
    assert_eq!(s.with_dim(1, 7).dims(), &[2, 7, 4, 5]);
}

#[test]
fn convolution_and_pooling_geometry() {
    let conv = Conv2dParams {
        batch: 1,
        in_channels: 3,
        out_channels: 8,
        in_h: 7,
        in_w: 10,
        kh: 3,
        kw: 3,
        stride: 1,
        padding: 1,
    };
    assert_eq!(conv.output_shape().dims(), &[1, 8, 7, 10]);
    assert_eq!(conv.weight_shape().dims(), &[8, 3, 3, 3]);
    assert_eq!(conv.flops(), 2.0 * 3.0 * 8.0 * 9.0 * 70.0);
    let strided = Conv2dParams {
        stride: 2,
        padding: 0,
        ..conv
    };
    assert_eq!((strided.out_h(), strided.out_w()), (3, 4));
    // A kernel larger than the padded input, or a zero stride, gives 0 rather than a panic.
    let big = Conv2dParams {
        kh: 12,
        kw: 12,
        padding: 0,
        ..conv
    };
    assert_eq!((big.out_h(), big.out_w()), (0, 0));
    let zero = Conv2dParams { stride: 0, ..conv };
    assert_eq!(zero.out_h(), 0);
    let pool = Pool2dParams {
        kind: PoolKind::Max,
        batch: 1,
        channels: 4,
        in_h: 7,
        in_w: 10,
        kernel: 2,
        stride: 2,
    };
    // Floor mode: the odd last row is dropped.
    assert_eq!(pool.output_shape().dims(), &[1, 4, 3, 5]);
}

#[test]
fn pooling_on_a_tensor_follows_the_tie_rule_and_the_geometry() {
    // 1 x 1 x 2 x 4: windows [1, 5; 5, 0] and [2, 2; 2, 2].
    let x = t(&[1.0, 5.0, 2.0, 2.0, 5.0, 0.0, 2.0, 2.0], &[1, 1, 2, 4]);
    let max = x.pool2d(PoolKind::Max, 2, 2).unwrap();
    assert_eq!(max.dims(), &[1, 1, 1, 2]);
    assert_eq!(max.to_f32().unwrap(), vec![5.0, 2.0]);
    let avg = x.pool2d(PoolKind::Avg, 2, 2).unwrap();
    assert_eq!(avg.to_f32().unwrap(), vec![2.75, 2.0]);
    // A window that does not fit is an error, not an empty tensor.
    assert!(t(&[1.0], &[1, 1, 1, 1])
        .pool2d(PoolKind::Max, 2, 2)
        .is_err());
}
