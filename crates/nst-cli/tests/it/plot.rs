//! `nst plot` on real logs: two scales, a resumed render's appended log, several runs
//! overlaid, both axes, SVG and PNG; and its errors.

use super::{images, nst, weights};
use crate::features::{assert_fails_with, s, tmp};

#[test]
fn plots_real_logs_as_svg_and_png() {
    weights();
    let c = images().join("tubingen.jpg");
    let st = images().join("starry_night.jpg");
    let (a, b) = (tmp("plot_a.jsonl"), tmp("plot_b.jsonl"));
    for (log, extra) in [(&a, "gram"), (&b, "w2")] {
        let r = nst(&[
            "render",
            "--content",
            s(&c),
            "--style",
            s(&st),
            "--out",
            s(&tmp("plot_r.png")),
            "--scales",
            "32,48",
            "--iterations",
            "4",
            "--style-loss",
            extra,
            "--threads",
            "2",
            "--quiet",
            "--json-log",
            s(log),
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    // The log describes the run: settings first, then scale changes among the records.
    let text = std::fs::read_to_string(&a).unwrap();
    let first = text.lines().next().unwrap();
    assert!(
        first.contains("\"event\":\"start\"") && first.contains("\"device\":\"cpu-f32\""),
        "{first}"
    );
    assert_eq!(text.matches("\"event\":\"scale\"").count(), 2);
    let svg = tmp("plot.svg");
    let r = nst(&["plot", s(&a), "--out", s(&svg)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let body = std::fs::read_to_string(&svg).unwrap();
    assert!(body.starts_with("<svg"));
    // One legend entry per term and the total: content, five style layers, tv.
    for term in ["total", "content/relu4_2", "style/relu5_1", "tv"] {
        assert!(body.contains(term), "{term} missing from the chart");
    }
    assert!(
        body.contains("\n8\n"),
        "the iteration axis runs across both scales to 8"
    );
    let png = tmp("plot.png");
    let r = nst(&[
        "plot",
        s(&a),
        s(&b),
        "--out",
        s(&png),
        "--x",
        "time",
        "--size",
        "640x400",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (640, 400));
    // Errors: a missing log, something that is not a log, an unknown format.
    assert_fails_with(
        &nst(&["plot", "/nonexistent.jsonl", "--out", s(&svg)]),
        &["cannot read", "/nonexistent.jsonl"],
    );
    let junk = tmp("plot_junk.jsonl");
    std::fs::write(&junk, "not json\n").unwrap();
    assert_fails_with(
        &nst(&["plot", s(&junk), "--out", s(&svg)]),
        &["line 1", "not JSON"],
    );
    let empty = tmp("plot_empty.jsonl");
    std::fs::write(&empty, "{\"event\":\"start\"}\n").unwrap();
    assert_fails_with(
        &nst(&["plot", s(&empty), "--out", s(&svg)]),
        &["no iteration records"],
    );
    assert_fails_with(
        &nst(&["plot", s(&a), "--out", s(&tmp("plot.gif"))]),
        &[".svg or .png"],
    );
}
