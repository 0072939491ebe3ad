//! Flow on synthetic sequences with known motion made from a real photo: integer and
//! sub-pixel translations, a small rotation and a zoom (end-point error on pixels visible in
//! both frames), warping, and the consistency check's disoccluded band.
#![allow(clippy::print_stderr)]

use nst_flow::{consistency, flow, warp, Gray, Params};

use nst_testkit::images;

/// The Tübingen photo in grey, 320 px wide, softened a little (as a video frame is).
fn photo() -> Gray {
    let img = image::open(images().join("tubingen.jpg"))
        .expect("tubingen.jpg in the shared images")
        .resize(320, 320, image::imageops::FilterType::Triangle)
        .into_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let rgb: Vec<f32> = img.as_raw().iter().map(|&v| v as f32).collect();
    Gray::from_rgb(w, h, &rgb).unwrap()
}

/// Bilinear sample of `g` (clamped to the border).
fn at(g: &Gray, x: f32, y: f32) -> f32 {
    let (w, h) = (g.width() as f32, g.height() as f32);
    let (x, y) = (x.clamp(0.0, w - 1.001), y.clamp(0.0, h - 1.001));
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let d = g.data();
    let gw = g.width();
    let p = |xx: usize, yy: usize| d[yy * gw + xx];
    (p(x0, y0) * (1.0 - fx) + p(x0 + 1, y0) * fx) * (1.0 - fy)
        + (p(x0, y0 + 1) * (1.0 - fx) + p(x0 + 1, y0 + 1) * fx) * fy
}

/// Frames A and B (`w x h`, A's origin at `o` in the photo) where the point at `p` in A moves
/// to `m(p)` in B; `inv` is `m`'s inverse. Returns A, B and the true flow.
fn pair(
    w: usize,
    h: usize,
    o: (f32, f32),
    m: impl Fn(f32, f32) -> (f32, f32),
    inv: impl Fn(f32, f32) -> (f32, f32),
) -> (Gray, Gray, Vec<(f32, f32)>) {
    let src = photo();
    let a = Gray::from_fn(w, h, |x, y| at(&src, x as f32 + o.0, y as f32 + o.1));
    let b = Gray::from_fn(w, h, |x, y| {
        let (px, py) = inv(x as f32, y as f32);
        at(&src, px + o.0, py + o.1)
    });
    let truth = (0..w * h)
        .map(|i| {
            let (x, y) = ((i % w) as f32, (i / w) as f32);
            let (mx, my) = m(x, y);
            (mx - x, my - y)
        })
        .collect();
    (a, b, truth)
}

/// The mean end-point error over the pixels at least `margin` from the border.
fn epe(a: &Gray, b: &Gray, truth: &[(f32, f32)], margin: usize) -> f32 {
    let f = flow(a, b, &Params::default());
    let (w, h) = (a.width(), a.height());
    let (mut sum, mut n) = (0.0, 0);
    for y in margin..h - margin {
        for x in margin..w - margin {
            let (u, v) = f.at(x, y);
            let (tu, tv) = truth[y * w + x];
            sum += ((u - tu).powi(2) + (v - tv).powi(2)).sqrt();
            n += 1;
        }
    }
    sum / n as f32
}

#[test]
fn translations_rotation_and_zoom_are_recovered_to_half_a_pixel() {
    let (w, h) = (128, 96);
    let o = (90.0, 70.0);
    let mut report = Vec::new();
    for (name, d) in [
        ("integer", (3.0f32, -2.0f32)),
        ("sub-pixel", (1.5, 0.7)),
        ("large", (7.0, 4.0)),
    ] {
        let (a, b, t) = pair(
            w,
            h,
            o,
            |x, y| (x + d.0, y + d.1),
            |x, y| (x - d.0, y - d.1),
        );
        report.push((name, epe(&a, &b, &t, 12)));
    }
    // 2 degrees about the centre, and a 3% zoom about it.
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let th = 2.0f32.to_radians();
    let rot = move |x: f32, y: f32, s: f32| {
        let (dx, dy) = (x - cx, y - cy);
        (
            cx + dx * (s * th).cos() - dy * (s * th).sin(),
            cy + dx * (s * th).sin() + dy * (s * th).cos(),
        )
    };
    let (a, b, t) = pair(w, h, o, |x, y| rot(x, y, 1.0), |x, y| rot(x, y, -1.0));
    report.push(("rotation", epe(&a, &b, &t, 12)));
    let z = 1.03f32;
    let (a, b, t) = pair(
        w,
        h,
        o,
        |x, y| (cx + (x - cx) * z, cy + (y - cy) * z),
        |x, y| (cx + (x - cx) / z, cy + (y - cy) / z),
    );
    report.push(("zoom", epe(&a, &b, &t, 12)));
    eprintln!("end-point errors: {report:?}");
    for (name, e) in report {
        assert!(e <= 0.5, "{name}: mean end-point error {e} px");
    }
}

#[test]
fn warping_by_the_flow_rebuilds_the_frame_and_the_check_marks_the_disoccluded_band() {
    // The content moves 4 px right: the second frame's left band of 4 px is new.
    let (w, h) = (128, 96);
    let (a, b, _) = pair(w, h, (90.0, 70.0), |x, y| (x + 4.0, y), |x, y| (x - 4.0, y));
    let back = flow(&b, &a, &Params::default());
    let fwd = flow(&a, &b, &Params::default());
    let c = consistency(&back, &fwd);
    let band: f32 = (0..h)
        .flat_map(|y| (0..3).map(move |x| (x, y)))
        .map(|(x, y)| c[y * w + x])
        .sum();
    assert_eq!(band, 0.0, "the disoccluded band must be marked");
    let inner: Vec<f32> = (8..h - 8)
        .flat_map(|y| (8..w - 8).map(move |x| (x, y)))
        .map(|(x, y)| c[y * w + x])
        .collect();
    let kept = inner.iter().sum::<f32>() / inner.len() as f32;
    assert!(kept >= 0.9, "only {kept} of the interior is consistent");
    // B warped by the backward flow rebuilds A on the consistent pixels.
    let (rebuilt, inside) = warp(b.data(), 1, &fwd);
    let mut err = 0.0;
    let mut n = 0;
    for y in 8..h - 8 {
        for x in 8..w - 8 {
            let i = y * w + x;
            if inside[i] {
                err += (rebuilt[i] - a.data()[i]).abs();
                n += 1;
            }
        }
    }
    let mean = err / n as f32;
    assert!(mean < 3.0, "mean warping error {mean} (0-255)");
    let _ = back;
}

#[test]
fn bad_sizes_are_refused() {
    assert!(Gray::new(0, 3, vec![]).is_none());
    assert!(Gray::new(2, 2, vec![0.0; 3]).is_none());
    assert!(Gray::from_rgb(2, 2, &[0.0; 11]).is_none());
    assert!(nst_flow::Flow::new(2, 2, vec![0.0; 4], vec![0.0; 3]).is_none());
    let r = std::panic::catch_unwind(|| {
        flow(
            &Gray::from_fn(4, 4, |_, _| 0.0),
            &Gray::from_fn(5, 4, |_, _| 0.0),
            &Params::default(),
        )
    });
    assert!(r.is_err());
}
