//! Optimizers over a flat `f32` parameter vector and a closure that returns the loss and its
//! gradient, so research code can use them on anything.
//!
//! Each [`Optimizer::step`] evaluates the objective at the current point (L-BFGS with a line
//! search may evaluate it more often), updates the point in place, and returns the loss at
//! the point it started from. Vector arithmetic accumulates in `f64`.
//!
//! ```
//! use nst_optim::{Lbfgs, Optimizer};
//! // f(x) = Σ (x_i - i)²
//! let mut f = |x: &[f32]| -> Result<(f64, Vec<f32>), ()> {
//!     let loss = x.iter().enumerate().map(|(i, v)| (*v as f64 - i as f64).powi(2)).sum();
//!     Ok((loss, x.iter().enumerate().map(|(i, v)| 2.0 * (v - i as f32)).collect()))
//! };
//! let mut x = vec![5.0f32; 4];
//! let mut opt = Lbfgs::new(Default::default());
//! for _ in 0..20 {
//!     opt.step(&mut x, &mut f).unwrap();
//! }
//! assert!((x[3] - 3.0).abs() < 1e-4);
//! ```

mod adam;
mod lbfgs;

pub use adam::{Adam, AdamConfig, GradientDescent};
pub use lbfgs::{Lbfgs, LbfgsConfig, LineSearch};

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// The loss at the point the step started from.
    pub loss: f64,
    /// How many times the objective was evaluated.
    pub evaluations: usize,
    /// Whether the optimizer found nothing more to do (converged or stalled).
    pub converged: bool,
}

/// An optimizer of a flat parameter vector.
pub trait Optimizer {
    /// Evaluates `f` at `x` (more often with a line search), updates `x` in place, and
    /// returns the loss at the starting point. Errors of `f` are passed through.
    fn step<E, F>(&mut self, x: &mut [f32], f: &mut F) -> Result<Step, E>
    where
        F: FnMut(&[f32]) -> Result<(f64, Vec<f32>), E>;
}

/// `Σ a_i·b_i` accumulated in `f64` over 8 independent lanes (so it vectorizes), then the
/// lanes in order: the result depends only on the inputs.
pub(crate) fn dot_with<T: Copy + Into<f64>>(a: &[f32], b: &[T]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0.0f64; 8];
    let body = n / 8 * 8;
    for (x, y) in a[..body].chunks_exact(8).zip(b[..body].chunks_exact(8)) {
        for i in 0..8 {
            lanes[i] += x[i] as f64 * y[i].into();
        }
    }
    for (i, (x, y)) in a[body..].iter().zip(&b[body..]).enumerate() {
        lanes[i] += *x as f64 * (*y).into();
    }
    lanes.iter().sum()
}

/// `Σ a_i·b_i` of two `f32` vectors, accumulated in `f64`.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
    dot_with(a, b)
}
