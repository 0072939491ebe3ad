//! `nst render`: repaint a photo in the style of one or more paintings.

use crate::common::{self, ModelArgs, ObjectiveArgs};
use crate::io;
use anyhow::{bail, ensure, Context, Result};
use nst_style::{Image, Init, Observer, OptimizerKind, Progress, RenderConfig};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The optimizer.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Optim {
    /// L-BFGS, step 1, history 100, no line search (the classic choice).
    Lbfgs,
    /// L-BFGS with a strong-Wolfe line search.
    LbfgsWolfe,
    /// Adam.
    Adam,
    /// Plain gradient descent.
    Gd,
}

#[derive(clap::Args)]
#[command(allow_negative_numbers = true)]
pub(crate) struct Args {
    #[command(flatten)]
    inputs: common::InputArgs,
    /// The output image; the format follows the extension (PNG when none).
    #[arg(long)]
    out: PathBuf,
    /// The longer side of the output in pixels.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    size: u32,
    /// Coarse-to-fine sizes, e.g. 256,512: optimise small, upsample, continue (overrides --size).
    #[arg(long, value_delimiter = ',')]
    scales: Vec<u32>,
    /// Iterations (per scale).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// The optimizer.
    #[arg(long, value_enum, default_value = "lbfgs")]
    optimizer: Optim,
    /// Learning rate (default: 1 for L-BFGS, 10 for Adam, 0.1 for gradient descent).
    #[arg(long)]
    learning_rate: Option<f64>,
    /// The starting image: noise, content, or a path.
    #[arg(long, default_value = "noise")]
    init: String,
    /// The seed of the noise initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Style images are scaled so their longer side is this times the content's.
    #[arg(long, default_value_t = 1.0)]
    style_scale: f64,
    /// Keep the content's colours (transfer luminance only).
    #[arg(long)]
    original_colors: bool,
    /// Save a snapshot every N iterations (beside the output, `_iterN` appended).
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// Write one JSON object per iteration (losses by term, elapsed seconds) to this file.
    #[arg(long)]
    json_log: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    objective: ObjectiveArgs,
}

/// The snapshot path for iteration `it`: `out_iterN.ext`.
fn snapshot_path(out: &Path, scale: usize, scales: usize, it: usize) -> PathBuf {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let ext = out.extension().and_then(|s| s.to_str()).unwrap_or("png");
    let name = if scales > 1 {
        format!("{stem}_scale{}_iter{it}.{ext}", scale + 1)
    } else {
        format!("{stem}_iter{it}.{ext}")
    };
    out.with_file_name(name)
}

struct Reporter {
    quiet: bool,
    terminal: bool,
    json: Option<std::io::BufWriter<std::fs::File>>,
    out: PathBuf,
    last_draw: Option<Instant>,
    scale_start: Instant,
    scale_index: usize,
    /// When the previous iteration was reported (a new scale's clock starts there).
    last_report: Instant,
    error: Option<anyhow::Error>,
}

fn short(v: f64) -> String {
    format!("{v:.3e}")
}

impl Reporter {
    fn line(&self, p: &Progress) -> String {
        let (it, n) = p.iteration;
        let secs = self.scale_start.elapsed().as_secs_f64();
        let rate = it as f64 / secs.max(1e-9);
        let eta = (n - it) as f64 / rate.max(1e-9);
        let sum = |prefix: &str| -> f64 {
            p.terms
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v)
                .sum()
        };
        let scale = if p.scale.1 > 1 {
            format!("scale {}/{} ", p.scale.0 + 1, p.scale.1)
        } else {
            String::new()
        };
        let width = 20;
        let filled = it * width / n.max(1);
        format!(
            "{scale}[{}{}] {it}/{n} loss {} (content {} style {} tv {}) {:.2} it/s ETA {:.0}s",
            "#".repeat(filled),
            "-".repeat(width - filled),
            short(p.total),
            short(sum("content/")),
            short(sum("style/")),
            short(sum("tv")),
            rate,
            eta
        )
    }
}

impl Observer for Reporter {
    fn iteration(&mut self, p: &Progress) -> bool {
        if p.scale.0 != self.scale_index {
            self.scale_index = p.scale.0;
            self.scale_start = self.last_report;
        }
        self.last_report = Instant::now();
        if let Some(j) = &mut self.json {
            let lead = [
                ("scale", format!("{}", p.scale.0)),
                ("width", format!("{}", p.size.0)),
                ("height", format!("{}", p.size.1)),
                ("iteration", format!("{}", p.iteration.0)),
                ("elapsed_s", format!("{:.6}", p.elapsed.as_secs_f64())),
                ("total", common::json_num(p.total)),
            ];
            if let Err(e) = writeln!(j, "{}", common::json_object(&lead, &p.terms)) {
                self.error = Some(anyhow::anyhow!("cannot write the JSON log: {e}"));
                return false;
            }
        }
        if self.quiet {
            return true;
        }
        let (it, n) = p.iteration;
        if self.terminal {
            let due = self
                .last_draw
                .is_none_or(|t| t.elapsed().as_millis() >= 100);
            if due || it == n {
                eprint!("\r\x1b[2K{}", self.line(p));
                if it == n {
                    eprintln!();
                }
                self.last_draw = Some(Instant::now());
            }
        } else if it == 1 || it % 10 == 0 || it == n {
            eprintln!("{}", self.line(p));
        }
        true
    }

    fn snapshot(&mut self, p: &Progress, image: &Image) {
        let path = snapshot_path(&self.out, p.scale.0, p.scale.1, p.iteration.0);
        if let Err(e) = io::save_image(image, &path) {
            self.error = Some(e);
        }
    }
}

pub(crate) fn run(a: Args) -> Result<()> {
    common::with_backend!(a.model.device()?, |b| run_on(&b, &a))
}

fn run_on<B: nst_tensor::Backend>(cpu: &B, a: &Args) -> Result<()> {
    let objective = a.objective.config()?;
    io::check_writable(&a.out)?;
    if let Some(ext) = a.out.extension().and_then(|e| e.to_str()) {
        ensure!(
            image::ImageFormat::from_extension(ext).is_some_and(|f| f.can_write()),
            "cannot write {}: unknown image extension .{ext}",
            a.out.display()
        );
    }
    let content = io::load_image(&a.inputs.content, a.model.max_pixels)?;
    let styles = common::load_styles(&a.inputs.style, a.model.max_pixels)?;
    let init = match a.init.as_str() {
        "noise" => Init::Noise,
        "content" => Init::Content,
        path => Init::Image(
            io::load_image(Path::new(path), a.model.max_pixels)
                .context("loading the --init image")?,
        ),
    };
    let scales: Vec<usize> = if a.scales.is_empty() {
        vec![a.size as usize]
    } else {
        a.scales.iter().map(|&s| s as usize).collect()
    };
    if scales.contains(&0) {
        bail!("sizes must be positive");
    }
    let long = *scales.last().expect("one scale") as u64;
    let (cw, ch) = content.fitted_size(long as usize);
    ensure!(
        (cw as u64) * (ch as u64) <= a.model.max_pixels,
        "the output would be {cw}x{ch} pixels, over the limit of {} (raise it with --max-pixels)",
        a.model.max_pixels
    );
    let model = a.model.model(cpu)?;
    let cfg = RenderConfig {
        objective,
        iterations: a.iterations as usize,
        optimizer: match a.optimizer {
            Optim::Lbfgs => OptimizerKind::Lbfgs,
            Optim::LbfgsWolfe => OptimizerKind::LbfgsWolfe,
            Optim::Adam => OptimizerKind::Adam,
            Optim::Gd => OptimizerKind::Gd,
        },
        learning_rate: a.learning_rate,
        init,
        seed: a.seed,
        style_blend: a.inputs.style_blend.clone(),
        style_scale: a.style_scale,
        scales,
        original_colors: a.original_colors,
        save_every: a.save_every,
    };
    let json = match &a.json_log {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?,
        )),
        None => None,
    };
    let mut reporter = Reporter {
        quiet: a.quiet,
        terminal: std::io::stderr().is_terminal(),
        json,
        out: a.out.clone(),
        last_draw: None,
        scale_start: Instant::now(),
        scale_index: 0,
        last_report: Instant::now(),
        error: None,
    };
    let start = Instant::now();
    let rendered = nst_style::render(cpu, &model, &content, &styles, &cfg, &mut reporter)?;
    if let Some(j) = &mut reporter.json {
        j.flush().context("cannot write the JSON log")?;
    }
    if let Some(e) = reporter.error.take() {
        return Err(e);
    }
    io::save_image(&rendered.image, &a.out)?;
    if let Some(why) = rendered.stopped_early {
        bail!("{why}; wrote it to {}", a.out.display());
    }
    if !a.quiet {
        eprintln!(
            "wrote {} ({}x{}) in {:.1}s",
            a.out.display(),
            rendered.image.width,
            rendered.image.height,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
