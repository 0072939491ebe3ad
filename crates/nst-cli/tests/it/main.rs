//! Tests of the `nst` binary, run as a user would run it.
//!
//! Tests that need the weights find them through `NST_WEIGHTS` or `weights/vgg19.safetensors`
//! at the workspace root. Under `cargo xtask test` and CI (`NST_REQUIRE_WEIGHTS=1`) missing
//! weights fail the test; under plain `cargo test` such a test prints why it skips.
#![allow(clippy::print_stderr)]

mod features;
mod render;
mod tiling;

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

fn weights_path() -> PathBuf {
    std::env::var_os("NST_WEIGHTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("weights").join("vgg19.safetensors"))
}

/// The weights' path, or `None` (after printing why) when the test should skip.
pub(crate) fn weights() -> Option<PathBuf> {
    let path = weights_path();
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("NST_REQUIRE_WEIGHTS").is_none(),
        "weights not found at {} (run `cargo xtask fetch-weights`)",
        path.display()
    );
    eprintln!(
        "SKIP: weights not found at {}; run `cargo xtask fetch-weights`",
        path.display()
    );
    None
}

/// Runs `nst` with the given arguments and the test weights.
pub(crate) fn nst(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nst"))
        .args(args)
        .env("NST_WEIGHTS", weights_path())
        .output()
        .expect("nst runs")
}
