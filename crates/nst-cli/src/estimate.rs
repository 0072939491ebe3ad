//! `nst estimate`: the plan of a render (tiles, halo, L-BFGS history per scale) with its
//! predicted peak memory and time per iteration, without rendering.

use crate::common;
use crate::render::{Options, Prepared};
use anyhow::Result;
use std::time::Instant;

#[derive(clap::Args)]
#[command(allow_negative_numbers = true)]
pub(crate) struct Args {
    #[command(flatten)]
    options: Options,
    /// Print JSON instead of a line of text per scale.
    #[arg(long)]
    json: bool,
    /// Accepted, so that a render's command line can be estimated as it is.
    #[arg(long, hide = true)]
    out: Option<std::path::PathBuf>,
}

pub(crate) fn run(a: Args) -> Result<()> {
    common::with_backend!(a.options.model.device()?, |b| run_on(&b, &a))
}

/// Seconds of one untiled evaluation of a `size x size` image on this machine, measured.
fn probe_seconds<B: nst_tensor::Backend>(
    backend: &B,
    model: &nst_vgg::Vgg<B>,
    cfg: &nst_style::ObjectiveConfig,
    size: usize,
) -> Result<f64> {
    let conv = model.convention();
    let img =
        nst_style::Image::new(size, size, vec![120.0; 3 * size * size]).expect("a valid size");
    let x = img.to_model(backend, conv)?;
    let obj = nst_style::Objective::new(model, cfg, &x, std::slice::from_ref(&x), &[])?;
    obj.evaluate(&x)?;
    let t = Instant::now();
    obj.evaluate(&x)?;
    Ok(t.elapsed().as_secs_f64())
}

fn run_on<B: nst_tensor::Backend>(backend: &B, a: &Args) -> Result<()> {
    let Prepared {
        content,
        styles,
        mut cfg,
        ..
    } = a.options.prepare()?;
    let model = a.options.model.model(backend)?;
    let memory = backend.memory();
    let (budget, source) = a.options.memory.budget_for(memory)?;
    cfg.memory_budget = Some(budget);
    let model_name = match memory {
        nst_tensor::MemoryKind::Host { .. } => "host memory, measured on the CPU backend",
        nst_tensor::MemoryKind::Device { .. } => "GPU memory, estimated",
    };
    let plans = nst_style::plan_scales(&model, &content, &styles, &cfg)?;
    // Time scales with the pixels run through the network: measure one small evaluation
    // and scale it by each plan's work.
    let probe = 256;
    let probe_s = probe_seconds(backend, &model, &cfg.objective, probe)?;
    let mut lines = Vec::new();
    let peak = plans.iter().map(|p| p.peak_bytes).max().unwrap_or(0);
    for (i, p) in plans.iter().enumerate() {
        let (w, h) = if cfg.scales.is_empty() {
            (content.width(), content.height())
        } else {
            content.fitted_size(cfg.scales[i])
        };
        let secs = probe_s * p.work * (w * h) as f64 / (probe * probe) as f64;
        let iterations = cfg
            .scale_iterations
            .get(i)
            .copied()
            .unwrap_or(cfg.iterations);
        lines.push((w, h, p, secs, iterations));
    }
    if a.json {
        let round = |v: f64, digits: i32| (v * 10f64.powi(digits)).round() / 10f64.powi(digits);
        let scales = lines
            .iter()
            .map(
                |&(width, height, p, secs, iterations)| crate::record::EstimateScale {
                    width,
                    height,
                    iterations,
                    tiles: p.tiles,
                    tile: p.tile,
                    halo: p.halo,
                    kept: p.kept,
                    history: p.history,
                    peak_bytes: p.peak_bytes,
                    work: round(p.work, 4),
                    seconds_per_iteration: round(secs, 4),
                },
            )
            .collect();
        let report = crate::record::Estimate {
            peak_bytes: peak,
            budget_bytes: budget,
            budget_source: source.clone(),
            memory: match memory {
                nst_tensor::MemoryKind::Host { .. } => "host",
                nst_tensor::MemoryKind::Device { .. } => "device",
            },
            seconds: round(lines.iter().map(|l| l.3 * l.4 as f64).sum(), 1),
            scales,
        };
        println!(
            "{}",
            serde_json::to_string(&report).expect("a record always serialises")
        );
    } else {
        println!(
            "memory budget {} ({source}); model of {model_name}",
            nst_style::memory::format_bytes(budget)
        );
        for (i, (w, h, p, secs, it)) in lines.iter().enumerate() {
            let tiling = if matches!(p.tiling, nst_style::Tiling::Shallow(_)) {
                format!(
                    "{} tiles of up to {} px to pool3, halo {} px; deeper layers whole",
                    p.tiles, p.tile, p.halo
                )
            } else if p.tiles > 1 {
                format!(
                    "{} tiles of up to {} px, halo {} px, {} deep tapes kept",
                    p.tiles, p.tile, p.halo, p.kept
                )
            } else {
                "untiled".to_string()
            };
            let history = match p.lowered_from {
                Some(asked) => format!("L-BFGS history {} (lowered from {asked})", p.history),
                None => format!("L-BFGS history {}", p.history),
            };
            println!(
                "scale {}/{} {w}x{h}: {tiling}, {history}, peak {}, {secs:.2} s/iteration x {it}",
                i + 1,
                lines.len(),
                nst_style::memory::format_bytes(p.peak_bytes),
            );
        }
    }
    Ok(())
}
