//! Optimizers over a parameter vector and a closure that returns the loss and its gradient,
//! so research code can use them on anything.
//!
//! The vector is anything that implements [`Vector`]: a host `Vec<f32>`, or a
//! [`nst_tensor::Tensor`] on any backend, in which case the point, the gradient and the
//! optimizer's state (L-BFGS's correction pairs, Adam's moments) stay on that device and only
//! scalars (dot products, norms) come back to the host.
//!
//! Each [`Optimizer::step`] evaluates the objective at the current point (L-BFGS with a line
//! search may evaluate it more often), updates the point, and returns the loss at the point it
//! started from. Dot products and norms accumulate in `f64`.
//!
//! ```
//! use nst_optim::{Lbfgs, LengthMismatch, Optimizer};
//! // f(x) = Σ (x_i - i)²
//! let mut f = |x: &Vec<f32>| -> Result<(f64, Vec<f32>), LengthMismatch> {
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

#![warn(missing_docs)]

mod adam;
mod lbfgs;
mod vector;

pub use adam::{Adam, AdamConfig, AdamState, GradientDescent};
pub use lbfgs::{InvalidState, Lbfgs, LbfgsConfig, LbfgsState, LineSearch, Recursion};
pub use vector::{LengthMismatch, Vector};

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// The loss at the point the step started from.
    pub loss: f64,
    /// How many times the objective was evaluated.
    pub evaluations: usize,
    /// Whether the optimizer found nothing more to do (converged or stalled).
    pub converged: bool,
    /// Whether this step's first evaluation was at its starting point: `false` when the
    /// starting point's loss and gradient were kept from the previous step's line search, so
    /// whatever the caller recorded for that evaluation describes the start.
    pub start_evaluated: bool,
    /// Which of this step's evaluations (0-based, in call order) was at the point it moved
    /// to, when it evaluated that point (a line search does). The next step starts there
    /// without evaluating it again (its `start_evaluated` is `false`) unless the point is
    /// moved in between.
    pub accepted: Option<usize>,
}

/// An optimizer of a parameter vector `V`.
pub trait Optimizer<V: Vector> {
    /// Evaluates `f` at `x` (more often with a line search), updates `x`, and returns the loss
    /// at the starting point. Errors of `f` and of the vector arithmetic are passed through;
    /// `x` is left unchanged when the step fails.
    fn step<E, F>(&mut self, x: &mut V, f: &mut F) -> Result<Step, E>
    where
        E: From<V::Error>,
        F: FnMut(&V) -> Result<(f64, V), E>;
}
