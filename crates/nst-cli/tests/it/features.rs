//! `nst features`: outputs and error messages.

use super::{images, nst, real_weights, weights, MODEL_DIVISOR};
use std::path::{Path, PathBuf};
use std::process::Output;

/// Asserts a failed run with exactly one line on stderr containing every `needle`.
pub(crate) fn assert_fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "expected one line: {err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} lacks {n:?}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// A shared image shrunk to exactly `w x h`, as a PNG in the test's folder (eval takes its
/// images at their own size: small ones keep a test to seconds).
pub(crate) fn thumb(src: &str, w: u32, h: u32) -> PathBuf {
    let p = tmp(&format!("thumb_{w}x{h}_{src}.png"));
    if !p.is_file() {
        let part = tmp(&format!(
            "thumb_{w}x{h}_{src}.{:?}.png",
            std::thread::current().id()
        ));
        image::open(super::images().join(src))
            .unwrap()
            .thumbnail_exact(w, h)
            .save(&part)
            .unwrap();
        std::fs::rename(&part, &p).unwrap();
    }
    p
}

pub(crate) fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nst-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// `nst render` of tubingen by starry_night at `size` px for `iterations`, on 2 threads,
/// with `extra` options.
pub(crate) fn render_small(out: &Path, size: u32, iterations: u32, extra: &[&str]) -> Output {
    let (c, st) = (
        images().join("tubingen.jpg"),
        images().join("starry_night.jpg"),
    );
    let (size, iterations) = (size.to_string(), iterations.to_string());
    let mut a = vec![
        "render",
        "--content",
        s(&c),
        "--style",
        s(&st),
        "--out",
        s(out),
        "--size",
        &size,
        "--iterations",
        &iterations,
        "--threads",
        "2",
    ];
    a.extend_from_slice(extra);
    nst(&a)
}

/// A path as `&str` for the command line.
pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn features_writes_each_layer_at_native_size() {
    weights();
    let out = tmp("feat.safetensors");
    let img = images().join("hoovertowernight.jpg");
    let dims = image::image_dimensions(&img).unwrap();
    let r = nst(&[
        "features",
        "--image",
        s(&img),
        "--layers",
        "relu1_1,pool2",
        "--out",
        s(&out),
        "--max-size",
        "96",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (w, h) = (dims.0 as f64, dims.1 as f64);
    let sc = 96.0 / w.max(h);
    let (nw, nh) = ((w * sc).round() as usize, (h * sc).round() as usize);
    // VGG19's widths (64 and 128) in the test model's proportion.
    let (c1, c2) = (64 / MODEL_DIVISOR, 128 / MODEL_DIVISOR);
    assert_eq!(st.tensor("relu1_1").unwrap().shape(), &[c1, nh, nw]);
    assert_eq!(st.tensor("pool2").unwrap().shape(), &[c2, nh / 4, nw / 4]);
    assert_eq!(
        st.tensor("relu1_1").unwrap().dtype(),
        safetensors::Dtype::F32
    );
    // Same inputs, same bytes.
    let out2 = tmp("feat2.safetensors");
    let r = nst(&[
        "features",
        "--image",
        s(&img),
        "--layers",
        "relu1_1,pool2",
        "--out",
        s(&out2),
        "--max-size",
        "96",
    ]);
    assert!(r.status.success());
    assert!(bytes == std::fs::read(&out2).unwrap());
}

#[test]
fn bad_inputs_fail_with_one_line() {
    weights();
    let out = tmp("never.safetensors");
    let img = images().join("tubingen.jpg");
    let missing = tmp("missing.jpg");
    assert_fails_with(
        &nst(&[
            "features",
            "--image",
            s(&missing),
            "--layers",
            "relu1_1",
            "--out",
            s(&out),
        ]),
        &["missing.jpg"],
    );
    let empty = tmp("empty.png");
    std::fs::write(&empty, b"").unwrap();
    assert_fails_with(
        &nst(&[
            "features",
            "--image",
            s(&empty),
            "--layers",
            "relu1_1",
            "--out",
            s(&out),
        ]),
        &["empty.png", "empty"],
    );
    let junk = tmp("junk.jpg");
    std::fs::write(&junk, b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap();
    assert_fails_with(
        &nst(&[
            "features",
            "--image",
            s(&junk),
            "--layers",
            "relu1_1",
            "--out",
            s(&out),
        ]),
        &["junk.jpg"],
    );
    assert_fails_with(
        &nst(&[
            "features",
            "--image",
            s(&img),
            "--layers",
            "relu1_1,conv9_9",
            "--out",
            s(&out),
        ]),
        &["conv9_9", "relu5_1"],
    );
    assert_fails_with(
        &nst(&[
            "features",
            "--image",
            s(&img),
            "--layers",
            "relu1_1",
            "--out",
            "/nonexistent-dir/x.safetensors",
            "--max-size",
            "32",
        ]),
        &["/nonexistent-dir"],
    );
    assert_fails_with(
        &nst(&[
            "features",
            "--image",
            s(&img),
            "--layers",
            "relu1_1",
            "--out",
            s(&out),
            "--max-pixels",
            "1000",
        ]),
        &["1000", "limit"],
    );
    // Upscaling past the pixel limit is refused before the network runs.
    assert_fails_with(
        &nst(&[
            "features",
            "--image",
            s(&thumb("tubingen.jpg", 40, 30)),
            "--layers",
            "relu1_1",
            "--out",
            s(&out),
            "--max-size",
            "100000",
            "--max-pixels",
            "1000000",
        ]),
        &["--max-size 100000", "limit of 1000000", "--max-pixels"],
    );
    // Within the pixel limit but over the memory budget: refused before the network runs,
    // with the prediction. (relu4_2 of 2000x1500 keeps 3 M floats and passes 190 M.)
    assert_fails_with(
        &nst(&[
            "features",
            "--image",
            s(&thumb("tubingen.jpg", 40, 30)),
            "--layers",
            "relu1_1,relu4_2",
            "--out",
            s(&out),
            "--max-size",
            "2000",
            "--max-memory",
            "400M",
        ]),
        &["2000x1500", "over the budget of 400", "--max-memory"],
    );
    assert!(!out.exists(), "a refused extraction wrote its output");
    assert_fails_with(
        &nst(&[
            "features",
            "--image",
            s(&img),
            "--layers",
            "relu5_1",
            "--out",
            s(&out),
            "--max-size",
            "12",
        ]),
        &["too small", "relu5_1", "16x16"],
    );
    let corrupt = tmp("corrupt.safetensors");
    std::fs::write(&corrupt, b"garbage weights").unwrap();
    assert_fails_with(
        &nst(&[
            "features",
            "--image",
            s(&img),
            "--layers",
            "relu1_1",
            "--out",
            s(&out),
            "--weights",
            s(&corrupt),
        ]),
        &["corrupt.safetensors", "fetch-weights"],
    );
    assert_fails_with(
        &nst(&[
            "features",
            "--image",
            s(&img),
            "--layers",
            "relu1_1",
            "--out",
            s(&out),
            "--weights",
            s(&missing),
        ]),
        &["fetch-weights"],
    );
    assert!(!out.exists(), "nothing may be written on failure");
}

#[test]
fn real_weights_convert_round_trips_and_garbage_is_refused() {
    let w = real_weights();
    let out = tmp("converted.safetensors");
    let r = nst(&["convert-weights", "--from", s(&w), "--out", s(&out)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // Our own layout converts to the same tensors (metadata kept).
    let a = std::fs::read(&w).unwrap();
    let b = std::fs::read(&out).unwrap();
    let (sa, sb) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    assert_eq!(sa.len(), sb.len());
    for name in ["conv1_1.weight", "conv5_4.bias"] {
        assert_eq!(
            sa.tensor(name).unwrap().data(),
            sb.tensor(name).unwrap().data()
        );
    }
    let junk = tmp("junk.pth");
    std::fs::write(&junk, b"not a checkpoint at all").unwrap();
    let never = tmp("never-converted.safetensors");
    assert_fails_with(
        &nst(&["convert-weights", "--from", s(&junk), "--out", s(&never)]),
        &["junk.pth"],
    );
    assert!(!never.exists());
}
