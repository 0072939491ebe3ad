//! The style-transfer objective: a list of weighted terms over one shared feature pass,
//! evaluated on the whole image or tile by tile with the same code (see `docs/objective.md`
//! and `docs/tiling.md`).

use crate::nn::{self, NnConfig};
use crate::targets::{
    add_all, features, find, image_size, key_of, plan_of, site_of, sites_of, statistics, window,
};
use crate::tiled::{Geometry, Tile, TilePlan, Tiling, Window, IMAGE};
use crate::{Error, Result};
use nst_autodiff::{Tape, Var};
use nst_features::FeatureExtractor;
use nst_loss::{Contribution, Form, GramRegion, GramStatistic, Site, Term, W2Statistic, INPUT};
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
    /// The nearest-neighbour loss's settings (with [`StyleLoss::Nn`]).
    pub nn: NnConfig,
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
    /// Nearest-neighbour matching of hypercolumns at the style layers, all in one term
    /// ([`nst_loss::nn_term`], after NNST; see `docs/objective.md`).
    Nn,
}

impl StyleLoss {
    /// The name used on the command line and in logs: `gram` or `w2`.
    pub fn name(self) -> &'static str {
        match self {
            StyleLoss::Gram => "gram",
            StyleLoss::W2 => "w2",
            StyleLoss::Nn => "nn",
        }
    }

    /// The default style layers of this loss with their multipliers: the classic five, or the
    /// nearest-neighbour hypercolumn's four ([`crate::NN_LAYERS`]).
    pub fn default_style_layers(self) -> Vec<(String, f64)> {
        match self {
            StyleLoss::Gram | StyleLoss::W2 => CLASSIC_STYLE_LAYERS
                .iter()
                .map(|n| (n.to_string(), 1.0))
                .collect(),
            StyleLoss::Nn => nn::NN_LAYERS
                .iter()
                .map(|(n, m)| (n.to_string(), *m))
                .collect(),
        }
    }

    /// The default style weight w_s for this loss (the two differ in scale by orders of
    /// magnitude; see `docs/objective.md`).
    pub fn default_style_weight(self) -> f64 {
        match self {
            StyleLoss::Gram => 100.0,
            StyleLoss::W2 => W2_DEFAULT_STYLE_WEIGHT,
            StyleLoss::Nn => NN_DEFAULT_STYLE_WEIGHT,
        }
    }
}

/// The classic style layers (Gatys et al.).
pub const CLASSIC_STYLE_LAYERS: [&str; 5] = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"];

/// The default w_s of the nearest-neighbour style loss.
pub const NN_DEFAULT_STYLE_WEIGHT: f64 = 3e7;

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
            style_layers: CLASSIC_STYLE_LAYERS.into_iter().map(one).collect(),
            style_loss: StyleLoss::Gram,
            normalize_gradients: false,
            nn: NnConfig::default(),
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

/// The objective: a list of weighted terms ([`Term`]) over one shared feature pass.
///
/// Evaluated on the whole image at once, or tile by tile ([`Tiling`]) with the same terms:
/// local terms sum over the positions each tile owns, statistic terms sum their statistic
/// over the tiles, take its loss and gradient on a small tape and back-propagate that through
/// each tile's own contribution. The tiled evaluation computes the same objective and
/// gradient (up to rounding) while holding the network's activations of one tile at a time
/// (see `docs/tiling.md`).
///
/// [`Objective::new`] builds the classic objective of an [`ObjectiveConfig`];
/// [`Objective::from_terms`] any list of terms; [`Objective::with_term`] adds one.
pub struct Objective<B: Backend> {
    model: Vgg<B>,
    terms: Vec<Term<B>>,
    /// Each term's layers as model layer indices ([`IMAGE`] for the image).
    keys: Vec<Vec<usize>>,
    /// The image's (height, width).
    size: (usize, usize),
    tiling: Tiling,
    tiled: Option<Tiled>,
    /// The classic settings, when built from them ([`Objective::with_regions`] needs them).
    classic: Option<ObjectiveConfig>,
    /// The term whose targets follow the image ([`Objective::refresh`]).
    refresh: Option<Refresh<B>>,
    /// Set from elsewhere to abandon the evaluation in flight ([`Objective::set_cancel`]).
    cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// What the nearest-neighbour term's targets are remade from.
struct Refresh<B: Backend> {
    every: usize,
    /// The term's index in the objective.
    index: usize,
    layout: nst_loss::Hypercolumn,
    style: std::sync::Arc<nst_loss::StyleSet<B>>,
    content: Tensor<B>,
    tiling: Tiling,
    weight: f64,
    /// The image the targets were matched for.
    last: Vec<f32>,
}

/// What the tiled evaluation needs besides the terms.
struct Tiled {
    geometry: Geometry,
    plan: TilePlan,
    /// The deepest used layer of the network (`None`: only the image is read).
    deepest: Option<usize>,
    /// The last layer of the shallow part (`pool2`), when deeper layers are used and no term
    /// reads layers on both sides of it.
    split: Option<usize>,
    /// How many tiles keep their tape from pass 1 to pass 2.
    keep: usize,
    /// With [`Tiling::Shallow`]: the last layer evaluated tile by tile (`pool3`); the deeper
    /// ones run on the whole image.
    whole_after: Option<usize>,
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

/// `slot += t` (`slot = t` when empty).
fn add_into<B: Backend>(slot: &mut Option<Tensor<B>>, t: Tensor<B>) -> nst_tensor::Result<()> {
    *slot = Some(match slot.take() {
        Some(acc) => acc.add(&t)?,
        None => t,
    });
    Ok(())
}

/// A tile's tape kept from pass 1: its leaf (the crop, or the shallow part's output), the
/// used layers' activations on it, and the statistic terms' contributions computed there.
struct Kept<'t, B: Backend> {
    leaf: Var<'t, B>,
    feats: Vec<(usize, Var<'t, B>)>,
    contributions: Vec<Option<Vec<Var<'t, B>>>>,
    /// Whether the tape holds the whole network from the crop.
    full: bool,
}

impl<B: Backend> Objective<B> {
    /// The classic objective: the content image's activations at the content layers as
    /// targets and, at each style layer, `Σ β_k G(s_k)` over the style images (`β` normalised
    /// to sum 1), or the W2 loss against their blended moments, and total variation. Images
    /// are `[1, 3, H, W]` in model space. Evaluated untiled.
    pub fn new(
        model: &Vgg<B>,
        cfg: &ObjectiveConfig,
        content: &Tensor<B>,
        styles: &[Tensor<B>],
        blend: &[f64],
    ) -> Result<Self> {
        Self::with_tiling(model, cfg, content, styles, blend, Tiling::Off)
    }

    /// [`Objective::new`], evaluated as `tiling` says. With tiles, the targets are built tile
    /// by tile too (each image gets its own plan with the same tile size), so no image's
    /// whole network pass is ever held.
    pub fn with_tiling(
        model: &Vgg<B>,
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
        let mut uses = vec![(IMAGE, 1)];
        for (name, _) in cfg.content_layers.iter().chain(&cfg.style_layers) {
            uses.push((model.layer_index(name)?, 0));
        }
        let beta = normalize_blend(blend, styles.len())?;
        let (h, w) = image_size(content.dims(), "the content")?;
        // A tile size the whole objective cannot use is refused before any work.
        plan_of(&Geometry::with_reach(model, &uses)?, h, w, tiling)?;
        if cfg.normalize_gradients && tiling != Tiling::Off {
            return Err(Error::Config(NORMALIZED_UNTILED.into()));
        }
        let normalized = |t: Term<B>| {
            if cfg.normalize_gradients {
                t.normalized()
            } else {
                t
            }
        };
        let mut terms = Vec::new();
        let content_layers: Vec<&str> =
            cfg.content_layers.iter().map(|(n, _)| n.as_str()).collect();
        if !content_layers.is_empty() {
            let targets = features(model, content, &content_layers, tiling)?;
            for ((name, m), target) in cfg.content_layers.iter().zip(targets) {
                terms.push(normalized(nst_loss::content_term(
                    name,
                    target,
                    cfg.content_weight * m,
                )));
            }
        }
        let mut refresh = None;
        if cfg.style_loss == StyleLoss::Nn {
            if cfg.normalize_gradients {
                return Err(Error::Config(
                    "--normalize-gradients works with the gram and w2 style losses".into(),
                ));
            }
            if cfg.nn.refresh == 0 {
                return Err(Error::Config(
                    "the nearest-neighbour refresh interval must be at least 1 iteration".into(),
                ));
            }
            let layout = nn::hypercolumn(model, &cfg.style_layers)?;
            let style = std::sync::Arc::new(nn::style_set(
                model,
                &layout,
                styles,
                &beta,
                cfg.nn.augment,
                tiling,
            )?);
            let matched = nn::blend_image(content, content)?;
            let targets = nn::nn_targets(model, &layout, style.clone(), &matched, tiling)?;
            refresh = Some(Refresh {
                every: cfg.nn.refresh,
                index: terms.len(),
                layout: layout.clone(),
                style,
                content: content.clone(),
                tiling,
                weight: cfg.style_weight,
                last: matched.to_f32()?,
            });
            terms.push(nst_loss::nn_term(layout, targets, cfg.style_weight)?);
        } else {
            for t in style_terms(model, cfg, styles, &beta, tiling)? {
                terms.push(normalized(t));
            }
        }
        terms.push(nst_loss::tv_term(cfg.tv_weight));
        let mut o = Self::from_terms(model, terms, (w, h), tiling)?;
        o.classic = Some(cfg.clone());
        o.refresh = refresh;
        Ok(o)
    }

    /// An objective of any terms, for images of `size` (width, height), evaluated as
    /// `tiling` says. Every term must name layers of `model` (or [`INPUT`]) and have a
    /// non-negative weight; terms that cannot tile ([`Term::tiles`]) need `Tiling::Off`.
    pub fn from_terms(
        model: &Vgg<B>,
        terms: Vec<Term<B>>,
        size: (usize, usize),
        tiling: Tiling,
    ) -> Result<Self> {
        let (w, h) = size;
        if w == 0 || h == 0 {
            return Err(Error::Config("the image is empty".into()));
        }
        let mut o = Objective {
            model: model.clone(),
            terms: Vec::new(),
            keys: Vec::new(),
            size: (h, w),
            tiling,
            tiled: None,
            classic: None,
            refresh: None,
            cancel: None,
        };
        for t in terms {
            o.push(t)?;
        }
        o.replan()?;
        Ok(o)
    }

    /// Adds a term (checked as [`Objective::from_terms`] checks them); the tile plan follows
    /// its layers.
    pub fn with_term(mut self, term: Term<B>) -> Result<Self> {
        self.push(term)?;
        self.replan()?;
        Ok(self)
    }

    fn push(&mut self, term: Term<B>) -> Result<()> {
        let w = term.weight();
        if !(w.is_finite() && w >= 0.0) {
            return Err(Error::Config(format!(
                "the weight of {} must be a non-negative number, got {w}",
                term.name()
            )));
        }
        if term.layers().is_empty() {
            return Err(Error::Config(format!("{} reads no layer", term.name())));
        }
        if self.terms.iter().any(|t| t.name() == term.name()) {
            return Err(Error::Config(format!(
                "two terms are named {}",
                term.name()
            )));
        }
        if self.tiling != Tiling::Off && !term.tiles() {
            return Err(Error::Config(if term.is_normalized() {
                NORMALIZED_UNTILED.to_string()
            } else {
                format!("{} needs the untiled objective", term.name())
            }));
        }
        let keys = term
            .layers()
            .iter()
            .map(|n| key_of(&self.model, n))
            .collect::<Result<Vec<_>>>()?;
        self.keys.push(keys);
        self.terms.push(term);
        Ok(())
    }

    /// Makes the tile plan for the terms' layers.
    fn replan(&mut self) -> Result<()> {
        if self.terms.is_empty() {
            return Err(Error::Config("the objective has no terms".into()));
        }
        let mut uses: Vec<(usize, usize)> = Vec::new();
        for (t, keys) in self.terms.iter().zip(&self.keys) {
            for &k in keys {
                match uses.iter_mut().find(|(i, _)| *i == k) {
                    Some(u) => u.1 = u.1.max(t.reach()),
                    None => uses.push((k, t.reach())),
                }
            }
        }
        let deepest = uses.iter().map(|u| u.0).filter(|&k| k != IMAGE).max();
        let shallow = |sp: usize, k: usize| k == IMAGE || k <= sp;
        // Whether every term reads layers on one side of `sp` only.
        let one_side = |sp: usize| {
            self.keys
                .iter()
                .all(|ks| ks.iter().all(|&k| shallow(sp, k)) || ks.iter().all(|&k| !shallow(sp, k)))
        };
        // A term reading layers on both sides of pool3 cannot be split there: the whole
        // network is tiled instead, keeping no tape (the memory the plan counted for one
        // shallow crop then holds one whole crop's pass, a little wider).
        let whole_after = match self.tiling {
            Tiling::Shallow(_) => {
                let sp = self.model.layer_index("pool3")?;
                deepest.filter(|&d| d > sp && one_side(sp)).map(|_| sp)
            }
            _ => None,
        };
        let straddles = matches!(self.tiling, Tiling::Shallow(_)) && whole_after.is_none();
        if let Some(sp) = whole_after {
            // The tiles cover the shallow layers and pool3's own positions.
            uses.retain(|&(k, _)| shallow(sp, k));
            uses.push((sp, 0));
        }
        let geometry = Geometry::with_reach(&self.model, &uses)?;
        let (h, w) = self.size;
        self.tiled = match plan_of(&geometry, h, w, self.tiling)? {
            None => None,
            Some(plan) => {
                let split = self
                    .model
                    .layer_index("pool2")
                    .ok()
                    .filter(|&sp| deepest.is_some_and(|d| sp < d))
                    .filter(|&sp| whole_after.is_none() && one_side(sp));
                let n = plan.tiles.len();
                let keep = match self.tiling {
                    Tiling::TilesKeeping { keep, .. } => keep.min(n),
                    _ if straddles => 0,
                    _ if split.is_some() => n,
                    _ if whole_after.is_some() => 0,
                    _ => 1,
                };
                Some(Tiled {
                    geometry,
                    plan,
                    deepest,
                    split,
                    keep,
                    whole_after,
                })
            }
        };
        Ok(())
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
    /// objective without regions. Tiled or not, as the objective is.
    pub fn with_regions(
        mut self,
        masks: &[Tensor<B>],
        styles: &[Tensor<B>],
        style_masks: &[Tensor<B>],
    ) -> Result<Self> {
        let cfg = self.check_regions(masks, styles, style_masks)?;
        let names: Vec<&str> = cfg.style_layers.iter().map(|(n, _)| n.as_str()).collect();
        // Per style image, per layer: its (guided) Gram matrix.
        let per_style = styles
            .iter()
            .enumerate()
            .map(|(k, s)| self.region_grams(&names, s, style_masks.get(k), k))
            .collect::<Result<Vec<_>>>()?;
        let k = masks.len() as f64;
        for (li, ((name, mult), n)) in cfg.style_layers.iter().zip(&names).enumerate() {
            let regions = masks
                .iter()
                .zip(&per_style)
                .map(|(m, g)| {
                    Ok(GramRegion {
                        mask: Some(self.mask_at(m, n)?),
                        target: g[li].clone(),
                        weight: 1.0 / k,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let mut term = nst_loss::gram_term(name, regions, cfg.style_weight * mult)?;
            if cfg.normalize_gradients {
                term = term.normalized();
            }
            let slot = self
                .terms
                .iter()
                .position(|t| t.name() == term.name())
                .ok_or_else(|| Error::Config(format!("no style term at {name}")))?;
            self.terms[slot] = term;
        }
        Ok(self)
    }

    /// What [`Objective::with_regions`] needs: the classic Gram objective (its settings are
    /// returned), one content mask per style image at the content's size, and no style masks
    /// or one per style image.
    fn check_regions(
        &self,
        masks: &[Tensor<B>],
        styles: &[Tensor<B>],
        style_masks: &[Tensor<B>],
    ) -> Result<ObjectiveConfig> {
        let Some(cfg) = self.classic.clone() else {
            return Err(Error::Config(
                "region masks apply to the classic objective (Objective::new)".into(),
            ));
        };
        if cfg.style_loss != StyleLoss::Gram {
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
        let (h, w) = self.size;
        if let Some(m) = masks.iter().find(|m| m.dims() != [1, 1, h, w]) {
            return Err(Error::Config(format!(
                "a mask is {:?}, expected [1, 1, {h}, {w}] (the content's size)",
                m.dims()
            )));
        }
        Ok(cfg)
    }

    /// A mask at layer `name`'s positions: average-pooled at every pooling layer before it.
    fn mask_at(&self, m: &Tensor<B>, name: &str) -> Result<Tensor<B>> {
        let idx = self.model.layer_index(name)?;
        let pools = self.model.layers()[..idx]
            .iter()
            .filter(|l| l.op == nst_vgg::LayerOp::Pool)
            .count();
        let mut m = m.clone();
        for _ in 0..pools {
            m = m.pool2d(nst_tensor::PoolKind::Avg, 2, 2)?;
        }
        Ok(m)
    }

    /// Style image `k`'s Gram matrix at each of the layers `names`: plain, or guided by its
    /// style mask when it has one.
    fn region_grams(
        &self,
        names: &[&str],
        s: &Tensor<B>,
        style_mask: Option<&Tensor<B>>,
        k: usize,
    ) -> Result<Vec<Tensor<B>>> {
        let (sh, sw) = image_size(s.dims(), "a style image")?;
        let stats: Vec<GramStatistic<B>> = match style_mask {
            None => names.iter().map(|_| GramStatistic::plain()).collect(),
            Some(sm) => {
                if sm.dims() != [1, 1, sh, sw] {
                    return Err(Error::Config(format!(
                        "a style mask is {:?}, expected [1, 1, {sh}, {sw}] (its style's size)",
                        sm.dims()
                    )));
                }
                names
                    .iter()
                    .map(|n| Ok(GramStatistic::masked(vec![self.mask_at(sm, n)?])))
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let layer_lists: Vec<[&str; 1]> = names.iter().map(|n| [*n]).collect();
        let parts: Vec<(&[&str], &dyn Contribution<B>)> = layer_lists
            .iter()
            .zip(&stats)
            .map(|(l, s)| (&l[..], s as &dyn Contribution<B>))
            .collect();
        let sums = statistics(&self.model, s, &parts, self.tiling)?;
        let mut grams = Vec::with_capacity(names.len());
        for ((sum, positions), n) in sums.into_iter().zip(names) {
            let c = sum[0].dims()[0];
            let mass = match style_mask {
                None => positions[0] as f64,
                Some(sm) => {
                    let m2 = self.mask_at(sm, n)?.square()?.sum()?.scalar()?;
                    if !(m2 > 0.0 && m2.is_finite()) {
                        return Err(Error::Config(format!(
                            "style mask {} is empty at {n}",
                            k + 1
                        )));
                    }
                    m2
                }
            };
            grams.push(sum[0].scale(1.0 / (c as f64 * mass))?);
        }
        Ok(grams)
    }

    /// Temporal consistency (Ruder et al. 2016): adds the term `temporal` =
    /// `weight · (1/D) · Σ c_p (x_p − ω_p)²` over every pixel and channel (`D = 3·H·W`), with
    /// `target` ω (`[1, 3, H, W]`, model space) and `weights` c (`[1, 1, H, W]`).
    pub fn with_temporal(
        self,
        target: &Tensor<B>,
        weights: &Tensor<B>,
        weight: f64,
    ) -> Result<Self> {
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(Error::Config(format!(
                "the temporal weight must be a non-negative number, got {weight}"
            )));
        }
        let (h, w) = self.size;
        if target.dims() != [1, 3, h, w] || weights.dims() != [1, 1, h, w] {
            return Err(Error::Config(format!(
                "the temporal target is {:?} and its weights {:?} for an image [1, 3, {h}, {w}]",
                target.dims(),
                weights.dims()
            )));
        }
        let term = nst_loss::temporal_term(target.clone(), weights, weight)?;
        self.with_term(term)
    }

    /// How often (in iterations) the objective's targets follow the image: `Some(n)` when a
    /// term's targets depend on the current image (the nearest-neighbour loss), to be remade
    /// with [`Objective::refresh`] at each scale's start and every `n` iterations.
    pub fn refresh_every(&self) -> Option<usize> {
        self.refresh.as_ref().map(|r| r.every)
    }

    /// Remakes the targets that follow the image for the current image `x` (`[1, 3, H, W]`,
    /// model space). Returns whether anything changed (nothing does when `x` is the image the
    /// targets were made for, or no term follows the image).
    pub fn refresh(&mut self, x: &Tensor<B>) -> Result<bool> {
        let Some(r) = self.refresh.as_mut() else {
            return Ok(false);
        };
        let matched = nn::blend_image(x, &r.content)?;
        let host = matched.to_f32()?;
        if host == r.last {
            return Ok(false);
        }
        let targets = nn::nn_targets(&self.model, &r.layout, r.style.clone(), &matched, r.tiling)?;
        self.terms[r.index] = nst_loss::nn_term(r.layout.clone(), targets, r.weight)?;
        r.last = host;
        Ok(true)
    }

    /// The tile plan, when evaluated tile by tile.
    pub fn plan(&self) -> Option<&TilePlan> {
        self.tiled.as_ref().map(|t| &t.plan)
    }

    /// The terms, in the order [`Evaluation::terms`] reports them.
    pub fn terms(&self) -> &[Term<B>] {
        &self.terms
    }

    /// Lets another thread abandon evaluations: once `flag` is set, an evaluation returns
    /// [`Error::Cancelled`] at its start or before its next tile (an untiled one runs to its
    /// end once started).
    pub fn set_cancel(&mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.cancel = Some(flag);
    }

    /// [`Error::Cancelled`] when the cancel flag is set.
    fn check_cancel(&self) -> Result<()> {
        match &self.cancel {
            Some(f) if f.load(std::sync::atomic::Ordering::Relaxed) => Err(Error::Cancelled),
            _ => Ok(()),
        }
    }

    /// The loss terms and the gradient of the total at `x` (`[1, 3, H, W]`, model space).
    pub fn evaluate(&self, x: &Tensor<B>) -> Result<Evaluation<B>> {
        self.check_cancel()?;
        let sized = self.tiled.is_some() || self.terms.iter().any(Term::is_sized);
        let (h, w) = self.size;
        if sized && x.dims() != [1, 3, h, w] {
            return Err(Error::Config(format!(
                "the image is {}x{} but the content is {w}x{h}: they must have the same size",
                x.dims().get(3).unwrap_or(&0),
                x.dims().get(2).unwrap_or(&0),
            )));
        }
        match &self.tiled {
            Some(t) => match t.whole_after {
                Some(sp) => self.evaluate_split(x, t, sp),
                None => self.evaluate_tiled(x, t),
            },
            None => self.evaluate_whole(x),
        }
    }

    fn evaluate_whole(&self, x: &Tensor<B>) -> Result<Evaluation<B>> {
        let tape = Tape::new();
        let xv = tape.var(x.clone());
        let net: Vec<&str> = self
            .terms
            .iter()
            .flat_map(|t| t.layers())
            .filter(|n| n.as_str() != INPUT)
            .map(String::as_str)
            .collect();
        let feats = if net.is_empty() {
            None
        } else {
            Some(FeatureExtractor::new(&self.model, &net)?.extract_var(&xv)?)
        };
        // The terms' values stay on the device until the backward pass is queued, then come
        // back together in one transfer.
        let mut values: Vec<Tensor<B>> = Vec::with_capacity(self.terms.len() + 2);
        let mut total: Option<Var<'_, B>> = None;
        for term in &self.terms {
            let inputs: Vec<Var<'_, B>> = term
                .layers()
                .iter()
                .map(|n| {
                    if n == INPUT {
                        xv.clone()
                    } else {
                        feats
                            .as_ref()
                            .and_then(|f| f.get(n))
                            .expect("extracted")
                            .clone()
                    }
                })
                .collect();
            let sites = inputs
                .iter()
                .map(|v| Site::of_whole(v.shape().dims()))
                .collect::<nst_tensor::Result<Vec<_>>>()?;
            let v = term.evaluate(&inputs, &sites)?;
            values.push(v.value().clone());
            total = Some(match total {
                None => v,
                Some(t) => t.add(&v)?,
            });
        }
        drop(feats);
        let total = total.expect("an objective has terms");
        let total_value = total.value().clone();
        let mut grads = tape.backward(&total)?;
        let grad = grads
            .take(&xv)
            .ok_or_else(|| Error::Config("the loss does not depend on the image".into()))?;
        values.push(total_value);
        values.push(grad.sum()?);
        self.finish(values, grad)
    }

    /// The evaluation from the terms' values, the total's and the gradient's sum (all on the
    /// device, read in one transfer).
    fn finish(&self, values: Vec<Tensor<B>>, grad: Tensor<B>) -> Result<Evaluation<B>> {
        let all = Tensor::scalars(&values.iter().collect::<Vec<_>>())?;
        let (grad_sum, total) = (all[all.len() - 1], all[all.len() - 2]);
        Ok(Evaluation {
            total,
            terms: self
                .terms
                .iter()
                .map(|t| t.name().to_string())
                .zip(all)
                .collect(),
            grad,
            grad_sum,
        })
    }

    /// The contribution of statistic term `ti` on a tile, from activations on one tape
    /// (`None` when they lack a layer of the term or the tile owns nothing there).
    fn contribution_on<'t>(
        &self,
        t: &Tiled,
        tile: &Tile,
        ti: usize,
        feats: &[(usize, Var<'t, B>)],
    ) -> Result<Option<Vec<Var<'t, B>>>> {
        let Form::Statistic(stat) = self.terms[ti].form() else {
            return Ok(None);
        };
        let keys = &self.keys[ti];
        let Some(inputs) = keys
            .iter()
            .map(|&k| find(feats, k).cloned())
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(None);
        };
        let Some(sites) = sites_of(&t.geometry, &t.plan, tile, keys) else {
            return Ok(None);
        };
        Ok(Some(stat.contribution(&inputs, &sites)?))
    }

    /// Adds the statistic contributions of a tile's activations (plain tensors) to `sums`.
    fn add_contributions(
        &self,
        t: &Tiled,
        tile: &Tile,
        feats: &[(usize, Tensor<B>)],
        sums: &mut [Option<Vec<Tensor<B>>>],
    ) -> Result<()> {
        let scratch = Tape::new();
        let vars: Vec<(usize, Var<'_, B>)> = feats
            .iter()
            .map(|(k, f)| (*k, scratch.constant(f.clone())))
            .collect();
        for (ti, sum) in sums.iter_mut().enumerate() {
            if let Some(c) = self.contribution_on(t, tile, ti, &vars)? {
                add_all(sum, c.into_iter().map(|v| v.value().clone()).collect())?;
            }
        }
        Ok(())
    }

    /// Runs `crop` to layer `sp` without a tape, adds the statistic contributions of the
    /// layers on the way to `sums`, and returns `sp`'s output.
    fn shallow_pass(
        &self,
        t: &Tiled,
        tile: &Tile,
        crop: Tensor<B>,
        sp: usize,
        wanted: &dyn Fn(usize) -> bool,
        sums: &mut [Option<Vec<Tensor<B>>>],
    ) -> Result<Tensor<B>> {
        let mut feats = vec![(IMAGE, crop.clone())];
        let a = self.model.forward_range(crop, 0, sp, wanted, |i, f| {
            feats.push((i, f.clone()));
            Ok(())
        })?;
        self.add_contributions(t, tile, &feats, sums)?;
        Ok(a)
    }

    /// Pass 2's shallow part of a tile: its crop as a variable on `tape`, run to layer `sp`,
    /// and the seeds of the terms on the way; returns the crop, `sp`'s output and the seeds.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn shallow_seeds<'t>(
        &self,
        tape: &'t Tape<B>,
        x: &Tensor<B>,
        t: &Tiled,
        tile: &Tile,
        sp: usize,
        wanted: &dyn Fn(usize) -> bool,
        d_stat: &[Option<Vec<Tensor<B>>>],
        locals: &mut [Option<Tensor<B>>],
    ) -> Result<(Var<'t, B>, Var<'t, B>, Vec<(Var<'t, B>, Tensor<B>)>)> {
        let xv = tape.var(window(x, &tile.crop)?);
        let mut feats = vec![(IMAGE, xv.clone())];
        let a = self
            .model
            .forward_range(xv.clone(), 0, sp, wanted, |i, v| {
                feats.push((i, v.clone()));
                Ok(())
            })?;
        let seeds = self.seeds(t, tile, &feats, None, d_stat, locals)?;
        Ok((xv, a, seeds))
    }

    /// The seeds of a tile's activations on one tape: every local term with its layers
    /// there, as its weighted value seeded with 1 (the value is added to `locals`), and every
    /// statistic term's contribution seeded with the gradient of the total w.r.t. the
    /// statistic (`kept`: contributions already on the tape).
    #[allow(clippy::too_many_arguments)]
    fn seeds<'t>(
        &self,
        t: &Tiled,
        tile: &Tile,
        feats: &[(usize, Var<'t, B>)],
        mut kept: Option<&mut Vec<Option<Vec<Var<'t, B>>>>>,
        d_stat: &[Option<Vec<Tensor<B>>>],
        locals: &mut [Option<Tensor<B>>],
    ) -> Result<Vec<(Var<'t, B>, Tensor<B>)>> {
        let mut seeds = Vec::new();
        for (ti, term) in self.terms.iter().enumerate() {
            let keys = &self.keys[ti];
            match term.form() {
                Form::Local(local) => {
                    let Some(inputs) = keys
                        .iter()
                        .map(|&k| find(feats, k).cloned())
                        .collect::<Option<Vec<_>>>()
                    else {
                        continue;
                    };
                    let Some(sites) = sites_of(&t.geometry, &t.plan, tile, keys) else {
                        continue;
                    };
                    let v = local.loss(&inputs, &sites)?.scale(term.weight())?;
                    add_into(&mut locals[ti], v.value().clone())?;
                    let one = Tensor::full(v.value().backend(), v.shape().clone(), 1.0)?;
                    seeds.push((v, one));
                }
                Form::Statistic(_) => {
                    let from_kept = kept.as_mut().and_then(|k| k[ti].take());
                    let c = match from_kept {
                        Some(c) => Some(c),
                        None => self.contribution_on(t, tile, ti, feats)?,
                    };
                    if let (Some(c), Some(d)) = (c, &d_stat[ti]) {
                        seeds.extend(c.into_iter().zip(d.iter().cloned()));
                    }
                }
            }
        }
        Ok(seeds)
    }

    /// Tile by tile, in two passes. Pass 1 runs the network on every crop and sums each
    /// statistic term's contributions over the tiles' own positions; the statistic terms'
    /// losses and their gradients w.r.t. the statistics come from a small tape. Pass 2
    /// evaluates the local terms on each crop's own positions, seeds the statistic
    /// contributions with those gradients, runs the backward pass and adds the crop's image
    /// gradient into the whole.
    ///
    /// Pass 1 keeps, for the tiles the plan allows, the tape of the network's deep part
    /// (after `pool2`, where activations are small and most of the arithmetic is), so pass 2
    /// recomputes only the shallow part for them; the other tiles are run again in full.
    fn evaluate_tiled(&self, x: &Tensor<B>, t: &Tiled) -> Result<Evaluation<B>> {
        let plan = &t.plan;
        let (h, w) = (plan.height, plan.width);
        let n = plan.tiles.len();
        let keep = t.keep.min(n);
        let used: Vec<usize> = self.keys.iter().flatten().copied().collect();
        let wanted = |i: usize| used.contains(&i);
        let nterms = self.terms.len();

        // Pass 1: the statistics, and the kept tapes.
        let tapes: Vec<Tape<B>> = (0..n).map(|_| Tape::new()).collect();
        let mut kept: Vec<Option<Kept<'_, B>>> = (0..n).map(|_| None).collect();
        let mut sums: Vec<Option<Vec<Tensor<B>>>> = vec![None; nterms];
        for (ti, tile) in plan.tiles.iter().enumerate() {
            self.check_cancel()?;
            let crop = window(x, &tile.crop)?;
            if ti + keep < n {
                let feats = self.forward_plain(t, crop, &wanted)?;
                self.add_contributions(t, tile, &feats, &mut sums)?;
            } else {
                kept[ti] = Some(self.forward_kept(&tapes[ti], t, tile, crop, &wanted, &mut sums)?);
            }
        }

        // The statistic terms' losses, and their gradients w.r.t. the statistics.
        let (stat_values, d_stat) = self.statistic_losses(t, &mut sums)?;

        // Pass 2: the backward pass, tile by tile; the kept tiles first, latest first.
        let mut locals: Vec<Option<Tensor<B>>> = vec![None; nterms];
        let mut grad: Option<Tensor<B>> = None;
        let order = (n - keep..n).rev().chain(0..n - keep);
        for ti in order {
            self.check_cancel()?;
            let tile = &plan.tiles[ti];
            let g =
                self.backward_tile(x, t, tile, kept[ti].take(), &wanted, &d_stat, &mut locals)?;
            if let Some(g) = g {
                grad = Some(add_window(grad, &g, &tile.crop, (h, w))?);
            }
        }
        self.finish_tiled(x, locals, stat_values, grad)
    }

    /// The activations of a crop at the used layers as plain tensors (a tile whose tape is
    /// not kept: its backward pass runs the network again).
    fn forward_plain(
        &self,
        t: &Tiled,
        crop: Tensor<B>,
        wanted: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<(usize, Tensor<B>)>> {
        let mut feats = vec![(IMAGE, crop.clone())];
        if let Some(d) = t.deepest {
            self.model.forward_range(crop, 0, d, wanted, |i, f| {
                feats.push((i, f.clone()));
                Ok(())
            })?;
        }
        Ok(feats)
    }

    /// Pass 1 on a tile whose tape is kept: the network on `tape` (the deep part only, from
    /// the shallow pass's output, when the plan splits), the statistic contributions added to
    /// `sums` and kept on the tape for pass 2.
    fn forward_kept<'t>(
        &self,
        tape: &'t Tape<B>,
        t: &Tiled,
        tile: &Tile,
        crop: Tensor<B>,
        wanted: &dyn Fn(usize) -> bool,
        sums: &mut [Option<Vec<Tensor<B>>>],
    ) -> Result<Kept<'t, B>> {
        let mut feats: Vec<(usize, Var<'t, B>)> = Vec::new();
        let (leaf, full) = match (t.split, t.deepest) {
            (Some(sp), Some(d)) => {
                let a = self.shallow_pass(t, tile, crop, sp, wanted, sums)?;
                let leaf = tape.var(a);
                self.model
                    .forward_range(leaf.clone(), sp + 1, d, wanted, |i, v| {
                        feats.push((i, v.clone()));
                        Ok(())
                    })?;
                (leaf, false)
            }
            (_, deepest) => {
                let leaf = tape.var(crop);
                feats.push((IMAGE, leaf.clone()));
                if let Some(d) = deepest {
                    self.model
                        .forward_range(leaf.clone(), 0, d, wanted, |i, v| {
                            feats.push((i, v.clone()));
                            Ok(())
                        })?;
                }
                (leaf, true)
            }
        };
        let mut contributions = Vec::with_capacity(self.terms.len());
        for (k, sum) in sums.iter_mut().enumerate() {
            let c = self.contribution_on(t, tile, k, &feats)?;
            if let Some(c) = &c {
                add_all(sum, c.iter().map(|v| v.value().clone()).collect())?;
            }
            contributions.push(c);
        }
        Ok(Kept {
            leaf,
            feats,
            contributions,
            full,
        })
    }

    /// Between the passes: each statistic term's weighted loss from its sum over the tiles,
    /// and its gradient w.r.t. the statistic (what pass 2 seeds the contributions with).
    #[allow(clippy::type_complexity)]
    fn statistic_losses(
        &self,
        t: &Tiled,
        sums: &mut [Option<Vec<Tensor<B>>>],
    ) -> Result<(Vec<Option<Tensor<B>>>, Vec<Option<Vec<Tensor<B>>>>)> {
        let nterms = self.terms.len();
        let top = Tape::new();
        let mut stat_values: Vec<Option<Tensor<B>>> = vec![None; nterms];
        let mut vars: Vec<Option<Vec<Var<'_, B>>>> = (0..nterms).map(|_| None).collect();
        let mut total: Option<Var<'_, B>> = None;
        for ti in 0..nterms {
            if let Some((loss, v)) = self.statistic_loss(&top, t, ti, sums)? {
                stat_values[ti] = Some(loss.value().clone());
                total = Some(match total {
                    None => loss,
                    Some(acc) => acc.add(&loss)?,
                });
                vars[ti] = Some(v);
            }
        }
        let d_stat = match total {
            Some(total) => statistic_gradients(&mut top.backward(&total)?, &vars)?,
            None => vec![None; nterms],
        };
        Ok((stat_values, d_stat))
    }

    /// Pass 2 on one tile: its seeds (the local terms' gradients, the statistics' gradients
    /// through the contributions), the backward pass (on the kept tape, or on the network run
    /// again) and the gradient w.r.t. the crop.
    #[allow(clippy::too_many_arguments)]
    fn backward_tile(
        &self,
        x: &Tensor<B>,
        t: &Tiled,
        tile: &Tile,
        kept: Option<Kept<'_, B>>,
        wanted: &dyn Fn(usize) -> bool,
        d_stat: &[Option<Vec<Tensor<B>>>],
        locals: &mut [Option<Tensor<B>>],
    ) -> Result<Option<Tensor<B>>> {
        let tape = Tape::new();
        let (xv, mut seeds) = match kept {
            Some(mut k) => {
                // A kept tile's seeds on its own tape first (its contributions are there).
                let seeds = self.seeds(
                    t,
                    tile,
                    &k.feats,
                    Some(&mut k.contributions),
                    d_stat,
                    locals,
                )?;
                if k.full {
                    (k.leaf, seeds)
                } else {
                    // `into` carries the gradient w.r.t. the kept deep part's input into the
                    // shallow pass.
                    let deep = seeds;
                    let into = if deep.is_empty() {
                        None
                    } else {
                        k.leaf.tape().backward_seeded(&deep)?.take(&k.leaf)
                    };
                    drop(deep);
                    drop(k);
                    let sp = t.split.expect("a kept deep part has a split");
                    let (xv, a, mut seeds) =
                        self.shallow_seeds(&tape, x, t, tile, sp, wanted, d_stat, locals)?;
                    if let Some(g) = into {
                        seeds.push((a, g));
                    }
                    (xv, seeds)
                }
            }
            None => {
                let xv = tape.var(window(x, &tile.crop)?);
                let mut feats = vec![(IMAGE, xv.clone())];
                if let Some(d) = t.deepest {
                    self.model.forward_range(xv.clone(), 0, d, wanted, |i, v| {
                        feats.push((i, v.clone()));
                        Ok(())
                    })?;
                }
                let seeds = self.seeds(t, tile, &feats, None, d_stat, locals)?;
                (xv, seeds)
            }
        };
        let mut grads = xv.tape().backward_seeded(&seeds)?;
        seeds.clear();
        Ok(grads.take(&xv))
    }

    /// The weighted loss of statistic term `ti` from its sum over the tiles (taken out of
    /// `sums`), on `top`, with the statistic's variables (`None` for a local term).
    #[allow(clippy::type_complexity)]
    fn statistic_loss<'t>(
        &self,
        top: &'t Tape<B>,
        t: &Tiled,
        ti: usize,
        sums: &mut [Option<Vec<Tensor<B>>>],
    ) -> Result<Option<(Var<'t, B>, Vec<Var<'t, B>>)>> {
        let term = &self.terms[ti];
        let Form::Statistic(stat) = term.form() else {
            return Ok(None);
        };
        let sum = sums[ti].take().ok_or_else(|| {
            Error::Config(format!("{} got no contribution from any tile", term.name()))
        })?;
        let vars: Vec<Var<'t, B>> = sum.into_iter().map(|s| top.var(s)).collect();
        let (h, w) = (t.plan.height, t.plan.width);
        let positions: Vec<usize> = self.keys[ti]
            .iter()
            .map(|&k| t.geometry.positions(h, w, k))
            .collect();
        let loss = stat.loss(&vars, &positions)?.scale(term.weight())?;
        Ok(Some((loss, vars)))
    }

    /// The evaluation of a tiled pass: each term's value (summed over the tiles for local
    /// terms, from `values` for the others), the total in the order of the terms as the
    /// untiled evaluation adds them, and the gradient.
    fn finish_tiled(
        &self,
        x: &Tensor<B>,
        mut locals: Vec<Option<Tensor<B>>>,
        mut values: Vec<Option<Tensor<B>>>,
        grad: Option<Tensor<B>>,
    ) -> Result<Evaluation<B>> {
        let grad = match grad {
            Some(g) => g,
            None => Tensor::zeros(x.backend(), x.shape().clone())?,
        };
        let mut out = Vec::with_capacity(self.terms.len() + 2);
        for (ti, term) in self.terms.iter().enumerate() {
            out.push(
                locals[ti]
                    .take()
                    .or_else(|| values[ti].take())
                    .ok_or_else(|| {
                        Error::Config(format!("{} was evaluated on no tile", term.name()))
                    })?,
            );
        }
        let mut total = out[0].clone();
        for v in &out[1..] {
            total = total.add(v)?;
        }
        out.push(total);
        out.push(grad.sum()?);
        self.finish(out, grad)
    }

    /// [`Tiling::Shallow`]: the layers to `sp` (`pool3`) tile by tile, the deeper ones on the
    /// whole image. Pass 1 runs every crop to `sp` without a tape, adds the shallow statistic
    /// terms' contributions and assembles the tiles' own positions of `sp`'s output into the
    /// whole image's. The deep part then runs on it once, on a tape that also takes the
    /// shallow statistics' losses; its backward pass gives the gradient w.r.t. `sp`'s output
    /// and the statistics. Pass 2 runs every crop to `sp` again on a tape, seeds the local
    /// terms, the contributions and the owned positions of `sp`'s output, and adds the
    /// crop's image gradient into the whole.
    fn evaluate_split(&self, x: &Tensor<B>, t: &Tiled, sp: usize) -> Result<Evaluation<B>> {
        let plan = &t.plan;
        let model = &self.model;
        let (h, w) = (plan.height, plan.width);
        let nterms = self.terms.len();
        let used: Vec<usize> = self.keys.iter().flatten().copied().collect();
        let wanted = |i: usize| used.contains(&i);
        let deepest = t.deepest.expect("a deep part");
        let (stride, _) = t.geometry.layer(sp);
        let (hs, ws) = (h / stride, w / stride);

        // Pass 1: the shallow statistics, and sp's output assembled row of tiles by row.
        let mut sums: Vec<Option<Vec<Tensor<B>>>> = vec![None; nterms];
        let mut whole: Option<Tensor<B>> = None;
        let mut row: Option<(usize, Tensor<B>)> = None;
        let close_row = |row: Option<(usize, Tensor<B>)>, whole: &mut Option<Tensor<B>>| match row {
            Some((y, r)) => add_into(whole, r.narrow_backward(2, y, hs)?),
            None => Ok(()),
        };
        for tile in &plan.tiles {
            self.check_cancel()?;
            let a = self.shallow_pass(t, tile, window(x, &tile.crop)?, sp, &wanted, &mut sums)?;
            let Some(site) = site_of(&t.geometry, plan, tile, sp) else {
                continue;
            };
            let g = site.global();
            let piece = window(&a, &site.own)?.narrow_backward(3, g.x, ws)?;
            row = match row.take() {
                Some((y, r)) if y == g.y => Some((y, r.add(&piece)?)),
                other => {
                    close_row(other, &mut whole)?;
                    Some((g.y, piece))
                }
            };
        }
        close_row(row, &mut whole)?;
        let whole =
            whole.ok_or_else(|| Error::Config("no tile owns a position of pool3".into()))?;

        // The deep part on the whole image, and every statistic's loss.
        let top = Tape::new();
        let leaf = top.var(whole);
        let mut deep: Vec<(usize, Var<'_, B>)> = Vec::new();
        model.forward_range(leaf.clone(), sp + 1, deepest, &wanted, |i, v| {
            deep.push((i, v.clone()));
            Ok(())
        })?;
        let mut values: Vec<Option<Tensor<B>>> = vec![None; nterms];
        let mut stat_vars: Vec<Option<Vec<Var<'_, B>>>> = (0..nterms).map(|_| None).collect();
        let mut total: Option<Var<'_, B>> = None;
        for (ti, term) in self.terms.iter().enumerate() {
            let keys = &self.keys[ti];
            let v = if let Some(inputs) = keys
                .iter()
                .map(|&k| find(&deep, k).cloned())
                .collect::<Option<Vec<_>>>()
            {
                let sites = inputs
                    .iter()
                    .map(|v| Site::of_whole(v.shape().dims()))
                    .collect::<nst_tensor::Result<Vec<_>>>()?;
                term.evaluate(&inputs, &sites)?
            } else if let Some((l, vars)) = self.statistic_loss(&top, t, ti, &mut sums)? {
                stat_vars[ti] = Some(vars);
                l
            } else {
                continue;
            };
            values[ti] = Some(v.value().clone());
            total = Some(match total {
                None => v,
                Some(acc) => acc.add(&v)?,
            });
        }
        drop(deep);
        let total = total.ok_or_else(|| Error::Config("no term reads the deep layers".into()))?;
        let mut grads = top.backward(&total)?;
        let into = grads.take(&leaf);
        let d_stat = statistic_gradients(&mut grads, &stat_vars)?;
        drop(grads);
        drop(stat_vars);

        // Pass 2: the shallow part again, tile by tile, on a tape.
        let mut locals: Vec<Option<Tensor<B>>> = vec![None; nterms];
        let mut grad: Option<Tensor<B>> = None;
        for tile in &plan.tiles {
            self.check_cancel()?;
            let tape = Tape::new();
            let (xv, a, mut seeds) =
                self.shallow_seeds(&tape, x, t, tile, sp, &wanted, &d_stat, &mut locals)?;
            if let (Some(site), Some(g)) = (site_of(&t.geometry, plan, tile, sp), &into) {
                seeds.push((
                    nst_loss::term::cut_var(&a, &site.own)?,
                    window(g, &site.global())?,
                ));
            }
            let mut grads = tape.backward_seeded(&seeds)?;
            seeds.clear();
            if let Some(g) = grads.take(&xv) {
                grad = Some(add_window(grad, &g, &tile.crop, (h, w))?);
            }
        }
        self.finish_tiled(x, locals, values, grad)
    }
}

/// The gradients of the total w.r.t. each statistic term's variables (zeros where it does
/// not depend on one).
fn statistic_gradients<B: Backend>(
    grads: &mut nst_autodiff::Gradients<B>,
    vars: &[Option<Vec<Var<'_, B>>>],
) -> Result<Vec<Option<Vec<Tensor<B>>>>> {
    vars.iter()
        .map(|v| {
            v.as_ref()
                .map(|v| {
                    v.iter()
                        .map(|v| match grads.take(v) {
                            Some(g) => Ok(g),
                            None => Tensor::zeros(v.value().backend(), v.shape().clone()),
                        })
                        .collect::<nst_tensor::Result<Vec<_>>>()
                })
                .transpose()
                .map_err(Error::from)
        })
        .collect()
}

/// The error of gradient normalisation on a tiled objective.
const NORMALIZED_UNTILED: &str =
    "--normalize-gradients needs the untiled objective (pass --tile off, or a larger --max-memory)";

/// The classic style terms: Gram matrices blended over the style images, or the W2 loss
/// against their blended moments.
fn style_terms<B: Backend>(
    model: &Vgg<B>,
    cfg: &ObjectiveConfig,
    styles: &[Tensor<B>],
    beta: &[f64],
    tiling: Tiling,
) -> Result<Vec<Term<B>>> {
    let names: Vec<&str> = cfg.style_layers.iter().map(|(n, _)| n.as_str()).collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    for s in styles {
        image_size(s.dims(), "a style image")?;
    }
    let layer_lists: Vec<[&str; 1]> = names.iter().map(|n| [*n]).collect();
    let mut terms = Vec::with_capacity(names.len());
    match cfg.style_loss {
        StyleLoss::Gram => {
            let plain = GramStatistic::plain();
            let parts: Vec<(&[&str], &dyn Contribution<B>)> = layer_lists
                .iter()
                .map(|l| (&l[..], &plain as &dyn Contribution<B>))
                .collect();
            let mut targets: Vec<Option<Tensor<B>>> = vec![None; names.len()];
            for (s, b) in styles.iter().zip(beta) {
                for (slot, (sum, positions)) in targets
                    .iter_mut()
                    .zip(statistics(model, s, &parts, tiling)?)
                {
                    let c = sum[0].dims()[0];
                    let g = sum[0].scale(1.0 / (c as f64 * positions[0] as f64))?;
                    add_into(slot, g.scale(*b)?)?;
                }
            }
            for ((name, m), target) in cfg.style_layers.iter().zip(targets) {
                terms.push(nst_loss::gram_term(
                    name,
                    vec![GramRegion {
                        mask: None,
                        target: target.expect("one style image at least"),
                        weight: 1.0,
                    }],
                    cfg.style_weight * m,
                )?);
            }
        }
        StyleLoss::Nn => {
            return Err(Error::Config(
                "the nearest-neighbour loss is one term, built by Objective::with_tiling".into(),
            ))
        }
        StyleLoss::W2 => {
            // Per style image, per layer: the moments, from sums about the layer's mean (a
            // first pass finds it) so that f32 loses nothing to cancellation.
            let mut per_style: Vec<Vec<nst_loss::Moments>> = Vec::with_capacity(styles.len());
            for s in styles {
                let zero = W2Statistic::about(Vec::new());
                let parts: Vec<(&[&str], &dyn Contribution<B>)> = layer_lists
                    .iter()
                    .map(|l| (&l[..], &zero as &dyn Contribution<B>))
                    .collect();
                let first = statistics(model, s, &parts, tiling)?;
                let shifted: Vec<W2Statistic> = first
                    .iter()
                    .map(|(sum, p)| {
                        let c = sum[0].dims()[0];
                        let all = sum[0].to_f64()?;
                        let s1: Vec<f64> = (0..c).map(|i| all[i * (c + 1)]).collect();
                        let inv = 1.0 / p[0].max(1) as f64;
                        Ok(W2Statistic::about(s1.iter().map(|v| v * inv).collect()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let parts: Vec<(&[&str], &dyn Contribution<B>)> = layer_lists
                    .iter()
                    .zip(&shifted)
                    .map(|(l, s)| (&l[..], s as &dyn Contribution<B>))
                    .collect();
                let second = statistics(model, s, &parts, tiling)?;
                per_style.push(
                    second
                        .iter()
                        .zip(&shifted)
                        .map(|((sum, p), stat)| Ok(stat.moments(p[0], &sum[0].to_f64()?)))
                        .collect::<Result<Vec<_>>>()?,
                );
            }
            for (li, (name, m)) in cfg.style_layers.iter().enumerate() {
                let parts: Vec<(f64, &nst_loss::Moments)> = beta
                    .iter()
                    .copied()
                    .zip(per_style.iter().map(|m| &m[li]))
                    .collect();
                let target = nst_loss::W2Target::new(&nst_loss::Moments::blend(&parts)?)?;
                terms.push(nst_loss::w2_term(name, target, cfg.style_weight * m));
            }
        }
    }
    Ok(terms)
}
