//! Every differentiable op, and compositions of them, against central finite differences in
//! f64 on random shapes and values.

use super::{cases, cpu, rand_tensor};
use nst_autodiff::gradcheck::{check, Tolerance};
use nst_autodiff::{Tape, Var};
use nst_cpu::Cpu64;
use nst_tensor::{PoolKind, Result, Tensor};
use proptest::prelude::*;

/// Weights the output by a fixed random tensor before summing, so that upstream gradients
/// vary from element to element.
fn weighted_sum<'t>(
    tape: &'t Tape<Cpu64>,
    y: &Var<'t, Cpu64>,
    seed: u64,
) -> Result<Var<'t, Cpu64>> {
    let r = tape.constant(rand_tensor(&cpu(), y.shape().dims(), seed ^ 0x5eed, 0.0));
    y.mul(&r)?.sum()
}

fn assert_grad<F>(inputs: &[Tensor<Cpu64>], f: F)
where
    F: for<'t> Fn(&'t Tape<Cpu64>, &[Var<'t, Cpu64>]) -> Result<Var<'t, Cpu64>>,
{
    let report = check(inputs, f, Tolerance::default()).unwrap();
    assert!(report.is_ok(), "{report}");
    assert!(report.checked > 0);
}

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(cases())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn elementwise_ops(n in 1usize..40, seed in any::<u64>()) {
        let b = cpu();
        let x = rand_tensor(&b, &[n], seed, 0.05);
        let y = rand_tensor(&b, &[n], seed.wrapping_add(1), 0.05);
        assert_grad(&[x.clone(), y.clone()], |t, v| weighted_sum(t, &v[0].add(&v[1])?, seed));
        assert_grad(&[x.clone(), y.clone()], |t, v| weighted_sum(t, &v[0].sub(&v[1])?, seed));
        assert_grad(&[x.clone(), y.clone()], |t, v| weighted_sum(t, &v[0].mul(&v[1])?, seed));
        assert_grad(std::slice::from_ref(&x), |t, v| weighted_sum(t, &v[0].affine(-1.7, 0.3)?, seed));
        assert_grad(std::slice::from_ref(&x), |t, v| weighted_sum(t, &v[0].square()?, seed));
        assert_grad(std::slice::from_ref(&x), |t, v| weighted_sum(t, &v[0].relu()?, seed));
        assert_grad(std::slice::from_ref(&x), |t, v| weighted_sum(t, &v[0].exp()?, seed));
        // Denominators and roots kept positive (x² + 0.5), away from the poles.
        assert_grad(&[x.clone(), y.clone()], |t, v| {
            weighted_sum(t, &v[0].div(&v[1].square()?.offset(0.5)?)?, seed)
        });
        assert_grad(std::slice::from_ref(&x), |t, v| {
            weighted_sum(t, &v[0].square()?.offset(0.5)?.sqrt()?, seed)
        });
        // One value as numerator and denominator: the two gradients add.
        assert_grad(std::slice::from_ref(&x), |t, v| {
            let d = v[0].square()?.offset(0.5)?;
            weighted_sum(t, &v[0].div(&d)?.div(&d.sqrt()?)?, seed)
        });
        assert_grad(&[x], |_, v| v[0].exp()?.mean());
    }

    #[test]
    fn reductions_and_movement(
        d0 in 1usize..5, d1 in 1usize..6, d2 in 1usize..7, axis in 0usize..3,
        seed in any::<u64>(),
    ) {
        let b = cpu();
        let x = rand_tensor(&b, &[d0, d1, d2], seed, 0.0);
        let dims = [d0, d1, d2];
        assert_grad(std::slice::from_ref(&x), |t, v| weighted_sum(t, &v[0].sum_axis(axis)?, seed));
        assert_grad(std::slice::from_ref(&x), |t, v| weighted_sum(t, &v[0].mean_axis(axis)?, seed));
        assert_grad(std::slice::from_ref(&x), |_, v| v[0].square()?.mean());
        assert_grad(std::slice::from_ref(&x), |t, v| weighted_sum(t, &v[0].reshape([d0 * d1, d2])?, seed));
        let start = dims[axis] / 3;
        let len = dims[axis] - start;
        assert_grad(std::slice::from_ref(&x), |t, v| weighted_sum(t, &v[0].narrow(axis, start, len)?, seed));
        let small = rand_tensor(&b, &[d0, 1, d2], seed, 0.0);
        assert_grad(&[small], |t, v| weighted_sum(t, &v[0].broadcast_to([d0, d1, d2])?, seed));
    }

    #[test]
    fn matmul_with_transposes(
        m in 1usize..7, k in 1usize..7, n in 1usize..7, ta: bool, tb: bool, seed in any::<u64>(),
    ) {
        let b = cpu();
        let a = rand_tensor(&b, &if ta { [k, m] } else { [m, k] }, seed, 0.0);
        let bb = rand_tensor(&b, &if tb { [n, k] } else { [k, n] }, seed ^ 7, 0.0);
        assert_grad(&[a, bb], |t, v| weighted_sum(t, &v[0].matmul_t(&v[1], ta, tb)?, seed));
    }

    #[test]
    fn transpose_and_gram_of_one_operand(m in 1usize..7, k in 1usize..9, seed in any::<u64>()) {
        let b = cpu();
        let a = rand_tensor(&b, &[m, k], seed, 0.0);
        assert_grad(std::slice::from_ref(&a), |t, v| weighted_sum(t, &v[0].transpose()?, seed));
        // A·Aᵀ and Aᵀ·A take the one-product backward path.
        assert_grad(std::slice::from_ref(&a), |t, v| weighted_sum(t, &v[0].matmul_t(&v[0], false, true)?, seed));
        assert_grad(std::slice::from_ref(&a), |t, v| weighted_sum(t, &v[0].matmul_t(&v[0], true, false)?, seed));
        assert_grad(std::slice::from_ref(&a), |t, v| weighted_sum(t, &v[0].matmul_t(&v[0].scale(1.0)?, false, true)?, seed));
    }

    #[test]
    fn conv2d_all_operands(
        n in 1usize..3, cin in 1usize..4, cout in 1usize..4, h in 1usize..8, w in 1usize..8,
        k in 1usize..4, stride in 1usize..3, pad in 0usize..3, seed in any::<u64>(),
    ) {
        prop_assume!(h + 2 * pad >= k && w + 2 * pad >= k);
        let b = cpu();
        let x = rand_tensor(&b, &[n, cin, h, w], seed, 0.0);
        let wt = rand_tensor(&b, &[cout, cin, k, k], seed ^ 1, 0.0);
        let bias = rand_tensor(&b, &[cout], seed ^ 2, 0.0);
        assert_grad(&[x, wt, bias], |t, v| {
            weighted_sum(t, &v[0].conv2d(&v[1], Some(&v[2]), stride, pad)?, seed)
        });
    }

    #[test]
    fn conv2d_relu_with_frozen_weights(
        cin in prop_oneof![1usize..4, 16usize..19], cout in prop_oneof![1usize..4, 16usize..19],
        h in 1usize..7, w in 1usize..7, stride in 1usize..3, seed in any::<u64>(),
    ) {
        // Frozen weights take the fused path (Winograd with 16 channels or more, stride 1).
        // Cases with a pre-activation within the step of the ReLU's kink are rare, and the
        // checker recognises them (see `a_pre_activation_at_the_kink`).
        let b = cpu();
        let x = rand_tensor(&b, &[1, cin, h, w], seed, 0.0);
        let wt = rand_tensor(&b, &[cout, cin, 3, 3], seed ^ 1, 0.0);
        let bias = rand_tensor(&b, &[cout], seed ^ 2, 0.0);
        assert_grad(&[x], |t, v| {
            let (wc, bc) = (t.constant(wt.clone()), t.constant(bias.clone()));
            weighted_sum(t, &v[0].conv2d_relu(&wc, Some(&bc), stride, 1)?, seed)
        });
        // And it is the two ops, forward and backward.
        let tape = Tape::new();
        let xv = tape.var(rand_tensor(&b, &[1, cin, h, w], seed ^ 7, 0.0));
        let (wc, bc) = (tape.constant(wt.clone()), tape.constant(bias.clone()));
        let fused = xv.conv2d_relu(&wc, Some(&bc), stride, 1).unwrap();
        let plain = xv.conv2d(&wc, Some(&bc), stride, 1).unwrap().relu().unwrap();
        let (fv, pv) = (fused.value().to_f64().unwrap(), plain.value().to_f64().unwrap());
        for (a, b) in fv.iter().zip(&pv) {
            prop_assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()));
        }
        let gf = tape.backward(&weighted_sum(&tape, &fused, seed).unwrap()).unwrap();
        let gp = tape.backward(&weighted_sum(&tape, &plain, seed).unwrap()).unwrap();
        let (gf, gp) = (gf.get(&xv).unwrap().to_f64().unwrap(), gp.get(&xv).unwrap().to_f64().unwrap());
        for (a, b) in gf.iter().zip(&gp) {
            prop_assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()));
        }
    }

    #[test]
    fn pooling(
        n in 1usize..3, c in 1usize..3, h in 2usize..9, w in 2usize..9,
        k in 1usize..4, stride in 1usize..4, max: bool, seed in any::<u64>(),
    ) {
        prop_assume!(h >= k && w >= k);
        let b = cpu();
        let x = rand_tensor(&b, &[n, c, h, w], seed, 0.0);
        let kind = if max { PoolKind::Max } else { PoolKind::Avg };
        assert_grad(&[x], |t, v| weighted_sum(t, &v[0].pool2d(kind, k, stride)?, seed));
    }

    #[test]
    fn conv_relu_pool_gram_mse(
        cin in 1usize..4, cout in 1usize..5, h in 2usize..9, w in 2usize..9, seed in any::<u64>(),
    ) {
        let b = cpu();
        let x = rand_tensor(&b, &[1, cin, h, w], seed, 0.0);
        let wt = rand_tensor(&b, &[cout, cin, 3, 3], seed ^ 3, 0.0);
        let bias = rand_tensor(&b, &[cout], seed ^ 4, 0.0);
        let (oh, ow) = (h / 2, w / 2);
        let target = rand_tensor(&b, &[cout, cout], seed ^ 5, 0.0);
        assert_grad(&[x, wt, bias], |t, v| {
            let f = v[0].conv2d(&v[1], Some(&v[2]), 1, 1)?.relu()?.pool2d(PoolKind::Max, 2, 2)?;
            let f = f.reshape([cout, oh * ow])?;
            let gram = f.matmul_t(&f, false, true)?.scale(1.0 / (cout * oh * ow) as f64)?;
            gram.sub(&t.constant(target.clone()))?.square()?.mean()
        });
    }
}

/// CI once drew a case with a pre-activation within the central differences' step of the
/// ReLU's kink; here one is made on purpose, on the fused (Winograd) path: the checker must
/// count the inputs it reaches as kinks and pass (`tests/it/gradcheck.rs` checks that a wrong
/// gradient still fails there).
#[test]
fn a_pre_activation_at_the_kink() {
    let b = cpu();
    let (cin, cout, h, w) = (16, 16, 3, 3);
    let x = rand_tensor(&b, &[1, cin, h, w], 11, 0.0);
    let wt = rand_tensor(&b, &[cout, cin, 3, 3], 12, 0.0);
    // Bias channel 0 so that its centre output sits 3e-7 above zero: perturbing an input by
    // ±1e-6 moves it by up to ±1e-6·|w|, across the kink for every weight above 0.3.
    let z = x.conv2d(&wt, None, 1, 1).unwrap().to_f64().unwrap();
    let mut bias = vec![0.5; cout];
    bias[0] = 3e-7 - z[(h / 2) * w + w / 2];
    let bias = Tensor::from_f64(&b, &bias, [cout]).unwrap();
    let report = check(
        std::slice::from_ref(&x),
        |t, v| {
            let (wc, bc) = (t.constant(wt.clone()), t.constant(bias.clone()));
            weighted_sum(t, &v[0].conv2d_relu(&wc, Some(&bc), 1, 1)?, 13)
        },
        Tolerance::default(),
    )
    .unwrap();
    assert!(report.is_ok(), "{report}");
    assert!(report.kinks > 0, "no input reached the kink: {report}");
}
