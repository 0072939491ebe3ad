//! Adam and plain gradient descent.

use crate::lbfgs::same_lengths;
use crate::{InvalidState, Optimizer, Step, Vector};

/// Adam's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Step size.
    pub learning_rate: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub epsilon: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            learning_rate: 10.0,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        }
    }
}

/// Adam (Kingma & Ba) with bias correction; its moments live wherever the vector does.
///
/// ```
/// use nst_optim::{Adam, AdamConfig, LengthMismatch, Optimizer};
/// // f(x) = Σ x², from x = (3, -4).
/// let mut f = |x: &Vec<f32>| -> Result<(f64, Vec<f32>), LengthMismatch> {
///     Ok((x.iter().map(|v| (*v as f64).powi(2)).sum(), x.iter().map(|v| 2.0 * v).collect()))
/// };
/// let mut x = vec![3.0f32, -4.0];
/// let mut opt = Adam::new(AdamConfig { learning_rate: 0.1, ..Default::default() });
/// let first = opt.step(&mut x, &mut f).unwrap().loss;
/// for _ in 0..300 {
///     opt.step(&mut x, &mut f).unwrap();
/// }
/// assert_eq!(first, 25.0);
/// assert!(x.iter().all(|v| v.abs() < 0.1), "{x:?}");
/// // Its whole state can be saved and restored (a checkpoint).
/// let again = Adam::from_state(AdamConfig::default(), opt.state()).unwrap();
/// assert_eq!(again.state(), opt.state());
/// ```
#[derive(Clone, Debug)]
pub struct Adam<V = Vec<f32>> {
    cfg: AdamConfig,
    /// The first and second moments, once the first gradient is known.
    moments: Option<(V, V)>,
    t: i32,
}

impl<V: Vector> Adam<V> {
    /// A fresh optimizer.
    pub fn new(cfg: AdamConfig) -> Self {
        Adam {
            cfg,
            moments: None,
            t: 0,
        }
    }

    /// Forgets the moments (e.g. after the problem changed size).
    pub fn reset(&mut self) {
        self.moments = None;
        self.t = 0;
    }
}

/// Adam's whole state between steps, to save and restore it ([`Adam::from_state`]).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState<V> {
    /// The first and second moments (`None` before the first step).
    pub moments: Option<(V, V)>,
    /// The number of steps taken.
    pub steps: u32,
}

impl<V> AdamState<V> {
    /// The same state with every vector converted (e.g. device tensors to host vectors).
    pub fn try_map<W, E>(self, mut f: impl FnMut(V) -> Result<W, E>) -> Result<AdamState<W>, E> {
        Ok(AdamState {
            moments: match self.moments {
                Some((m, v)) => Some((f(m)?, f(v)?)),
                None => None,
            },
            steps: self.steps,
        })
    }
}

impl<V: Vector> Adam<V> {
    /// The state to save.
    pub fn state(&self) -> AdamState<V> {
        AdamState {
            moments: self.moments.clone(),
            steps: self.t as u32,
        }
    }

    /// An optimizer continuing from a saved state; refused when the moments have different
    /// lengths, when there are moments but no steps (or steps but no moments), or when the
    /// step count is out of range.
    pub fn from_state(cfg: AdamConfig, state: AdamState<V>) -> Result<Self, InvalidState> {
        let t = i32::try_from(state.steps)
            .map_err(|_| InvalidState(format!("{} steps", state.steps)))?;
        if state.moments.is_some() != (t > 0) {
            return Err(InvalidState(format!(
                "{t} steps with{} moments",
                if state.moments.is_some() { "" } else { "out" }
            )));
        }
        same_lengths(state.moments.iter().flat_map(|(m, v)| [m, v]))?;
        Ok(Adam {
            cfg,
            moments: state.moments,
            t,
        })
    }
}

impl<V: Vector> Optimizer<V> for Adam<V> {
    fn step<E, F>(&mut self, x: &mut V, f: &mut F) -> Result<Step, E>
    where
        E: From<V::Error>,
        F: FnMut(&V) -> Result<(f64, V), E>,
    {
        let (loss, g) = f(x)?;
        let c = self.cfg;
        let g2 = g.square()?;
        // m = β1·m + (1-β1)·g and v = β2·v + (1-β2)·g², from zero moments the first time.
        let (m, v) = match &self.moments {
            Some((m, v)) => (
                g.scale(1.0 - c.beta1)?.axpy(1.0, &m.scale(c.beta1)?)?,
                g2.scale(1.0 - c.beta2)?.axpy(1.0, &v.scale(c.beta2)?)?,
            ),
            None => (g.scale(1.0 - c.beta1)?, g2.scale(1.0 - c.beta2)?),
        };
        let t = self.t + 1;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let dir = m.adam_ratio(&v, 1.0 / bc2, c.epsilon)?;
        *x = dir.axpy(-c.learning_rate / bc1, x)?;
        self.moments = Some((m, v));
        self.t = t;
        Ok(Step {
            loss,
            evaluations: 1,
            converged: false,
            start_evaluated: true,
            accepted: None,
        })
    }
}

/// Plain gradient descent: `x -= learning_rate · ∇f(x)`.
///
/// ```
/// use nst_optim::{GradientDescent, LengthMismatch, Optimizer};
/// // f(x) = (x - 1)², gradient 2(x - 1): each step with rate 0.25 halves the distance to 1.
/// let mut f = |x: &Vec<f32>| -> Result<(f64, Vec<f32>), LengthMismatch> {
///     Ok((((x[0] - 1.0) as f64).powi(2), vec![2.0 * (x[0] - 1.0)]))
/// };
/// let mut x = vec![5.0f32];
/// let mut gd = GradientDescent { learning_rate: 0.25 };
/// gd.step(&mut x, &mut f).unwrap();
/// assert_eq!(x, vec![3.0]);
/// ```
#[derive(Clone, Debug)]
pub struct GradientDescent {
    /// Step size.
    pub learning_rate: f64,
}

impl<V: Vector> Optimizer<V> for GradientDescent {
    fn step<E, F>(&mut self, x: &mut V, f: &mut F) -> Result<Step, E>
    where
        E: From<V::Error>,
        F: FnMut(&V) -> Result<(f64, V), E>,
    {
        let (loss, g) = f(x)?;
        *x = g.axpy(-self.learning_rate, x)?;
        Ok(Step {
            loss,
            evaluations: 1,
            converged: false,
            start_evaluated: true,
            accepted: None,
        })
    }
}
