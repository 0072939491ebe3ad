//! Adam and plain gradient descent.

use crate::{Optimizer, Step};

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

/// Adam (Kingma & Ba) with bias correction.
#[derive(Clone, Debug)]
pub struct Adam {
    cfg: AdamConfig,
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    /// A fresh optimizer.
    pub fn new(cfg: AdamConfig) -> Self {
        Adam {
            cfg,
            m: Vec::new(),
            v: Vec::new(),
            t: 0,
        }
    }
}

impl Optimizer for Adam {
    fn step<E, F>(&mut self, x: &mut [f32], f: &mut F) -> Result<Step, E>
    where
        F: FnMut(&[f32]) -> Result<(f64, Vec<f32>), E>,
    {
        let (loss, g) = f(x)?;
        if self.m.len() != x.len() {
            self.m = vec![0.0; x.len()];
            self.v = vec![0.0; x.len()];
            self.t = 0;
        }
        self.t += 1;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t);
        let bc2 = 1.0 - c.beta2.powi(self.t);
        for i in 0..x.len() {
            let gi = g[i] as f64;
            let m = c.beta1 * self.m[i] as f64 + (1.0 - c.beta1) * gi;
            let v = c.beta2 * self.v[i] as f64 + (1.0 - c.beta2) * gi * gi;
            self.m[i] = m as f32;
            self.v[i] = v as f32;
            let update = c.learning_rate * (m / bc1) / ((v / bc2).sqrt() + c.epsilon);
            x[i] = (x[i] as f64 - update) as f32;
        }
        Ok(Step {
            loss,
            evaluations: 1,
            converged: false,
        })
    }
}

/// Plain gradient descent: `x -= learning_rate · ∇f(x)`.
#[derive(Clone, Debug)]
pub struct GradientDescent {
    /// Step size.
    pub learning_rate: f64,
}

impl Optimizer for GradientDescent {
    fn step<E, F>(&mut self, x: &mut [f32], f: &mut F) -> Result<Step, E>
    where
        F: FnMut(&[f32]) -> Result<(f64, Vec<f32>), E>,
    {
        let (loss, g) = f(x)?;
        for (xi, gi) in x.iter_mut().zip(&g) {
            *xi = (*xi as f64 - self.learning_rate * *gi as f64) as f32;
        }
        Ok(Step {
            loss,
            evaluations: 1,
            converged: false,
        })
    }
}
