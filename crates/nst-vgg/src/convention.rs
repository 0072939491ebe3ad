//! The one place that converts between images and the network's input space.

use crate::{Error, Result};

/// How the weights expect their input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InputConvention {
    /// Caffe: BGR channel order, 0-255 scale, minus the mean pixel (B 103.939, G 116.779,
    /// R 123.68). The original VGG weights.
    CaffeBgr,
    /// torchvision: RGB, scaled to [0, 1], minus the ImageNet mean, divided by its std.
    TorchvisionRgb,
}

/// The metadata value naming [`InputConvention::CaffeBgr`].
pub const CAFFE_BGR: &str = "caffe-bgr-0-255-mean-subtracted";
/// The metadata value naming [`InputConvention::TorchvisionRgb`].
pub const TORCHVISION_RGB: &str = "torchvision-rgb-0-1-imagenet-normalized";
/// The safetensors metadata key holding the input convention.
pub const METADATA_KEY: &str = "input_convention";

impl InputConvention {
    /// Parses the metadata value.
    pub fn from_metadata(v: &str) -> Result<Self> {
        match v {
            CAFFE_BGR => Ok(InputConvention::CaffeBgr),
            TORCHVISION_RGB => Ok(InputConvention::TorchvisionRgb),
            other => Err(Error::Weights(format!(
                "unknown input convention {other:?}"
            ))),
        }
    }

    /// The metadata value.
    pub fn metadata(self) -> &'static str {
        match self {
            InputConvention::CaffeBgr => CAFFE_BGR,
            InputConvention::TorchvisionRgb => TORCHVISION_RGB,
        }
    }

    /// For model channel `c`: which RGB channel it reads, and the affine map
    /// `model = pixel * scale + shift` from a 0-255 pixel value.
    pub fn channel(self, c: usize) -> (usize, f64, f64) {
        match self {
            InputConvention::CaffeBgr => {
                const MEAN_BGR: [f64; 3] = [103.939, 116.779, 123.68];
                (2 - c, 1.0, -MEAN_BGR[c])
            }
            InputConvention::TorchvisionRgb => {
                const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
                const STD: [f64; 3] = [0.229, 0.224, 0.225];
                let scale = 1.0 / (255.0 * STD[c]);
                (c, scale, -MEAN[c] / STD[c])
            }
        }
    }

    /// For each model channel, the values that pixels 0 and 255 map to (in f32): the box an
    /// image in range occupies in model space.
    pub fn model_range(self) -> [(f32, f32); 3] {
        std::array::from_fn(|c| {
            let (_, scale, shift) = self.channel(c);
            (shift as f32, (255.0 * scale + shift) as f32)
        })
    }

    /// Interleaved RGB pixels (0-255, `h x w x 3`) to model space (`3 x h x w`), computed
    /// in f64.
    pub fn to_model_f64(self, rgb: &[f32], h: usize, w: usize) -> Vec<f64> {
        let n = h * w;
        let mut out = vec![0.0; 3 * n];
        for c in 0..3 {
            let (src, scale, shift) = self.channel(c);
            for (i, o) in out[c * n..(c + 1) * n].iter_mut().enumerate() {
                *o = rgb[i * 3 + src] as f64 * scale + shift;
            }
        }
        out
    }

    /// Interleaved RGB pixels (0-255, `h x w x 3`) to model space (`3 x h x w`).
    pub fn to_model(self, rgb: &[f32], h: usize, w: usize) -> Vec<f32> {
        self.to_model_f64(rgb, h, w)
            .into_iter()
            .map(|v| v as f32)
            .collect()
    }

    /// Model space (`3 x h x w`) back to interleaved RGB pixels (0-255, unclamped).
    pub fn from_model(self, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        let n = h * w;
        let mut out = vec![0.0; 3 * n];
        for c in 0..3 {
            let (dst, scale, shift) = self.channel(c);
            for (i, &v) in x[c * n..(c + 1) * n].iter().enumerate() {
                out[i * 3 + dst] = ((v as f64 - shift) / scale) as f32;
            }
        }
        out
    }

    /// A gradient w.r.t. model space (`3 x h x w`) as a gradient w.r.t. 0-255 pixel values,
    /// planar RGB (`3 x h x w`).
    pub fn grad_to_pixels(self, g: &[f32], h: usize, w: usize) -> Vec<f32> {
        let n = h * w;
        let mut out = vec![0.0; 3 * n];
        for c in 0..3 {
            let (dst, scale, _) = self.channel(c);
            for (o, &v) in out[dst * n..(dst + 1) * n]
                .iter_mut()
                .zip(&g[c * n..(c + 1) * n])
            {
                *o = (v as f64 * scale) as f32;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_caffe_values() {
        let rgb = [10.0, 20.0, 30.0, 200.0, 100.0, 0.0];
        for conv in [InputConvention::CaffeBgr, InputConvention::TorchvisionRgb] {
            let m = conv.to_model(&rgb, 1, 2);
            let back = conv.from_model(&m, 1, 2);
            for (a, b) in rgb.iter().zip(&back) {
                assert!((a - b).abs() < 1e-3, "{conv:?}: {a} vs {b}");
            }
        }
        let m = InputConvention::CaffeBgr.to_model(&rgb, 1, 2);
        // Channel 0 is blue: 30 - 103.939.
        assert!((m[0] - (30.0 - 103.939f32)).abs() < 1e-4);
        assert!((m[5] - (200.0 - 123.68f32)).abs() < 1e-4);
        assert_eq!(
            InputConvention::from_metadata(CAFFE_BGR).unwrap(),
            InputConvention::CaffeBgr
        );
    }
}
