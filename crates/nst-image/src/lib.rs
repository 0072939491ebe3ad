//! `Image`: RGB pixels as `f32` in 0-255, the resampling and colour operations the render
//! loop needs, and the conversion to and from a network's input convention. No file access
//! here (`nst-io` decodes and encodes), and nothing of the render stack: a program that only
//! reads and writes pictures compiles this, `nst-tensor` and `nst-vgg`.

use nst_tensor::{Backend, Result, Tensor};
use nst_vgg::InputConvention;

/// An RGB image, interleaved (`h x w x 3`), values in 0-255 (unclamped while optimising).
///
/// Its size is never zero and always matches its data ([`Image::new`] checks), so nothing
/// that takes an `Image` has to check again.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    width: usize,
    height: usize,
    data: Vec<f32>,
}

impl Image {
    /// An image from interleaved RGB values; `None` when the length does not match.
    pub fn new(width: usize, height: usize, data: Vec<f32>) -> Option<Self> {
        (data.len() == width * height * 3 && width > 0 && height > 0).then_some(Image {
            width,
            height,
            data,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The `height · width · 3` values.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values, to change in place (the size stays).
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// The values.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// The size with the longer side scaled to `size` (unchanged when it already is).
    pub fn fitted_size(&self, size: usize) -> (usize, usize) {
        let long = self.width.max(self.height);
        if long == size {
            return (self.width, self.height);
        }
        let s = size as f64 / long as f64;
        (
            ((self.width as f64 * s).round() as usize).max(1),
            ((self.height as f64 * s).round() as usize).max(1),
        )
    }

    /// The image with its longer side scaled to `size`; as is, pixel for pixel, when it
    /// already has that size.
    pub fn fit(&self, size: usize) -> Image {
        let (w, h) = self.fitted_size(size);
        self.resize(w, h)
    }

    /// Resampled to exactly `w x h` (Lanczos when shrinking, Catmull-Rom when enlarging); a
    /// copy when the size is unchanged.
    pub fn resize(&self, w: usize, h: usize) -> Image {
        if w == self.width && h == self.height {
            return self.clone();
        }
        // The image crate clamps f32 pixels to [0, 1] while filtering: work on that scale.
        let buf = image::ImageBuffer::<image::Rgb<f32>, Vec<f32>>::from_raw(
            self.width as u32,
            self.height as u32,
            self.data.iter().map(|v| v / 255.0).collect(),
        )
        .expect("the buffer matches its dimensions");
        let filter = if w < self.width {
            image::imageops::FilterType::Lanczos3
        } else {
            image::imageops::FilterType::CatmullRom
        };
        let out = image::imageops::resize(&buf, w as u32, h as u32, filter);
        Image {
            width: w,
            height: h,
            data: out.into_raw().into_iter().map(|v| v * 255.0).collect(),
        }
    }

    /// Rounded and clamped to 8-bit RGB.
    pub fn to_rgb8(&self) -> Vec<u8> {
        self.data
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect()
    }

    /// This image's luminance with `colors`' chroma (BT.601 YUV): the output keeps the
    /// colours of `colors` (resized to this size).
    pub fn with_colors_of(&self, colors: &Image) -> Image {
        let colors = colors.resize(self.width, self.height);
        let mut data = Vec::with_capacity(self.data.len());
        for (p, c) in self.data.chunks_exact(3).zip(colors.data.chunks_exact(3)) {
            let y = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
            let u = -0.14713 * c[0] - 0.28886 * c[1] + 0.436 * c[2];
            let v = 0.615 * c[0] - 0.51499 * c[1] - 0.10001 * c[2];
            data.push(y + 1.13983 * v);
            data.push(y - 0.39465 * u - 0.58060 * v);
            data.push(y + 2.03211 * u);
        }
        Image {
            width: self.width,
            height: self.height,
            data,
        }
    }

    /// The image in the network's input space, `[1, 3, h, w]`.
    pub fn to_model<B: Backend>(&self, backend: &B, conv: InputConvention) -> Result<Tensor<B>> {
        let x = conv.to_model_f64(&self.data, self.height, self.width);
        Tensor::from_f64(backend, &x, [1, 3, self.height, self.width])
    }

    /// An image from the network's input space (`3 x h x w` values); `None` when the length
    /// does not match the size or the size is zero.
    pub fn from_model(x: &[f32], w: usize, h: usize, conv: InputConvention) -> Option<Image> {
        let n = w.checked_mul(h)?.checked_mul(3)?;
        (n == x.len() && n > 0).then(|| Image {
            width: w,
            height: h,
            data: conv.from_model(x, h, w),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Image {
        let data = (0..h)
            .flat_map(|y| {
                (0..w).flat_map(move |x| [x as f32 * 255.0 / w as f32, y as f32 * 2.0, 200.0])
            })
            .collect();
        Image::new(w, h, data).unwrap()
    }

    #[test]
    fn resizing_keeps_the_value_range() {
        let img = gradient(40, 30);
        let small = img.fit(20);
        assert_eq!((small.width, small.height), (20, 15));
        let mean = |im: &Image, c: usize| {
            im.data.iter().skip(c).step_by(3).sum::<f32>() / (im.width * im.height) as f32
        };
        for c in 0..3 {
            assert!((mean(&img, c) - mean(&small, c)).abs() < 2.0, "channel {c}");
        }
        let big = img.resize(80, 60);
        assert!((mean(&big, 2) - 200.0).abs() < 0.5);
        assert_eq!(img.fit(40), img);
    }

    #[test]
    fn original_colors_keep_luminance_and_chroma() {
        let a = gradient(8, 6);
        let b = Image::new(8, 6, vec![128.0; 8 * 6 * 3]).unwrap();
        // Gray chroma with a's luminance: every pixel gray at a's luma.
        let out = a.with_colors_of(&b);
        for (p, q) in out.data.chunks(3).zip(a.data.chunks(3)) {
            let y = 0.299 * q[0] + 0.587 * q[1] + 0.114 * q[2];
            for v in p {
                assert!((v - y).abs() < 0.05, "{v} vs {y}");
            }
        }
    }
}
