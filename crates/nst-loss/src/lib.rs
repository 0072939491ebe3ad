//! The losses of neural style transfer, each usable on its own, on the autodiff tape.
//!
//! With `F` a layer's activation (`[1, C, H, W]` or `[C, H, W]`, `N = C·H·W`):
//! - [`gram`]: `G = F̂ F̂ᵀ / N` with `F̂` the `C x (H·W)` reshape;
//! - [`content`]: `w · mean((F − P)²)`;
//! - [`style`]: `w · mean((G(F) − A)²)` against a target Gram matrix `A`;
//! - [`total_variation`]: `w · Σ (x[i+1,j] − x[i,j])² + (x[i,j+1] − x[i,j])²` over channels;
//! - [`w2_style`]: the squared Wasserstein-2 distance between the Gaussians of `F` and of a
//!   style ([`W2Target`], built from [`Moments`]), on top of [`trace_sqrtm`], `tr(M^½)` as one
//!   op on the tape.
//!
//! ```
//! use nst_autodiff::Tape;
//! use nst_cpu::Cpu;
//! use nst_tensor::Tensor;
//! # fn main() -> nst_tensor::Result<()> {
//! let cpu = Cpu::new(1);
//! let tape = Tape::new();
//! let f = tape.var(Tensor::from_f32(&cpu, &[1.0, 2.0, 3.0, 4.0], [2, 1, 2])?);
//! let target = nst_loss::gram_tensor(&Tensor::zeros(&cpu, [2, 1, 2])?)?;
//! let loss = nst_loss::style(&f, &target, 1.0)?;
//! let grads = tape.backward(&loss)?;
//! assert!(grads.get(&f).is_some());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod nn;
pub mod term;
mod terms;
mod w2;

pub use nn::{nn_term, HyperLayer, Hypercolumn, NnTargets, StyleSet};
pub use term::{Contribution, Form, Local, Site, Statistic, Term, Window, INPUT};
pub use terms::{
    content_term, gram_term, temporal_term, tv_term, w2_term, GramRegion, GramStatistic,
    W2Statistic,
};
pub use w2::{trace_sqrt, trace_sqrtm, Moments, W2Eval, W2Target, W2_RIDGE};

use nst_autodiff::Var;
use nst_tensor::{Backend, Error, Result, Tensor};

/// `(C, H·W)` of an activation shaped `[1, C, H, W]` or `[C, H, W]`.
fn channels_positions(dims: &[usize]) -> Result<(usize, usize)> {
    match dims {
        [1, c, h, w] | [c, h, w] => Ok((*c, h * w)),
        _ => Err(Error::invalid(
            "gram",
            format!("expected an activation [1, C, H, W] or [C, H, W], got {dims:?}"),
        )),
    }
}

/// The Gram matrix `F̂ F̂ᵀ / N` of an activation on the tape.
pub fn gram<'t, B: Backend>(f: &Var<'t, B>) -> Result<Var<'t, B>> {
    let (c, hw) = channels_positions(f.shape().dims())?;
    let flat = f.reshape([c, hw])?;
    flat.matmul_t(&flat, false, true)?
        .scale(1.0 / (c * hw).max(1) as f64)
}

/// The Gram matrix `F̂ F̂ᵀ / N` of a plain tensor (for targets): [`gram`] itself, run off the
/// tape ([`nst_autodiff::no_grad`]), so the two cannot differ.
pub fn gram_tensor<B: Backend>(f: &Tensor<B>) -> Result<Tensor<B>> {
    nst_autodiff::no_grad(std::slice::from_ref(f), |v| gram(&v[0]))
}

/// The guided Gram matrix of a region (Gatys et al. 2017, spatial control):
/// `F̂ diag(m²) F̂ᵀ / (C · Σ_p m(p)²)`, with `mask` the region's weights at this layer's
/// positions (`[1, 1, H, W]` or `[1, H, W]`, values usually in [0, 1]). With `m ≡ 1` it is
/// exactly [`gram`]. An empty region (`Σ m² = 0`) is an error.
///
/// ```
/// # use nst_autodiff::Tape;
/// # use nst_tensor::Tensor;
/// let cpu = nst_cpu::Cpu::new(1);
/// let tape = Tape::new();
/// let f = tape.var(Tensor::from_f32(&cpu, &[1.0, 2.0, 3.0, 4.0], [1, 1, 2, 2]).unwrap());
/// // Only the first row counts: (1² + 2²) / (1 · 2).
/// let m = Tensor::from_f32(&cpu, &[1.0, 1.0, 0.0, 0.0], [1, 1, 2, 2]).unwrap();
/// let g = nst_loss::guided_gram(&f, &m).unwrap();
/// assert_eq!(g.value().to_f32().unwrap(), vec![2.5]);
/// ```
pub fn guided_gram<'t, B: Backend>(f: &Var<'t, B>, mask: &Tensor<B>) -> Result<Var<'t, B>> {
    let dims = f.shape().dims().to_vec();
    let (c, hw) = channels_positions(&dims)?;
    if mask.numel() != hw {
        return Err(Error::invalid(
            "guided_gram",
            format!(
                "a mask of {} values for an activation of {hw} positions",
                mask.numel()
            ),
        ));
    }
    let m2 = mask.square()?.sum()?.scalar()?;
    if !(m2 > 0.0 && m2.is_finite()) {
        return Err(Error::invalid("guided_gram", "the region is empty"));
    }
    let m = f
        .tape()
        .constant(mask.reshape([1, hw])?.broadcast_to([c, hw])?);
    let weighted = f.reshape([c, hw])?.mul(&m)?;
    // gram() divides by C·HW; the guided Gram by C·Σm².
    gram(&weighted.reshape(dims)?)?.scale(hw as f64 / m2)
}

/// Content loss `weight · mean((f − target)²)`.
///
/// ```
/// # use nst_autodiff::Tape;
/// # use nst_tensor::Tensor;
/// let cpu = nst_cpu::Cpu::new(1);
/// let tape = Tape::new();
/// let f = tape.var(Tensor::from_f32(&cpu, &[1.0, 3.0], [1, 2, 1, 1]).unwrap());
/// let target = Tensor::from_f32(&cpu, &[0.0, 1.0], [1, 2, 1, 1]).unwrap();
/// // 2 · ((1 − 0)² + (3 − 1)²) / 2
/// let loss = nst_loss::content(&f, &target, 2.0).unwrap();
/// assert_eq!(loss.value().scalar().unwrap(), 5.0);
/// ```
pub fn content<'t, B: Backend>(
    f: &Var<'t, B>,
    target: &Tensor<B>,
    weight: f64,
) -> Result<Var<'t, B>> {
    let f4 = as_activation(f)?;
    let t = target.reshape(f4.shape().clone())?;
    whole(&content_term("content", t, weight), &f4)
}

/// `f` as `[1, C, H, W]` (from `[1, C, H, W]`, `[C, H, W]`, or any other shape as one
/// channel of one row).
fn as_activation<'t, B: Backend>(f: &Var<'t, B>) -> Result<Var<'t, B>> {
    match f.shape().dims() {
        [_, _, _, _] => Ok(f.clone()),
        [c, h, w] => f.reshape([1, *c, *h, *w]),
        _ => f.reshape([1, 1, 1, f.value().numel()]),
    }
}

/// A term evaluated on one whole activation.
fn whole<'t, B: Backend>(term: &Term<B>, f: &Var<'t, B>) -> Result<Var<'t, B>> {
    let site = Site::of_whole(f.shape().dims())?;
    term.evaluate(std::slice::from_ref(f), &[site])
}

/// Style loss `weight · mean((gram(f) − target_gram)²)`.
pub fn style<'t, B: Backend>(
    f: &Var<'t, B>,
    target_gram: &Tensor<B>,
    weight: f64,
) -> Result<Var<'t, B>> {
    channels_positions(f.shape().dims())?;
    let term = gram_term(
        "style",
        vec![GramRegion {
            mask: None,
            target: target_gram.clone(),
            weight: 1.0,
        }],
        weight,
    )?;
    whole(&term, &as_activation(f)?)
}

/// The W2 style loss `weight · term` of an activation `f` (`[1, C, H, W]` or `[C, H, W]`)
/// against `target`, one op on the tape.
///
/// ```
/// # use nst_autodiff::Tape;
/// # use nst_tensor::Tensor;
/// let cpu = nst_cpu::Cpu64::new(1);
/// let s = Tensor::from_f64(&cpu, &[0.0, 1.0, 2.0, 3.0, 1.0, 0.0, 1.0, 0.0], [2, 2, 2]).unwrap();
/// let target = nst_loss::W2Target::new(&nst_loss::Moments::of(&s).unwrap()).unwrap();
/// let tape = Tape::new();
/// let f = tape.var(s.clone());
/// // The style itself is at distance 0 (up to rounding).
/// let loss = nst_loss::w2_style(&f, &target, 1.0).unwrap();
/// assert!(loss.value().scalar().unwrap().abs() < 1e-9);
/// ```
pub fn w2_style<'t, B: Backend>(
    f: &Var<'t, B>,
    target: &W2Target,
    weight: f64,
) -> Result<Var<'t, B>> {
    channels_positions(f.shape().dims())?;
    let f4 = as_activation(f)?;
    whole(&w2_term("style", target.clone(), weight), &f4)
}

/// `Σ (x[…, i+1, …] − x[…, i, …])²` along `axis`: the squared differences of neighbours,
/// summed (zero when the axis has fewer than two entries).
pub fn squared_differences<'t, B: Backend>(x: &Var<'t, B>, axis: usize) -> Result<Var<'t, B>> {
    let n = x.shape().dims().get(axis).copied().ok_or_else(|| {
        Error::invalid(
            "squared_differences",
            format!("no axis {axis} in shape {}", x.shape()),
        )
    })?;
    if n < 2 {
        return x.scale(0.0)?.sum();
    }
    x.narrow(axis, 1, n - 1)?
        .sub(&x.narrow(axis, 0, n - 1)?)?
        .square()?
        .sum()
}

/// Total variation `weight · Σ (x[i+1,j] − x[i,j])² + (x[i,j+1] − x[i,j])²` of an image
/// `[N, C, H, W]`, summed over every channel and position.
///
/// ```
/// # use nst_autodiff::Tape;
/// # use nst_tensor::Tensor;
/// let cpu = nst_cpu::Cpu::new(1);
/// let tape = Tape::new();
/// // A 2x2 image [[0, 1], [0, 3]]: horizontal steps 1 and 3, vertical 0 and 2.
/// let x = tape.var(Tensor::from_f32(&cpu, &[0.0, 1.0, 0.0, 3.0], [1, 1, 2, 2]).unwrap());
/// let tv = nst_loss::total_variation(&x, 1.0).unwrap();
/// assert_eq!(tv.value().scalar().unwrap(), 1.0 + 9.0 + 0.0 + 4.0);
/// ```
pub fn total_variation<'t, B: Backend>(x: &Var<'t, B>, weight: f64) -> Result<Var<'t, B>> {
    let dims = x.shape().dims().to_vec();
    if dims.len() != 4 {
        return Err(Error::invalid(
            "total_variation",
            format!("expected an image [N, C, H, W], got {dims:?}"),
        ));
    }
    whole(&tv_term(weight), x)
}

/// The classic `-normalize_gradients` on the tape: `f` itself in the forward pass; in the
/// backward pass the incoming gradient `g` (that of a term `weight · loss(f)`, so
/// `g = weight · ∇loss`) becomes `weight · g / (‖g‖₁ + weight · 1e-8)`, i.e.
/// `weight · ∇loss / (‖∇loss‖₁ + 1e-8)`: the term's gradient w.r.t. `f` normalised to unit
/// L1 norm before its weight multiplies it. With `weight = 0` the gradient is zero.
///
/// ```
/// # use nst_autodiff::Tape;
/// # use nst_tensor::Tensor;
/// let cpu = nst_cpu::Cpu64::new(1);
/// let tape = Tape::new();
/// let f = tape.var(Tensor::from_f64(&cpu, &[1.0, -3.0], [2]).unwrap());
/// let n = nst_loss::normalize_gradient(&f, 4.0).unwrap();
/// // 4 · Σ n²: gradient 8f = [8, −24] → 4 · [8, −24] / 32 = [1, −3].
/// let loss = n.square().unwrap().sum().unwrap().scale(4.0).unwrap();
/// let g = tape.backward(&loss).unwrap().get(&f).unwrap().to_f64().unwrap();
/// assert!((g[0] - 1.0).abs() < 1e-6 && (g[1] + 3.0).abs() < 1e-6, "{g:?}");
/// ```
pub fn normalize_gradient<'t, B: Backend>(f: &Var<'t, B>, weight: f64) -> Result<Var<'t, B>> {
    if !(weight.is_finite() && weight >= 0.0) {
        return Err(Error::invalid(
            "normalize_gradient",
            format!("the weight must be a non-negative number, got {weight}"),
        ));
    }
    f.tape().custom(f.value().clone(), &[f], move |g| {
        if weight == 0.0 {
            return g.scale(0.0).map(|z| vec![z]);
        }
        let (l1, _) = g.norms()?;
        Ok(vec![g.scale(weight / (l1 + weight * 1e-8))?])
    })
}
