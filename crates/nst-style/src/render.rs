//! The render as a resumable session ([`RenderSession`]): scales, initialisation, one
//! optimiser iteration at a time, checkpoints, and a guard that keeps the last good image;
//! [`render`] drives a session to its end for an [`Observer`].

use crate::checkpoint::{Checkpoint, OptimizerState};
use crate::memory::{MemoryPlan, PlanRequest, TileChoice};
pub use crate::optimizer::OptimizerKind;
use crate::{Error, Image, Objective, ObjectiveConfig, Result, StyleLoss};
use nst_optim::{Adam, AdamConfig, GradientDescent, Lbfgs, LbfgsConfig, LineSearch, Optimizer};
use nst_tensor::{Backend, Tensor};
use nst_vgg::Vgg;
use rand::SeedableRng;
use rand_distr::Distribution;
use sha2::Digest;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the image starts.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    /// Small Gaussian noise around the mean pixel (σ = 0.001 in model space): the classic
    /// default.
    Noise,
    /// The content image.
    Content,
    /// The content's mean colour everywhere.
    Gray,
    /// Uniform noise over the whole pixel range, 0–255 in each channel (from the seed).
    Uniform,
    /// A given image (resized to the content's size).
    Image(Image),
}

/// The render's defaults for each style loss (the objective itself knows nothing of
/// starting images or colour).
impl StyleLoss {
    /// The starting image this loss renders best from by default: the classic noise, or the
    /// content for the nearest-neighbour loss (NNST starts from the photo; its cosine is blind
    /// to the features' magnitude, so from noise the render keeps noise's flat grey).
    pub fn default_init(self) -> Init {
        match self {
            StyleLoss::Gram | StyleLoss::W2 => Init::Noise,
            StyleLoss::Nn => Init::Content,
        }
    }

    /// The colour control this loss renders with by default: none, or for the
    /// nearest-neighbour loss the styles' palette after the render (its cosine reproduces the
    /// painting's strokes but not its colours; NNST corrects colour the same way).
    pub fn default_color_control(self) -> crate::ColorControl {
        match self {
            StyleLoss::Gram | StyleLoss::W2 => crate::ColorControl::None,
            StyleLoss::Nn => crate::ColorControl::Palette(crate::MatrixRoot::Pca),
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
    pub color_control: crate::ColorControl,
    /// Region masks, one per style image (empty: none): grey images whose value/255 weighs
    /// where style `k` applies, resized to each scale ([`Objective::with_regions`]).
    pub content_masks: Vec<Image>,
    /// Masks on the style images, one per style image (empty: each whole style image);
    /// only with `content_masks`.
    pub style_masks: Vec<Image>,
    /// Call [`Observer::snapshot`] every this many iterations (0: never).
    pub save_every: usize,
    /// Iterations of each scale, when they differ (e.g. from [`auto_scales`]); `iterations`
    /// for every scale when empty.
    pub scale_iterations: Vec<usize>,
    /// Tiling of the objective (chosen per scale against `memory_budget`).
    pub tile: TileChoice,
    /// The memory budget in bytes that tiling and the L-BFGS history must fit (`None`: the
    /// default budget of the backend the render runs on, [`crate::memory::default_budget`]:
    /// 80% of the host's available memory, 90% of a GPU's free memory, as `nst render`).
    pub memory_budget: Option<u64>,
    /// L-BFGS correction pairs kept (100, the classic value; the budget may lower it).
    pub lbfgs_history: usize,
    /// Temporal consistency with the previous frame of a video (applied at the scale of
    /// the target's size; tiled like any other term).
    pub temporal: Option<Temporal>,
    /// Keep the image's pixels in 0-255 during the optimisation: after every step, values
    /// outside are projected back (the L-BFGS history learns the displacement that really
    /// happened). The saved image is clamped anyway; without this the optimiser can lean on
    /// values the saved image cannot hold.
    pub clamp_pixels: bool,
    /// End a scale early when its loss has stopped falling: when the mean relative decrease
    /// per iteration over the last [`TOLERANCE_WINDOW`] iterations is below this (0: never;
    /// every scale runs its iterations).
    pub tolerance: f64,
}

/// The iterations the convergence test of [`RenderConfig::tolerance`] looks back over.
pub const TOLERANCE_WINDOW: usize = 10;

/// The temporal term of video style transfer (Ruder, Dosovitskiy & Brox 2016):
/// `weight · (1/D) · Σ_p c_p · (x_p − ω_p)²` over pixels and channels (D = pixels x 3), in
/// model space, with ω the previous stylised frame warped into this one.
#[derive(Clone, Debug, PartialEq)]
pub struct Temporal {
    /// ω, at the output's size.
    pub target: Image,
    /// c: one weight per pixel (0 where the flow is unreliable, 1 elsewhere), row-major.
    pub weights: Vec<f32>,
    /// w_t.
    pub weight: f64,
}

/// The longer side of a render's output by default (`nst render --size`).
pub const DEFAULT_SIZE: usize = 512;

/// What `nst render` does by default: the Gram loss's objective and starting image, the
/// [`Quality::Default`] schedule to a longer side of [`DEFAULT_SIZE`] (300 iterations at 128
/// px, 100 at 256, 200 at 512), L-BFGS with 100 pairs, pixels kept in 0-255 (the projection),
/// and the backend's default memory budget. A render that wants one scale at the content's
/// own size starts from [`RenderConfig::single_scale`].
impl Default for RenderConfig {
    fn default() -> Self {
        let (scales, scale_iterations): (Vec<usize>, Vec<usize>) =
            quality_schedule(Quality::Default, DEFAULT_SIZE)
                .into_iter()
                .unzip();
        RenderConfig {
            iterations: *scale_iterations.last().expect("a schedule has a scale"),
            scales,
            scale_iterations,
            clamp_pixels: true,
            ..RenderConfig::single_scale(500)
        }
    }
}

impl RenderConfig {
    /// One scale at the content's own size with `iterations` iterations, everything else as
    /// [`RenderConfig::default`] but the pixel projection, which is off (the classic recipe's
    /// unconstrained optimisation).
    pub fn single_scale(iterations: usize) -> Self {
        RenderConfig {
            objective: ObjectiveConfig::default(),
            iterations,
            optimizer: OptimizerKind::Lbfgs,
            learning_rate: None,
            init: Init::Noise,
            seed: 0,
            style_blend: Vec::new(),
            style_scale: 1.0,
            scales: Vec::new(),
            color_control: crate::ColorControl::None,
            content_masks: Vec::new(),
            style_masks: Vec::new(),
            save_every: 0,
            scale_iterations: Vec::new(),
            tile: TileChoice::Auto,
            memory_budget: None,
            lbfgs_history: 100,
            temporal: None,
            clamp_pixels: false,
            tolerance: 0.0,
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
    /// This iteration ended its scale before its count: the loss had stopped falling
    /// ([`RenderConfig::tolerance`]).
    pub converged: bool,
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

/// The schedule presets of `nst render --quality`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Quality {
    /// A quick preview: [`Quality::Default`]'s schedule for a longer side of at most 256 px.
    Draft,
    /// Coarse to fine, tuned for time to a finished image (see [`quality_schedule`]).
    #[default]
    Default,
    /// The classic recipe: 500 iterations at the output size.
    High,
}

/// The smallest coarse scale of [`Quality::Default`]: below it VGG19's deep layers see too
/// few positions for the style to mean much.
const COARSEST: usize = 128;

/// The `(longer side, iterations)` of each scale, coarse to fine, of a render whose output's
/// longer side is `size`, for a [`Quality`] preset.
///
/// [`Quality::Default`] halves `size` while the result stays at least 128 px, up to two
/// coarser scales. The coarsest scale, where iterations are cheap, gets 300 and finds the
/// composition; a middle scale gets 100; the output's size gets 200 to sharpen what it
/// inherits (docs/benchmarks.md has the measurements behind the counts).
/// [`Quality::Draft`] is a shorter schedule (200 at 128 px, then 50) at most 256 px.
/// [`Quality::High`] is one scale of 500 iterations.
pub fn quality_schedule(quality: Quality, size: usize) -> Vec<(usize, usize)> {
    let size = size.max(1);
    let pyramid = |size: usize| {
        let mut sizes = vec![size];
        while sizes.len() < 3 && sizes[0] / 2 >= COARSEST {
            sizes.insert(0, sizes[0] / 2);
        }
        sizes
    };
    match quality {
        Quality::High => vec![(size, 500)],
        Quality::Draft => {
            let sizes = pyramid(size.min(256));
            // 200 at the coarse scale: after only 100, the 256 px scale was measured to stall.
            let counts: &[usize] = if sizes.len() == 1 { &[100] } else { &[200, 50] };
            sizes.into_iter().zip(counts.iter().copied()).collect()
        }
        Quality::Default => {
            let sizes = pyramid(size);
            // Coarse to fine: the coarsest scale gets 300, the output's size 200, a scale
            // between them 100.
            let n = sizes.len();
            let counts = (0..n).map(move |k| match k {
                0 => 300,
                k if k + 1 == n => 200,
                _ => 100,
            });
            sizes.into_iter().zip(counts).collect()
        }
    }
}

/// Records an iteration's loss in `recent`; whether the scale's loss has stopped falling
/// (by less than `tolerance` per iteration over the last [`TOLERANCE_WINDOW`]).
fn converged(recent: &mut std::collections::VecDeque<f64>, tolerance: f64, loss: f64) -> bool {
    if tolerance <= 0.0 {
        return false;
    }
    recent.push_back(loss);
    if recent.len() > TOLERANCE_WINDOW + 1 {
        recent.pop_front();
    }
    if recent.len() <= TOLERANCE_WINDOW {
        return false;
    }
    let old = recent[0];
    let rate = (old - loss) / (TOLERANCE_WINDOW as f64 * old.abs().max(f64::MIN_POSITIVE));
    rate < tolerance
}

/// With [`RenderConfig::clamp_pixels`], the longest L-BFGS step, as a fraction of the pixel
/// range: an early quasi-Newton step can be many times the range, and projected into it, it
/// leaves a saturated image the optimiser does not recover from.
const MAX_STEP_OF_RANGE: f64 = 0.25;

/// The narrowest channel's width in model space of the pixel range 0-255.
fn model_range(conv: nst_vgg::InputConvention) -> f64 {
    let lo = conv.to_model(&[0.0; 3], 1, 1);
    let hi = conv.to_model(&[255.0; 3], 1, 1);
    lo.iter()
        .zip(&hi)
        .map(|(a, b)| f64::from((b - a).abs()))
        .fold(f64::INFINITY, f64::min)
}

/// Projects the image of `active` into the pixel range 0-255 (each model channel clamped
/// into what 0 and 255 map to), on the model's device, telling the optimizer how far it
/// moved. Entries in range keep their exact values; one scalar comes back.
fn project_into_range<B: Backend>(
    active: &mut Active<B>,
    conv: nst_vgg::InputConvention,
) -> Result<()> {
    let clamped = active.x.clamp_channels(&conv.model_range())?;
    let delta = clamped.sub(&active.x)?;
    // Nothing moved (or the image is not finite, which the next evaluation reports).
    let moved = delta.norms()?.1;
    if moved.is_nan() || moved == 0.0 {
        return Ok(());
    }
    active.x = clamped;
    if let AnyOptimizer::Lbfgs(o) = &mut active.opt {
        o.moved(&delta)?;
    }
    Ok(())
}

/// The result of a render.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The final image (or the last good one).
    pub image: Image,
    /// Why the render stopped early, if it did (e.g. a non-finite loss).
    pub stopped_early: Option<String>,
}

/// The chosen optimizer, over the image tensor: its state stays on the model's device.
#[derive(Clone)]
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
    /// A non-finite loss or gradient; `at_start` when it was the step's starting point's.
    NonFinite {
        message: String,
        at_start: bool,
    },
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
        vec![(content.width(), content.height())]
    } else {
        cfg.scales.iter().map(|&s| content.fitted_size(s)).collect()
    }
}

/// The iterations of scale `si`.
fn iterations_of(cfg: &RenderConfig, si: usize) -> usize {
    cfg.scale_iterations
        .get(si)
        .copied()
        .unwrap_or(cfg.iterations)
}

/// The memory plan of every scale of a render, made before any work so that a budget that
/// cannot be met is an error at once.
pub fn plan_scales<B: Backend>(
    model: &Vgg<B>,
    content: &Image,
    styles: &[Image],
    cfg: &RenderConfig,
) -> Result<Vec<MemoryPlan>> {
    plan_scales_with(model, content, styles, cfg, &[])
}

/// [`plan_scales`] for an objective whose terms also read `extra_layers`.
fn plan_scales_with<B: Backend>(
    model: &Vgg<B>,
    content: &Image,
    styles: &[Image],
    cfg: &RenderConfig,
    extra_layers: &[String],
) -> Result<Vec<MemoryPlan>> {
    // Finest first, so that a budget too small for the render names what the largest
    // scale needs.
    let memory = model.backend().memory();
    let budget = match cfg.memory_budget {
        Some(b) => b,
        None => crate::memory::default_budget(memory)?.0,
    };
    let mut plans = scale_sizes(content, cfg)
        .into_iter()
        .enumerate()
        .rev()
        .map(|(si, (w, h))| {
            let long = style_long_side(w, h, cfg.style_scale);
            let req = PlanRequest {
                size: (w, h),
                style_sizes: styles.iter().map(|s| s.fitted_size(long)).collect(),
                optimizer: cfg.optimizer,
                history: cfg.lbfgs_history,
                iterations: iterations_of(cfg, si),
                // Normalised gradients need the untiled objective.
                tile: if cfg.objective.normalize_gradients {
                    TileChoice::Off
                } else {
                    cfg.tile
                },
                budget: Some(budget),
                extra_layers: extra_layers.to_vec(),
                memory,
                max_buffer: model.backend().max_buffer_bytes(),
            };
            crate::memory::plan(model, &cfg.objective, &req)
        })
        .collect::<Result<Vec<_>>>()?;
    plans.reverse();
    Ok(plans)
}

/// Checks the settings of a render; returns the learning rate.
fn check_config(cfg: &RenderConfig, styles: usize) -> Result<f64> {
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
    crate::normalize_blend(&cfg.style_blend, styles)?;
    if !cfg.content_masks.is_empty() {
        if cfg.content_masks.len() != styles {
            return Err(Error::Config(format!(
                "{} content masks given for {styles} style images: one mask per style image",
                cfg.content_masks.len()
            )));
        }
        if !cfg.style_blend.is_empty() {
            return Err(Error::Config(
                "--style-blend cannot be combined with masks: the masks are the blend".into(),
            ));
        }
    }
    if !cfg.style_masks.is_empty() {
        if cfg.content_masks.is_empty() {
            return Err(Error::Config(
                "style masks need content masks (--content-mask)".into(),
            ));
        }
        if cfg.style_masks.len() != styles {
            return Err(Error::Config(format!(
                "{} style masks given for {styles} style images: one mask per style image",
                cfg.style_masks.len()
            )));
        }
    }
    if !cfg.scale_iterations.is_empty() && cfg.scale_iterations.len() != cfg.scales.len() {
        return Err(Error::Config(format!(
            "{} iteration counts given for {} scales",
            cfg.scale_iterations.len(),
            cfg.scales.len()
        )));
    }
    Ok(lr)
}

/// A region mask at `w x h`: the grey value (BT.601 luminance) / 255 of `mask` resized,
/// clamped to [0, 1], as `[1, 1, h, w]` (what [`Objective::with_regions`] takes).
pub fn region_mask<B: Backend>(backend: &B, mask: &Image, w: usize, h: usize) -> Result<Tensor<B>> {
    let m = mask.resize(w, h);
    let v: Vec<f32> = m
        .data()
        .chunks_exact(3)
        .map(|p| ((0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]) / 255.0).clamp(0.0, 1.0))
        .collect();
    Ok(Tensor::from_f32(backend, &v, [1, 1, h, w])?)
}

/// The error of an image buffer whose length does not match its scale (a bug, not an input).
fn bad_len() -> Error {
    Error::Config("an image buffer does not match its size".into())
}

/// A short digest of an image's size and pixels.
fn image_digest(img: &Image) -> String {
    let mut h = sha2::Sha256::new();
    h.update((img.width() as u64).to_le_bytes());
    h.update((img.height() as u64).to_le_bytes());
    for v in img.data() {
        h.update(v.to_le_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A list as `a,b,c`.
fn list<T: std::fmt::Display>(v: impl IntoIterator<Item = T>) -> String {
    v.into_iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// What a render is made from, as `(name, value)` pairs: digests of the images and every
/// setting that changes the result (the plan of each scale rather than the memory budget,
/// since the same plan gives the same bytes whatever budget chose it).
fn fingerprint<B: Backend>(
    backend: &B,
    content: &Image,
    styles: &[Image],
    cfg: &RenderConfig,
    plans: &[MemoryPlan],
) -> Vec<(String, String)> {
    let mut fp = vec![
        ("backend".to_string(), backend.name()),
        ("content".into(), image_digest(content)),
        ("styles".into(), list(styles.iter().map(image_digest))),
        (
            "init".into(),
            match &cfg.init {
                Init::Noise => "noise".into(),
                Init::Content => "content".into(),
                Init::Gray => "gray".into(),
                Init::Uniform => "uniform".into(),
                Init::Image(img) => format!("image {}", image_digest(img)),
            },
        ),
        ("seed".into(), cfg.seed.to_string()),
        (
            "scales".into(),
            list(
                scale_sizes(content, cfg)
                    .iter()
                    .map(|(w, h)| format!("{w}x{h}")),
            ),
        ),
        (
            "iterations".into(),
            list((0..plans.len()).map(|si| iterations_of(cfg, si))),
        ),
        (
            "optimizer".into(),
            crate::settings::optimizer(cfg.optimizer).into(),
        ),
        ("clamp_pixels".into(), cfg.clamp_pixels.to_string()),
        ("tolerance".into(), crate::settings::one(cfg.tolerance)),
        (
            "learning_rate".into(),
            crate::settings::one(
                cfg.learning_rate
                    .unwrap_or_else(|| cfg.optimizer.default_learning_rate()),
            ),
        ),
        (
            "objective".into(),
            crate::settings::objective(&cfg.objective),
        ),
        (
            "style_blend".into(),
            crate::settings::numbers(&cfg.style_blend),
        ),
        ("style_scale".into(), crate::settings::one(cfg.style_scale)),
        (
            "color_control".into(),
            crate::settings::color_control(cfg.color_control),
        ),
        (
            "content_masks".into(),
            list(cfg.content_masks.iter().map(image_digest)),
        ),
        (
            "style_masks".into(),
            list(cfg.style_masks.iter().map(image_digest)),
        ),
        (
            "temporal".into(),
            match &cfg.temporal {
                None => "none".into(),
                Some(t) => {
                    let c = Image::new(
                        t.target.width(),
                        t.target.height(),
                        t.weights.iter().flat_map(|v| [*v; 3]).collect(),
                    );
                    format!(
                        "{} {} {}",
                        image_digest(&t.target),
                        c.map_or("bad weights".into(), |c| image_digest(&c)),
                        crate::settings::one(t.weight)
                    )
                }
            },
        ),
        (
            "plan".into(),
            list(plans.iter().map(|p| {
                format!(
                    "{}/history {}",
                    crate::settings::tiling(p.tiling),
                    p.history
                )
            })),
        ),
    ];
    fp.sort();
    fp
}

/// The state of the scale being optimised.
struct Active<B: Backend> {
    objective: Objective<B>,
    /// The content at this scale (for the original colours).
    content: Image,
    x: Tensor<B>,
    /// The point before the last iteration (its loss was finite).
    previous: Option<Tensor<B>>,
    opt: AnyOptimizer<B>,
    /// The image the objective's image-following targets were last made for
    /// ([`Objective::refresh`]; `None` when no term follows the image).
    refreshed: Option<Tensor<B>>,
    /// The loss and terms of the evaluation at `x` when the last step's line search made it
    /// (the next step starts there without evaluating it again).
    accepted: Option<(f64, Vec<(String, f64)>)>,
}

/// A restored mid-scale state: the previous image, the optimizer's state, and the image the
/// targets that follow the image were made for.
type Restored = (Option<Vec<f32>>, OptimizerState, Option<Vec<f32>>);

/// Where a session stands between two steps. The position (scale, iterations done) is kept
/// beside it; the phase says what the next step starts from, what [`RenderSession::image`]
/// shows and what [`RenderSession::checkpoint`] saves.
enum Phase<B: Backend> {
    /// A fresh render, before its first iteration: the first scale starts from the configured
    /// starting image.
    Fresh,
    /// A scale has ended (the one before the current position): the next starts from its
    /// image (model space), upsampled. A finished render stays here.
    Between { image: Vec<f32> },
    /// Resumed from a checkpoint in the middle of the current scale: the scale is rebuilt
    /// from this image and the restored state.
    Restored { image: Vec<f32>, state: Restored },
    /// A scale in progress.
    Active(Box<Active<B>>),
}

impl<B: Backend> Phase<B> {
    fn active(&self) -> Option<&Active<B>> {
        match self {
            Phase::Active(a) => Some(a),
            _ => None,
        }
    }

    fn active_mut(&mut self) -> Option<&mut Active<B>> {
        match self {
            Phase::Active(a) => Some(a),
            _ => None,
        }
    }
}

/// What a render session is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionStatus {
    /// More iterations to go.
    Running,
    /// Every scale is done.
    Finished,
    /// Stopped early, for this reason (e.g. a non-finite loss); the image is the last good
    /// one.
    Stopped(String),
}

/// A render as a value that advances one iteration at a time: the whole state of the
/// render (scale, iteration, image, optimizer state, the loss terms of the last step) lives
/// here, so a driver — the CLI, a web view, a batch job — decides when to report, save a
/// snapshot or a [`Checkpoint`], or stop.
///
/// ```
/// use nst_style::{Checkpoint, Image, RenderConfig, RenderSession};
/// use nst_vgg::{Arch, Vgg};
/// # fn main() -> nst_style::Result<()> {
/// let cpu = nst_cpu::Cpu::new(1);
/// // Random weights keep the example fast; a real render loads them with
/// // `Vgg::from_safetensors` (everything below stays the same).
/// let vgg = Vgg::random_for_tests(&cpu, Arch::Vgg19, 3)?;
/// let content = Image::new(24, 16, vec![120.0; 24 * 16 * 3]).unwrap();
/// let styles = [Image::new(16, 16, (0..16 * 16 * 3).map(|i| (i % 256) as f32).collect()).unwrap()];
/// let cfg = RenderConfig::single_scale(4);
///
/// // Two iterations, then a checkpoint (to bytes: a file in real use)...
/// let mut session = RenderSession::new(&cpu, &vgg, &content, &styles, &cfg)?;
/// session.step()?;
/// let progress = session.step()?.expect("an iteration");
/// assert_eq!(progress.iteration, (2, 4));
/// let bytes = session.checkpoint()?.to_bytes()?;
/// // ...then on, to the end.
/// while session.step()?.is_some() {}
/// let whole = session.finish()?.image;
///
/// // A new session resumed from the checkpoint ends on the same image, bit for bit.
/// let mut resumed =
///     RenderSession::resume(&cpu, &vgg, &content, &styles, &cfg, Checkpoint::from_bytes(&bytes)?)?;
/// while resumed.step()?.is_some() {}
/// assert!(resumed.finish()?.image == whole);
/// # Ok(()) }
/// ```
///
/// A session owns what it uses (handles to the network and the backend, its own copies of
/// the images and settings): it borrows nothing, so it can be kept in a struct, or moved to
/// another thread (it is `Send` when the backend is), e.g. by a server that renders while it
/// answers requests:
///
/// ```
/// use nst_style::{Image, RenderConfig, RenderSession};
/// use nst_vgg::{Arch, Vgg};
/// let cpu = nst_cpu::Cpu::new(1);
/// let vgg = Vgg::random_for_tests(&cpu, Arch::Vgg19, 3).unwrap();
/// let content = Image::new(24, 16, vec![120.0; 24 * 16 * 3]).unwrap();
/// let styles = [Image::new(16, 16, vec![60.0; 16 * 16 * 3]).unwrap()];
/// let cfg = RenderConfig::single_scale(3);
/// let mut session = RenderSession::new(&cpu, &vgg, &content, &styles, &cfg).unwrap();
/// drop((vgg, content, styles, cfg)); // nothing is borrowed
/// let worker = std::thread::spawn(move || -> nst_style::Result<_> {
///     while session.step()?.is_some() {}
///     session.finish()
/// });
/// let rendered = worker.join().unwrap().unwrap();
/// assert_eq!((rendered.image.width(), rendered.image.height()), (24, 16));
/// ```
pub struct RenderSession<B: Backend> {
    backend: B,
    model: Vgg<B>,
    content: Image,
    styles: Vec<Image>,
    /// The content and styles the objective sees: as given, or as colour control makes them
    /// (grey for luminance-only transfer, colour-matched styles).
    /// (`None`: as given.)
    content_eff: Option<Image>,
    styles_eff: Option<Vec<Image>>,
    cfg: Arc<RenderConfig>,
    lr: f64,
    plans: Vec<MemoryPlan>,
    scales: Vec<(usize, usize)>,
    fingerprint: Vec<(String, String)>,
    /// The current scale, and the iterations completed in it.
    scale: usize,
    done: usize,
    phase: Phase<B>,
    elapsed_before: Duration,
    started: Instant,
    status: SessionStatus,
    last: Option<Progress>,
    /// The current scale's last losses (up to [`TOLERANCE_WINDOW`] + 1), for the
    /// convergence test.
    recent: std::collections::VecDeque<f64>,
    /// Terms of the caller's own, added at every scale.
    sources: Vec<Arc<dyn TermSource<B>>>,
    /// Set from elsewhere to abandon the iteration in flight ([`RenderSession::set_cancel`]).
    cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Terms of the caller's own in a render ([`RenderSession::with_terms`]): built anew at every
/// scale, since their targets depend on the scale's size, and added to the objective the
/// render's configuration makes. They get everything the render loop gives the built-in
/// terms: coarse-to-fine scales, exact tiles, the pixel projection, checkpoints and resume,
/// the progress line, the JSON log and the web view.
pub trait TermSource<B: Backend>: Send + Sync {
    /// The settings that change the terms, recorded in the fingerprint checkpoints compare
    /// (a resume with other settings is refused).
    fn describe(&self) -> String;
    /// The layers the terms read, for the memory plan.
    fn layers(&self) -> Vec<String>;
    /// The terms at one scale.
    fn terms(&self, scale: &Scale<'_, B>) -> Result<Vec<nst_loss::Term<B>>>;
}

/// What the terms of a scale are made from.
pub struct Scale<'a, B: Backend> {
    /// The network.
    pub model: &'a Vgg<B>,
    /// The content image at this scale (`[1, 3, H, W]`, model space; grey with
    /// luminance-only colour control).
    pub content: &'a Tensor<B>,
    /// The style images as the objective sees them (`[1, 3, H_k, W_k]`, model space).
    pub styles: &'a [Tensor<B>],
    /// This scale's (width, height).
    pub size: (usize, usize),
    /// How this scale's objective is tiled: targets built with
    /// [`crate::targets::features`] and [`crate::targets::statistic`] under it hold one
    /// tile's network pass at a time.
    pub tiling: crate::Tiling,
}

impl<B: Backend> RenderSession<B> {
    /// A session at the start of a render, its settings checked and every scale's memory
    /// plan made (so a budget that cannot be met is an error before any work).
    pub fn new(
        backend: &B,
        model: &Vgg<B>,
        content: &Image,
        styles: &[Image],
        cfg: &RenderConfig,
    ) -> Result<Self> {
        let lr = check_config(cfg, styles.len())?;
        let plans = plan_scales(model, content, styles, cfg)?;
        let fingerprint = fingerprint(backend, content, styles, cfg, &plans);
        // What colour control changes, kept beside the images as given.
        let (content_eff, styles_eff) = match cfg.color_control {
            crate::ColorControl::None | crate::ColorControl::Palette(_) => (None, None),
            crate::ColorControl::Match(_) => {
                (None, Some(cfg.color_control.prepare(content, styles).1))
            }
            crate::ColorControl::Luminance => {
                let (c, s) = cfg.color_control.prepare(content, styles);
                (Some(c), Some(s))
            }
        };
        Ok(RenderSession {
            backend: backend.clone(),
            model: model.clone(),
            content: content.clone(),
            styles: styles.to_vec(),
            content_eff,
            styles_eff,
            cfg: Arc::new(cfg.clone()),
            lr,
            plans,
            scales: scale_sizes(content, cfg),
            fingerprint,
            scale: 0,
            done: 0,
            phase: Phase::Fresh,
            elapsed_before: Duration::ZERO,
            started: Instant::now(),
            status: SessionStatus::Running,
            last: None,
            recent: Default::default(),
            sources: Vec::new(),
            cancel: None,
        })
    }

    /// Adds terms of the caller's own to every scale's objective (before the first step, and
    /// before [`RenderSession::resume_from`]). The memory plans are made again with their
    /// layers, and their description enters the fingerprint.
    pub fn with_terms(mut self, source: impl TermSource<B> + 'static) -> Result<Self> {
        if !matches!(self.phase, Phase::Fresh) {
            return Err(Error::Config(
                "terms can only be added before the first iteration".into(),
            ));
        }
        self.sources.push(Arc::new(source));
        let layers: Vec<String> = self.sources.iter().flat_map(|s| s.layers()).collect();
        self.plans =
            plan_scales_with(&self.model, &self.content, &self.styles, &self.cfg, &layers)?;
        let plan = fingerprint(
            &self.backend,
            &self.content,
            &self.styles,
            &self.cfg,
            &self.plans,
        )
        .into_iter()
        .find(|(k, _)| k == "plan")
        .expect("a plan entry");
        self.fingerprint.retain(|(k, _)| k != "plan");
        self.fingerprint.push(plan);
        let terms = self
            .sources
            .iter()
            .map(|s| s.describe())
            .collect::<Vec<_>>()
            .join("; ");
        self.describe("terms", &terms);
        Ok(self)
    }

    /// A session continuing from `checkpoint`: refused, naming what differs, when the
    /// checkpoint was made from other inputs or settings. Continuing gives exactly the bytes
    /// the uninterrupted render would have.
    pub fn resume(
        backend: &B,
        model: &Vgg<B>,
        content: &Image,
        styles: &[Image],
        cfg: &RenderConfig,
        checkpoint: Checkpoint,
    ) -> Result<Self> {
        Self::new(backend, model, content, styles, cfg)?.resume_from(checkpoint)
    }

    /// This fresh session (after any [`RenderSession::describe`]) moved to where `checkpoint`
    /// stopped; refused, naming what differs, when the checkpoint is of another render.
    pub fn resume_from(self, checkpoint: Checkpoint) -> Result<Self> {
        let mut s = self;
        let cfg = Arc::clone(&s.cfg);
        if !matches!(s.phase, Phase::Fresh) {
            return Err(Error::Checkpoint(
                "a session can only resume before its first iteration".into(),
            ));
        }
        let diff = checkpoint.differences(&s.fingerprint);
        if !diff.is_empty() {
            return Err(Error::Checkpoint(format!(
                "the checkpoint is of another render: {}",
                diff.join("; ")
            )));
        }
        let Checkpoint {
            scale,
            iteration,
            size,
            image,
            previous,
            optimizer,
            elapsed,
            recent_losses,
            refreshed,
            ..
        } = checkpoint;
        if scale >= s.scales.len()
            || iteration > iterations_of(&cfg, scale)
            || size != s.scales[scale]
            || image.len() != 3 * size.0 * size.1
            || previous.as_ref().is_some_and(|p| p.len() != image.len())
            || refreshed.as_ref().is_some_and(|p| p.len() != image.len())
        {
            return Err(Error::Checkpoint(format!(
                "the checkpoint's position (scale {scale}, iteration {iteration}, {}x{}) is not one of this render's",
                size.0, size.1
            )));
        }
        let kind_ok = matches!(
            (&optimizer, cfg.optimizer),
            (OptimizerState::Stateless, _)
                | (
                    OptimizerState::Lbfgs(_),
                    OptimizerKind::Lbfgs | OptimizerKind::LbfgsWolfe
                )
                | (OptimizerState::Adam(_), OptimizerKind::Adam)
        );
        if !kind_ok {
            return Err(Error::Checkpoint(
                "the checkpoint holds another optimizer's state".into(),
            ));
        }
        s.elapsed_before = elapsed;
        if iteration == iterations_of(&cfg, scale) {
            // At a scale's end: the next scale starts from this image.
            s.scale = scale + 1;
            s.done = 0;
            s.phase = Phase::Between { image };
            if s.scale == s.scales.len() {
                s.status = SessionStatus::Finished;
            }
        } else {
            s.scale = scale;
            s.done = iteration;
            s.phase = Phase::Restored {
                image,
                state: (previous, optimizer, refreshed),
            };
            s.recent = recent_losses.into_iter().collect();
        }
        Ok(s)
    }

    /// Adds `(name, value)` to the fingerprint checkpoints record and resumes compare (e.g.
    /// the thread count, which the driver knows and this crate does not).
    pub fn describe(&mut self, name: &str, value: &str) {
        self.fingerprint.retain(|(k, _)| k != name);
        self.fingerprint.push((name.to_string(), value.to_string()));
        self.fingerprint.sort();
    }

    /// The fingerprint of this render's inputs and settings.
    pub fn fingerprint(&self) -> &[(String, String)] {
        &self.fingerprint
    }

    /// The memory plan of every scale.
    pub fn plans(&self) -> &[MemoryPlan] {
        &self.plans
    }

    /// Where the render stands.
    pub fn status(&self) -> &SessionStatus {
        &self.status
    }

    /// The render's settings.
    pub fn config(&self) -> &RenderConfig {
        &self.cfg
    }

    /// The progress of the last iteration (`None` before the first one of this session).
    pub fn last_progress(&self) -> Option<&Progress> {
        self.last.as_ref()
    }

    /// The scale the next [`RenderSession::step`] starts, with its size and plan, when it
    /// starts one (so a driver can apply the plan, e.g. a memory pool limit, first).
    pub fn starting_scale(&self) -> Option<(usize, (usize, usize), &MemoryPlan)> {
        (self.status == SessionStatus::Running && self.phase.active().is_none())
            .then(|| (self.scale, self.scales[self.scale], &self.plans[self.scale]))
    }

    /// The position as (scale, iterations completed in it).
    pub fn position(&self) -> (usize, usize) {
        (self.scale, self.done)
    }

    /// The number of scales.
    pub fn scales(&self) -> usize {
        self.scales.len()
    }

    /// Time spent rendering, including the time before a resume.
    pub fn elapsed(&self) -> Duration {
        self.elapsed_before + self.started.elapsed()
    }

    /// The starting image of the first scale, `w x h`, in model space.
    fn initial(&self, w: usize, h: usize) -> Vec<f32> {
        let conv = self.model.convention();
        let pixels = |img: &Image| conv.to_model(img.data(), h, w);
        match &self.cfg.init {
            Init::Noise => noise(w, h, self.cfg.seed),
            Init::Content => pixels(&self.content_eff().resize(w, h)),
            Init::Gray => {
                let src = self.content_eff().data();
                let n = (src.len() / 3).max(1) as f64;
                let mean: Vec<f32> = (0..3)
                    .map(|c| {
                        (src.iter()
                            .skip(c)
                            .step_by(3)
                            .map(|&v| v as f64)
                            .sum::<f64>()
                            / n) as f32
                    })
                    .collect();
                let data = (0..w * h).flat_map(|_| mean.iter().copied()).collect();
                pixels(&Image::new(w, h, data).expect("a positive size"))
            }
            Init::Uniform => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.cfg.seed);
                let uniform = rand_distr::Uniform::new(0.0f32, 255.0);
                let data = (0..3 * w * h).map(|_| uniform.sample(&mut rng)).collect();
                pixels(&Image::new(w, h, data).expect("a positive size"))
            }
            Init::Image(img) => pixels(&img.resize(w, h)),
        }
    }

    /// The content as the objective sees it (grey under luminance-only colour control).
    fn content_eff(&self) -> &Image {
        self.content_eff.as_ref().unwrap_or(&self.content)
    }

    /// The styles as the objective sees them (colour-matched under colour control).
    fn styles_eff(&self) -> &[Image] {
        self.styles_eff.as_deref().unwrap_or(&self.styles)
    }

    /// The objective of scale `si`: the configured terms on the scale's content and styles
    /// (with masks and the temporal term when asked), and the caller's own terms.
    fn scale_objective(&self, si: usize) -> Result<Objective<B>> {
        let (w, h) = self.scales[si];
        let conv = self.model.convention();
        let backend = self.backend.clone();
        let backend = &backend;
        let cfg = Arc::clone(&self.cfg);
        let content = self.content_eff().resize(w, h);
        let long = style_long_side(w, h, cfg.style_scale);
        let style_t = self
            .styles_eff()
            .iter()
            .map(|s| s.fit(long).to_model(backend, conv))
            .collect::<nst_tensor::Result<Vec<_>>>()?;
        let content_t = content.to_model(backend, conv)?;
        let mut objective = Objective::with_tiling(
            &self.model,
            &cfg.objective,
            &content_t,
            &style_t,
            &cfg.style_blend,
            self.plans[si].tiling,
        )?;
        if !cfg.content_masks.is_empty() {
            let masks = cfg
                .content_masks
                .iter()
                .map(|m| region_mask(backend, m, w, h))
                .collect::<Result<Vec<_>>>()?;
            let style_masks = cfg
                .style_masks
                .iter()
                .zip(self.styles_eff())
                .map(|(m, s)| {
                    let (sw, sh) = s.fitted_size(long);
                    region_mask(backend, m, sw, sh)
                })
                .collect::<Result<Vec<_>>>()?;
            objective = objective.with_regions(&masks, &style_t, &style_masks)?;
        }
        if let Some(t) = cfg
            .temporal
            .as_ref()
            .filter(|t| (t.target.width(), t.target.height()) == (w, h))
        {
            let target = t.target.to_model(backend, conv)?;
            if t.weights.len() != w * h {
                return Err(Error::Config(format!(
                    "{} temporal weights for a {w}x{h} frame",
                    t.weights.len()
                )));
            }
            let c = Tensor::from_f32(backend, &t.weights, [1, 1, h, w])?;
            objective = objective.with_temporal(&target, &c, t.weight)?;
        }
        let scale = Scale {
            model: &self.model,
            content: &content_t,
            styles: &style_t,
            size: (w, h),
            tiling: self.plans[si].tiling,
        };
        for source in &self.sources {
            for term in source.terms(&scale)? {
                objective = objective.with_term(term)?;
            }
        }
        Ok(objective)
    }

    /// Builds the objective and the optimizer of the current scale.
    fn start_scale(&mut self) -> Result<()> {
        let si = self.scale;
        let (w, h) = self.scales[si];
        let conv = self.model.convention();
        let backend = self.backend.clone();
        let backend = &backend;
        let cfg = Arc::clone(&self.cfg);
        // The previous scale's buffers are all of other sizes; this scale's plan says how
        // much the backend may keep for reuse.
        backend.release_cached();
        backend.limit_cached(self.plans[si].pool_limit);
        let mut objective = self.scale_objective(si)?;
        if let Some(flag) = &self.cancel {
            objective.set_cancel(flag.clone());
        }
        let (x0, restored): (Vec<f32>, Option<Restored>) =
            match std::mem::replace(&mut self.phase, Phase::Fresh) {
                Phase::Restored { image, state } => (image, Some(state)),
                Phase::Between { image: prev } => {
                    // The previous scale's image, upsampled.
                    let (pw, ph) = self.scales[si - 1];
                    let up = conv.to_model(
                        Image::from_model(&prev, pw, ph, conv)
                            .ok_or_else(bad_len)?
                            .resize(w, h)
                            .data(),
                        h,
                        w,
                    );
                    (up, None)
                }
                Phase::Fresh => (self.initial(w, h), None),
                Phase::Active(_) => unreachable!("a scale is started only when none is active"),
            };
        let shape = [1, 3, h, w];
        let upload = |v: Vec<f32>| Tensor::from_f32(backend, &v, shape);
        let x = upload(x0)?;
        let invalid = |e: nst_optim::InvalidState| Error::Checkpoint(e.to_string());
        let (previous, state, refreshed) = match restored {
            Some((p, s, r)) => (p.map(upload).transpose()?, s, r.map(upload).transpose()?),
            None => (None, OptimizerState::Stateless, None),
        };
        let opt = match (cfg.optimizer, state) {
            (OptimizerKind::Lbfgs | OptimizerKind::LbfgsWolfe, OptimizerState::Lbfgs(s)) => {
                let s = s.try_map(upload)?;
                AnyOptimizer::Lbfgs(Lbfgs::from_state(self.lbfgs_config(si), s).map_err(invalid)?)
            }
            (OptimizerKind::Adam, OptimizerState::Adam(s)) => {
                let s = s.try_map(upload)?;
                AnyOptimizer::Adam(Adam::from_state(self.adam_config(), s).map_err(invalid)?)
            }
            _ => self.fresh_optimizer(si),
        };
        // A resumed scale's targets follow the image they were last made for.
        if let Some(r) = &refreshed {
            objective.refresh(r)?;
        }
        self.phase = Phase::Active(Box::new(Active {
            objective,
            // The colours to put back (the content as given, not its grey).
            content: self.content.resize(w, h),
            x,
            previous,
            opt,
            refreshed,
            accepted: None,
        }));
        Ok(())
    }

    fn lbfgs_config(&self, si: usize) -> LbfgsConfig {
        LbfgsConfig {
            learning_rate: self.lr,
            history: self.plans[si].history,
            max_step: if self.cfg.clamp_pixels {
                MAX_STEP_OF_RANGE * model_range(self.model.convention())
            } else {
                f64::INFINITY
            },
            line_search: if self.cfg.optimizer == OptimizerKind::LbfgsWolfe {
                LineSearch::StrongWolfe
            } else {
                LineSearch::None
            },
            ..Default::default()
        }
    }

    fn adam_config(&self) -> AdamConfig {
        AdamConfig {
            learning_rate: self.lr,
            ..Default::default()
        }
    }

    /// The configured optimizer with no history, for scale `si`.
    fn fresh_optimizer(&self, si: usize) -> AnyOptimizer<B> {
        match self.cfg.optimizer {
            OptimizerKind::Lbfgs | OptimizerKind::LbfgsWolfe => {
                AnyOptimizer::Lbfgs(Lbfgs::new(self.lbfgs_config(si)))
            }
            OptimizerKind::Adam => AnyOptimizer::Adam(Adam::new(self.adam_config())),
            OptimizerKind::Gd => AnyOptimizer::Gd(GradientDescent {
                learning_rate: self.lr,
            }),
        }
    }

    /// Runs one iteration (starting the next scale first when one is due). Returns its
    /// progress, or `None` when the render is over ([`RenderSession::status`] says why): every
    /// scale done, or a non-finite loss, in which case the image is the last good one.
    pub fn step(&mut self) -> Result<Option<Progress>> {
        if self.status != SessionStatus::Running {
            return Ok(None);
        }
        if self.phase.active().is_none() {
            self.start_scale()?;
        }
        let si = self.scale;
        let (w, h) = self.scales[si];
        let iterations = iterations_of(&self.cfg, si);
        self.refresh_targets(si)?;
        let active = self.phase.active_mut().expect("the scale was started");
        let start = active.x.clone();
        // The state before the step, to go back to when it is cancelled: handles to the same
        // immutable buffers, so it costs no copy.
        let (saved_opt, saved_accepted) = (active.opt.clone(), active.accepted.clone());
        // Every evaluation of this step, in call order (the optimizer names them by index).
        let mut evaluations: Vec<(f64, Vec<(String, f64)>)> = Vec::new();
        let objective = &active.objective;
        let mut eval = |x: &Tensor<B>| -> std::result::Result<(f64, Tensor<B>), StepError> {
            let e = objective.evaluate(x).map_err(StepError::Failed)?;
            // The gradient's sum is finite when every entry is (and far beyond any real
            // gradient otherwise).
            let finite = e.total.is_finite() && e.grad_sum.is_finite();
            let at_start = x.same_buffer(&start);
            if !finite && at_start {
                // The point the last step accepted: the guard's business.
                return Err(StepError::NonFinite {
                    message: format!(
                        "the loss became {} (terms: {})",
                        e.total,
                        e.terms
                            .iter()
                            .map(|(n, v)| format!("{n} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    at_start,
                });
            }
            // A line-search trial outside the region where the loss is finite: +∞ makes the
            // search shrink its step (it never accepts such a point).
            let total = if finite { e.total } else { f64::INFINITY };
            evaluations.push((total, e.terms));
            Ok((total, e.grad))
        };
        let step = active.opt.step(&mut active.x, &mut eval);
        let it = self.done + 1;
        let step = match step {
            Ok(step) => step,
            Err(StepError::Failed(Error::Cancelled)) => {
                // Back to the last completed iteration: its image, optimizer and records.
                active.x = start;
                active.opt = saved_opt;
                active.accepted = saved_accepted;
                return Err(Error::Cancelled);
            }
            Err(StepError::Failed(e)) => return Err(e),
            Err(StepError::NonFinite { message, at_start }) => {
                // The step failed before moving: `x` is where it started. When that point's
                // own loss was the bad one, the last good image is the one before it.
                if at_start {
                    if let Some(p) = active.previous.take() {
                        active.x = p;
                    }
                }
                self.status = SessionStatus::Stopped(format!(
                    "{message} at iteration {it} of scale {w}x{h}; kept the last good image"
                ));
                return Ok(None);
            }
        };
        // The iteration's record is the loss at the point it started from, the iterate:
        // evaluated now, or by the last step's line search. (Never a trial: a resumed run,
        // which evaluates its start afresh, records the same numbers.)
        let kept = active.accepted.take();
        active.accepted = step.accepted.and_then(|k| evaluations.get(k).cloned());
        let (total, terms) = match (step.start_evaluated, evaluations.into_iter().next()) {
            (true, Some(first)) => first,
            _ => kept.unwrap_or((step.loss, Vec::new())),
        };
        active.previous = Some(start);
        if self.cfg.clamp_pixels {
            project_into_range(active, self.model.convention())?;
        }
        let elapsed = self.elapsed_before + self.started.elapsed();
        self.done = it;
        let converged = it < iterations && converged(&mut self.recent, self.cfg.tolerance, total);
        let progress = Progress {
            scale: (si, self.scales.len()),
            size: (w, h),
            iteration: (it, iterations),
            total,
            terms,
            elapsed,
            converged,
        };
        if it == iterations || converged {
            self.end_scale()?;
        }
        self.last = Some(progress.clone());
        Ok(Some(progress))
    }

    /// Remakes the targets that follow the image when they are due: at the scale's start and
    /// every `n` iterations. When they changed, the optimizer's history (of the old
    /// objective) starts afresh.
    fn refresh_targets(&mut self, si: usize) -> Result<()> {
        let Some(n) = self
            .phase
            .active()
            .and_then(|a| a.objective.refresh_every())
        else {
            return Ok(());
        };
        if !self.done.is_multiple_of(n) {
            return Ok(());
        }
        let active = self.phase.active_mut().expect("the scale was started");
        let changed = active.objective.refresh(&active.x)?;
        active.refreshed = Some(active.x.clone());
        if changed && self.done > 0 {
            let fresh = self.fresh_optimizer(si);
            self.phase.active_mut().expect("the scale was started").opt = fresh;
            self.recent.clear();
        }
        Ok(())
    }

    /// The current scale is done: its image carried to the next, or the render finished.
    fn end_scale(&mut self) -> Result<()> {
        self.recent.clear();
        let image = match self.phase.active() {
            Some(a) => a.x.to_f32()?,
            None => return Ok(()),
        };
        self.phase = Phase::Between { image };
        self.scale += 1;
        self.done = 0;
        if self.scale == self.scales.len() {
            self.status = SessionStatus::Finished;
        }
        Ok(())
    }

    /// Lets another thread abandon the iteration in flight: once `flag` is set, [`step`]
    /// returns [`Error::Cancelled`] at the objective's next evaluation or tile, and the
    /// session is back at the last completed iteration (its image, optimizer state and
    /// position), so [`checkpoint`] and [`image`] give what they gave before the step and a
    /// resumed render makes the same bytes. Targets an image-following term remade at the
    /// start of the abandoned step stay remade: they are what that iteration starts with
    /// anyway. Building a scale (its targets) is not abandoned.
    ///
    /// [`step`]: RenderSession::step
    /// [`checkpoint`]: RenderSession::checkpoint
    /// [`image`]: RenderSession::image
    pub fn set_cancel(&mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        if let Some(a) = self.phase.active_mut() {
            a.objective.set_cancel(flag.clone());
        }
        self.cancel = Some(flag);
    }

    /// Stops the render early (e.g. a driver's stop button); the image stays as it is.
    pub fn stop(&mut self, why: impl Into<String>) {
        if self.status == SessionStatus::Running {
            self.status = SessionStatus::Stopped(why.into());
        }
    }

    /// The current image as the user gets it (with the content's colours, or the styles'
    /// palette, when asked): the last good one.
    pub fn image(&self) -> Result<Image> {
        let conv = self.model.convention();
        let at = |si: usize, x: &[f32]| {
            let (w, h) = self.scales[si];
            Image::from_model(x, w, h, conv).ok_or_else(bad_len)
        };
        let img = match &self.phase {
            Phase::Active(a) => at(self.scale, &a.x.to_f32()?)?,
            Phase::Restored { image, .. } => at(self.scale, image)?,
            // Between scales (or done): the image of the last finished scale.
            Phase::Between { image } => at(self.scale - 1, image)?,
            Phase::Fresh => {
                let (w, h) = self.scales[0];
                at(0, &self.initial(w, h))?
            }
        };
        let (w, h) = (img.width(), img.height());
        Ok(match self.cfg.color_control {
            crate::ColorControl::Luminance => match self.phase.active() {
                Some(a) => img.with_colors_of(&a.content),
                None => img.with_colors_of(&self.content.resize(w, h)),
            },
            crate::ColorControl::Palette(root) => {
                let long = style_long_side(w, h, self.cfg.style_scale);
                let styles: Vec<Image> = self.styles_eff().iter().map(|s| s.fit(long)).collect();
                crate::color::match_palette(&img, &styles, &self.cfg.style_blend, root)?
            }
            crate::ColorControl::None | crate::ColorControl::Match(_) => img,
        })
    }

    /// Everything needed to continue this render later ([`RenderSession::resume`]).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let (scale, iteration, image, previous, optimizer, refreshed) = match &self.phase {
            Phase::Active(a) => {
                let host = |t: Tensor<B>| t.to_f32();
                let optimizer = match &a.opt {
                    AnyOptimizer::Lbfgs(o) => OptimizerState::Lbfgs(o.state().try_map(host)?),
                    AnyOptimizer::Adam(o) => OptimizerState::Adam(o.state().try_map(host)?),
                    AnyOptimizer::Gd(_) => OptimizerState::Stateless,
                };
                let previous = a.previous.as_ref().map(|p| p.to_f32()).transpose()?;
                let refreshed = a.refreshed.as_ref().map(|p| p.to_f32()).transpose()?;
                (
                    self.scale,
                    self.done,
                    a.x.to_f32()?,
                    previous,
                    optimizer,
                    refreshed,
                )
            }
            Phase::Restored {
                image,
                state: (p, o, r),
            } => (
                self.scale,
                self.done,
                image.clone(),
                p.clone(),
                o.clone(),
                r.clone(),
            ),
            Phase::Between { image } => {
                let si = self.scale - 1;
                let n = iterations_of(&self.cfg, si);
                (si, n, image.clone(), None, OptimizerState::Stateless, None)
            }
            Phase::Fresh => {
                return Err(Error::Checkpoint(
                    "nothing to checkpoint before the first iteration".into(),
                ))
            }
        };
        Ok(Checkpoint {
            scale,
            iteration,
            size: self.scales[scale],
            image,
            previous,
            optimizer,
            elapsed: self.elapsed(),
            recent_losses: if matches!(self.phase, Phase::Active(_) | Phase::Restored { .. }) {
                self.recent.iter().copied().collect()
            } else {
                Vec::new()
            },
            fingerprint: self.fingerprint.clone(),
            refreshed,
        })
    }

    /// Writes [`RenderSession::checkpoint`] as a safetensors file, downloading one tensor at a
    /// time (so it never holds a second copy of the optimizer's state).
    pub fn write_checkpoint(&self, w: &mut dyn std::io::Write) -> Result<()> {
        use crate::checkpoint::{Head, HeadOptimizer, Source};
        let Some(a) = self.phase.active() else {
            return self.checkpoint()?.write_to(w);
        };
        fn src<B: Backend>(name: String, t: &Tensor<B>) -> Source<'_> {
            (name, Box::new(move || Ok(t.to_f32()?)))
        }
        let lbfgs;
        let adam;
        let mut sources = vec![src("image".into(), &a.x)];
        if let Some(p) = &a.previous {
            sources.push(src("previous".into(), p));
        }
        if let Some(r) = &a.refreshed {
            sources.push(src("refreshed".into(), r));
        }
        let optimizer = match &a.opt {
            AnyOptimizer::Lbfgs(o) => {
                lbfgs = o.state();
                for (i, (sv, yv, _)) in lbfgs.pairs.iter().enumerate() {
                    sources.push(src(format!("lbfgs.s.{i}"), sv));
                    sources.push(src(format!("lbfgs.y.{i}"), yv));
                }
                if let Some((ls, lg)) = &lbfgs.last {
                    sources.push(src("lbfgs.last_s".into(), ls));
                    sources.push(src("lbfgs.last_g".into(), lg));
                }
                HeadOptimizer::Lbfgs {
                    rho: lbfgs.pairs.iter().map(|p| p.2).collect(),
                    h_diag: lbfgs.h_diag,
                    last: lbfgs.last.is_some(),
                }
            }
            AnyOptimizer::Adam(o) => {
                adam = o.state();
                if let Some((m, v)) = &adam.moments {
                    sources.push(src("adam.m".into(), m));
                    sources.push(src("adam.v".into(), v));
                }
                HeadOptimizer::Adam { steps: adam.steps }
            }
            AnyOptimizer::Gd(_) => HeadOptimizer::Stateless,
        };
        let recent: Vec<f64> = self.recent.iter().copied().collect();
        let head = Head {
            scale: self.scale,
            iteration: self.done,
            size: self.scales[self.scale],
            elapsed: self.elapsed(),
            recent_losses: &recent,
            fingerprint: &self.fingerprint,
            optimizer,
        };
        crate::checkpoint::write(w, &head, &sources)
    }

    /// The result: the final image, or the last good one with the reason the render stopped.
    pub fn finish(self) -> Result<Rendered> {
        let image = self.image()?;
        let stopped_early = match &self.status {
            SessionStatus::Finished => None,
            SessionStatus::Stopped(why) => Some(why.clone()),
            SessionStatus::Running => Some(match &self.last {
                Some(p) => format!("stopped at iteration {}", p.iteration.0),
                None => "stopped before the first iteration".into(),
            }),
        };
        Ok(Rendered {
            image,
            stopped_early,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{quality_schedule, Quality};

    #[test]
    fn quality_schedules() {
        let d = |s| quality_schedule(Quality::Default, s);
        assert_eq!(d(512), vec![(128, 300), (256, 100), (512, 200)]);
        assert_eq!(d(384), vec![(192, 300), (384, 200)]);
        assert_eq!(d(2048), vec![(512, 300), (1024, 100), (2048, 200)]);
        assert_eq!(d(200), vec![(200, 300)]);
        assert_eq!(d(0), vec![(1, 300)]);
        let draft = |s| quality_schedule(Quality::Draft, s);
        assert_eq!(draft(1024), vec![(128, 200), (256, 50)]);
        assert_eq!(draft(64), vec![(64, 100)]);
        assert_eq!(quality_schedule(Quality::High, 700), vec![(700, 500)]);
    }
}
