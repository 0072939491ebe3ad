//! `nst render` and `nst eval` end to end on small real images, and their error messages.

use super::{images, nst, weights};
use crate::features::{assert_fails_with, render_small, s, thumb, tmp};
use std::path::Path;

fn totals(log: &Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("event").is_none())
        .map(|v| v["total"].as_f64().expect("total in every iteration line"))
        .collect()
}

#[test]
fn render_reduces_the_loss_and_is_reproducible() {
    weights();
    let content = images().join("tubingen.jpg");
    let style = images().join("starry_night.jpg");
    let run = |out: &Path, log: &Path| {
        let r = nst(&[
            "render",
            "--content",
            s(&content),
            "--style",
            s(&style),
            "--out",
            s(out),
            "--size",
            "64",
            "--iterations",
            "60",
            "--seed",
            "3",
            "--threads",
            "2",
            "--json-log",
            s(log),
            "--save-every",
            "30",
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    };
    let (out, log) = (tmp("r1.png"), tmp("r1.jsonl"));
    run(&out, &log);
    let img = image::open(&out).unwrap();
    let (w, h) = image::image_dimensions(&content).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (64, (64.0 * h as f64 / w as f64).round() as u32)
    );
    let t = totals(&log);
    assert_eq!(t.len(), 60);
    assert!(
        t[0] > 20.0 * t[59],
        "loss fell only from {} to {}",
        t[0],
        t[59]
    );
    assert!(tmp("r1_iter30.png").exists() && tmp("r1_iter60.png").exists());
    // The same seed, thread count and inputs give the same bytes.
    let (out2, log2) = (tmp("r2.png"), tmp("r2.jsonl"));
    run(&out2, &log2);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&out2).unwrap());
    // The image is not flat: the style put structure into it.
    let px = img.to_rgb8();
    let mean = px.as_raw().iter().map(|&v| v as f64).sum::<f64>() / px.as_raw().len() as f64;
    let var = px
        .as_raw()
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / px.as_raw().len() as f64;
    assert!(
        var.sqrt() > 20.0,
        "output is nearly flat (std {})",
        var.sqrt()
    );
}

#[test]
fn multi_scale_blend_and_original_colors_run() {
    weights();
    let content = images().join("golden_gate.jpg");
    let styles = format!(
        "{},{}",
        s(&images().join("the_scream.jpg")),
        s(&images().join("shipwreck.jpg"))
    );
    let out = tmp("ms.jpg");
    let r = nst(&[
        "render",
        "--content",
        s(&content),
        "--style",
        &styles,
        "--style-blend",
        "3,1",
        "--out",
        s(&out),
        "--scales",
        "32,48",
        "--iterations",
        "5",
        "--original-colors",
        "--optimizer",
        "adam",
        "--init",
        "content",
        "--quiet",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(r.stderr.is_empty(), "--quiet prints nothing");
    let img = image::open(&out).unwrap();
    assert_eq!(img.width().max(img.height()), 48);
}

#[test]
fn color_control_modes_render_and_original_colors_is_luminance() {
    weights();
    let (c, st) = (
        images().join("tubingen.jpg"),
        images().join("starry_night.jpg"),
    );
    let run = |extra: &[&str], out: &Path| {
        let mut a = vec![
            "render",
            "--content",
            s(&c),
            "--style",
            s(&st),
            "--out",
            s(out),
            "--size",
            "40",
            "--iterations",
            "4",
            "--threads",
            "2",
            "--quiet",
        ];
        a.extend_from_slice(extra);
        nst(&a)
    };
    let (a, b) = (tmp("cc_lum.png"), tmp("cc_alias.png"));
    for (extra, out) in [
        (&["--color-control", "luminance"][..], &a),
        (&["--original-colors"][..], &b),
    ] {
        let r = run(extra, out);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    for root in ["pca", "chol", "sym"] {
        let out = tmp(&format!("cc_{root}.png"));
        let r = run(&["--color-control", "match", "--color-match", root], &out);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert_eq!(image::open(&out).unwrap().width(), 40);
    }
    assert_fails_with(
        &run(
            &["--original-colors", "--color-control", "match"],
            &tmp("cc_bad.png"),
        ),
        &["--original-colors", "match"],
    );
    // The palette: the render's colours moved toward the painting's (its mean colour nearer),
    // and the nearest-neighbour loss's default.
    let mean = |p: &Path| {
        let img = image::open(p).unwrap().into_rgb8();
        let n = (img.width() * img.height()) as f64;
        [0, 1, 2].map(|c| img.pixels().map(|q| q[c] as f64).sum::<f64>() / n)
    };
    let painting = {
        let img = image::open(&st).unwrap().into_rgb8();
        let n = (img.width() * img.height()) as f64;
        [0, 1, 2].map(|c| img.pixels().map(|q| q[c] as f64).sum::<f64>() / n)
    };
    let dist = |m: [f64; 3]| {
        (0..3)
            .map(|c| (m[c] - painting[c]).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let (none, pal) = (tmp("cc_none.png"), tmp("cc_palette.png"));
    for (extra, out) in [
        (&["--color-control", "none"][..], &none),
        (&["--color-control", "palette"][..], &pal),
    ] {
        let r = run(extra, out);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    assert!(
        dist(mean(&pal)) < 0.5 * dist(mean(&none)),
        "{:?} {:?} {painting:?}",
        mean(&pal),
        mean(&none)
    );
    let (nn, nn_pal, nn_none) = (
        tmp("cc_nn.png"),
        tmp("cc_nn_pal.png"),
        tmp("cc_nn_none.png"),
    );
    for (extra, out) in [
        (&["--style-loss", "nn"][..], &nn),
        (
            &["--style-loss", "nn", "--color-control", "palette"][..],
            &nn_pal,
        ),
        (
            &["--style-loss", "nn", "--color-control", "none"][..],
            &nn_none,
        ),
    ] {
        let r = run(extra, out);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert!(bytes(&nn) == bytes(&nn_pal) && bytes(&nn) != bytes(&nn_none));
    assert_fails_with(
        &run(
            &["--original-colors", "--color-control", "palette"],
            &tmp("cc_bad.png"),
        ),
        &["--original-colors", "palette"],
    );
    assert_fails_with(
        &run(&["--color-control", "sepia"], &tmp("cc_bad.png")),
        &["sepia"],
    );
}

#[test]
fn region_masks_on_render_and_eval() {
    weights();
    let (c, s1, s2) = (
        images().join("tubingen.jpg"),
        images().join("starry_night.jpg"),
        images().join("the_scream.jpg"),
    );
    let (left, right) = (tmp("mask_left.png"), tmp("mask_right.png"));
    for (path, on_left) in [(&left, true), (&right, false)] {
        image::GrayImage::from_fn(40, 30, |x, _| {
            image::Luma([if (x < 20) == on_left { 255 } else { 0 }])
        })
        .save(path)
        .unwrap();
    }
    let styles = format!("{},{}", s(&s1), s(&s2));
    let masks = format!("{},{}", s(&left), s(&right));
    let out = tmp("masked.png");
    let base = |extra: &[&str]| {
        let mut a = vec![
            "render",
            "--content",
            s(&c),
            "--style",
            &styles,
            "--out",
            s(&out),
            "--size",
            "40",
            "--iterations",
            "3",
            "--threads",
            "2",
            "--quiet",
        ];
        a.extend_from_slice(extra);
        nst(&a)
    };
    let r = base(&["--content-mask", &masks, "--style-mask", &masks]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(image::open(&out).unwrap().width(), 40);
    assert_fails_with(
        &base(&["--content-mask", s(&left)]),
        &["1 content masks", "2 style"],
    );
    assert_fails_with(
        &base(&["--content-mask", &masks, "--style-blend", "1,2"]),
        &["--style-blend", "masks"],
    );
    assert_fails_with(&base(&["--style-mask", &masks]), &["content masks"]);
    // eval: the same image scores differently with masks (the styles shrunk: eval takes
    // them at their own size).
    let small_styles = format!(
        "{},{}",
        s(&thumb("starry_night.jpg", 48, 38)),
        s(&thumb("the_scream.jpg", 48, 60))
    );
    let content = tmp("mask_content.png");
    image::open(&c)
        .unwrap()
        .resize_exact(40, 30, image::imageops::FilterType::Triangle)
        .save(&content)
        .unwrap();
    let grad = tmp("mask_grad.safetensors");
    let eval = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--content",
            s(&content),
            "--style",
            &small_styles,
            "--image",
            s(&content),
            "--out",
            s(&grad),
        ];
        a.extend_from_slice(extra);
        let r = nst(&a);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stdout).to_string()
    };
    assert_ne!(eval(&[]), eval(&["--content-mask", &masks]));
}

#[test]
fn gray_and_uniform_starts_and_print_every() {
    weights();
    let (c, st) = (
        images().join("tubingen.jpg"),
        images().join("starry_night.jpg"),
    );
    for init in ["gray", "uniform"] {
        let out = tmp(&format!("init_{init}.png"));
        let r = nst(&[
            "render",
            "--content",
            s(&c),
            "--style",
            s(&st),
            "--out",
            s(&out),
            "--size",
            "32",
            "--iterations",
            "6",
            "--init",
            init,
            "--print-every",
            "2",
            "--threads",
            "2",
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "{err}");
        // Iterations 1, 2, 4 and 6 (the last), then the summary line.
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("/6 loss")).collect();
        assert_eq!(lines.len(), 4, "{init}: {err}");
        assert_eq!(image::open(&out).unwrap().width(), 32);
    }
}

#[test]
fn eval_prints_every_term_and_writes_the_gradient() {
    weights();
    // Small PNG inputs written here so that sizes match.
    let content = tmp("ec.png");
    let style = tmp("es.png");
    let g = tmp("eg.png");
    image::open(images().join("tubingen.jpg"))
        .unwrap()
        .thumbnail_exact(40, 30)
        .save(&content)
        .unwrap();
    image::open(images().join("starry_night.jpg"))
        .unwrap()
        .thumbnail_exact(36, 28)
        .save(&style)
        .unwrap();
    image::open(images().join("hoovertowernight.jpg"))
        .unwrap()
        .thumbnail_exact(40, 30)
        .save(&g)
        .unwrap();
    let out = tmp("grad.safetensors");
    let r = nst(&[
        "eval",
        "--content",
        s(&content),
        "--style",
        s(&style),
        "--image",
        s(&g),
        "--out",
        s(&out),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let json = String::from_utf8(r.stdout).unwrap();
    for key in [
        "\"total\"",
        "\"content/relu4_2\"",
        "\"style/relu1_1\"",
        "\"style/relu5_1\"",
        "\"tv\"",
    ] {
        assert!(json.contains(key), "{json} lacks {key}");
    }
    assert_eq!(json.trim().lines().count(), 1);
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let grad = st.tensor("grad").unwrap();
    assert_eq!(grad.shape(), &[3, 30, 40]);
    let vals: Vec<f32> = grad
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(vals.iter().all(|v| v.is_finite()) && vals.iter().any(|v| *v != 0.0));

    // Different sizes are refused.
    assert_fails_with(
        &nst(&[
            "eval",
            "--content",
            s(&content),
            "--style",
            s(&style),
            "--image",
            s(&style),
            "--out",
            s(&tmp("never.safetensors")),
        ]),
        &["same size"],
    );
}

#[test]
fn render_rejects_bad_input_with_one_line() {
    weights();
    let c = images().join("tubingen.jpg");
    let st = images().join("starry_night.jpg");
    let out = tmp("bad.png");
    let base = |extra: &[&str]| {
        let mut a = vec![
            "render",
            "--content",
            s(&c),
            "--style",
            s(&st),
            "--out",
            s(&out),
        ];
        for (flag, default) in [("--size", "32"), ("--iterations", "2")] {
            if !extra.contains(&flag) {
                a.extend([flag, default]);
            }
        }
        a.extend_from_slice(extra);
        nst(&a)
    };
    assert_fails_with(
        &base(&["--style-blend", "1,2"]),
        &["2 style blend weights", "1 style"],
    );
    assert_fails_with(&base(&["--style-blend", "-1"]), &["non-negative"]);
    assert_fails_with(&base(&["--iterations", "0"]), &["--iterations"]);
    assert_fails_with(&base(&["--size", "0"]), &["--size"]);
    assert_fails_with(&base(&["--size", "big"]), &["--size", "big"]);
    assert_fails_with(
        &base(&["--style-layers", "relu1_1,relu9_9"]),
        &["relu9_9", "relu5_1"],
    );
    assert_fails_with(&base(&["--content-weight", "nan"]), &["content weight"]);
    assert_fails_with(&base(&["--learning-rate", "-1"]), &["learning rate"]);
    for every in ["0", "10ms", "5x"] {
        assert_fails_with(
            &base(&["--checkpoint-every", every]),
            &["--checkpoint-every", "10m"],
        );
    }
    // `--device cuda` fails cleanly only where there is no usable GPU (or no CUDA in this
    // build); where there is one, it renders.
    let gpu = std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GPU"));
    for precision in ["default", "fast"] {
        let args = ["--device", "cuda", "--precision", precision];
        if cfg!(any(feature = "cuda", feature = "cuda-12")) && gpu {
            let r = base(&args);
            assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        } else {
            assert_fails_with(&base(&args), &["cuda", "CUDA"]);
        }
    }
    assert_fails_with(
        &base(&["--precision", "fastest"]),
        &["fastest", "--precision"],
    );
    assert_fails_with(&base(&["--max-pixels", "100"]), &["limit of 100"]);
    // Repeating --style adds styles; a path with a comma in it is one style, a list splits.
    let comma = tmp("style,with,commas.png");
    std::fs::copy(thumb("starry_night.jpg", 48, 30), &comma).unwrap();
    let two = format!("{},{}", s(&st), s(&st));
    for extra in [
        ["--style-blend", "0.5,0.5", "--style", s(&comma)],
        ["--style-blend", "1,1,1", "--style", &two],
    ] {
        let r = base(&extra);
        assert!(
            r.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
    assert_fails_with(
        &base(&["--style-blend", "1,1", "--style", &two]),
        &["2 style blend weights", "3 style"],
    );
    // Those renders succeeded; the failures below must write nothing.
    std::fs::remove_file(&out).unwrap();
    // Every scale counts, not only the last: 96 px is over the limit, 32 px under it.
    let (small, small_style) = (
        thumb("tubingen.jpg", 40, 30),
        thumb("starry_night.jpg", 48, 30),
    );
    let r = nst(&[
        "render",
        "--content",
        s(&small),
        "--style",
        s(&small_style),
        "--out",
        s(&out),
        "--scales",
        "96,32",
        "--iterations",
        "1",
        "--max-pixels",
        "5000",
    ]);
    assert_fails_with(&r, &["96x72", "limit of 5000"]);
    assert_fails_with(
        &base(&["--weights", s(&tmp("nope.safetensors"))]),
        &["fetch-weights"],
    );
    assert_fails_with(&base(&["--init", s(&tmp("nope.png"))]), &["nope.png"]);
    let r = nst(&[
        "render",
        "--content",
        s(&c),
        "--style",
        s(&st),
        "--out",
        "/no/such/dir/o.png",
        "--size",
        "32",
    ]);
    assert_fails_with(&r, &["/no/such/dir"]);
    let r = nst(&[
        "render",
        "--content",
        s(&c),
        "--style",
        s(&st),
        "--out",
        s(&tmp("o.xyz")),
        "--size",
        "32",
    ]);
    assert_fails_with(&r, &[".xyz"]);
    assert!(!out.exists(), "nothing may be written on failure");
}

#[test]
fn fast_precision_renders_like_the_default() {
    weights();
    let content = images().join("tubingen.jpg");
    let style = images().join("starry_night.jpg");
    let run = |precision: &str| {
        let (out, log) = (
            tmp(&format!("p_{precision}.png")),
            tmp(&format!("p_{precision}.jsonl")),
        );
        let r = nst(&[
            "render",
            "--content",
            s(&content),
            "--style",
            s(&style),
            "--out",
            s(&out),
            "--size",
            "48",
            "--iterations",
            "30",
            "--precision",
            precision,
            "--json-log",
            s(&log),
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let start: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(&log)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        let device = start["device"].as_str().unwrap().to_string();
        (totals(&log), device)
    };
    let ((d, _), (f, device)) = (run("default"), run("fast"));
    // The same objective: the first evaluation agrees closely (within the bf16 products'
    // bound where the CPU has them, docs/benchmarks.md#precision), and both renders converge.
    let bf16 = device.starts_with("cpu-f32-fast-");
    let tol = if bf16 { 1e-2 } else { 1e-4 };
    assert!(
        (d[0] - f[0]).abs() <= tol * d[0],
        "{} vs {} on {device}",
        d[0],
        f[0]
    );
    assert!(
        f[0] > 10.0 * f[29],
        "fast: loss fell only from {} to {}",
        f[0],
        f[29]
    );
    assert!(
        f[29] < 3.0 * d[29],
        "fast ends at {}, default at {}",
        f[29],
        d[29]
    );
}

#[test]
fn w2_style_loss_and_normalized_gradients_on_render_and_eval() {
    weights();
    let c = images().join("tubingen.jpg");
    let render = |extra: &[&str], out: &Path| {
        let mut a = vec!["--quiet"];
        a.extend_from_slice(extra);
        render_small(out, 40, 4, &a)
    };
    let (gram, w2, norm) = (tmp("sl_gram.png"), tmp("sl_w2.png"), tmp("sl_norm.png"));
    for (extra, out) in [
        (&["--style-loss", "gram"][..], &gram),
        (&["--style-loss", "w2"][..], &w2),
        (&["--normalize-gradients"][..], &norm),
    ] {
        let r = render(extra, out);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert_eq!(image::open(out).unwrap().width(), 40);
    }
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert_ne!(bytes(&gram), bytes(&w2));
    assert_ne!(bytes(&gram), bytes(&norm));
    assert_fails_with(
        &render(&["--style-loss", "wasserstein"], &tmp("sl_bad.png")),
        &["wasserstein"],
    );
    // Masks are Gram-only.
    let mask = tmp("sl_mask.png");
    image::GrayImage::from_pixel(40, 30, image::Luma([255]))
        .save(&mask)
        .unwrap();
    assert_fails_with(
        &render(
            &["--style-loss", "w2", "--content-mask", s(&mask)],
            &tmp("sl_bad.png"),
        ),
        &["Gram"],
    );
    // eval: W2 terms differ from the Gram ones; normalisation leaves the terms as they are.
    let content = tmp("sl_content.png");
    image::open(&c)
        .unwrap()
        .resize_exact(40, 30, image::imageops::FilterType::Triangle)
        .save(&content)
        .unwrap();
    let grad = tmp("sl_grad.safetensors");
    let small_style = thumb("starry_night.jpg", 48, 38);
    let eval = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--content",
            s(&content),
            "--style",
            s(&small_style),
            "--image",
            s(&content),
            "--out",
            s(&grad),
        ];
        a.extend_from_slice(extra);
        let r = nst(&a);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        (
            String::from_utf8_lossy(&r.stdout).to_string(),
            std::fs::read(&grad).unwrap(),
        )
    };
    let (plain, g_plain) = eval(&[]);
    let (w2_terms, _) = eval(&["--style-loss", "w2"]);
    let (normed, g_normed) = eval(&["--normalize-gradients"]);
    assert_ne!(plain, w2_terms);
    assert_eq!(plain, normed);
    assert_ne!(g_plain, g_normed);
}

#[test]
fn nearest_neighbour_style_loss_on_render_and_eval() {
    weights();
    let render = |extra: &[&str], out: &Path| {
        let mut a = vec!["--quiet", "--style-loss", "nn"];
        a.extend_from_slice(extra);
        render_small(out, 40, 4, &a)
    };
    let (nn, augmented) = (tmp("nn_plain.png"), tmp("nn_aug.png"));
    for (extra, out) in [
        (&["--nn-refresh", "2"][..], &nn),
        (
            &["--nn-refresh", "2", "--nn-augment", "--tile", "16"][..],
            &augmented,
        ),
    ] {
        let r = render(extra, out);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert_eq!(image::open(out).unwrap().width(), 40);
    }
    assert_ne!(
        std::fs::read(&nn).unwrap(),
        std::fs::read(&augmented).unwrap()
    );
    assert_fails_with(
        &render(&["--nn-refresh", "0"], &tmp("nn_bad.png")),
        &["--nn-refresh"],
    );
    // A style shrunk below the deepest layer's stride.
    assert_fails_with(
        &render(&["--style-scale", "0.1"], &tmp("nn_bad.png")),
        &["too small", "nearest-neighbour"],
    );
    assert!(
        !tmp("nn_bad.png").exists(),
        "a failed render wrote its output"
    );
    // eval prints the one nn term.
    let content = tmp("nn_content.png");
    image::open(images().join("tubingen.jpg"))
        .unwrap()
        .resize_exact(40, 30, image::imageops::FilterType::Triangle)
        .save(&content)
        .unwrap();
    let grad = tmp("nn_grad.safetensors");
    let st = thumb("starry_night.jpg", 48, 38);
    let r = nst(&[
        "eval",
        "--content",
        s(&content),
        "--style",
        s(&st),
        "--image",
        s(&content),
        "--out",
        s(&grad),
        "--style-loss",
        "nn",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("\"nn\":"), "{out}");
    assert!(!out.contains("style/"), "{out}");
}
