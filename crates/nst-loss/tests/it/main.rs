//! The losses against naive references, and their gradients against finite differences.

use nst_autodiff::gradcheck::{check, Tolerance};
use nst_autodiff::Tape;
use nst_cpu::Cpu64;
use nst_tensor::Tensor;
use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

mod nn;
mod w2;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

fn rand_vec(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

fn naive_gram(f: &[f64], c: usize, n: usize) -> Vec<f64> {
    let mut g = vec![0.0; c * c];
    for i in 0..c {
        for j in 0..c {
            g[i * c + j] =
                (0..n).map(|p| f[i * n + p] * f[j * n + p]).sum::<f64>() / (c * n) as f64;
        }
    }
    g
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-10 * (1.0 + a.abs().max(b.abs()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn losses_match_naive_references(c in 1usize..6, h in 1usize..7, w in 1usize..7, wt in 0.1f64..10.0, seed in any::<u64>()) {
        let be = Cpu64::new(2);
        let n = h * w;
        let fv = rand_vec(c * n, seed);
        let pv = rand_vec(c * n, seed ^ 1);
        let av = rand_vec(c * c, seed ^ 2);
        let f = Tensor::from_f64(&be, &fv, [1, c, h, w]).unwrap();
        let p = Tensor::from_f64(&be, &pv, [1, c, h, w]).unwrap();
        let a = Tensor::from_f64(&be, &av, [c, c]).unwrap();
        let tape = Tape::new();
        let x = tape.var(f.clone());

        let g = nst_loss::gram(&x).unwrap().value().to_f64().unwrap();
        let ng = naive_gram(&fv, c, n);
        for (u, v) in g.iter().zip(&ng) { prop_assert!(close(*u, *v)); }
        prop_assert_eq!(nst_loss::gram_tensor(&f).unwrap().to_f64().unwrap(), g);

        let cl = nst_loss::content(&x, &p, wt).unwrap().value().scalar().unwrap();
        let ncl = wt * fv.iter().zip(&pv).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / (c * n) as f64;
        prop_assert!(close(cl, ncl), "content {} vs {}", cl, ncl);

        let sl = nst_loss::style(&x, &a, wt).unwrap().value().scalar().unwrap();
        let nsl = wt * ng.iter().zip(&av).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / (c * c) as f64;
        prop_assert!(close(sl, nsl), "style {} vs {}", sl, nsl);

        let tv = nst_loss::total_variation(&x, wt).unwrap().value().scalar().unwrap();
        let mut ntv = 0.0;
        for ch in 0..c {
            for i in 0..h {
                for j in 0..w {
                    let at = |i: usize, j: usize| fv[(ch * h + i) * w + j];
                    if i + 1 < h { ntv += (at(i + 1, j) - at(i, j)).powi(2); }
                    if j + 1 < w { ntv += (at(i, j + 1) - at(i, j)).powi(2); }
                }
            }
        }
        prop_assert!(close(tv, wt * ntv), "tv {} vs {}", tv, wt * ntv);
    }

    #[test]
    fn loss_gradients_match_finite_differences(c in 1usize..5, h in 1usize..6, w in 1usize..6, seed in any::<u64>()) {
        let be = Cpu64::new(2);
        let f = Tensor::from_f64(&be, &rand_vec(c * h * w, seed), [1, c, h, w]).unwrap();
        let p = Tensor::from_f64(&be, &rand_vec(c * h * w, seed ^ 1), [1, c, h, w]).unwrap();
        let a = Tensor::from_f64(&be, &rand_vec(c * c, seed ^ 2), [c, c]).unwrap();
        let tol = Tolerance::default();
        for (name, report) in [
            ("content", check(std::slice::from_ref(&f), |_, v| nst_loss::content(&v[0], &p, 3.0), tol)),
            ("style", check(std::slice::from_ref(&f), |_, v| nst_loss::style(&v[0], &a, 7.0), tol)),
            ("tv", check(std::slice::from_ref(&f), |_, v| nst_loss::total_variation(&v[0], 0.5), tol)),
            ("guided gram", check(std::slice::from_ref(&f), |_, v| {
                let m: Vec<f64> = rand_vec(h * w, seed ^ 3).iter().map(|x| x.abs() + 0.1).collect();
                let m = Tensor::from_f64(&be, &m, [1, 1, h, w])?;
                nst_loss::guided_gram(&v[0], &m)?.sub(&v[0].tape().constant(a.clone()))?.square()?.sum()
            }, tol)),
            ("masked gram term", check(std::slice::from_ref(&f), |_, v| {
                let m: Vec<f64> = rand_vec(h * w, seed ^ 3).iter().map(|x| x.abs() + 0.1).collect();
                let mask = Some(Tensor::from_f64(&be, &m, [1, 1, h, w])?);
                let regions = vec![
                    nst_loss::GramRegion { mask, target: a.clone(), weight: 0.5 },
                    nst_loss::GramRegion { mask: None, target: a.scale(2.0)?, weight: 0.5 },
                ];
                let term = nst_loss::gram_term("l", regions, 4.0)?;
                term.evaluate(&v[..1], &[nst_loss::Site::whole(h, w)])
            }, tol)),
            ("temporal term", check(std::slice::from_ref(&f), |_, v| {
                let c1 = Tensor::from_f64(&be, &rand_vec(h * w, seed ^ 4), [1, 1, h, w])?.square()?;
                let term = nst_loss::temporal_term(p.clone(), &c1, 6.0)?;
                term.evaluate(&v[..1], &[nst_loss::Site::whole(h, w)])
            }, tol)),
            ("sum", check(std::slice::from_ref(&f), |_, v| {
                nst_loss::content(&v[0], &p, 2.0)?
                    .add(&nst_loss::style(&v[0], &a, 5.0)?)?
                    .add(&nst_loss::total_variation(&v[0], 0.1)?)
            }, tol)),
        ] {
            let report = report.unwrap();
            prop_assert!(report.is_ok(), "{}: {}", name, report);
        }
    }
}

/// With a mask of ones the guided Gram matrix is the plain one, bit for bit; masked, it is
/// the definition's `F̂ diag(m²) F̂ᵀ / (C Σ m²)`.
#[test]
fn the_guided_gram_is_the_definition() {
    let be = Cpu64::new(1);
    let (c, h, w) = (3, 4, 5);
    let f = Tensor::from_f64(&be, &rand_vec(c * h * w, 9), [1, c, h, w]).unwrap();
    let tape = Tape::new();
    let v = tape.var(f.clone());
    let ones = Tensor::from_f64(&be, &vec![1.0; h * w], [1, 1, h, w]).unwrap();
    let plain = nst_loss::gram(&v).unwrap().value().to_f64().unwrap();
    let guided = nst_loss::guided_gram(&v, &ones)
        .unwrap()
        .value()
        .to_f64()
        .unwrap();
    assert_eq!(plain, guided);
    let m: Vec<f64> = (0..h * w).map(|p| (p % 3) as f64 * 0.5).collect();
    let mt = Tensor::from_f64(&be, &m, [1, 1, h, w]).unwrap();
    let got = nst_loss::guided_gram(&v, &mt)
        .unwrap()
        .value()
        .to_f64()
        .unwrap();
    let x = f.to_f64().unwrap();
    let m2: f64 = m.iter().map(|v| v * v).sum();
    for i in 0..c {
        for j in 0..c {
            let want: f64 = (0..h * w)
                .map(|p| x[i * h * w + p] * x[j * h * w + p] * m[p] * m[p])
                .sum::<f64>()
                / (c as f64 * m2);
            assert!((got[i * c + j] - want).abs() < 1e-12 * want.abs().max(1.0));
        }
    }
    let empty = Tensor::from_f64(&be, &vec![0.0; h * w], [1, 1, h, w]).unwrap();
    assert!(nst_loss::guided_gram(&v, &empty).is_err());
    let short = Tensor::from_f64(&be, &[1.0; 3], [1, 1, 1, 3]).unwrap();
    assert!(nst_loss::guided_gram(&v, &short).is_err());
}

#[test]
fn bad_shapes_are_errors() {
    let be = Cpu64::new(1);
    let tape = Tape::new();
    let x = tape.var(Tensor::from_f64(&be, &[1.0; 8], [2, 4]).unwrap());
    assert!(nst_loss::gram(&x).is_err());
    assert!(nst_loss::total_variation(&x, 1.0).is_err());
}
