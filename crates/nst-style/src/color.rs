//! Colour control (Gatys et al., "Controlling Perceptual Factors in Neural Style Transfer",
//! CVPR 2017): luminance-only transfer, and matching the style image's colour statistics to
//! the content's before the transfer.
//!
//! Luminance is BT.601 (`Y = 0.299 R + 0.587 G + 0.114 B`), the same Y as
//! [`Image::with_colors_of`] recombines with the content's chroma (YUV).
//!
//! Colour matching maps each style pixel `x` to `A (x − μ_s) + μ_c`, with `μ` the mean colours
//! and `A` chosen so that the result's colour covariance is the content's, `A Σ_s Aᵀ = Σ_c`
//! (both covariances get `ε = 1e-5 · 255²` on the diagonal, as in the paper's code). Three
//! choices of `A`, the matrix roots of [`MatrixRoot`]:
//! - `Pca`: `A = Σ_c^½ Σ_s^(−½)` (symmetric roots by eigendecomposition; the default);
//! - `Cholesky`: `A = L_c L_s⁻¹`, with `Σ = L Lᵀ`;
//! - `Symmetric`: `A = Σ_s^(−½) (Σ_s^½ Σ_c Σ_s^½)^½ Σ_s^(−½)`, the one symmetric `A`.
//!
//! The palette control goes the other way, after the render: the output's colours are mapped
//! the same way so that their mean and covariance are the style images', measured in OkLab
//! (Ottosson's perceptual colour space, the one NNST's colour correction works in;
//! `ε = 1e-6` there), then onto their whole colour distribution by sliced optimal transport,
//! and last its lightness so that its distribution is exactly theirs
//! ([`match_palette`]). The nearest-neighbour loss renders with it by default: its cosine is
//! blind to the features' magnitude, so it reproduces the painting's strokes but leaves the
//! photo's colours (docs/objective.md).

use crate::Image;

/// Which matrix root colour matching uses (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MatrixRoot {
    /// `Σ_c^½ Σ_s^(−½)`.
    #[default]
    Pca,
    /// `L_c L_s⁻¹`.
    Cholesky,
    /// `Σ_s^(−½) (Σ_s^½ Σ_c Σ_s^½)^½ Σ_s^(−½)`.
    Symmetric,
}

/// How a render treats colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ColorControl {
    /// The style's colours come through.
    #[default]
    None,
    /// Optimise on luminance only (content and style as grey, the style's luminance mean
    /// and standard deviation matched to the content's), then put back the content's chroma.
    Luminance,
    /// Match the style image's colour mean and covariance to the content's first.
    Match(MatrixRoot),
    /// After the render, move the output's colours (in OkLab) onto the style images' colour
    /// distribution (pooled by their blend weights): [`match_palette`].
    Palette(MatrixRoot),
}

impl ColorControl {
    /// The content and styles the objective sees under this control: as given; grey, with
    /// the styles' luminance moments matched to the content's (`Luminance`); or the styles
    /// colour-matched to the content (`Match`).
    pub fn prepare(self, content: &Image, styles: &[Image]) -> (Image, Vec<Image>) {
        match self {
            ColorControl::None | ColorControl::Palette(_) => (content.clone(), styles.to_vec()),
            ColorControl::Luminance => (
                luminance(content),
                styles
                    .iter()
                    .map(|s| luminance_matched(s, content))
                    .collect(),
            ),
            ColorControl::Match(root) => (
                content.clone(),
                styles
                    .iter()
                    .map(|s| match_colors(s, content, root))
                    .collect(),
            ),
        }
    }
}

type M3 = [[f64; 3]; 3];

fn mul(a: &M3, b: &M3) -> M3 {
    let mut c = [[0.0; 3]; 3];
    for (i, row) in c.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    c
}

/// `m^power` of a symmetric positive definite matrix (eigenvalues floored at 1e-12).
/// By `nst-linalg`'s symmetric eigendecomposition (LAPACK with the `lapack` feature); a
/// matrix the solver rejects (non-finite covariances) gives the identity.
fn sym_power(m: &M3, power: f64) -> M3 {
    let flat: Vec<f64> = m.iter().flatten().copied().collect();
    let Ok(e) = nst_linalg::eigh(&flat, 3) else {
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    };
    let r = e.map(|v| v.max(1e-12).powf(power));
    [[r[0], r[1], r[2]], [r[3], r[4], r[5]], [r[6], r[7], r[8]]]
}

/// The lower-triangular Cholesky factor of a symmetric positive definite matrix.
#[allow(clippy::needless_range_loop)]
fn cholesky(m: &M3) -> M3 {
    let mut l = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            if i == j {
                l[i][j] = (m[i][i] - s).max(1e-12).sqrt();
            } else {
                l[i][j] = (m[i][j] - s) / l[j][j];
            }
        }
    }
    l
}

/// The inverse of a lower-triangular matrix.
#[allow(clippy::needless_range_loop)]
fn lower_inverse(l: &M3) -> M3 {
    let mut inv = [[0.0; 3]; 3];
    for i in 0..3 {
        inv[i][i] = 1.0 / l[i][i];
        for j in 0..i {
            let s: f64 = (j..i).map(|k| l[i][k] * inv[k][j]).sum();
            inv[i][j] = -s / l[i][i];
        }
    }
    inv
}

/// The mean and covariance (with `eps` on the diagonal) of a set of colours.
fn moments(points: impl Iterator<Item = [f64; 3]> + Clone, eps: f64) -> ([f64; 3], M3) {
    let mut n = 0.0;
    let mut mu = [0.0; 3];
    for p in points.clone() {
        n += 1.0;
        for c in 0..3 {
            mu[c] += p[c];
        }
    }
    let n = f64::max(n, 1.0);
    mu.iter_mut().for_each(|m| *m /= n);
    let mut cov = [[0.0; 3]; 3];
    for p in points {
        let d = [p[0] - mu[0], p[1] - mu[1], p[2] - mu[2]];
        for i in 0..3 {
            for j in 0..3 {
                cov[i][j] += d[i] * d[j];
            }
        }
    }
    for (i, row) in cov.iter_mut().enumerate() {
        for v in row.iter_mut() {
            *v /= n;
        }
        row[i] += eps;
    }
    (mu, cov)
}

/// An image's pixels as `f64` triples (0-255).
fn rgb(img: &Image) -> impl Iterator<Item = [f64; 3]> + Clone + '_ {
    img.data()
        .chunks_exact(3)
        .map(|p| [p[0] as f64, p[1] as f64, p[2] as f64])
}

/// The mean colour and the colour covariance (with `ε` on the diagonal) of an image.
fn stats(img: &Image) -> ([f64; 3], M3) {
    moments(rgb(img), 1e-5 * 255.0 * 255.0)
}

/// The matrix `A` of `root` that takes colours of covariance `from` to covariance `to`.
fn transfer_matrix(root: MatrixRoot, from: &M3, to: &M3) -> M3 {
    match root {
        MatrixRoot::Pca => mul(&sym_power(to, 0.5), &sym_power(from, -0.5)),
        MatrixRoot::Cholesky => mul(&cholesky(to), &lower_inverse(&cholesky(from))),
        MatrixRoot::Symmetric => {
            let (half, inv_half) = (sym_power(from, 0.5), sym_power(from, -0.5));
            let middle = sym_power(&mul(&half, &mul(to, &half)), 0.5);
            mul(&inv_half, &mul(&middle, &inv_half))
        }
    }
}

/// `a (p − from) + to`.
fn affine(a: &M3, p: [f64; 3], from: &[f64; 3], to: &[f64; 3]) -> [f64; 3] {
    let d = [p[0] - from[0], p[1] - from[1], p[2] - from[2]];
    [0, 1, 2].map(|i| to[i] + a[i][0] * d[0] + a[i][1] * d[1] + a[i][2] * d[2])
}

/// `img` with its colours mapped so their mean and covariance are `colors`'s (see the
/// module docs).
pub fn match_colors(img: &Image, colors: &Image, root: MatrixRoot) -> Image {
    let (mu_s, cov_s) = stats(img);
    let (mu_c, cov_c) = stats(colors);
    let a = transfer_matrix(root, &cov_s, &cov_c);
    let data = rgb(img)
        .flat_map(|p| affine(&a, p, &mu_s, &mu_c).map(|v| v as f32))
        .collect();
    Image::new(img.width(), img.height(), data).expect("the same size")
}

/// Linear sRGB to OkLab's cone responses (Ottosson, "A perceptual color space for image
/// processing", 2020).
const LMS_OF_RGB: M3 = [
    [0.412_221_470_8, 0.536_332_536_3, 0.051_445_992_9],
    [0.211_903_498_2, 0.680_699_545_1, 0.107_396_956_6],
    [0.088_302_461_9, 0.281_718_837_6, 0.629_978_700_5],
];

/// The cube roots of the cone responses to OkLab.
const LAB_OF_LMS: M3 = [
    [0.210_454_255_3, 0.793_617_785_0, -0.004_072_046_8],
    [1.977_998_495_1, -2.428_592_205_0, 0.450_593_709_9],
    [0.025_904_037_1, 0.782_771_766_2, -0.808_675_766_0],
];

fn apply(m: &M3, p: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|i| m[i][0] * p[0] + m[i][1] * p[1] + m[i][2] * p[2])
}

/// The inverse of a 3x3 matrix (by its adjugate).
fn inverse(m: &M3) -> M3 {
    let c = |i: usize, j: usize| {
        let (r0, r1) = ((i + 1) % 3, (i + 2) % 3);
        let (c0, c1) = ((j + 1) % 3, (j + 2) % 3);
        m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]
    };
    let det: f64 = (0..3).map(|j| m[0][j] * c(0, j)).sum();
    let mut inv = [[0.0; 3]; 3];
    for (i, row) in inv.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = c(j, i) / det;
        }
    }
    inv
}

/// sRGB (0-255) to OkLab.
fn oklab(p: [f64; 3]) -> [f64; 3] {
    let lin = |c: f64| {
        let c = c / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    apply(&LAB_OF_LMS, apply(&LMS_OF_RGB, p.map(lin)).map(f64::cbrt))
}

/// OkLab to sRGB (0-255), out-of-gamut colours clipped in linear light.
fn srgb(lab: [f64; 3], lms_of_lab: &M3, rgb_of_lms: &M3) -> [f64; 3] {
    let lms = apply(lms_of_lab, lab).map(|v| v * v * v);
    apply(rgb_of_lms, lms).map(|c| {
        let c = c.clamp(0.0, 1.0);
        255.0
            * if c <= 0.003_130_8 {
                12.92 * c
            } else {
                1.055 * c.powf(1.0 / 2.4) - 0.055
            }
    })
}

/// `img` with the palette of `styles` pooled by `weights`, in OkLab: its colours mapped
/// affinely so that their mean and covariance are the styles' (a mixture: the weighted means,
/// and the weighted second moments about the pooled mean), then moved onto the styles' whole
/// colour distribution by [`PALETTE_ROUNDS`] rounds of sliced optimal transport (each round
/// remaps the colours' coordinates along three orthogonal directions, drawn from a fixed
/// seed, so that each coordinate's distribution is the styles'), and last its lightness so
/// that its distribution is theirs. Every remap is monotone and piecewise linear through
/// [`QUANTILES`] quantiles, so equal colours stay equal and near ones near (no noise, no
/// banding). The weights are a blend as [`crate::normalize_blend`] takes it (empty: equal
/// shares); bad ones, or no styles, are an error.
pub fn match_palette(
    img: &Image,
    styles: &[Image],
    weights: &[f64],
    root: MatrixRoot,
) -> crate::Result<Image> {
    palette_with(img, styles, weights, root, 1e-6, PALETTE_ROUNDS, true)
}

/// The quantiles through which [`match_palette`] maps each coordinate.
pub const QUANTILES: usize = 1024;

/// The rounds of sliced transport in [`match_palette`]. On the six benchmark pairs at 512 px
/// (docs/benchmarks.md) three rounds already halve the colour distance the moments and the
/// lightness leave, ten take it to a fifth, and the photo's structure is the same.
pub const PALETTE_ROUNDS: usize = 10;

/// At most this many colours (a fixed stride through the image) are sorted for one
/// coordinate's quantiles, so that a print-sized image costs what a megapixel does.
const QUANTILE_SAMPLES: usize = 1 << 20;

/// [`match_palette`] with `eps` on the covariances' diagonals, `rounds` of sliced transport,
/// and with or without the lightness step.
fn palette_with(
    img: &Image,
    styles: &[Image],
    weights: &[f64],
    root: MatrixRoot,
    eps: f64,
    rounds: usize,
    lightness: bool,
) -> crate::Result<Image> {
    let weights = crate::normalize_blend(weights, styles.len())?;
    // Each image to OkLab once.
    let styles: Vec<Vec<[f64; 3]>> = styles.iter().map(|s| rgb(s).map(oklab).collect()).collect();
    let (mut mu, mut second) = ([0.0; 3], [[0.0; 3]; 3]);
    for (s, w) in styles.iter().zip(&weights) {
        let (m, c) = moments(s.iter().copied(), eps);
        for i in 0..3 {
            mu[i] += w * m[i];
            for j in 0..3 {
                second[i][j] += w * (c[i][j] + m[i] * m[j]);
            }
        }
    }
    let mut cov = second;
    for i in 0..3 {
        for j in 0..3 {
            cov[i][j] -= mu[i] * mu[j];
        }
    }
    let mut lab: Vec<[f64; 3]> = rgb(img).map(oklab).collect();
    let (mu_o, cov_o) = moments(lab.iter().copied(), eps);
    let a = transfer_matrix(root, &cov_o, &cov);
    for p in &mut lab {
        *p = affine(&a, *p, &mu_o, &mu);
    }
    let mut directions = Directions(0x6e73_745f_7061_6c65);
    for _ in 0..rounds {
        for axis in directions.basis() {
            transport_along(&mut lab, &styles, &weights, axis);
        }
    }
    if lightness {
        transport_along(&mut lab, &styles, &weights, [1.0, 0.0, 0.0]);
    }
    let (lms_of_lab, rgb_of_lms) = (inverse(&LAB_OF_LMS), inverse(&LMS_OF_RGB));
    let data = lab
        .into_iter()
        .flat_map(|p| srgb(p, &lms_of_lab, &rgb_of_lms).map(|v| v as f32))
        .collect();
    Ok(Image::new(img.width(), img.height(), data).expect("the same size"))
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Moves every colour of `lab` along the unit vector `axis` so that the distribution of the
/// colours' coordinate on it is the styles' (pooled by `weights`), through [`QUANTILES`]
/// quantiles.
fn transport_along(
    lab: &mut [[f64; 3]],
    styles: &[Vec<[f64; 3]>],
    weights: &[f64],
    axis: [f64; 3],
) {
    let stride = |n: usize| n.div_ceil(QUANTILE_SAMPLES).max(1);
    let from = quantiles(
        lab.iter()
            .step_by(stride(lab.len()))
            .map(|p| (dot(*p, axis), 1.0))
            .collect(),
    );
    let to = quantiles(
        styles
            .iter()
            .zip(weights)
            .flat_map(|(s, w)| {
                let step = stride(s.len());
                let share = w / s.len().div_ceil(step).max(1) as f64;
                s.iter().step_by(step).map(move |p| (dot(*p, axis), share))
            })
            .collect(),
    );
    for p in lab {
        let v = dot(*p, axis);
        let d = through(&from, &to, v) - v;
        for (c, a) in p.iter_mut().zip(axis) {
            *c += d * a;
        }
    }
}

/// Orthonormal bases of OkLab drawn from a fixed seed (SplitMix64, Gram–Schmidt), the same
/// on every platform.
struct Directions(u64);

impl Directions {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    fn vector(&mut self) -> [f64; 3] {
        [self.uniform(), self.uniform(), self.uniform()]
    }

    /// Three orthonormal directions.
    fn basis(&mut self) -> [[f64; 3]; 3] {
        loop {
            let (u, v) = (self.vector(), self.vector());
            let nu = dot(u, u).sqrt();
            if nu < 0.1 {
                continue;
            }
            let u = u.map(|c| c / nu);
            let k = dot(u, v);
            let v = [v[0] - k * u[0], v[1] - k * u[1], v[2] - k * u[2]];
            let nv = dot(v, v).sqrt();
            if nv < 0.1 {
                continue;
            }
            let v = v.map(|c| c / nv);
            let w = [
                u[1] * v[2] - u[2] * v[1],
                u[2] * v[0] - u[0] * v[2],
                u[0] * v[1] - u[1] * v[0],
            ];
            return [u, v, w];
        }
    }
}

/// The [`QUANTILES`] quantiles, at levels `(i + ½) / QUANTILES`, of weighted values (the
/// first value whose cumulative weight reaches the level).
fn quantiles(mut values: Vec<(f64, f64)>) -> Vec<f64> {
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = values.iter().map(|v| v.1).sum();
    let mut out = Vec::with_capacity(QUANTILES);
    let (mut k, mut cum) = (0, 0.0);
    for i in 0..QUANTILES {
        let level = (i as f64 + 0.5) / QUANTILES as f64 * total;
        while k + 1 < values.len() && cum + values[k].1 < level {
            cum += values[k].1;
            k += 1;
        }
        out.push(values.get(k).map_or(0.0, |v| v.0));
    }
    out
}

/// `v` mapped through the monotone piecewise-linear function taking the knots `from` to `to`
/// (constant beyond the ends; a run of equal knots maps to the last of their targets).
fn through(from: &[f64], to: &[f64], v: f64) -> f64 {
    let j = from.partition_point(|k| *k <= v);
    if j == 0 {
        return to[0];
    }
    if j == from.len() {
        return to[j - 1];
    }
    let t = (v - from[j - 1]) / (from[j] - from[j - 1]);
    to[j - 1] + t * (to[j] - to[j - 1])
}

/// BT.601 luminance.
fn luma(p: &[f32]) -> f64 {
    0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64
}

/// `img` as grey (its luminance in all three channels).
pub fn luminance(img: &Image) -> Image {
    let data = img
        .data()
        .chunks_exact(3)
        .flat_map(|p| [luma(p) as f32; 3])
        .collect();
    Image::new(img.width(), img.height(), data).expect("the same size")
}

/// `img` as grey with its luminance's mean and standard deviation matched to `reference`'s
/// (the style's luminance for luminance-only transfer).
pub fn luminance_matched(img: &Image, reference: &Image) -> Image {
    let moments = |im: &Image| {
        let y: Vec<f64> = im.data().chunks_exact(3).map(luma).collect();
        let n = y.len() as f64;
        let mean = y.iter().sum::<f64>() / n;
        let sd = (y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        (y, mean, sd)
    };
    let (y, mean, sd) = moments(img);
    let (_, rmean, rsd) = moments(reference);
    let k = if sd > 0.0 { rsd / sd } else { 1.0 };
    let data = y
        .iter()
        .flat_map(|v| [((v - mean) * k + rmean) as f32; 3])
        .collect();
    Image::new(img.width(), img.height(), data).expect("the same size")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(w: usize, h: usize, seed: u32) -> Image {
        let data = (0..w * h * 3)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2654435761).wrapping_add(seed * 97) >> 8;
                let c = i % 3;
                (x % 200) as f32 * (0.3 + 0.3 * c as f32) + 10.0 * c as f32
            })
            .collect();
        Image::new(w, h, data).unwrap()
    }

    #[test]
    fn every_matrix_root_matches_mean_and_covariance() {
        let (style, content) = (picture(30, 20, 1), picture(25, 25, 2));
        let (mu_c, cov_c) = stats(&content);
        for root in [MatrixRoot::Pca, MatrixRoot::Cholesky, MatrixRoot::Symmetric] {
            let (mu, cov) = stats(&match_colors(&style, &content, root));
            for i in 0..3 {
                assert!(
                    (mu[i] - mu_c[i]).abs() < 1e-3 * mu_c[i].abs().max(1.0),
                    "{root:?}"
                );
                for j in 0..3 {
                    let scale = cov_c[i][i].max(cov_c[j][j]);
                    assert!(
                        (cov[i][j] - cov_c[i][j]).abs() < 1e-3 * scale,
                        "{root:?} ({i}, {j}): {} vs {}",
                        cov[i][j],
                        cov_c[i][j]
                    );
                }
            }
        }
    }

    /// A picture of mid-range colours around `base` (so that a colour map keeps it in gamut).
    fn soft(w: usize, h: usize, seed: u32, base: [f32; 3]) -> Image {
        let p = picture(w, h, seed);
        let data = p
            .data()
            .iter()
            .enumerate()
            .map(|(i, v)| base[i % 3] + v * 0.3)
            .collect();
        Image::new(w, h, data).unwrap()
    }

    #[test]
    fn oklab_round_trips_and_has_its_white_and_black() {
        let (lms_of_lab, rgb_of_lms) = (inverse(&LAB_OF_LMS), inverse(&LMS_OF_RGB));
        let white = oklab([255.0; 3]);
        assert!((white[0] - 1.0).abs() < 1e-3 && white[1].abs() < 1e-3 && white[2].abs() < 1e-3);
        assert!(oklab([0.0; 3]).iter().all(|v| v.abs() < 1e-12));
        for p in [[12.0, 200.0, 90.0], [255.0, 0.0, 0.0], [30.0, 30.0, 31.0]] {
            let back = srgb(oklab(p), &lms_of_lab, &rgb_of_lms);
            for c in 0..3 {
                assert!((back[c] - p[c]).abs() < 1e-6, "{p:?} -> {back:?}");
            }
        }
    }

    #[test]
    fn the_palette_takes_the_pooled_styles_oklab_moments() {
        let img = soft(24, 18, 5, [60.0, 110.0, 90.0]);
        let styles = [
            soft(20, 20, 6, [120.0, 90.0, 80.0]),
            soft(16, 30, 7, [90.0, 100.0, 130.0]),
        ];
        let weights = [0.25, 0.75];
        let lab = |im: &Image| moments(rgb(im).map(oklab), 0.0);
        // The mixture's moments, from the two styles' pixels weighted by hand.
        let (m0, c0) = lab(&styles[0]);
        let (m1, c1) = lab(&styles[1]);
        let mu: [f64; 3] = [0, 1, 2].map(|i| 0.25 * m0[i] + 0.75 * m1[i]);
        for root in [MatrixRoot::Pca, MatrixRoot::Cholesky, MatrixRoot::Symmetric] {
            // Without the regulariser, so that the moments are exact.
            let out = palette_with(&img, &styles, &weights, root, 0.0, 0, false).unwrap();
            let (m, c) = lab(&out);
            for i in 0..3 {
                assert!(
                    (m[i] - mu[i]).abs() < 2e-3,
                    "{root:?} mean {i}: {} vs {}",
                    m[i],
                    mu[i]
                );
                for j in 0..3 {
                    let want = 0.25 * (c0[i][j] + m0[i] * m0[j])
                        + 0.75 * (c1[i][j] + m1[i] * m1[j])
                        - mu[i] * mu[j];
                    let scale = c[i][i].max(c[j][j]);
                    assert!(
                        (c[i][j] - want).abs() < 1e-3 * scale,
                        "{root:?} cov ({i}, {j}): {} vs {want}",
                        c[i][j]
                    );
                }
            }
        }
        // With the lightness step, the output's lightness quantiles are the mixture's.
        let out = match_palette(&img, &styles, &weights, MatrixRoot::Pca).unwrap();
        let light = |im: &Image| rgb(im).map(|p| oklab(p)[0]).collect::<Vec<_>>();
        let mut got = light(&out);
        got.sort_by(f64::total_cmp);
        let mut mix: Vec<(f64, f64)> = Vec::new();
        for (s, w) in styles.iter().zip(weights) {
            let n = (s.width() * s.height()) as f64;
            mix.extend(light(s).into_iter().map(|l| (l, w / n)));
        }
        mix.sort_by(|a, b| a.0.total_cmp(&b.0));
        for q in [0.1, 0.25, 0.5, 0.75, 0.9] {
            let want = mix
                .iter()
                .scan(0.0, |c, v| {
                    *c += v.1;
                    Some((*c, v.0))
                })
                .find(|(c, _)| *c >= q)
                .unwrap()
                .1;
            let have = got[(q * got.len() as f64) as usize];
            assert!((have - want).abs() < 0.02, "quantile {q}: {have} vs {want}");
        }
        // No weights: equal shares; no styles or bad weights: an error.
        assert_eq!(
            match_palette(&img, &styles, &[], MatrixRoot::Pca).unwrap(),
            match_palette(&img, &styles, &[2.0, 2.0], MatrixRoot::Pca).unwrap()
        );
        assert!(match_palette(&img, &[], &[], MatrixRoot::Pca).is_err());
        assert!(match_palette(&img, &styles, &[f64::NAN, 1.0], MatrixRoot::Pca).is_err());
    }

    /// The sliced Wasserstein-1 distance between two images' OkLab colours (30 directions).
    fn sliced_distance(a: &Image, b: &Image) -> f64 {
        let (a, b): (Vec<_>, Vec<_>) = (rgb(a).map(oklab).collect(), rgb(b).map(oklab).collect());
        let mut dirs = Directions(7);
        let mut total = 0.0;
        for _ in 0..10 {
            for axis in dirs.basis() {
                let sorted = |v: &[[f64; 3]]| {
                    let mut p: Vec<f64> = v.iter().map(|x| dot(*x, axis)).collect();
                    p.sort_by(f64::total_cmp);
                    p
                };
                let (pa, pb) = (sorted(&a), sorted(&b));
                let n = 256;
                total += (0..n)
                    .map(|i| {
                        let q = (i as f64 + 0.5) / n as f64;
                        let at = |p: &[f64]| p[(q * p.len() as f64) as usize];
                        (at(&pa) - at(&pb)).abs()
                    })
                    .sum::<f64>()
                    / n as f64;
            }
        }
        total / 30.0
    }

    #[test]
    fn the_palette_takes_the_whole_colour_distribution_not_only_its_moments() {
        // A photo of soft greens against a painting of two colours (red and blue, a little
        // noise): no affine map of the photo's colours makes two clusters, the transport does.
        let img = soft(40, 30, 11, [60.0, 110.0, 90.0]);
        let noise = picture(36, 36, 12);
        let data = noise
            .data()
            .chunks(3)
            .enumerate()
            .flat_map(|(i, n)| {
                let base = if (i / 6) % 2 == 0 {
                    [200.0, 40.0, 40.0]
                } else {
                    [30.0, 60.0, 190.0]
                };
                [0, 1, 2].map(|c| base[c] + n[c] * 0.05)
            })
            .collect();
        let style = Image::new(36, 36, data).unwrap();
        let styles = [style.clone()];
        let moments_only =
            palette_with(&img, &styles, &[], MatrixRoot::Pca, 1e-6, 0, true).unwrap();
        let full = match_palette(&img, &styles, &[], MatrixRoot::Pca).unwrap();
        let (before, after) = (
            sliced_distance(&moments_only, &style),
            sliced_distance(&full, &style),
        );
        assert!(after < 0.25 * before, "{after} vs {before}");
        assert!(after < 0.02, "{after}");
        // Equal colours stay equal (the map is one function of the colour) and the step is
        // deterministic.
        let flat = Image::new(8, 8, [100.0, 120.0, 140.0].repeat(64)).unwrap();
        let out = match_palette(&flat, &styles, &[], MatrixRoot::Pca).unwrap();
        assert!(out.data().chunks(3).all(|p| p == &out.data()[..3]));
        assert_eq!(
            full,
            match_palette(&img, &styles, &[], MatrixRoot::Pca).unwrap()
        );
        // The directions are orthonormal.
        let mut d = Directions(3);
        for _ in 0..20 {
            let b = d.basis();
            for i in 0..3 {
                for j in 0..3 {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((dot(b[i], b[j]) - want).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn quantile_maps_are_monotone_and_weighted() {
        // Half the weight on 0, half spread over 1..=4: the levels below ½ are 0.
        let q = quantiles(vec![
            (0.0, 4.0),
            (1.0, 1.0),
            (2.0, 1.0),
            (3.0, 1.0),
            (4.0, 1.0),
        ]);
        assert_eq!(q.len(), QUANTILES);
        assert_eq!(q[0], 0.0);
        assert_eq!(q[QUANTILES / 2 - 1], 0.0);
        assert_eq!(q[QUANTILES - 1], 4.0);
        assert!(q.windows(2).all(|w| w[0] <= w[1]));
        let (from, to) = ([0.0, 1.0, 1.0, 2.0], [10.0, 20.0, 30.0, 40.0]);
        assert_eq!(through(&from, &to, -1.0), 10.0);
        assert_eq!(through(&from, &to, 0.5), 15.0);
        assert_eq!(through(&from, &to, 1.0), 30.0);
        assert_eq!(through(&from, &to, 1.5), 35.0);
        assert_eq!(through(&from, &to, 9.0), 40.0);
    }

    #[test]
    fn the_symmetric_root_is_symmetric_and_exact() {
        let m: M3 = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]];
        let r = sym_power(&m, 0.5);
        let back = mul(&r, &r);
        for i in 0..3 {
            for j in 0..3 {
                assert!((back[i][j] - m[i][j]).abs() < 1e-12);
                assert!((r[i][j] - r[j][i]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn luminance_matching_takes_the_reference_moments() {
        let (a, b) = (picture(20, 10, 3), picture(12, 12, 4));
        let m = luminance_matched(&a, &b);
        let g = luminance(&b);
        let mean =
            |im: &Image| im.data().iter().map(|&v| v as f64).sum::<f64>() / im.data().len() as f64;
        assert!((mean(&m) - mean(&g)).abs() < 1e-3);
        assert!(m.data().chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    }
}
