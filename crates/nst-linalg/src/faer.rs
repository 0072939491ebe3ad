//! The default eigensolver: faer's self-adjoint eigendecomposition (pure Rust, maintained;
//! sequential here, so the result does not depend on the thread count).

use crate::{prepared, Error, Result, SymEigen};

/// The eigendecomposition of the symmetric `n x n` matrix `a` (row-major; the average of `a`
/// and `aᵀ` is decomposed) by faer.
pub fn eigh_faer(a: &[f64], n: usize) -> Result<SymEigen> {
    let Some(w) = prepared(a, n)? else {
        return Ok(SymEigen::sorted(0, Vec::new(), Vec::new()));
    };
    let m = faer::Mat::<f64>::from_fn(n, n, |i, j| w[i * n + j]);
    let e = m
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| Error::NoConvergence(format!("faer: {e:?}")))?;
    let (s, u) = (e.S().column_vector(), e.U());
    let values: Vec<f64> = (0..n).map(|k| s[k]).collect();
    // The columns of `U` are the eigenvectors: store them as rows.
    let mut vt = vec![0.0; n * n];
    for k in 0..n {
        for i in 0..n {
            vt[k * n + i] = u[(i, k)];
        }
    }
    Ok(SymEigen::sorted(n, values, vt))
}
