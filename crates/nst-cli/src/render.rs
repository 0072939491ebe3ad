//! `nst render`: repaint a photo in the style of one or more paintings.

use crate::common::{self, ModelArgs, ObjectiveArgs};
use crate::io;
use crate::record;
use anyhow::{bail, ensure, Context, Result};
use nst_style::{Flow, Image, Init, OptimizerKind, Progress, RenderConfig};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// The schedule presets of `--quality`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Quality {
    /// A quick preview at most 256 px on its longer side.
    Draft,
    /// Coarse to fine: the classic result's quality in a fraction of its time.
    Default,
    /// The classic recipe: 500 iterations at the output size.
    High,
}

impl From<Quality> for nst_style::Quality {
    fn from(q: Quality) -> Self {
        match q {
            Quality::Draft => nst_style::Quality::Draft,
            Quality::Default => nst_style::Quality::Default,
            Quality::High => nst_style::Quality::High,
        }
    }
}

/// Everything that decides a render (shared by `render` and `estimate`).
#[derive(clap::Args)]
#[command(allow_negative_numbers = true)]
pub(crate) struct Options {
    #[command(flatten)]
    pub(crate) inputs: common::InputArgs,
    /// The longer side of the output in pixels.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    size: u32,
    /// The schedule when neither --scales nor --iterations is given: draft (a quick preview,
    /// at most 256 px), default (coarse to fine, see docs/benchmarks.md), high (the classic
    /// recipe: 500 iterations at the output size).
    #[arg(long, value_enum, default_value = "default")]
    quality: Quality,
    /// Coarse-to-fine sizes, e.g. 256,512 or 256:200,512:100 (SIZE:ITERATIONS): optimise
    /// small, upsample, continue (overrides --size and --quality); `auto`: a schedule
    /// doubling up to --size (see docs/tiling.md).
    #[arg(long, value_delimiter = ',')]
    scales: Vec<String>,
    /// Iterations: a single scale at --size (overrides --quality), or per scale with
    /// --scales (default 500; with --scales auto, at the first scale).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: Option<u32>,
    /// The optimizer.
    #[arg(long, value_enum, default_value = "lbfgs")]
    optimizer: Optim,
    /// Learning rate (default: 1 for L-BFGS, 10 for Adam, 0.1 for gradient descent).
    #[arg(long)]
    learning_rate: Option<f64>,
    /// L-BFGS correction pairs kept (the memory budget may lower it, saying so).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    lbfgs_history: u32,
    /// The starting image: noise (small Gaussian noise around the mean pixel), content, gray
    /// (the photo's mean colour), uniform (uniform noise over 0-255), or a path [default:
    /// noise; content with --style-loss nn].
    #[arg(long)]
    init: Option<String>,
    /// Let the optimiser use pixel values outside 0-255 (the classic behaviour); by default
    /// the image is kept in range after every step, since the saved image is clamped.
    #[arg(long)]
    no_clamp: bool,
    /// End a scale early once its loss falls by less than this fraction per iteration,
    /// averaged over the last 10 iterations (0: run every iteration).
    #[arg(long, default_value_t = 0.0, value_parser = parse_tolerance)]
    tolerance: f64,
    /// The seed of the noise initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Style images are scaled so their longer side is this times the content's.
    #[arg(long, default_value_t = 1.0)]
    style_scale: f64,
    #[command(flatten)]
    color: common::ColorArgs,
    #[command(flatten)]
    pub(crate) memory: common::MemoryArgs,
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[command(flatten)]
    pub(crate) objective: ObjectiveArgs,
}

#[derive(clap::Args)]
#[command(allow_negative_numbers = true)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) options: Options,
    /// The output image; the format follows the extension (PNG when none).
    #[arg(long)]
    out: PathBuf,
    /// Save a snapshot every N iterations (beside the output, `_iterN` appended).
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// Write a checkpoint to FILE (atomically) as --checkpoint-every says, at every scale's
    /// end, and on Ctrl-C; `--resume FILE` continues from it.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Between checkpoints: N iterations, a time (90s, 10m, 1.5h), or auto (every 50
    /// iterations, but never so often that writing them takes over 5% of the render's time).
    #[arg(long, default_value = "auto", value_name = "N|TIME|auto", value_parser = parse_every)]
    checkpoint_every: Every,
    /// After SIGINT or SIGTERM, finish the iteration in flight only if it ends in time for
    /// the image and the checkpoint to be written within TIME; otherwise abandon it and
    /// write the last completed iteration (a scheduler's grace before SIGKILL: 30 s on
    /// Kubernetes and Slurm).
    #[arg(long, default_value = "25s", value_name = "TIME", value_parser = parse_grace)]
    grace: Duration,
    /// Continue the render saved in this checkpoint (the same inputs and settings give the
    /// same bytes as an uninterrupted render); it keeps being updated unless --checkpoint
    /// names another file.
    #[arg(long, value_name = "FILE")]
    resume: Option<PathBuf>,
    /// Bits per channel of the output: 8, or 16 (PNG and TIFF, for print).
    #[arg(long, default_value_t = 8, value_name = "8|16", value_parser = parse_bit_depth)]
    bit_depth: u8,
    /// JPEG quality of the output (1-100).
    #[arg(long, default_value_t = 95, value_name = "Q", value_parser = clap::value_parser!(u8).range(1..=100))]
    jpeg_quality: u8,
    /// Write one JSON object per iteration (losses by term, elapsed seconds) to this file.
    #[arg(long)]
    json_log: Option<PathBuf>,
    /// Serve a live view of the render (image, losses, a Stop button) at ADDR
    /// [default: 127.0.0.1:8080]; the URL with its token is printed at start.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = crate::web::DEFAULT_ADDR, value_parser = crate::web::parse_addr)]
    web: Option<std::net::SocketAddr>,
    /// Keep a preview of the current image (at most 1024 px, 8-bit PNG) in FILE, rewritten
    /// atomically every 5 iterations and at every scale's end (for programs that watch the
    /// render, such as `nst studio`).
    #[arg(long, value_name = "FILE")]
    preview: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long)]
    quiet: bool,
    /// Print a progress line every N iterations when stderr is not a terminal (a terminal
    /// gets a progress bar).
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    print_every: u32,
}

/// `nst render`'s arguments, parsed by the same definition as the command line.
#[derive(clap::Parser)]
#[command(name = "nst render")]
struct RenderLine {
    #[command(flatten)]
    args: Args,
}

/// Parses `nst render`'s arguments (`argv[0]` is the program's name), as `nst batch` and
/// `nst video` give them; an error is the first line of clap's message.
pub(crate) fn parse_argv(argv: &[String]) -> std::result::Result<Args, String> {
    <RenderLine as clap::Parser>::try_parse_from(argv)
        .map(|l| l.args)
        .map_err(|e| {
            let msg = e.to_string();
            msg.lines()
                .next()
                .unwrap_or("bad options")
                .trim_start_matches("error: ")
                .to_string()
        })
}

impl Args {
    /// The files the render reads: the content, the styles, the masks and an `--init` image.
    pub(crate) fn input_files(&self) -> Vec<PathBuf> {
        let i = &self.options.inputs;
        let mut files = vec![i.content.clone()];
        files.extend(i.styles());
        files.extend(i.content_masks());
        files.extend(i.style_mask_paths());
        if let Some(init) = self.options.init.as_deref() {
            if !matches!(init, "noise" | "content" | "gray" | "uniform") {
                files.push(PathBuf::from(init));
            }
        }
        files
    }

    /// The files the render writes (snapshots aside, which go beside the output): the output,
    /// the checkpoint and the JSON log.
    pub(crate) fn output_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.out.clone()];
        files.extend(self.checkpoint.iter().cloned());
        files.extend(self.json_log.iter().cloned());
        files
    }

    /// `--max-pixels` (or its default): the most pixels an input or output may have.
    pub(crate) fn max_pixels(&self) -> u64 {
        self.options.model.max_pixels
    }
}

/// `--tolerance`: a finite fraction, 0 or more.
fn parse_tolerance(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "expected a number of 0 or more, like 1e-3, got {s:?}"
        )),
    }
}

/// When checkpoints are written (`--checkpoint-every`), besides every scale's end.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Every {
    /// Every N iterations.
    Iterations(usize),
    /// Once this much time has passed since the last checkpoint was written.
    Time(Duration),
    /// Every [`AUTO_ITERATIONS`] iterations, but only once 19 times the last write's time has
    /// passed since it ended, so writing takes at most 5% of the time.
    Auto,
}

/// The iterations between checkpoints of `--checkpoint-every auto`.
pub(crate) const AUTO_ITERATIONS: usize = 50;

/// `--checkpoint-every`: `auto`, iterations (`50`), or a time (`90s`, `10m`, `1.5h`).
pub(crate) fn parse_every(s: &str) -> std::result::Result<Every, String> {
    let bad = || {
        format!("expected a number of iterations (50), a time (90s, 10m, 1.5h) or auto, got {s:?}")
    };
    if s == "auto" {
        return Ok(Every::Auto);
    }
    if let Ok(n) = s.parse::<usize>() {
        return if n > 0 {
            Ok(Every::Iterations(n))
        } else {
            Err(bad())
        };
    }
    match parse_time(s) {
        Some(d) if !d.is_zero() => Ok(Every::Time(d)),
        _ => Err(bad()),
    }
}

/// A time: `90s`, `10m`, `1.5h` (0 to 10⁹ s).
fn parse_time(s: &str) -> Option<Duration> {
    let unit = match s.chars().last() {
        Some('s') => 1.0,
        Some('m') => 60.0,
        Some('h') => 3600.0,
        _ => return None,
    };
    let v: f64 = s[..s.len() - 1].parse().ok()?;
    let secs = v * unit;
    (secs.is_finite() && (0.0..=1e9).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// `--grace`: a time (`25s`, `2m`; `0s` abandons the iteration in flight at once).
fn parse_grace(s: &str) -> std::result::Result<Duration, String> {
    parse_time(s).ok_or_else(|| format!("expected a time such as 25s or 2m, got {s:?}"))
}

/// Decides when the next checkpoint is due, from the iteration and the clock.
pub(crate) struct CheckpointClock {
    every: Every,
    /// When the last checkpoint was written (or the render started).
    last_end: Instant,
    /// How long the last checkpoint took to write.
    last_cost: Duration,
}

impl CheckpointClock {
    pub(crate) fn new(every: Every, now: Instant) -> Self {
        CheckpointClock {
            every,
            last_end: now,
            last_cost: Duration::ZERO,
        }
    }

    /// Whether a checkpoint is due after iteration `it` of a scale of `n` (its end always is).
    pub(crate) fn due(&self, it: usize, n: usize, now: Instant) -> bool {
        let since = now.saturating_duration_since(self.last_end);
        it == n
            || match self.every {
                Every::Iterations(k) => it.is_multiple_of(k),
                Every::Time(d) => since >= d,
                Every::Auto => it.is_multiple_of(AUTO_ITERATIONS) && since >= self.last_cost * 19,
            }
    }

    /// A checkpoint was written from `started` to `ended`.
    pub(crate) fn written(&mut self, started: Instant, ended: Instant) {
        self.last_cost = ended.saturating_duration_since(started);
        self.last_end = ended;
    }
}

/// `--bit-depth`: 8 or 16.
fn parse_bit_depth(s: &str) -> std::result::Result<u8, String> {
    match s {
        "8" => Ok(8),
        "16" => Ok(16),
        _ => Err(format!("expected 8 or 16, got {s:?}")),
    }
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
    save: io::SaveOptions,
    print_every: usize,
    quiet: bool,
    quiet_plans: bool,
    terminal: bool,
    json: Option<std::io::BufWriter<std::fs::File>>,
    out: PathBuf,
    last_draw: Option<Instant>,
    scale_start: Instant,
    scale_index: usize,
    /// When the previous iteration was reported (a new scale's clock starts there).
    last_report: Instant,
}

fn short(v: f64) -> String {
    format!("{v:.3e}")
}

impl Reporter {
    /// A line on stderr that does not tangle with the progress bar.
    fn warn(&self, msg: &str) {
        if self.terminal && !self.quiet {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{}", msg.replace('\n', " "));
    }

    /// Iterations per second in the current scale, and the seconds left in it.
    fn rate_eta(&self, p: &Progress) -> (f64, f64) {
        let (it, n) = p.iteration;
        let secs = self.scale_start.elapsed().as_secs_f64();
        let rate = it as f64 / secs.max(1e-9);
        (rate, (n - it) as f64 / rate.max(1e-9))
    }

    /// Writes a line of the JSON log (a failure turns the log off, with a warning).
    fn log(&mut self, line: &str) {
        if let Some(j) = &mut self.json {
            // Flushed line by line: the log is complete up to the last iteration even when
            // the process is killed (and `tail -f` follows it).
            if let Err(e) = writeln!(j, "{line}").and_then(|()| j.flush()) {
                // The log is a convenience: losing it must not cost the render.
                self.json = None;
                self.warn(&format!(
                    "warning: cannot write the JSON log ({e}); the render goes on without it"
                ));
            }
        }
    }

    fn line(&self, p: &Progress) -> String {
        let (it, n) = p.iteration;
        let (rate, eta) = self.rate_eta(p);
        let scale = if p.scale.1 > 1 {
            format!("scale {}/{} ", p.scale.0 + 1, p.scale.1)
        } else {
            String::new()
        };
        let width = 20;
        let filled = it * width / n.max(1);
        format!(
            "{scale}[{}{}] {it}/{n} loss {} ({}) {:.2} it/s ETA {:.0}s",
            "#".repeat(filled),
            "-".repeat(width - filled),
            short(p.total),
            term_groups(&p.terms)
                .iter()
                .map(|(g, v)| format!("{g} {}", short(*v)))
                .collect::<Vec<_>>()
                .join(" "),
            rate,
            eta
        )
    }
}

/// The terms summed by group, the part of each name before its `/` (`content/relu4_2` is in
/// `content`), in the order the groups first appear: `content`, `style`, `tv`, and any other
/// term (`temporal`, a user's) under its own name.
fn term_groups(terms: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut groups: Vec<(String, f64)> = Vec::new();
    for (name, v) in terms {
        let g = name.split('/').next().unwrap_or(name);
        match groups.iter_mut().find(|(k, _)| k == g) {
            Some((_, acc)) => *acc += v,
            None => groups.push((g.to_string(), *v)),
        }
    }
    groups
}

impl Reporter {
    /// Reports an iteration: the JSON log's record, the progress line.
    fn iteration(&mut self, p: &Progress) {
        if p.scale.0 != self.scale_index {
            self.scale_index = p.scale.0;
            self.scale_start = self.last_report;
        }
        self.last_report = Instant::now();
        if self.json.is_some() {
            let line = serde_json::to_string(&record::Iteration::new(p))
                .expect("a record always serialises");
            self.log(&line);
        }
        if self.quiet {
            return;
        }
        let (it, n) = p.iteration;
        if self.terminal {
            let due = self
                .last_draw
                .is_none_or(|t| t.elapsed().as_millis() >= 100);
            if due || it == n || p.converged {
                eprint!("\r\x1b[2K{}", self.line(p));
                if it == n || p.converged {
                    eprintln!();
                }
                self.last_draw = Some(Instant::now());
            }
        } else if it == 1 || it % self.print_every == 0 || it == n || p.converged {
            eprintln!("{}", self.line(p));
        }
        if p.converged {
            self.warn(&format!(
                "scale {}x{}: converged after {it} of {n} iterations (--tolerance)",
                p.size.0, p.size.1
            ));
        }
    }

    /// Reports a scale's plan: the JSON log's line, a note when it is tiled.
    fn plan(&mut self, scale: usize, size: (usize, usize), plan: &nst_style::MemoryPlan) {
        if self.json.is_some() {
            let line = serde_json::to_string(&record::Scale {
                event: record::Event::Scale,
                scale,
                width: size.0,
                height: size.1,
                tiling: format!("{:?}", plan.tiling),
                lbfgs_history: plan.history,
                predicted_peak_mb: plan.peak_bytes as f64 / 1e6,
                peak_rss_mb: crate::system::peak_rss().map(|b| b as f64 / 1e6),
            })
            .expect("a record always serialises");
            self.log(&line);
        }
        if !self.quiet_plans {
            if let Some(line) = common::plan_note(scale, size, plan) {
                if self.terminal {
                    eprint!("\r\x1b[2K");
                }
                eprintln!("{line}");
            }
        }
    }

    /// Writes a snapshot beside the output (a failure is a warning).
    fn snapshot(&mut self, p: &Progress, image: &Image) {
        let path = snapshot_path(&self.out, p.scale.0, p.scale.1, p.iteration.0);
        // A snapshot is a convenience: failing to write one must not cost the render.
        if let Err(e) = io::save_image_with(image, &path, &self.save) {
            self.warn(&format!("warning: {e:#}"));
        }
    }
}

pub(crate) fn run(a: Args) -> Result<()> {
    run_frame(a, None)
}

/// What `nst video` adds to a frame's render: the starting image and the temporal term.
pub(crate) struct FrameExtras {
    pub(crate) init: Image,
    pub(crate) temporal: nst_style::Temporal,
}

/// A render, with a video frame's extras when given.
pub(crate) fn run_frame(a: Args, extras: Option<FrameExtras>) -> Result<()> {
    common::with_backend!(a.options.model.device()?, |b| run_on(&b, &a, extras))
}

/// What a render needs, loaded and checked: the images and the configuration.
pub(crate) struct Prepared {
    pub(crate) content: Image,
    /// The content's ICC profile, carried into the output.
    pub(crate) icc: Option<Vec<u8>>,
    pub(crate) styles: Vec<Image>,
    pub(crate) cfg: RenderConfig,
}

impl Options {
    /// The scales (longest sides) and the iterations at each: `--scales`, else `--iterations`
    /// at `--size`, else the `--quality` preset's schedule.
    pub(crate) fn schedule(&self) -> Result<(Vec<usize>, Vec<usize>)> {
        let o = self;
        let per_scale = o.iterations.unwrap_or(500) as usize;
        let (scales, scale_iterations): (Vec<usize>, Vec<usize>) =
            if o.scales.len() == 1 && o.scales[0].trim() == "auto" {
                nst_style::auto_scales(o.size as usize, per_scale)
                    .into_iter()
                    .unzip()
            } else if !o.scales.is_empty() {
                parse_scales(&o.scales, per_scale)?.into_iter().unzip()
            } else if let Some(n) = o.iterations {
                (vec![o.size as usize], vec![n as usize])
            } else {
                nst_style::quality_schedule(o.quality.into(), o.size as usize)
                    .into_iter()
                    .unzip()
            };
        if scales.contains(&0) {
            bail!("sizes must be positive");
        }
        Ok((scales, scale_iterations))
    }

    /// Loads the images and builds the render's configuration, checking every setting.
    pub(crate) fn prepare(&self) -> Result<Prepared> {
        let o = self;
        let objective = o.objective.config()?;
        let max_pixels = o.model.max_pixels;
        let limits = io::Limits {
            max_pixels,
            max_bytes: o.memory.budget()?,
        };
        // The output keeps the content's colour profile; its bit depth is chosen apart.
        let io::Loaded {
            image: content,
            icc,
            ..
        } = io::load_image_with(&o.inputs.content, &limits)?;
        let styles = common::load_styles(&o.inputs.styles(), max_pixels)?;
        let init = match o.init.as_deref() {
            None => objective.style_loss.default_init(),
            Some("noise") => Init::Noise,
            Some("content") => Init::Content,
            Some("gray") => Init::Gray,
            Some("uniform") => Init::Uniform,
            Some(path) => Init::Image(
                io::load_image(Path::new(path), max_pixels).context("loading the --init image")?,
            ),
        };
        let per_scale = o.iterations.unwrap_or(500) as usize;
        let (scales, scale_iterations) = o.schedule()?;
        // Every scale, not only the last: a schedule need not grow.
        let long = *scales.iter().max().expect("one scale") as u64;
        let (cw, ch) = content.fitted_size(long as usize);
        ensure!(
            (cw as u64) * (ch as u64) <= max_pixels,
            "the output would be {cw}x{ch} pixels, over the limit of {max_pixels} (raise it with --max-pixels)"
        );
        let color_control = o.color.control(objective.style_loss)?;
        let cfg = RenderConfig {
            objective,
            iterations: *scale_iterations.last().unwrap_or(&per_scale),
            optimizer: match o.optimizer {
                Optim::Lbfgs => OptimizerKind::Lbfgs,
                Optim::LbfgsWolfe => OptimizerKind::LbfgsWolfe,
                Optim::Adam => OptimizerKind::Adam,
                Optim::Gd => OptimizerKind::Gd,
            },
            learning_rate: o.learning_rate,
            init,
            seed: o.seed,
            style_blend: o.inputs.style_blend.clone(),
            content_masks: o.inputs.masks(max_pixels)?,
            style_masks: o.inputs.style_masks(max_pixels)?,
            style_scale: o.style_scale,
            scales,
            color_control,
            save_every: 0,
            scale_iterations,
            tile: o.memory.tile()?,
            memory_budget: Some(o.memory.budget()?),
            lbfgs_history: o.lbfgs_history as usize,
            temporal: None,
            clamp_pixels: !o.no_clamp,
            tolerance: o.tolerance,
        };
        Ok(Prepared {
            content,
            icc,
            styles,
            cfg,
        })
    }
}

/// `--scales` entries: `SIZE` (with `iterations` iterations) or `SIZE:ITERATIONS`.
fn parse_scales(entries: &[String], iterations: usize) -> Result<Vec<(usize, usize)>> {
    entries
        .iter()
        .map(|e| {
            let bad = || {
                anyhow::anyhow!(
                    "bad --scales entry {e:?}: expected sizes like 256,512, SIZE:ITERATIONS \
                     like 256:200,512:100, or auto"
                )
            };
            let (size, its) = match e.trim().split_once(':') {
                Some((s, i)) => (s, i.trim().parse::<usize>().map_err(|_| bad())?),
                None => (e.trim(), iterations),
            };
            let size = size.trim().parse::<usize>().map_err(|_| bad())?;
            ensure!(
                its > 0,
                "bad --scales entry {e:?}: iterations must be positive"
            );
            Ok((size, its))
        })
        .collect()
}

/// The render stopped on a signal: the process exits with this status (128 + the signal).
#[derive(Debug)]
pub(crate) struct Interrupted(pub(crate) i32);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by {}", crate::signals::name(self.0))
    }
}

impl std::error::Error for Interrupted {}

/// The command line with `--resume FILE` in place of any earlier one, quoted for a shell.
fn resume_command(checkpoint: &Path) -> String {
    let mut args: Vec<String> = Vec::new();
    let mut skip = false;
    for a in std::env::args() {
        if skip {
            skip = false;
            continue;
        }
        if a == "--resume" {
            skip = true;
            continue;
        }
        if a.starts_with("--resume=") {
            continue;
        }
        args.push(a);
    }
    args.push("--resume".into());
    args.push(checkpoint.display().to_string());
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes the session's checkpoint atomically.
fn write_checkpoint<B: nst_tensor::Backend>(
    session: &nst_style::RenderSession<B>,
    path: &Path,
) -> Result<()> {
    io::write_atomic(path, |tmp| {
        let file = std::fs::File::create(tmp)
            .with_context(|| format!("cannot write checkpoint {}", path.display()))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        session
            .write_checkpoint(&mut out)
            .with_context(|| format!("cannot write checkpoint {}", path.display()))?;
        out.into_inner().map_err(|e| {
            anyhow::anyhow!("cannot write checkpoint {}: {}", path.display(), e.error())
        })?;
        Ok(())
    })
}

/// Reads a checkpoint tensor by tensor (never the whole file in memory beside its vectors).
fn read_checkpoint(path: &Path) -> Result<nst_style::Checkpoint> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    nst_style::Checkpoint::read_from(file)
        .with_context(|| format!("cannot resume from {}", path.display()))
}

/// A render on `backend`: the session made (or resumed), driven to its end by
/// `nst_style::drive` with the CLI as its observer, and the outcome written.
fn run_on<B: nst_tensor::Backend>(
    backend: &B,
    a: &Args,
    extras: Option<FrameExtras>,
) -> Result<()> {
    let (mut session, cfg, save) = start_session(backend, a, extras)?;
    let mut cli = Cli::start(backend, a, &mut session, &cfg, save)?;
    let start = Instant::now();
    let ended = nst_style::drive(&mut session, &mut cli)?;
    cli.end(session, ended, start)
}

/// Checks that the outputs can be written, loads the inputs and makes the session: fresh, or
/// resumed from `--resume`.
fn start_session<B: nst_tensor::Backend>(
    backend: &B,
    a: &Args,
    extras: Option<FrameExtras>,
) -> Result<(nst_style::RenderSession<B>, RenderConfig, io::SaveOptions)> {
    let save = io::SaveOptions {
        bit_depth: a.bit_depth,
        jpeg_quality: a.jpeg_quality,
        icc: None,
    };
    // Before any work: the output (and the checkpoint) can be written, in a format that
    // holds what was asked.
    io::check_writable(&a.out)?;
    io::check_save_options(&a.out, &save)?;
    if let Some(c) = a.checkpoint.as_ref().or(a.resume.as_ref()) {
        io::check_writable(c)?;
    }
    let resumed = a.resume.as_deref().map(read_checkpoint).transpose()?;
    let Prepared {
        content,
        icc,
        styles,
        mut cfg,
    } = a.options.prepare()?;
    if let Some(x) = extras {
        cfg.init = Init::Image(x.init);
        cfg.temporal = Some(x.temporal);
    }
    let save = io::SaveOptions { icc, ..save };
    cfg.save_every = a.save_every;
    let model = a.options.model.model(backend)?;
    // The plan's budget is of the memory the backend keeps its buffers in.
    cfg.memory_budget = Some(a.options.memory.budget_for(backend.memory())?.0);
    let mut session = nst_style::RenderSession::new(backend, &model, &content, &styles, &cfg)?;
    describe(&mut session, &a.options, &model)?;
    if let Some(c) = resumed {
        session = session.resume_from(c).with_context(|| {
            format!(
                "cannot resume from {}",
                a.resume.as_ref().expect("given").display()
            )
        })?;
    }
    Ok((session, cfg, save))
}

/// The CLI as the render's observer: the progress line and JSON log, snapshots, the web
/// view, checkpoints on their clock, the signals and the grace watch.
struct Cli<'a> {
    a: &'a Args,
    save: io::SaveOptions,
    reporter: Reporter,
    web: Option<crate::web::WebView>,
    preview: Option<crate::web::PreviewFile>,
    /// Taken (so stopped) when the drive ends.
    watch: Option<crate::grace::Watch>,
    clock: CheckpointClock,
    checkpoint_path: Option<PathBuf>,
    /// The position of the last checkpoint written.
    checkpointed_at: Option<(usize, usize)>,
    interrupted: Option<i32>,
    web_stop: bool,
    /// The scale whose preview the web view shows.
    shown_scale: Option<usize>,
    /// Iterations of each scale, for the web view's step count.
    scale_iterations: Vec<usize>,
}

impl<'a> Cli<'a> {
    /// Opens the JSON log (appended to when resuming), writes its settings line, starts the
    /// web view, installs the signal handlers and the grace watch.
    fn start<B: nst_tensor::Backend>(
        backend: &B,
        a: &'a Args,
        session: &mut nst_style::RenderSession<B>,
        cfg: &RenderConfig,
        save: io::SaveOptions,
    ) -> Result<Self> {
        let json = match &a.json_log {
            Some(p) => {
                // A resumed render appends to its log.
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(a.resume.is_some())
                    .write(true)
                    .truncate(a.resume.is_none())
                    .open(p)
                    .with_context(|| format!("cannot write {}", p.display()))?;
                Some(std::io::BufWriter::new(file))
            }
            None => None,
        };
        let (scale0, _) = session.position();
        let mut reporter = Reporter {
            save: save.clone(),
            print_every: a.print_every as usize,
            quiet: a.quiet,
            quiet_plans: a.quiet,
            terminal: std::io::stderr().is_terminal(),
            json,
            out: a.out.clone(),
            last_draw: None,
            scale_start: Instant::now(),
            scale_index: scale0,
            last_report: Instant::now(),
        };
        let settings = settings_json(a, cfg, &backend.name());
        reporter.log(&settings);
        let web = match a.web {
            Some(addr) => {
                let w = crate::web::WebView::start(addr, settings.clone())?;
                if !addr.ip().is_loopback() {
                    reporter.warn(&format!(
                        "warning: the web view listens on {addr}, beyond this machine: anyone who can reach it can watch (stopping needs the token)"
                    ));
                }
                eprintln!("web view: {}", w.url());
                Some(w)
            }
            None => None,
        };
        let preview = match &a.preview {
            Some(p) => Some(crate::web::PreviewFile::start(p.clone())?),
            None => None,
        };
        crate::signals::install();
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        session.set_cancel(cancel.clone());
        let scale_iterations = (0..cfg.scales.len().max(1))
            .map(|si| {
                cfg.scale_iterations
                    .get(si)
                    .copied()
                    .unwrap_or(cfg.iterations)
            })
            .collect();
        Ok(Cli {
            a,
            save,
            reporter,
            web,
            preview,
            watch: Some(crate::grace::Watch::start(a.grace, cancel)),
            clock: CheckpointClock::new(a.checkpoint_every, Instant::now()),
            checkpoint_path: a.checkpoint.clone().or_else(|| a.resume.clone()),
            checkpointed_at: None,
            interrupted: None,
            web_stop: false,
            shown_scale: None,
            scale_iterations,
        })
    }

    /// The web view's preview and progress record of an iteration.
    fn show<B: nst_tensor::Backend>(
        &mut self,
        session: &nst_style::RenderSession<B>,
        p: &Progress,
    ) -> nst_style::Result<()> {
        if self.web.is_none() && self.preview.is_none() {
            return Ok(());
        }
        let (it, n) = p.iteration;
        // The preview every few iterations and at every scale's first and last.
        if it == 1 || it % 5 == 0 || it == n || self.shown_scale != Some(p.scale.0) {
            self.shown_scale = Some(p.scale.0);
            let image = session.image()?;
            if let Some(f) = &self.preview {
                f.offer(image.clone());
            }
            if let Some(w) = &self.web {
                w.image(image);
            }
        }
        let Some(w) = &self.web else {
            return Ok(());
        };
        let step = self.scale_iterations[..p.scale.0].iter().sum::<usize>() + it;
        let rate_eta = self.reporter.rate_eta(p);
        w.progress(web_record(p, step, rate_eta, record::State::Running, w));
        if w.stop_requested() {
            self.web_stop = true;
        }
        Ok(())
    }

    /// Writes a checkpoint when its clock says so (a failure is a warning).
    fn checkpoint<B: nst_tensor::Backend>(
        &mut self,
        session: &nst_style::RenderSession<B>,
        (it, n): (usize, usize),
    ) {
        let Some(c) = &self.checkpoint_path else {
            return;
        };
        let now = Instant::now();
        if self.clock.due(it, n, now) {
            match write_checkpoint(session, c) {
                Ok(()) => self.checkpointed_at = Some(session.position()),
                Err(e) => self.reporter.warn(&format!("warning: {e:#}")),
            }
            self.clock.written(now, Instant::now());
            if let Some(w) = &self.watch {
                w.wrote(now.elapsed());
            }
        }
    }

    /// After the drive: the output written, and on a signal or a stop from the web view the
    /// checkpoint too, with how to resume.
    fn end<B: nst_tensor::Backend>(
        mut self,
        session: nst_style::RenderSession<B>,
        ended: nst_style::Ended,
        start: Instant,
    ) -> Result<()> {
        let a = self.a;
        drop(self.watch.take());
        if ended == nst_style::Ended::Cancelled {
            // Abandoned for a signal (--grace): the session is at its last completed
            // iteration.
            self.interrupted = crate::signals::received();
            self.reporter.warn(&format!(
                "abandoned the iteration in flight: it would not have ended within --grace {:.0?}",
                a.grace
            ));
        }
        let peak = crate::system::peak_rss();
        if let Some(j) = &mut self.reporter.json {
            if let Err(e) = j.flush() {
                self.reporter
                    .warn(&format!("warning: cannot write the JSON log ({e})"));
            }
        }
        if self.interrupted.is_some() || self.web_stop {
            return self.end_early(&session);
        }
        let rendered = session.finish()?;
        io::save_image_with(&rendered.image, &a.out, &self.save)?;
        if let Some(f) = &mut self.preview {
            f.finish(rendered.image.clone());
        }
        if let Some(w) = &mut self.web {
            w.final_image(rendered.image.clone());
            w.progress(web_done(record::State::Done, w));
            w.linger();
        }
        if let Some(why) = rendered.stopped_early {
            bail!("{why}; wrote it to {}", a.out.display());
        }
        if !a.quiet {
            eprintln!(
                "wrote {} ({}x{}) in {:.1}s{}",
                a.out.display(),
                rendered.image.width(),
                rendered.image.height(),
                start.elapsed().as_secs_f64(),
                peak.map(|b| format!(", peak memory {}", nst_style::memory::format_bytes(b)))
                    .unwrap_or_default()
            );
        }
        Ok(())
    }

    /// A render stopped by a signal or the web view: the current image and a checkpoint
    /// (unless the last one is of this very position), and the command that resumes.
    fn end_early<B: nst_tensor::Backend>(
        mut self,
        session: &nst_style::RenderSession<B>,
    ) -> Result<()> {
        let a = self.a;
        let mut saved_checkpoint = false;
        if let Some(c) = &self.checkpoint_path {
            if self.checkpointed_at == Some(session.position()) {
                saved_checkpoint = true;
            } else {
                match write_checkpoint(session, c) {
                    Ok(()) => saved_checkpoint = true,
                    Err(e) => self.reporter.warn(&format!("warning: {e:#}")),
                }
            }
        }
        let image = session.image()?;
        io::save_image_with(&image, &a.out, &self.save)?;
        let why = match self.interrupted {
            Some(sig) => format!("interrupted by {}", crate::signals::name(sig)),
            None => "stopped from the web view".to_string(),
        };
        self.reporter.warn(&format!(
            "{why}: wrote the current image to {}",
            a.out.display()
        ));
        if let Some(f) = &mut self.preview {
            f.finish(image.clone());
        }
        if let Some(w) = &mut self.web {
            w.final_image(image);
            w.progress(web_done(record::State::Stopped, w));
            w.linger();
        }
        match (&self.checkpoint_path, saved_checkpoint) {
            (Some(c), true) => eprintln!(
                "checkpoint in {}; resume with:\n  {}",
                c.display(),
                resume_command(c)
            ),
            _ => eprintln!(
                "no checkpoint was written (pass --checkpoint FILE to make a render resumable)"
            ),
        }
        match self.interrupted {
            Some(sig) => Err(Interrupted(sig).into()),
            None => Ok(()),
        }
    }
}

impl<B: nst_tensor::Backend> nst_style::Observer<B> for Cli<'_> {
    fn plan(&mut self, scale: usize, size: (usize, usize), plan: &nst_style::MemoryPlan) {
        self.reporter.plan(scale, size, plan);
    }

    fn starting(&mut self) {
        if let Some(w) = &self.watch {
            w.starting();
        }
    }

    fn snapshot(&mut self, p: &Progress, image: &Image) {
        self.reporter.snapshot(p, image);
    }

    fn iteration(
        &mut self,
        session: &nst_style::RenderSession<B>,
        p: &Progress,
    ) -> nst_style::Result<Flow> {
        if let Some(w) = &self.watch {
            w.completed();
        }
        self.reporter.iteration(p);
        self.show(session, p)?;
        self.checkpoint(session, p.iteration);
        if let Some(sig) = crate::signals::received() {
            self.interrupted = Some(sig);
            return Ok(Flow::Stop);
        }
        Ok(if self.web_stop {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }
}

/// The settings of a render as one JSON object (the first line of `--json-log`, and the web
/// view's `/settings`).
fn settings_json(a: &Args, cfg: &RenderConfig, device: &str) -> String {
    let o = &a.options;
    let paths =
        |v: &[PathBuf]| -> Vec<String> { v.iter().map(|p| p.display().to_string()).collect() };
    serde_json::json!({
        "event": record::Event::Start,
        "version": env!("CARGO_PKG_VERSION"),
        "device": device,
        "content": o.inputs.content.display().to_string(),
        "style": paths(&o.inputs.styles()),
        "style_blend": o.inputs.style_blend,
        "out": a.out.display().to_string(),
        "scales": cfg.scales,
        "iterations": cfg.iterations,
        "scale_iterations": cfg.scale_iterations,
        "optimizer": format!("{:?}", cfg.optimizer),
        "init": o.init.clone().unwrap_or_else(|| {
            format!("{:?}", cfg.objective.style_loss.default_init()).to_lowercase()
        }),
        "seed": cfg.seed,
        "content_weight": cfg.objective.content_weight,
        "style_weight": cfg.objective.style_weight,
        "tv_weight": cfg.objective.tv_weight,
        "content_layers": cfg.objective.content_layers,
        "style_layers": cfg.objective.style_layers,
        "style_loss": cfg.objective.style_loss.name(),
        "normalize_gradients": cfg.objective.normalize_gradients,
        "style_scale": cfg.style_scale,
        "color_control": format!("{:?}", cfg.color_control),
        "pooling": format!("{:?}", o.model.pooling),
    })
    .to_string()
}

/// One progress record of the web view: the log's iteration record with the view's fields.
fn web_record(
    p: &Progress,
    step: usize,
    (rate, eta): (f64, f64),
    state: record::State,
    w: &crate::web::WebView,
) -> String {
    record::WebEvent {
        state,
        image: w.image_version(),
        running: Some(record::Running {
            step,
            iterations: p.iteration.1,
            scales: p.scale.1,
            eta_s: eta,
            it_per_s: rate,
            record: record::Iteration::new(p),
        }),
    }
    .to_json()
}

/// The web view's last record: how the render ended, and its final image's version.
fn web_done(state: record::State, w: &crate::web::WebView) -> String {
    record::WebEvent {
        state,
        image: w.image_version(),
        running: None,
    }
    .to_json()
}

/// What the render's bytes depend on besides the crates' settings: the network's pooling, its
/// weights (by SHA-256: another file of the same size is other weights), their metadata and
/// input convention. (Not the thread count: the CPU backend gives the same bytes with any, so
/// a render can resume on a machine with more or fewer cores.)
fn describe<B: nst_tensor::Backend>(
    s: &mut nst_style::RenderSession<B>,
    o: &Options,
    model: &nst_vgg::Vgg<B>,
) -> Result<()> {
    s.describe(
        "pooling",
        match o.model.pooling {
            common::Pooling::Max => "max",
            common::Pooling::Avg => "avg",
        },
    );
    let path = io::weights_path(o.model.weights.as_deref());
    s.describe("weights", &format!("sha256 {}", io::weights_digest(&path)?));
    // A JSON object, its keys sorted (a BTreeMap's order): one text for one metadata.
    s.describe(
        "weights_metadata",
        &serde_json::to_string(model.metadata()).context("the weights' metadata")?,
    );
    s.describe(
        "input_convention",
        match model.convention() {
            nst_vgg::InputConvention::CaffeBgr => nst_vgg::convention::CAFFE_BGR,
            nst_vgg::InputConvention::TorchvisionRgb => nst_vgg::convention::TORCHVISION_RGB,
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_every, CheckpointClock, Every, AUTO_ITERATIONS};
    use std::time::{Duration, Instant};

    #[test]
    fn the_library_default_is_what_nst_render_does_by_default() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: super::Args,
        }
        let image = |n: &str| nst_testkit::image(n).display().to_string();
        let cli = <Cli as clap::Parser>::try_parse_from([
            "nst".to_string(),
            "--content".into(),
            image("tubingen.jpg"),
            "--style".into(),
            image("starry_night.jpg"),
            "--out".into(),
            "unused.png".into(),
        ])
        .unwrap();
        let mut cli_cfg = cli.args.options.prepare().unwrap().cfg;
        let lib = nst_style::RenderConfig::default();
        // The CLI resolves the backend's default budget before planning; the library's
        // `None` is the same rule, applied by the session.
        let (budget, _) = nst_style::memory::default_budget(nst_cpu::host::memory()).unwrap();
        let slack = budget / 20;
        assert!(cli_cfg.memory_budget.unwrap().abs_diff(budget) <= slack);
        assert_eq!(lib.memory_budget, None);
        cli_cfg.memory_budget = None;
        assert_eq!(format!("{cli_cfg:?}"), format!("{lib:?}"));
        assert!(lib.clamp_pixels && lib.scales == [128, 256, 512]);
    }

    #[test]
    fn checkpoint_intervals_parse_as_iterations_times_or_auto() {
        assert_eq!(parse_every("50"), Ok(Every::Iterations(50)));
        assert_eq!(parse_every("auto"), Ok(Every::Auto));
        assert_eq!(parse_every("90s"), Ok(Every::Time(Duration::from_secs(90))));
        assert_eq!(
            parse_every("10m"),
            Ok(Every::Time(Duration::from_secs(600)))
        );
        assert_eq!(
            parse_every("1.5h"),
            Ok(Every::Time(Duration::from_secs(5400)))
        );
        for bad in [
            "0", "0s", "-5m", "10ms", "m", "", "nanh", "1e300h", "5d", "é",
        ] {
            let e = parse_every(bad).unwrap_err();
            assert!(e.contains("10m") && e.contains("auto"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_clock_follows_iterations_time_or_the_five_percent_budget() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Iterations: every k-th, and the scale's end.
        let c = CheckpointClock::new(Every::Iterations(7), t0);
        let due: Vec<usize> = (1..=20).filter(|&i| c.due(i, 20, t0)).collect();
        assert_eq!(due, [7, 14, 20]);
        // Time: once the interval has passed since the last write ended.
        let mut c = CheckpointClock::new(Every::Time(s(600)), t0);
        assert!(!c.due(3, 100, t0 + s(599)));
        assert!(c.due(3, 100, t0 + s(600)));
        c.written(t0 + s(600), t0 + s(630));
        assert!(!c.due(4, 100, t0 + s(1229)));
        assert!(c.due(4, 100, t0 + s(1230)));
        assert!(c.due(100, 100, t0 + s(631)), "a scale's end is always due");
        // Auto: every 50 iterations while writes are cheap ...
        let mut c = CheckpointClock::new(Every::Auto, t0);
        let n = AUTO_ITERATIONS;
        assert!(c.due(n, 1000, t0 + s(1)) && !c.due(n + 1, 1000, t0 + s(1)));
        // ... and, after a write of 10 s, not before 190 s more: at most 5% of the time.
        c.written(t0, t0 + s(10));
        assert!(!c.due(2 * n, 1000, t0 + s(199)));
        assert!(c.due(2 * n, 1000, t0 + s(200)));
        assert!(
            !c.due(2 * n + 1, 1000, t0 + s(500)),
            "off the 50-iteration grid"
        );
    }
}
