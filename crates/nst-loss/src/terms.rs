//! The terms nst ships, each written once: content, Gram (with region masks), W2, total
//! variation and temporal consistency. The plain functions of this crate ([`crate::content`],
//! [`crate::style`], [`crate::total_variation`], [`crate::w2_style`]) evaluate these terms on
//! whole activations.

use crate::term::{Contribution, Local, Site, Statistic, Term, Window, INPUT};
use crate::w2::{Moments, W2Target};
use nst_autodiff::Var;
use nst_tensor::{Backend, Error, Result, Tensor};

/// `(C, H·W)` and the `C x (H·W)` view of the owned part of an activation at `site`.
fn owned_flat<'t, B: Backend>(f: &Var<'t, B>, site: &Site) -> Result<(usize, usize, Var<'t, B>)> {
    let own = site.own(f)?;
    let d = own.shape().dims().to_vec();
    let (c, p) = (d[1], d[2] * d[3]);
    Ok((c, p, own.reshape([c, p])?))
}

/// `Σ` of the squares of the owned part of `f − target` (the target over the whole layer).
struct Content<B: Backend> {
    target: Tensor<B>,
}

impl<B: Backend> Local<B> for Content<B> {
    fn loss<'t>(&self, inputs: &[Var<'t, B>], sites: &[Site]) -> Result<Var<'t, B>> {
        let f = sites[0].own(&inputs[0])?;
        let t = f.tape().constant(sites[0].cut(&self.target)?);
        f.sub(&t)?
            .square()?
            .sum()?
            .scale(1.0 / self.target.numel().max(1) as f64)
    }
}

/// The content term `content/<layer>`: `mean((F − P)²)` over the whole layer, with `target`
/// `P` (`[1, C, H, W]`, the content image's activation at the layer).
pub fn content_term<B: Backend>(layer: &str, target: Tensor<B>, weight: f64) -> Term<B> {
    let settings = format!("{:?}", target.dims());
    Term::local(
        format!("content/{layer}"),
        &[layer],
        weight,
        Content { target },
    )
    .with_settings(settings)
    .sized()
}

/// The Gram statistic of a layer, per region: `Σ_p m(p)² f_p f_pᵀ` over the owned positions
/// `p`, for each mask `m` (`[1, 1, H, W]` at the layer's positions; `None`: `m ≡ 1`).
pub struct GramStatistic<B: Backend> {
    masks: Vec<Option<Tensor<B>>>,
}

impl<B: Backend> GramStatistic<B> {
    /// `Σ f fᵀ`: one region, the whole image.
    pub fn plain() -> Self {
        GramStatistic { masks: vec![None] }
    }

    /// One `Σ m² f fᵀ` per mask.
    pub fn masked(masks: Vec<Tensor<B>>) -> Self {
        GramStatistic {
            masks: masks.into_iter().map(Some).collect(),
        }
    }
}

impl<B: Backend> Contribution<B> for GramStatistic<B> {
    fn contribution<'t>(&self, inputs: &[Var<'t, B>], sites: &[Site]) -> Result<Vec<Var<'t, B>>> {
        let (c, p, flat) = owned_flat(&inputs[0], &sites[0])?;
        let tape = flat.tape();
        self.masks
            .iter()
            .map(|m| {
                let weighted = match m {
                    None => flat.clone(),
                    Some(m) => {
                        let m = sites[0].cut(m)?.reshape([1, p])?.broadcast_to([c, p])?;
                        flat.mul(&tape.constant(m))?
                    }
                };
                weighted.matmul_t(&weighted, false, true)
            })
            .collect()
    }
}

/// One region of a Gram term: where it applies, its target and its share of the weight.
pub struct GramRegion<B: Backend> {
    /// The region's weights at the layer's positions (`[1, 1, H, W]`), or `None` for the
    /// whole image.
    pub mask: Option<Tensor<B>>,
    /// The target Gram matrix (`C x C`).
    pub target: Tensor<B>,
    /// The region's share of the term's weight.
    pub weight: f64,
}

struct Gram<B: Backend> {
    stat: GramStatistic<B>,
    targets: Vec<Tensor<B>>,
    weights: Vec<f64>,
    /// `Σ m²` of each masked region over the whole layer.
    mass: Vec<Option<f64>>,
}

impl<B: Backend> Contribution<B> for Gram<B> {
    fn contribution<'t>(&self, inputs: &[Var<'t, B>], sites: &[Site]) -> Result<Vec<Var<'t, B>>> {
        self.stat.contribution(inputs, sites)
    }
}

impl<B: Backend> Statistic<B> for Gram<B> {
    fn loss<'t>(&self, statistic: &[Var<'t, B>], positions: &[usize]) -> Result<Var<'t, B>> {
        let mut total: Option<Var<'t, B>> = None;
        for (((s, a), w), mass) in statistic
            .iter()
            .zip(&self.targets)
            .zip(&self.weights)
            .zip(&self.mass)
        {
            let c = a.dims()[0];
            let norm = c as f64 * mass.unwrap_or(positions[0] as f64);
            let term = s
                .scale(1.0 / norm.max(f64::MIN_POSITIVE))?
                .sub(&s.tape().constant(a.clone()))?
                .square()?
                .mean()?
                .scale(*w)?;
            total = Some(match total {
                None => term,
                Some(t) => t.add(&term)?,
            });
        }
        total.ok_or_else(|| Error::invalid("gram", "a Gram term without regions"))
    }
}

/// The Gram style term `style/<layer>`: `Σ_k w_k · mean((G_k − A_k)²)` over its regions, with
/// `G_k = Σ_p m_k(p)² f_p f_pᵀ / (C · Σ_p m_k(p)²)` the (guided) Gram matrix of the region
/// (Gatys et al. 2016; 2017 for regions). One region without a mask and weight 1 is the
/// classic Gram loss `mean((G − A)²)`.
pub fn gram_term<B: Backend>(
    layer: &str,
    regions: Vec<GramRegion<B>>,
    weight: f64,
) -> Result<Term<B>> {
    if regions.is_empty() {
        return Err(Error::invalid("gram", "a Gram term without regions"));
    }
    let mut masks = Vec::with_capacity(regions.len());
    let mut targets = Vec::with_capacity(regions.len());
    let mut weights = Vec::with_capacity(regions.len());
    let mut mass = Vec::with_capacity(regions.len());
    let mut settings = Vec::new();
    for r in regions {
        match r.target.dims() {
            [a, b] if a == b => {}
            d => {
                return Err(Error::invalid(
                    "gram",
                    format!("a target Gram matrix must be square, got {d:?}"),
                ))
            }
        }
        if !(r.weight.is_finite() && r.weight >= 0.0) {
            return Err(Error::invalid(
                "gram",
                format!(
                    "a region weight must be a non-negative number, got {}",
                    r.weight
                ),
            ));
        }
        mass.push(match &r.mask {
            None => None,
            Some(m) => {
                if m.dims().len() != 4 || m.dims()[..2] != [1, 1] {
                    return Err(Error::invalid(
                        "gram",
                        format!("a mask must be [1, 1, H, W], got {:?}", m.dims()),
                    ));
                }
                let m2 = m.square()?.sum()?.scalar()?;
                if !(m2 > 0.0 && m2.is_finite()) {
                    return Err(Error::invalid("gram", "the region is empty"));
                }
                Some(m2)
            }
        });
        settings.push(format!(
            "{:?}/{:?}",
            r.weight,
            r.mask.as_ref().map(|m| m.dims().to_vec())
        ));
        masks.push(r.mask);
        targets.push(r.target);
        weights.push(r.weight);
    }
    let sized = masks.iter().any(Option::is_some);
    let term = Term::statistic(
        format!("style/{layer}"),
        &[layer],
        weight,
        Gram {
            stat: GramStatistic { masks },
            targets,
            weights,
            mass,
        },
    )
    .with_settings(format!("gram {}", settings.join(",")));
    Ok(if sized { term.sized() } else { term })
}

/// The W2 statistic of a layer: `[Σ (f − a) | Σ (f − a)(f − a)ᵀ]` (`C x (1 + C)`) over the
/// owned positions, about a fixed shift `a` (the style's mean), each part's second moment
/// formed from its own covariance so that f32 loses little to cancellation.
pub struct W2Statistic {
    shift: Vec<f64>,
}

impl W2Statistic {
    /// The sums about `shift` (`C` values; empty for zero).
    pub fn about(shift: Vec<f64>) -> Self {
        W2Statistic { shift }
    }

    /// The moments of `positions` positions from this statistic (`C x (1 + C)`, row-major),
    /// in f64.
    pub fn moments(&self, positions: usize, sums: &[f64]) -> Moments {
        let c = ((1.0 + 4.0 * sums.len() as f64).sqrt() as usize).saturating_sub(1) / 2;
        let s1: Vec<f64> = (0..c).map(|i| sums[i * (c + 1)]).collect();
        let s2: Vec<f64> = (0..c)
            .flat_map(|i| sums[i * (c + 1) + 1..(i + 1) * (c + 1)].to_vec())
            .collect();
        let inv = 1.0 / positions.max(1) as f64;
        let delta: Vec<f64> = s1.iter().map(|v| v * inv).collect();
        let mean: Vec<f64> = (0..c)
            .map(|i| self.shift.get(i).copied().unwrap_or(0.0) + delta[i])
            .collect();
        let mut second = vec![0.0; c * c];
        for i in 0..c {
            for j in 0..c {
                // R = (S2/P − δδᵀ) + μμᵀ: the covariance about the mean, then the raw moment.
                second[i * c + j] = s2[i * c + j] * inv - delta[i] * delta[j] + mean[i] * mean[j];
            }
        }
        Moments {
            channels: c,
            mean,
            second,
        }
    }
}

impl<B: Backend> Contribution<B> for W2Statistic {
    fn contribution<'t>(&self, inputs: &[Var<'t, B>], sites: &[Site]) -> Result<Vec<Var<'t, B>>> {
        let (c, p, flat) = owned_flat(&inputs[0], &sites[0])?;
        let d = if self.shift.is_empty() {
            flat
        } else {
            if self.shift.len() != c {
                return Err(Error::invalid(
                    "w2",
                    format!("a shift of {} values for {c} channels", self.shift.len()),
                ));
            }
            let a = Tensor::from_f64(flat.value().backend(), &self.shift, [c, 1])?
                .broadcast_to([c, p])?;
            flat.sub(&flat.tape().constant(a))?
        };
        Ok(vec![moment_sums(&d)?])
    }
}

/// `[Σ_p d_p | Σ_p d_p d_pᵀ]` (`C x (1 + C)`) of `d` (`C x P`), one op on the tape. `Σ d` comes
/// from a GEMM against ones (blocked accumulation) and `Σ d dᵀ` from the values centred about
/// their mean `m` plus `P·m mᵀ`, and the backward pass,
/// `(G₂ + G₂ᵀ)(d − m) + ((G₂ + G₂ᵀ) m + g₁)1ᵀ`, forms its per-channel part in f64: in f32 the
/// raw moments would lose the covariance to cancellation where the mean is large.
fn moment_sums<'t, B: Backend>(d: &Var<'t, B>) -> Result<Var<'t, B>> {
    let v = d.value();
    let (c, p) = match v.dims() {
        [c, p] => (*c, *p),
        dims => {
            return Err(Error::invalid(
                "w2",
                format!("expected C x P values, got {dims:?}"),
            ))
        }
    };
    let backend = v.backend().clone();
    let s1 = v.matmul(&Tensor::full(&backend, [p, 1], 1.0)?)?;
    let m = s1.scale(1.0 / p.max(1) as f64)?;
    let centred = v.sub(&m.broadcast_to([c, p])?)?;
    let s2 = centred
        .matmul_t(&centred, false, true)?
        .add(&m.matmul_t(&m, false, true)?.scale(p as f64)?)?;
    let out = s1
        .narrow_backward(1, 0, c + 1)?
        .add(&s2.narrow_backward(1, 1, c + 1)?)?;
    d.tape().custom(out, &[d], move |g| {
        let g1 = g.narrow(1, 0, 1)?.to_f64()?;
        let g2 = g.narrow(1, 1, c)?;
        let sym = g2.add(&g2.transpose()?)?;
        let (sym_h, m_h) = (sym.to_f64()?, m.to_f64()?);
        let v: Vec<f64> = (0..c)
            .map(|i| (0..c).map(|j| sym_h[i * c + j] * m_h[j]).sum::<f64>() + g1[i])
            .collect();
        let v = Tensor::from_f64(&backend, &v, [c, 1])?.broadcast_to([c, p])?;
        Ok(vec![sym.matmul(&centred)?.add(&v)?])
    })
}

struct W2<B: Backend> {
    stat: W2Statistic,
    target: W2Target,
    _backend: std::marker::PhantomData<fn() -> B>,
}

impl<B: Backend> Contribution<B> for W2<B> {
    fn contribution<'t>(&self, inputs: &[Var<'t, B>], sites: &[Site]) -> Result<Vec<Var<'t, B>>> {
        self.stat.contribution(inputs, sites)
    }
}

impl<B: Backend> Statistic<B> for W2<B> {
    fn loss<'t>(&self, statistic: &[Var<'t, B>], positions: &[usize]) -> Result<Var<'t, B>> {
        let sv = &statistic[0];
        let all = sv.value().to_f64()?;
        let c = sv.shape().dims()[0];
        let s1: Vec<f64> = (0..c).map(|i| all[i * (c + 1)]).collect();
        let p = positions[0].max(1) as f64;
        let eval = self
            .target
            .evaluate(&self.stat.moments(positions[0], &all))?;
        // The term depends on the sums through μ = a + δ (δ = S1/P) and Σ = S2/P − δδᵀ:
        // ∂/∂S2 = D/P and ∂/∂S1 = ((2/C)(μ − μ_s) − 2Dδ)/P, with D = ∂term/∂Σ.
        let d = eval.d_second;
        let d_s2: Vec<f64> = d.iter().map(|v| v / p).collect();
        let d_s1: Vec<f64> = (0..c)
            .map(|i| {
                let dd: f64 = (0..c).map(|j| d[i * c + j] * s1[j] / p).sum();
                (eval.d_mean_centred[i] - 2.0 * dd) / p
            })
            .collect();
        let backend = sv.value().backend().clone();
        let out = Tensor::from_f64(&backend, &[eval.value], [])?;
        sv.tape().custom(out, &[sv], move |g| {
            let g = g.scalar()?;
            let mut grad = Vec::with_capacity(c * (c + 1));
            for i in 0..c {
                grad.push(d_s1[i] * g);
                grad.extend(d_s2[i * c..(i + 1) * c].iter().map(|x| x * g));
            }
            Ok(vec![Tensor::from_f64(&backend, &grad, [c, c + 1])?])
        })
    }
}

/// The W2 style term `style/<layer>`: the squared Wasserstein-2 distance between the
/// Gaussians of the layer's activations and `target` ([`crate::w2_style`]).
pub fn w2_term<B: Backend>(layer: &str, target: W2Target, weight: f64) -> Term<B> {
    let settings = format!("w2 eps {:?}", target.eps());
    Term::statistic(
        format!("style/{layer}"),
        &[layer],
        weight,
        W2 {
            stat: W2Statistic::about(target.mean().to_vec()),
            target,
            _backend: std::marker::PhantomData,
        },
    )
    .with_settings(settings)
}

/// `Σ` of the squared differences between each owned pixel and its neighbours below and to
/// the right, where those are in the image.
struct TotalVariation;

impl<B: Backend> Local<B> for TotalVariation {
    fn loss<'t>(&self, inputs: &[Var<'t, B>], sites: &[Site]) -> Result<Var<'t, B>> {
        let (x, s) = (&inputs[0], &sites[0]);
        let g = s.global();
        let mut parts = Vec::new();
        // Vertical: the owned rows, each with the row below it where there is one.
        let rows = g.h + usize::from(g.y + g.h < s.full.0);
        if rows > 1 {
            let a = crate::term::cut_var(x, &Window { h: rows, ..s.own })?;
            parts.push(crate::squared_differences(&a, 2)?);
        }
        let cols = g.w + usize::from(g.x + g.w < s.full.1);
        if cols > 1 {
            let b = crate::term::cut_var(x, &Window { w: cols, ..s.own })?;
            parts.push(crate::squared_differences(&b, 3)?);
        }
        match parts.len() {
            0 => x.scale(0.0)?.sum(),
            1 => Ok(parts.remove(0)),
            _ => parts[0].add(&parts[1]),
        }
    }
}

/// The total-variation term `tv`: `Σ (x[i+1,j] − x[i,j])² + (x[i,j+1] − x[i,j])²` over the
/// image's pixels and channels.
pub fn tv_term<B: Backend>(weight: f64) -> Term<B> {
    Term::local("tv", &[INPUT], weight, TotalVariation).with_reach(1)
}

/// `(1/D) Σ c (x − ω)²` over the owned pixels.
struct Temporal<B: Backend> {
    target: Tensor<B>,
    weights: Tensor<B>,
}

impl<B: Backend> Local<B> for Temporal<B> {
    fn loss<'t>(&self, inputs: &[Var<'t, B>], sites: &[Site]) -> Result<Var<'t, B>> {
        let x = sites[0].own(&inputs[0])?;
        let tape = x.tape();
        let t = tape.constant(sites[0].cut(&self.target)?);
        let c = tape.constant(sites[0].cut(&self.weights)?);
        x.sub(&t)?
            .square()?
            .mul(&c)?
            .sum()?
            .scale(1.0 / self.target.numel().max(1) as f64)
    }
}

/// The temporal term `temporal` of video style transfer (Ruder et al. 2016):
/// `(1/D) Σ_p c_p (x_p − ω_p)²` over pixels and channels (`D = 3·H·W`), with `target` ω
/// (`[1, 3, H, W]`, model space) and per-pixel `weights` c (`[1, 1, H, W]`).
pub fn temporal_term<B: Backend>(
    target: Tensor<B>,
    weights: &Tensor<B>,
    weight: f64,
) -> Result<Term<B>> {
    let d = target.dims().to_vec();
    if d.len() != 4 || weights.dims() != [1, 1, d[2], d[3]] {
        return Err(Error::invalid(
            "temporal",
            format!(
                "the temporal target is {d:?} and its weights {:?}",
                weights.dims()
            ),
        ));
    }
    let weights = weights.broadcast_to(d.clone())?;
    Ok(
        Term::local("temporal", &[INPUT], weight, Temporal { target, weights })
            .with_settings(format!("{d:?}"))
            .sized(),
    )
}
