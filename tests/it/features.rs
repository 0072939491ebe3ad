//! VGG19 activations against an independent direct computation in f64 on real images.

use super::{image_crop, vgg64, weights};
use nst_cpu::{Cpu, Cpu64};
use nst_features::FeatureExtractor;
use nst_tensor::{PoolKind, Tensor};
use nst_vgg::{InputConvention, LayerOp, Vgg};

/// Reference 3x3 convolution (padding 1) + bias, optionally followed by ReLU, in f64.
fn ref_conv(
    x: &[f64],
    c: usize,
    h: usize,
    w: usize,
    wt: &[f64],
    b: &[f64],
    relu: bool,
) -> Vec<f64> {
    let o = b.len();
    let mut y = vec![0.0; o * h * w];
    for oc in 0..o {
        for i in 0..h {
            for j in 0..w {
                let mut acc = b[oc];
                for ic in 0..c {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (yy, xx) =
                                (i as isize + ky as isize - 1, j as isize + kx as isize - 1);
                            if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                                acc += wt[((oc * c + ic) * 3 + ky) * 3 + kx]
                                    * x[(ic * h + yy as usize) * w + xx as usize];
                            }
                        }
                    }
                }
                y[(oc * h + i) * w + j] = if relu { acc.max(0.0) } else { acc };
            }
        }
    }
    y
}

fn ref_maxpool(x: &[f64], c: usize, h: usize, w: usize) -> Vec<f64> {
    let (oh, ow) = (h / 2, w / 2);
    let mut y = vec![0.0; c * oh * ow];
    for ch in 0..c {
        for i in 0..oh {
            for j in 0..ow {
                let at = |a: usize, b: usize| x[(ch * h + 2 * i + a) * w + 2 * j + b];
                y[(ch * oh + i) * ow + j] = at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
            }
        }
    }
    y
}

/// Model-space input computed here, independently of `InputConvention`: BGR minus the Caffe
/// mean pixel.
fn caffe_input(rgb: &[f32], h: usize, w: usize) -> Vec<f64> {
    let mean = [103.939, 116.779, 123.68];
    let mut out = vec![0.0; 3 * h * w];
    for c in 0..3 {
        for p in 0..h * w {
            out[c * h * w + p] = rgb[p * 3 + (2 - c)] as f64 - mean[c];
        }
    }
    out
}

fn params(vgg: &Vgg<Cpu64>, name: &str) -> (Vec<f64>, Vec<f64>) {
    let (w, b) = vgg.conv_params(vgg.layer_index(name).unwrap()).unwrap();
    (w.to_f64().unwrap(), b.to_f64().unwrap())
}

#[test]
fn whole_network_matches_a_naive_forward_pass_on_a_crop() {
    let vgg = vgg64();
    assert_eq!(vgg.convention(), InputConvention::CaffeBgr);
    let (w, h) = (37, 35);
    let rgb = image_crop("tubingen.jpg", 300, 150, w as u32, h as u32);
    let x = caffe_input(&rgb, h, w);

    // Naive reference through every layer, remembering each output.
    let mut refs = Vec::new();
    let (mut cur, mut c, mut hh, mut ww) = (x.clone(), 3, h, w);
    for layer in vgg.layers() {
        match layer.op {
            LayerOp::Conv { cout, .. } => {
                let (wt, b) = params(&vgg, &layer.name);
                cur = ref_conv(&cur, c, hh, ww, &wt, &b, false);
                c = cout;
            }
            LayerOp::Relu => cur.iter_mut().for_each(|v| *v = v.max(0.0)),
            LayerOp::Pool => {
                cur = ref_maxpool(&cur, c, hh, ww);
                hh /= 2;
                ww /= 2;
            }
        }
        refs.push((layer.name.clone(), cur.clone()));
    }

    let names: Vec<&str> = refs.iter().map(|(n, _)| n.as_str()).collect();
    let fx = FeatureExtractor::new(&vgg, &names).unwrap();
    let input = Tensor::from_f64(&Cpu64::new(2), &x, [1, 3, h, w]).unwrap();
    let feats = fx.extract(&input).unwrap();
    assert_eq!(feats.len(), refs.len());
    for (name, want) in &refs {
        let got = feats.get(name).unwrap().to_f64().unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        let scale = want.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-9 * scale,
            "{name}: max error {err:e} (scale {scale:e})"
        );
    }
    // The deepest layer exists and is not trivially zero.
    let last = feats.get("pool5").unwrap();
    assert_eq!(last.dims(), &[1, 512, 1, 1]);
}

#[test]
fn f32_features_match_f64_at_sampled_positions_on_a_real_image() {
    let path = weights();
    let bytes = std::fs::read(path).unwrap();
    let vgg32 = Vgg::from_safetensors(&Cpu::new(2), &bytes).unwrap();
    let vgg64 = Vgg::from_safetensors(&Cpu64::new(2), &bytes).unwrap();
    let (w, h) = (160, 120);
    let rgb = image_crop("starry_night.jpg", 100, 60, w as u32, h as u32);
    let x = caffe_input(&rgb, h, w);
    // Direct f64 reference for relu1_1 and relu1_2 at sampled positions.
    let (w11, b11) = params(&vgg64, "conv1_1");
    let (w12, b12) = params(&vgg64, "conv1_2");
    let r11 = ref_conv(&x, 3, h, w, &w11, &b11, true);
    let r12 = ref_conv(&r11, 64, h, w, &w12, &b12, true);

    let x32: Vec<f32> = InputConvention::CaffeBgr.to_model(&rgb, h, w);
    for (a, b) in x32.iter().zip(&x) {
        assert!((*a as f64 - b).abs() < 1e-3);
    }
    let fx = FeatureExtractor::new(&vgg32, &["relu1_1", "relu1_2", "relu5_1"]).unwrap();
    let feats = fx
        .extract(&Tensor::from_f32(&Cpu::new(2), &x32, [1, 3, h, w]).unwrap())
        .unwrap();
    let f11 = feats.get("relu1_1").unwrap().to_f64().unwrap();
    let f12 = feats.get("relu1_2").unwrap().to_f64().unwrap();
    let mut checked = 0;
    for idx in (0..r12.len()).step_by(997) {
        assert!(
            (f11[idx] - r11[idx]).abs() <= 1e-3 + 1e-5 * r11[idx].abs(),
            "relu1_1[{idx}]"
        );
        assert!(
            (f12[idx] - r12[idx]).abs() <= 1e-2 + 1e-5 * r12[idx].abs(),
            "relu1_2[{idx}]"
        );
        checked += 1;
    }
    assert!(checked > 500);
    // f32 against f64 through the whole stack to relu5_1.
    let f64x = Tensor::from_f64(&Cpu64::new(2), &x, [1, 3, h, w]).unwrap();
    let deep64 = FeatureExtractor::new(&vgg64, &["relu5_1"])
        .unwrap()
        .extract(&f64x)
        .unwrap();
    let a = feats.get("relu5_1").unwrap().to_f64().unwrap();
    let b = deep64.get("relu5_1").unwrap().to_f64().unwrap();
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(&b)
        .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
    assert!(
        scale > 1.0 && err <= 1e-4 * scale,
        "relu5_1 f32 vs f64: {err} of {scale}"
    );
}

#[test]
fn odd_sizes_pass_all_five_pools() {
    let (w, h) = (127, 67);
    let rgb = image_crop("the_scream.jpg", 10, 10, w as u32, h as u32);
    let x = Tensor::from_f64(&Cpu64::new(2), &caffe_input(&rgb, h, w), [1, 3, h, w]).unwrap();
    for kind in [PoolKind::Max, PoolKind::Avg] {
        let vgg = vgg64();
        let vgg = vgg.with_pooling(kind);
        let fx =
            FeatureExtractor::new(&vgg, &["pool1", "pool2", "pool3", "pool4", "pool5"]).unwrap();
        let f = fx.extract(&x).unwrap();
        let dims: Vec<Vec<usize>> = f.iter().map(|(_, t)| t.dims().to_vec()).collect();
        assert_eq!(
            dims,
            vec![
                vec![1, 64, 33, 63],
                vec![1, 128, 16, 31],
                vec![1, 256, 8, 15],
                vec![1, 512, 4, 7],
                vec![1, 512, 2, 3]
            ],
            "{kind:?}"
        );
    }
}

#[test]
fn unknown_layers_list_the_valid_ones() {
    let vgg = vgg64();
    let err = FeatureExtractor::new(&vgg, &["relu1_1", "relu6_1"])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("relu6_1") && err.contains("relu5_4") && err.contains("pool5"),
        "{err}"
    );
}

#[test]
fn taped_features_match_and_differentiate() {
    let vgg = vgg64();
    let (w, h) = (24, 20);
    let rgb = image_crop("tubingen.jpg", 200, 200, w as u32, h as u32);
    let x = Tensor::from_f64(&Cpu64::new(2), &caffe_input(&rgb, h, w), [1, 3, h, w]).unwrap();
    let fx = FeatureExtractor::new(&vgg, &["relu2_1"]).unwrap();
    let plain = fx.extract(&x).unwrap();
    let tape = nst_autodiff::Tape::new();
    let xv = tape.var(x.clone());
    let fv = fx.extract_var(&xv).unwrap();
    let a = fv.get("relu2_1").unwrap();
    assert_eq!(
        a.value().to_f64().unwrap(),
        plain.get("relu2_1").unwrap().to_f64().unwrap()
    );
    let loss = a.square().unwrap().mean().unwrap();
    let g = tape.backward(&loss).unwrap();
    let grad = g.get(&xv).unwrap().to_f64().unwrap();
    assert!(grad.iter().any(|v| v.abs() > 0.0));
    // One central difference on a pixel.
    let e = 5 * w + 7;
    let eval = |d: f64| {
        let mut v = x.to_f64().unwrap();
        v[e] += d;
        let t = Tensor::from_f64(&Cpu64::new(2), &v, [1, 3, h, w]).unwrap();
        let f = fx.extract(&t).unwrap();
        f.get("relu2_1")
            .unwrap()
            .square()
            .unwrap()
            .mean()
            .unwrap()
            .scalar()
            .unwrap()
    };
    let num = (eval(1e-4) - eval(-1e-4)) / 2e-4;
    assert!(
        (num - grad[e]).abs() <= 1e-6 + 1e-4 * num.abs(),
        "{num} vs {}",
        grad[e]
    );
}
