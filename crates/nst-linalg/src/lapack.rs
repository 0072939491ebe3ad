//! The LAPACK eigensolver (`dsyev` through ndarray-linalg), behind the `lapack` feature.

use crate::{prepared, Error, Result, SymEigen};
use ndarray::Array2;
use ndarray_linalg::{Eigh, UPLO};

/// The eigendecomposition of the symmetric `n x n` matrix `a` (row-major; the average of
/// `a` and `aᵀ` is decomposed) by LAPACK's `dsyev` on the system's OpenBLAS.
pub fn eigh_lapack(a: &[f64], n: usize) -> Result<SymEigen> {
    let Some(w) = prepared(a, n)? else {
        return Ok(SymEigen::sorted(0, Vec::new(), Vec::new()));
    };
    let m = Array2::from_shape_vec((n, n), w).map_err(|e| Error::Input(e.to_string()))?;
    let (values, vectors) = m
        .eigh(UPLO::Lower)
        .map_err(|e| Error::NoConvergence(format!("LAPACK: {e}")))?;
    // The columns of `vectors` are the eigenvectors: store them as rows.
    let mut vt = vec![0.0; n * n];
    for k in 0..n {
        for i in 0..n {
            vt[k * n + i] = vectors[[i, k]];
        }
    }
    Ok(SymEigen::sorted(n, values.to_vec(), vt))
}
