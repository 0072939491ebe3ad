//! Memory planning: the predicted peak memory of a render, and the tile size and L-BFGS
//! history that fit a budget.
//!
//! The model counts what a render holds at its peak (see `docs/tiling.md`): a fixed base
//! (program, weights and their transformed copies), the image-sized vectors of the optimizer
//! and the objective (12 bytes per pixel each in f32), the content targets, and the
//! network's activations for one evaluation of the largest crop: every ReLU output on the tape
//! plus the transient buffers of the widest layer. Its constants depend on where the backend
//! keeps its buffers ([`MemoryModel`]): those of host memory were measured against the peak
//! resident set size of `nst render` on the CPU backend (`cargo xtask bench tiled`); those of
//! a device's memory are estimates (docs/tiling.md says from what).

use crate::optimizer::OptimizerKind;
use crate::tiled::{Geometry, Tiling};

use crate::{Error, ObjectiveConfig, Result};
use nst_tensor::{Backend, MemoryKind};
use nst_vgg::{LayerOp, Vgg};

/// The constants of the memory model for one kind of memory ([`MemoryKind`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryModel {
    /// Bytes held besides the render's own data.
    pub base_bytes: f64,
    /// Transient activation-sized buffers at the evaluation's peak, in units of the widest
    /// layer's activation (the gradient flowing back, the convolution's workspace).
    pub transient_layers: f64,
    /// Freed buffers a pool holds at the peak beyond what is in use, as a share of one
    /// evaluation's activations (up to the pool's limit, [`pool_limit`]).
    pub pooled_share: f64,
    /// Image-sized vectors of the host's (the content as loaded, at this scale, the
    /// result) in this memory.
    pub host_vectors: f64,
}

impl MemoryModel {
    /// The CPU backend's, measured: the program, the weights (80 MB) and their transformed
    /// copies and allocator slack; the convolution's workspace; the pool of freed buffers,
    /// which keeps most of an evaluation's buffers; the host's images, in the same memory.
    pub const HOST: MemoryModel = MemoryModel {
        base_bytes: 330e6,
        transient_layers: 0.25,
        pooled_share: 0.9,
        host_vectors: 5.0,
    };

    /// A GPU's (CUDA), estimated, not measured: the weights (80 MB), the cuBLAS and cuDNN
    /// handles' buffers and allocation granularity (the context itself is not in the free
    /// memory the budget comes from); a convolution workspace of up to one widest
    /// activation (cuDNN's fastest deterministic algorithms, im2col's column blocks); no
    /// pool beyond what is in use (the stream-ordered pool reuses freed buffers of the
    /// same sizes); the host's images stay on the host.
    pub const DEVICE: MemoryModel = MemoryModel {
        base_bytes: 400e6,
        transient_layers: 1.25,
        pooled_share: 0.0,
        host_vectors: 0.0,
    };

    /// The model for buffers kept in `memory`.
    pub fn of(memory: MemoryKind) -> MemoryModel {
        match memory {
            MemoryKind::Host { .. } => MemoryModel::HOST,
            MemoryKind::Device { .. } => MemoryModel::DEVICE,
        }
    }
}
/// Plans fit this share of the budget, leaving room for the model's error.
const HEADROOM: f64 = 0.85;
/// The share of the shallow part (to `pool2`) in the time of a forward pass.
const SHALLOW_SHARE: f64 = 0.3;
/// Bytes per image-sized vector per pixel (3 channels of f32).
const VECTOR: f64 = 12.0;

/// How the tile size is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TileChoice {
    /// Untiled when the whole image fits the budget, else the fastest tiling that fits.
    #[default]
    Auto,
    /// Never tiled.
    Off,
    /// Tiles of at most this side.
    Size(usize),
}

/// What a plan is made for.
#[derive(Clone, Debug)]
pub struct PlanRequest {
    /// The image (width, height).
    pub size: (usize, usize),
    /// The style images' sizes (width, height) as they enter the objective.
    pub style_sizes: Vec<(usize, usize)>,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// The L-BFGS history asked for.
    pub history: usize,
    /// Iterations at this size (L-BFGS never holds more pairs than iterations).
    pub iterations: usize,
    /// The tile choice.
    pub tile: TileChoice,
    /// The memory budget in bytes (`None`: unlimited).
    pub budget: Option<u64>,
    /// Layers read by terms besides the configuration's (a user's terms).
    pub extra_layers: Vec<String>,
    /// Where the backend keeps its buffers ([`Backend::memory`]): it picks the model's
    /// constants ([`MemoryModel::of`]).
    pub memory: MemoryKind,
    /// The largest buffer the backend's kernels take whole ([`Backend::max_buffer_bytes`]), in
    /// bytes: plans whose largest activation exceeds it are not chosen (`--tile auto` tiles
    /// until none does). `None`: no limit.
    pub max_buffer: Option<u64>,
}

/// A plan: how to evaluate, with what history, and the predicted peak memory.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    /// The tiling.
    pub tiling: Tiling,
    /// The number of tiles (1 when untiled).
    pub tiles: usize,
    /// The inner side of the tiles (the image's longer side when untiled).
    pub tile: usize,
    /// The halo (0 when untiled).
    pub halo: usize,
    /// Tiles whose deep tape is kept from pass 1 to pass 2.
    pub kept: usize,
    /// The L-BFGS history (the one asked for unless the budget lowered it).
    pub history: usize,
    /// The predicted peak memory in bytes.
    pub peak_bytes: u64,
    /// Pixels run through the network per evaluation over the untiled pass's: the predicted
    /// time per iteration relative to untiled.
    pub work: f64,
    /// The history asked for, when the budget lowered it.
    pub lowered_from: Option<usize>,
    /// The most bytes of freed buffers the backend may keep for reuse in this plan (the
    /// session sets it on its backend at each scale, `BackendExt::limit_cached`): what the budget leaves over, between a tenth of the
    /// budget and 4 GiB. A larger pool saves page faults: about a fifth of the time of an
    /// iteration at 1024 px.
    pub pool_limit: u64,
    /// One evaluation's activations and its largest buffer, from which the pool's share is
    /// predicted.
    eval_bytes: u64,
    widest_bytes: u64,
}

/// The layers at these indices as the objective reads them: each at its own positions, and
/// the image one pixel beyond them (the total-variation term's reach, which widens the
/// halo).
fn with_tv(indices: &[usize]) -> Vec<(usize, usize)> {
    let mut uses: Vec<(usize, usize)> = indices.iter().map(|&i| (i, 0)).collect();
    uses.push((crate::tiled::IMAGE, 1));
    uses
}

/// The per-layer facts the model needs: (stride, channels) of every convolution up to the
/// deepest used layer.
struct Net {
    convs: Vec<(usize, usize)>,
    /// The convolutions after `pool2`, whose tape tiles keep.
    deep_convs: Vec<(usize, usize)>,
    geometry: Geometry,
    /// (stride, channels) of the content layers.
    content: Vec<(usize, usize)>,
    /// (stride, channels) of every used layer.
    used: Vec<(usize, usize)>,
    /// For [`Tiling::Shallow`], when layers past `pool3` are used: the geometry of the tiled
    /// part (the used layers to `pool3`, and `pool3`), its convolutions, the convolutions
    /// run on the whole image, `pool3`'s (stride, channels), and the tiled part's share of
    /// a forward pass's arithmetic.
    shallow: Option<ShallowNet>,
    /// With the nearest-neighbour style loss: its hypercolumn's length, and whether the style
    /// is augmented.
    nn: Option<(usize, bool)>,
    /// The constants.
    k: MemoryModel,
}

struct ShallowNet {
    geometry: Geometry,
    convs: Vec<(usize, usize)>,
    upper: Vec<(usize, usize)>,
    input: (usize, usize),
    share: f64,
}

impl Net {
    fn new<B: Backend>(model: &Vgg<B>, cfg: &ObjectiveConfig, req: &PlanRequest) -> Result<Self> {
        let extra = &req.extra_layers;
        let mut idx = Vec::new();
        let mut content = Vec::new();
        for (n, _) in &cfg.content_layers {
            idx.push(model.layer_index(n)?);
        }
        for (n, _) in &cfg.style_layers {
            idx.push(model.layer_index(n)?);
        }
        for n in extra.iter().filter(|n| n.as_str() != nst_loss::INPUT) {
            idx.push(model.layer_index(n)?);
        }
        if idx.is_empty() {
            return Err(Error::Config("no content or style layers".into()));
        }
        let geometry = Geometry::with_reach(model, &with_tv(&idx))?;
        for &i in &idx[..cfg.content_layers.len()] {
            content.push(geometry.layer(i));
        }
        let used = idx.iter().map(|&i| geometry.layer(i)).collect();
        let deepest = *idx.iter().max().expect("one layer");
        let split = model.layer_index("pool2").ok().filter(|&sp| sp < deepest);
        let mut convs = Vec::new();
        let mut deep_convs = Vec::new();
        let mut stride = 1;
        let p3 = model.layer_index("pool3").ok().filter(|&p| p < deepest);
        let (mut macs, mut shallow_macs, mut cin) = (0.0, 0.0, 3);
        let (mut lower, mut upper) = (Vec::new(), Vec::new());
        for (i, l) in model.layers()[..=deepest].iter().enumerate() {
            match l.op {
                LayerOp::Conv { cout, .. } => {
                    convs.push((stride, cout));
                    if split.is_some_and(|sp| i > sp) {
                        deep_convs.push((stride, cout));
                    }
                    let m = (cin * cout) as f64 / (stride * stride) as f64;
                    macs += m;
                    if p3.is_some_and(|p| i < p) {
                        shallow_macs += m;
                        lower.push((stride, cout));
                    } else {
                        upper.push((stride, cout));
                    }
                    cin = cout;
                }
                LayerOp::Pool => stride *= 2,
                LayerOp::Relu => {}
            }
        }
        let nn = (cfg.style_loss == crate::StyleLoss::Nn).then(|| {
            let d = idx[cfg.content_layers.len()..][..cfg.style_layers.len()]
                .iter()
                .map(|&i| model.channels(i))
                .sum();
            (d, cfg.nn.augment)
        });
        let shallow = match p3 {
            // The hypercolumn straddles pool3: the objective tiles the whole network.
            Some(_) if nn.is_some() => None,
            Some(p) => {
                let mut uses: Vec<usize> = idx.iter().copied().filter(|&i| i <= p).collect();
                uses.push(p);
                let geometry = Geometry::with_reach(model, &with_tv(&uses))?;
                let input = (geometry.layer(p).0, model.channels(p));
                Some(ShallowNet {
                    geometry,
                    convs: lower,
                    upper,
                    input,
                    share: shallow_macs / macs.max(1.0),
                })
            }
            None => None,
        };
        Ok(Net {
            used,
            convs,
            deep_convs,
            geometry,
            content,
            shallow,
            nn,
            k: MemoryModel::of(req.memory),
        })
    }

    /// Bytes the nearest-neighbour loss holds: the style set, one block of the search, the
    /// targets' indices, one evaluation's target hypercolumns (host and backend) for the
    /// largest crop `(h, w)`, and the image-sized copies of the refresh (the matched blend,
    /// its host copy, the image it was made for, the content).
    fn nn_bytes(&self, req: &PlanRequest, largest: (usize, usize)) -> f64 {
        let Some((d, augment)) = self.nn else {
            return 0.0;
        };
        let grid = |h: usize, w: usize| (h / 4) * (w / 4);
        let variants = if augment { 8 } else { 1 };
        let m: usize = req
            .style_sizes
            .iter()
            .map(|&(sw, sh)| grid(sh, sw) * variants)
            .sum();
        let (w, h) = req.size;
        nst_loss::nn::set_bytes(d, m) as f64
            + nst_loss::nn::search_bytes(d, m, grid(largest.0, largest.1)) as f64
            + 4.0 * grid(h, w) as f64
            + 8.0 * (d * grid(largest.0, largest.1)) as f64
            + 4.0 * VECTOR * (w * h) as f64
    }

    /// Bytes of one evaluation's activations for an `h x w` crop.
    fn eval_bytes(&self, h: usize, w: usize) -> f64 {
        let mut sum = 0.0;
        let mut widest: f64 = 0.0;
        for &(s, c) in &self.convs {
            let n = (c * (h / s) * (w / s)) as f64;
            sum += n;
            widest = widest.max(n);
        }
        4.0 * (sum + self.k.transient_layers * widest)
    }

    /// Bytes a tiled evaluation adds for an `h x w` crop: each used layer's own positions,
    /// cut out on the tape, and their seeds (bounded by the crop's positions).
    fn seed_bytes(&self, h: usize, w: usize) -> f64 {
        self.used
            .iter()
            .map(|&(s, c)| 8.0 * (c * (h / s) * (w / s)) as f64)
            .sum()
    }

    /// Bytes of the widest layer's activation of an `h x w` crop: the largest buffer.
    fn widest_bytes(&self, h: usize, w: usize) -> f64 {
        self.convs
            .iter()
            .map(|&(s, c)| 4.0 * (c * (h / s) * (w / s)) as f64)
            .fold(0.0, f64::max)
    }

    /// Bytes of the deep part's tape of an `h x w` crop (with its input, `pool2`'s output).
    fn deep_bytes(&self, h: usize, w: usize) -> f64 {
        let input = self
            .deep_convs
            .first()
            .map_or(0.0, |&(s, _)| (128 * (h / s) * (w / s)) as f64);
        4.0 * (input
            + self
                .deep_convs
                .iter()
                .map(|&(s, c)| (c * (h / s) * (w / s)) as f64)
                .sum::<f64>())
    }

    /// Bytes of the content targets of an `h x w` image.
    fn content_bytes(&self, h: usize, w: usize) -> f64 {
        self.content
            .iter()
            .map(|&(s, c)| 4.0 * (c * (h / s) * (w / s)) as f64)
            .sum()
    }
}

/// Bytes of the activations of `convs` for an `h x w` input, plus the transient buffers.
fn conv_bytes(k: &MemoryModel, convs: &[(usize, usize)], h: usize, w: usize) -> f64 {
    let mut sum = 0.0;
    let mut widest: f64 = 0.0;
    for &(s, c) in convs {
        let n = (c * (h / s) * (w / s)) as f64;
        sum += n;
        widest = widest.max(n);
    }
    4.0 * (sum + k.transient_layers * widest)
}

/// The predicted peak of [`Tiling::Shallow`] with these crops: one crop's shallow tape at a
/// time, and the deep part's tape of the whole image with its input and that input's
/// gradient.
fn peak_shallow(
    net: &Net,
    sh: &ShallowNet,
    req: &PlanRequest,
    crops: &[(usize, usize)],
    history: usize,
) -> f64 {
    let (w, h) = req.size;
    let px = (w * h) as f64;
    let largest = crops
        .iter()
        .copied()
        .max_by_key(|&(a, b)| a * b)
        .unwrap_or((h, w));
    let pairs = history.min(req.iterations.max(1));
    let style_px: f64 = req.style_sizes.iter().map(|&(a, b)| (a * b) as f64).sum();
    let style_build = req
        .style_sizes
        .iter()
        .map(|&(sw, sh)| net.eval_bytes(largest.0.min(sh), largest.1.min(sw)) * 0.5)
        .fold(0.0, f64::max);
    let (s, c) = sh.input;
    let input = 4.0 * (c * (h / s) * (w / s)) as f64;
    let upper = conv_bytes(&net.k, &sh.upper, h, w) + 3.0 * input;
    let crop =
        conv_bytes(&net.k, &sh.convs, largest.0, largest.1) + net.seed_bytes(largest.0, largest.1);
    let eval = crop.max(style_build);
    let widest = sh
        .convs
        .iter()
        .map(|&(s, c)| 4.0 * (c * (largest.0 / s) * (largest.1 / s)) as f64)
        .fold(0.0, f64::max);
    let pool = pooled(&net.k, eval + upper, widest, pool_limit(req.budget));
    net.k.base_bytes
        + VECTOR * px * (optimizer_vectors(req.optimizer, pairs) + 4.0 + net.k.host_vectors + 1.0)
        + VECTOR * style_px
        + net.content_bytes(h, w)
        + upper
        + pool
        + eval
}

/// Relative work of [`Tiling::Shallow`]: the shallow part runs every crop forward twice and
/// backward once, the deep part the whole image forward and backward once.
fn work_shallow(sh: &ShallowNet, plan: &crate::TilePlan) -> f64 {
    let total: f64 = plan
        .tiles
        .iter()
        .map(|t| (t.crop.h * t.crop.w) as f64)
        .sum();
    let px = (plan.height * plan.width) as f64;
    (3.0 * sh.share * total + 2.0 * (1.0 - sh.share) * px) / (2.0 * px)
}

/// Image-sized vectors the optimizer holds at its peak, with `history` correction pairs.
fn optimizer_vectors(kind: OptimizerKind, history: usize) -> f64 {
    match kind {
        OptimizerKind::Lbfgs => (2 * history + 6) as f64,
        OptimizerKind::LbfgsWolfe => (2 * history + 8) as f64,
        OptimizerKind::Adam => 6.0,
        OptimizerKind::Gd => 4.0,
    }
}

/// The predicted peak: `crops` are the tiles' crops (h, w) of which the last `kept` keep
/// their deep tape; untiled when `crops` is empty.
fn peak(
    net: &Net,
    req: &PlanRequest,
    crops: &[(usize, usize)],
    kept: usize,
    history: usize,
) -> f64 {
    let (w, h) = req.size;
    let px = (w * h) as f64;
    let tiled = !crops.is_empty();
    let largest = crops
        .iter()
        .copied()
        .max_by_key(|&(a, b)| a * b)
        .unwrap_or((h, w));
    // The objective keeps the content image; tiled, also the gradient being summed and the
    // two transients of adding a crop into it. The host holds the content as loaded, at
    // this scale, and the result.
    let objective_vectors = if tiled { 4.0 } else { 1.0 };
    let host_vectors = net.k.host_vectors;
    // The render session keeps the point before the last step: the last good image.
    let session_vectors = 1.0;
    let pairs = history.min(req.iterations.max(1));
    let style_px: f64 = req.style_sizes.iter().map(|&(a, b)| (a * b) as f64).sum();
    // Style targets are built one image at a time, inference only.
    let style_build = req
        .style_sizes
        .iter()
        .map(|&(sw, sh)| {
            if tiled {
                net.eval_bytes(largest.0.min(sh), largest.1.min(sw)) * 0.5
            } else {
                net.eval_bytes(sh, sw) * 0.5
            }
        })
        .fold(0.0, f64::max);
    let deep: f64 = crops[crops.len() - kept.min(crops.len())..]
        .iter()
        .map(|&(a, b)| net.deep_bytes(a, b))
        .sum();
    let seeds = if tiled {
        net.seed_bytes(largest.0, largest.1)
    } else {
        0.0
    };
    let eval = (net.eval_bytes(largest.0, largest.1) + seeds).max(style_build);
    let pool = pooled(
        &net.k,
        eval,
        net.widest_bytes(largest.0, largest.1),
        pool_limit(req.budget),
    );
    net.k.base_bytes
        + VECTOR
            * px
            * (optimizer_vectors(req.optimizer, pairs)
                + objective_vectors
                + host_vectors
                + session_vectors)
        + VECTOR * style_px
        + net.content_bytes(h, w)
        + net.nn_bytes(req, largest)
        + deep
        + pool
        + eval
}

/// What the pool holds at the peak with this limit: a share of the evaluation's buffers,
/// but no more than the limit leaves beside the two largest buffers (a buffer is pooled only
/// when it fits under the limit with the others).
fn pooled(k: &MemoryModel, eval: f64, largest_buffer: f64, limit: u64) -> f64 {
    // A full pool with few large buffers stops short of its limit; a small one fills it.
    let room = if largest_buffer * 4.0 > limit as f64 {
        limit as f64 - 2.0 * largest_buffer
    } else {
        limit as f64
    };
    (k.pooled_share * eval).min(room.max(0.0))
}

/// A size for messages: [`format_bytes`], or in bytes below a megabyte.
fn exact_bytes(b: u64) -> String {
    if b < 1_000_000 {
        format!("{b} bytes")
    } else {
        format_bytes(b)
    }
}

/// The (height, width) of a plan's crops.
fn whole_crops(p: &crate::TilePlan) -> Vec<(usize, usize)> {
    p.tiles.iter().map(|t| (t.crop.h, t.crop.w)).collect()
}

/// The activations of one evaluation in a plan with these crops (the largest one's), and
/// its largest buffer.
fn eval_of(net: &Net, req: &PlanRequest, crops: &[(usize, usize)]) -> (f64, f64) {
    let (w, h) = req.size;
    let largest = crops
        .iter()
        .copied()
        .max_by_key(|&(a, b)| a * b)
        .unwrap_or((h, w));
    (
        net.eval_bytes(largest.0, largest.1),
        net.widest_bytes(largest.0, largest.1),
    )
}

/// Relative work of an evaluation with this plan: pass 1 runs every crop forward; pass 2
/// runs the shallow part again for the tiles whose deep tape was kept, the whole network
/// for the others, and every crop backward (about as costly as forward); against one
/// forward and one backward of the whole image.
fn work(plan: &crate::TilePlan, kept: usize) -> f64 {
    let areas: Vec<f64> = plan
        .tiles
        .iter()
        .map(|t| (t.crop.h * t.crop.w) as f64)
        .collect();
    let n = areas.len();
    let total: f64 = areas.iter().sum();
    let kept_area: f64 = areas[n - kept.min(n)..].iter().sum();
    let rerun = SHALLOW_SHARE * kept_area + (total - kept_area);
    (2.0 * total + rerun) / (2.0 * (plan.height * plan.width) as f64)
}

/// The plan for `req`: untiled when asked or when it fits, else the tiling with the least
/// work that fits the budget at the asked history; when none does (or only with more than
/// twice the untiled work), the history is lowered as little as needed. An error, before any
/// work, when nothing fits, naming the smallest budget that would.
pub fn plan<B: Backend>(
    model: &Vgg<B>,
    cfg: &ObjectiveConfig,
    req: &PlanRequest,
) -> Result<MemoryPlan> {
    let mut p = choose(model, cfg, req)?;
    if p.history < req.history.max(1) {
        p.lowered_from = Some(req.history);
    }
    // What the budget leaves over goes to the pool of freed buffers.
    let least = pool_limit(req.budget);
    let k = MemoryModel::of(req.memory);
    if let (Some(b), MemoryKind::Host { .. }) = (req.budget, req.memory) {
        let (eval, widest) = (p.eval_bytes as f64, p.widest_bytes as f64);
        let without = p.peak_bytes as f64 - pooled(&k, eval, widest, least);
        // Half of what is left: what the pool holds is the least certain part of the model.
        let spare = ((HEADROOM * b as f64 - without) / 2.0).max(0.0) as u64;
        p.pool_limit = spare.clamp(least, 4 << 30);
        p.peak_bytes = (without + pooled(&k, eval, widest, p.pool_limit)) as u64;
    }
    Ok(p)
}

fn choose<B: Backend>(
    model: &Vgg<B>,
    cfg: &ObjectiveConfig,
    req: &PlanRequest,
) -> Result<MemoryPlan> {
    let (w, h) = req.size;
    if w == 0 || h == 0 {
        return Err(Error::Config("the image is empty".into()));
    }
    let c = Candidates {
        net: Net::new(model, cfg, req)?,
        req,
        size: (w, h),
    };
    let history = req.history.max(1);
    let fits = |p: f64| c.fits(p);
    match req.tile {
        TileChoice::Off => {
            let p = c.untiled(history);
            if !c.binds(&p) {
                return Err(c.too_wide(&p));
            }
            if c.fits(p.peak_bytes as f64) {
                return Ok(p);
            }
            let min = c.untiled(1);
            if c.fits(min.peak_bytes as f64) {
                return Ok(lower_history(|m| Ok(c.untiled(m)), history, fits)?.expect("fits at 1"));
            }
            Err(c.too_big(min.peak_bytes))
        }
        TileChoice::Size(t) => {
            let p = c.tiled(t, history)?;
            if !c.binds(&p) {
                return Err(c.too_wide(&p));
            }
            if c.fits(p.peak_bytes as f64) {
                return Ok(p);
            }
            match lower_history(|m| c.tiled(t, m), history, fits)? {
                Some(p) => Ok(p),
                None => Err(c.too_big(c.tiled(t, 1)?.peak_bytes)),
            }
        }
        TileChoice::Auto => {
            let p = c.untiled(history);
            if c.fits(p.peak_bytes as f64) && c.binds(&p) {
                return Ok(p);
            }
            c.auto(history)
        }
    }
}

/// The plans [`choose`] weighs for one request: untiled, in whole-network tiles, or with only
/// the shallow part tiled, each at a given L-BFGS history.
struct Candidates<'r> {
    net: Net,
    req: &'r PlanRequest,
    /// (width, height).
    size: (usize, usize),
}

impl Candidates<'_> {
    /// Whether a peak fits the budget (with its headroom).
    fn fits(&self, peak: f64) -> bool {
        self.req.budget.is_none_or(|b| peak <= HEADROOM * b as f64)
    }

    /// Whether a plan's widest activation fits the backend's largest buffer. (Image-sized
    /// vectors may be larger: a backend with a limit splits those over several buffers.)
    fn binds(&self, p: &MemoryPlan) -> bool {
        self.req.max_buffer.is_none_or(|m| p.widest_bytes <= m)
    }

    /// The error of a plan with an activation larger than the backend's largest buffer.
    fn too_wide(&self, p: &MemoryPlan) -> Error {
        Error::Config(format!(
            "this plan's largest activation needs a buffer of {}, larger than this device's \
             largest ({}): allow tiling with --tile auto or use smaller tiles",
            exact_bytes(p.widest_bytes),
            exact_bytes(self.req.max_buffer.unwrap_or(u64::MAX))
        ))
    }

    fn untiled(&self, history: usize) -> MemoryPlan {
        let (net, req, (w, h)) = (&self.net, self.req, self.size);
        let whole_eval = eval_of(net, req, &[]);
        MemoryPlan {
            tiling: Tiling::Off,
            tiles: 1,
            tile: w.max(h),
            halo: 0,
            history,
            peak_bytes: peak(net, req, &[], 0, history) as u64,
            work: 1.0,
            kept: 0,
            lowered_from: None,
            pool_limit: pool_limit(req.budget),
            eval_bytes: whole_eval.0 as u64,
            widest_bytes: whole_eval.1 as u64,
        }
    }

    /// Tiles of side `t`, keeping as many deep tapes as fit (all when unlimited).
    fn tiled(&self, t: usize, history: usize) -> Result<MemoryPlan> {
        let (net, req, (w, h)) = (&self.net, self.req, self.size);
        let p = net.geometry.plan(h, w, t)?;
        let crops: Vec<(usize, usize)> = p.tiles.iter().map(|t| (t.crop.h, t.crop.w)).collect();
        let crop_eval = eval_of(net, req, &crops);
        let n = crops.len();
        let max_keep = if net.deep_convs.is_empty() { 1 } else { n };
        let fits_keeping = |keep: usize| self.fits(peak(net, req, &crops, keep, history));
        let kept = if fits_keeping(max_keep) {
            max_keep
        } else {
            // The most kept tapes that fit (the peak grows with every one).
            let (mut lo, mut hi) = (0, max_keep);
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if fits_keeping(mid) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        Ok(MemoryPlan {
            tiling: if kept == max_keep {
                Tiling::Tiles(t)
            } else {
                Tiling::TilesKeeping {
                    tile: t,
                    keep: kept,
                }
            },
            tiles: n,
            tile: p.largest_inner().unwrap_or(t),
            halo: p.halo,
            kept,
            history,
            peak_bytes: peak(net, req, &crops, kept, history) as u64,
            work: work(&p, kept),
            lowered_from: None,
            pool_limit: pool_limit(req.budget),
            eval_bytes: crop_eval.0 as u64,
            widest_bytes: crop_eval.1 as u64,
        })
    }

    /// The shallow part in tiles of side `t`, the deep part whole (`None` where the layers
    /// used do not reach past `pool3`, or `t` is not aligned).
    fn shallow(&self, t: usize, history: usize) -> Result<Option<MemoryPlan>> {
        let (net, req, (w, h)) = (&self.net, self.req, self.size);
        let Some(sh) = &net.shallow else {
            return Ok(None);
        };
        if !t.is_multiple_of(net.geometry.align()) {
            return Ok(None);
        }
        let p = sh.geometry.plan(h, w, t)?;
        let crops: Vec<(usize, usize)> = p.tiles.iter().map(|t| (t.crop.h, t.crop.w)).collect();
        let largest = crops
            .iter()
            .copied()
            .max_by_key(|&(a, b)| a * b)
            .unwrap_or((h, w));
        let eval = conv_bytes(&net.k, &sh.convs, largest.0, largest.1);
        Ok(Some(MemoryPlan {
            tiling: Tiling::Shallow(t),
            tiles: crops.len(),
            tile: p.largest_inner().unwrap_or(t),
            halo: p.halo,
            kept: 0,
            history,
            peak_bytes: peak_shallow(net, sh, req, &crops, history) as u64,
            work: work_shallow(sh, &p),
            lowered_from: None,
            pool_limit: pool_limit(req.budget),
            eval_bytes: eval as u64,
            // The targets (the content's activations) are made in whole-network tiles of
            // this size, wider crops than the shallow part's.
            widest_bytes: net
                .widest_bytes(largest.0, largest.1)
                .max(eval_of(net, req, &whole_crops(&net.geometry.plan(h, w, t)?)).1)
                as u64,
        }))
    }

    /// The error of a budget below `need` (the least peak of any plan).
    fn too_big(&self, need: u64) -> Error {
        Error::Config(format!(
            "this render needs at least {} of memory but the budget is {} (raise --max-memory{})",
            // The budget that would hold the plan, headroom included.
            format_bytes((need as f64 / HEADROOM).ceil() as u64),
            format_bytes(self.req.budget.unwrap_or(0)),
            if self.req.tile == TileChoice::Off {
                " or allow tiling with --tile auto"
            } else {
                ""
            }
        ))
    }

    /// `--tile auto` when the untiled plan does not fit: the tiling of least work that fits,
    /// keeping the history while a tiling of at most twice the untiled work allows it.
    fn auto(&self, history: usize) -> Result<MemoryPlan> {
        let (w, h) = self.size;
        let align = self.net.geometry.align();
        let longest = w.max(h);
        // One candidate side per number of tiles along the longer side.
        let mut sizes: Vec<usize> = (1..=longest.div_ceil(align).min(64))
            .map(|n| longest.div_ceil(n).div_ceil(align) * align)
            .collect();
        sizes.dedup();
        let best = |m: usize| -> Result<Option<MemoryPlan>> {
            let mut best: Option<MemoryPlan> = None;
            for &t in &sizes {
                let mut candidates = vec![self.tiled(t, m)?];
                if let Some(p) = self.shallow(t, m)? {
                    candidates.push(p);
                }
                for p in candidates {
                    if self.fits(p.peak_bytes as f64)
                        && self.binds(&p)
                        && best.as_ref().is_none_or(|b| p.work < b.work)
                    {
                        best = Some(p);
                    }
                }
            }
            Ok(best)
        };
        let good =
            |m: usize| -> Result<Option<MemoryPlan>> { Ok(best(m)?.filter(|p| p.work <= 2.0)) };
        // L-BFGS never holds more pairs than iterations: lowering the history to that costs
        // nothing.
        let effective = history.min(self.req.iterations.max(1));
        if let Some(mut p) = good(effective)? {
            p.history = history;
            return Ok(p);
        }
        // Where even the least history has no tiling of at most twice the untiled work (the
        // backend's largest buffer, not the budget, makes the tiles small), lowering it
        // would cost the optimizer for nothing.
        if good(1)?.is_none() {
            if let Some(mut p) = best(effective)? {
                p.history = history;
                return Ok(p);
            }
        }
        // The largest history with a tiling of at most twice the untiled work.
        let (mut lo, mut hi) = (0, effective);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if good(mid)?.is_some() {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        if lo >= 1 {
            if let Some(p) = good(lo)? {
                return Ok(p);
            }
        }
        if let Some(p) = best(1)? {
            return Ok(p);
        }
        let smallest: Vec<MemoryPlan> = sizes
            .iter()
            .filter_map(|&t| self.tiled(t, 1).ok())
            .collect();
        if let Some(p) = smallest
            .last()
            .filter(|_| !smallest.iter().any(|p| self.binds(p)))
        {
            return Err(self.too_wide(p));
        }
        let min = smallest.iter().map(|p| p.peak_bytes).min().unwrap_or(0);
        Err(self.too_big(min))
    }
}

/// The plan with the largest history below `history` that fits.
fn lower_history(
    make: impl Fn(usize) -> Result<MemoryPlan>,
    history: usize,
    fits: impl Fn(f64) -> bool,
) -> Result<Option<MemoryPlan>> {
    for m in (1..history).rev() {
        let p = make(m)?;
        if fits(p.peak_bytes as f64) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The default memory budget of a backend that keeps its buffers in `memory` (what it reports
/// through `BackendExt::memory`), and where it comes from: 80% of the host's memory available
/// now (8 GB when the backend cannot say), or 90% of a GPU's free memory. A GPU that cannot
/// say is an error: the budget must then be given. `nst render` and
/// [`RenderConfig::default`](crate::RenderConfig) (a budget of `None`) use this rule.
pub fn default_budget(memory: MemoryKind) -> Result<(u64, String)> {
    match memory {
        MemoryKind::Host { available: 0 } => Ok((
            8_000_000_000,
            "8 GB: the host's available memory could not be read".to_string(),
        )),
        MemoryKind::Host { available } => Ok((
            available / 10 * 8,
            "80% of the memory available now".to_string(),
        )),
        MemoryKind::Device { free: 0, .. } => Err(Error::Config(
            "the GPU did not say how much of its memory is free: give a budget with --max-memory"
                .into(),
        )),
        MemoryKind::Device { total, free } => Ok((
            free / 10 * 9,
            format!(
                "90% of the GPU's free memory ({} free of {})",
                format_bytes(free),
                format_bytes(total)
            ),
        )),
    }
}

/// The least bytes of freed buffers the CPU backend pools under a budget: a twentieth of
/// it (4 GiB, the backend's default, without one); plans raise it with what they leave over.
/// A render session sets it on its backend with `BackendExt::limit_cached`.
pub fn pool_limit(budget: Option<u64>) -> u64 {
    budget.map_or(4 << 30, |b| b / 20)
}

pub use nst_tensor::format_bytes;

/// Parses `3G`, `512M`, `1.5G`, `2000000000` (bytes; K, M, G, T are powers of 1000, with an
/// optional trailing `B`).
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1e3,
                'M' => 1e6,
                'G' => 1e9,
                'T' => 1e12,
                _ => {
                    return Err(Error::Config(format!(
                        "bad memory size {s:?} (e.g. 3G, 512M)"
                    )))
                }
            };
            (&t[..i], m)
        }
        _ => (t, 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| Error::Config(format!("bad memory size {s:?} (e.g. 3G, 512M)")))?;
    if !(v.is_finite() && v > 0.0) || v * mul > 1e18 {
        return Err(Error::Config(format!(
            "bad memory size {s:?} (e.g. 3G, 512M)"
        )));
    }
    Ok((v * mul) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An L-BFGS render of a `size x 3/4 size` photo by a square painting as large.
    fn request(
        size: usize,
        history: usize,
        iterations: usize,
        budget: Option<u64>,
        memory: MemoryKind,
    ) -> PlanRequest {
        PlanRequest {
            size: (size, size * 3 / 4),
            style_sizes: vec![(size, size)],
            optimizer: OptimizerKind::Lbfgs,
            history,
            iterations,
            tile: TileChoice::Auto,
            budget,
            extra_layers: Vec::new(),
            memory,
            max_buffer: None,
        }
    }

    /// The nearest-neighbour loss's style set, search and targets enter the plan: the same
    /// render predicts more with it than with the Gram loss, more again with the style
    /// augmented, and a 2048 px render still gets a tiled plan under 3 GB.
    #[test]
    fn the_nearest_neighbour_loss_is_counted() {
        let be = nst_cpu::Cpu::new(1);
        let vgg = Vgg::random_for_tests(&be, nst_vgg::Arch::Vgg19, 1).unwrap();
        let req = |size: usize, budget: Option<u64>| {
            request(size, 100, 200, budget, MemoryKind::Host { available: 0 })
        };
        let nn = |augment: bool| ObjectiveConfig {
            style_loss: crate::StyleLoss::Nn,
            style_layers: crate::StyleLoss::Nn.default_style_layers(),
            nn: crate::NnConfig {
                refresh: 50,
                augment,
            },
            ..ObjectiveConfig::default()
        };
        let peak = |cfg: &ObjectiveConfig| plan(&vgg, cfg, &req(512, None)).unwrap().peak_bytes;
        let gram = ObjectiveConfig {
            style_layers: nn(false).style_layers,
            ..ObjectiveConfig::default()
        };
        let (g, n, a) = (peak(&gram), peak(&nn(false)), peak(&nn(true)));
        assert!(g < n && n < a, "gram {g}, nn {n}, augmented {a}");
        let p = plan(&vgg, &nn(true), &req(2048, Some(3_000_000_000))).unwrap();
        assert!(p.tiles > 1 && p.peak_bytes < 3_000_000_000, "{p:?}");
        assert!(!matches!(p.tiling, Tiling::Shallow(_)), "{p:?}");
    }

    /// A GPU's plan: the host's images and the CPU's pool are not in it, the larger
    /// workspace is; under a device budget a 4096 px render is tiled to fit it.
    #[test]
    fn a_device_budget_plans_with_the_devices_constants() {
        let be = nst_cpu::Cpu::new(1);
        let vgg = Vgg::random_for_tests(&be, nst_vgg::Arch::Vgg19, 1).unwrap();
        let gpu = MemoryKind::Device {
            total: 16_000_000_000,
            free: 2_000_000_000,
        };
        let req = |size: usize, budget: Option<u64>, memory: MemoryKind| {
            request(size, 10, 100, budget, memory)
        };
        let cfg = ObjectiveConfig::default();
        let host = plan(
            &vgg,
            &cfg,
            &req(1024, None, MemoryKind::Host { available: 0 }),
        )
        .unwrap();
        let device = plan(&vgg, &cfg, &req(1024, None, gpu)).unwrap();
        // Untiled both: the difference is the model's constants, term by term.
        let (w, h) = (1024.0, 768.0);
        let (k, d) = (MemoryModel::HOST, MemoryModel::DEVICE);
        let eval = host.eval_bytes as f64;
        let widest = host.widest_bytes as f64;
        let acts = eval - k.transient_layers * widest;
        let want = (k.base_bytes - d.base_bytes)
            + VECTOR * w * h * (k.host_vectors - d.host_vectors)
            + k.pooled_share * eval
            + (k.transient_layers - d.transient_layers) * widest;
        let got = host.peak_bytes as f64 - device.peak_bytes as f64;
        assert!(
            (got - want).abs() < 1e-6 * host.peak_bytes as f64,
            "{got} vs {want}"
        );
        assert!(acts > 0.0 && device.peak_bytes < host.peak_bytes);
        let tight = plan(&vgg, &cfg, &req(4096, Some(5_000_000_000), gpu)).unwrap();
        assert!(tight.tiles > 1, "{tight:?}");
        assert!(tight.peak_bytes as f64 <= HEADROOM * 5e9, "{tight:?}");
        assert_eq!(tight.pool_limit, pool_limit(Some(5_000_000_000)));
    }

    /// A 4096 px render on an adapter whose bindings hold 128 MiB: whole, conv1_1 alone would
    /// need 4.3 GB, so the plan tiles until every activation fits; a limit below the widest
    /// activation of the smallest tile is refused with the planner's message.
    #[test]
    fn a_buffer_limit_tiles_until_every_activation_fits() {
        let be = nst_cpu::Cpu::new(1);
        let vgg = Vgg::random_for_tests(&be, nst_vgg::Arch::Vgg19, 1).unwrap();
        let gpu = MemoryKind::Device {
            total: 80 << 30,
            free: 80 << 30,
        };
        let mut req = request(4096, 100, 500, Some(60_000_000_000), gpu);
        req.size = (4096, 4096);
        req.max_buffer = Some(128 << 20);
        let p = plan(&vgg, &ObjectiveConfig::default(), &req).unwrap();
        assert!(p.tiles > 1 && p.widest_bytes <= 128 << 20, "{p:?}");
        assert_eq!(p.history, 100, "{p:?}");
        req.max_buffer = Some(1 << 20);
        let err = plan(&vgg, &ObjectiveConfig::default(), &req)
            .unwrap_err()
            .to_string();
        assert!(err.contains("larger than this device's largest"), "{err}");
        req.tile = TileChoice::Off;
        req.max_buffer = Some(128 << 20);
        let err = plan(&vgg, &ObjectiveConfig::default(), &req)
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow tiling with --tile auto"), "{err}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("3G").unwrap(), 3_000_000_000);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes("512m").unwrap(), 512_000_000);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        for bad in ["", "G", "-1G", "3X", "nanG", "0"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_budget_is_of_the_memory_the_backend_uses() {
        let host = MemoryKind::Host {
            available: 10_000_000_000,
        };
        let (b, why) = default_budget(host).unwrap();
        assert_eq!(b, 8_000_000_000);
        assert!(why.contains("available"), "{why}");
        let (b, why) = default_budget(MemoryKind::Host { available: 0 }).unwrap();
        assert_eq!(b, 8_000_000_000);
        assert!(why.contains("could not be read"), "{why}");
        let gpu = MemoryKind::Device {
            total: 80_000_000_000,
            free: 10_000_000_000,
        };
        let (b, why) = default_budget(gpu).unwrap();
        assert_eq!(b, 9_000_000_000);
        assert!(
            why.contains("GPU") && why.contains("10.0 GB free of 80.0 GB"),
            "{why}"
        );
        let unknown = MemoryKind::Device { total: 0, free: 0 };
        let e = default_budget(unknown).unwrap_err().to_string();
        assert!(e.contains("--max-memory"), "{e}");
    }
}
