//! `nst features`: activations at named layers, written as safetensors.

use crate::common::ModelArgs;
use crate::io;
use anyhow::{Context, Result};
use nst_features::FeatureExtractor;
use std::path::PathBuf;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The image.
    #[arg(long)]
    image: PathBuf,
    /// Comma-separated layer names, e.g. relu1_1,relu4_2.
    #[arg(long, value_delimiter = ',', required = true)]
    layers: Vec<String>,
    /// The output safetensors file: one f32 tensor [C, H, W] per layer, named by the layer.
    #[arg(long)]
    out: PathBuf,
    /// Scale the image so its longer side is N pixels (default: native size).
    #[arg(long, value_name = "N")]
    max_size: Option<usize>,
    /// The memory budget, e.g. 3G or 512M (default: 80% of the memory available now): an
    /// extraction predicted to need more is refused before it starts.
    #[arg(long, value_name = "SIZE")]
    max_memory: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
}

pub(crate) fn run(a: Args) -> Result<()> {
    crate::common::with_backend!(a.model.device()?, |b| run_on(&b, &a))
}

fn run_on<B: nst_tensor::Backend>(cpu: &B, a: &Args) -> Result<()> {
    let model = a.model.model(cpu)?;
    let fx = FeatureExtractor::new(&model, &a.layers)?;
    io::check_writable(&a.out)?;
    let mut img = io::load_image(&a.image, a.model.max_pixels)?;
    if let Some(n) = a.max_size {
        anyhow::ensure!(n > 0, "--max-size must be positive");
        let (w, h) = img.fitted_size(n);
        let limit = a.model.max_pixels;
        anyhow::ensure!(
            (w as u64) * (h as u64) <= limit,
            "--max-size {n} would make the image {w}x{h} pixels, over the limit of {limit} (raise it with --max-pixels)"
        );
        img = img.fit(n);
    }
    let budget = match &a.max_memory {
        Some(s) => {
            nst_style::memory::parse_bytes(s).map_err(|e| anyhow::anyhow!("--max-memory: {e}"))?
        }
        None => crate::system::default_budget_for(cpu.memory())?.0,
    };
    let need = fx.predicted_bytes(img.width(), img.height());
    anyhow::ensure!(
        need <= budget,
        "extracting {} from a {}x{} image needs about {}, over the budget of {} (raise --max-memory, or shrink it with --max-size)",
        a.layers.join(","),
        img.width(),
        img.height(),
        nst_style::memory::format_bytes(need),
        nst_style::memory::format_bytes(budget)
    );
    let x = img.to_model(cpu, model.convention())?;
    let feats = fx
        .extract(&x)
        .with_context(|| format!("running the network on {}", a.image.display()))?;
    let tensors = feats
        .into_vec()
        .into_iter()
        .map(|(name, t)| {
            let dims = t.dims()[1..].to_vec();
            Ok((name, dims, t.to_f32()?))
        })
        .collect::<Result<Vec<_>>>()?;
    io::save_tensors(&a.out, &tensors)?;
    eprintln!(
        "wrote {} layers of {}x{} {} to {}",
        tensors.len(),
        img.width(),
        img.height(),
        a.image.display(),
        a.out.display()
    );
    Ok(())
}
