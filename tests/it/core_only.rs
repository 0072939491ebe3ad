//! A backend that implements only the core ops (`BackendCore`, and an empty `BackendExt`
//! impl: every extension at its default) renders like the CPU backend it wraps: the same
//! losses, tiled and untiled, to float rounding. What a new backend must implement is the
//! core; the extensions are speed.

use nst_cpu::Cpu;
use nst_style::{Image, RenderConfig, RenderSession, TileChoice};
use nst_tensor::{BackendCore, BackendExt, Conv2dParams, Result};
use nst_vgg::{Arch, Vgg};

/// The CPU backend seen through its core ops only.
#[derive(Clone, Debug)]
struct CoreOnly {
    inner: Cpu,
}

impl BackendCore for CoreOnly {
    type Buffer = <Cpu as BackendCore>::Buffer;

    fn name(&self) -> String {
        format!("core-only({})", self.inner.name())
    }
    fn upload_f32(&self, data: &[f32]) -> Result<Self::Buffer> {
        self.inner.upload_f32(data)
    }
    fn upload_f64(&self, data: &[f64]) -> Result<Self::Buffer> {
        self.inner.upload_f64(data)
    }
    fn download_f32(&self, buf: &Self::Buffer) -> Result<Vec<f32>> {
        self.inner.download_f32(buf)
    }
    fn download_f64(&self, buf: &Self::Buffer) -> Result<Vec<f64>> {
        self.inner.download_f64(buf)
    }
    nst_tensor::forward_core_ops!(inner);
    fn conv2d(
        &self,
        x: &Self::Buffer,
        w: &Self::Buffer,
        bias: Option<&Self::Buffer>,
        p: &Conv2dParams,
    ) -> Result<Self::Buffer> {
        self.inner.conv2d(x, w, bias, p)
    }
}

/// Nothing overridden: every extension runs its default, made of the core ops.
impl BackendExt for CoreOnly {}

/// The losses of `iterations` iterations of a small render on `be`.
fn losses<B: nst_tensor::Backend>(be: &B, tile: TileChoice) -> Vec<f64> {
    let vgg = Vgg::random_narrow_for_tests(be, Arch::Vgg19, 4, 9).unwrap();
    let px = |w: usize, h: usize, k: usize| -> Image {
        let data = (0..w * h * 3).map(|i| ((i * k) % 251) as f32).collect();
        Image::new(w, h, data).unwrap()
    };
    let (content, styles) = (px(48, 32, 7), [px(32, 32, 13)]);
    let cfg = RenderConfig {
        iterations: 4,
        tile,
        ..Default::default()
    };
    let mut s = RenderSession::new(be, &vgg, &content, &styles, &cfg).unwrap();
    let mut out = Vec::new();
    while let Some(p) = s.step().unwrap() {
        out.push(p.total);
    }
    out
}

#[test]
fn a_backend_with_only_the_core_renders_like_the_full_one() {
    let cpu = Cpu::new(2);
    let core = CoreOnly { inner: cpu.clone() };
    assert!(!core.batches_reductions());
    for tile in [TileChoice::Off, TileChoice::Size(16)] {
        let (a, b) = (losses(&cpu, tile), losses(&core, tile));
        assert_eq!(a.len(), 4);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 * x.abs(), "{tile:?}: {a:?} vs {b:?}");
        }
    }
}
