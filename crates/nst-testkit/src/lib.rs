//! What the workspace's tests, examples, benchmarks and xtask share: where the shared
//! paintings and photos are, and the real weights for the tests that need them.
//!
//! Not published: a dev-dependency only. The weights' rule itself is
//! [`nst_weights::locate`], the one every program uses.

use std::path::PathBuf;

#[cfg(feature = "parity")]
pub mod parity;

/// The workspace's root (the folder of the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
}

/// The shared paintings and photos: `$NST_IMAGES`, else `shared/images` beside the checkout
/// (the folder that holds the workspace's root).
pub fn images() -> PathBuf {
    std::env::var_os("NST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("..").join("shared").join("images"))
}

/// A file of [`images`] by name.
pub fn image(name: &str) -> PathBuf {
    images().join(name)
}

/// The real VGG19 weights, found by [`nst_weights::locate`] from the workspace's root, for a
/// test whose assertions need a network that has learnt something. Such a test fails (never
/// skips) when they are missing: `cargo xtask test` fetches them.
///
/// # Panics
/// When there is no weights file where the rule looks.
pub fn real_weights() -> PathBuf {
    let found = nst_weights::locate(None);
    let path = if found.is_relative() {
        workspace_root().join(found)
    } else {
        found
    };
    assert!(
        path.is_file(),
        "weights not found at {} (run `cargo xtask fetch-weights`; `cargo xtask test` does)",
        path.display()
    );
    path
}
