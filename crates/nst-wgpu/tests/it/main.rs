//! The wgpu backend against the CPU backend: every op at odd sizes, the taped gradients of
//! the whole objective, renders, determinism and tiling under a small binding limit.
//!
//! They need a Vulkan (or Metal, DirectX 12) adapter and fail without one: `cargo xtask test`
//! installs Mesa's lavapipe, a software Vulkan, where there is none.

#![allow(clippy::print_stderr)]

mod parity;
mod render;

use nst_cpu::Cpu;
use nst_tensor::{Backend, Tensor};
use nst_wgpu::Wgpu;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::sync::OnceLock;

/// The first adapter, opened once for all tests.
pub(crate) fn gpu() -> &'static Wgpu {
    static GPU: OnceLock<Result<Wgpu, String>> = OnceLock::new();
    match GPU.get_or_init(|| Wgpu::new(0).map_err(|e| e.to_string())) {
        Ok(g) => g,
        Err(e) => panic!("a wgpu adapter is required (`cargo xtask test` installs lavapipe): {e}"),
    }
}

pub(crate) fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// The same random tensor on the CPU and on `g`.
pub(crate) fn pair<B: Backend>(dims: &[usize], seed: u64, g: &B) -> (Tensor<Cpu>, Tensor<B>) {
    let d = data(dims.iter().product(), seed);
    (
        Tensor::from_f32(&Cpu::new(2), &d, dims.to_vec()).unwrap(),
        Tensor::from_f32(g, &d, dims.to_vec()).unwrap(),
    )
}

/// How near a result must be to the CPU's.
#[derive(Clone, Copy)]
pub(crate) enum Tol {
    /// `|x − y| <= t · |x|` (plus `t` near 0): elementwise ops, pooling, data movement.
    Relative(f32),
    /// `|x − y| <= t · max|x|`: sums of products in another order.
    OfLargest(f32),
}

pub(crate) fn close<B: Backend>(what: &str, cpu: &Tensor<Cpu>, dev: &Tensor<B>, tol: Tol) {
    assert_eq!(cpu.dims(), dev.dims(), "{what}");
    let a = cpu.to_f32().unwrap();
    let b = dev.to_f32().unwrap();
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let bound = match tol {
            Tol::Relative(t) => t * x.abs().max(1e-6),
            Tol::OfLargest(t) => t * scale.max(1e-30),
        };
        assert!(
            (x - y).abs() <= bound || (x.is_nan() && y.is_nan()),
            "{what}[{i}]: cpu {x} wgpu {y}"
        );
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
