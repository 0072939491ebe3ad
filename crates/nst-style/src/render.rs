//! The render loop: scales, initialisation, optimisation, progress, snapshots, NaN guard.

use crate::memory::{MemoryPlan, PlanRequest, TileChoice};
use crate::{Error, Image, Objective, ObjectiveConfig, Result};
use nst_optim::{Adam, AdamConfig, GradientDescent, Lbfgs, LbfgsConfig, LineSearch, Optimizer};
use nst_tensor::{Backend, Tensor};
use nst_vgg::Vgg;
use rand::SeedableRng;
use rand_distr::Distribution;
use std::time::{Duration, Instant};

/// How the image starts.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    /// Small Gaussian noise around the mean pixel (σ = 0.001 in model space): the classic
    /// default.
    Noise,
    /// The content image.
    Content,
    /// A given image (resized to the content's size).
    Image(Image),
}

/// Which optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    /// L-BFGS, step 1, history 100, no line search (the classic choice).
    Lbfgs,
    /// L-BFGS with a strong-Wolfe line search.
    LbfgsWolfe,
    /// Adam (learning rate 10 by default).
    Adam,
    /// Plain gradient descent.
    Gd,
}

impl OptimizerKind {
    /// The default learning rate.
    pub fn default_learning_rate(self) -> f64 {
        match self {
            OptimizerKind::Lbfgs | OptimizerKind::LbfgsWolfe => 1.0,
            OptimizerKind::Adam => 10.0,
            OptimizerKind::Gd => 0.1,
        }
    }
}

/// Everything a render needs besides the images.
#[derive(Clone, Debug)]
pub struct RenderConfig {
    /// Weights and layers.
    pub objective: ObjectiveConfig,
    /// Iterations per scale.
    pub iterations: usize,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// The learning rate (the optimizer's default when `None`).
    pub learning_rate: Option<f64>,
    /// The starting image.
    pub init: Init,
    /// The seed of the noise initialisation.
    pub seed: u64,
    /// Blend weights of the style images (equal when empty).
    pub style_blend: Vec<f64>,
    /// Style images are scaled so their longer side is this times the content's.
    pub style_scale: f64,
    /// The longer side of the content at each scale, coarse to fine (the content's own size
    /// when empty).
    pub scales: Vec<usize>,
    /// Keep the content's colours (transfer luminance only).
    pub original_colors: bool,
    /// Call [`Observer::snapshot`] every this many iterations (0: never).
    pub save_every: usize,
    /// Iterations of each scale, when they differ (e.g. from [`auto_scales`]); `iterations`
    /// for every scale when empty.
    pub scale_iterations: Vec<usize>,
    /// Tiling of the objective (chosen per scale against `memory_budget`).
    pub tile: TileChoice,
    /// The memory budget in bytes that tiling and the L-BFGS history must fit (`None`:
    /// unlimited, so `TileChoice::Auto` never tiles).
    pub memory_budget: Option<u64>,
    /// L-BFGS correction pairs kept (100, the classic value; the budget may lower it).
    pub lbfgs_history: usize,
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            objective: ObjectiveConfig::default(),
            iterations: 500,
            optimizer: OptimizerKind::Lbfgs,
            learning_rate: None,
            init: Init::Noise,
            seed: 0,
            style_blend: Vec::new(),
            style_scale: 1.0,
            scales: Vec::new(),
            original_colors: false,
            save_every: 0,
            scale_iterations: Vec::new(),
            tile: TileChoice::Auto,
            memory_budget: None,
            lbfgs_history: 100,
        }
    }
}

/// Where a render stands after an iteration.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Index of the current scale (0-based) and the number of scales.
    pub scale: (usize, usize),
    /// Width and height at this scale.
    pub size: (usize, usize),
    /// Iteration within the scale (1-based) and iterations per scale.
    pub iteration: (usize, usize),
    /// The total loss at the start of this iteration.
    pub total: f64,
    /// The loss terms at the start of this iteration.
    pub terms: Vec<(String, f64)>,
    /// Time since the render started.
    pub elapsed: Duration,
}

/// Receives progress; returning `false` from [`Observer::iteration`] stops the render.
pub trait Observer {
    /// Called after every iteration.
    fn iteration(&mut self, progress: &Progress) -> bool;
    /// Called every `save_every` iterations with the current image.
    fn snapshot(&mut self, _progress: &Progress, _image: &Image) {}
    /// Called at the start of each scale with the memory plan chosen for it.
    fn plan(&mut self, _scale: usize, _size: (usize, usize), _plan: &MemoryPlan) {}
}

/// The coarse-to-fine schedule `--scales auto` uses for an output whose longer side is
/// `size`, with `iterations` at the first scale: sizes doubling up to `size` from the first
/// one at most 512 (a single scale up to 512 px), each scale with half the iterations of the
/// one before, but at least 25 (or `iterations`, if fewer).
pub fn auto_scales(size: usize, iterations: usize) -> Vec<(usize, usize)> {
    let mut sizes = vec![size.max(1)];
    while *sizes.last().expect("one") > 512 {
        let next = sizes.last().expect("one").div_ceil(2);
        sizes.push(next);
    }
    sizes.reverse();
    sizes
        .into_iter()
        .enumerate()
        .map(|(k, s)| (s, (iterations >> k.min(63)).max(iterations.min(25))))
        .collect()
}

/// The result of a render.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The final image (or the last good one).
    pub image: Image,
    /// Why the render stopped early, if it did (e.g. a non-finite loss).
    pub stopped_early: Option<String>,
}

/// A total loss and its terms.
type Terms = (f64, Vec<(String, f64)>);

/// The chosen optimizer, over the image tensor: its state stays on the model's device.
enum AnyOptimizer<B: Backend> {
    Lbfgs(Lbfgs<Tensor<B>>),
    Adam(Adam<Tensor<B>>),
    Gd(GradientDescent),
}

impl<B: Backend> Optimizer<Tensor<B>> for AnyOptimizer<B> {
    fn step<E, F>(
        &mut self,
        x: &mut Tensor<B>,
        f: &mut F,
    ) -> std::result::Result<nst_optim::Step, E>
    where
        E: From<nst_tensor::Error>,
        F: FnMut(&Tensor<B>) -> std::result::Result<(f64, Tensor<B>), E>,
    {
        match self {
            AnyOptimizer::Lbfgs(o) => o.step(x, f),
            AnyOptimizer::Adam(o) => o.step(x, f),
            AnyOptimizer::Gd(o) => o.step(x, f),
        }
    }
}

enum StepError {
    Failed(Error),
    NonFinite(String),
}

impl From<nst_tensor::Error> for StepError {
    fn from(e: nst_tensor::Error) -> Self {
        StepError::Failed(e.into())
    }
}

/// Gaussian noise with σ = 0.001 in model space (`3 x h x w`), from a seeded generator whose
/// stream does not change between platforms.
fn noise(w: usize, h: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = rand_distr::StandardNormal;
    (0..3 * w * h)
        .map(|_| {
            let v: f64 = normal.sample(&mut rng);
            (v * 1e-3) as f32
        })
        .collect()
}

/// The longer side of the style images at a scale of `w x h`.
fn style_long_side(w: usize, h: usize, style_scale: f64) -> usize {
    (w.max(h) as f64 * style_scale).round().max(1.0) as usize
}

/// The sizes (width, height) of the scales of a render of `content`.
fn scale_sizes(content: &Image, cfg: &RenderConfig) -> Vec<(usize, usize)> {
    if cfg.scales.is_empty() {
        vec![(content.width, content.height)]
    } else {
        cfg.scales.iter().map(|&s| content.fitted_size(s)).collect()
    }
}

/// The memory plan of every scale of a render, made before any work so that a budget that
/// cannot be met is an error at once.
pub fn plan_scales<B: Backend>(
    model: &Vgg<B>,
    content: &Image,
    styles: &[Image],
    cfg: &RenderConfig,
) -> Result<Vec<MemoryPlan>> {
    scale_sizes(content, cfg)
        .into_iter()
        .enumerate()
        .map(|(si, (w, h))| {
            let long = style_long_side(w, h, cfg.style_scale);
            let req = PlanRequest {
                size: (w, h),
                style_sizes: styles.iter().map(|s| s.fitted_size(long)).collect(),
                optimizer: cfg.optimizer,
                history: cfg.lbfgs_history,
                iterations: cfg
                    .scale_iterations
                    .get(si)
                    .copied()
                    .unwrap_or(cfg.iterations),
                tile: cfg.tile,
                budget: cfg.memory_budget,
            };
            crate::memory::plan(model, &cfg.objective, &req)
        })
        .collect()
}

/// Runs a render of `content` in the style of `styles` on the model's backend.
pub fn render<B: Backend>(
    backend: &B,
    model: &Vgg<B>,
    content: &Image,
    styles: &[Image],
    cfg: &RenderConfig,
    observer: &mut dyn Observer,
) -> Result<Rendered> {
    if cfg.iterations == 0 || cfg.scale_iterations.contains(&0) {
        return Err(Error::Config(
            "the number of iterations must be positive".into(),
        ));
    }
    if !(cfg.style_scale.is_finite() && cfg.style_scale > 0.0) {
        return Err(Error::Config(format!(
            "the style scale must be a positive number, got {}",
            cfg.style_scale
        )));
    }
    if cfg.scales.contains(&0) {
        return Err(Error::Config("sizes must be positive".into()));
    }
    let lr = cfg
        .learning_rate
        .unwrap_or_else(|| cfg.optimizer.default_learning_rate());
    if !(lr.is_finite() && lr > 0.0) {
        return Err(Error::Config(format!(
            "the learning rate must be a positive number, got {lr}"
        )));
    }
    crate::normalize_blend(&cfg.style_blend, styles.len())?;
    if !cfg.scale_iterations.is_empty() && cfg.scale_iterations.len() != cfg.scales.len() {
        return Err(Error::Config(format!(
            "{} iteration counts given for {} scales",
            cfg.scale_iterations.len(),
            cfg.scales.len()
        )));
    }
    let plans = plan_scales(model, content, styles, cfg)?;
    let conv = model.convention();
    let start = Instant::now();
    let scales = scale_sizes(content, cfg);
    let mut current: Option<Image> = None;
    for (si, (&(w, h), plan)) in scales.iter().zip(&plans).enumerate() {
        let iterations = cfg
            .scale_iterations
            .get(si)
            .copied()
            .unwrap_or(cfg.iterations);
        observer.plan(si, (w, h), plan);
        // The previous scale's buffers are all of other sizes.
        backend.release_cached();
        let content_s = content.resize(w, h);
        let long = style_long_side(w, h, cfg.style_scale);
        let style_t = styles
            .iter()
            .map(|s| s.fit(long).to_model(backend, conv))
            .collect::<nst_tensor::Result<Vec<_>>>()?;
        let objective = Objective::with_tiling(
            model,
            &cfg.objective,
            &content_s.to_model(backend, conv)?,
            &style_t,
            &cfg.style_blend,
            plan.tiling,
        )?;
        drop(style_t);
        let x0: Vec<f32> = match (&current, &cfg.init) {
            (Some(prev), _) => conv.to_model(&prev.resize(w, h).data, h, w),
            (None, Init::Noise) => noise(w, h, cfg.seed),
            (None, Init::Content) => conv.to_model(&content_s.data, h, w),
            (None, Init::Image(img)) => conv.to_model(&img.resize(w, h).data, h, w),
        };
        // The image stays on the device for the whole scale; only snapshots and the result
        // come back.
        let mut x = Tensor::from_f32(backend, &x0, [1, 3, h, w])?;
        drop(x0);
        let to_image = |x: &Tensor<B>| -> Result<Image> {
            let img = Image::from_model(&x.to_f32()?, w, h, conv);
            Ok(if cfg.original_colors {
                img.with_colors_of(&content_s)
            } else {
                img
            })
        };

        let first_terms: std::cell::RefCell<Option<Terms>> = Default::default();
        let mut eval = |x: &Tensor<B>| -> std::result::Result<(f64, Tensor<B>), StepError> {
            let e = objective.evaluate(x).map_err(StepError::Failed)?;
            // The gradient's 1-norm is finite exactly when every entry is.
            let (g_l1, _) = e.grad.norms()?;
            if !e.total.is_finite() || !g_l1.is_finite() {
                return Err(StepError::NonFinite(format!(
                    "the loss became {} (terms: {})",
                    e.total,
                    e.terms
                        .iter()
                        .map(|(n, v)| format!("{n} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            first_terms.borrow_mut().get_or_insert((e.total, e.terms));
            Ok((e.total, e.grad))
        };
        let mut opt = match cfg.optimizer {
            OptimizerKind::Lbfgs | OptimizerKind::LbfgsWolfe => {
                AnyOptimizer::Lbfgs(Lbfgs::new(LbfgsConfig {
                    learning_rate: lr,
                    history: plan.history,
                    line_search: if cfg.optimizer == OptimizerKind::LbfgsWolfe {
                        LineSearch::StrongWolfe
                    } else {
                        LineSearch::None
                    },
                    ..Default::default()
                }))
            }
            OptimizerKind::Adam => AnyOptimizer::Adam(Adam::new(AdamConfig {
                learning_rate: lr,
                ..Default::default()
            })),
            OptimizerKind::Gd => AnyOptimizer::Gd(GradientDescent { learning_rate: lr }),
        };
        for it in 1..=iterations {
            first_terms.borrow_mut().take();
            let step = opt.step(&mut x, &mut eval);
            match step {
                Ok(_) => {}
                Err(StepError::Failed(e)) => return Err(e),
                Err(StepError::NonFinite(msg)) => {
                    return Ok(Rendered {
                        image: to_image(&x)?,
                        stopped_early: Some(format!(
                            "{msg} at iteration {it} of scale {}x{h}; kept the last good image",
                            w
                        )),
                    })
                }
            }
            let (total, terms) = first_terms
                .borrow_mut()
                .take()
                .unwrap_or((f64::NAN, Vec::new()));
            let progress = Progress {
                scale: (si, scales.len()),
                size: (w, h),
                iteration: (it, iterations),
                total,
                terms,
                elapsed: start.elapsed(),
            };
            if cfg.save_every > 0 && it % cfg.save_every == 0 {
                observer.snapshot(&progress, &to_image(&x)?);
            }
            if !observer.iteration(&progress) {
                return Ok(Rendered {
                    image: to_image(&x)?,
                    stopped_early: Some(format!("stopped at iteration {it}")),
                });
            }
        }
        current = Some(Image::from_model(&x.to_f32()?, w, h, conv));
    }
    let last = current.expect("at least one scale");
    let (w, h) = *scales.last().expect("at least one scale");
    let image = if cfg.original_colors {
        last.with_colors_of(&content.resize(w, h))
    } else {
        last
    };
    Ok(Rendered {
        image,
        stopped_early: None,
    })
}
