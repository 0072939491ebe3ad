//! The optimizers on functions with known minima.

use nst_optim::{Adam, AdamConfig, GradientDescent, Lbfgs, LbfgsConfig, LineSearch, Optimizer};

type Res = Result<(f64, Vec<f32>), String>;

/// An ill-conditioned quadratic Σ c_i (x_i − i)² with c_i from 1 to 100.
fn quadratic(x: &[f32]) -> Res {
    let n = x.len() as f64;
    let c = |i: usize| 1.0 + 99.0 * i as f64 / (n - 1.0);
    let loss = x
        .iter()
        .enumerate()
        .map(|(i, &v)| c(i) * (v as f64 - i as f64).powi(2))
        .sum();
    let g = x
        .iter()
        .enumerate()
        .map(|(i, &v)| (2.0 * c(i) * (v as f64 - i as f64)) as f32)
        .collect();
    Ok((loss, g))
}

fn rosenbrock(x: &[f32]) -> Res {
    let (a, b) = (x[0] as f64, x[1] as f64);
    let loss = (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2);
    let ga = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
    let gb = 200.0 * (b - a * a);
    Ok((loss, vec![ga as f32, gb as f32]))
}

/// Runs until the loss falls below `target`; returns the evaluations used (None if never).
fn evals_to_reach<O: Optimizer>(
    mut opt: O,
    x0: &[f32],
    f: fn(&[f32]) -> Res,
    target: f64,
    budget: usize,
) -> Option<usize> {
    let mut x = x0.to_vec();
    let mut evals = 0;
    let mut f = f;
    while evals < budget {
        let step = opt.step(&mut x, &mut f).unwrap();
        evals += step.evaluations;
        if f(&x).unwrap().0 < target {
            return Some(evals);
        }
    }
    None
}

#[test]
fn lbfgs_needs_far_fewer_evaluations_than_gradient_descent_on_a_quadratic() {
    let x0 = vec![-5.0f32; 20];
    let lbfgs = evals_to_reach(
        Lbfgs::new(LbfgsConfig {
            learning_rate: 0.5,
            ..Default::default()
        }),
        &x0,
        quadratic,
        1e-6,
        2000,
    )
    .expect("lbfgs converges");
    // The largest stable step of gradient descent is 1/L with L = 200.
    let gd = evals_to_reach(
        GradientDescent {
            learning_rate: 1.0 / 200.0,
        },
        &x0,
        quadratic,
        1e-6,
        20000,
    )
    .expect("gd converges");
    assert!(lbfgs * 10 < gd, "lbfgs {lbfgs} vs gd {gd} evaluations");
}

#[test]
fn lbfgs_with_line_search_solves_rosenbrock() {
    let cfg = LbfgsConfig {
        line_search: LineSearch::StrongWolfe,
        ..Default::default()
    };
    let n =
        evals_to_reach(Lbfgs::new(cfg), &[-1.2, 1.0], rosenbrock, 1e-8, 400).expect("converges");
    let gd = evals_to_reach(
        GradientDescent {
            learning_rate: 1e-3,
        },
        &[-1.2, 1.0],
        rosenbrock,
        1e-8,
        20000,
    );
    assert!(gd.is_none_or(|gd| n * 10 < gd), "lbfgs {n} vs gd {gd:?}");
}

#[test]
fn lbfgs_with_line_search_on_the_quadratic_converges_fast() {
    let cfg = LbfgsConfig {
        line_search: LineSearch::StrongWolfe,
        ..Default::default()
    };
    let n = evals_to_reach(Lbfgs::new(cfg), &[0.0; 20], quadratic, 1e-8, 300).expect("converges");
    assert!(n < 100, "{n} evaluations");
}

#[test]
fn adam_reaches_the_minimum() {
    let cfg = AdamConfig {
        learning_rate: 0.05,
        ..Default::default()
    };
    let n = evals_to_reach(Adam::new(cfg), &[-1.2, 1.0], rosenbrock, 1e-4, 20000);
    assert!(n.is_some());
}

#[test]
fn errors_of_the_objective_pass_through() {
    let mut f = |_: &[f32]| -> Res { Err("boom".into()) };
    let mut x = vec![1.0f32];
    let err = Lbfgs::new(Default::default())
        .step(&mut x, &mut f)
        .unwrap_err();
    assert_eq!(err, "boom");
    assert_eq!(x, vec![1.0]);
}

#[test]
fn history_is_bounded_and_steps_are_deterministic() {
    let run = || {
        let mut opt = Lbfgs::new(LbfgsConfig {
            history: 3,
            learning_rate: 0.5,
            ..Default::default()
        });
        let mut x = vec![0.0f32; 20];
        let mut f = quadratic;
        for _ in 0..30 {
            opt.step(&mut x, &mut f).unwrap();
        }
        x
    };
    let a = run();
    assert_eq!(a, run());
    assert!(quadratic(&a).unwrap().0 < 1.0);
}
