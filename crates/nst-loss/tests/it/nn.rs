//! The nearest-neighbour term: its value against a direct computation of the definition, its
//! gradient against finite differences, and the search against a brute-force one.

use crate::{cases, rand_vec};
use nst_autodiff::gradcheck::{check, Tolerance};
use nst_autodiff::Tape;
use nst_cpu::Cpu64;
use nst_loss::nn::{HyperLayer, Hypercolumn, NnTargets, StyleSet};
use nst_loss::Site;
use nst_tensor::Tensor;
use proptest::prelude::*;
use std::sync::Arc;

fn layer(name: &str, stride: usize, channels: usize, multiplier: f64) -> HyperLayer {
    HyperLayer {
        name: name.into(),
        stride,
        channels,
        multiplier,
    }
}

/// Three layers of strides 1, 2 and 8 (pooled 4x4, pooled 2x2, repeated 2x2 onto the
/// working grid of stride 4).
fn layout() -> Hypercolumn {
    Hypercolumn::new(vec![
        layer("a", 1, 3, 1.0),
        layer("b", 2, 4, 0.5),
        layer("c", 8, 5, 2.0),
    ])
    .unwrap()
}

/// The hypercolumn at working position (y, x) by the definition.
fn column(acts: &[(Vec<f64>, [usize; 3])], l: &Hypercolumn, y: usize, x: usize) -> Vec<f64> {
    let mut out = Vec::new();
    // `acts` deepest first, like the layout.
    for (hl, (v, [c, h, w])) in l.layers().iter().zip(acts) {
        let s = hl.stride;
        for ch in 0..*c {
            let value = if s >= 4 {
                let k = s / 4;
                v[(ch * h + y / k) * w + x / k]
            } else {
                let k = 4 / s;
                let mut sum = 0.0;
                for dy in 0..k {
                    for dx in 0..k {
                        sum += v[(ch * h + y * k + dy) * w + x * k + dx];
                    }
                }
                sum / (k * k) as f64
            };
            out.push(value * hl.multiplier / hl.channels as f64);
        }
    }
    out
}

fn unit(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| x / n).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn nn_term_is_its_definition_and_its_gradient_matches(
        gh in 1usize..3, gw in 1usize..3, extra in 0usize..3, m in 1usize..9, seed in any::<u64>(),
    ) {
        let be = Cpu64::new(2);
        let l = layout();
        // The deepest layer's grid is gh x gw; the finer layers may hold a few positions more
        // (odd image sizes), which the term must ignore.
        let dims = [[5, gh, gw], [4, 4 * gh + extra, 4 * gw + extra], [3, 8 * gh + extra, 8 * gw]];
        let acts: Vec<(Vec<f64>, [usize; 3])> = dims
            .iter()
            .enumerate()
            .map(|(i, d)| (rand_vec(d[0] * d[1] * d[2], seed ^ i as u64), *d))
            .collect();
        let inputs: Vec<Tensor<Cpu64>> = acts
            .iter()
            .map(|(v, [c, h, w])| Tensor::from_f64(&be, v, [1, *c, *h, *w]).unwrap())
            .collect();
        let rows: Vec<f32> = rand_vec(m * l.len(), seed ^ 9).iter().map(|v| *v as f32).collect();
        let style = Arc::new(StyleSet::new(&be, &rows, l.len()).unwrap());
        let grid = l.grid((gh, gw));
        prop_assert_eq!(grid, (2 * gh, 2 * gw));
        let index: Vec<u32> = rand_vec(grid.0 * grid.1, seed ^ 11)
            .iter()
            .map(|v| ((v.abs() * m as f64) as u32).min(m as u32 - 1))
            .collect();
        let make = || {
            nst_loss::nn_term(
                l.clone(),
                NnTargets { style: style.clone(), index: index.clone(), grid },
                3.0,
            )
            .unwrap()
        };
        let sites: Vec<Site> = dims.iter().map(|d| Site::whole(d[1], d[2])).collect();
        // The value against the definition.
        let tape = Tape::new();
        let vars: Vec<_> = inputs.iter().map(|t| tape.var(t.clone())).collect();
        let got = make().evaluate(&vars, &sites).unwrap().value().to_f64().unwrap()[0];
        let mut want = 0.0;
        for y in 0..grid.0 {
            for x in 0..grid.1 {
                let h = column(&acts, &l, y, x);
                let j = index[y * grid.1 + x] as usize;
                let t = unit(&rows[j * l.len()..(j + 1) * l.len()].iter().map(|v| *v as f64).collect::<Vec<_>>());
                let dot: f64 = h.iter().zip(&t).map(|(a, b)| a * b).sum();
                let norm = (h.iter().map(|a| a * a).sum::<f64>() + 1e-8).sqrt();
                want += 1.0 - dot / norm;
            }
        }
        want *= 3.0 / (grid.0 * grid.1) as f64;
        prop_assert!((got - want).abs() <= 1e-6 * (1.0 + want.abs()), "{} vs {}", got, want);
        // The gradient with respect to every layer's activation.
        let report = check(&inputs, |_, v| make().evaluate(v, &sites), Tolerance::default()).unwrap();
        prop_assert!(report.is_ok(), "{}", report);
    }

    #[test]
    fn the_search_finds_the_nearest_by_centred_cosine(
        n in 1usize..20, m in 1usize..40, d in 1usize..7, seed in any::<u64>(),
    ) {
        let be = Cpu64::new(1);
        let rows: Vec<f32> = rand_vec(m * d, seed).iter().map(|v| *v as f32).collect();
        let queries: Vec<f32> = rand_vec(n * d, seed ^ 5).iter().map(|v| *v as f32).collect();
        let set = StyleSet::new(&be, &rows, d).unwrap();
        let got = set.nearest(&queries).unwrap();
        let mean: Vec<f64> = (0..d)
            .map(|i| (0..m).map(|j| rows[j * d + i] as f64).sum::<f64>() / m as f64)
            .collect();
        let centred = |r: &[f32]| -> Vec<f64> { r.iter().zip(&mean).map(|(v, mu)| *v as f64 - mu).collect() };
        let cos = |a: &[f64], b: &[f64]| {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
            let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
            if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na * nb) }
        };
        for (i, &j) in got.iter().enumerate() {
            let q = centred(&queries[i * d..(i + 1) * d]);
            let best = (0..m).map(|k| cos(&q, &centred(&rows[k * d..(k + 1) * d]))).fold(f64::MIN, f64::max);
            let picked = cos(&q, &centred(&rows[j as usize * d..(j as usize + 1) * d]));
            prop_assert!(picked >= best - 1e-5, "query {}: picked {} (cos {}), best cos {}", i, j, picked, best);
        }
    }
}

#[test]
fn bad_targets_are_errors() {
    let be = Cpu64::new(1);
    let l = layout();
    let rows = vec![0.5f32; 2 * l.len()];
    let style = Arc::new(StyleSet::new(&be, &rows, l.len()).unwrap());
    let t = |index: Vec<u32>, grid| NnTargets {
        style: style.clone(),
        index,
        grid,
    };
    // An index beyond the set, indices not covering the grid, a set of another length.
    assert!(nst_loss::nn_term(l.clone(), t(vec![0, 2], (1, 2)), 1.0).is_err());
    assert!(nst_loss::nn_term(l.clone(), t(vec![0], (1, 2)), 1.0).is_err());
    let short = Hypercolumn::new(vec![layer("a", 1, 3, 1.0)]).unwrap();
    assert!(nst_loss::nn_term(short, t(vec![0, 1], (1, 2)), 1.0).is_err());
    // Empty sets and layouts, and a layer of another stride, are refused.
    assert!(StyleSet::<Cpu64>::new(&be, &[], 3).is_err());
    assert!(Hypercolumn::new(Vec::new()).is_err());
    assert!(Hypercolumn::new(vec![layer("odd", 3, 3, 1.0)]).is_err());
    assert!(Hypercolumn::new(vec![layer("neg", 2, 3, -1.0)]).is_err());
}
