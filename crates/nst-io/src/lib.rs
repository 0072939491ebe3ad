//! Image files the way nst reads and writes them, for the CLI and for research code.
//!
//! Decoding ([`decode`], [`load`]) trusts nothing in the file: the size and the memory the
//! decoder will need are checked against [`Limits`] from the header, before any pixel buffer
//! is allocated, and the decoder itself runs under an allocation limit. Images come out
//! upright (EXIF orientation applied), with 16-bit channels kept at full precision (as
//! fractions on nst's 0-255 scale) and the ICC profile, if any, returned beside them.
//!
//! Encoding ([`encode`]) writes 8 or 16 bits per channel and embeds an ICC profile where the
//! format holds one (PNG, JPEG, TIFF, WebP; BMP has no place for one and is written without).
//! Files are written whole or not at all, durably, by [`write_atomic`].
//!
//! ```
//! use nst_io::{decode, encode, Limits, SaveOptions};
//! let img = nst_image::Image::new(2, 1, vec![0.0, 128.5, 255.0, 10.0, 20.0, 30.0]).unwrap();
//! let opts = SaveOptions { bit_depth: 16, ..SaveOptions::default() };
//! let png = encode(&img, image::ImageFormat::Png, &opts).unwrap();
//! let back = decode(&png, "mem.png", &Limits::default()).unwrap();
//! // 16 bits keep the half step that 8 bits would round away.
//! assert!((back.image.data()[1] - 128.5).abs() < 0.01);
//! ```

#![warn(missing_docs)]

mod atomic;
pub use atomic::write_atomic;

use image::{ImageDecoder, ImageEncoder, ImageFormat};
use nst_image::Image;
use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

/// Errors of reading and writing images; each message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file cannot be read or decoded, or breaks a limit.
    #[error("{0}")]
    Read(String),
    /// The image cannot be encoded as asked.
    #[error("{0}")]
    Write(String),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The default limit on an image's pixels.
pub const DEFAULT_MAX_PIXELS: u64 = 64_000_000;

/// What decoding may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most pixels an image may have.
    pub max_pixels: u64,
    /// The most memory decoding may take: the decoder's buffer, a 16-bit copy and the
    /// image's `f32` pixels (`12` bytes a pixel), estimated from the header.
    pub max_bytes: u64,
}

impl Default for Limits {
    /// [`DEFAULT_MAX_PIXELS`] and 4 GB.
    fn default() -> Self {
        Limits {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_bytes: 4_000_000_000,
        }
    }
}

/// A decoded image with what the file said about its colours.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The pixels, upright.
    pub image: Image,
    /// The embedded ICC colour profile, if any.
    pub icc: Option<Vec<u8>>,
    /// Bits per channel in the file (8, 16, or 32 for float images).
    pub bits: u8,
}

fn human(bytes: u64) -> String {
    nst_tensor::format_bytes(bytes)
}

/// Reads and decodes an image file (see [`decode_from`]).
pub fn load(path: &Path, limits: &Limits) -> Result<Loaded> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::Read(format!("cannot read image {shown}: {e}")))?;
    if meta.is_dir() {
        return Err(Error::Read(format!(
            "image {shown} is a folder, not a file"
        )));
    }
    if meta.len() == 0 {
        return Err(Error::Read(format!("image {shown} is an empty file")));
    }
    let file = std::fs::File::open(path)
        .map_err(|e| Error::Read(format!("cannot read image {shown}: {e}")))?;
    decode_from(std::io::BufReader::new(file), &shown.to_string(), limits)
}

/// Decodes an image held in memory (see [`decode_from`]).
pub fn decode(bytes: &[u8], name: &str, limits: &Limits) -> Result<Loaded> {
    if bytes.is_empty() {
        return Err(Error::Read(format!("image {name} is an empty file")));
    }
    decode_from(Cursor::new(bytes), name, limits)
}

/// Decodes PNG, JPEG, WebP, BMP or TIFF from `reader` to RGB. `name` is used in messages.
///
/// The format is guessed from the content; the size and the memory estimate are checked
/// against `limits` from the header; then the pixels are decoded under an allocation limit
/// of twice the decoded size (plus 64 MB for the decoder's own tables), the EXIF orientation
/// is applied (all eight), and channels deeper than 8 bits keep their precision.
pub fn decode_from<R: BufRead + Seek>(
    mut reader: R,
    name: &str,
    limits: &Limits,
) -> Result<Loaded> {
    let read_err = |e: std::io::Error| Error::Read(format!("cannot read image {name}: {e}"));
    let decode_err = |e: image::ImageError| Error::Read(format!("cannot decode image {name}: {e}"));
    let start = reader.stream_position().map_err(read_err)?;
    let guessed = image::ImageReader::new(&mut reader)
        .with_guessed_format()
        .map_err(read_err)?
        .format();
    // The TIFF decoder forgets its tags once given limits: read the profile first (under the
    // tiff crate's own limits on tag sizes).
    let tiff_icc = if guessed == Some(ImageFormat::Tiff) {
        let icc = image::codecs::tiff::TiffDecoder::new(&mut reader)
            .ok()
            .and_then(|mut d| d.icc_profile().ok().flatten());
        reader
            .seek(std::io::SeekFrom::Start(start))
            .map_err(read_err)?;
        icc
    } else {
        None
    };
    let mut reader = image::ImageReader::new(reader)
        .with_guessed_format()
        .map_err(read_err)?;
    if reader.format().is_none() {
        return Err(Error::Read(format!(
            "image {name} is not in a supported format (PNG, JPEG, WebP, BMP, TIFF)"
        )));
    }
    // Reading the header allocates little; the real limits follow once the size is known.
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = Some(64 << 20);
    reader.limits(header_limits);
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::Read(format!("image {name} has no pixels ({w}x{h})")));
    }
    let pixels = w as u64 * h as u64;
    if pixels > limits.max_pixels {
        return Err(Error::Read(format!(
            "image {name} is {w}x{h} = {pixels} pixels, over the limit of {} (raise it with --max-pixels)",
            limits.max_pixels
        )));
    }
    let color = decoder.color_type();
    let decoded = decoder.total_bytes();
    let need = decoded
        .saturating_add(pixels.saturating_mul(6))
        .saturating_add(pixels.saturating_mul(12));
    if need > limits.max_bytes {
        return Err(Error::Read(format!(
            "image {name} ({w}x{h}) would take {} to decode, over the memory budget of {} (raise it with --max-memory)",
            human(need),
            human(limits.max_bytes)
        )));
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
    let icc = match tiff_icc {
        Some(p) => Some(p),
        None => decoder.icc_profile().ok().flatten(),
    }
    .filter(|p| !p.is_empty());
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    img.apply_orientation(orientation);
    let bits = (color.bits_per_pixel() / u16::from(color.channel_count().max(1))) as u8;
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
    let image = Image::new(width, height, data)
        .ok_or_else(|| Error::Read(format!("image {name} has no pixels")))?;
    Ok(Loaded { image, icc, bits })
}

/// How an image is encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaveOptions {
    /// Bits per channel: 8, or 16 (PNG and TIFF).
    pub bit_depth: u8,
    /// JPEG quality, 1-100.
    pub jpeg_quality: u8,
    /// An ICC profile to embed (PNG, JPEG, TIFF, WebP).
    pub icc: Option<Vec<u8>>,
}

impl Default for SaveOptions {
    /// 8 bits, JPEG quality 95, no profile.
    fn default() -> Self {
        SaveOptions {
            bit_depth: 8,
            jpeg_quality: 95,
            icc: None,
        }
    }
}

/// The format of an output path (PNG when it has no extension); an error names an
/// extension no encoder handles.
pub fn output_format(path: &Path) -> Result<ImageFormat> {
    match path.extension().and_then(|e| e.to_str()) {
        None => Ok(ImageFormat::Png),
        Some(ext) => ImageFormat::from_extension(ext)
            .filter(|f| f.can_write())
            .ok_or_else(|| {
                Error::Write(format!(
                    "cannot write {}: unknown image extension .{ext}",
                    path.display()
                ))
            }),
    }
}

/// Checks that `opts` can be written as `format` (`what` names the output in messages).
pub fn check_options(what: &str, format: ImageFormat, opts: &SaveOptions) -> Result<()> {
    if opts.bit_depth != 8 && opts.bit_depth != 16 {
        return Err(Error::Write(format!(
            "the bit depth must be 8 or 16, got {}",
            opts.bit_depth
        )));
    }
    if opts.bit_depth == 16 && !matches!(format, ImageFormat::Png | ImageFormat::Tiff) {
        return Err(Error::Write(format!(
            "cannot write {what} with 16 bits per channel: only PNG and TIFF hold 16 bits"
        )));
    }
    if !(1..=100).contains(&opts.jpeg_quality) {
        return Err(Error::Write(format!(
            "the JPEG quality must be 1-100, got {}",
            opts.jpeg_quality
        )));
    }
    Ok(())
}

/// Encodes `img` (rounded and clamped to 8 or 16 bits) as `format`.
pub fn encode(img: &Image, format: ImageFormat, opts: &SaveOptions) -> Result<Vec<u8>> {
    check_options("the image", format, opts)?;
    let (w, h) = (img.width() as u32, img.height() as u32);
    let (bytes, color) = if opts.bit_depth == 16 {
        let b: Vec<u8> = img
            .data()
            .iter()
            .flat_map(|v| ((v * 257.0).round().clamp(0.0, 65535.0) as u16).to_ne_bytes())
            .collect();
        (b, image::ExtendedColorType::Rgb16)
    } else {
        (img.to_rgb8(), image::ExtendedColorType::Rgb8)
    };
    let fail = |e: image::ImageError| Error::Write(format!("cannot encode the image: {e}"));
    // Each encoder takes the profile where its format can hold one.
    fn with_icc<E: ImageEncoder>(mut e: E, icc: &Option<Vec<u8>>) -> E {
        if let Some(p) = icc {
            let _ = e.set_icc_profile(p.clone());
        }
        e
    }
    let mut out = Cursor::new(Vec::new());
    match format {
        ImageFormat::Png => with_icc(image::codecs::png::PngEncoder::new(&mut out), &opts.icc)
            .write_image(&bytes, w, h, color),
        ImageFormat::Jpeg => with_icc(
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, opts.jpeg_quality),
            &opts.icc,
        )
        .write_image(&bytes, w, h, color),
        ImageFormat::Tiff => with_icc(image::codecs::tiff::TiffEncoder::new(&mut out), &opts.icc)
            .write_image(&bytes, w, h, color),
        ImageFormat::WebP => with_icc(
            image::codecs::webp::WebPEncoder::new_lossless(&mut out),
            &opts.icc,
        )
        .write_image(&bytes, w, h, color),
        other => image::RgbImage::from_raw(w, h, bytes)
            .ok_or_else(|| Error::Write("image buffer does not match its size".into()))?
            .write_to(&mut out, other),
    }
    .map_err(fail)?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> Image {
        Image::new(3, 2, (0..18).map(|i| i as f32 * 14.3).collect()).unwrap()
    }

    #[test]
    fn every_format_round_trips_at_8_bits() {
        for f in [
            ImageFormat::Png,
            ImageFormat::Tiff,
            ImageFormat::WebP,
            ImageFormat::Bmp,
        ] {
            let bytes = encode(&ramp(), f, &SaveOptions::default()).unwrap();
            let back = decode(&bytes, "x", &Limits::default()).unwrap();
            assert_eq!(back.image.to_rgb8(), ramp().to_rgb8(), "{f:?}");
            assert_eq!(back.bits, 8);
        }
    }

    #[test]
    fn sixteen_bits_and_profiles_survive_png_and_tiff() {
        let icc = Some(b"profile".to_vec());
        for f in [ImageFormat::Png, ImageFormat::Tiff] {
            let opts = SaveOptions {
                bit_depth: 16,
                icc: icc.clone(),
                ..SaveOptions::default()
            };
            let back =
                decode(&encode(&ramp(), f, &opts).unwrap(), "x", &Limits::default()).unwrap();
            assert_eq!(back.bits, 16);
            for (a, b) in back.image.data().iter().zip(ramp().data()) {
                assert!((a - b).abs() <= 0.5 / 257.0 + 1e-4, "{f:?}: {a} vs {b}");
            }
            assert_eq!(back.icc, icc, "{f:?}");
        }
        let jpeg = SaveOptions {
            bit_depth: 16,
            ..SaveOptions::default()
        };
        assert!(encode(&ramp(), ImageFormat::Jpeg, &jpeg).is_err());
    }

    #[test]
    fn limits_are_checked_from_the_header() {
        let bytes = encode(&ramp(), ImageFormat::Png, &SaveOptions::default()).unwrap();
        let few = Limits {
            max_pixels: 5,
            ..Limits::default()
        };
        let e = decode(&bytes, "x.png", &few).unwrap_err().to_string();
        assert!(e.contains("over the limit of 5"), "{e}");
        let small = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        let e = decode(&bytes, "x.png", &small).unwrap_err().to_string();
        assert!(e.contains("memory budget"), "{e}");
        assert!(decode(b"", "e", &Limits::default()).is_err());
        assert!(decode(b"GIF89a....", "g", &Limits::default()).is_err());
    }

    /// A BMP header claiming 60000 x 60000 pixels: refused before any pixel buffer exists.
    #[test]
    fn a_decompression_bomb_header_is_refused() {
        let mut bmp = encode(&ramp(), ImageFormat::Bmp, &SaveOptions::default()).unwrap();
        // The BITMAPINFOHEADER's width and height (little-endian) at bytes 18..26.
        bmp[18..22].copy_from_slice(&60_000i32.to_le_bytes());
        bmp[22..26].copy_from_slice(&60_000i32.to_le_bytes());
        let e = decode(&bmp, "bomb.bmp", &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("60000x60000"), "{e}");
    }

    /// All eight EXIF orientations come out upright: each output pixel is the stored pixel
    /// the EXIF specification maps to it.
    #[test]
    fn every_exif_orientation_is_applied() {
        let (w, h) = (3u32, 2u32);
        let stored: Vec<u8> = (0..w * h * 3).map(|i| (i * 11) as u8).collect();
        let px = |x: u32, y: u32| &stored[((y * w + x) * 3) as usize..][..3];
        for o in 1u16..=8 {
            let mut exif = b"II*\0".to_vec();
            exif.extend(8u32.to_le_bytes());
            exif.extend(1u16.to_le_bytes());
            exif.extend([0x12, 0x01, 3, 0]);
            exif.extend(1u32.to_le_bytes());
            exif.extend(o.to_le_bytes());
            exif.extend([0, 0, 0, 0, 0, 0]);
            let mut png = Vec::new();
            let mut enc = image::codecs::png::PngEncoder::new(&mut png);
            enc.set_exif_metadata(exif).unwrap();
            enc.write_image(&stored, w, h, image::ExtendedColorType::Rgb8)
                .unwrap();
            let img = decode(&png, "o.png", &Limits::default()).unwrap().image;
            let swapped = o >= 5;
            let (ow, oh) = if swapped { (h, w) } else { (w, h) };
            assert_eq!((img.width() as u32, img.height() as u32), (ow, oh), "{o}");
            let out = img.to_rgb8();
            for y in 0..oh {
                for x in 0..ow {
                    let (sx, sy) = match o {
                        1 => (x, y),
                        2 => (w - 1 - x, y),
                        3 => (w - 1 - x, h - 1 - y),
                        4 => (x, h - 1 - y),
                        5 => (y, x),
                        6 => (y, h - 1 - x),
                        7 => (w - 1 - y, h - 1 - x),
                        _ => (w - 1 - y, x),
                    };
                    let got = &out[((y * ow + x) * 3) as usize..][..3];
                    assert_eq!(got, px(sx, sy), "orientation {o} at ({x}, {y})");
                }
            }
        }
    }
}
