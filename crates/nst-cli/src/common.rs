//! Arguments shared by the subcommands: the model, the objective, the style images.

use crate::io;
use anyhow::{bail, Context, Result};
use nst_cpu::Cpu;
use nst_style::{Image, NnConfig, ObjectiveConfig, StyleLoss};
use nst_tensor::PoolKind;
use std::path::PathBuf;

/// Pooling in the network.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Pooling {
    /// Max pooling (the classic choice).
    Max,
    /// Average pooling.
    Avg,
}

impl From<Pooling> for PoolKind {
    fn from(p: Pooling) -> Self {
        match p {
            Pooling::Max => PoolKind::Max,
            Pooling::Avg => PoolKind::Avg,
        }
    }
}

/// How exactly 3x3 convolutions are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PrecisionArg {
    /// Within 1e-5 of f64 on the losses and 1e-4 on the gradient: Winograd F(2x2, 3x3) on
    /// the CPU, strict f32 (no TF32) on CUDA.
    Default,
    /// Faster, less exact: on the CPU, Winograd F(4x4, 3x3), or bf16 products with f32 sums
    /// on CPUs with AMX or AVX512-BF16 (chosen at run time); TF32 tensor cores on CUDA (see
    /// docs/benchmarks.md and docs/cuda.md).
    Fast,
}

/// Where to run and which network.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ModelArgs {
    /// The weights (default: $NST_WEIGHTS, else weights/vgg19.safetensors).
    #[arg(long, value_name = "PATH")]
    pub(crate) weights: Option<PathBuf>,
    /// Pooling used by the network.
    #[arg(long, value_enum, default_value = "max")]
    pub(crate) pooling: Pooling,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) threads: usize,
    /// The device: cpu, cuda[:N] (a build with `--features cuda`) or wgpu[:N] (Vulkan, Metal,
    /// DirectX 12; a build with `--features wgpu`; `nst devices` lists the adapters).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub(crate) device: String,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = io::DEFAULT_MAX_PIXELS, value_name = "N")]
    pub(crate) max_pixels: u64,
    /// Convolution precision: default, or fast (less exact; see docs/benchmarks.md, docs/cuda.md).
    #[arg(long, value_enum, default_value = "default")]
    pub(crate) precision: PrecisionArg,
}

/// The backend chosen with `--device`.
pub(crate) enum Device {
    /// The CPU.
    Cpu(Cpu),
    /// An NVIDIA GPU.
    #[cfg(any(feature = "cuda", feature = "cuda-12"))]
    Cuda(nst_cuda::Cuda),
    /// A GPU (or software adapter) through wgpu: Vulkan, Metal or DirectX 12.
    #[cfg(feature = "wgpu")]
    Wgpu(nst_wgpu::Wgpu),
}

/// Runs `$body` with `$b` bound to the chosen backend (the concrete type is picked once,
/// here, and everything below is generic).
macro_rules! with_backend {
    ($device:expr, |$b:ident| $body:expr) => {
        match $device {
            $crate::common::Device::Cpu($b) => $body,
            #[cfg(any(feature = "cuda", feature = "cuda-12"))]
            $crate::common::Device::Cuda($b) => $body,
            #[cfg(feature = "wgpu")]
            $crate::common::Device::Wgpu($b) => $body,
        }
    };
}
pub(crate) use with_backend;

impl ModelArgs {
    /// The backend named by `--device`, or an error naming what is unavailable.
    pub(crate) fn device(&self) -> Result<Device> {
        match self.device.as_str() {
            "cpu" => Ok(Device::Cpu(Cpu::new(self.threads).with_precision(
                match self.precision {
                    PrecisionArg::Default => nst_cpu::Precision::Default,
                    PrecisionArg::Fast => nst_cpu::Precision::Fast,
                },
            ))),
            d if d == "cuda" || d.starts_with("cuda:") => {
                cuda(d, self.precision == PrecisionArg::Fast)
            }
            d if d == "wgpu" || d.starts_with("wgpu:") => {
                wgpu(d, self.precision == PrecisionArg::Fast)
            }
            d => bail!("unknown device {d:?} (expected cpu, cuda, cuda:N, wgpu or wgpu:N)"),
        }
    }

    /// Loads the network with the chosen pooling.
    pub(crate) fn model<B: nst_tensor::Backend>(&self, backend: &B) -> Result<nst_vgg::Vgg<B>> {
        Ok(io::load_model(backend, self.weights.as_deref())?.with_pooling(self.pooling.into()))
    }
}

fn cuda_ordinal(d: &str) -> Result<usize> {
    ordinal(d, "cuda")
}

/// N of `kind:N` (0 for `kind` alone).
fn ordinal(d: &str, kind: &str) -> Result<usize> {
    match d.strip_prefix(kind).and_then(|r| r.strip_prefix(':')) {
        None => Ok(0),
        Some(n) => n
            .parse()
            .with_context(|| format!("bad device {d:?} (expected {kind} or {kind}:N)")),
    }
}

#[cfg(feature = "wgpu")]
fn wgpu(d: &str, fast: bool) -> Result<Device> {
    let n = ordinal(d, "wgpu")?;
    let gpu = nst_wgpu::Wgpu::new(n).map_err(|e| anyhow::anyhow!("device {d}: {e}"))?;
    if fast {
        eprintln!("note: --precision fast on wgpu computes in f32 like the default");
    }
    Ok(Device::Wgpu(gpu))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(d: &str, _fast: bool) -> Result<Device> {
    ordinal(d, "wgpu")?;
    bail!("device {d} is not available: this nst was built without wgpu support (rebuild with `--features wgpu`)")
}

#[cfg(any(feature = "cuda", feature = "cuda-12"))]
fn cuda(d: &str, fast: bool) -> Result<Device> {
    let ordinal = cuda_ordinal(d)?;
    let precision = if fast {
        nst_cuda::Precision::Fast
    } else {
        nst_cuda::Precision::Default
    };
    let gpu =
        nst_cuda::Cuda::open(ordinal, precision).map_err(|e| anyhow::anyhow!("device {d}: {e}"))?;
    if let Some(note) = gpu.note() {
        eprintln!("{note}");
    }
    Ok(Device::Cuda(gpu))
}

#[cfg(not(any(feature = "cuda", feature = "cuda-12")))]
fn cuda(d: &str, _fast: bool) -> Result<Device> {
    cuda_ordinal(d)?;
    bail!("device {d} is not available: this nst was built without CUDA support (rebuild with `--features cuda`)")
}

/// The objective's weights and layers.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ObjectiveArgs {
    /// Weight of the content loss (w_c).
    #[arg(long, default_value_t = 5.0, value_name = "W")]
    content_weight: f64,
    /// Weight of the style loss (w_s) [default: 100 with --style-loss gram, 10 with w2, 3e7
    /// with nn].
    #[arg(long, value_name = "W")]
    style_weight: Option<f64>,
    /// The style loss: Gram matrices (Gatys et al.), the Wasserstein-2 distance between the
    /// activations' Gaussians, or nearest-neighbour matching of hypercolumns (after NNST).
    #[arg(long, value_enum, default_value_t = StyleLossArg::Gram, value_name = "LOSS")]
    style_loss: StyleLossArg,
    /// Divide each content and style layer's gradient by its L1 norm before weighting it
    /// (the classic -normalize_gradients; needs the untiled objective).
    #[arg(long)]
    normalize_gradients: bool,
    /// Weight of the total-variation loss (w_tv).
    #[arg(long, default_value_t = 1e-3, value_name = "W")]
    tv_weight: f64,
    /// Content layers, comma-separated, each optionally `name:multiplier`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "relu4_2",
        value_name = "LAYERS"
    )]
    content_layers: Vec<String>,
    /// Style layers, comma-separated, each optionally `name:multiplier` [default:
    /// relu1_1,relu2_1,relu3_1,relu4_1,relu5_1; with --style-loss nn, the hypercolumn's
    /// relu1_1:1,relu2_1:0.3,relu3_1:0.1,relu4_1:0.1].
    #[arg(long, value_delimiter = ',', value_name = "LAYERS")]
    style_layers: Option<Vec<String>>,
    /// With --style-loss nn: remake the nearest-neighbour targets every N iterations (and at
    /// each scale's start).
    #[arg(long, default_value_t = nst_style::nn::NN_REFRESH, value_name = "N")]
    nn_refresh: usize,
    /// With --style-loss nn: add the style images' flips and quarter turns to the features
    /// matched (slower search, more choice).
    #[arg(long)]
    nn_augment: bool,
}

fn layer_list(specs: &[String], what: &str) -> Result<Vec<(String, f64)>> {
    specs
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| match s.split_once(':') {
            None => Ok((s.trim().to_string(), 1.0)),
            Some((n, w)) => {
                let w: f64 = w
                    .trim()
                    .parse()
                    .with_context(|| format!("bad multiplier in {what} layer {s:?}"))?;
                Ok((n.trim().to_string(), w))
            }
        })
        .collect()
}

/// `--style-loss`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StyleLossArg {
    /// Gram matrices.
    Gram,
    /// The Wasserstein-2 distance between Gaussians.
    W2,
    /// Nearest-neighbour matching of hypercolumns.
    Nn,
}

impl ObjectiveArgs {
    /// The objective's settings.
    pub(crate) fn config(&self) -> Result<ObjectiveConfig> {
        let style_loss = match self.style_loss {
            StyleLossArg::Gram => StyleLoss::Gram,
            StyleLossArg::W2 => StyleLoss::W2,
            StyleLossArg::Nn => StyleLoss::Nn,
        };
        if self.nn_refresh == 0 {
            bail!(
                "--nn-refresh must be at least 1 (iterations between nearest-neighbour searches)"
            );
        }
        let style_layers = match &self.style_layers {
            Some(l) => layer_list(l, "style")?,
            None => style_loss.default_style_layers(),
        };
        Ok(ObjectiveConfig {
            content_weight: self.content_weight,
            style_weight: self
                .style_weight
                .unwrap_or_else(|| style_loss.default_style_weight()),
            tv_weight: self.tv_weight,
            content_layers: layer_list(&self.content_layers, "content")?,
            style_layers,
            style_loss,
            normalize_gradients: self.normalize_gradients,
            nn: NnConfig {
                refresh: self.nn_refresh,
                augment: self.nn_augment,
            },
        })
    }
}

/// Loads every style image.
pub(crate) fn load_styles(paths: &[PathBuf], max_pixels: u64) -> Result<Vec<Image>> {
    if paths.is_empty() {
        bail!("at least one style image is needed (--style)");
    }
    paths
        .iter()
        .map(|p| io::load_image(p, max_pixels))
        .collect()
}

/// The content and style images of a render or an evaluation.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct InputArgs {
    /// The content image (the photo).
    #[arg(long)]
    pub(crate) content: PathBuf,
    /// The style image(s) (paintings), comma-separated or the flag repeated (a path that
    /// exists is taken whole, commas and all).
    #[arg(long, required = true)]
    pub(crate) style: Vec<PathBuf>,
    /// Blend weights of the style images, comma-separated (equal by default).
    #[arg(long, value_delimiter = ',')]
    pub(crate) style_blend: Vec<f64>,
    /// Region masks, one grey image per style image, comma-separated: style k paints where
    /// mask k is bright (value/255 weighs it; resized to the content's size).
    #[arg(long, value_name = "M1,M2,...")]
    pub(crate) content_mask: Vec<PathBuf>,
    /// Masks on the style images, one per style image (with --content-mask): the style
    /// statistics of style k are taken where its mask is bright.
    #[arg(long, value_name = "M1,M2,...")]
    pub(crate) style_mask: Vec<PathBuf>,
}

/// The paths of a list flag: each value that names an existing file or folder as it is,
/// commas and all; any other value split at its commas.
fn listed(values: &[PathBuf]) -> Vec<PathBuf> {
    values
        .iter()
        .flat_map(|v| match v.to_str() {
            Some(s) if s.contains(',') && !v.exists() => {
                s.split(',').map(PathBuf::from).collect::<Vec<_>>()
            }
            _ => vec![v.clone()],
        })
        .collect()
}

impl InputArgs {
    /// The style images' paths (`--style`, its lists split).
    pub(crate) fn styles(&self) -> Vec<PathBuf> {
        listed(&self.style)
    }

    /// The region masks' paths (`--content-mask`, its lists split).
    pub(crate) fn content_masks(&self) -> Vec<PathBuf> {
        listed(&self.content_mask)
    }

    /// The style masks' paths (`--style-mask`, its lists split).
    pub(crate) fn style_mask_paths(&self) -> Vec<PathBuf> {
        listed(&self.style_mask)
    }

    /// The region masks, loaded (empty when none are given).
    pub(crate) fn masks(&self, max_pixels: u64) -> Result<Vec<Image>> {
        self.content_masks()
            .iter()
            .map(|p| io::load_image(p, max_pixels).context("loading a --content-mask"))
            .collect()
    }

    /// The style masks, loaded (empty when none are given).
    pub(crate) fn style_masks(&self, max_pixels: u64) -> Result<Vec<Image>> {
        self.style_mask_paths()
            .iter()
            .map(|p| io::load_image(p, max_pixels).context("loading a --style-mask"))
            .collect()
    }
}

/// Tiling and the memory budget (render, eval, estimate).
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct MemoryArgs {
    /// Tiling of the objective: N (inner tile side in pixels, a multiple of the deepest
    /// layer's stride), auto (untiled when the image fits the budget), or off.
    #[arg(long, default_value = "auto", value_name = "N|auto|off")]
    pub(crate) tile: String,
    /// The memory budget, e.g. 3G or 512M: of the host's memory, or with --device cuda of
    /// the GPU's (default: 80% of the host's memory available now; 90% of the GPU's free
    /// memory).
    #[arg(long, value_name = "SIZE")]
    pub(crate) max_memory: Option<String>,
}

impl MemoryArgs {
    /// The tile choice.
    pub(crate) fn tile(&self) -> Result<nst_style::TileChoice> {
        Ok(match self.tile.trim() {
            "auto" => nst_style::TileChoice::Auto,
            "off" => nst_style::TileChoice::Off,
            t => match t.parse::<usize>() {
                Ok(n) if n > 0 => nst_style::TileChoice::Size(n),
                _ => bail!("bad --tile {t:?}: expected a positive number of pixels, auto or off"),
            },
        })
    }

    /// The budget in bytes of the host's memory (for decoding images).
    pub(crate) fn budget(&self) -> Result<u64> {
        Ok(self.budget_for(nst_cpu::host::memory())?.0)
    }

    /// The budget in bytes of a backend that keeps its buffers in `memory`, and where it
    /// comes from.
    pub(crate) fn budget_for(&self, memory: nst_tensor::MemoryKind) -> Result<(u64, String)> {
        match &self.max_memory {
            Some(s) => Ok((
                nst_style::memory::parse_bytes(s)
                    .map_err(|e| anyhow::anyhow!("--max-memory: {e}"))?,
                "--max-memory".to_string(),
            )),
            None => crate::system::default_budget_for(memory),
        }
    }
}

/// One line about a scale's plan when it is tiled or its history was lowered.
pub(crate) fn plan_note(
    scale: usize,
    (w, h): (usize, usize),
    p: &nst_style::MemoryPlan,
) -> Option<String> {
    if p.tiles <= 1 && p.lowered_from.is_none() {
        return None;
    }
    let mut parts = Vec::new();
    if p.tiles > 1 {
        let deep = if matches!(p.tiling, nst_style::Tiling::Shallow(_)) {
            " to pool3, deeper layers whole"
        } else {
            ""
        };
        parts.push(format!(
            "{} tiles of up to {} px with a {} px halo{deep} ({:.2}x the untiled work)",
            p.tiles, p.tile, p.halo, p.work
        ));
    }
    if let Some(asked) = p.lowered_from {
        parts.push(format!(
            "L-BFGS history {} (lowered from {asked} to fit the memory budget)",
            p.history
        ));
    }
    Some(format!(
        "scale {} ({w}x{h}): {}; predicted peak memory {}",
        scale + 1,
        parts.join(", "),
        nst_style::memory::format_bytes(p.peak_bytes)
    ))
}

/// `--color-control`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ColorArg {
    /// The style's colours come through.
    None,
    /// Luminance-only transfer, the photo's chroma put back.
    Luminance,
    /// The style's colour mean and covariance matched to the photo's first.
    Match,
    /// The render's colour mean and covariance matched to the style's after (in OkLab).
    Palette,
}

/// `--color-match`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum RootArg {
    /// Σ_c^½ Σ_s^(−½).
    Pca,
    /// Cholesky factors.
    Chol,
    /// The symmetric root.
    Sym,
}

/// Colour control (render and eval).
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ColorArgs {
    /// Colour control: none, luminance (optimise on luminance only, then put back the
    /// photo's colours), match (map the style's colours to the photo's first) or palette (map
    /// the render's colours to the style's after). Default: palette for --style-loss nn,
    /// none otherwise.
    #[arg(long, value_enum)]
    color_control: Option<ColorArg>,
    /// The matrix root of --color-control match and palette: pca, chol or sym
    /// (docs/objective.md).
    #[arg(long, value_enum, default_value = "pca")]
    color_match: RootArg,
    /// Keep the photo's colours: the same as --color-control luminance.
    #[arg(long)]
    original_colors: bool,
}

impl ColorArgs {
    /// The colour control asked for, or `loss`'s default.
    pub(crate) fn control(&self, loss: nst_style::StyleLoss) -> Result<nst_style::ColorControl> {
        use nst_style::{ColorControl, MatrixRoot};
        let root = match self.color_match {
            RootArg::Pca => MatrixRoot::Pca,
            RootArg::Chol => MatrixRoot::Cholesky,
            RootArg::Sym => MatrixRoot::Symmetric,
        };
        Ok(match (self.color_control, self.original_colors) {
            (Some(c @ (ColorArg::Match | ColorArg::Palette)), true) => bail!(
                "--original-colors is --color-control luminance: it cannot be combined with --color-control {}",
                if c == ColorArg::Match { "match" } else { "palette" }
            ),
            (Some(ColorArg::Luminance), _) | (_, true) => ColorControl::Luminance,
            (Some(ColorArg::None), false) => ColorControl::None,
            (Some(ColorArg::Match), false) => ColorControl::Match(root),
            (Some(ColorArg::Palette), false) => ColorControl::Palette(root),
            (None, false) => match loss.default_color_control() {
                ColorControl::Palette(_) => ColorControl::Palette(root),
                other => other,
            },
        })
    }
}
