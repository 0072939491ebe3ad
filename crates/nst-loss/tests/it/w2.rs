//! The W2 style loss against a reference written from its definition with a Jacobi
//! eigensolver (independent of nst-linalg's), and its gradients against finite differences,
//! including layers with fewer positions than channels.

use crate::{cases, rand_vec};
use nst_autodiff::gradcheck::{check, Tolerance};
use nst_cpu::Cpu64;
use nst_loss::{Moments, W2Target};
use nst_tensor::Tensor;
use proptest::prelude::*;

/// Eigenvalues and eigenvectors (columns, row-major) of a symmetric matrix by cyclic Jacobi
/// rotations.
fn jacobi(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _ in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum().max(0.0) * 2.0 - 1.0;
                let t = t / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

fn sqrtm(a: &[f64], n: usize) -> Vec<f64> {
    let (l, v) = jacobi(a, n);
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = (0..n)
                .map(|k| v[i * n + k] * l[k].max(0.0).sqrt() * v[j * n + k])
                .sum();
        }
    }
    out
}

fn mul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = (0..n).map(|k| a[i * n + k] * b[k * n + j]).sum();
        }
    }
    out
}

/// Mean and covariance of `f` (`c x p`) straight from the definition.
fn gaussian(f: &[f64], c: usize, p: usize) -> (Vec<f64>, Vec<f64>) {
    let mu: Vec<f64> = (0..c)
        .map(|i| f[i * p..(i + 1) * p].iter().sum::<f64>() / p as f64)
        .collect();
    let mut cov = vec![0.0; c * c];
    for i in 0..c {
        for j in 0..c {
            cov[i * c + j] = (0..p)
                .map(|q| (f[i * p + q] - mu[i]) * (f[j * p + q] - mu[j]))
                .sum::<f64>()
                / p as f64;
        }
    }
    (mu, cov)
}

/// The W2 term of `docs/objective.md`, written from the definition.
fn reference(x: &[f64], s: &[f64], c: usize, px: usize, ps: usize) -> f64 {
    let (mu, mut sigma) = gaussian(x, c, px);
    let (mus, mut sigmas) = gaussian(s, c, ps);
    let eps = 1e-3 * (0..c).map(|i| sigmas[i * c + i]).sum::<f64>() / c as f64;
    // A constant style (zero covariance) gets the ridge 1e-3 itself.
    let eps = if eps > 0.0 { eps } else { 1e-3 };
    for i in 0..c {
        sigma[i * c + i] += eps;
        sigmas[i * c + i] += eps;
    }
    let root = sqrtm(&sigmas, c);
    let cross = sqrtm(&mul(&mul(&root, &sigma, c), &root, c), c);
    let tr = |m: &[f64]| (0..c).map(|i| m[i * c + i]).sum::<f64>();
    let mean: f64 = mu
        .iter()
        .zip(&mus)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        / c as f64;
    mean + (tr(&sigma) + tr(&sigmas) - 2.0 * tr(&cross)) / c as f64
}

fn positive(n: usize, seed: u64) -> Vec<f64> {
    // ReLU-like activations: non-negative, some exactly zero.
    rand_vec(n, seed)
        .iter()
        .map(|v| (v + 0.2).max(0.0))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn w2_matches_the_definition(c in 1usize..7, px in 1usize..12, ps in 1usize..12, wt in 0.1f64..10.0, seed in any::<u64>()) {
        let be = Cpu64::new(1);
        let (x, s) = (positive(c * px, seed), positive(c * ps, seed ^ 5));
        let target = W2Target::new(&Moments::of(&Tensor::from_f64(&be, &s, [c, 1, ps]).unwrap()).unwrap()).unwrap();
        let tape = nst_autodiff::Tape::new();
        let f = tape.var(Tensor::from_f64(&be, &x, [1, c, px, 1]).unwrap());
        let got = nst_loss::w2_style(&f, &target, wt).unwrap().value().scalar().unwrap();
        let want = wt * reference(&x, &s, c, px, ps);
        prop_assert!((got - want).abs() <= 1e-9 * (1.0 + want.abs()), "{} vs {}", got, want);
    }

    #[test]
    fn w2_gradients_match_finite_differences(c in 1usize..6, px in 1usize..9, seed in any::<u64>()) {
        // px < c makes the covariance rank-deficient before the ridge.
        let be = Cpu64::new(1);
        let s = positive(c * 7, seed ^ 9);
        let target = W2Target::new(&Moments::of(&Tensor::from_f64(&be, &s, [c, 7, 1]).unwrap()).unwrap()).unwrap();
        let f = Tensor::from_f64(&be, &positive(c * px, seed), [1, c, 1, px]).unwrap();
        let tol = Tolerance { eps: 1e-6, atol: 1e-7, rtol: 1e-4, max_elements: 64 };
        let report = check(std::slice::from_ref(&f), |_, v| nst_loss::w2_style(&v[0], &target, 3.0), tol).unwrap();
        prop_assert!(report.is_ok(), "{}", report);
    }

    #[test]
    fn trace_sqrtm_gradients_match_finite_differences(n in 1usize..7, seed in any::<u64>()) {
        // A positive definite matrix: B Bᵀ + 0.1 I.
        let be = Cpu64::new(1);
        let b = rand_vec(n * n, seed);
        let mut m = mul(&b, &(0..n * n).map(|i| b[(i % n) * n + i / n]).collect::<Vec<_>>(), n);
        for i in 0..n {
            m[i * n + i] += 0.1;
        }
        let t = Tensor::from_f64(&be, &m, [n, n]).unwrap();
        let report = check(std::slice::from_ref(&t), |_, v| nst_loss::trace_sqrtm(&v[0]), Tolerance::default()).unwrap();
        prop_assert!(report.is_ok(), "{}", report);
    }
}

#[test]
fn blended_moments_are_the_mixture_moments() {
    // Two styles with equal positions: the blend at ½/½ is the moments of both together.
    let be = Cpu64::new(1);
    let (c, p) = (4, 6);
    let (a, b) = (positive(c * p, 1), positive(c * p, 2));
    let ma = Moments::of(&Tensor::from_f64(&be, &a, [c, 1, p]).unwrap()).unwrap();
    let mb = Moments::of(&Tensor::from_f64(&be, &b, [c, 1, p]).unwrap()).unwrap();
    let mut both = Vec::with_capacity(2 * c * p);
    for i in 0..c {
        both.extend_from_slice(&a[i * p..(i + 1) * p]);
        both.extend_from_slice(&b[i * p..(i + 1) * p]);
    }
    let mab = Moments::of(&Tensor::from_f64(&be, &both, [c, 1, 2 * p]).unwrap()).unwrap();
    let blend = Moments::blend(&[(0.5, &ma), (0.5, &mb)]).unwrap();
    for (x, y) in blend
        .mean
        .iter()
        .chain(&blend.second)
        .zip(mab.mean.iter().chain(&mab.second))
    {
        assert!((x - y).abs() < 1e-12, "{x} vs {y}");
    }
    let three = Moments::of(&Tensor::from_f64(&be, &[1.0; 3], [3, 1, 1]).unwrap()).unwrap();
    assert!(Moments::blend(&[(0.5, &ma), (0.5, &three)]).is_err());
    assert!(Moments::blend(&[]).is_err());
}

#[test]
fn the_style_itself_is_at_distance_zero_and_others_are_not() {
    let be = Cpu64::new(1);
    let s = Tensor::from_f64(&be, &positive(8 * 20, 3), [1, 8, 4, 5]).unwrap();
    let target = W2Target::new(&Moments::of(&s).unwrap()).unwrap();
    let at = |t: &Tensor<Cpu64>| target.evaluate(&Moments::of(t).unwrap()).unwrap();
    let zero = at(&s);
    assert!(zero.value.abs() < 1e-12, "{}", zero.value);
    assert!(zero
        .d_mean
        .iter()
        .chain(&zero.d_second)
        .all(|g| g.abs() < 1e-9));
    let other = Tensor::from_f64(&be, &positive(8 * 20, 4), [1, 8, 4, 5]).unwrap();
    assert!(at(&other).value > 1e-3);
    // Moments of the wrong size are refused.
    let small = Tensor::from_f64(&be, &positive(3 * 4, 4), [1, 3, 2, 2]).unwrap();
    assert!(target.evaluate(&Moments::of(&small).unwrap()).is_err());
    assert!(nst_loss::trace_sqrtm(
        &nst_autodiff::Tape::new().var(Tensor::from_f64(&be, &[1.0; 6], [2, 3]).unwrap())
    )
    .is_err());
}
