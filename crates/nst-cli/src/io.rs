//! Files: decoding images, finding and loading the weights, writing outputs atomically.

use anyhow::{bail, Context, Result};
use nst_style::Image;
use std::path::{Path, PathBuf};

/// Default limit on decoded image size, in pixels.
pub(crate) const DEFAULT_MAX_PIXELS: u64 = 64_000_000;

/// What decoding may use: pixels, and bytes of memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The most pixels an image may have.
    pub(crate) max_pixels: u64,
    /// The most memory decoding may take (the decoder's buffer and the image's own).
    pub(crate) max_bytes: u64,
}

impl Limits {
    /// `max_pixels`, and the default memory budget.
    pub(crate) fn pixels(max_pixels: u64) -> Limits {
        Limits {
            max_pixels,
            max_bytes: crate::common::default_budget(),
        }
    }
}

/// A decoded image with what the file said about its colours.
pub(crate) struct Loaded {
    pub(crate) image: Image,
    /// The embedded ICC colour profile, if any.
    pub(crate) icc: Option<Vec<u8>>,
}

/// Decodes an image file (PNG, JPEG, WebP, BMP, TIFF) to RGB, refusing empty files, images
/// without pixels and images over `max_pixels` (the default memory budget bounds decoding).
pub(crate) fn load_image(path: &Path, max_pixels: u64) -> Result<Image> {
    Ok(load_image_with(path, &Limits::pixels(max_pixels))?.image)
}

/// Decodes an image file, upright (its EXIF orientation applied), at full precision (16-bit
/// channels keep their fractions of the 0-255 scale), with its ICC profile. The size and the
/// memory decoding needs are checked from the header, before anything is allocated.
pub(crate) fn load_image_with(path: &Path, limits: &Limits) -> Result<Loaded> {
    use image::ImageDecoder;
    let shown = path.display();
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read image {shown}"))?;
    if meta.is_dir() {
        bail!("image {shown} is a folder, not a file");
    }
    if meta.len() == 0 {
        bail!("image {shown} is an empty file");
    }
    let mut reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot read image {shown}"))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {shown}"))?;
    if reader.format().is_none() {
        bail!("image {shown} is not in a supported format (PNG, JPEG, WebP, BMP, TIFF)");
    }
    // Reading the header allocates little; the real limits follow once the size is known.
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = Some(64 << 20);
    reader.limits(header_limits);
    let decode_err = |e: image::ImageError| anyhow::anyhow!("cannot decode image {shown}: {e}");
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        bail!("image {shown} has no pixels ({w}x{h})");
    }
    let pixels = w as u64 * h as u64;
    if pixels > limits.max_pixels {
        bail!(
            "image {shown} is {w}x{h} = {pixels} pixels, over the limit of {} (raise it with --max-pixels)",
            limits.max_pixels
        );
    }
    let color = decoder.color_type();
    // The decoder's buffer, a 16-bit RGB copy at most, and the image's f32 pixels.
    let decoded = decoder.total_bytes();
    let need = decoded
        .saturating_add(pixels * 6)
        .saturating_add(pixels * 12);
    if need > limits.max_bytes {
        bail!(
            "image {shown} ({w}x{h}) would take {} to decode, over the memory budget of {} (raise it with --max-memory)",
            nst_style::memory::format_bytes(need),
            nst_style::memory::format_bytes(limits.max_bytes)
        );
    }
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(w);
    decode_limits.max_image_height = Some(h);
    // Room for the pixels and the decoder's own working memory, nothing like a bomb's.
    decode_limits.max_alloc = Some(decoded.saturating_mul(2).saturating_add(64 << 20));
    decoder.set_limits(decode_limits).map_err(decode_err)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let icc = decoder
        .icc_profile()
        .ok()
        .flatten()
        .filter(|p| !p.is_empty());
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    img.apply_orientation(orientation);
    let bits = (color.bits_per_pixel() / u16::from(color.channel_count())) as u8;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data: Vec<f32> = if bits > 8 {
        img.into_rgb16()
            .into_raw()
            .into_iter()
            .map(|v| v as f32 / 257.0)
            .collect()
    } else {
        img.into_rgb8()
            .into_raw()
            .into_iter()
            .map(f32::from)
            .collect()
    };
    let image =
        Image::new(width, height, data).with_context(|| format!("image {shown} has no pixels"))?;
    Ok(Loaded { image, icc })
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// failed or interrupted write never leaves a partial file behind.
pub(crate) fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!(
            "cannot write {}: folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("cannot write {}: not a file path", path.display()))?;
    // Keep the extension last so that format detection by extension still works.
    let tmp = dir.join(format!(".nst-tmp-{}-{name}", std::process::id()));
    let _writing = crate::signals::writing(&tmp);
    let result = write(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// How an output image is encoded.
#[derive(Clone, Debug)]
pub(crate) struct SaveOptions {
    /// Bits per channel: 8, or 16 (PNG and TIFF).
    pub(crate) bit_depth: u8,
    /// JPEG quality, 1-100.
    pub(crate) jpeg_quality: u8,
    /// An ICC profile to embed (PNG, JPEG, TIFF, WebP).
    pub(crate) icc: Option<Vec<u8>>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            bit_depth: 8,
            jpeg_quality: 95,
            icc: None,
        }
    }
}

/// The format of an output path (PNG when it has no extension).
pub(crate) fn output_format(path: &Path) -> Result<image::ImageFormat> {
    match path.extension().and_then(|e| e.to_str()) {
        None => Ok(image::ImageFormat::Png),
        Some(ext) => image::ImageFormat::from_extension(ext)
            .filter(|f| f.can_write())
            .with_context(|| {
                format!(
                    "cannot write {}: unknown image extension .{ext}",
                    path.display()
                )
            }),
    }
}

/// Checks that `opts` can be written in `path`'s format.
pub(crate) fn check_save_options(path: &Path, opts: &SaveOptions) -> Result<()> {
    use image::ImageFormat as F;
    let format = output_format(path)?;
    if opts.bit_depth == 16 && !matches!(format, F::Png | F::Tiff) {
        bail!(
            "cannot write {} with 16 bits per channel: only PNG and TIFF hold 16 bits",
            path.display()
        );
    }
    if opts.bit_depth != 8 && opts.bit_depth != 16 {
        bail!("the bit depth must be 8 or 16, got {}", opts.bit_depth);
    }
    if !(1..=100).contains(&opts.jpeg_quality) {
        bail!("the JPEG quality must be 1-100, got {}", opts.jpeg_quality);
    }
    Ok(())
}

/// Saves an image atomically, 8 or 16 bits per channel, with an ICC profile where the format
/// holds one (BMP does not: it is written without).
pub(crate) fn save_image_with(img: &Image, path: &Path, opts: &SaveOptions) -> Result<()> {
    use image::ImageEncoder;
    use image::ImageFormat as F;
    check_save_options(path, opts)?;
    let format = output_format(path)?;
    let (w, h) = (img.width() as u32, img.height() as u32);
    let rgb8;
    let rgb16: Vec<u8>;
    let (bytes, color): (&[u8], image::ExtendedColorType) = if opts.bit_depth == 16 {
        rgb16 = img
            .data()
            .iter()
            .flat_map(|v| ((v * 257.0).round().clamp(0.0, 65535.0) as u16).to_ne_bytes())
            .collect();
        (&rgb16, image::ExtendedColorType::Rgb16)
    } else {
        rgb8 = img.to_rgb8();
        (&rgb8, image::ExtendedColorType::Rgb8)
    };
    if bytes.len() != img.width() * img.height() * 3 * usize::from(opts.bit_depth / 8) {
        bail!("image buffer does not match its size");
    }
    let shown = path.display();
    let fail = |e: image::ImageError| anyhow::anyhow!("cannot write {shown}: {e}");
    write_atomic(path, |tmp| {
        let file = std::fs::File::create(tmp).with_context(|| format!("cannot write {shown}"))?;
        let mut out = std::io::BufWriter::new(file);
        let icc = opts.icc.clone();
        // Each encoder takes the profile where its format can hold one.
        fn with_icc<E: ImageEncoder>(mut e: E, icc: Option<Vec<u8>>) -> E {
            if let Some(p) = icc {
                let _ = e.set_icc_profile(p);
            }
            e
        }
        match format {
            F::Png => with_icc(image::codecs::png::PngEncoder::new(&mut out), icc)
                .write_image(bytes, w, h, color)
                .map_err(fail)?,
            F::Jpeg => with_icc(
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, opts.jpeg_quality),
                icc,
            )
            .write_image(bytes, w, h, color)
            .map_err(fail)?,
            F::Tiff => {
                let mut cursor = std::io::Cursor::new(Vec::new());
                with_icc(image::codecs::tiff::TiffEncoder::new(&mut cursor), icc)
                    .write_image(bytes, w, h, color)
                    .map_err(fail)?;
                std::io::Write::write_all(&mut out, cursor.get_ref())
                    .with_context(|| format!("cannot write {shown}"))?;
            }
            F::WebP => with_icc(
                image::codecs::webp::WebPEncoder::new_lossless(&mut out),
                icc,
            )
            .write_image(bytes, w, h, color)
            .map_err(fail)?,
            other => {
                let rgb = image::RgbImage::from_raw(w, h, bytes.to_vec())
                    .context("image buffer does not match its size")?;
                let mut cursor = std::io::Cursor::new(Vec::new());
                rgb.write_to(&mut cursor, other).map_err(fail)?;
                std::io::Write::write_all(&mut out, cursor.get_ref())
                    .with_context(|| format!("cannot write {shown}"))?;
            }
        }
        let file = out
            .into_inner()
            .map_err(|e| anyhow::anyhow!("cannot write {shown}: {}", e.error()))?;
        file.sync_all()
            .with_context(|| format!("cannot write {shown}"))
    })
}

/// Writes named f32 tensors as a safetensors file, atomically.
pub(crate) fn save_tensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                s.clone(),
                d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, d)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                .map(|v| (n.clone(), v))
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::serialize(views, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    write_atomic(path, |tmp| {
        std::fs::write(tmp, &data).with_context(|| format!("cannot write {}", path.display()))
    })
}

/// Finds the weights: `--weights`, else `$NST_WEIGHTS`, else `weights/vgg19.safetensors` in
/// the current folder or above the executable.
pub(crate) fn weights_path(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("NST_WEIGHTS") {
        return Ok(PathBuf::from(p));
    }
    let rel = Path::new("weights").join("vgg19.safetensors");
    let mut candidates = vec![rel.clone()];
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).map(|a| a.join(&rel)));
    }
    Ok(candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .unwrap_or(rel))
}

/// Reads and validates the weights into a model on `backend`.
pub(crate) fn load_model<B: nst_tensor::Backend>(
    backend: &B,
    given: Option<&Path>,
) -> Result<nst_vgg::Vgg<B>> {
    let path = weights_path(given)?;
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
