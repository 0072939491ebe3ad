//! `--tile`, `--max-memory`, `--lbfgs-history`, `--scales auto` and `nst estimate` end to end.

use super::{images, nst, real_weights, weights};
use crate::features::{assert_fails_with, s, thumb, tmp};

fn base<'a>(c: &'a str, st: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["--content", c, "--style", st, "--out", out]
}

/// `nst estimate` of tubingen by starry_night with `extra` options.
fn estimate(extra: &[&str]) -> std::process::Output {
    let c = images().join("tubingen.jpg");
    let st = images().join("starry_night.jpg");
    let mut a = vec!["estimate", "--content", s(&c), "--style", s(&st)];
    a.extend_from_slice(extra);
    nst(&a)
}

#[test]
fn a_tiled_render_matches_the_untiled_one() {
    weights();
    let c = images().join("tubingen.jpg");
    let st = images().join("starry_night.jpg");
    let render = |name: &str, tile: &str| {
        let out = tmp(name);
        let mut a = vec!["render"];
        a.extend(base(s(&c), s(&st), s(&out)));
        a.extend([
            "--size",
            "100",
            "--iterations",
            "4",
            "--tile",
            tile,
            "--quiet",
        ]);
        let r = nst(&a);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        image::open(&out).unwrap().to_rgb8()
    };
    let whole = render("t_off.png", "off");
    // 100 x 75 in tiles of at most 32: 4 x 3 tiles, each reading a halo of 80.
    let tiled = render("t_32.png", "32");
    assert_eq!(whole.dimensions(), tiled.dimensions());
    let worst = whole
        .as_raw()
        .iter()
        .zip(tiled.as_raw())
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max()
        .unwrap();
    // The same objective up to f32 rounding: after four L-BFGS steps the 8-bit images agree
    // to a level or two.
    assert!(worst <= 2, "tiled and untiled differ by {worst} levels");
}

#[test]
fn real_weights_estimate_prints_the_plan_and_budgets_are_enforced() {
    let weights = real_weights();
    let est = |extra: &[&str]| {
        let mut a = vec!["--weights", s(&weights)];
        a.extend_from_slice(extra);
        estimate(&a)
    };
    // Untiled when it fits.
    let r = est(&["--size", "256"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = String::from_utf8(r.stdout).unwrap();
    assert!(
        text.contains("untiled") && text.contains("history 100"),
        "{text}"
    );
    // The budget, where it comes from and the model's memory are named.
    assert!(
        text.contains("memory budget")
            && text.contains("80% of the memory available now")
            && text.contains("model of host memory"),
        "{text}"
    );
    // A 2048 px render under 3 GB: tiled, with a prediction within the budget.
    let r = est(&[
        "--size",
        "2048",
        "--max-memory",
        "3G",
        "--json",
        "--iterations",
        "3",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let json = String::from_utf8(r.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let peak = v["peak_bytes"].as_f64().unwrap();
    assert!(peak <= 3e9 && peak > 1e9, "{json}");
    assert!(
        json.contains(
            "\"budget_bytes\":3000000000,\"budget_source\":\"--max-memory\",\"memory\":\"host\""
        ),
        "{json}"
    );
    assert!(!json.contains("\"tiles\":1,"), "{json}");
    // --scales auto: coarse to fine up to the size.
    let r = est(&["--size", "2000", "--scales", "auto"]);
    let text = String::from_utf8(r.stdout).unwrap();
    assert!(
        text.contains("scale 1/3 500x375") && text.contains("2000x1500"),
        "{text}"
    );
    assert!(text.contains("x 500") && text.contains("x 125"), "{text}");
    // Budgets that cannot be met: an error naming the smallest that would.
    assert_fails_with(
        &est(&["--size", "2048", "--max-memory", "500M"]),
        &["at least", "GB"],
    );
    assert_fails_with(
        &est(&["--size", "1024", "--tile", "off", "--max-memory", "1G"]),
        &["at least", "--tile auto"],
    );
}

#[test]
fn bad_tiling_settings_are_refused_before_any_work() {
    weights();
    let c = images().join("tubingen.jpg");
    let st = images().join("starry_night.jpg");
    let out = tmp("never_tiled.png");
    let run = |extra: &[&str]| {
        let mut a = vec!["render"];
        a.extend(base(s(&c), s(&st), s(&out)));
        a.extend(["--iterations", "2"]);
        if !extra.contains(&"--size") {
            a.extend(["--size", "64"]);
        }
        a.extend_from_slice(extra);
        nst(&a)
    };
    assert_fails_with(&run(&["--tile", "24"]), &["multiple of 16"]);
    assert_fails_with(&run(&["--tile", "0"]), &["--tile"]);
    assert_fails_with(&run(&["--tile", "big"]), &["--tile", "big"]);
    assert_fails_with(&run(&["--max-memory", "lots"]), &["--max-memory", "lots"]);
    assert_fails_with(&run(&["--max-memory", "60M"]), &["at least"]);
    assert_fails_with(&run(&["--lbfgs-history", "0"]), &["--lbfgs-history"]);
    assert_fails_with(&run(&["--scales", "32,abc"]), &["abc"]);
    assert_fails_with(
        &run(&["--size", "200000", "--scales", "auto"]),
        &["over the limit"],
    );
    assert!(!out.exists(), "nothing may be written on failure");
}

#[test]
fn tiled_eval_matches_untiled_eval() {
    weights();
    let content = thumb("tubingen.jpg", 90, 70);
    let style = thumb("starry_night.jpg", 80, 60);
    let image = thumb("hoovertowernight.jpg", 90, 70);
    let run = |tile: &str| -> (f64, Vec<f32>) {
        let out = tmp(&format!("tg_{tile}.safetensors"));
        let r = nst(&[
            "eval",
            "--content",
            s(&content),
            "--style",
            s(&style),
            "--image",
            s(&image),
            "--out",
            s(&out),
            "--tile",
            tile,
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let json = String::from_utf8(r.stdout).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let total: f64 = v["total"].as_f64().unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let g = st
            .tensor("grad")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (total, g)
    };
    let (t0, g0) = run("off");
    let (t1, g1) = run("32");
    assert!((t0 - t1).abs() <= 1e-5 * t0, "{t0} vs {t1}");
    let num: f64 = g0
        .iter()
        .zip(&g1)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = g0.iter().map(|a| (*a as f64).powi(2)).sum();
    assert!(
        (num / den).sqrt() <= 1e-4,
        "gradients differ by {}",
        (num / den).sqrt()
    );
}

/// The memory plan holds: a render given a budget too small for it whole is tiled, and the
/// process's own peak resident set stays under the budget. 512 px under 600 MB is the same
/// property as the benchmark's 2048 px under 3 GB (docs/benchmarks.md), at a size that runs in
/// seconds: the budget is tight enough here that the plan must tile down to pool3.
#[test]
fn real_weights_render_under_a_memory_budget_is_tiled_and_stays_under_it() {
    let weights = real_weights();
    let c = images().join("tubingen.jpg");
    let st = images().join("starry_night.jpg");
    let (out, log) = (tmp("budget512.png"), tmp("budget512.jsonl"));
    let mut a = vec!["render"];
    a.extend(base(s(&c), s(&st), s(&out)));
    a.extend([
        "--size",
        "512",
        "--iterations",
        "2",
        "--max-memory",
        "600M",
        "--json-log",
        s(&log),
        "--weights",
        s(&weights),
    ]);
    let r = nst(&a);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        stderr.contains("tiles of up to"),
        "the plan is reported: {stderr}"
    );
    let img = image::open(&out).unwrap();
    assert_eq!((img.width(), img.height()), (512, 384));
    // The process's own peak resident set, as it reported it after its last iteration.
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    let peak = v["peak_rss_mb"].as_f64().unwrap();
    assert!(peak <= 600.0, "peak RSS {peak} MB over the 600 MB budget");
    // Untiled, this render peaks at about 850 MB: a measurement this high is a real one.
    assert!(peak > 300.0, "peak RSS {peak} MB: is the measurement real?");
}

#[test]
fn quality_presets_and_per_scale_iterations_shape_the_schedule() {
    weights();
    let est = |extra: &[&str]| {
        let r = estimate(extra);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8(r.stdout).unwrap()
    };
    // The default: coarse to fine from a quarter of the size, 300, 100 and 200 iterations.
    let t = est(&["--size", "512"]);
    assert!(
        t.contains("scale 1/3 128x96")
            && t.contains("scale 2/3 256x192")
            && t.contains("scale 3/3 512x384"),
        "{t}"
    );
    assert!(
        t.contains("x 300") && t.contains("x 100") && t.contains("x 200"),
        "{t}"
    );
    // High: the classic single scale of 500.
    let t = est(&["--size", "512", "--quality", "high"]);
    assert!(
        t.contains("scale 1/1 512x384") && t.contains("x 500"),
        "{t}"
    );
    // Draft: at most 256 px.
    let t = est(&["--size", "1024", "--quality", "draft"]);
    assert!(t.contains("scale 2/2 256x192") && t.contains("x 50"), "{t}");
    // --iterations alone: one scale at --size; SIZE:ITERATIONS per scale.
    let t = est(&["--size", "512", "--iterations", "42"]);
    assert!(t.contains("scale 1/1 512x384") && t.contains("x 42"), "{t}");
    let t = est(&["--scales", "128:7,256:9"]);
    assert!(t.contains("x 7") && t.contains("x 9"), "{t}");
    for bad in ["128:x", "128:0", "x:10"] {
        assert_fails_with(&estimate(&["--scales", bad]), &["--scales"]);
    }
}
