//! Spatial control: region masks. A full mask is exactly the unmasked objective (f64, bit
//! for bit); two complementary masks paint each half in its own style.

use crate::{image_crop, vgg64, weights};
use nst_autodiff::Tape;
use nst_cpu::{Cpu, Cpu64};
use nst_features::FeatureExtractor;
use nst_style::{Image, Objective, ObjectiveConfig, RenderConfig, RenderSession};
use nst_tensor::{PoolKind, Tensor};
use nst_vgg::Vgg;

#[test]
fn one_full_mask_is_exactly_the_unmasked_objective() {
    let vgg = vgg64();
    let be = Cpu64::new(2);
    let conv = vgg.convention();
    let (w, h) = (40, 32);
    let content = Image::new(w, h, image_crop("tubingen.jpg", 300, 150, 40, 32)).unwrap();
    let style = Image::new(36, 36, image_crop("starry_night.jpg", 100, 80, 36, 36)).unwrap();
    let x = Image::new(w, h, image_crop("golden_gate.jpg", 200, 100, 40, 32)).unwrap();
    let cfg = ObjectiveConfig::default();
    let (c, s) = (
        content.to_model(&be, conv).unwrap(),
        style.to_model(&be, conv).unwrap(),
    );
    let plain = Objective::new(&vgg, &cfg, &c, std::slice::from_ref(&s), &[]).unwrap();
    let ones = Tensor::from_f64(&be, &vec![1.0; w * h], [1, 1, h, w]).unwrap();
    let masked = Objective::new(&vgg, &cfg, &c, std::slice::from_ref(&s), &[])
        .unwrap()
        .with_regions(&[ones], std::slice::from_ref(&s), &[])
        .unwrap();
    let xt = x.to_model(&be, conv).unwrap();
    let (a, b) = (plain.evaluate(&xt).unwrap(), masked.evaluate(&xt).unwrap());
    assert_eq!(a.terms, b.terms);
    assert_eq!(a.total.to_bits(), b.total.to_bits());
    assert_eq!(a.grad.to_f64().unwrap(), b.grad.to_f64().unwrap());
    // Style masks of ones change nothing either.
    let style_ones = Tensor::from_f64(&be, &vec![1.0; 36 * 36], [1, 1, 36, 36]).unwrap();
    let ones = Tensor::from_f64(&be, &vec![1.0; w * h], [1, 1, h, w]).unwrap();
    let both = Objective::new(&vgg, &cfg, &c, std::slice::from_ref(&s), &[])
        .unwrap()
        .with_regions(&[ones], std::slice::from_ref(&s), &[style_ones])
        .unwrap();
    let e = both.evaluate(&xt).unwrap();
    assert_eq!(a.terms, e.terms);
    assert_eq!(a.grad.to_f64().unwrap(), e.grad.to_f64().unwrap());
    // A style mask that is not its style's size is refused.
    let small = Tensor::from_f64(&be, &[1.0; 4], [1, 1, 2, 2]).unwrap();
    let ones = Tensor::from_f64(&be, &vec![1.0; w * h], [1, 1, h, w]).unwrap();
    assert!(
        Objective::new(&vgg, &cfg, &c, std::slice::from_ref(&s), &[])
            .unwrap()
            .with_regions(&[ones], std::slice::from_ref(&s), &[small])
            .is_err()
    );
    // Masks that do not match are refused.
    let wrong = Tensor::from_f64(&be, &[1.0; 4], [1, 1, 2, 2]).unwrap();
    assert!(
        Objective::new(&vgg, &cfg, &c, std::slice::from_ref(&s), &[])
            .unwrap()
            .with_regions(&[wrong], std::slice::from_ref(&s), &[])
            .is_err()
    );
}

/// The guided Gram distances at relu2_1 of `img`'s region `mask` to each style.
fn distances(vgg: &Vgg<Cpu>, img: &Image, mask: &Tensor<Cpu>, styles: &[Image]) -> Vec<f64> {
    let be = Cpu::new(2);
    let conv = vgg.convention();
    let fx = FeatureExtractor::new(vgg, &["relu2_1"]).unwrap();
    let tape = Tape::new();
    let f = fx.extract(&img.to_model(&be, conv).unwrap()).unwrap();
    let f = tape.constant(f.get("relu2_1").unwrap().clone());
    let m = mask.pool2d(PoolKind::Avg, 2, 2).unwrap();
    let g = nst_loss::guided_gram(&f, &m).unwrap().value().clone();
    styles
        .iter()
        .map(|s| {
            let sf = fx.extract(&s.to_model(&be, conv).unwrap()).unwrap();
            let a = nst_loss::gram_tensor(sf.get("relu2_1").unwrap()).unwrap();
            g.sub(&a)
                .unwrap()
                .square()
                .unwrap()
                .mean()
                .unwrap()
                .scalar()
                .unwrap()
        })
        .collect()
}

#[test]
fn complementary_masks_paint_each_half_in_its_own_style() {
    let be = Cpu::new(2);
    let vgg = Vgg::from_safetensors(&be, &std::fs::read(weights()).unwrap()).unwrap();
    let (w, h) = (48, 32);
    let content = Image::new(w, h, image_crop("tubingen.jpg", 300, 150, 48, 32)).unwrap();
    let styles = [
        Image::new(40, 40, image_crop("starry_night.jpg", 100, 80, 40, 40)).unwrap(),
        Image::new(40, 40, image_crop("the_scream.jpg", 150, 200, 40, 40)).unwrap(),
    ];
    let half = |left: bool| -> Image {
        let data = (0..w * h)
            .flat_map(|p| {
                let v = if (p % w < w / 2) == left { 255.0 } else { 0.0 };
                [v; 3]
            })
            .collect();
        Image::new(w, h, data).unwrap()
    };
    let cfg = RenderConfig {
        content_masks: vec![half(true), half(false)],
        ..RenderConfig::single_scale(40)
    };
    let mut s = RenderSession::new(&be, &vgg, &content, &styles, &cfg).unwrap();
    while s.step().unwrap().is_some() {}
    let out = s.finish().unwrap().image;
    let left = nst_style::region_mask(&be, &half(true), w, h).unwrap();
    let right = nst_style::region_mask(&be, &half(false), w, h).unwrap();
    let (dl, dr) = (
        distances(&vgg, &out, &left, &styles),
        distances(&vgg, &out, &right, &styles),
    );
    assert!(
        dl[0] < dl[1],
        "left half: to style 1 {} vs style 2 {}",
        dl[0],
        dl[1]
    );
    assert!(
        dr[1] < dr[0],
        "right half: to style 2 {} vs style 1 {}",
        dr[1],
        dr[0]
    );
    // A blend with masks, or a mask count that does not match, is refused.
    let blended = RenderConfig {
        style_blend: vec![1.0, 1.0],
        ..cfg.clone()
    };
    assert!(RenderSession::new(&be, &vgg, &content, &styles, &blended).is_err());
    let one = RenderConfig {
        content_masks: vec![half(true)],
        ..cfg
    };
    assert!(RenderSession::new(&be, &vgg, &content, &styles, &one).is_err());
}
