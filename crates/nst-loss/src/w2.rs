//! The Wasserstein-2 style loss: the squared W2 distance between the Gaussians fitted to a
//! layer's activations and to the style's, and `tr(M^½)` as an op on the tape.
//!
//! For activations `F̂` (`C x P`): `μ = F̂1/P`, `R = F̂F̂ᵀ/P` (the raw moments, [`Moments`]),
//! `Σ = R − μμᵀ + εI`; for the style the same, `μ_s`, `Σ_s`, with
//! `ε = 1e-3 · tr(Σ_s without ε)/C` fixed by the target and added to both. The term is
//! `mean_c (μ − μ_s)² + (1/C)·tr(Σ + Σ_s − 2·(Σ_s^½ Σ Σ_s^½)^½)`.
//!
//! The matrix functions are computed on the host in `f64` by `nst-linalg`'s symmetric
//! eigendecomposition (LAPACK with its `lapack` feature).

use nst_autodiff::Var;
use nst_tensor::{Backend, Error, Result, Tensor};

/// The relative size of the ridge `ε` added to both covariances: `ε = W2_RIDGE · tr(Σ_s)/C`.
pub const W2_RIDGE: f64 = 1e-3;

fn linalg(e: nst_linalg::Error) -> Error {
    Error::invalid("w2", e.to_string())
}

/// The first two raw moments of a layer's activations over its positions, in `f64`: the
/// mean `μ` (`C`) and the second moment `R = F̂F̂ᵀ/P` (`C x C`, row-major). Both are linear in
/// the distribution, so blends of styles are weighted sums of moments ([`Moments::blend`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Moments {
    /// `C`.
    pub channels: usize,
    /// `μ`.
    pub mean: Vec<f64>,
    /// `R`.
    pub second: Vec<f64>,
}

/// `(C, P)` and the `C x P` view of an activation `[1, C, H, W]` or `[C, H, W]`.
fn flat<B: Backend>(f: &Tensor<B>) -> Result<(usize, usize, Tensor<B>)> {
    let (c, p) = crate::channels_positions(f.dims())?;
    Ok((c, p, f.reshape([c, p])?))
}

impl Moments {
    /// The moments of an activation `[1, C, H, W]` or `[C, H, W]` (at least one position).
    pub fn of<B: Backend>(f: &Tensor<B>) -> Result<Moments> {
        let (c, p, flat) = flat(f)?;
        if p == 0 {
            return Err(Error::invalid("w2", "an activation without positions"));
        }
        // In f32 the raw second moment loses the covariance to cancellation where means are
        // large: the mean comes from a GEMM against ones (blocked accumulation), the
        // covariance from the centred activations, and `R = Σ + μμᵀ` is formed in f64.
        let ones = Tensor::full(f.backend(), [p, 1], 1.0)?;
        let mean_t = flat.matmul(&ones)?.scale(1.0 / p as f64)?;
        let centred = flat.sub(&mean_t.broadcast_to([c, p])?)?;
        let cov = centred
            .matmul_t(&centred, false, true)?
            .scale(1.0 / p as f64)?
            .to_f64()?;
        drop(centred);
        let mean = mean_t.to_f64()?;
        let mut second = cov;
        for i in 0..c {
            for j in 0..c {
                second[i * c + j] += mean[i] * mean[j];
            }
        }
        Ok(Moments {
            channels: c,
            mean,
            second,
        })
    }

    /// From the sums over `positions` positions: `Σ_p F_p` and `Σ_p F_p F_pᵀ`.
    pub fn from_sums(channels: usize, positions: usize, sum: &[f64], sum_sq: &[f64]) -> Moments {
        let inv = 1.0 / positions.max(1) as f64;
        Moments {
            channels,
            mean: sum.iter().map(|v| v * inv).collect(),
            second: sum_sq.iter().map(|v| v * inv).collect(),
        }
    }

    /// `Σ_k w_k · m_k` (weights as given: normalise them first for a blend).
    pub fn blend(parts: &[(f64, &Moments)]) -> Result<Moments> {
        let Some((_, first)) = parts.first() else {
            return Err(Error::invalid("w2", "a blend of no moments"));
        };
        let c = first.channels;
        let mut out = Moments {
            channels: c,
            mean: vec![0.0; c],
            second: vec![0.0; c * c],
        };
        for (w, m) in parts {
            if m.channels != c {
                return Err(Error::invalid(
                    "w2",
                    format!("blending moments of {c} and {} channels", m.channels),
                ));
            }
            for (o, v) in out.mean.iter_mut().zip(&m.mean) {
                *o += w * v;
            }
            for (o, v) in out.second.iter_mut().zip(&m.second) {
                *o += w * v;
            }
        }
        Ok(out)
    }

    /// The covariance `R − μμᵀ` (without a ridge).
    pub fn covariance(&self) -> Vec<f64> {
        let c = self.channels;
        let mut cov = self.second.clone();
        for i in 0..c {
            for j in 0..c {
                cov[i * c + j] -= self.mean[i] * self.mean[j];
            }
        }
        cov
    }
}

/// `tr(M^½)` of a symmetric positive semi-definite `n x n` matrix and its gradient
/// `½ M^(−½)`, in `f64`. Eigenvalues below zero (rounding) count as zero in the value; in the
/// gradient they are floored at `1e-12 · λ_max` (the gradient is unbounded as `M` loses rank).
pub fn trace_sqrt(m: &[f64], n: usize) -> nst_linalg::Result<(f64, Vec<f64>)> {
    let e = nst_linalg::eigh(m, n)?;
    let top = e.values().last().copied().unwrap_or(0.0).max(0.0);
    let floor = (top * 1e-12).max(f64::MIN_POSITIVE);
    let value = e.values().iter().map(|v| v.max(0.0).sqrt()).sum();
    let grad = e.map(|v| 0.5 / v.max(floor).sqrt());
    Ok((value, grad))
}

/// `tr(M^½)` of a symmetric positive semi-definite matrix `m` (`[n, n]`) on the tape, one
/// op whose gradient is `½ M^(−½)` ([`trace_sqrt`]).
///
/// ```
/// # use nst_autodiff::Tape;
/// # use nst_tensor::Tensor;
/// let cpu = nst_cpu::Cpu64::new(1);
/// let tape = Tape::new();
/// let m = tape.var(Tensor::from_f64(&cpu, &[4.0, 0.0, 0.0, 9.0], [2, 2]).unwrap());
/// let t = nst_loss::trace_sqrtm(&m).unwrap();
/// assert!((t.value().scalar().unwrap() - 5.0).abs() < 1e-12);
/// let g = tape.backward(&t).unwrap();
/// let d = g.get(&m).unwrap().to_f64().unwrap();
/// assert!((d[0] - 0.25).abs() < 1e-12 && (d[3] - 1.0 / 6.0).abs() < 1e-12);
/// ```
pub fn trace_sqrtm<'t, B: Backend>(m: &Var<'t, B>) -> Result<Var<'t, B>> {
    let n = match m.shape().dims() {
        [a, b] if a == b => *a,
        d => {
            return Err(Error::invalid(
                "trace_sqrtm",
                format!("expected a square matrix, got {d:?}"),
            ))
        }
    };
    let (value, grad) = trace_sqrt(&m.value().to_f64()?, n).map_err(linalg)?;
    let backend = m.value().backend().clone();
    let out = Tensor::from_f64(&backend, &[value], [])?;
    m.tape().custom(out, &[m], move |g| {
        let g = g.scalar()?;
        let scaled: Vec<f64> = grad.iter().map(|v| v * g).collect();
        Ok(vec![Tensor::from_f64(&backend, &scaled, [n, n])?])
    })
}

/// A style layer's Gaussian for the W2 loss: `μ_s`, `Σ_s^½` and `tr Σ_s` (with the ridge),
/// and the ridge `ε` itself.
#[derive(Clone, Debug)]
pub struct W2Target {
    channels: usize,
    mean: Vec<f64>,
    sqrt_cov: Vec<f64>,
    trace: f64,
    eps: f64,
}

/// The W2 term at some moments and its gradients with respect to them.
#[derive(Clone, Debug)]
pub struct W2Eval {
    /// The term (unweighted).
    pub value: f64,
    /// `∂term/∂μ` (`C`).
    pub d_mean: Vec<f64>,
    /// `∂term/∂R` (`C x C`, symmetric).
    pub d_second: Vec<f64>,
    /// The mean `μ` the term was evaluated at.
    pub mean: Vec<f64>,
    /// `(2/C)(μ − μ_s)`: `∂term/∂μ` at a fixed covariance (without the `−2Dμ` that `R`
    /// contributes).
    pub d_mean_centred: Vec<f64>,
}

impl W2Target {
    /// The target of a style layer from its (possibly blended) moments.
    pub fn new(style: &Moments) -> Result<W2Target> {
        let c = style.channels;
        if c == 0 {
            return Err(Error::invalid("w2", "a layer without channels"));
        }
        let mut cov = style.covariance();
        let trace: f64 = (0..c).map(|i| cov[i * c + i]).sum();
        let eps = W2_RIDGE * trace.max(0.0) / c as f64;
        let eps = if eps > 0.0 { eps } else { W2_RIDGE };
        for i in 0..c {
            cov[i * c + i] += eps;
        }
        let e = nst_linalg::eigh(&cov, c).map_err(linalg)?;
        let sqrt_cov = e.map(|v| v.max(0.0).sqrt());
        Ok(W2Target {
            channels: c,
            mean: style.mean.clone(),
            sqrt_cov,
            trace: trace + c as f64 * eps,
            eps,
        })
    }

    /// The style's mean `μ_s` (`C`).
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// The ridge `ε`.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// `C`.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The term at `x`'s moments, and its gradients w.r.t. them:
    /// with `Σ = R − μμᵀ + εI`, `M = Σ_s^½ Σ Σ_s^½` and `D = ∂term/∂Σ = (1/C)(I − Σ_s^½ M^(−½) Σ_s^½)`,
    /// `∂term/∂R = D` and `∂term/∂μ = (2/C)(μ − μ_s) − 2Dμ`.
    pub fn evaluate(&self, x: &Moments) -> Result<W2Eval> {
        let c = self.channels;
        if x.channels != c {
            return Err(Error::invalid(
                "w2",
                format!("moments of {} channels for a target of {c}", x.channels),
            ));
        }
        let inv_c = 1.0 / c as f64;
        let mut sigma = x.covariance();
        for i in 0..c {
            sigma[i * c + i] += self.eps;
        }
        let s = &self.sqrt_cov;
        let mut tmp = vec![0.0; c * c];
        let mut m = vec![0.0; c * c];
        nst_linalg::matmul(s, &sigma, &mut tmp, c, c, c);
        nst_linalg::matmul(&tmp, s, &mut m, c, c, c);
        let (tr_root, half_inv_root) = trace_sqrt(&m, c).map_err(linalg)?;
        let tr_sigma: f64 = (0..c).map(|i| sigma[i * c + i]).sum();
        let mean_sq: f64 = x
            .mean
            .iter()
            .zip(&self.mean)
            .map(|(a, b)| (a - b) * (a - b))
            .sum();
        let value = inv_c * mean_sq + inv_c * (tr_sigma + self.trace - 2.0 * tr_root);
        // D = (1/C)(I − S M^(−½) S), with M^(−½) = 2 · half_inv_root.
        nst_linalg::matmul(s, &half_inv_root, &mut tmp, c, c, c);
        let mut d = vec![0.0; c * c];
        nst_linalg::matmul(&tmp, s, &mut d, c, c, c);
        for (i, v) in d.iter_mut().enumerate() {
            let id = if i % (c + 1) == 0 { 1.0 } else { 0.0 };
            *v = inv_c * (id - 2.0 * *v);
        }
        let d_mean_centred: Vec<f64> = (0..c)
            .map(|i| 2.0 * inv_c * (x.mean[i] - self.mean[i]))
            .collect();
        let d_mean = (0..c)
            .map(|i| {
                let dmu: f64 = (0..c).map(|j| d[i * c + j] * x.mean[j]).sum();
                d_mean_centred[i] - 2.0 * dmu
            })
            .collect();
        Ok(W2Eval {
            value,
            d_mean,
            d_second: d,
            mean: x.mean.clone(),
            d_mean_centred,
        })
    }
}
