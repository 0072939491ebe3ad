//! Tests of the `nst` binary, run as a user would run it.
//!
//! Tests that need the weights find them through `NST_WEIGHTS` or `weights/vgg19.safetensors`
//! at the workspace root, and fail when they are missing (`cargo xtask test` fetches them).
#![allow(clippy::print_stderr)]

mod batch;
#[cfg(unix)]
mod cdp;
mod features;
mod plot;
mod render;
mod resume;
mod tiling;
mod video;
mod web;

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
}

/// The shared images: `$NST_IMAGES`, else `../shared/images` beside the checkout.
pub(crate) fn images() -> PathBuf {
    std::env::var_os("NST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("..").join("shared").join("images"))
}

pub(crate) fn weights_path() -> PathBuf {
    std::env::var_os("NST_WEIGHTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("weights").join("vgg19.safetensors"))
}

/// The weights' path; a test that needs them fails when they are missing (`cargo xtask test`
/// fetches them).
pub(crate) fn weights() -> PathBuf {
    let path = weights_path();
    assert!(
        path.is_file(),
        "weights not found at {} (run `cargo xtask fetch-weights`; `cargo xtask test` does)",
        path.display()
    );
    path
}

/// Runs `nst` with the given arguments and the test weights.
pub(crate) fn nst(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nst"))
        .args(args)
        .env("NST_WEIGHTS", weights_path())
        .output()
        .expect("nst runs")
}
