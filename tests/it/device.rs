//! The render loop keeps the image, the gradient and the optimizer's state on the backend:
//! counted through `nst_tensor::Counting`, an iteration moves only scalars.

use crate::image_crop;
use nst_cpu::Cpu;
use nst_style::{render, Flow, Image, Observer, OptimizerKind, Progress, RenderConfig};
use nst_style::{RenderSession, Result};
use nst_tensor::{Backend, Counting, Transfers};
use nst_vgg::Vgg;

struct Quiet;

impl<B: Backend> Observer<B> for Quiet {
    fn iteration(&mut self, _: &RenderSession<B>, _: &Progress) -> Result<Flow> {
        Ok(Flow::Continue)
    }
}

/// The host transfers of a whole render of `iterations` iterations, with the pixels clamped
/// or not, on a backend claiming to batch its reductions (as a GPU does) or not.
fn render_transfers(
    bytes: &[u8],
    optimizer: OptimizerKind,
    iterations: usize,
    clamp_pixels: bool,
    batching: bool,
) -> Transfers {
    let be = Counting::new(Cpu::new(2)).with_batching(batching);
    let vgg = Vgg::from_safetensors(&be, bytes).unwrap();
    let content = Image::new(40, 32, image_crop("tubingen.jpg", 300, 150, 40, 32)).unwrap();
    let style = Image::new(36, 36, image_crop("starry_night.jpg", 100, 80, 36, 36)).unwrap();
    let cfg = RenderConfig {
        optimizer,
        clamp_pixels,
        ..RenderConfig::single_scale(iterations)
    };
    let out = render(&be, &vgg, &content, &[style], &cfg, &mut Quiet).unwrap();
    assert!(out.stopped_early.is_none());
    be.transfers()
}

#[test]
fn render_iterations_move_only_scalars() {
    let bytes = crate::model_bytes();
    for optimizer in [
        OptimizerKind::Lbfgs,
        OptimizerKind::LbfgsWolfe,
        OptimizerKind::Adam,
    ] {
        for (clamp, batching) in [(false, false), (true, false), (true, true)] {
            let short = render_transfers(bytes, optimizer, 2, clamp, batching);
            let long = render_transfers(bytes, optimizer, 7, clamp, batching);
            let what = format!("{optimizer:?}, clamp {clamp}, batching {batching}");
            // Setup (weights, images) and the final image are the same for both; five more
            // iterations add scalars (loss terms, dot products, norms) and nothing else.
            assert_eq!(long.uploads, short.uploads, "{what}: {short:?} vs {long:?}");
            assert_eq!(
                long.downloads, short.downloads,
                "{what}: {short:?} vs {long:?}"
            );
            assert!(long.scalars > short.scalars, "{what}");
        }
    }
}

#[test]
fn a_gpu_style_render_waits_for_the_device_the_same_number_of_times_every_iteration() {
    let bytes = crate::model_bytes().to_vec();
    let trips = |n| render_transfers(&bytes, OptimizerKind::Lbfgs, n, true, true).round_trips;
    let (a, b, c) = (trips(2), trips(7), trips(12));
    // With batched reductions an L-BFGS iteration's waits do not grow with its history.
    assert_eq!(
        c - b,
        b - a,
        "round trips after 2, 7, 12 iterations: {a}, {b}, {c}"
    );
    let two_loop = |n| render_transfers(&bytes, OptimizerKind::Lbfgs, n, true, false).round_trips;
    let (a2, b2, c2) = (two_loop(2), two_loop(7), two_loop(12));
    assert!(c2 - b2 > b2 - a2, "two-loop: {a2}, {b2}, {c2}");
    assert!((c - b) < (c2 - b2), "{c} - {b} vs two-loop {c2} - {b2}");
}
