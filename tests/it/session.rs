//! The render as a session: stopped anywhere, checkpointed through bytes and resumed, it
//! ends on exactly the image of an uninterrupted render, for every optimizer and across a
//! scale boundary; and a checkpoint of another render is refused.

use crate::{image_crop, weights};
use nst_cpu::Cpu;
use nst_style::{Checkpoint, Image, OptimizerKind, RenderConfig, RenderSession};
use nst_vgg::Vgg;

fn inputs() -> (Image, Vec<Image>) {
    (
        Image::new(40, 32, image_crop("tubingen.jpg", 300, 150, 40, 32)).unwrap(),
        vec![Image::new(36, 36, image_crop("starry_night.jpg", 100, 80, 36, 36)).unwrap()],
    )
}

/// Runs a whole render, or stops it after `stop` iterations, round-trips its checkpoint
/// through bytes and resumes it in a fresh session.
fn run(vgg: &Vgg<Cpu>, be: &Cpu, cfg: &RenderConfig, stop: Option<usize>) -> Image {
    let (content, styles) = inputs();
    let mut s = RenderSession::new(be, vgg, &content, &styles, cfg).unwrap();
    if let Some(stop) = stop {
        for _ in 0..stop {
            s.step().unwrap().expect("an iteration");
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
    while s.step().unwrap().is_some() {}
    let r = s.finish().unwrap();
    assert!(r.stopped_early.is_none(), "{:?}", r.stopped_early);
    r.image
}

#[test]
fn a_resumed_session_ends_on_the_uninterrupted_image() {
    let be = Cpu::new(2);
    let vgg = Vgg::from_safetensors(&be, &std::fs::read(weights()).unwrap()).unwrap();
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
            iterations: 8,
            optimizer,
            learning_rate,
            scales: scales.clone(),
            scale_iterations,
            ..Default::default()
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
    let vgg = Vgg::from_safetensors(&be, &std::fs::read(weights()).unwrap()).unwrap();
    let (content, styles) = inputs();
    let cfg = RenderConfig {
        iterations: 4,
        ..Default::default()
    };
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
