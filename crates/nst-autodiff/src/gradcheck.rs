//! Finite-difference gradient checks: the tape's gradients against central differences.
//!
//! Use a backend in `f64` (e.g. `nst_cpu::Cpu64`) so that the differences are meaningful.
//!
//! Functions with kinks (ReLU, max pooling) are checked too. When a kink lies within the step,
//! the central difference measures neither side's slope, but the one-sided difference on the
//! element's own side still measures its slope exactly. So an element whose central
//! difference disagrees, but whose gradient equals one of the two one-sided differences while
//! those two disagree with each other, is counted in [`Report::kinks`] and not as a failure.
//! A wrong gradient in a smooth region matches neither side and still fails.

use crate::{Tape, Var};
use nst_tensor::{Backend, Result, Tensor};
use std::fmt;

/// How to compare: an element passes when `|numeric - analytic| <= atol + rtol·|numeric|`.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// Step of the central difference.
    pub eps: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance.
    pub rtol: f64,
    /// Largest number of elements checked per input (a fixed pseudo-random sample above it).
    pub max_elements: usize,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            eps: 1e-6,
            atol: 1e-6,
            rtol: 1e-4,
            max_elements: 64,
        }
    }
}

/// One element whose analytic and numeric gradients disagree (or the worst one seen).
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    /// Which input.
    pub input: usize,
    /// The flat element index in that input.
    pub element: usize,
    /// The central-difference estimate.
    pub numeric: f64,
    /// The tape's gradient.
    pub analytic: f64,
}

/// The outcome of [`check`].
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Elements compared.
    pub checked: usize,
    /// The elements that failed the tolerance.
    pub failures: Vec<Mismatch>,
    /// The largest absolute difference seen (elements at a kink left out).
    pub max_abs_err: f64,
    /// Elements with a kink within the step: the central difference disagreed, the one-sided
    /// differences disagreed with each other, and the gradient equalled one of them (counted
    /// in `checked`, not in `failures`).
    pub kinks: usize,
}

impl Report {
    /// Whether every checked element passed.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} elements checked, {} failed, max abs error {:.3e}",
            self.checked,
            self.failures.len(),
            self.max_abs_err
        )?;
        if self.kinks > 0 {
            write!(f, " ({} at a kink: one-sided slope matched)", self.kinks)?;
        }
        for m in self.failures.iter().take(5) {
            write!(
                f,
                "\n  input {} element {}: numeric {:.9e}, analytic {:.9e}",
                m.input, m.element, m.numeric, m.analytic
            )?;
        }
        Ok(())
    }
}

/// Picks up to `max` distinct element indices out of `n`, deterministically.
fn sample(n: usize, max: usize, seed: u64) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < max {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        picked.insert((state >> 33) as usize % n);
    }
    picked.into_iter().collect()
}

/// Compares the gradient of the scalar `f(inputs)` w.r.t. every input against central
/// differences. `f` builds its loss from the variables it is given on the tape it is given.
pub fn check<B, F>(inputs: &[Tensor<B>], f: F, tol: Tolerance) -> Result<Report>
where
    B: Backend,
    F: for<'t> Fn(&'t Tape<B>, &[Var<'t, B>]) -> Result<Var<'t, B>>,
{
    let tape = Tape::new();
    let vars: Vec<_> = inputs.iter().map(|t| tape.var(t.clone())).collect();
    let loss = f(&tape, &vars)?;
    let grads = tape.backward(&loss)?;
    let analytic: Vec<Vec<f64>> = vars
        .iter()
        .map(|v| match grads.get(v) {
            Some(g) => g.to_f64(),
            None => Ok(vec![0.0; v.value().numel()]),
        })
        .collect::<Result<_>>()?;

    let eval = |xs: &[Tensor<B>]| -> Result<f64> {
        let tape = Tape::new();
        let vars: Vec<_> = xs.iter().map(|t| tape.constant(t.clone())).collect();
        f(&tape, &vars)?.value().scalar()
    };

    let mut report = Report::default();
    let centre = eval(inputs)?;
    for (i, input) in inputs.iter().enumerate() {
        let base = input.to_f64()?;
        for e in sample(base.len(), tol.max_elements, i as u64 + 1) {
            let at = |delta: f64| -> Result<f64> {
                let mut data = base.clone();
                data[e] += delta;
                let mut xs = inputs.to_vec();
                xs[i] = Tensor::from_f64(input.backend(), &data, input.shape().clone())?;
                eval(&xs)
            };
            let (up, down) = (at(tol.eps)?, at(-tol.eps)?);
            let numeric = (up - down) / (2.0 * tol.eps);
            let allowed = tol.atol + tol.rtol * numeric.abs();
            let a = analytic[i][e];
            let err = (numeric - a).abs();
            report.checked += 1;
            if err <= allowed {
                report.max_abs_err = report.max_abs_err.max(err);
                continue;
            }
            let (forward, backward) = ((up - centre) / tol.eps, (centre - down) / tol.eps);
            let close = |slope: f64| (slope - a).abs() <= tol.atol + tol.rtol * slope.abs();
            if (forward - backward).abs() > allowed && (close(forward) || close(backward)) {
                report.kinks += 1;
            } else {
                report.max_abs_err = report.max_abs_err.max(err);
                report.failures.push(Mismatch {
                    input: i,
                    element: e,
                    numeric,
                    analytic: a,
                });
            }
        }
    }
    Ok(report)
}
