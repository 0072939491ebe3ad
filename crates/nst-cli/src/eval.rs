//! `nst eval`: the objective and its gradient for a given image, at native sizes.

use crate::common::{self, ModelArgs, ObjectiveArgs};
use crate::io;
use anyhow::{ensure, Result};
use nst_style::Objective;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(allow_negative_numbers = true)]
pub(crate) struct Args {
    #[command(flatten)]
    inputs: common::InputArgs,
    /// The image to evaluate (the same size as the content).
    #[arg(long)]
    image: PathBuf,
    /// Where to write the gradient: safetensors with `grad`, f32 [3, H, W], RGB, per 0-255
    /// pixel value.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    memory: common::MemoryArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    objective: ObjectiveArgs,
    #[command(flatten)]
    color: common::ColorArgs,
}

pub(crate) fn run(a: Args) -> Result<()> {
    common::with_backend!(a.model.device()?, |b| run_on(&b, &a))
}

fn run_on<B: nst_tensor::Backend>(cpu: &B, a: &Args) -> Result<()> {
    let cfg = a.objective.config()?;
    let content = io::load_image(&a.inputs.content, a.model.max_pixels)?;
    let styles = common::load_styles(&a.inputs.styles(), a.model.max_pixels)?;
    let image = io::load_image(&a.image, a.model.max_pixels)?;
    ensure!(
        (image.width(), image.height()) == (content.width(), content.height()),
        "the image is {}x{} but the content is {}x{}: they must have the same size",
        image.width(),
        image.height(),
        content.width(),
        content.height()
    );
    io::check_writable(&a.out)?;
    // What the objective sees under colour control (the image too: a luminance-only
    // transfer optimises a grey image).
    let control = a.color.control(cfg.style_loss)?;
    let (content, styles) = control.prepare(&content, &styles);
    let image = match control {
        nst_style::ColorControl::Luminance => nst_style::color::luminance(&image),
        _ => image,
    };
    let masks = a.inputs.masks(a.model.max_pixels)?;
    if !masks.is_empty() && masks.len() != styles.len() {
        anyhow::bail!(
            "{} content masks given for {} style images: one mask per style image",
            masks.len(),
            styles.len()
        );
    }
    if masks.is_empty() && !a.inputs.style_mask.is_empty() {
        anyhow::bail!("style masks need content masks (--content-mask)");
    }
    if !masks.is_empty() && !a.inputs.style_blend.is_empty() {
        anyhow::bail!("--style-blend cannot be combined with masks: the masks are the blend");
    }
    let model = a.model.model(cpu)?;
    let conv = model.convention();
    let style_t = styles
        .iter()
        .map(|s| s.to_model(cpu, conv))
        .collect::<nst_tensor::Result<Vec<_>>>()?;
    let req = nst_style::PlanRequest {
        size: (content.width(), content.height()),
        style_sizes: styles.iter().map(|s| (s.width(), s.height())).collect(),
        optimizer: nst_style::OptimizerKind::Gd,
        history: 1,
        iterations: 1,
        tile: a.memory.tile()?,
        budget: Some(a.memory.budget_for(cpu.memory())?.0),
        extra_layers: Vec::new(),
        memory: cpu.memory(),
        max_buffer: cpu.max_buffer_bytes(),
    };
    let plan = nst_style::memory::plan(&model, &cfg, &req)?;
    cpu.limit_cached(plan.pool_limit);
    let objective = Objective::with_tiling(
        &model,
        &cfg,
        &content.to_model(cpu, conv)?,
        &style_t,
        &a.inputs.style_blend,
        plan.tiling,
    )?;
    let objective = if masks.is_empty() {
        objective
    } else {
        let (w, h) = (content.width(), content.height());
        let m = masks
            .iter()
            .map(|m| nst_style::region_mask(cpu, m, w, h))
            .collect::<nst_style::Result<Vec<_>>>()?;
        let sm = a.inputs.style_masks(a.model.max_pixels)?;
        if !sm.is_empty() && sm.len() != styles.len() {
            anyhow::bail!(
                "{} style masks given for {} style images: one mask per style image",
                sm.len(),
                styles.len()
            );
        }
        let sm = sm
            .iter()
            .zip(&styles)
            .map(|(m, s)| nst_style::region_mask(cpu, m, s.width(), s.height()))
            .collect::<nst_style::Result<Vec<_>>>()?;
        objective.with_regions(&m, &style_t, &sm)?
    };
    let e = objective.evaluate(&image.to_model(cpu, conv)?)?;
    let g = conv.grad_to_pixels(&e.grad.to_f32()?, image.height(), image.width());
    io::save_tensors(
        &a.out,
        &[(
            "grad".to_string(),
            vec![3, image.height(), image.width()],
            g,
        )],
    )?;
    let report = crate::record::Evaluation {
        total: crate::record::finite(e.total),
        terms: crate::record::Terms::from_values(&e.terms),
    };
    println!(
        "{}",
        serde_json::to_string(&report).expect("a record always serialises")
    );
    Ok(())
}
