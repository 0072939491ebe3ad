//! `nst-bench quality`: the style losses side by side on photo/painting pairs, scored by two
//! measures that do not use VGG19 (so no loss can game them): structure kept (SSIM of the
//! blurred luminances of the output and the photo) and palette matched (the sliced
//! Wasserstein-1 distance between the output's and the painting's colours in CIELAB).

use anyhow::{bail, Context, Result};
use image::{imageops::FilterType, RgbImage};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Directions of the sliced Wasserstein distance.
const DIRECTIONS: usize = 64;
/// Its seed.
const SEED: u64 = 0x5eed_c01e;

/// The six default pairs: each photo with two paintings.
pub(crate) fn default_pairs() -> Vec<(String, String)> {
    [
        ("tubingen.jpg", "starry_night.jpg"),
        ("tubingen.jpg", "shipwreck.jpg"),
        ("golden_gate.jpg", "the_scream.jpg"),
        ("golden_gate.jpg", "seated-nude.jpg"),
        ("hoovertowernight.jpg", "woman-with-hat-matisse.jpg"),
        ("hoovertowernight.jpg", "picasso_selfport1907.jpg"),
    ]
    .iter()
    .map(|(c, s)| (c.to_string(), s.to_string()))
    .collect()
}

/// Luminance (BT.601) of an RGB image, row-major.
fn luminance(img: &RgbImage) -> Vec<f64> {
    img.pixels()
        .map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64)
        .collect()
}

/// A separable Gaussian blur of standard deviation `sigma` (edges clamped).
fn blur(v: &[f64], w: usize, h: usize, sigma: f64) -> Vec<f64> {
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f64> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = k.iter().sum();
    let k: Vec<f64> = k.iter().map(|x| x / sum).collect();
    let pass = |src: &[f64], horizontal: bool| -> Vec<f64> {
        let mut out = vec![0.0; w * h];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    let d = j as isize - r;
                    let (sx, sy) = if horizontal {
                        ((x as isize + d).clamp(0, w as isize - 1) as usize, y)
                    } else {
                        (x, (y as isize + d).clamp(0, h as isize - 1) as usize)
                    };
                    acc += kv * src[sy * w + sx];
                }
                out[y * w + x] = acc;
            }
        }
        out
    };
    pass(&pass(v, true), false)
}

/// The mean SSIM of two `w x h` grey images (0-255) with the usual Gaussian window (σ = 1.5)
/// and constants (K1 = 0.01, K2 = 0.03).
pub(crate) fn ssim(a: &[f64], b: &[f64], w: usize, h: usize) -> f64 {
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let mul = |x: &[f64], y: &[f64]| -> Vec<f64> { x.iter().zip(y).map(|(p, q)| p * q).collect() };
    let g = |v: &[f64]| blur(v, w, h, 1.5);
    let (ma, mb) = (g(a), g(b));
    let (saa, sbb, sab) = (g(&mul(a, a)), g(&mul(b, b)), g(&mul(a, b)));
    let mut total = 0.0;
    for i in 0..w * h {
        let (va, vb) = (saa[i] - ma[i] * ma[i], sbb[i] - mb[i] * mb[i]);
        let cov = sab[i] - ma[i] * mb[i];
        total += ((2.0 * ma[i] * mb[i] + c1) * (2.0 * cov + c2))
            / ((ma[i] * ma[i] + mb[i] * mb[i] + c1) * (va + vb + c2));
    }
    total / (w * h) as f64
}

/// Structure kept: the SSIM of the output's and the photo's luminances, both blurred by a
/// Gaussian of σ = 2 px at 512 px (scaled with the image), so texture does not count.
pub(crate) fn structure(output: &RgbImage, photo: &RgbImage) -> f64 {
    let (w, h) = output.dimensions();
    let photo = image::imageops::resize(photo, w, h, FilterType::Triangle);
    let sigma = 2.0 * w.max(h) as f64 / 512.0;
    let (w, h) = (w as usize, h as usize);
    let a = blur(&luminance(output), w, h, sigma);
    let b = blur(&luminance(&photo), w, h, sigma);
    ssim(&a, &b, w, h)
}

/// sRGB (0-255) to CIELAB (D65).
fn lab(p: &image::Rgb<u8>) -> [f64; 3] {
    let lin = |c: u8| {
        let c = c as f64 / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let (r, g, b) = (lin(p[0]), lin(p[1]), lin(p[2]));
    let x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / 0.95047;
    let y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b;
    let z = (0.0193339 * r + 0.1191920 * g + 0.9503041 * b) / 1.08883;
    let f = |t: f64| {
        if t > (6.0f64 / 29.0).powi(3) {
            t.cbrt()
        } else {
            t / (3.0 * (6.0f64 / 29.0).powi(2)) + 4.0 / 29.0
        }
    };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// The sliced Wasserstein-1 distance between two point sets in 3-D: the mean over
/// [`DIRECTIONS`] seeded random directions of the W1 distance of the projections (quantiles
/// matched at the smaller set's count).
pub(crate) fn sliced_w1(a: &[[f64; 3]], b: &[[f64; 3]]) -> f64 {
    let mut s = SEED;
    let mut next = || {
        // xorshift64*, mapped to (-1, 1).
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let n = a.len().min(b.len());
    if n == 0 {
        return f64::NAN;
    }
    let mut total = 0.0;
    for _ in 0..DIRECTIONS {
        let mut d = [0.0; 3];
        loop {
            d.iter_mut().for_each(|v| *v = next());
            let norm = d.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 1e-3 && norm <= 1.0 {
                d.iter_mut().for_each(|v| *v /= norm);
                break;
            }
        }
        let proj = |set: &[[f64; 3]]| -> Vec<f64> {
            let mut p: Vec<f64> = set
                .iter()
                .map(|q| q[0] * d[0] + q[1] * d[1] + q[2] * d[2])
                .collect();
            p.sort_by(f64::total_cmp);
            p
        };
        let (pa, pb) = (proj(a), proj(b));
        let q = |p: &[f64], i: usize| p[((i as f64 + 0.5) / n as f64 * p.len() as f64) as usize];
        total += (0..n).map(|i| (q(&pa, i) - q(&pb, i)).abs()).sum::<f64>() / n as f64;
    }
    total / DIRECTIONS as f64
}

/// Palette matched: the sliced W1 distance between the output's and the painting's colours
/// in CIELAB (the painting at the output's scale).
pub(crate) fn palette(output: &RgbImage, painting: &RgbImage) -> f64 {
    let (w, h) = output.dimensions();
    let long = w.max(h);
    let (pw, ph) = painting.dimensions();
    let k = long as f64 / pw.max(ph) as f64;
    let painting = image::imageops::resize(
        painting,
        ((pw as f64 * k).round() as u32).max(1),
        ((ph as f64 * k).round() as u32).max(1),
        FilterType::Triangle,
    );
    let a: Vec<[f64; 3]> = output.pixels().map(lab).collect();
    let b: Vec<[f64; 3]> = painting.pixels().map(lab).collect();
    sliced_w1(&a, &b)
}

struct Row {
    pair: (String, String),
    loss: String,
    seconds: f64,
    structure: f64,
    palette: f64,
}

/// Renders every pair with every loss at `size` (the defaults otherwise), scores them and
/// prints the table; pictures and renders go to `dir`.
pub(crate) fn bench(
    nst: &Path,
    images: &Path,
    dir: &Path,
    pairs: &[(String, String)],
    losses: &[String],
    size: usize,
    extra: &[String],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = |n: &str| {
        Path::new(n)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(n)
            .to_string()
    };
    let mut rows = Vec::new();
    for (c, s) in pairs {
        let (cp, sp) = (images.join(c), images.join(s));
        let photo = image::open(&cp)
            .with_context(|| format!("reading {}", cp.display()))?
            .into_rgb8();
        let painting = image::open(&sp)
            .with_context(|| format!("reading {}", sp.display()))?
            .into_rgb8();
        let mut outputs = Vec::new();
        for loss in losses {
            let out: PathBuf = dir.join(format!("{}_{}_{loss}_{size}.png", stem(c), stem(s)));
            let t = Instant::now();
            let st = Command::new(nst)
                .args(["render", "--content"])
                .arg(&cp)
                .arg("--style")
                .arg(&sp)
                .arg("--out")
                .arg(&out)
                .args(["--size", &size.to_string(), "--style-loss", loss, "--quiet"])
                .args(extra)
                .status()
                .with_context(|| format!("running {}", nst.display()))?;
            if !st.success() {
                bail!("nst render failed for {c} / {s} with {loss}");
            }
            let seconds = t.elapsed().as_secs_f64();
            let img = image::open(&out)?.into_rgb8();
            let row = Row {
                pair: (c.clone(), s.clone()),
                loss: loss.clone(),
                seconds,
                structure: structure(&img, &photo),
                palette: palette(&img, &painting),
            };
            println!(
                "{} / {} {:>5}: {:7.1} s  structure (SSIM) {:.4}  palette (SW1, Lab) {:.2}",
                stem(c),
                stem(s),
                loss,
                row.seconds,
                row.structure,
                row.palette
            );
            rows.push(row);
            outputs.push(img);
        }
        side_by_side(
            &photo,
            &outputs,
            &painting,
            &dir.join(format!("{}_{}_{size}.jpg", stem(c), stem(s))),
        )?;
    }
    println!("\n| pair | loss | time (s) | structure: SSIM ↑ | palette: SW1 in Lab ↓ |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} / {} | {} | {:.1} | {:.4} | {:.2} |",
            stem(&r.pair.0),
            stem(&r.pair.1),
            r.loss,
            r.seconds,
            r.structure,
            r.palette
        );
    }
    // Each loss against the first (the Gram default).
    if let Some(base) = losses.first() {
        for loss in &losses[1..] {
            let (mut more, mut no_worse, mut t0, mut t1, mut n) = (0, 0, 0.0, 0.0, 0);
            for (a, b) in rows
                .iter()
                .filter(|r| &r.loss == base)
                .zip(rows.iter().filter(|r| &r.loss == loss))
            {
                more += usize::from(b.structure > a.structure);
                no_worse += usize::from(b.palette <= a.palette);
                t0 += a.seconds;
                t1 += b.seconds;
                n += 1;
            }
            println!(
                "\n{loss} against {base}: more structure on {more} of {n} pairs, a palette no worse on {no_worse} of {n}, {:.2}x the time",
                t1 / t0
            );
        }
    }
    Ok(())
}

/// The photo, each output and the painting in a row, at the outputs' height.
fn side_by_side(
    photo: &RgbImage,
    outputs: &[RgbImage],
    painting: &RgbImage,
    path: &Path,
) -> Result<()> {
    let h = outputs.first().map_or(256, |o| o.height());
    let fit = |img: &RgbImage| {
        let w = (img.width() as f64 * h as f64 / img.height() as f64).round() as u32;
        image::imageops::resize(img, w.max(1), h, FilterType::Triangle)
    };
    let mut row: Vec<RgbImage> = vec![fit(photo)];
    row.extend(outputs.iter().map(fit));
    row.push(fit(painting));
    let gap = 4;
    let width: u32 = row.iter().map(|i| i.width() + gap).sum::<u32>() - gap;
    let mut canvas = RgbImage::from_pixel(width, h, image::Rgb([255, 255, 255]));
    let mut x = 0;
    for img in &row {
        image::imageops::replace(&mut canvas, img, x as i64, 0);
        x += img.width() + gap;
    }
    canvas
        .save(path)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssim_is_one_on_equal_images_and_falls_with_noise() {
        let (w, h) = (24, 20);
        let a: Vec<f64> = (0..w * h).map(|i| ((i * 37) % 255) as f64).collect();
        assert!((ssim(&a, &a, w, h) - 1.0).abs() < 1e-12);
        let b: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, v)| v + if i % 2 == 0 { 40.0 } else { -40.0 })
            .collect();
        let s = ssim(&a, &b, w, h);
        assert!(s < 0.9 && s > -1.0, "{s}");
    }

    #[test]
    fn sliced_w1_is_zero_on_equal_sets_and_measures_a_shift() {
        let a: Vec<[f64; 3]> = (0..50)
            .map(|i| [i as f64, (i * 7 % 13) as f64, 1.0])
            .collect();
        assert_eq!(sliced_w1(&a, &a), 0.0);
        // A shift by t along every axis moves each projection by t·(d₀ + d₁ + d₂): the mean
        // of |d₀ + d₁ + d₂| over random unit directions is between 0 and √3.
        let b: Vec<[f64; 3]> = a
            .iter()
            .map(|p| [p[0] + 2.0, p[1] + 2.0, p[2] + 2.0])
            .collect();
        let d = sliced_w1(&a, &b);
        assert!(d > 0.5 && d < 2.0 * 3f64.sqrt(), "{d}");
    }

    #[test]
    fn lab_of_white_and_black() {
        let w = lab(&image::Rgb([255, 255, 255]));
        assert!((w[0] - 100.0).abs() < 0.01 && w[1].abs() < 0.01 && w[2].abs() < 0.01);
        let k = lab(&image::Rgb([0, 0, 0]));
        assert!(k[0].abs() < 1e-9);
    }
}
