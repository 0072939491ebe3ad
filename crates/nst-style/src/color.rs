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
}

impl ColorControl {
    /// The content and styles the objective sees under this control: as given; grey, with
    /// the styles' luminance moments matched to the content's (`Luminance`); or the styles
    /// colour-matched to the content (`Match`).
    pub fn prepare(self, content: &Image, styles: &[Image]) -> (Image, Vec<Image>) {
        match self {
            ColorControl::None => (content.clone(), styles.to_vec()),
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

/// The mean colour and the colour covariance (with `ε` on the diagonal) of an image.
fn stats(img: &Image) -> ([f64; 3], M3) {
    let n = (img.width() * img.height()) as f64;
    let mut mu = [0.0; 3];
    for p in img.data().chunks_exact(3) {
        for c in 0..3 {
            mu[c] += p[c] as f64;
        }
    }
    mu.iter_mut().for_each(|m| *m /= n);
    let mut cov = [[0.0; 3]; 3];
    for p in img.data().chunks_exact(3) {
        let d = [
            p[0] as f64 - mu[0],
            p[1] as f64 - mu[1],
            p[2] as f64 - mu[2],
        ];
        for i in 0..3 {
            for j in 0..3 {
                cov[i][j] += d[i] * d[j];
            }
        }
    }
    let eps = 1e-5 * 255.0 * 255.0;
    for (i, row) in cov.iter_mut().enumerate() {
        for v in row.iter_mut() {
            *v /= n;
        }
        row[i] += eps;
    }
    (mu, cov)
}

/// `img` with its colours mapped so their mean and covariance are `colors`'s (see the
/// module docs).
pub fn match_colors(img: &Image, colors: &Image, root: MatrixRoot) -> Image {
    let (mu_s, cov_s) = stats(img);
    let (mu_c, cov_c) = stats(colors);
    let a = match root {
        MatrixRoot::Pca => mul(&sym_power(&cov_c, 0.5), &sym_power(&cov_s, -0.5)),
        MatrixRoot::Cholesky => mul(&cholesky(&cov_c), &lower_inverse(&cholesky(&cov_s))),
        MatrixRoot::Symmetric => {
            let (half, inv_half) = (sym_power(&cov_s, 0.5), sym_power(&cov_s, -0.5));
            let middle = sym_power(&mul(&half, &mul(&cov_c, &half)), 0.5);
            mul(&inv_half, &mul(&middle, &inv_half))
        }
    };
    let data = img
        .data()
        .chunks_exact(3)
        .flat_map(|p| {
            let d = [
                p[0] as f64 - mu_s[0],
                p[1] as f64 - mu_s[1],
                p[2] as f64 - mu_s[2],
            ];
            (0..3).map(move |i| (mu_c[i] + a[i][0] * d[0] + a[i][1] * d[1] + a[i][2] * d[2]) as f32)
        })
        .collect();
    Image::new(img.width(), img.height(), data).expect("the same size")
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
