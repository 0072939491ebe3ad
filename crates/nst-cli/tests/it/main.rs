//! Tests of the `nst` binary, run as a user would run it.
//!
//! Most tests render with a small random test model ([`weights_path`]); the few whose
//! assertions need the real VGG19 (named `real_weights_*`) find it through `NST_WEIGHTS` or
//! `weights/vgg19.safetensors` at the workspace root, and fail when it is missing
//! (`cargo xtask test` fetches it).
#![allow(clippy::print_stderr)]

mod batch;
#[cfg(unix)]
mod cdp;
mod devices;
mod features;
mod plot;
mod render;
mod resume;
mod studio;
mod tiling;
mod video;
mod web;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The shared images, and the real weights for the tests whose assertions need a network
/// that has learnt something (they are named `real_weights_*`; such a test fails when the
/// weights are missing, and `cargo xtask test` fetches them).
pub(crate) use nst_testkit::{images, real_weights};

/// How many times narrower than VGG19's each convolution of the test model is.
pub(crate) const MODEL_DIVISOR: usize = 8;

/// The test model every other test renders with: VGG19's layers, names, pooling and so
/// every spatial property, with random weights (seeded) at an eighth of each convolution's
/// width, so a 96 px iteration takes milliseconds and no 550 MB file is read. It is
/// written once per process beside the other test files (atomically: test processes run
/// side by side) and loaded by `nst` like any weights file.
pub(crate) fn weights_path() -> PathBuf {
    static MODEL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nst-cli-it");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("vgg19-narrow8-seed19.safetensors");
            let cpu = nst_cpu::Cpu::new(1);
            let vgg =
                nst_vgg::Vgg::random_narrow_for_tests(&cpu, nst_vgg::Arch::Vgg19, 8, 19).unwrap();
            let bytes = vgg.to_safetensors().unwrap();
            if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
                let tmp = dir.join(format!(".model.{}.tmp", std::process::id()));
                std::fs::write(&tmp, &bytes).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
            }
            path
        })
        .clone()
}

/// The test model's path (see [`weights_path`]).
pub(crate) fn weights() -> PathBuf {
    weights_path()
}

/// Runs `nst` with the given arguments and the test weights.
pub(crate) fn nst(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nst"))
        .args(args)
        .env("NST_WEIGHTS", weights_path())
        .output()
        .expect("nst runs")
}
