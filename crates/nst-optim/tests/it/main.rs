//! The optimizers on functions with known minima.

use nst_optim::{Adam, AdamConfig, GradientDescent, Lbfgs, LbfgsConfig, LineSearch, Optimizer};

type Res = Result<(f64, Vec<f32>), Box<dyn std::error::Error>>;

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
fn evals_to_reach<O: Optimizer<Vec<f32>>>(
    mut opt: O,
    x0: &[f32],
    f: fn(&[f32]) -> Res,
    target: f64,
    budget: usize,
) -> Option<usize> {
    let mut x = x0.to_vec();
    let mut evals = 0;
    let mut f = |x: &Vec<f32>| f(x);
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
    let mut f = |_: &Vec<f32>| -> Res { Err("boom".into()) };
    let mut x = vec![1.0f32];
    let err = Lbfgs::new(Default::default())
        .step(&mut x, &mut f)
        .unwrap_err();
    assert_eq!(err.to_string(), "boom");
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
        let mut f = |x: &Vec<f32>| quadratic(x);
        for _ in 0..30 {
            opt.step(&mut x, &mut f).unwrap();
        }
        x
    };
    let a = run();
    assert_eq!(a, run());
    assert!(quadratic(&a).unwrap().0 < 1.0);
}

/// The quadratic with the point and gradient as tensors: the optimizer's state then lives on
/// the backend and only scalars cross to the host.
fn quadratic_tensor<B: nst_tensor::Backend>(
    x: &nst_tensor::Tensor<B>,
) -> Result<(f64, nst_tensor::Tensor<B>), nst_tensor::Error> {
    let (loss, g) = quadratic(&x.to_f32()?).expect("host quadratic");
    Ok((
        loss,
        nst_tensor::Tensor::from_f32(x.backend(), &g, x.dims())?,
    ))
}

/// Runs `steps` steps from `x0` on a host vector and on a tensor of `backend`.
fn host_and_tensor<B: nst_tensor::Backend>(
    backend: &B,
    mut host: impl Optimizer<Vec<f32>>,
    mut dev: impl Optimizer<nst_tensor::Tensor<B>>,
    steps: usize,
) -> (Vec<f32>, Vec<f32>) {
    let x0: Vec<f32> = (0..40).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
    let mut x = x0.clone();
    let mut f = |x: &Vec<f32>| quadratic(x);
    let mut t = nst_tensor::Tensor::from_f32(backend, &x0, [4, 10]).unwrap();
    let mut ft = quadratic_tensor::<B>;
    for _ in 0..steps {
        host.step(&mut x, &mut f).unwrap();
        dev.step(&mut t, &mut ft).unwrap();
    }
    (x, t.to_f32().unwrap())
}

fn assert_close(a: &[f32], b: &[f32], tol: f32) {
    let scale = a.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * scale, "entry {i}: {x} vs {y}");
    }
}

#[test]
fn optimizers_on_tensors_follow_the_host_path() {
    let cpu = nst_cpu::Cpu::new(2);
    let cfg = LbfgsConfig {
        learning_rate: 0.5,
        history: 5,
        ..Default::default()
    };
    let (a, b) = host_and_tensor(&cpu, Lbfgs::new(cfg), Lbfgs::new(cfg), 25);
    assert_close(&a, &b, 1e-4);
    let x0: Vec<f32> = (0..40).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
    let (start, end) = (quadratic(&x0).unwrap().0, quadratic(&b).unwrap().0);
    assert!(end < start * 1e-3, "tensor L-BFGS: loss {start} -> {end}");

    let wolfe = LbfgsConfig {
        line_search: LineSearch::StrongWolfe,
        ..Default::default()
    };
    let (a, b) = host_and_tensor(&cpu, Lbfgs::new(wolfe), Lbfgs::new(wolfe), 15);
    assert_close(&a, &b, 1e-4);

    let adam = AdamConfig {
        learning_rate: 0.1,
        ..Default::default()
    };
    let (a, b) = host_and_tensor(&cpu, Adam::new(adam), Adam::new(adam), 30);
    assert_close(&a, &b, 1e-5);

    let gd = GradientDescent {
        learning_rate: 1e-3,
    };
    let (a, b) = host_and_tensor(&cpu, gd.clone(), gd, 10);
    assert_close(&a, &b, 1e-6);
}

#[test]
fn a_line_search_evaluation_is_reused_by_the_next_tensor_step() {
    let cpu = nst_cpu::Cpu::new(1);
    let mut opt = Lbfgs::new(LbfgsConfig {
        line_search: LineSearch::StrongWolfe,
        ..Default::default()
    });
    let mut x = nst_tensor::Tensor::from_f32(&cpu, &[3.0; 20], [20]).unwrap();
    let mut calls = 0;
    let mut f = |x: &nst_tensor::Tensor<nst_cpu::Cpu>| {
        calls += 1;
        quadratic_tensor(x)
    };
    let mut evals = 0;
    for _ in 0..5 {
        evals += opt.step(&mut x, &mut f).unwrap().evaluations;
    }
    // Every evaluation the steps report happened, and none more: the point a line search
    // ended at is evaluated once, not again by the next step.
    assert_eq!(calls, evals);
    assert!(evals < 5 * 2, "{evals} evaluations in 5 steps");
}

#[test]
fn tensor_steps_move_only_scalars_between_host_and_device() {
    use nst_tensor::{Counting, Tensor};
    let be = Counting::new(nst_cpu::Cpu::new(2));
    let n = 1000;
    let c: Vec<f32> = (0..n).map(|i| 1.0 + 99.0 * i as f32 / n as f32).collect();
    let t: Vec<f32> = (0..n).map(|i| (i % 17) as f32 - 8.0).collect();
    let c = Tensor::from_f32(&be, &c, [n]).unwrap();
    let t = Tensor::from_f32(&be, &t, [n]).unwrap();
    let mut x = Tensor::zeros(&be, [n]).unwrap();
    // Σ c (x - t)², computed on the device; only the loss comes back.
    let mut f = |x: &Tensor<Counting<nst_cpu::Cpu>>| {
        let d = x.sub(&t)?;
        let loss = d.square()?.mul(&c)?.sum()?.scalar()?;
        Ok::<_, nst_tensor::Error>((loss, d.mul(&c)?.scale(2.0)?))
    };
    let wolfe = LbfgsConfig {
        line_search: LineSearch::StrongWolfe,
        ..Default::default()
    };
    let before = be.transfers();
    fn ten_steps<V: nst_optim::Vector, E: From<V::Error> + std::fmt::Debug>(
        mut o: impl Optimizer<V>,
        x: &mut V,
        f: &mut impl FnMut(&V) -> Result<(f64, V), E>,
    ) {
        for _ in 0..10 {
            o.step(x, f).unwrap();
        }
    }
    ten_steps(Lbfgs::new(LbfgsConfig::default()), &mut x, &mut f);
    ten_steps(Lbfgs::new(wolfe), &mut x, &mut f);
    ten_steps(Adam::new(AdamConfig::default()), &mut x, &mut f);
    let after = be.transfers();
    assert_eq!(
        after.uploads, before.uploads,
        "vectors uploaded during the steps"
    );
    assert_eq!(
        after.downloads, before.downloads,
        "vectors downloaded during the steps"
    );
    assert!(after.scalars > before.scalars);
}

#[test]
fn max_step_caps_every_entry_and_moved_keeps_the_history_true() {
    // A steep quadratic: unscaled quasi-Newton steps start far longer than 0.5.
    let f = |x: &Vec<f32>| -> Result<(f64, Vec<f32>), nst_optim::LengthMismatch> {
        let g: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| (i + 1) as f32 * (v - 50.0))
            .collect();
        let l = x
            .iter()
            .enumerate()
            .map(|(i, v)| 0.5 * (i + 1) as f64 * f64::from(v - 50.0).powi(2))
            .sum();
        Ok((l, g))
    };
    let mut opt = Lbfgs::new(LbfgsConfig {
        max_step: 0.5,
        ..Default::default()
    });
    let mut x = vec![0.0f32; 4];
    let mut f = f;
    for _ in 0..400 {
        let before = x.clone();
        opt.step(&mut x, &mut f).unwrap();
        let longest = x
            .iter()
            .zip(&before)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(longest <= 0.5 + 1e-4, "a step of {longest}");
        // Keep the iterate in a box, as a render keeps pixels in range, and say so.
        let clamped: Vec<f32> = x.iter().map(|v| v.min(49.0)).collect();
        let delta: Vec<f32> = clamped.iter().zip(&x).map(|(a, b)| a - b).collect();
        opt.moved(&delta).unwrap();
        x = clamped;
    }
    // The constrained minimum is the box's corner.
    assert!(x.iter().all(|v| (v - 49.0).abs() < 1e-3), "{x:?}");
}

/// Runs L-BFGS with the given recursion on the quadratic over `steps` steps (history 8, so
/// that pairs are evicted), from a fixed start; returns the iterates.
fn lbfgs_path(recursion: nst_optim::Recursion, cfg: LbfgsConfig, steps: usize) -> Vec<Vec<f32>> {
    let mut opt = Lbfgs::new(LbfgsConfig { recursion, ..cfg });
    let mut x: Vec<f32> = (0..40).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
    let mut f = |x: &Vec<f32>| quadratic(x);
    (0..steps)
        .map(|_| {
            opt.step(&mut x, &mut f).unwrap();
            x.clone()
        })
        .collect()
}

#[test]
fn the_compact_recursion_takes_the_two_loop_steps() {
    use nst_optim::Recursion;
    for cfg in [
        LbfgsConfig {
            learning_rate: 0.5,
            history: 8,
            ..Default::default()
        },
        LbfgsConfig {
            history: 8,
            line_search: LineSearch::StrongWolfe,
            ..Default::default()
        },
        LbfgsConfig {
            history: 8,
            max_step: 0.5,
            ..Default::default()
        },
    ] {
        let two = lbfgs_path(Recursion::TwoLoop, cfg, 30);
        let compact = lbfgs_path(Recursion::Compact, cfg, 30);
        // The same direction in exact arithmetic: the paths agree to rounding while the
        // loss is far above its floor.
        for (step, (a, b)) in two.iter().zip(&compact).enumerate().take(12) {
            let scale = a.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-4 * scale,
                    "{cfg:?} step {step}: {x} vs {y}"
                );
            }
        }
        let start = quadratic(&compact[0]).unwrap().0;
        let end = quadratic(compact.last().unwrap()).unwrap().0;
        let end_two = quadratic(two.last().unwrap()).unwrap().0;
        assert!(
            end < start && end <= 2.0 * end_two + 1e-6,
            "{cfg:?}: loss {start} -> {end} (two-loop: {end_two})"
        );
        // Deterministic: the same path twice, to the bit.
        assert_eq!(compact, lbfgs_path(Recursion::Compact, cfg, 30));
    }
}

#[test]
fn a_compact_step_waits_for_the_device_three_times_whatever_the_history() {
    use nst_tensor::{Counting, Tensor};
    // A backend that claims to batch its reductions, so Recursion::Auto picks Compact.
    let be = Counting::new(nst_cpu::Cpu::new(2)).with_batching(true);
    let n = 500;
    let t: Vec<f32> = (0..n).map(|i| (i % 13) as f32 - 6.0).collect();
    let c: Vec<f32> = (0..n).map(|i| 1.0 + 99.0 * i as f32 / n as f32).collect();
    let t = Tensor::from_f32(&be, &t, [n]).unwrap();
    let c = Tensor::from_f32(&be, &c, [n]).unwrap();
    let mut f = |x: &Tensor<Counting<nst_cpu::Cpu>>| {
        let d = x.sub(&t)?;
        // The loss costs one round trip of its own.
        let loss = d.square()?.mul(&c)?.sum()?.scalar()?;
        Ok::<_, nst_tensor::Error>((loss, d.mul(&c)?.scale(2.0)?))
    };
    let cfg = LbfgsConfig {
        history: 100,
        max_step: 1.0,
        ..Default::default()
    };
    let mut x = Tensor::zeros(&be, [n]).unwrap();
    let mut opt = Lbfgs::new(cfg);
    let mut per_step = Vec::new();
    for _ in 0..40 {
        let before = be.transfers().round_trips;
        opt.step(&mut x, &mut f).unwrap();
        per_step.push(be.transfers().round_trips - before);
    }
    assert!(opt.history_len() > 30, "{} pairs", opt.history_len());
    // The loss, the gradient's norms, one batch of dot products, the direction's norms.
    assert!(per_step.iter().all(|&r| r == 4), "{per_step:?}");

    // The two-loop recursion on the same backend waits once per dot product.
    let mut x = Tensor::zeros(&be, [n]).unwrap();
    let mut opt = Lbfgs::new(LbfgsConfig {
        recursion: nst_optim::Recursion::TwoLoop,
        ..cfg
    });
    let mut last = 0;
    for _ in 0..40 {
        let before = be.transfers().round_trips;
        opt.step(&mut x, &mut f).unwrap();
        last = be.transfers().round_trips - before;
    }
    assert!(last > 2 * 30, "{last} round trips in a two-loop step");
}

#[test]
fn a_restored_compact_optimizer_continues_exactly() {
    use nst_optim::{LbfgsState, Recursion};
    let cfg = LbfgsConfig {
        history: 6,
        recursion: Recursion::Compact,
        ..Default::default()
    };
    let mut f = |x: &Vec<f32>| quadratic(x);
    let x0: Vec<f32> = (0..40).map(|i| ((i * 3) % 7) as f32 - 3.0).collect();
    let (mut a, mut xa) = (Lbfgs::new(cfg), x0.clone());
    for _ in 0..10 {
        a.step(&mut xa, &mut f).unwrap();
    }
    let state: LbfgsState<Vec<f32>> = a.state();
    let (mut b, mut xb) = (Lbfgs::from_state(cfg, state).unwrap(), xa.clone());
    for _ in 0..10 {
        a.step(&mut xa, &mut f).unwrap();
        b.step(&mut xb, &mut f).unwrap();
    }
    assert_eq!(xa, xb);
}

/// The line search reports which evaluation was at the point it accepted, and the next step
/// starts from that evaluation instead of evaluating its start again.
#[test]
fn the_line_search_names_the_accepted_evaluation_and_the_next_step_reuses_it() {
    let cfg = LbfgsConfig {
        line_search: LineSearch::StrongWolfe,
        ..Default::default()
    };
    let mut opt = Lbfgs::new(cfg);
    let mut x = vec![-1.2f32, 1.0];
    let mut seen: Vec<(Vec<f32>, f64)> = Vec::new();
    let mut accepted: Option<(Vec<f32>, f64)> = None;
    for i in 0..30 {
        seen.clear();
        let start = x.clone();
        let mut f = |x: &Vec<f32>| {
            let r = rosenbrock(x);
            seen.push((x.clone(), r.as_ref().unwrap().0));
            r
        };
        let step = opt.step(&mut x, &mut f).unwrap();
        assert_eq!(step.evaluations, seen.len());
        if i == 0 {
            assert!(step.start_evaluated);
        }
        // The step's loss is at its start: evaluated now, or kept from the last step.
        if step.start_evaluated {
            assert_eq!(seen[0], (start.clone(), step.loss));
        } else {
            assert_eq!(accepted.take(), Some((start.clone(), step.loss)));
        }
        let Some(k) = step.accepted else {
            assert!(
                step.converged,
                "step {i} moved without naming the evaluation"
            );
            break;
        };
        assert_eq!(
            seen[k].0, x,
            "step {i}: evaluation {k} is not the new point"
        );
        // Strong Wolfe: sufficient decrease, so the accepted loss is below the start's.
        assert!(seen[k].1 < step.loss, "step {i}");
        accepted = Some(seen[k].clone());
    }
    // Moving the point drops the kept evaluation: the next step evaluates its start.
    opt.moved(&vec![0.0, 0.0]).unwrap();
    let mut f = |x: &Vec<f32>| rosenbrock(x);
    assert!(opt.step(&mut x, &mut f).unwrap().start_evaluated);
}

/// A trial point where the objective is not finite (+∞ here) makes the line search shrink its
/// step into the region where it is defined; the accepted point is always finite.
#[test]
fn the_line_search_shrinks_past_infinite_trials() {
    // x² on (−2, 2), undefined beyond: the first trial from 1.5 with a step of 8 lands outside.
    let mut f = |x: &Vec<f32>| -> Res {
        let v = x[0] as f64;
        if v.abs() >= 2.0 {
            return Ok((f64::INFINITY, vec![f32::NAN]));
        }
        Ok((v * v, vec![2.0 * x[0]]))
    };
    let mut opt = Lbfgs::new(LbfgsConfig {
        line_search: LineSearch::StrongWolfe,
        learning_rate: 8.0,
        ..Default::default()
    });
    let mut x = vec![1.5f32];
    let mut losses = Vec::new();
    for _ in 0..5 {
        let step = opt.step(&mut x, &mut f).unwrap();
        losses.push(step.loss);
        assert!(
            x[0].abs() < 2.0,
            "accepted a point outside the domain: {x:?}"
        );
    }
    assert!(losses.windows(2).all(|w| w[1] <= w[0]), "{losses:?}");
    assert!(x[0].abs() < 0.5, "no progress: {x:?} {losses:?}");
}
