//! The render as a session: stopped anywhere, checkpointed through bytes and resumed, it
//! ends on exactly the image of an uninterrupted render, for every optimizer and across a
//! scale boundary; and a checkpoint of another render is refused.

use crate::image_crop;
use nst_cpu::Cpu;
use nst_style::{Checkpoint, Image, OptimizerKind, RenderConfig, RenderSession};
use nst_vgg::Vgg;

fn inputs() -> (Image, Vec<Image>) {
    (
        Image::new(40, 32, image_crop("tubingen.jpg", 300, 150, 40, 32)).unwrap(),
        vec![Image::new(36, 36, image_crop("starry_night.jpg", 100, 80, 36, 36)).unwrap()],
    )
}

/// What one iteration reported: scale, iteration, total and terms.
type Record = (usize, usize, f64, Vec<(String, f64)>);

/// Runs a whole render, or stops it after `stop` iterations, round-trips its checkpoint
/// through bytes and resumes it in a fresh session.
fn run(vgg: &Vgg<Cpu>, be: &Cpu, cfg: &RenderConfig, stop: Option<usize>) -> Image {
    run_recorded(vgg, be, cfg, stop).0
}

/// [`run`], with every iteration's record.
fn run_recorded(
    vgg: &Vgg<Cpu>,
    be: &Cpu,
    cfg: &RenderConfig,
    stop: Option<usize>,
) -> (Image, Vec<Record>) {
    let (content, styles) = inputs();
    let mut records = Vec::new();
    let mut record = |p: nst_style::Progress| {
        records.push((p.scale.0, p.iteration.0, p.total, p.terms));
    };
    let mut s = RenderSession::new(be, vgg, &content, &styles, cfg).unwrap();
    if let Some(stop) = stop {
        for _ in 0..stop {
            record(s.step().unwrap().expect("an iteration"));
        }
        let mut bytes = Vec::new();
        s.write_checkpoint(&mut bytes).unwrap();
        // The streamed file and the host copy are the same checkpoint (but for the clock).
        let c = Checkpoint::from_bytes(&bytes).unwrap();
        let copy = Checkpoint {
            elapsed: c.elapsed,
            ..s.checkpoint().unwrap()
        };
        assert!(
            c == copy,
            "the streamed checkpoint differs from the host copy"
        );
        drop(s);
        s = RenderSession::resume(be, vgg, &content, &styles, cfg, c).unwrap();
    }
    while let Some(p) = s.step().unwrap() {
        record(p);
    }
    let r = s.finish().unwrap();
    assert!(r.stopped_early.is_none(), "{:?}", r.stopped_early);
    (r.image, records)
}

#[test]
fn a_resumed_session_ends_on_the_uninterrupted_image() {
    let be = Cpu::new(2);
    let vgg = Vgg::from_safetensors(&be, crate::model_bytes()).unwrap();
    let configs = [
        (OptimizerKind::Lbfgs, None, vec![], vec![]),
        (OptimizerKind::LbfgsWolfe, None, vec![], vec![]),
        (OptimizerKind::Adam, None, vec![], vec![]),
        (OptimizerKind::Gd, Some(1e-4), vec![], vec![]),
        // Two scales: stopped inside the second, and at the first one's end.
        (OptimizerKind::Lbfgs, None, vec![20, 40], vec![4, 4]),
    ];
    for (optimizer, learning_rate, scales, scale_iterations) in configs {
        let cfg = RenderConfig {
            optimizer,
            learning_rate,
            scales: scales.clone(),
            scale_iterations,
            ..RenderConfig::single_scale(8)
        };
        let whole = run(&vgg, &be, &cfg, None);
        let stops: &[usize] = if scales.is_empty() { &[1, 5] } else { &[4, 6] };
        for &stop in stops {
            let resumed = run(&vgg, &be, &cfg, Some(stop));
            assert!(
                resumed == whole,
                "{optimizer:?} {scales:?}: resumed after {stop} differs"
            );
        }
    }
}

#[test]
fn a_checkpoint_of_another_render_is_refused() {
    let be = Cpu::new(2);
    let vgg = Vgg::from_safetensors(&be, crate::model_bytes()).unwrap();
    let (content, styles) = inputs();
    let cfg = RenderConfig::single_scale(4);
    let mut s = RenderSession::new(&be, &vgg, &content, &styles, &cfg).unwrap();
    s.step().unwrap();
    let c = s.checkpoint().unwrap();
    let other = RenderConfig {
        seed: 9,
        ..cfg.clone()
    };
    let e = RenderSession::resume(&be, &vgg, &content, &styles, &other, c.clone())
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("seed"), "{e}");
    let flipped = content.resize(32, 40);
    let e = RenderSession::resume(&be, &vgg, &flipped, &styles, &cfg, c.clone())
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("content"), "{e}");
    let adam = RenderConfig {
        optimizer: OptimizerKind::Adam,
        ..cfg.clone()
    };
    let e = RenderSession::resume(&be, &vgg, &content, &styles, &adam, c)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("optimizer"), "{e}");
}

/// The range of an image in model space, as pixel values.
fn pixel_range(vgg: &Vgg<Cpu>, c: &Checkpoint) -> (f32, f32) {
    let (w, h) = c.size;
    let px = vgg.convention().from_model(&c.image, h, w);
    px.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

#[test]
fn clamped_pixels_stay_in_range_and_resume_exactly() {
    let be = Cpu::new(2);
    let vgg = Vgg::from_safetensors(&be, crate::model_bytes()).unwrap();
    let (content, styles) = inputs();
    // Without the projection the optimiser leaves 0-255 (what makes the projection matter);
    // with it every iterate stays inside, and the loss still falls.
    let mut widest = (0.0f32, 255.0f32);
    for clamp_pixels in [false, true] {
        let cfg = RenderConfig {
            clamp_pixels,
            ..RenderConfig::single_scale(30)
        };
        let mut s = RenderSession::new(&be, &vgg, &content, &styles, &cfg).unwrap();
        let mut losses = Vec::new();
        let mut range = (f32::INFINITY, f32::NEG_INFINITY);
        while let Some(p) = s.step().unwrap() {
            losses.push(p.total);
            let (lo, hi) = pixel_range(&vgg, &s.checkpoint().unwrap());
            range = (range.0.min(lo), range.1.max(hi));
        }
        if clamp_pixels {
            // The round trip through the model's convention costs an ulp or so.
            assert!(
                range.0 >= -1e-3 && range.1 <= 255.0 + 1e-3,
                "clamped render left the range: {range:?}"
            );
            assert!(
                losses[losses.len() - 1] < 0.1 * losses[0],
                "the clamped render did not converge: {losses:?}"
            );
        } else {
            widest = range;
        }
    }
    assert!(
        widest.0 < -1.0 || widest.1 > 256.0,
        "the unclamped render stayed in range ({widest:?}): the test shows nothing"
    );
    // Resumed mid-scale, the projected render ends on the uninterrupted image.
    let cfg = RenderConfig {
        clamp_pixels: true,
        scales: vec![20, 40],
        scale_iterations: vec![4, 4],
        ..RenderConfig::single_scale(8)
    };
    let whole = run(&vgg, &be, &cfg, None);
    for stop in [2, 6] {
        assert!(
            run(&vgg, &be, &cfg, Some(stop)) == whole,
            "clamped render resumed after {stop} differs"
        );
    }
}

#[test]
fn a_converged_scale_ends_early_and_resumes_exactly() {
    let be = Cpu::new(2);
    let vgg = Vgg::from_safetensors(&be, crate::model_bytes()).unwrap();
    let (content, styles) = inputs();
    let cfg = RenderConfig {
        scales: vec![20, 40],
        scale_iterations: vec![60, 60],
        // 2% a iteration: met within the first scale's 60 iterations at this size.
        tolerance: 2e-2,
        ..RenderConfig::single_scale(60)
    };
    let mut s = RenderSession::new(&be, &vgg, &content, &styles, &cfg).unwrap();
    let mut ends = Vec::new();
    let mut count = [0usize; 2];
    while let Some(p) = s.step().unwrap() {
        count[p.scale.0] += 1;
        if p.converged {
            ends.push((p.scale.0, p.iteration.0));
        }
    }
    assert!(
        !ends.is_empty() && ends[0].0 == 0 && ends[0].1 > nst_style::TOLERANCE_WINDOW,
        "no early end in the first scale: {ends:?}"
    );
    assert_eq!(
        count[0], ends[0].1,
        "the first scale went on after converging"
    );
    assert!(count[1] > 0, "the second scale never ran");
    // Without the tolerance every iteration runs.
    let full = RenderConfig {
        tolerance: 0.0,
        ..cfg.clone()
    };
    let mut s = RenderSession::new(&be, &vgg, &content, &styles, &full).unwrap();
    let mut n = 0;
    while s.step().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 120);
    // Stopped inside the window, just before the early end, and in the second scale: the
    // resumed render ends on the same image.
    let whole = run(&vgg, &be, &cfg, None);
    for stop in [5, ends[0].1 - 1, ends[0].1 + 3] {
        assert!(
            run(&vgg, &be, &cfg, Some(stop)) == whole,
            "resumed after {stop} differs"
        );
    }
}

/// With a line search, every iteration reports the loss of its iterate, never a line-search
/// trial: the losses fall at every step (strong Wolfe's sufficient decrease), and a resumed
/// run, which evaluates its start afresh, reports the same numbers and so meets `--tolerance`
/// at the same iteration, ending on the same bytes. With the real weights: the line search
/// needs the real network's balance of terms (the random test model's relu1_1 term dwarfs
/// the rest, and its searches stall).
#[test]
fn real_weights_lbfgs_wolfe_reports_its_iterates_and_resumes_exactly_with_a_tolerance() {
    let be = Cpu::new(2);
    let vgg = Vgg::from_safetensors(&be, &std::fs::read(crate::weights()).unwrap()).unwrap();
    let full = RenderConfig {
        optimizer: OptimizerKind::LbfgsWolfe,
        scales: vec![20, 40],
        scale_iterations: vec![40, 12],
        ..RenderConfig::single_scale(40)
    };
    // A tolerance the first scale meets by its 25th iteration: the rate there, from a run
    // without one (the same iterates up to the early end).
    let (_, all) = run_recorded(&vgg, &be, &full, None);
    let w = nst_style::TOLERANCE_WINDOW;
    let (old, now) = (all[24 - w].2, all[24].2);
    let cfg = RenderConfig {
        tolerance: (old - now) / (w as f64 * old) * 1.001,
        ..full
    };
    let (whole, records) = run_recorded(&vgg, &be, &cfg, None);
    let first_scale: Vec<&Record> = records.iter().filter(|r| r.0 == 0).collect();
    assert!(
        first_scale.len() < 40,
        "the tolerance never ended the first scale: {} iterations",
        first_scale.len()
    );
    for w in first_scale.windows(2) {
        assert!(w[1].2 < w[0].2, "the loss rose: {:?} then {:?}", w[0], w[1]);
    }
    for r in &records {
        let sum: f64 = r.3.iter().map(|t| t.1).sum();
        assert!(
            (sum - r.2).abs() <= 1e-6 * r.2.abs(),
            "terms {sum} against total {} at {:?}",
            r.2,
            (r.0, r.1)
        );
    }
    let end = first_scale.len();
    assert!(end > w && end <= 25, "ended at {end}");
    assert_eq!(records[..end], all[..end]);
    for stop in [1, end - 1, end + 2] {
        let (img, resumed) = run_recorded(&vgg, &be, &cfg, Some(stop));
        assert_eq!(resumed, records, "records after resuming at {stop}");
        assert!(img == whole, "resumed after {stop} differs");
    }
}

/// A term of the caller's own: the mean entry of relu2_1's Gram matrix against half the
/// style's, tiled like any other.
struct Energy(f64);

impl nst_style::TermSource<Cpu> for Energy {
    fn describe(&self) -> String {
        format!("energy {}", self.0)
    }

    fn layers(&self) -> Vec<String> {
        vec!["relu2_1".into()]
    }

    fn terms(
        &self,
        scale: &nst_style::Scale<'_, Cpu>,
    ) -> nst_style::Result<Vec<nst_style::Term<Cpu>>> {
        let f = nst_style::targets::features(
            scale.model,
            &scale.styles[0],
            &["relu2_1"],
            scale.tiling,
        )?;
        let goal = nst_loss::gram_tensor(&f[0])?.mean()?.scalar()? * 0.5;
        let stat = nst_loss::term::statistic_fn(nst_loss::GramStatistic::plain(), move |s, n| {
            // The mean entry of the Gram matrix Σ f fᵀ / (C·P), against half the style's.
            let c = s[0].shape().dims()[0];
            let energy = s[0].sum()?.scale(1.0 / (c * c * c * n[0]) as f64)?;
            energy.offset(-goal)?.square()
        });
        Ok(vec![nst_style::Term::statistic(
            "energy/relu2_1",
            &["relu2_1"],
            self.0,
            stat,
        )])
    }
}

#[test]
fn a_user_term_renders_tiled_resumes_exactly_and_enters_the_fingerprint() {
    let be = Cpu::new(2);
    let vgg = Vgg::from_safetensors(&be, crate::model_bytes()).unwrap();
    let (content, styles) = inputs();
    let cfg = RenderConfig {
        tile: nst_style::TileChoice::Size(16),
        ..RenderConfig::single_scale(4)
    };
    let session = || {
        RenderSession::new(&be, &vgg, &content, &styles, &cfg)
            .unwrap()
            .with_terms(Energy(1e-3))
            .unwrap()
    };
    let mut whole = session();
    assert!(whole.plans()[0].tiles > 1, "the render is tiled");
    let mut names = Vec::new();
    while let Some(p) = whole.step().unwrap() {
        names = p.terms.iter().map(|(n, _)| n.clone()).collect();
    }
    assert!(names.contains(&"energy/relu2_1".to_string()), "{names:?}");
    let whole = whole.finish().unwrap().image;
    let mut s = session();
    s.step().unwrap();
    s.step().unwrap();
    let bytes = s.checkpoint().unwrap().to_bytes().unwrap();
    let mut resumed = session()
        .resume_from(Checkpoint::from_bytes(&bytes).unwrap())
        .unwrap();
    while resumed.step().unwrap().is_some() {}
    assert!(
        resumed.finish().unwrap().image == whole,
        "the resumed render differs"
    );
    // Without the term, or with another weight, the checkpoint is another render's.
    let plain = RenderSession::new(&be, &vgg, &content, &styles, &cfg).unwrap();
    let err = plain
        .resume_from(Checkpoint::from_bytes(&bytes).unwrap())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("terms"), "{err}");
    let s = RenderSession::new(&be, &vgg, &content, &styles, &cfg)
        .unwrap()
        .with_terms(Energy(2e-3))
        .unwrap();
    assert!(s
        .resume_from(Checkpoint::from_bytes(&bytes).unwrap())
        .is_err());
}

/// The nearest-neighbour loss, whose targets follow the image: stopped before, at and after a
/// refresh, the resumed render ends on the uninterrupted image byte for byte (the checkpoint
/// keeps the image the targets were last made for), and the targets really follow the image
/// (another refresh interval gives another image).
#[test]
fn a_resumed_nearest_neighbour_render_ends_on_the_uninterrupted_image() {
    let be = Cpu::new(2);
    let vgg = Vgg::from_safetensors(&be, crate::model_bytes()).unwrap();
    let cfg = |refresh: usize| RenderConfig {
        objective: crate::terms::nn_config(refresh, true),
        ..RenderConfig::single_scale(7)
    };
    let every3 = cfg(3);
    let whole = run(&vgg, &be, &every3, None);
    for stop in [2, 3, 4] {
        let resumed = run(&vgg, &be, &every3, Some(stop));
        assert!(resumed == whole, "resumed after {stop} differs");
    }
    let never = run(&vgg, &be, &cfg(100), None);
    assert!(never != whole, "refreshing the targets changed nothing");
}

/// The one driver: every iteration reported with the session, every scale's plan, snapshots
/// on their schedule; a stop asked by the observer leaves the session where it is, and
/// driving it again goes on from there to the uninterrupted image.
#[test]
fn the_driver_reports_snapshots_and_stops_when_asked() {
    use nst_style::{drive, Ended, Flow, Observer, Progress};
    #[derive(Default)]
    struct Log {
        seen: Vec<(usize, usize)>,
        snapshots: Vec<(usize, usize)>,
        plans: Vec<(usize, (usize, usize))>,
        stop_at: Option<(usize, usize)>,
    }
    impl Observer<Cpu> for Log {
        fn plan(&mut self, scale: usize, size: (usize, usize), _: &nst_style::MemoryPlan) {
            self.plans.push((scale, size));
        }
        fn snapshot(&mut self, p: &Progress, image: &Image) {
            assert_eq!((image.width(), image.height()), p.size);
            self.snapshots.push((p.scale.0, p.iteration.0));
        }
        fn iteration(&mut self, s: &RenderSession<Cpu>, p: &Progress) -> nst_style::Result<Flow> {
            let at = (p.scale.0, p.iteration.0);
            assert_eq!(s.last_progress().map(|l| l.iteration), Some(p.iteration));
            self.seen.push(at);
            Ok(if self.stop_at == Some(at) {
                Flow::Stop
            } else {
                Flow::Continue
            })
        }
    }
    let be = Cpu::new(2);
    let vgg = Vgg::from_safetensors(&be, crate::model_bytes()).unwrap();
    let (content, styles) = inputs();
    let cfg = RenderConfig {
        scales: vec![20, 40],
        scale_iterations: vec![3, 3],
        save_every: 2,
        ..RenderConfig::single_scale(3)
    };
    let mut whole = RenderSession::new(&be, &vgg, &content, &styles, &cfg).unwrap();
    let mut log = Log::default();
    assert_eq!(drive(&mut whole, &mut log).unwrap(), Ended::Over);
    assert_eq!(log.seen, [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]);
    assert_eq!(log.snapshots, [(0, 2), (1, 2)]);
    assert_eq!(log.plans.len(), 2);
    assert_eq!(log.plans[1].0, 1);
    let whole = whole.finish().unwrap().image;
    let mut s = RenderSession::new(&be, &vgg, &content, &styles, &cfg).unwrap();
    let mut log = Log {
        stop_at: Some((0, 2)),
        ..Log::default()
    };
    assert_eq!(drive(&mut s, &mut log).unwrap(), Ended::Stopped);
    assert_eq!(log.seen, [(0, 1), (0, 2)]);
    log.stop_at = None;
    assert_eq!(drive(&mut s, &mut log).unwrap(), Ended::Over);
    assert_eq!(log.seen.len(), 6);
    assert!(
        s.finish().unwrap().image == whole,
        "a stopped drive went on elsewhere"
    );
}
