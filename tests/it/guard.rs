//! The non-finite guard keeps the last good image: a backend wrapper poisons the network's
//! first convolution with NaN at a chosen evaluation, and the render must return the image
//! from before the point whose loss went bad. The same wrapper, reporting a GPU's memory,
//! shows that memory plans take their constants from the backend.

use crate::image_crop;
use nst_cpu::Cpu;
use nst_style::{Image, RenderConfig, RenderSession, SessionStatus};
use nst_tensor::{BackendCore, BackendExt, Conv2dParams, MemoryKind, Result};
use nst_vgg::Vgg;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Forwards every op to `inner`; once armed, the `at`-th convolution of the image itself
/// (3 input channels: the network's first layer, one per evaluation) returns NaN.
#[derive(Clone, Debug)]
struct Poison {
    inner: Cpu,
    /// Image convolutions left before the poisoned one (0: disarmed).
    left: Arc<AtomicUsize>,
    /// The memory it says its buffers are in.
    memory: MemoryKind,
    /// Image convolutions left before `flag` is raised (0: never), and the flag.
    raise_left: Arc<AtomicUsize>,
    flag: Arc<std::sync::atomic::AtomicBool>,
}

impl Poison {
    fn arm(&self, at: usize) {
        self.left.store(at, Ordering::SeqCst);
    }

    fn maybe_poison(&self, p: &Conv2dParams, y: Vec<f32>) -> Result<Vec<f32>> {
        if p.in_channels == 3 {
            let left = self.raise_left.load(Ordering::SeqCst);
            if left > 0 {
                self.raise_left.store(left - 1, Ordering::SeqCst);
                if left == 1 {
                    self.flag.store(true, Ordering::SeqCst);
                }
            }
        }
        if p.in_channels == 3 {
            let left = self.left.load(Ordering::SeqCst);
            if left > 0 {
                self.left.store(left - 1, Ordering::SeqCst);
                if left == 1 {
                    return Ok(vec![f32::NAN; y.len()]);
                }
            }
        }
        Ok(y)
    }
}

type Buf = <Cpu as BackendCore>::Buffer;

impl BackendCore for Poison {
    type Buffer = Buf;
    fn name(&self) -> String {
        self.inner.name()
    }
    fn upload_f32(&self, d: &[f32]) -> Result<Buf> {
        self.inner.upload_f32(d)
    }
    fn upload_f64(&self, d: &[f64]) -> Result<Buf> {
        self.inner.upload_f64(d)
    }
    fn download_f32(&self, b: &Buf) -> Result<Vec<f32>> {
        self.inner.download_f32(b)
    }
    fn download_f64(&self, b: &Buf) -> Result<Vec<f64>> {
        self.inner.download_f64(b)
    }
    nst_tensor::forward_core_ops!(inner);
    fn conv2d(&self, x: &Buf, w: &Buf, b: Option<&Buf>, p: &Conv2dParams) -> Result<Buf> {
        let y = self.inner.download_f32(&self.inner.conv2d(x, w, b, p)?)?;
        self.inner.upload_f32(&self.maybe_poison(p, y)?)
    }
}

impl BackendExt for Poison {
    fn memory(&self) -> MemoryKind {
        self.memory
    }
    fn conv2d_relu(&self, x: &Buf, w: &Buf, b: Option<&Buf>, p: &Conv2dParams) -> Result<Buf> {
        let y = self
            .inner
            .download_f32(&self.inner.conv2d_relu(x, w, b, p)?)?;
        self.inner.upload_f32(&self.maybe_poison(p, y)?)
    }
    fn conv2d_relu_backward_input(
        &self,
        y: &Buf,
        dy: &Buf,
        w: &Buf,
        p: &Conv2dParams,
    ) -> Result<Buf> {
        self.inner.conv2d_relu_backward_input(y, dy, w, p)
    }
    fn dot(&self, a: &Buf, b: &Buf) -> Result<f64> {
        self.inner.dot(a, b)
    }
    fn axpy(&self, a: f64, x: &Buf, y: &Buf) -> Result<Buf> {
        self.inner.axpy(a, x, y)
    }
    fn norms(&self, x: &Buf) -> Result<(f64, f64)> {
        self.inner.norms(x)
    }
}

fn inputs() -> (Image, Image) {
    (
        Image::new(40, 32, image_crop("tubingen.jpg", 300, 150, 40, 32)).unwrap(),
        Image::new(36, 36, image_crop("starry_night.jpg", 100, 80, 36, 36)).unwrap(),
    )
}

/// The image after `steps` clean iterations.
fn clean_after(bytes: &[u8], cfg: &RenderConfig, steps: usize) -> Image {
    let be = Cpu::new(2);
    let vgg = Vgg::from_safetensors(&be, bytes).unwrap();
    let (content, style) = inputs();
    let styles = [style];
    let mut s = RenderSession::new(&be, &vgg, &content, &styles, cfg).unwrap();
    for _ in 0..steps {
        s.step().unwrap().expect("an iteration");
    }
    s.image().unwrap()
}

/// The poisoning backend, disarmed, and the network on it.
fn poisoned(bytes: &[u8]) -> (Poison, Vgg<Poison>) {
    let be = Poison {
        inner: Cpu::new(2),
        left: Arc::default(),
        memory: MemoryKind::Host { available: 0 },
        raise_left: Arc::default(),
        flag: Arc::default(),
    };
    let vgg = Vgg::from_safetensors(&be, bytes).unwrap();
    (be, vgg)
}

#[test]
fn a_non_finite_loss_keeps_the_last_good_image() {
    let bytes = crate::model_bytes().to_vec();
    let cfg = RenderConfig::single_scale(10);
    let (be, vgg) = poisoned(&bytes);
    let (content, style) = inputs();
    let styles = [style];
    let mut s = RenderSession::new(&be, &vgg, &content, &styles, &cfg).unwrap();
    // The first iteration builds the targets and evaluates x0; then the 5th evaluation from
    // here is the 6th of the render: the point x5 that iteration 5 moved to.
    s.step().unwrap().expect("iteration 1");
    be.arm(5);
    for it in 2..=5 {
        let p = s.step().unwrap().expect("a clean iteration");
        assert_eq!(p.iteration.0, it);
    }
    assert!(s.step().unwrap().is_none(), "the poisoned iteration stops");
    let SessionStatus::Stopped(why) = s.status().clone() else {
        panic!("not stopped: {:?}", s.status());
    };
    assert!(why.contains("NaN") && why.contains("iteration 6"), "{why}");
    let kept = s.finish().unwrap();
    assert!(kept.stopped_early.is_some());
    // x5's loss was the bad one: the last good image is x4, the image after 4 iterations.
    assert_eq!(kept.image, clean_after(&bytes, &cfg, 4));
    assert_ne!(kept.image, clean_after(&bytes, &cfg, 5));
    assert!(kept.image.data().iter().all(|v| v.is_finite()));
}

/// With a line search, a non-finite trial point is not the end of the render: the search gets
/// +∞ there and shrinks its step, and the render goes on to its last iteration. With the real
/// weights, whose line searches make progress (the random test model's stall).
#[test]
fn real_weights_non_finite_line_search_trial_shrinks_the_step_and_the_render_goes_on() {
    let bytes = std::fs::read(crate::weights()).unwrap();
    let cfg = RenderConfig {
        optimizer: nst_style::OptimizerKind::LbfgsWolfe,
        ..RenderConfig::single_scale(8)
    };
    let (be, vgg) = poisoned(&bytes);
    let (content, style) = inputs();
    let styles = [style];
    let mut s = RenderSession::new(&be, &vgg, &content, &styles, &cfg).unwrap();
    // After the first iteration each step starts from the point the last line search
    // accepted (its loss is kept), so every evaluation from here is a trial: poison the next.
    s.step().unwrap().expect("iteration 1");
    be.arm(1);
    let mut losses = Vec::new();
    while let Some(p) = s.step().unwrap() {
        losses.push(p.total);
    }
    assert_eq!(s.status(), &SessionStatus::Finished, "{:?}", s.status());
    assert_eq!(losses.len(), 7);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "{losses:?}");
    let img = s.finish().unwrap();
    assert!(img.stopped_early.is_none());
    assert!(img.image.data().iter().all(|v| v.is_finite()));
}

/// A backend that keeps its buffers on a GPU gets plans made with the device's constants and
/// its budget: the same render on the same budget plans differently when the backend says
/// its memory is a GPU's, exactly as the planner does for a device, and a 2048 px render
/// under a small device budget is tiled to fit it.
#[test]
fn plans_take_their_constants_from_the_backends_memory() {
    let gpu = MemoryKind::Device {
        total: 16_000_000_000,
        free: 2_000_000_000,
    };
    let plans = |memory: MemoryKind| {
        let be = Poison {
            inner: Cpu::new(1),
            left: Arc::default(),
            memory,
            raise_left: Arc::default(),
            flag: Arc::default(),
        };
        let vgg = Vgg::random_for_tests(&be, nst_vgg::Arch::Vgg19, 3).unwrap();
        let content = Image::new(2048, 1536, vec![100.0; 2048 * 1536 * 3]).unwrap();
        let style = Image::new(512, 512, vec![60.0; 512 * 512 * 3]).unwrap();
        let cfg = RenderConfig {
            scales: vec![1024, 2048],
            memory_budget: Some(2_500_000_000),
            ..RenderConfig::single_scale(500)
        };
        let plans = nst_style::plan_scales(&vgg, &content, &[style], &cfg).unwrap();
        // What the planner makes of the finest scale for this memory, asked directly.
        let req = nst_style::PlanRequest {
            size: (2048, 1536),
            style_sizes: vec![(2048, 2048)],
            optimizer: cfg.optimizer,
            history: cfg.lbfgs_history,
            iterations: cfg.iterations,
            tile: cfg.tile,
            budget: cfg.memory_budget,
            extra_layers: Vec::new(),
            memory,
            max_buffer: None,
        };
        let direct = nst_style::memory::plan(&vgg, &cfg.objective, &req).unwrap();
        assert_eq!(plans[1], direct, "{memory:?}");
        plans
    };
    let (host, device) = (plans(MemoryKind::Host { available: 0 }), plans(gpu));
    for p in host.iter().chain(&device) {
        assert!(p.peak_bytes as f64 <= 0.85 * 2.5e9, "{p:?}");
    }
    assert!(device[1].tiles > 1, "{:?}", device[1]);
    assert_ne!(host[1], device[1]);
    // A device plan leaves the CPU pool's limit at its floor (no pool to fill).
    assert_eq!(
        device[1].pool_limit,
        nst_style::memory::pool_limit(Some(2_500_000_000))
    );
}

/// A cancelled iteration leaves the session at the last completed one: the step says
/// `Cancelled`, the position and the checkpoint are the previous iteration's, and both going
/// on in the same session and resuming from that checkpoint end on the bytes of the render
/// never cancelled: with L-BFGS (cancelled in its one evaluation), with the line search
/// (cancelled among its trials, after the history moved), and with the nearest-neighbour loss
/// in an iteration that remade its targets. The wrapper raises the flag itself at a fixed
/// convolution of the iteration (a tile's), so nothing depends on timing.
#[test]
fn a_cancelled_iteration_goes_back_to_the_last_completed_one() {
    use nst_style::{Checkpoint, Error, ObjectiveConfig, OptimizerKind, StyleLoss, TileChoice};
    let bytes = crate::model_bytes().to_vec();
    let (be, vgg) = poisoned(&bytes);
    let (content, style) = inputs();
    let styles = [style];
    let nn = ObjectiveConfig {
        style_loss: StyleLoss::Nn,
        style_layers: StyleLoss::Nn.default_style_layers(),
        nn: nst_style::NnConfig {
            refresh: 2,
            augment: false,
        },
        ..ObjectiveConfig::default()
    };
    let cases = [
        (OptimizerKind::Lbfgs, ObjectiveConfig::default(), 1, 2),
        (OptimizerKind::LbfgsWolfe, ObjectiveConfig::default(), 2, 7),
        (OptimizerKind::Lbfgs, nn, 2, 3),
    ];
    for (optimizer, objective, before, raise_at) in cases {
        let cfg = RenderConfig {
            optimizer,
            objective,
            tile: TileChoice::Size(16),
            ..RenderConfig::single_scale(4)
        };
        let session = || RenderSession::new(&be, &vgg, &content, &styles, &cfg).unwrap();
        let mut whole = session();
        assert!(whole.plans()[0].tiles > 1, "the render is tiled");
        while whole.step().unwrap().is_some() {}
        let whole = whole.finish().unwrap().image;

        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let be2 = Poison {
            flag: flag.clone(),
            ..be.clone()
        };
        let vgg2 = Vgg::from_safetensors(&be2, &bytes).unwrap();
        let mut s = RenderSession::new(&be2, &vgg2, &content, &styles, &cfg).unwrap();
        s.set_cancel(flag.clone());
        for _ in 0..before {
            s.step().unwrap().expect("an iteration");
        }
        let at = s.position();
        let saved = s.checkpoint().unwrap().to_bytes().unwrap();
        be2.raise_left.store(raise_at, Ordering::SeqCst);
        let err = s.step().expect_err("cancelled");
        assert!(matches!(err, Error::Cancelled), "{optimizer:?}: {err}");
        assert!(flag.load(Ordering::SeqCst));
        assert_eq!(s.position(), at, "{optimizer:?}");
        let cancelled = s.checkpoint().unwrap().to_bytes().unwrap();
        // Resumed from the checkpoint taken after the cancel.
        let mut resumed = session()
            .resume_from(Checkpoint::from_bytes(&cancelled).unwrap())
            .unwrap();
        while resumed.step().unwrap().is_some() {}
        assert!(
            resumed.finish().unwrap().image == whole,
            "{optimizer:?}: the render resumed after the cancel differs"
        );
        // The same session, going on once the flag is down.
        flag.store(false, Ordering::SeqCst);
        while s.step().unwrap().is_some() {}
        assert!(
            s.finish().unwrap().image == whole,
            "{optimizer:?}: the session going on after the cancel differs"
        );
        if cfg.objective.style_loss == StyleLoss::Gram {
            // Nothing of the abandoned step is in the checkpoint (with nn, the targets it
            // remade are).
            assert_eq!(saved.len(), cancelled.len());
        }
    }
}
