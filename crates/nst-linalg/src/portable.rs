//! The portable symmetric eigensolver: Householder tridiagonalisation, then implicit QL.

// Index loops over rows and columns read like the algorithm; iterator chains would not.
#![allow(clippy::needless_range_loop)]

use crate::{check, symmetrize, Error, Result, SymEigen};

/// The eigendecomposition of the symmetric `n x n` matrix `a` (row-major; the average of
/// `a` and `aᵀ` is decomposed) in pure Rust: Householder reflections reduce it to a
/// tridiagonal `T = Qᵀ A Q`, and the implicit QL algorithm with Wilkinson shifts
/// diagonalises `T`, its plane rotations applied to `Q`. About `9n³` flops.
pub fn eigh_portable(a: &[f64], n: usize) -> Result<SymEigen> {
    check(a, n)?;
    let mut w = a.to_vec();
    symmetrize(&mut w, n);
    let (mut d, mut e, mut qt) = tridiagonalize(&mut w, n);
    implicit_ql(&mut d, &mut e, &mut qt, n)?;
    Ok(SymEigen::sorted(n, d, qt))
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Reduces `w` (symmetric, overwritten) to tridiagonal form: the diagonal `d`, the
/// off-diagonal `e` (`e[i]` couples `i` and `i + 1`; `e[n − 1] = 0`) and `Qᵀ` (row-major, its
/// rows the columns of `Q`).
fn tridiagonalize(w: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    let mut qt = vec![0.0; n * n];
    for i in 0..n {
        qt[i * n + i] = 1.0;
    }
    let mut v = vec![0.0; n];
    let mut p = vec![0.0; n];
    let mut s = vec![0.0; n];
    for k in 0..n.saturating_sub(2) {
        d[k] = w[k * n + k];
        // The reflection maps the column below the diagonal, x, onto alpha·e₁.
        let m = n - k - 1;
        for i in 0..m {
            v[i] = w[(k + 1 + i) * n + k];
        }
        let norm = dot(&v[..m], &v[..m]).sqrt();
        if norm == 0.0 {
            e[k] = 0.0;
            continue;
        }
        let alpha = if v[0] > 0.0 { -norm } else { norm };
        v[0] -= alpha;
        // |v[0]| ≥ norm > 0: alpha has the opposite sign of x[0].
        let vn = dot(&v[..m], &v[..m]).sqrt();
        for x in &mut v[..m] {
            *x /= vn;
        }
        // The trailing block B becomes H B H = B − 2 v qᵀ − 2 q vᵀ, q = Bv − (vᵀBv) v.
        let lo = k + 1;
        for i in 0..m {
            let row = (lo + i) * n;
            p[i] = dot(&w[row + lo..row + n], &v[..m]);
        }
        let vp = dot(&v[..m], &p[..m]);
        for i in 0..m {
            p[i] -= vp * v[i];
        }
        for i in 0..m {
            let (vi, pi) = (2.0 * v[i], 2.0 * p[i]);
            let row = (lo + i) * n;
            for ((b, pj), vj) in w[row + lo..row + n].iter_mut().zip(&p[..m]).zip(&v[..m]) {
                *b -= vi * pj + pi * vj;
            }
        }
        e[k] = alpha;
        // Q ← Q H, i.e. the rows lo.. of Qᵀ ← (I − 2vvᵀ) · those rows.
        s.fill(0.0);
        for i in 0..m {
            let vi = v[i];
            for (sj, q) in s.iter_mut().zip(&qt[(lo + i) * n..(lo + i + 1) * n]) {
                *sj += vi * q;
            }
        }
        for i in 0..m {
            let c = 2.0 * v[i];
            for (q, sj) in qt[(lo + i) * n..(lo + i + 1) * n].iter_mut().zip(&s) {
                *q -= c * sj;
            }
        }
    }
    if n >= 2 {
        d[n - 2] = w[(n - 2) * n + n - 2];
        e[n - 2] = w[(n - 1) * n + n - 2];
    }
    if n >= 1 {
        d[n - 1] = w[(n - 1) * n + n - 1];
    }
    (d, e, qt)
}

/// Rotates rows `i` and `i + 1` of `zt` (columns of the eigenvector matrix).
fn rotate(zt: &mut [f64], n: usize, i: usize, c: f64, s: f64) {
    let (lo, hi) = zt.split_at_mut((i + 1) * n);
    let zi = &mut lo[i * n..];
    for (a, b) in zi.iter_mut().zip(&mut hi[..n]) {
        let f = *b;
        *b = s * *a + c * f;
        *a = c * *a - s * f;
    }
}

/// Diagonalises the tridiagonal `(d, e)` in place by implicit QL steps with Wilkinson
/// shifts, applying every rotation to the rows of `zt`.
fn implicit_ql(d: &mut [f64], e: &mut [f64], zt: &mut [f64], n: usize) -> Result<()> {
    // A coupling is negligible below rounding relative to its two diagonal entries or to the
    // whole matrix (the reduction is accurate to `ε‖A‖` anyway; without the second test,
    // clusters of eigenvalues near zero can stall on couplings at rounding level).
    let norm = d
        .iter()
        .zip(e.iter())
        .fold(0.0f64, |m, (a, b)| m.max(a.abs() + b.abs()));
    let tiny = f64::EPSILON * norm;
    for l in 0..n {
        let mut iterations = 0;
        loop {
            // The first negligible coupling at or after l splits off the block l..=m.
            let mut m = l;
            while m + 1 < n {
                let scale = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * scale || e[m].abs() <= tiny {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            iterations += 1;
            if iterations > 64 {
                return Err(Error::NoConvergence(format!(
                    "eigenvalue {l} of {n} after {iterations} QL steps"
                )));
            }
            // The shift: the eigenvalue of the leading 2x2 block closer to d[l].
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut split = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    // Underflow: the block splits at i + 1.
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    split = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
                rotate(zt, n, i, c, s);
            }
            if split {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    Ok(())
}
