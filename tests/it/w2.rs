//! The W2 style loss on real images: the f32 objective against the f64 one (terms to 1e-4,
//! gradient to 1e-3 relative L2), at a size where relu5_1 has fewer positions than
//! channels and at one where it has more; and the classic gradient normalisation.

use crate::{image_crop, vgg64, weights};
use nst_cpu::{Cpu, Cpu64};
use nst_features::FeatureExtractor;
use nst_style::{Image, Objective, ObjectiveConfig, StyleLoss, Tiling};
use nst_tensor::{Backend, Tensor};
use nst_vgg::Vgg;

fn w2_config() -> ObjectiveConfig {
    ObjectiveConfig {
        style_loss: StyleLoss::W2,
        style_weight: StyleLoss::W2.default_style_weight(),
        ..ObjectiveConfig::default()
    }
}

struct Case {
    content: Image,
    styles: Vec<Image>,
    x: Image,
}

fn case(w: u32, h: u32) -> Case {
    let content = Image::new(
        w as usize,
        h as usize,
        image_crop("tubingen.jpg", 100, 60, w, h),
    )
    .unwrap();
    let s1 = Image::new(
        w as usize,
        h as usize,
        image_crop("starry_night.jpg", 20, 10, w, h),
    )
    .unwrap();
    let s2 = Image::new(
        (w - 8) as usize,
        (h + 8) as usize,
        image_crop("the_scream.jpg", 30, 20, w - 8, h + 8),
    )
    .unwrap();
    let x = Image::new(
        w as usize,
        h as usize,
        image_crop("golden_gate.jpg", 150, 90, w, h),
    )
    .unwrap();
    Case {
        content,
        styles: vec![s1, s2],
        x,
    }
}

fn evaluate<B: Backend>(
    vgg: &Vgg<B>,
    be: &B,
    cfg: &ObjectiveConfig,
    c: &Case,
    blend: &[f64],
) -> (Vec<(String, f64)>, Vec<f64>) {
    let conv = vgg.convention();
    let styles: Vec<Tensor<B>> = c
        .styles
        .iter()
        .map(|s| s.to_model(be, conv).unwrap())
        .collect();
    let o = Objective::new(
        vgg,
        cfg,
        &c.content.to_model(be, conv).unwrap(),
        &styles,
        blend,
    )
    .unwrap();
    let e = o.evaluate(&c.x.to_model(be, conv).unwrap()).unwrap();
    (e.terms, e.grad.to_f64().unwrap())
}

#[test]
fn w2_in_f32_matches_the_f64_reference_at_two_sizes() {
    let bytes = std::fs::read(weights()).unwrap();
    let be32 = Cpu::new(2);
    let vgg32 = Vgg::from_safetensors(&be32, &bytes).unwrap();
    let vgg64 = vgg64();
    let be64 = Cpu64::new(2);
    let cfg = w2_config();
    // 64 x 48: relu5_1 is 4 x 3 = 12 positions for 512 channels (rank-deficient before the
    // ridge); 448 x 336: 28 x 21 = 588 positions.
    for (w, h) in [(64u32, 48u32), (448, 336)] {
        let c = case(w, h);
        let blend = [0.6, 0.4];
        let (t32, g32) = evaluate(&vgg32, &be32, &cfg, &c, &blend);
        let (t64, g64) = evaluate(&vgg64, &be64, &cfg, &c, &blend);
        for ((n, a), (_, b)) in t32.iter().zip(&t64) {
            assert!(*b > 0.0, "{n} is zero");
            let rel = (a - b).abs() / b.abs();
            eprintln!("{w}x{h} {n}: {a:e} vs {b:e} ({rel:.1e})");
            assert!(rel <= 1e-4, "{w}x{h} {n}: {a} vs f64 {b} ({rel:e})");
        }
        let num: f64 = g32.iter().zip(&g64).map(|(u, v)| (u - v) * (u - v)).sum();
        let den: f64 = g64.iter().map(|v| v * v).sum();
        let rel = (num / den).sqrt();
        eprintln!("{w}x{h} gradient: {rel:.1e}");
        assert!(
            rel <= 1e-3,
            "{w}x{h}: gradient differs by {rel:e} (relative L2)"
        );
    }
}

#[test]
fn w2_differs_from_gram_and_refuses_masks() {
    let vgg = vgg64();
    let be = Cpu64::new(2);
    let c = case(40, 32);
    let (gram, _) = evaluate(&vgg, &be, &ObjectiveConfig::default(), &c, &[]);
    let (w2, _) = evaluate(&vgg, &be, &w2_config(), &c, &[]);
    // Same content and TV terms, different style terms.
    assert_eq!(gram[0], w2[0]);
    assert_eq!(gram.last(), w2.last());
    assert!(gram[1..6].iter().zip(&w2[1..6]).all(|(a, b)| a.1 != b.1));
    let conv = vgg.convention();
    let s = c.styles[0].to_model(&be, conv).unwrap();
    let ones = Tensor::from_f64(&be, &vec![1.0; 40 * 32], [1, 1, 32, 40]).unwrap();
    let err = Objective::new(
        &vgg,
        &w2_config(),
        &c.content.to_model(&be, conv).unwrap(),
        std::slice::from_ref(&s),
        &[],
    )
    .unwrap()
    .with_regions(&[ones], std::slice::from_ref(&s), &[])
    .err()
    .expect("masks with W2 are refused");
    assert!(err.to_string().contains("Gram"), "{err}");
}

#[test]
fn normalized_gradients_are_the_unit_l1_layer_gradients_weighted() {
    // Content only: the image gradient with normalisation is the plain one divided by the L1
    // norm of the unweighted content gradient at relu4_2, 2(F − P)/N (backpropagation is
    // linear), and the terms are unchanged.
    let vgg = vgg64();
    let be = Cpu64::new(2);
    let conv = vgg.convention();
    let c = case(48, 40);
    let plain = ObjectiveConfig {
        style_layers: Vec::new(),
        tv_weight: 0.0,
        ..ObjectiveConfig::default()
    };
    let normalized = ObjectiveConfig {
        normalize_gradients: true,
        ..plain.clone()
    };
    let (ta, ga) = evaluate(&vgg, &be, &plain, &c, &[]);
    let (tb, gb) = evaluate(&vgg, &be, &normalized, &c, &[]);
    assert_eq!(ta, tb);
    let fx = FeatureExtractor::new(&vgg, &["relu4_2"]).unwrap();
    let f = fx.extract(&c.x.to_model(&be, conv).unwrap()).unwrap();
    let p = fx.extract(&c.content.to_model(&be, conv).unwrap()).unwrap();
    let (f, p) = (
        f.get("relu4_2").unwrap().to_f64().unwrap(),
        p.get("relu4_2").unwrap().to_f64().unwrap(),
    );
    let n = f.len() as f64;
    let l1: f64 = f
        .iter()
        .zip(&p)
        .map(|(a, b)| (2.0 * (a - b) / n).abs())
        .sum();
    let scale = 1.0 / (l1 + 1e-8);
    assert!(
        (scale - 1.0).abs() > 0.5,
        "the test would not see the normalisation"
    );
    for (a, b) in ga.iter().zip(&gb) {
        assert!(
            (a * scale - b).abs() <= 1e-9 * (a * scale).abs().max(1e-12),
            "{a} · {scale} vs {b}"
        );
    }
    // Tiled objectives refuse it.
    let s = c.styles[0].to_model(&be, conv).unwrap();
    assert!(Objective::with_tiling(
        &vgg,
        &normalized,
        &c.content.to_model(&be, conv).unwrap(),
        &[s],
        &[],
        Tiling::Tiles(32)
    )
    .is_err());
}
