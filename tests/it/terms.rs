//! The open objective: every term, alone and combined, evaluated tile by tile equals the
//! untiled evaluation in f64 to 1e-10 (loss and image gradient), with tiles small enough that
//! every layer is cut, on odd image sizes; region masks and the temporal term included, and
//! in f32 within the tiled objective's documented bounds; for both schedules, the whole
//! network in tiles and the shallow part in tiles with the deep part whole.

use crate::{image_crop, narrow64, vgg64, weights};
use nst_cpu::Cpu;
use nst_loss::{content_term, gram_term, temporal_term, tv_term, w2_term, GramRegion, Term};
use nst_style::{targets, Image, Objective, ObjectiveConfig, Tiling};
use nst_tensor::{Backend, PoolKind, Tensor};
use nst_vgg::Vgg;

/// Largest relative difference of the terms and the total, and the relative L2 difference of
/// the gradients, of two objectives at `x`; every term must be non-zero.
pub(crate) fn differences<B: Backend>(
    a: &Objective<B>,
    b: &Objective<B>,
    x: &Tensor<B>,
) -> (f64, f64) {
    let (a, b) = (a.evaluate(x).unwrap(), b.evaluate(x).unwrap());
    assert_eq!(a.terms.len(), b.terms.len());
    let rel = |u: f64, v: f64| (u - v).abs() / u.abs().max(1e-300);
    let mut worst = rel(a.total, b.total);
    for ((na, va), (nb, vb)) in a.terms.iter().zip(&b.terms) {
        assert_eq!(na, nb);
        assert!(*va > 0.0, "{na} is zero: the test would not see it");
        worst = worst.max(rel(*va, *vb));
    }
    let (ga, gb) = (a.grad.to_f64().unwrap(), b.grad.to_f64().unwrap());
    let num: f64 = ga.iter().zip(&gb).map(|(u, v)| (u - v) * (u - v)).sum();
    let den: f64 = ga.iter().map(|u| u * u).sum();
    (worst, (num / den).sqrt())
}

/// `w x h` crops: the content, two styles, the evaluated image, and two soft complementary
/// masks (a left-to-right ramp), in model space.
struct Case<B: Backend> {
    content: Tensor<B>,
    styles: Vec<Tensor<B>>,
    x: Tensor<B>,
    masks: Vec<Tensor<B>>,
    style_masks: Vec<Tensor<B>>,
}

fn ramp<B: Backend>(be: &B, w: usize, h: usize) -> [Tensor<B>; 2] {
    let left: Vec<f64> = (0..w * h)
        .map(|i| 0.1 + 0.8 * (i % w) as f64 / (w - 1) as f64)
        .collect();
    let right: Vec<f64> = left.iter().map(|v| 1.0 - v).collect();
    [
        Tensor::from_f64(be, &left, [1, 1, h, w]).unwrap(),
        Tensor::from_f64(be, &right, [1, 1, h, w]).unwrap(),
    ]
}

fn case<B: Backend>(vgg: &Vgg<B>, be: &B, w: u32, h: u32) -> Case<B> {
    let conv = vgg.convention();
    let img = |name: &str, x0: u32, y0: u32, w: u32, h: u32| {
        Image::new(w as usize, h as usize, image_crop(name, x0, y0, w, h))
            .unwrap()
            .to_model(be, conv)
            .unwrap()
    };
    let (sw, sh) = (w - 20, h + 12);
    Case {
        content: img("tubingen.jpg", 200, 120, w, h),
        styles: vec![
            img("starry_night.jpg", 40, 30, sw, sh),
            img("the_scream.jpg", 10, 60, sw, sh),
        ],
        x: img("golden_gate.jpg", 150, 90, w, h),
        masks: ramp(be, w as usize, h as usize).to_vec(),
        style_masks: ramp(be, sw as usize, sh as usize).to_vec(),
    }
}

/// The classic objective with the case's two masks and style masks, and a temporal term.
fn masked_temporal<B: Backend>(
    vgg: &Vgg<B>,
    c: &Case<B>,
    target: &Tensor<B>,
    weights: &Tensor<B>,
    tiling: Tiling,
) -> Objective<B> {
    Objective::with_tiling(
        vgg,
        &ObjectiveConfig::default(),
        &c.content,
        &c.styles,
        &[],
        tiling,
    )
    .unwrap()
    .with_regions(&c.masks, &c.styles, &c.style_masks)
    .unwrap()
    .with_temporal(target, weights, 4.0)
    .unwrap()
}

/// Makes a term anew (a term is used once per objective).
type MakeTerm<'a> = Box<dyn Fn() -> Term<nst_cpu::Cpu64> + 'a>;

/// Each kind of term alone (from its own list) and the classic objective with masks, style
/// masks and the temporal term, tiled and untiled.
#[test]
fn every_term_alone_and_combined_tiles_exactly_in_f64() {
    let vgg = narrow64();
    let be = vgg.conv_params(0).unwrap().0.backend().clone();
    // 133 x 101 in tiles of 32: 5 x 4 tiles, neither side a multiple of the alignment.
    let (w, h) = (133usize, 101usize);
    let c = case(&vgg, &be, w as u32, h as u32);
    let tiles = Tiling::Tiles(32);
    let feats = |layers: &[&str]| targets::features(&vgg, &c.content, layers, Tiling::Off).unwrap();
    let gram = |layer: &str| {
        let plain = nst_loss::GramStatistic::plain();
        let (s, n) = targets::statistic(&vgg, &c.styles[0], &[layer], &plain, tiles).unwrap();
        let cc = s[0].dims()[0];
        s[0].scale(1.0 / (cc * n[0]) as f64).unwrap()
    };
    let w2 = |layer: &str| {
        let f = targets::features(&vgg, &c.styles[1], &[layer], Tiling::Off).unwrap();
        nst_loss::W2Target::new(&nst_loss::Moments::of(&f[0]).unwrap()).unwrap()
    };
    let target = c.styles[0].narrow(2, 0, h).unwrap();
    let target = target
        .narrow_backward(3, 0, w)
        .unwrap()
        .offset(3.0)
        .unwrap();
    let weights = c.masks[0].clone();
    let alone: Vec<(&str, MakeTerm<'_>)> = vec![
        (
            "content",
            Box::new(|| content_term("relu3_1", feats(&["relu3_1"]).remove(0), 2.0)),
        ),
        (
            "gram",
            Box::new(|| {
                let region = GramRegion {
                    mask: None,
                    target: gram("relu4_1"),
                    weight: 1.0,
                };
                gram_term("relu4_1", vec![region], 3.0).unwrap()
            }),
        ),
        ("w2", Box::new(|| w2_term("relu2_1", w2("relu2_1"), 1.5))),
        ("tv", Box::new(|| tv_term(0.7))),
        (
            "temporal",
            Box::new(|| temporal_term(target.clone(), &weights, 4.0).unwrap()),
        ),
    ];
    for (name, make) in &alone {
        let whole = Objective::from_terms(&vgg, vec![make()], (w, h), Tiling::Off).unwrap();
        let tiled = Objective::from_terms(&vgg, vec![make()], (w, h), tiles).unwrap();
        assert!(tiled.plan().unwrap().tiles.len() >= 4, "{name}");
        let (terms, grad) = differences(&whole, &tiled, &c.x);
        eprintln!("{name}: terms {terms:e} gradient {grad:e}");
        assert!(
            terms <= 1e-10 && grad <= 1e-10,
            "{name}: terms {terms:e}, gradient {grad:e}"
        );
    }
    // All of them at once, in one objective.
    let all = |tiling| {
        let terms = alone.iter().map(|(_, make)| make()).collect();
        Objective::from_terms(&vgg, terms, (w, h), tiling).unwrap()
    };
    let (terms, grad) = differences(&all(Tiling::Off), &all(tiles), &c.x);
    assert!(
        terms <= 1e-10 && grad <= 1e-10,
        "all: terms {terms:e}, gradient {grad:e}"
    );

    // The classic objective with two soft complementary masks, style masks, and the
    // temporal term, under max and average pooling; relu5_1 is cut too (tiles of 48).
    // Each schedule under one pooling (both schedules under both would double the time).
    for (pooling, tiling) in [
        (PoolKind::Max, Tiling::Tiles(48)),
        (PoolKind::Avg, Tiling::Shallow(48)),
    ] {
        let vgg = narrow64().with_pooling(pooling);
        let classic = |tiling| masked_temporal(&vgg, &c, &target, &weights, tiling);
        let tiled = classic(tiling);
        assert_eq!(tiled.plan().unwrap().tiles.len(), 9);
        let (terms, grad) = differences(&classic(Tiling::Off), &tiled, &c.x);
        eprintln!("masked + temporal, {pooling:?} {tiling:?}: terms {terms:e} gradient {grad:e}");
        assert!(
            terms <= 1e-10 && grad <= 1e-10,
            "{pooling:?} {tiling:?}: terms {terms:e}, gradient {grad:e}"
        );
    }
}

/// Masks and the temporal term in f32: tiled against untiled within the tiled objective's
/// bounds (1e-5 for the terms, 1e-4 relative L2 for the gradient).
#[test]
fn masked_and_temporal_tile_in_f32() {
    let bytes = std::fs::read(weights()).unwrap();
    let be = Cpu::new(2);
    let vgg = Vgg::from_safetensors(&be, &bytes).unwrap();
    let (w, h) = (181usize, 133usize);
    let c = case(&vgg, &be, w as u32, h as u32);
    let target = c.content.offset(5.0).unwrap();
    let classic = |tiling| masked_temporal(&vgg, &c, &target, &c.masks[1], tiling);
    let whole = classic(Tiling::Off);
    for tiling in [Tiling::Tiles(64), Tiling::Shallow(64)] {
        let (terms, grad) = differences(&whole, &classic(tiling), &c.x);
        eprintln!("f32 masked + temporal, {tiling:?}: terms {terms:e} gradient {grad:e}");
        assert!(terms <= 1e-5, "{tiling:?}: terms differ by {terms:e}");
        assert!(grad <= 1e-4, "{tiling:?}: gradient differs by {grad:e}");
    }
}

/// Terms that cannot tile are refused on a tiled objective, and a user term's layers set the
/// halo: a term reading relu5_1 widens it.
#[test]
fn tiling_follows_the_terms() {
    let vgg = vgg64();
    let be = vgg.conv_params(0).unwrap().0.backend().clone();
    let t = Tensor::zeros(&be, [1, 256, 12, 16]).unwrap();
    let normalized = content_term("relu3_1", t.clone(), 1.0).normalized();
    let err = Objective::from_terms(&vgg, vec![normalized], (64, 48), Tiling::Tiles(32))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("untiled"), "{err}");
    let o = Objective::from_terms(
        &vgg,
        vec![content_term("relu3_1", t, 1.0)],
        (64, 48),
        Tiling::Tiles(32),
    )
    .unwrap();
    let narrow = o.plan().unwrap().halo;
    let g = Tensor::zeros(&be, [512, 512]).unwrap();
    let region = GramRegion {
        mask: None,
        target: g,
        weight: 1.0,
    };
    let o = o
        .with_term(gram_term("relu5_1", vec![region], 1.0).unwrap())
        .unwrap();
    let wide = o.plan().unwrap().halo;
    assert!(wide > narrow, "halo {narrow} -> {wide}");
    // Two terms of one name, and an unknown layer, are errors.
    let err = o
        .with_term(tv_term(1.0))
        .unwrap()
        .with_term(tv_term(2.0))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("two terms"), "{err}");
    let bad = Term::local("odd", &["relu9_9"], 1.0, NoLoss);
    assert!(Objective::from_terms(&vgg, vec![bad], (64, 48), Tiling::Off).is_err());
    // A term across pool3 under `Shallow`: whole-network tiles, equal to the untiled
    // evaluation.
    let x = Tensor::from_f64(
        &be,
        &(0..3 * 48 * 64)
            .map(|i| ((i * 37) % 101) as f64 - 50.0)
            .collect::<Vec<_>>(),
        [1, 3, 48, 64],
    )
    .unwrap();
    let across = || Term::local("across", &["relu2_1", "relu4_1"], 1.0, NoLoss);
    let whole = Objective::from_terms(&vgg, vec![across()], (64, 48), Tiling::Off).unwrap();
    let tiled = Objective::from_terms(&vgg, vec![across()], (64, 48), Tiling::Shallow(32)).unwrap();
    assert_eq!(
        tiled.plan().unwrap().halo,
        32,
        "relu4_1's halo, not pool3's"
    );
    let (a, b) = (whole.evaluate(&x).unwrap(), tiled.evaluate(&x).unwrap());
    assert!(
        (a.total - b.total).abs() <= 1e-10 * a.total.abs(),
        "{} vs {}",
        a.total,
        b.total
    );
}

/// A local term over any layers: the sum of the owned activations of each.
struct NoLoss;

/// The sum of the owned activations of every layer read.
impl<B: Backend> nst_loss::Local<B> for NoLoss {
    fn loss<'t>(
        &self,
        inputs: &[nst_autodiff::Var<'t, B>],
        sites: &[nst_loss::Site],
    ) -> nst_tensor::Result<nst_autodiff::Var<'t, B>> {
        let mut total = sites[0].own(&inputs[0])?.sum()?;
        for (f, s) in inputs.iter().zip(sites).skip(1) {
            if s.owned() > 0 {
                total = total.add(&s.own(f)?.sum()?)?;
            }
        }
        Ok(total)
    }
}

/// The classic objective with the nearest-neighbour style loss at its defaults, but for the
/// refresh interval and augmentation.
pub(crate) fn nn_config(refresh: usize, augment: bool) -> ObjectiveConfig {
    ObjectiveConfig {
        style_loss: nst_style::StyleLoss::Nn,
        style_layers: nst_style::StyleLoss::Nn.default_style_layers(),
        style_weight: nst_style::NN_DEFAULT_STYLE_WEIGHT,
        nn: nst_style::NnConfig { refresh, augment },
        ..ObjectiveConfig::default()
    }
}

/// The nearest-neighbour loss: its targets found tile by tile equal those found on the whole
/// image, and with them the classic objective with `--style-loss nn` tiles exactly in f64
/// (loss and gradient), under both schedules (its hypercolumn straddles pool3, so `Shallow`
/// runs whole-network tiles), on odd sizes where the layers' grids do not nest evenly.
#[test]
fn nearest_neighbour_targets_and_term_tile_exactly_in_f64() {
    let vgg = narrow64();
    let be = vgg.conv_params(0).unwrap().0.backend().clone();
    let (w, h) = (133usize, 101usize);
    let c = case(&vgg, &be, w as u32, h as u32);
    let cfg = nn_config(50, false);
    let layout = nst_style::nn::hypercolumn(&vgg, &cfg.style_layers).unwrap();
    let style = std::sync::Arc::new(
        nst_style::nn::style_set(&vgg, &layout, &c.styles, &[], false, Tiling::Off).unwrap(),
    );
    let find = |tiling| {
        nst_style::nn::nn_targets(&vgg, &layout, style.clone(), &c.x, tiling)
            .unwrap()
            .index
    };
    let whole = find(Tiling::Off);
    assert_eq!(whole.len(), (h / 8 * 2) * (w / 8 * 2));
    assert_eq!(
        whole,
        find(Tiling::Tiles(32)),
        "targets found tile by tile differ"
    );
    // Not every position matched one style hypercolumn.
    assert!(whole.iter().any(|&j| j != whole[0]));
    let objective =
        |tiling| Objective::with_tiling(&vgg, &cfg, &c.content, &c.styles, &[], tiling).unwrap();
    let untiled = objective(Tiling::Off);
    for tiling in [Tiling::Tiles(32), Tiling::Shallow(32)] {
        let tiled = objective(tiling);
        assert!(tiled.plan().unwrap().tiles.len() >= 12, "{tiling:?}");
        let (terms, grad) = differences(&untiled, &tiled, &c.x);
        eprintln!("nn, {tiling:?}: terms {terms:e} gradient {grad:e}");
        assert!(
            terms <= 1e-10 && grad <= 1e-10,
            "{tiling:?}: terms {terms:e}, gradient {grad:e}"
        );
    }
    // Refreshed for another image, both follow it and still agree.
    let mut a = objective(Tiling::Off);
    let mut b = objective(Tiling::Tiles(32));
    assert_eq!(a.refresh_every(), Some(cfg.nn.refresh));
    assert!(a.refresh(&c.x).unwrap() && b.refresh(&c.x).unwrap());
    assert!(
        !a.refresh(&c.x).unwrap(),
        "the same image again changes nothing"
    );
    let before = untiled.evaluate(&c.x).unwrap().total;
    let after = a.evaluate(&c.x).unwrap().total;
    assert!(
        after < before,
        "matched for x, the loss at x falls: {before} -> {after}"
    );
    let (terms, grad) = differences(&a, &b, &c.x);
    assert!(
        terms <= 1e-10 && grad <= 1e-10,
        "refreshed: {terms:e} {grad:e}"
    );
}

/// The nearest-neighbour loss refuses what it cannot use, with a clear message.
#[test]
fn nearest_neighbour_bad_input_is_an_error() {
    let vgg = vgg64();
    let be = vgg.conv_params(0).unwrap().0.backend().clone();
    let c = case(&vgg, &be, 64, 48);
    let cfg = nn_config(50, false);
    let tiny = c.styles[0]
        .narrow(2, 0, 6)
        .unwrap()
        .narrow(3, 0, 6)
        .unwrap();
    let err = Objective::new(&vgg, &cfg, &c.content, &[tiny], &[])
        .err()
        .expect("a 6 px style is refused")
        .to_string();
    assert!(err.contains("too small"), "{err}");
    let zero = nn_config(0, false);
    let err = Objective::new(&vgg, &zero, &c.content, &c.styles, &[])
        .err()
        .expect("refresh 0 is refused")
        .to_string();
    assert!(err.contains("at least 1"), "{err}");
    let bad = ObjectiveConfig {
        style_layers: vec![("relu4_1".into(), -1.0)],
        ..cfg.clone()
    };
    assert!(Objective::new(&vgg, &bad, &c.content, &c.styles, &[]).is_err());
    // Masks are a Gram-loss feature.
    let o = Objective::new(&vgg, &cfg, &c.content, &c.styles, &[]).unwrap();
    let err = o
        .with_regions(&c.masks, &c.styles, &[])
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("gram"), "{err}");
}
