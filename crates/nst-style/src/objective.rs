//! The style-transfer objective: targets built once, then the loss and its gradient for any
//! image (see `docs/objective.md`).

use crate::tiled::{Geometry, Tile, TilePlan, Tiling, Window};
use crate::{Error, Result};
use nst_autodiff::{Tape, Var};
use nst_features::FeatureExtractor;
use nst_tensor::{Backend, Tensor};
use nst_vgg::Vgg;

/// Weights and layers of the objective.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectiveConfig {
    /// w_c, applied to every content layer.
    pub content_weight: f64,
    /// w_s, applied to every style layer.
    pub style_weight: f64,
    /// w_tv.
    pub tv_weight: f64,
    /// Content layers with a per-layer multiplier (1 by default).
    pub content_layers: Vec<(String, f64)>,
    /// Style layers with a per-layer multiplier (1 by default).
    pub style_layers: Vec<(String, f64)>,
    /// The style statistic compared at the style layers.
    pub style_loss: StyleLoss,
    /// The classic `-normalize_gradients`: the gradient of each content and style term with
    /// respect to its layer's activations is divided by its L1 norm (plus 1e-8) before the
    /// term's weight multiplies it. The reported terms are unchanged (so the gradient is no
    /// longer theirs). Untiled objectives only.
    pub normalize_gradients: bool,
}

/// The style statistic compared at the style layers (see `docs/objective.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StyleLoss {
    /// Gram matrices: `mean((G(x) − A)²)` (Gatys et al.).
    #[default]
    Gram,
    /// The squared Wasserstein-2 distance between the Gaussians of the activations
    /// ([`nst_loss::w2_style`]).
    W2,
}

impl StyleLoss {
    /// The name used on the command line and in logs: `gram` or `w2`.
    pub fn name(self) -> &'static str {
        match self {
            StyleLoss::Gram => "gram",
            StyleLoss::W2 => "w2",
        }
    }

    /// The default style weight w_s for this loss (the two differ in scale by orders of
    /// magnitude; see `docs/objective.md`).
    pub fn default_style_weight(self) -> f64 {
        match self {
            StyleLoss::Gram => 100.0,
            StyleLoss::W2 => W2_DEFAULT_STYLE_WEIGHT,
        }
    }
}

/// The default w_s of the W2 style loss.
pub const W2_DEFAULT_STYLE_WEIGHT: f64 = 10.0;

impl Default for ObjectiveConfig {
    fn default() -> Self {
        let one = |n: &str| (n.to_string(), 1.0);
        ObjectiveConfig {
            content_weight: 5.0,
            style_weight: 100.0,
            tv_weight: 1e-3,
            content_layers: vec![one("relu4_2")],
            style_layers: ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
                .into_iter()
                .map(one)
                .collect(),
            style_loss: StyleLoss::Gram,
            normalize_gradients: false,
        }
    }
}

/// The loss and gradient at one image.
#[derive(Clone, Debug)]
pub struct Evaluation<B: Backend> {
    /// The total loss.
    pub total: f64,
    /// Every term by name: `content/<layer>`, `style/<layer>`, `tv`.
    pub terms: Vec<(String, f64)>,
    /// The gradient of the total w.r.t. the image, in model space (`[1, 3, H, W]`).
    pub grad: Tensor<B>,
    /// The sum of the gradient's entries: NaN or infinite when any entry is (a finiteness
    /// check that comes back with the loss terms, not a wait of its own).
    pub grad_sum: f64,
}

/// The objective with its targets: content activations and blended style Gram matrices.
///
/// Evaluated on the whole image at once, or tile by tile ([`Tiling`]): the tiled evaluation
/// computes the same objective and gradient (up to rounding) while holding the network's
/// activations of one tile at a time (see `docs/tiling.md`).
pub struct Objective<'m, B: Backend> {
    cfg: ObjectiveConfig,
    fx: FeatureExtractor<'m, B>,
    /// Content targets: one per content layer (untiled), or per tile and content layer, the
    /// tile's own positions (`None` where it owns none).
    content_targets: ContentTargets<B>,
    content_dims: Vec<usize>,
    /// Gram targets per style layer (empty with the W2 loss).
    style_targets: Vec<Tensor<B>>,
    /// W2 targets per style layer (empty with the Gram loss).
    w2_targets: Vec<nst_loss::W2Target>,
    tiled: Option<Tiled<'m, B>>,
    /// Region masks (spatial control), when given: see [`Objective::with_regions`].
    regions: Option<Regions<B>>,
    /// The temporal term (video), when given: see [`Objective::with_temporal`].
    temporal: Option<(Tensor<B>, Tensor<B>, f64)>,
}

/// Spatial control: a style per region.
struct Regions<B: Backend> {
    /// Per style layer, per region: the mask at the layer's positions (`[1, 1, H_l, W_l]`).
    masks: Vec<Vec<Tensor<B>>>,
    /// Per style layer, per region: the plain Gram matrix of the region's style image.
    targets: Vec<Vec<Tensor<B>>>,
}

enum ContentTargets<B: Backend> {
    Whole(Vec<Tensor<B>>),
    Tiles(Vec<Vec<Option<Tensor<B>>>>),
}

/// What the tiled evaluation needs besides the targets.
struct Tiled<'m, B: Backend> {
    geometry: Geometry,
    plan: TilePlan,
    /// (content layers, style layers) as model layer indices.
    content_idx: Vec<usize>,
    style_idx: Vec<usize>,
    deepest: usize,
    /// The last layer of the shallow part (`pool2`), when deeper layers are used.
    split: Option<usize>,
    /// How many tiles keep their tape from pass 1 to pass 2.
    keep: usize,
    _model: std::marker::PhantomData<&'m Vgg<B>>,
}

/// What can be cut to a window: plain tensors and tape variables.
trait Narrow: Clone {
    fn dims_of(&self) -> Vec<usize>;
    fn narrowed(&self, axis: usize, start: usize, len: usize) -> nst_tensor::Result<Self>;
}

impl<B: Backend> Narrow for Tensor<B> {
    fn dims_of(&self) -> Vec<usize> {
        self.dims().to_vec()
    }
    fn narrowed(&self, axis: usize, start: usize, len: usize) -> nst_tensor::Result<Self> {
        self.narrow(axis, start, len)
    }
}

impl<B: Backend> Narrow for Var<'_, B> {
    fn dims_of(&self) -> Vec<usize> {
        self.shape().dims().to_vec()
    }
    fn narrowed(&self, axis: usize, start: usize, len: usize) -> nst_tensor::Result<Self> {
        self.narrow(axis, start, len)
    }
}

/// The part of `t` (`[1, C, H, W]`) inside `w` (itself when `w` covers it).
fn window<T: Narrow>(t: &T, w: &Window) -> nst_tensor::Result<T> {
    let d = t.dims_of();
    let t = if w.y == 0 && w.h == d[2] {
        t.clone()
    } else {
        t.narrowed(2, w.y, w.h)?
    };
    if w.x == 0 && w.w == d[3] {
        Ok(t)
    } else {
        t.narrowed(3, w.x, w.w)
    }
}

/// `F̂ F̂ᵀ` (unnormalised) of an activation `[1, C, h, w]`.
fn gram_sum<B: Backend>(f: &Tensor<B>) -> nst_tensor::Result<Tensor<B>> {
    let d = f.dims();
    let flat = f.reshape([d[1], d[2] * d[3]])?;
    flat.matmul_t(&flat, false, true)
}

/// Adds `part` (a crop's gradient) into `acc` (`[1, 3, H, W]`) at the crop's window.
fn add_window<B: Backend>(
    acc: Option<Tensor<B>>,
    part: &Tensor<B>,
    w: &Window,
    full: (usize, usize),
) -> nst_tensor::Result<Tensor<B>> {
    let mut p = part.clone();
    if w.w != full.1 {
        p = p.narrow_backward(3, w.x, full.1)?;
    }
    if w.h != full.0 {
        p = p.narrow_backward(2, w.y, full.0)?;
    }
    match acc {
        None => Ok(p),
        Some(a) => a.add(&p),
    }
}

/// Normalises blend weights to sum 1 (equal weights when `blend` is empty).
pub fn normalize_blend(blend: &[f64], styles: usize) -> Result<Vec<f64>> {
    if styles == 0 {
        return Err(Error::Config("at least one style image is needed".into()));
    }
    if blend.is_empty() {
        return Ok(vec![1.0 / styles as f64; styles]);
    }
    if blend.len() != styles {
        return Err(Error::Config(format!(
            "{} style blend weights given for {styles} style images",
            blend.len()
        )));
    }
    if blend.iter().any(|b| !b.is_finite() || *b < 0.0) {
        return Err(Error::Config(format!(
            "style blend weights must be non-negative numbers, got {blend:?}"
        )));
    }
    let sum: f64 = blend.iter().sum();
    if sum <= 0.0 {
        return Err(Error::Config("style blend weights sum to zero".into()));
    }
    Ok(blend.iter().map(|b| b / sum).collect())
}

impl<'m, B: Backend> Objective<'m, B> {
    /// Builds the targets: the content image's activations at the content layers and, at
    /// each style layer, `Σ β_k G(s_k)` over the style images (`β` normalised to sum 1).
    /// Images are `[1, 3, H, W]` in model space. Evaluated untiled.
    pub fn new(
        model: &'m Vgg<B>,
        cfg: &ObjectiveConfig,
        content: &Tensor<B>,
        styles: &[Tensor<B>],
        blend: &[f64],
    ) -> Result<Self> {
        Self::with_tiling(model, cfg, content, styles, blend, Tiling::Off)
    }

    /// [`Objective::new`], evaluated as `tiling` says. With tiles, the targets are built tile
    /// by tile too (the content's tiles follow the content's plan; each style image gets its
    /// own plan with the same tile size), so no whole-image activation is ever held.
    pub fn with_tiling(
        model: &'m Vgg<B>,
        cfg: &ObjectiveConfig,
        content: &Tensor<B>,
        styles: &[Tensor<B>],
        blend: &[f64],
        tiling: Tiling,
    ) -> Result<Self> {
        for (name, w) in cfg.content_layers.iter().chain(&cfg.style_layers) {
            if !w.is_finite() || *w < 0.0 {
                return Err(Error::Config(format!(
                    "layer weight for {name} must be a non-negative number"
                )));
            }
        }
        for (what, w) in [
            ("content weight", cfg.content_weight),
            ("style weight", cfg.style_weight),
            ("tv weight", cfg.tv_weight),
        ] {
            if !w.is_finite() || w < 0.0 {
                return Err(Error::Config(format!(
                    "the {what} must be a non-negative number, got {w}"
                )));
            }
        }
        if cfg.content_layers.is_empty() && cfg.style_layers.is_empty() {
            return Err(Error::Config("no content or style layers".into()));
        }
        let beta = normalize_blend(blend, styles.len())?;
        let names: Vec<&str> = cfg
            .content_layers
            .iter()
            .chain(&cfg.style_layers)
            .map(|(n, _)| n.as_str())
            .collect();
        let fx = FeatureExtractor::new(model, &names)?;
        let content_layers: Vec<&str> =
            cfg.content_layers.iter().map(|(n, _)| n.as_str()).collect();
        let style_layers: Vec<&str> = cfg.style_layers.iter().map(|(n, _)| n.as_str()).collect();
        let cfx = FeatureExtractor::new(model, &content_layers)?;
        let sfx = FeatureExtractor::new(model, &style_layers)?;
        let index = |n: &&str| model.layer_index(n);
        let content_idx = content_layers
            .iter()
            .map(index)
            .collect::<nst_vgg::Result<Vec<_>>>()?;
        let style_idx = style_layers
            .iter()
            .map(index)
            .collect::<nst_vgg::Result<Vec<_>>>()?;
        let all: Vec<usize> = content_idx.iter().chain(&style_idx).copied().collect();
        let geometry = Geometry::new(model, &all)?;
        let dims = content.dims().to_vec();
        if dims.len() != 4 {
            return Err(Error::Config(format!(
                "the content must be [1, 3, H, W], got {dims:?}"
            )));
        }

        let plan = match tiling {
            Tiling::Off => None,
            Tiling::Tiles(t) => Some(geometry.plan(dims[2], dims[3], t)?),
            Tiling::TilesWithHalo { tile, halo } => {
                Some(geometry.plan_with_halo(dims[2], dims[3], tile, halo)?)
            }
            Tiling::TilesKeeping { tile, .. } => Some(geometry.plan(dims[2], dims[3], tile)?),
        };

        let content_targets = match &plan {
            None => {
                let cf = cfx.extract(content)?;
                ContentTargets::Whole(
                    content_layers
                        .iter()
                        .map(|n| cf.get(n).cloned().expect("extracted"))
                        .collect(),
                )
            }
            Some(plan) => {
                let mut per_tile = Vec::with_capacity(plan.tiles.len());
                for tile in &plan.tiles {
                    let cf = cfx.extract(&window(content, &tile.crop)?)?;
                    let mut row = Vec::with_capacity(content_layers.len());
                    for (n, &li) in content_layers.iter().zip(&content_idx) {
                        let f = cf.get(n).expect("extracted");
                        row.push(match geometry.inner_at(plan, tile, li) {
                            Some(w) => Some(window(f, &w)?),
                            None => None,
                        });
                    }
                    per_tile.push(row);
                }
                ContentTargets::Tiles(per_tile)
            }
        };

        if cfg.normalize_gradients && plan.is_some() {
            return Err(Error::Config(
                "--normalize-gradients needs the untiled objective (pass --tile off, or a larger --max-memory)".into(),
            ));
        }
        let mut style_targets: Vec<Option<Tensor<B>>> = vec![None; style_layers.len()];
        let gram_styles = if cfg.style_loss == StyleLoss::Gram {
            styles
        } else {
            &[]
        };
        for (s, b) in gram_styles.iter().zip(&beta) {
            let grams = match plan.as_ref().map(|p| (p.tile, p.halo)) {
                None => {
                    let sf = sfx.extract(s)?;
                    style_layers
                        .iter()
                        .map(|n| nst_loss::gram_tensor(sf.get(n).expect("extracted")))
                        .collect::<nst_tensor::Result<Vec<_>>>()?
                }
                Some((t, halo)) => {
                    let d = s.dims();
                    if d.len() != 4 {
                        return Err(Error::Config(format!(
                            "a style image must be [1, 3, H, W], got {d:?}"
                        )));
                    }
                    let splan = geometry.plan_with_halo(d[2], d[3], t, halo)?;
                    let (sums, _) =
                        tiled_moment_sums(&sfx, &geometry, &splan, &style_idx, s, false)?;
                    sums.into_iter()
                        .zip(&style_idx)
                        .map(|(g, &li)| {
                            let (_, c) = geometry.layer(li);
                            let n = c * geometry.positions(d[2], d[3], li);
                            g.scale(1.0 / n.max(1) as f64)
                        })
                        .collect::<nst_tensor::Result<Vec<_>>>()?
                }
            };
            for (slot, g) in style_targets.iter_mut().zip(grams) {
                let g = g.scale(*b)?;
                add_into(slot, g)?;
            }
        }
        let mut w2_targets = Vec::new();
        if cfg.style_loss == StyleLoss::W2 {
            let mut per_style: Vec<Vec<nst_loss::Moments>> = Vec::with_capacity(styles.len());
            for s in styles {
                let d = s.dims();
                if d.len() != 4 {
                    return Err(Error::Config(format!(
                        "a style image must be [1, 3, H, W], got {d:?}"
                    )));
                }
                per_style.push(match plan.as_ref().map(|p| (p.tile, p.halo)) {
                    None => {
                        let sf = sfx.extract(s)?;
                        style_layers
                            .iter()
                            .map(|n| nst_loss::Moments::of(sf.get(n).expect("extracted")))
                            .collect::<nst_tensor::Result<Vec<_>>>()?
                    }
                    Some((t, halo)) => {
                        let splan = geometry.plan_with_halo(d[2], d[3], t, halo)?;
                        let (grams, sums) =
                            tiled_moment_sums(&sfx, &geometry, &splan, &style_idx, s, true)?;
                        let mut layers = Vec::with_capacity(style_idx.len());
                        for ((g, s1), &li) in grams.iter().zip(&sums).zip(&style_idx) {
                            let (_, c) = geometry.layer(li);
                            let p = geometry.positions(d[2], d[3], li);
                            layers.push(nst_loss::Moments::from_sums(
                                c,
                                p,
                                &s1.to_f64()?,
                                &g.to_f64()?,
                            ));
                        }
                        layers
                    }
                });
            }
            for li in 0..style_layers.len() {
                let parts: Vec<(f64, &nst_loss::Moments)> = beta
                    .iter()
                    .copied()
                    .zip(per_style.iter().map(|m| &m[li]))
                    .collect();
                w2_targets.push(nst_loss::W2Target::new(&nst_loss::Moments::blend(&parts)?)?);
            }
        }
        let deepest = all.iter().copied().max().unwrap_or(0);
        let split = model.layer_index("pool2").ok().filter(|&sp| sp < deepest);
        let tiled = plan.map(|plan| {
            let n = plan.tiles.len();
            let keep = match tiling {
                Tiling::TilesKeeping { keep, .. } => keep.min(n),
                _ if split.is_some() => n,
                _ => 1,
            };
            Tiled {
                geometry,
                plan,
                content_idx,
                style_idx,
                deepest,
                split,
                keep,
                _model: std::marker::PhantomData,
            }
        });
        Ok(Objective {
            cfg: cfg.clone(),
            fx,
            content_targets,
            content_dims: dims,
            style_targets: style_targets.into_iter().flatten().collect(),
            w2_targets,
            tiled,
            regions: None,
            temporal: None,
        })
    }

    /// Spatial control (Gatys et al. 2017): region `k` of the image is painted in style
    /// image `k`. `masks[k]` is `[1, 1, H, W]` at the content's size (values usually in
    /// [0, 1], not necessarily binary nor a partition), average-pooled 2x2 with stride 2 at
    /// every pooling layer before each style layer. Each style layer's term becomes
    /// `w_s · mult_l · Σ_k (1/K) · mean((G_{l,k}(x) − A_{l,k})²)` with the guided Gram matrix
    /// `G_{l,k}` ([`nst_loss::guided_gram`]) and `A_{l,k}` the plain Gram matrix of style `k`
    /// (any blend is replaced: the masks are the blend), or, when `style_masks` is not
    /// empty, the guided Gram matrix of style `k` under `style_masks[k]` (`[1, 1, H_k, W_k]`
    /// at style `k`'s size). With one style and a mask of ones this is exactly the
    /// objective without regions. Untiled objectives only.
    pub fn with_regions(
        mut self,
        masks: &[Tensor<B>],
        styles: &[Tensor<B>],
        style_masks: &[Tensor<B>],
    ) -> Result<Self> {
        if self.tiled.is_some() {
            return Err(Error::Config(
                "region masks need the untiled objective (pass --tile off, or a larger --max-memory)".into(),
            ));
        }
        if self.cfg.style_loss != StyleLoss::Gram {
            return Err(Error::Config(
                "region masks work with the Gram style loss only (--style-loss gram)".into(),
            ));
        }
        if masks.len() != styles.len() || masks.is_empty() {
            return Err(Error::Config(format!(
                "{} masks given for {} style images: one mask per style image",
                masks.len(),
                styles.len()
            )));
        }
        if !style_masks.is_empty() && style_masks.len() != styles.len() {
            return Err(Error::Config(format!(
                "{} style masks given for {} style images: one mask per style image",
                style_masks.len(),
                styles.len()
            )));
        }
        let (h, w) = (self.content_dims[2], self.content_dims[3]);
        for m in masks {
            if m.dims() != [1, 1, h, w] {
                return Err(Error::Config(format!(
                    "a mask is {:?}, expected [1, 1, {h}, {w}] (the content's size)",
                    m.dims()
                )));
            }
        }
        let model = self.fx.model();
        let names: Vec<&str> = self
            .cfg
            .style_layers
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        let sfx = FeatureExtractor::new(model, &names)?;
        // Average pooling at every pooling layer before a layer: its positions.
        let propagate = |m: &Tensor<B>, name: &str| -> Result<Tensor<B>> {
            let idx = model.layer_index(name)?;
            let pools = model.layers()[..idx]
                .iter()
                .filter(|l| l.op == nst_vgg::LayerOp::Pool)
                .count();
            let mut m = m.clone();
            for _ in 0..pools {
                m = m.pool2d(nst_tensor::PoolKind::Avg, 2, 2)?;
            }
            Ok(m)
        };
        let mut per_style = Vec::with_capacity(styles.len());
        for (k, s) in styles.iter().enumerate() {
            let f = sfx.extract(s)?;
            let mut grams = Vec::with_capacity(names.len());
            for n in &names {
                let fl = f.get(n).expect("extracted");
                grams.push(match style_masks.get(k) {
                    None => nst_loss::gram_tensor(fl)?,
                    Some(sm) => {
                        let d = s.dims();
                        if sm.dims() != [1, 1, d[2], d[3]] {
                            return Err(Error::Config(format!(
                                "a style mask is {:?}, expected [1, 1, {}, {}] (its style's size)",
                                sm.dims(),
                                d[2],
                                d[3]
                            )));
                        }
                        let tape = nst_autodiff::Tape::new();
                        let v = tape.constant(fl.clone());
                        nst_loss::guided_gram(&v, &propagate(sm, n)?)?
                            .value()
                            .clone()
                    }
                });
            }
            per_style.push(grams);
        }
        let mut layer_masks = Vec::with_capacity(names.len());
        let mut targets = Vec::with_capacity(names.len());
        for (li, name) in names.iter().enumerate() {
            let row = masks
                .iter()
                .map(|m| propagate(m, name))
                .collect::<Result<Vec<_>>>()?;
            layer_masks.push(row);
            targets.push(per_style.iter().map(|t| t[li].clone()).collect());
        }
        self.regions = Some(Regions {
            masks: layer_masks,
            targets,
        });
        Ok(self)
    }

    /// Temporal consistency (Ruder et al. 2016): adds the term `temporal` =
    /// `weight · (1/D) · Σ c_p (x_p − ω_p)²` over every pixel and channel (`D = 3·H·W`), with
    /// `target` ω (`[1, 3, H, W]`, model space) and `weights` c (`[1, 1, H, W]`). Untiled
    /// objectives only.
    pub fn with_temporal(
        mut self,
        target: &Tensor<B>,
        weights: &Tensor<B>,
        weight: f64,
    ) -> Result<Self> {
        if self.tiled.is_some() {
            return Err(Error::Config(
                "the temporal term needs the untiled objective".into(),
            ));
        }
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(Error::Config(format!(
                "the temporal weight must be a non-negative number, got {weight}"
            )));
        }
        let d = &self.content_dims;
        if target.dims() != d.as_slice() || weights.dims() != [1, 1, d[2], d[3]] {
            return Err(Error::Config(format!(
                "the temporal target is {:?} and its weights {:?} for an image {d:?}",
                target.dims(),
                weights.dims()
            )));
        }
        let c = weights.broadcast_to(d.clone())?;
        self.temporal = Some((target.clone(), c, weight));
        Ok(self)
    }

    /// `f` itself, or behind the gradient normalisation of a term of weight `weight` when the
    /// configuration asks for it.
    fn normalized<'t>(&self, f: &Var<'t, B>, weight: f64) -> Result<Var<'t, B>> {
        Ok(if self.cfg.normalize_gradients {
            nst_loss::normalize_gradient(f, weight)?
        } else {
            f.clone()
        })
    }

    /// The tile plan, when evaluated tile by tile.
    pub fn plan(&self) -> Option<&TilePlan> {
        self.tiled.as_ref().map(|t| &t.plan)
    }

    /// The loss terms and the gradient of the total at `x` (`[1, 3, H, W]`, model space).
    pub fn evaluate(&self, x: &Tensor<B>) -> Result<Evaluation<B>> {
        let sized = self.tiled.is_some() || !self.cfg.content_layers.is_empty();
        if sized && x.dims() != self.content_dims.as_slice() {
            return Err(Error::Config(format!(
                "the image is {}x{} but the content is {}x{}: they must have the same size",
                x.dims().get(3).unwrap_or(&0),
                x.dims().get(2).unwrap_or(&0),
                self.content_dims[3],
                self.content_dims[2],
            )));
        }
        match (&self.tiled, &self.content_targets) {
            (Some(t), ContentTargets::Tiles(ct)) => self.evaluate_tiled(x, t, ct),
            (None, ContentTargets::Whole(ct)) => self.evaluate_whole(x, ct),
            _ => unreachable!("tiled objectives have tiled content targets"),
        }
    }

    fn evaluate_whole(
        &self,
        x: &Tensor<B>,
        content_targets: &[Tensor<B>],
    ) -> Result<Evaluation<B>> {
        let tape = Tape::new();
        let xv = tape.var(x.clone());
        let feats = self.fx.extract_var(&xv)?;
        // The terms' values stay on the device until the backward pass is queued, then come
        // back together in one transfer.
        let mut names: Vec<String> = Vec::new();
        let mut values: Vec<Tensor<B>> = Vec::new();
        let mut parts = Vec::new();
        for ((name, w), target) in self.cfg.content_layers.iter().zip(content_targets) {
            let wl = self.cfg.content_weight * w;
            let f = &self.normalized(feats.get(name).expect("extracted"), wl)?;
            let l = nst_loss::content(f, target, wl)?;
            names.push(format!("content/{name}"));
            values.push(l.value().clone());
            parts.push(l);
        }
        for (li, (name, w)) in self.cfg.style_layers.iter().enumerate() {
            let wl = self.cfg.style_weight * w;
            let f = &self.normalized(feats.get(name).expect("extracted"), wl)?;
            let l = match &self.regions {
                None if self.cfg.style_loss == StyleLoss::W2 => {
                    nst_loss::w2_style(f, &self.w2_targets[li], wl)?
                }
                None => nst_loss::style(f, &self.style_targets[li], wl)?,
                Some(r) => {
                    let k = r.masks[li].len();
                    let weight = wl / k as f64;
                    let mut sum: Option<nst_autodiff::Var<'_, B>> = None;
                    for (m, a) in r.masks[li].iter().zip(&r.targets[li]) {
                        let term = nst_loss::guided_gram(f, m)?
                            .sub(&tape.constant(a.clone()))?
                            .square()?
                            .mean()?
                            .scale(weight)?;
                        sum = Some(match sum {
                            None => term,
                            Some(acc) => acc.add(&term)?,
                        });
                    }
                    sum.expect("one region at least")
                }
            };
            names.push(format!("style/{name}"));
            values.push(l.value().clone());
            parts.push(l);
        }
        drop(feats);
        let tv = nst_loss::total_variation(&xv, self.cfg.tv_weight)?;
        names.push("tv".to_string());
        values.push(tv.value().clone());
        if let Some((target, c, weight)) = &self.temporal {
            let l = xv
                .sub(&tape.constant(target.clone()))?
                .square()?
                .mul(&tape.constant(c.clone()))?
                .sum()?
                .scale(weight / x.numel().max(1) as f64)?;
            names.push("temporal".to_string());
            values.push(l.value().clone());
            parts.push(l);
        }
        let mut total = tv;
        for p in &parts {
            total = total.add(p)?;
        }
        drop(parts);
        let total_value = total.value().clone();
        let mut grads = tape.backward(&total)?;
        let grad = grads
            .take(&xv)
            .ok_or_else(|| Error::Config("the loss does not depend on the image".into()))?;
        values.push(total_value);
        values.push(grad.sum()?);
        let all = Tensor::scalars(&values.iter().collect::<Vec<_>>())?;
        let (grad_sum, value) = (all[all.len() - 1], all[all.len() - 2]);
        Ok(Evaluation {
            total: value,
            terms: names.into_iter().zip(all).collect(),
            grad,
            grad_sum,
        })
    }

    /// Tile by tile, in two passes. Pass 1 runs the network on every crop and sums each
    /// style layer's `F̂F̂ᵀ` over the tiles' own positions; the style terms and their
    /// gradients w.r.t. the activations, `4w/(C²N)·(G − A)·F̂`, follow in closed form. Pass 2
    /// seeds each layer's own positions of every crop with that gradient (and the content
    /// and TV terms, which are local), runs the backward pass and adds the crop's image
    /// gradient into the whole.
    ///
    /// Pass 1 keeps, for the tiles the plan allows, the tape of the network's deep part
    /// (after `pool2`, where activations are small and most of the arithmetic is), so pass 2
    /// recomputes only the shallow part for them; the other tiles are run again in full.
    fn evaluate_tiled(
        &self,
        x: &Tensor<B>,
        t: &Tiled<'m, B>,
        content_targets: &[Vec<Option<Tensor<B>>>],
    ) -> Result<Evaluation<B>> {
        let plan = &t.plan;
        let geo = &t.geometry;
        let model = self.fx.model();
        let (h, w) = (plan.height, plan.width);
        let n = plan.tiles.len();
        let keep = t.keep.min(n);
        let used: Vec<usize> = t.content_idx.iter().chain(&t.style_idx).copied().collect();
        let wanted = |i: usize| used.contains(&i);
        let is_style = |i: usize| t.style_idx.contains(&i);
        let deepest = t.deepest;

        // Pass 1: Gram sums of the style layers, and the kept tapes.
        let tapes: Vec<Tape<B>> = (0..n).map(|_| Tape::new()).collect();
        let mut kept: Vec<Option<Kept<'_, B>>> = (0..n).map(|_| None).collect();
        let mut sums: Vec<Option<Tensor<B>>> = vec![None; t.style_idx.len()];
        // With the W2 loss, also Σ_p F_p per style layer.
        let w2 = self.cfg.style_loss == StyleLoss::W2;
        let mut firsts: Vec<Option<Tensor<B>>> = vec![None; t.style_idx.len()];
        for (ti, tile) in plan.tiles.iter().enumerate() {
            let crop = window(x, &tile.crop)?;
            let mut add = |i: usize, f: &Tensor<B>| -> nst_vgg::Result<()> {
                for ((slot, first), &li) in sums.iter_mut().zip(&mut firsts).zip(&t.style_idx) {
                    if li == i {
                        accumulate_gram(slot, f, geo, plan, tile, li)?;
                        if w2 {
                            accumulate_sum(first, f, geo, plan, tile, li)?;
                        }
                    }
                }
                Ok(())
            };
            if ti + keep < n {
                model.forward_range(crop, 0, deepest, &|i| is_style(i), |i, f| add(i, f))?;
                continue;
            }
            let tape = &tapes[ti];
            let mut feats: Vec<(usize, Var<'_, B>)> = Vec::new();
            let (leaf, first) = match t.split {
                Some(sp) => {
                    let a = model.forward_range(crop, 0, sp, &|i| is_style(i), |i, f| add(i, f))?;
                    (tape.var(a), sp + 1)
                }
                None => (tape.var(crop), 0),
            };
            model.forward_range(leaf.clone(), first, deepest, &wanted, |i, v| {
                if is_style(i) {
                    add(i, v.value())?;
                }
                feats.push((i, v.clone()));
                Ok(())
            })?;
            kept[ti] = Some(Kept {
                leaf,
                feats,
                full: t.split.is_none(),
            });
        }

        // The style terms and what seeds their gradients: with Gram matrices the
        // activation-gradient matrices D_l = 4w/(C²N)·(G − A); with W2 the moment gradients.
        let mut terms = Vec::new();
        let mut style_d = Vec::with_capacity(t.style_idx.len());
        let mut style_values = Vec::with_capacity(t.style_idx.len());
        if w2 {
            for (li_pos, (((name, m), sum), first)) in self
                .cfg
                .style_layers
                .iter()
                .zip(std::mem::take(&mut sums))
                .zip(firsts)
                .enumerate()
            {
                let li = t.style_idx[li_pos];
                let (_, c) = geo.layer(li);
                let positions = geo.positions(h, w, li);
                let wl = self.cfg.style_weight * m;
                let host = |v: Option<Tensor<B>>, n: usize| -> Result<Vec<f64>> {
                    Ok(match v {
                        Some(v) => v.to_f64()?,
                        None => vec![0.0; n],
                    })
                };
                let moments = nst_loss::Moments::from_sums(
                    c,
                    positions,
                    &host(first, c)?,
                    &host(sum, c * c)?,
                );
                let eval = self.w2_targets[li_pos].evaluate(&moments)?;
                style_values.push((format!("style/{name}"), wl * eval.value));
                style_d.push(StyleSeed::W2 {
                    eval,
                    positions,
                    weight: wl,
                });
            }
        }
        let gram_targets = if w2 { &[][..] } else { &self.style_targets[..] };
        for (((name, m), target), (sum, &li)) in self
            .cfg
            .style_layers
            .iter()
            .zip(gram_targets)
            .zip(sums.into_iter().zip(&t.style_idx))
        {
            let (_, c) = geo.layer(li);
            let npos = (c * geo.positions(h, w, li)).max(1) as f64;
            let wl = self.cfg.style_weight * m;
            let g = match sum {
                Some(s) => s.scale(1.0 / npos)?,
                None => Tensor::zeros(target.backend(), [c, c])?,
            };
            let diff = g.sub(target)?;
            let value = wl * diff.square()?.sum()?.scalar()? / (c * c).max(1) as f64;
            style_values.push((format!("style/{name}"), value));
            style_d.push(StyleSeed::Gram(
                diff.scale(4.0 * wl / ((c * c) as f64 * npos))?,
            ));
        }

        // Pass 2: the backward pass, tile by tile; the kept tiles first, latest first.
        let mut content_values = vec![0.0; self.cfg.content_layers.len()];
        let mut tv_value = 0.0;
        let mut grad: Option<Tensor<B>> = None;
        let order = (n - keep..n).rev().chain(0..n - keep);
        for ti in order {
            let tile = &plan.tiles[ti];
            let ctx = SeedCtx {
                objective: self,
                t,
                style_d: &style_d,
                targets: &content_targets[ti],
                tile,
            };
            let tape = Tape::new();
            // `into` carries the gradient w.r.t. the kept deep part's input into the shallow
            // pass.
            let (xv, mut seeds) = match kept[ti].take() {
                Some(k) if k.full => {
                    let seeds = ctx.seeds(&k.feats, &mut content_values)?;
                    (k.leaf, seeds)
                }
                Some(k) => {
                    let deep = ctx.seeds(&k.feats, &mut content_values)?;
                    let into = if deep.is_empty() {
                        None
                    } else {
                        k.leaf.tape().backward_seeded(&deep)?.take(&k.leaf)
                    };
                    drop(deep);
                    drop(k);
                    let sp = t.split.expect("a kept deep part has a split");
                    let xv = tape.var(window(x, &tile.crop)?);
                    let mut feats = Vec::new();
                    let a = model.forward_range(xv.clone(), 0, sp, &wanted, |i, v| {
                        feats.push((i, v.clone()));
                        Ok(())
                    })?;
                    let mut seeds = ctx.seeds(&feats, &mut content_values)?;
                    if let Some(g) = into {
                        seeds.push((a, g));
                    }
                    (xv, seeds)
                }
                None => {
                    let xv = tape.var(window(x, &tile.crop)?);
                    let mut feats = Vec::new();
                    model.forward_range(xv.clone(), 0, deepest, &wanted, |i, v| {
                        feats.push((i, v.clone()));
                        Ok(())
                    })?;
                    let seeds = ctx.seeds(&feats, &mut content_values)?;
                    (xv, seeds)
                }
            };
            if let Some(tv) = tile_tv(&xv, tile, self.cfg.tv_weight)? {
                tv_value += tv.value().scalar()?;
                let one = Tensor::full(x.backend(), tv.shape().clone(), 1.0)?;
                seeds.push((tv, one));
            }
            let mut grads = xv.tape().backward_seeded(&seeds)?;
            drop(seeds);
            if let Some(g) = grads.take(&xv) {
                grad = Some(add_window(grad, &g, &tile.crop, (h, w))?);
            }
        }
        let grad = match grad {
            Some(g) => g,
            None => Tensor::zeros(x.backend(), x.shape().clone())?,
        };
        for ((name, _), v) in self.cfg.content_layers.iter().zip(&content_values) {
            terms.push((format!("content/{name}"), *v));
        }
        terms.extend(style_values);
        terms.push(("tv".to_string(), tv_value));
        // The same order of addition as the untiled total: TV, then content, then style.
        let total = terms[..terms.len() - 1]
            .iter()
            .fold(tv_value, |acc, (_, v)| acc + v);
        let grad_sum = grad.sum()?.scalar()?;
        Ok(Evaluation {
            total,
            terms,
            grad,
            grad_sum,
        })
    }
}

/// What seeds a style layer's gradient in the tiled evaluation.
enum StyleSeed<B: Backend> {
    /// The Gram loss's `D_l`: the seed of positions `F̂` is `D_l·F̂`.
    Gram(Tensor<B>),
    /// The W2 loss's moment gradients over the layer's `positions`.
    W2 {
        eval: nst_loss::W2Eval,
        positions: usize,
        weight: f64,
    },
}

/// What the seeds of one tile are made from.
struct SeedCtx<'a, 'm, B: Backend> {
    objective: &'a Objective<'m, B>,
    t: &'a Tiled<'m, B>,
    style_d: &'a [StyleSeed<B>],
    targets: &'a [Option<Tensor<B>>],
    tile: &'a Tile,
}

impl<B: Backend> SeedCtx<'_, '_, B> {
    /// The seeds of the tile's own positions at the layers in `feats`: the style layers'
    /// `D·F̂` and the content layers' `2w/N·(F − P)`, whose values are added to
    /// `content_values`.
    fn seeds<'t>(
        &self,
        feats: &[(usize, Var<'t, B>)],
        content_values: &mut [f64],
    ) -> Result<Vec<(Var<'t, B>, Tensor<B>)>> {
        let (t, geo, plan, tile) = (self.t, &self.t.geometry, &self.t.plan, self.tile);
        let cfg = &self.objective.cfg;
        let (h, w) = (plan.height, plan.width);
        let mut seeds = Vec::new();
        for (d, &li) in self.style_d.iter().zip(&t.style_idx) {
            let (Some((_, f)), Some(iw)) = (
                feats.iter().find(|(i, _)| *i == li),
                geo.inner_at(plan, tile, li),
            ) else {
                continue;
            };
            let inner = window(f, &iw)?;
            let seed = match d {
                StyleSeed::Gram(d) => {
                    let dims = inner.shape().clone();
                    let flat = inner.value().reshape([dims.dim(1), iw.h * iw.w])?;
                    d.matmul(&flat)?.reshape(dims)?
                }
                StyleSeed::W2 {
                    eval,
                    positions,
                    weight,
                } => nst_loss::w2_activation_grad(inner.value(), eval, *positions, *weight)?,
            };
            seeds.push((inner, seed));
        }
        for (ci, (((_, m), target), &li)) in cfg
            .content_layers
            .iter()
            .zip(self.targets)
            .zip(&t.content_idx)
            .enumerate()
        {
            let (Some((_, f)), Some(iw), Some(target)) = (
                feats.iter().find(|(i, _)| *i == li),
                geo.inner_at(plan, tile, li),
                target,
            ) else {
                continue;
            };
            let (_, c) = geo.layer(li);
            let npos = (c * geo.positions(h, w, li)).max(1) as f64;
            let wl = cfg.content_weight * m;
            let inner = window(f, &iw)?;
            let diff = inner.value().sub(target)?;
            content_values[ci] += wl * diff.square()?.sum()?.scalar()? / npos;
            seeds.push((inner, diff.scale(2.0 * wl / npos)?));
        }
        Ok(seeds)
    }
}

/// A tile's tape kept from pass 1: its leaf (the crop, or the shallow part's output) and the
/// used layers' activations on it.
struct Kept<'t, B: Backend> {
    leaf: Var<'t, B>,
    feats: Vec<(usize, Var<'t, B>)>,
    /// Whether the tape holds the whole network from the crop.
    full: bool,
}

/// `slot += t` (`slot = t` when empty).
fn add_into<B: Backend>(slot: &mut Option<Tensor<B>>, t: Tensor<B>) -> nst_tensor::Result<()> {
    *slot = Some(match slot.take() {
        Some(acc) => acc.add(&t)?,
        None => t,
    });
    Ok(())
}

/// Adds a tile's own positions of activation `f` (a crop's, at layer `li`) to a Gram sum.
fn accumulate_gram<B: Backend>(
    slot: &mut Option<Tensor<B>>,
    f: &Tensor<B>,
    geo: &Geometry,
    plan: &TilePlan,
    tile: &Tile,
    li: usize,
) -> nst_tensor::Result<()> {
    if let Some(iw) = geo.inner_at(plan, tile, li) {
        let g = gram_sum(&window(f, &iw)?)?;
        add_into(slot, g)?;
    }
    Ok(())
}

/// Adds a tile's own positions of activation `f` to a sum over positions `Σ_p F_p` (`[C, 1]`).
fn accumulate_sum<B: Backend>(
    slot: &mut Option<Tensor<B>>,
    f: &Tensor<B>,
    geo: &Geometry,
    plan: &TilePlan,
    tile: &Tile,
    li: usize,
) -> nst_tensor::Result<()> {
    if let Some(iw) = geo.inner_at(plan, tile, li) {
        let inner = window(f, &iw)?;
        let d = inner.dims().to_vec();
        let s = inner.reshape([d[1], d[2] * d[3]])?.sum_axis(1)?;
        add_into(slot, s)?;
    }
    Ok(())
}

/// Per style layer: `Σ F̂F̂ᵀ`, and `Σ_p F_p` when asked for (else empty).
type GramAndFirstSums<B> = (Vec<Tensor<B>>, Vec<Tensor<B>>);

/// Unnormalised Gram sums `Σ F̂F̂ᵀ` of an image at the style layers, tile by tile (inference
/// only), and with `firsts` the sums `Σ_p F_p` too (else the second list is empty).
fn tiled_moment_sums<B: Backend>(
    sfx: &FeatureExtractor<'_, B>,
    geo: &Geometry,
    plan: &TilePlan,
    style_idx: &[usize],
    image: &Tensor<B>,
    firsts: bool,
) -> Result<GramAndFirstSums<B>> {
    let names: Vec<String> = sfx.layer_names().map(str::to_string).collect();
    let mut sums: Vec<Option<Tensor<B>>> = vec![None; style_idx.len()];
    let mut ones: Vec<Option<Tensor<B>>> = vec![None; style_idx.len()];
    for tile in &plan.tiles {
        let feats = sfx.extract(&window(image, &tile.crop)?)?;
        for (((slot, first), name), &li) in
            sums.iter_mut().zip(&mut ones).zip(&names).zip(style_idx)
        {
            let f = feats.get(name).expect("extracted");
            accumulate_gram(slot, f, geo, plan, tile, li)?;
            if firsts {
                accumulate_sum(first, f, geo, plan, tile, li)?;
            }
        }
    }
    let fill = |v: Vec<Option<Tensor<B>>>, shape: fn(usize) -> [usize; 2]| {
        v.into_iter()
            .zip(style_idx)
            .map(|(s, &li)| match s {
                Some(s) => Ok(s),
                None => Ok(Tensor::zeros(image.backend(), shape(geo.layer(li).1))?),
            })
            .collect::<Result<Vec<_>>>()
    };
    let grams = fill(sums, |c| [c, c])?;
    let firsts = if firsts {
        fill(ones, |c| [c, 1])?
    } else {
        Vec::new()
    };
    Ok((grams, firsts))
}

/// The total variation of a tile's own pixels, on the tape: the differences between each of
/// its pixels and the pixel below and to the right of it (when those are in the image), so
/// that the tiles' terms sum to the whole image's. `None` when the tile has no difference.
fn tile_tv<'t, B: Backend>(
    xv: &Var<'t, B>,
    tile: &Tile,
    weight: f64,
) -> nst_tensor::Result<Option<Var<'t, B>>> {
    let d = xv.shape().dims().to_vec();
    let (cy, cx) = (tile.inner.y - tile.crop.y, tile.inner.x - tile.crop.x);
    let (ih, iw) = (tile.inner.h, tile.inner.w);
    let mut parts = Vec::new();
    // Vertical: rows cy .. cy + ih, each with the row below it where there is one.
    let rows = (ih + 1).min(d[2] - cy);
    if rows > 1 {
        let a = window(
            xv,
            &Window {
                y: cy,
                x: cx,
                h: rows,
                w: iw,
            },
        )?;
        parts.push(nst_loss::squared_differences(&a, 2)?);
    }
    // Horizontal: columns cx .. cx + iw, each with the one to its right.
    let cols = (iw + 1).min(d[3] - cx);
    if cols > 1 {
        let b = window(
            xv,
            &Window {
                y: cy,
                x: cx,
                h: ih,
                w: cols,
            },
        )?;
        parts.push(nst_loss::squared_differences(&b, 3)?);
    }
    let total = match parts.len() {
        0 => return Ok(None),
        1 => parts.remove(0),
        _ => parts[0].add(&parts[1])?,
    };
    Ok(Some(total.scale(weight)?))
}
