//! A backend that implements only the core ops (`BackendCore`, and an empty `BackendExt`
//! impl: every extension at its default) renders like the CPU backend it wraps: the same
//! losses, tiled and untiled, to float rounding. What a new backend must implement is the
//! core; the extensions are speed. And a memory plan reaches the backend's cache through the
//! backend (`BackendExt::limit_cached`), never through a process global.

use nst_cpu::Cpu;
use nst_style::{Image, RenderConfig, RenderSession, TileChoice};
use nst_tensor::{BackendCore, BackendExt, Conv2dParams, Result};
use nst_vgg::{Arch, Vgg};
use std::sync::{Arc, Mutex};

/// The CPU backend seen through its core ops only (and the cache limits it was given).
#[derive(Clone, Debug)]
struct CoreOnly {
    inner: Cpu,
    limits: Arc<Mutex<Vec<u64>>>,
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

/// Nothing overridden that computes: every op runs its default, made of the core ops. The
/// cache limit (whose default does nothing) is recorded.
impl BackendExt for CoreOnly {
    fn limit_cached(&self, bytes: u64) {
        self.limits.lock().unwrap().push(bytes);
    }
}

/// The losses of `iterations` iterations of a small render on `be`, and its plans' pool limits.
fn losses<B: nst_tensor::Backend>(be: &B, tile: TileChoice) -> (Vec<f64>, Vec<u64>) {
    let vgg = Vgg::random_narrow_for_tests(be, Arch::Vgg19, 4, 9).unwrap();
    let px = |w: usize, h: usize, k: usize| -> Image {
        let data = (0..w * h * 3).map(|i| ((i * k) % 251) as f32).collect();
        Image::new(w, h, data).unwrap()
    };
    let (content, styles) = (px(48, 32, 7), [px(32, 32, 13)]);
    let cfg = RenderConfig {
        scales: vec![24, 48],
        tile,
        memory_budget: Some(3_000_000_000),
        ..RenderConfig::single_scale(4)
    };
    let mut s = RenderSession::new(be, &vgg, &content, &styles, &cfg).unwrap();
    let limits = s.plans().iter().map(|p| p.pool_limit).collect();
    let mut out = Vec::new();
    while let Some(p) = s.step().unwrap() {
        out.push(p.total);
    }
    (out, limits)
}

#[test]
fn a_backend_with_only_the_core_renders_like_the_full_one() {
    let cpu = Cpu::new(2);
    let core = CoreOnly {
        inner: cpu.clone(),
        limits: Arc::default(),
    };
    assert!(!core.batches_reductions());
    for tile in [TileChoice::Off, TileChoice::Size(16)] {
        core.limits.lock().unwrap().clear();
        let ((a, _), (b, planned)) = (losses(&cpu, tile), losses(&core, tile));
        assert_eq!(a.len(), 8);
        // Each scale's plan set its pool limit on the backend the session runs on.
        assert_eq!(*core.limits.lock().unwrap(), planned, "{tile:?}");
        assert_eq!(planned.len(), 2);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 * x.abs(), "{tile:?}: {a:?} vs {b:?}");
        }
    }
}
