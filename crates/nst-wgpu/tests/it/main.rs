//! The wgpu backend against the CPU backend: every op at odd sizes, the taped gradients of
//! the whole objective, renders, determinism and tiling under a small binding limit.
//!
//! They need a Vulkan (or Metal, DirectX 12) adapter and fail without one: `cargo xtask test`
//! installs Mesa's lavapipe, a software Vulkan, where there is none.

#![allow(clippy::print_stderr)]

mod parity;
mod render;

use nst_wgpu::Wgpu;
use std::sync::OnceLock;

/// The first adapter, opened once for all tests.
pub(crate) fn gpu() -> &'static Wgpu {
    static GPU: OnceLock<Result<Wgpu, String>> = OnceLock::new();
    match GPU.get_or_init(|| Wgpu::new(0).map_err(|e| e.to_string())) {
        Ok(g) => g,
        Err(e) => panic!("a wgpu adapter is required (`cargo xtask test` installs lavapipe): {e}"),
    }
}

#[test]
fn the_adapter_is_listed_and_named() {
    let list = nst_wgpu::adapters().unwrap();
    let g = gpu();
    assert_eq!(&list[0], g.adapter());
    assert!(g.max_binding() >= 1 << 20, "{}", g.max_binding());
    let name = nst_tensor::BackendCore::name(g);
    assert!(name.starts_with("wgpu:0:"), "{name}");
    // Vulkan adapters report their device-local memory (read through wgpu-hal).
    if list[0].api == "Vulkan" {
        assert!(list[0].memory.0 > 0, "{:?}", list[0]);
        assert!(list[0].to_string().contains(", memory "), "{}", list[0]);
    }
    eprintln!("{}", list[0]);
}

#[test]
fn a_missing_adapter_is_an_error() {
    let err = Wgpu::new(1000).unwrap_err().to_string();
    assert!(err.contains("no adapter 1000"), "{err}");
}
