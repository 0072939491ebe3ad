//! End-to-end tests of the workspace on real images: against references with the real
//! weights, and properties that hold for any weights with a small test model.
//!
//! Tests that need the real weights (the references, precision bounds, what a render looks
//! like) find them through `NST_WEIGHTS` or `weights/vgg19.safetensors` and fail when they
//! are missing; `cargo xtask test` fetches them (and installs NumPy for the reference tests).
//! The rest use [`model_bytes`] or [`narrow64`].
#![allow(clippy::print_stderr)]

mod color;
mod core_only;
mod device;
mod features;
mod guard;
mod seams;
mod session;
mod terms;
mod tiled;
mod w2;

use nst_cpu::Cpu64;
use std::path::PathBuf;

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) use nst_testkit::{images, real_weights as weights};

/// An image from the shared folder as interleaved RGB 0-255, cropped to `w x h` at (x0, y0).
pub(crate) fn image_crop(name: &str, x0: u32, y0: u32, w: u32, h: u32) -> Vec<f32> {
    let path = images().join(name);
    let img = image::open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
        .into_rgb8();
    let crop = image::imageops::crop_imm(&img, x0, y0, w, h).to_image();
    crop.as_raw().iter().map(|&v| v as f32).collect()
}

/// The model for properties that hold for any weights and widths, such as exact tiling:
/// VGG19's layers and pooling at an eighth of its widths, random and seeded, in f64 (about
/// 1/64 of the real network's arithmetic; no weight file).
pub(crate) fn narrow64() -> nst_vgg::Vgg<Cpu64> {
    nst_vgg::Vgg::random_narrow_for_tests(&Cpu64::new(2), nst_vgg::Arch::Vgg19, 8, 19).unwrap()
}

/// The test model as a weights file's bytes: [`narrow64`]'s network in f32 (VGG19's layers,
/// an eighth of its widths, random and seeded), for the tests of properties that hold for
/// any weights (resuming, cancelling, guarding, counting transfers). Loaded with
/// `Vgg::from_safetensors` on any backend, like the real weights.
pub(crate) fn model_bytes() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let cpu = nst_cpu::Cpu::new(1);
        nst_vgg::Vgg::random_narrow_for_tests(&cpu, nst_vgg::Arch::Vgg19, 8, 19)
            .unwrap()
            .to_safetensors()
            .unwrap()
    })
}

/// The real VGG19 in f64 (the weight file is needed).
pub(crate) fn vgg64() -> nst_vgg::Vgg<Cpu64> {
    let bytes = std::fs::read(weights()).unwrap();
    nst_vgg::Vgg::from_safetensors(&Cpu64::new(2), &bytes).unwrap()
}
mod reference;
mod regions;
