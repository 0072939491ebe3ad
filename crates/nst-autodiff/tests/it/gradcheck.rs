//! The gradient checker itself: a kink within the step is told apart from a wrong gradient.

use nst_autodiff::gradcheck::{check, Tolerance};
use nst_autodiff::Var;
use nst_cpu::Cpu64;
use nst_tensor::{Result, Tensor};

fn vector(v: &[f64]) -> Tensor<Cpu64> {
    Tensor::from_f64(&Cpu64::new(1), v, [v.len()]).unwrap()
}

/// `Σ relu(x)` as a custom op whose gradient is `slope` where `x > 0`.
fn relu_sum<'t>(x: &Var<'t, Cpu64>, slope: f64) -> Result<Var<'t, Cpu64>> {
    let v = x.value().clone();
    let y = v.relu()?.sum()?;
    x.tape().custom(y, &[x], move |g| {
        let mask: Vec<f64> = v
            .to_f64()?
            .iter()
            .map(|&a| if a > 0.0 { slope } else { 0.0 })
            .collect();
        let mask = Tensor::from_f64(v.backend(), &mask, v.shape().clone())?;
        Ok(vec![mask.scale(g.scalar()?)?])
    })
}

#[test]
fn a_kink_within_the_step_is_not_a_failure() {
    // 0.4e-6 and -0.3e-6 lie within the step (1e-6) of ReLU's kink: the central differences
    // are 0.7 and 0.35 where the gradients are 1 and 0.
    let tol = Tolerance::default();
    let x = vector(&[0.4e-6, -0.3e-6, 0.5, -0.5]);
    let report = check(std::slice::from_ref(&x), |_, v| v[0].relu()?.sum(), tol).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.checked, report.kinks), (4, 2), "{report}");
    assert!(report.to_string().contains("2 at a kink"), "{report}");
    // The same through the custom op with the right gradient.
    let report = check(std::slice::from_ref(&x), |_, v| relu_sum(&v[0], 1.0), tol).unwrap();
    assert!(report.is_ok(), "{report}");
}

#[test]
fn a_wrong_gradient_fails_at_a_kink_and_away_from_one() {
    let tol = Tolerance::default();
    // At the kink, a slope that is neither side's.
    let x = vector(&[0.4e-6]);
    let report = check(
        std::slice::from_ref(&x),
        |_, v| relu_sum(&v[0], 0.7001),
        tol,
    )
    .unwrap();
    assert_eq!((report.failures.len(), report.kinks), (1, 0), "{report}");
    // Far from it, a wrong slope.
    let x = vector(&[0.5, 0.25]);
    let report = check(std::slice::from_ref(&x), |_, v| relu_sum(&v[0], 1.001), tol).unwrap();
    assert_eq!((report.failures.len(), report.kinks), (2, 0), "{report}");
    // A smooth function with curvature (the one-sided differences disagree by f''·eps) and a
    // wrong gradient is a failure, not a kink.
    let x = vector(&[3.0]);
    let report = check(
        std::slice::from_ref(&x),
        |_, v| {
            let t = v[0].value().clone();
            let y = t.mul(&t)?.scale(1e6)?.sum()?;
            v[0].tape().custom(y, &[&v[0]], move |g| {
                Ok(vec![t.scale(2e6 * 1.01 * g.scalar()?)?])
            })
        },
        tol,
    )
    .unwrap();
    assert_eq!((report.failures.len(), report.kinks), (1, 0), "{report}");
}
