//! nst's objective and gradient against an independent NumPy implementation
//! (`tests/reference/objective.py`) on crops of real images.

use super::{image_crop, root, weights};
use nst_cpu::{Cpu, Cpu64};
use nst_style::{Image, Objective, ObjectiveConfig};
use nst_tensor::Backend;
use nst_vgg::Vgg;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The Python interpreter with NumPy: `$NST_PYTHON` or `python3`; the reference tests fail
/// without it (`cargo xtask test` installs NumPy).
pub(crate) fn python() -> String {
    let py = std::env::var("NST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{py} with numpy is needed for the reference tests (cargo xtask test installs numpy)"
    );
    py
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nst-ref-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn write_image(name: &str, img: &Image) -> String {
    let path = tmp(name);
    let bytes: Vec<u8> = img
        .data()
        .iter()
        .flat_map(|&v| (v as f64).to_le_bytes())
        .collect();
    std::fs::write(&path, bytes).unwrap();
    format!(
        "{{\"w\":{},\"h\":{},\"file\":{:?}}}",
        img.width(),
        img.height(),
        path.to_str().unwrap()
    )
}

fn layers_json(l: &[(String, f64)]) -> String {
    let items: Vec<String> = l.iter().map(|(n, m)| format!("[{n:?},{m}]")).collect();
    format!("[{}]", items.join(","))
}

struct Reference {
    terms: Vec<(String, f64)>,
    grad: Vec<f64>,
}

/// Runs the NumPy reference on the request.
fn reference(
    py: &str,
    weights: &std::path::Path,
    cfg: &ObjectiveConfig,
    content: &Image,
    styles: &[Image],
    blend: &[f64],
    image: &Image,
) -> Reference {
    let grad_out = tmp("grad.f64");
    let styles_json: Vec<String> = styles
        .iter()
        .enumerate()
        .map(|(i, s)| write_image(&format!("style{i}.f64"), s))
        .collect();
    let req = format!(
        "{{\"weights\":{:?},\"pooling\":\"max\",\"content\":{},\"styles\":[{}],\"blend\":{:?},\"image\":{},\
         \"content_weight\":{},\"style_weight\":{},\"tv_weight\":{},\"content_layers\":{},\"style_layers\":{},\"grad_out\":{:?}}}",
        weights.to_str().unwrap(),
        write_image("content.f64", content),
        styles_json.join(","),
        blend,
        write_image("image.f64", image),
        cfg.content_weight,
        cfg.style_weight,
        cfg.tv_weight,
        layers_json(&cfg.content_layers),
        layers_json(&cfg.style_layers),
        grad_out.to_str().unwrap()
    );
    let mut child = Command::new(py)
        .arg(root().join("tests").join("reference").join("objective.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the reference failed");
    let text = String::from_utf8(out.stdout).unwrap();
    // A flat JSON object of numbers: "key":value pairs.
    let terms = text
        .trim()
        .trim_matches(|c| c == '{' || c == '}')
        .split(", ")
        .map(|kv| {
            let (k, v) = kv.split_once(": ").unwrap();
            (k.trim_matches('"').to_string(), v.parse::<f64>().unwrap())
        })
        .collect();
    let grad = std::fs::read(&grad_out)
        .unwrap()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Reference { terms, grad }
}

/// The terms and the pixel-space gradient (planar RGB) computed by nst on backend `b`.
fn ours<B: Backend>(
    b: &B,
    vgg: &Vgg<B>,
    cfg: &ObjectiveConfig,
    content: &Image,
    styles: &[Image],
    blend: &[f64],
    image: &Image,
) -> (Vec<(String, f64)>, Vec<f64>) {
    let conv = vgg.convention();
    let st: Vec<_> = styles
        .iter()
        .map(|s| s.to_model(b, conv).unwrap())
        .collect();
    let obj = Objective::new(vgg, cfg, &content.to_model(b, conv).unwrap(), &st, blend).unwrap();
    let e = obj.evaluate(&image.to_model(b, conv).unwrap()).unwrap();
    let g64 = e.grad.to_f64().unwrap();
    let mut terms = vec![("total".to_string(), e.total)];
    terms.extend(e.terms);
    // Pixel-space gradient in f64: for the Caffe convention a BGR -> RGB reorder.
    let (h, w) = (image.height(), image.width());
    let n = h * w;
    let mut px = vec![0.0; 3 * n];
    for c in 0..3 {
        let (src, scale, _) = conv.channel(c);
        for i in 0..n {
            px[src * n + i] = g64[c * n + i] * scale;
        }
    }
    (terms, px)
}

fn crop(name: &str, x: u32, y: u32, w: u32, h: u32) -> Image {
    Image::new(w as usize, h as usize, image_crop(name, x, y, w, h)).unwrap()
}

/// Largest relative difference of the terms and of the gradient (relative to its largest
/// entry).
fn errors(a: &(Vec<(String, f64)>, Vec<f64>), r: &Reference) -> (f64, f64) {
    assert_eq!(a.0.len(), r.terms.len(), "{:?} vs {:?}", a.0, r.terms);
    let mut term_err = 0.0f64;
    for ((k, v), (rk, rv)) in a.0.iter().zip(&r.terms) {
        assert_eq!(k, rk);
        term_err = term_err.max((v - rv).abs() / rv.abs().max(1e-30));
    }
    assert_eq!(a.1.len(), r.grad.len());
    let scale = r.grad.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let grad_err =
        a.1.iter()
            .zip(&r.grad)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()))
            / scale;
    (term_err, grad_err)
}

/// The bounds on the fast mode with bf16 products (docs/benchmarks.md#precision): the largest
/// relative error of a loss term, and the largest gradient error over the largest entry.
const BF16_TERMS: f64 = 1e-2;
const BF16_GRADIENT: f64 = 0.1;

#[test]
fn objective_matches_numpy() {
    let wpath = weights();
    let py = python();
    let bytes = std::fs::read(&wpath).unwrap();
    let content = crop("tubingen.jpg", 300, 150, 56, 40);
    let styles = [
        crop("starry_night.jpg", 120, 60, 50, 46),
        crop("the_scream.jpg", 80, 100, 40, 44),
    ];
    let blend = [0.7, 0.3];
    // The image being evaluated: another crop, so every term is far from zero.
    let image = crop("golden_gate.jpg", 200, 100, 56, 40);
    let mut cfg = ObjectiveConfig::default();
    cfg.style_layers[1].1 = 2.0;
    let r = reference(&py, &wpath, &cfg, &content, &styles, &blend, &image);

    let c64 = Cpu64::new(2);
    let v64 = Vgg::from_safetensors(&c64, &bytes).unwrap();
    let (t64, g64) = errors(
        &ours(&c64, &v64, &cfg, &content, &styles, &blend, &image),
        &r,
    );
    assert!(
        t64 < 1e-10 && g64 < 1e-10,
        "f64: terms {t64:e}, gradient {g64:e}"
    );

    let c32 = Cpu::new(2);
    let v32 = Vgg::from_safetensors(&c32, &bytes).unwrap();
    let (t32, g32) = errors(
        &ours(&c32, &v32, &cfg, &content, &styles, &blend, &image),
        &r,
    );
    // Fast precision (Winograd F(4x4, 3x3)) against the f64 backend just checked, with average
    // pooling: with max pooling, flat image regions give exactly tied maxima that different
    // rounding breaks differently, sending the gradient to another (equally valid) pixel of
    // the window, which is not a precision error.
    let avg = nst_tensor::PoolKind::Avg;
    let a64 = Vgg::from_safetensors(&c64, &bytes)
        .unwrap()
        .with_pooling(avg);
    let exact = ours(&c64, &a64, &cfg, &content, &styles, &blend, &image);
    let exact = Reference {
        terms: exact.0,
        grad: exact.1,
    };
    let fast_with = |products| {
        let fast = Cpu::new(2)
            .with_precision(nst_cpu::Precision::Fast)
            .with_products(products);
        let vf = Vgg::from_safetensors(&fast, &bytes)
            .unwrap()
            .with_pooling(avg);
        errors(
            &ours(&fast, &vf, &cfg, &content, &styles, &blend, &image),
            &exact,
        )
    };
    let (tf, gf) = fast_with(nst_cpu::Products::F32);
    // The fast mode's bf16 products (on this CPU's AMX or AVX512-BF16, else emulated).
    let (tb, gb) = fast_with(nst_cpu::Products::Bf16);
    eprintln!(
        "f32 vs NumPy f64: terms {t32:.2e}, gradient {g32:.2e}; f64: {t64:.2e}, {g64:.2e}; \
         fast (avg pooling) vs f64: terms {tf:.2e}, gradient {gf:.2e}; \
         fast with bf16 products: terms {tb:.2e}, gradient {gb:.2e}"
    );
    // The documented guarantees (docs/benchmarks.md).
    assert!(
        t32 < 1e-5 && g32 < 1e-4,
        "f32: terms {t32:e}, gradient {g32:e}"
    );
    assert!(
        tf < 1e-5 && gf < 1e-4,
        "fast: terms {tf:e}, gradient {gf:e}"
    );
    assert!(
        tb < BF16_TERMS && gb < BF16_GRADIENT,
        "fast with bf16 products: terms {tb:e}, gradient {gb:e}"
    );
}
