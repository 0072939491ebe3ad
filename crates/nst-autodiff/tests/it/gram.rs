//! Properties of the Gram matrix G = F·Fᵀ computed through the tape's matmul.

use super::{cases, cpu, rand_tensor};
use nst_autodiff::Tape;
use nst_cpu::Cpu64;
use nst_tensor::Tensor;
use proptest::prelude::*;

fn gram(f: &Tensor<Cpu64>) -> Vec<f64> {
    let tape = Tape::new();
    let v = tape.constant(f.clone());
    v.matmul_t(&v, false, true)
        .unwrap()
        .value()
        .to_f64()
        .unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-10 + 1e-10 * a.abs().max(b.abs())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn gram_properties(c in 1usize..9, n in 1usize..40, s in -3.0f64..3.0, seed in any::<u64>()) {
        let b = cpu();
        let f = rand_tensor(&b, &[c, n], seed, 0.0);
        let fv = f.to_f64().unwrap();
        let g = gram(&f);

        // Equal to a naive double loop.
        for i in 0..c {
            for j in 0..c {
                let naive: f64 = (0..n).map(|p| fv[i * n + p] * fv[j * n + p]).sum();
                prop_assert!(close(g[i * c + j], naive), "G[{i},{j}] {} vs {naive}", g[i * c + j]);
                // Symmetric.
                prop_assert!(close(g[i * c + j], g[j * c + i]));
            }
        }

        // Positive semi-definite: vᵀGv >= 0 for random v.
        let v = rand_tensor(&b, &[c], seed ^ 9, 0.0).to_f64().unwrap();
        let q: f64 = (0..c).flat_map(|i| (0..c).map(move |j| (i, j)))
            .map(|(i, j)| v[i] * g[i * c + j] * v[j]).sum();
        prop_assert!(q >= -1e-12, "vᵀGv = {q}");

        // Invariant to permuting spatial positions (reverse + rotate).
        let rot = (seed as usize) % n;
        let perm: Vec<usize> = (0..n).map(|p| (n - 1 - p + rot) % n).collect();
        let permuted: Vec<f64> = (0..c)
            .flat_map(|i| perm.iter().map(move |&p| (i, p)))
            .map(|(i, p)| fv[i * n + p])
            .collect();
        let gp = gram(&Tensor::from_f64(&b, &permuted, [c, n]).unwrap());
        for (a, bb) in g.iter().zip(&gp) {
            prop_assert!(close(*a, *bb));
        }

        // Scales by s² when the features scale by s.
        let gs = gram(&f.scale(s).unwrap());
        for (a, bb) in g.iter().zip(&gs) {
            prop_assert!(close(a * s * s, *bb));
        }
    }
}
