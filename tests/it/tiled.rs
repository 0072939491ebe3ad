//! The tiled objective equals the untiled one: every term and the gradient, in f64 to 1e-10
//! (on the narrow random VGG19: exactness holds for any weights) and in f32 to the documented
//! tolerances (on the real weights), on images several tiles wide and high; and a halo one
//! alignment step narrower than the computed one is measurably wrong.

use crate::{image_crop, weights};
use nst_cpu::Cpu;
use nst_style::{Image, Objective, ObjectiveConfig, StyleLoss, Tiling};
use nst_tensor::{Backend, PoolKind, Tensor};
use nst_vgg::Vgg;

/// Largest relative difference of the terms and the total, and the relative L2 difference of
/// the gradients, tiled against untiled.
fn compare<B: Backend>(
    vgg: &Vgg<B>,
    cfg: &ObjectiveConfig,
    images: &Inputs,
    tiling: Tiling,
) -> (f64, f64, usize) {
    let be = vgg.conv_params(0).unwrap().0.backend().clone();
    let conv = vgg.convention();
    let content = images.content.to_model(&be, conv).unwrap();
    let styles: Vec<Tensor<B>> = images
        .styles
        .iter()
        .map(|s| s.to_model(&be, conv).unwrap())
        .collect();
    let x = images.x.to_model(&be, conv).unwrap();
    let whole = Objective::new(vgg, cfg, &content, &styles, &images.blend).unwrap();
    let tiled = Objective::with_tiling(vgg, cfg, &content, &styles, &images.blend, tiling).unwrap();
    let tiles = tiled.plan().unwrap().tiles.len();
    let (terms, grad) = crate::terms::differences(&whole, &tiled, &x);
    eprintln!("{tiling:?}: terms {terms:e} grad {grad:e}");
    (terms, grad, tiles)
}

struct Inputs {
    content: Image,
    styles: Vec<Image>,
    blend: Vec<f64>,
    x: Image,
}

/// Crops of real photos and paintings, `w x h`; the image evaluated is the content with a
/// deterministic perturbation so that every term is non-zero.
fn inputs(w: u32, h: u32) -> Inputs {
    let content = Image::new(
        w as usize,
        h as usize,
        image_crop("tubingen.jpg", 200, 120, w, h),
    )
    .unwrap();
    let s1 = Image::new(
        (w - 30) as usize,
        (h + 10) as usize,
        image_crop("starry_night.jpg", 40, 30, w - 30, h + 10),
    )
    .unwrap();
    let s2 = Image::new(
        (w + 20) as usize,
        (h - 20) as usize,
        image_crop("the_scream.jpg", 10, 60, w + 20, h - 20),
    )
    .unwrap();
    let mut x = content.clone();
    for (i, v) in x.data_mut().iter_mut().enumerate() {
        *v = (*v + ((i * 7919) % 61) as f32 - 30.0).clamp(0.0, 255.0);
    }
    Inputs {
        content,
        styles: vec![s1, s2],
        blend: vec![0.7, 0.3],
        x,
    }
}

fn default_layers_with_multipliers() -> ObjectiveConfig {
    let mut cfg = ObjectiveConfig::default();
    cfg.style_layers[0].1 = 2.0;
    cfg.style_layers[3].1 = 0.5;
    cfg
}

fn shallow_layers() -> ObjectiveConfig {
    let l = |n: &str, m: f64| (n.to_string(), m);
    ObjectiveConfig {
        content_layers: vec![l("relu3_2", 1.0), l("relu2_2", 0.5)],
        style_layers: vec![l("relu1_2", 1.0), l("relu2_1", 3.0), l("relu3_3", 1.0)],
        ..Default::default()
    }
}

#[test]
fn tiled_equals_untiled_f64_max_pooling_default_layers() {
    let vgg = crate::narrow64();
    let cfg = default_layers_with_multipliers();
    // 229 x 165: 4 x 3 tiles of at most 64, neither side a multiple of 16.
    let im = inputs(229, 165);
    let (terms, grad, tiles) = compare(&vgg, &cfg, &im, Tiling::Tiles(64));
    assert_eq!(tiles, 12);
    assert!(terms <= 1e-10, "terms differ by {terms:e}");
    assert!(grad <= 1e-10, "gradient differs by {grad:e}");
    // relu5_1 needs a margin of 70 px, so the halo is 80 (five 16-px steps); 64 is too
    // narrow and must show in the comparison.
    let (terms, grad, _) = compare(
        &vgg,
        &cfg,
        &im,
        Tiling::TilesWithHalo { tile: 64, halo: 64 },
    );
    assert!(
        terms > 1e-8 && grad > 1e-8,
        "a halo of 64 px should be inexact: terms {terms:e}, gradient {grad:e}"
    );
}

#[test]
fn tiled_equals_untiled_f64_avg_pooling_other_layers() {
    let vgg = crate::narrow64().with_pooling(PoolKind::Avg);
    let cfg = shallow_layers();
    // Layers down to relu3_3: alignment 4, margin 18, halo 20. 117 x 93 in tiles of 24.
    let im = inputs(117, 93);
    let (terms, grad, tiles) = compare(&vgg, &cfg, &im, Tiling::Tiles(24));
    assert_eq!(tiles, 5 * 4);
    assert!(terms <= 1e-10, "terms differ by {terms:e}");
    assert!(grad <= 1e-10, "gradient differs by {grad:e}");
    // Keeping no tape (every tile run again in pass 2) and some tapes: the same objective.
    for keep in [0, 7] {
        let (terms, grad, _) = compare(&vgg, &cfg, &im, Tiling::TilesKeeping { tile: 24, keep });
        assert!(terms <= 1e-10, "keep {keep}: terms differ by {terms:e}");
        assert!(grad <= 1e-10, "keep {keep}: gradient differs by {grad:e}");
    }
    let (terms, grad, _) = compare(
        &vgg,
        &cfg,
        &im,
        Tiling::TilesWithHalo { tile: 24, halo: 16 },
    );
    assert!(
        terms > 1e-8 && grad > 1e-8,
        "a halo of 16 px should be inexact: terms {terms:e}, gradient {grad:e}"
    );
}

#[test]
fn tiled_equals_untiled_f32() {
    let path = weights();
    let bytes = std::fs::read(path).unwrap();
    for pooling in [PoolKind::Max, PoolKind::Avg] {
        let vgg = Vgg::from_safetensors(&Cpu::new(2), &bytes)
            .unwrap()
            .with_pooling(pooling);
        let im = inputs(229, 165);
        let (terms, grad, _) = compare(
            &vgg,
            &default_layers_with_multipliers(),
            &im,
            Tiling::Tiles(64),
        );
        assert!(terms <= 1e-5, "{pooling:?}: terms differ by {terms:e}");
        assert!(grad <= 1e-4, "{pooling:?}: gradient differs by {grad:e}");
    }
}

#[test]
fn bad_tile_sizes_are_refused() {
    let path = weights();
    let bytes = std::fs::read(path).unwrap();
    let be = Cpu::new(1);
    let vgg = Vgg::from_safetensors(&be, &bytes).unwrap();
    let im = inputs(64, 48);
    let c = im.content.to_model(&be, vgg.convention()).unwrap();
    let s = im.styles[0].to_model(&be, vgg.convention()).unwrap();
    for bad in [0, 8, 100] {
        let err = Objective::with_tiling(
            &vgg,
            &ObjectiveConfig::default(),
            &c,
            std::slice::from_ref(&s),
            &[],
            Tiling::Tiles(bad),
        )
        .err()
        .expect("refused");
        assert!(err.to_string().contains("multiple of 16"), "{bad}: {err}");
    }
}

#[test]
fn tiled_equals_untiled_f64_w2_blended() {
    // The W2 loss tile by tile (moment sums over the tiles' own positions, seeds from the
    // moment gradients), with two styles blended 0.7 / 0.3.
    let vgg = crate::narrow64();
    let cfg = ObjectiveConfig {
        style_loss: StyleLoss::W2,
        ..default_layers_with_multipliers()
    };
    let im = inputs(229, 165);
    let (terms, grad, tiles) = compare(&vgg, &cfg, &im, Tiling::Tiles(64));
    assert_eq!(tiles, 12);
    assert!(terms <= 1e-10, "terms differ by {terms:e}");
    assert!(grad <= 1e-10, "gradient differs by {grad:e}");
}
