//! Files: images (through `nst-io`), finding and loading the weights, writing outputs
//! atomically.

use anyhow::{bail, Context, Result};
use nst_style::Image;
use std::path::{Path, PathBuf};

/// Default limit on decoded image size, in pixels.
pub(crate) const DEFAULT_MAX_PIXELS: u64 = nst_io::DEFAULT_MAX_PIXELS;

pub(crate) use nst_io::{Limits, Loaded, SaveOptions};

/// `max_pixels`, and the default memory budget.
pub(crate) fn limits(max_pixels: u64) -> Limits {
    Limits {
        max_pixels,
        max_bytes: nst_style::memory::default_budget(nst_cpu::host::memory())
            .map_or(8_000_000_000, |(b, _)| b),
    }
}

/// Decodes an image file (PNG, JPEG, WebP, BMP, TIFF) to upright RGB, refusing empty files,
/// images without pixels and images over `max_pixels` (the default memory budget bounds
/// decoding).
pub(crate) fn load_image(path: &Path, max_pixels: u64) -> Result<Image> {
    Ok(load_image_with(path, &limits(max_pixels))?.image)
}

/// Decodes an image file with its ICC profile (see [`nst_io::load`]).
pub(crate) fn load_image_with(path: &Path, limits: &Limits) -> Result<Loaded> {
    Ok(nst_io::load(path, limits)?)
}

/// Writes `path` whole or not at all, durably ([`nst_io::write_atomic`]: a temporary file
/// of a name unique to the call, flushed, renamed over `path`, the folder flushed). The
/// temporary file is registered with the signal handler while it exists, so a Ctrl-C in the
/// middle removes it. A missing folder is an error naming it.
pub(crate) fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut registered = None;
    nst_io::write_atomic(path, |tmp| {
        registered = Some(crate::signals::writing(tmp));
        write(tmp)
    })
}

/// Checks that `opts` can be written in `path`'s format.
pub(crate) fn check_save_options(path: &Path, opts: &SaveOptions) -> Result<()> {
    let format = nst_io::output_format(path)?;
    Ok(nst_io::check_options(
        &path.display().to_string(),
        format,
        opts,
    )?)
}

/// Saves an image atomically in the format its extension names (PNG when none), 8 or 16 bits
/// per channel, with an ICC profile where the format holds one.
pub(crate) fn save_image_with(img: &Image, path: &Path, opts: &SaveOptions) -> Result<()> {
    check_save_options(path, opts)?;
    let bytes = nst_io::encode(img, nst_io::output_format(path)?, opts)
        .with_context(|| format!("cannot write {}", path.display()))?;
    write_atomic(path, |tmp| {
        let mut file = std::fs::File::create(tmp)
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::io::Write::write_all(&mut file, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))
    })
}

/// Writes named f32 tensors as a safetensors file, atomically, with the workspace's one
/// writer (`nst_vgg::write_safetensors`: sorted header, the tensors in the order given).
pub(crate) fn save_tensors(path: &Path, tensors: &[nst_vgg::NamedTensor]) -> Result<()> {
    let data = nst_vgg::try_safetensors_bytes(&Default::default(), tensors)
        .with_context(|| format!("cannot write {}", path.display()))?;
    write_atomic(path, |tmp| {
        std::fs::write(tmp, &data).with_context(|| format!("cannot write {}", path.display()))
    })
}

/// Finds the weights by the one rule of [`nst_weights::locate`]: `--weights`, else
/// `$NST_WEIGHTS`, else `weights/vgg19.safetensors` in the current folder or above it, or
/// above the executable.
pub(crate) fn weights_path(given: Option<&Path>) -> PathBuf {
    nst_weights::locate(given)
}

/// The SHA-256 of the weights file at `path` (hex), which identifies the weights in a
/// checkpoint. Hashing 550 MB takes a second or two, so the digest is cached beside the file
/// (`<file>.sha256`: the digest, the size and the modification time); a cache that names
/// another size or time is ignored and rewritten. Writing the cache is best effort (a
/// read-only folder only costs the hash each time).
pub(crate) fn weights_digest(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read weights {}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = format!("{} {mtime}", meta.len());
    let mut cache = path.as_os_str().to_owned();
    cache.push(".sha256");
    let cache = PathBuf::from(cache);
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some((digest, k)) = text.trim().split_once(' ') {
            if k == key && digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(digest.to_string());
            }
        }
    }
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot read weights {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read weights {}", path.display()))?;
    let digest = format!("{:x}", hasher.finalize());
    let _ = write_atomic(&cache, |tmp| {
        std::fs::write(tmp, format!("{digest} {key}\n")).map_err(Into::into)
    });
    Ok(digest)
}

/// Reads and validates the weights into a model on `backend`.
pub(crate) fn load_model<B: nst_tensor::Backend>(
    backend: &B,
    given: Option<&Path>,
) -> Result<nst_vgg::Vgg<B>> {
    let path = weights_path(given);
    let bytes = std::fs::read(&path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read weights {}: {e}; run `cargo xtask fetch-weights` (or pass --weights)",
            path.display()
        )
    })?;
    nst_vgg::Vgg::from_safetensors(backend, &bytes).map_err(|e| {
        anyhow::anyhow!(
            "weights {} are corrupt or not VGG weights ({e}); run `cargo xtask fetch-weights` to fetch them again",
            path.display()
        )
    })
}

/// The folder a path's file goes in.
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Fails early when `path` cannot be written (missing folder, no permission), before any
/// long computation.
pub(crate) fn check_writable(path: &Path) -> Result<()> {
    let dir = folder_of(path);
    if !dir.is_dir() {
        bail!(
            "cannot write {}: folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        bail!("cannot write {}: it is a folder", path.display());
    }
    let probe = dir.join(format!(".nst-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("cannot write {}", path.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
