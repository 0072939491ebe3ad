//! The render loop keeps the image, the gradient and the optimizer's state on the backend:
//! counted through `nst_tensor::Counting`, an iteration moves only scalars.

use crate::{image_crop, weights};
use nst_cpu::Cpu;
use nst_style::{render, Image, Observer, OptimizerKind, Progress, RenderConfig};
use nst_tensor::{Counting, Transfers};
use nst_vgg::Vgg;

struct Quiet;

impl Observer for Quiet {
    fn iteration(&mut self, _: &Progress) -> bool {
        true
    }
}

/// The host transfers of a whole render of `iterations` iterations.
fn render_transfers(bytes: &[u8], optimizer: OptimizerKind, iterations: usize) -> Transfers {
    let be = Counting::new(Cpu::new(2));
    let vgg = Vgg::from_safetensors(&be, bytes).unwrap();
    let content = Image::new(40, 32, image_crop("tubingen.jpg", 300, 150, 40, 32)).unwrap();
    let style = Image::new(36, 36, image_crop("starry_night.jpg", 100, 80, 36, 36)).unwrap();
    let cfg = RenderConfig {
        iterations,
        optimizer,
        ..Default::default()
    };
    let out = render(&be, &vgg, &content, &[style], &cfg, &mut Quiet).unwrap();
    assert!(out.stopped_early.is_none());
    be.transfers()
}

#[test]
fn render_iterations_move_only_scalars() {
    let path = weights();
    let bytes = std::fs::read(path).unwrap();
    for optimizer in [
        OptimizerKind::Lbfgs,
        OptimizerKind::LbfgsWolfe,
        OptimizerKind::Adam,
    ] {
        let short = render_transfers(&bytes, optimizer, 2);
        let long = render_transfers(&bytes, optimizer, 7);
        // Setup (weights, images) and the final image are the same for both; five more
        // iterations add scalars (loss terms, dot products, norms) and nothing else.
        assert_eq!(
            long.uploads, short.uploads,
            "{optimizer:?}: {short:?} vs {long:?}"
        );
        assert_eq!(
            long.downloads, short.downloads,
            "{optimizer:?}: {short:?} vs {long:?}"
        );
        assert!(long.scalars > short.scalars, "{optimizer:?}");
    }
}
