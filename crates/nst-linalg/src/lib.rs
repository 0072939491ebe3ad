//! Symmetric eigendecompositions and the matrix functions built on them, in `f64`.
//!
//! Two solvers compute `A = V Λ Vᵀ` for a real symmetric `A`:
//! - [`eigh_faer`]: faer's self-adjoint eigendecomposition (pure Rust, always built);
//! - `eigh_lapack` (feature `lapack`): LAPACK's `dsyev` through ndarray-linalg on the
//!   system's OpenBLAS.
//!
//! [`eigh`] uses LAPACK when the feature is on and faer otherwise;
//! [`solver`] says which. On top of it, [`SymEigen::map`] forms `V f(Λ) Vᵀ` (square roots,
//! inverse square roots, …) and [`matmul`] multiplies dense row-major matrices.
//!
//! ```
//! // The square root of [[5, 4], [4, 5]] (eigenvalues 1 and 9) is [[2, 1], [1, 2]].
//! let e = nst_linalg::eigh(&[5.0, 4.0, 4.0, 5.0], 2).unwrap();
//! let root = e.map(f64::sqrt);
//! for (got, want) in root.iter().zip([2.0, 1.0, 1.0, 2.0]) {
//!     assert!((got - want).abs() < 1e-12);
//! }
//! ```

#![warn(missing_docs)]

mod faer;

#[cfg(feature = "lapack")]
mod lapack;

pub use crate::faer::eigh_faer;
#[cfg(feature = "lapack")]
pub use lapack::eigh_lapack;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is not an `n x n` matrix of finite numbers.
    #[error("eigh: {0}")]
    Input(String),
    /// The solver did not converge.
    #[error("eigh: no convergence ({0})")]
    NoConvergence(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// An eigendecomposition `A = V Λ Vᵀ` of a symmetric `n x n` matrix: eigenvalues ascending,
/// eigenvectors orthonormal.
#[derive(Clone, Debug)]
pub struct SymEigen {
    n: usize,
    values: Vec<f64>,
    /// Eigenvector `k` is `vectors[k·n .. (k+1)·n]` (the rows of `Vᵀ`).
    vectors: Vec<f64>,
}

impl SymEigen {
    /// From eigenvalues and eigenvectors stored as the rows of `Vᵀ`; sorts them ascending.
    fn sorted(n: usize, values: Vec<f64>, vectors: Vec<f64>) -> Self {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
        let mut v = Vec::with_capacity(n * n);
        for &k in &order {
            v.extend_from_slice(&vectors[k * n..(k + 1) * n]);
        }
        SymEigen {
            n,
            values: order.iter().map(|&k| values[k]).collect(),
            vectors: v,
        }
    }

    /// The order `n`.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The eigenvalues, ascending.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// Eigenvector `k` (unit length), belonging to `values()[k]`.
    pub fn vector(&self, k: usize) -> &[f64] {
        &self.vectors[k * self.n..(k + 1) * self.n]
    }

    /// `V f(Λ) Vᵀ`, row-major `n x n` (symmetric).
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Vec<f64> {
        let n = self.n;
        // V f(Λ) Vᵀ = (V f(Λ)) · Vᵀ, with V = (Vᵀ)ᵀ read from the stored rows.
        let mut scaled = vec![0.0; n * n];
        for k in 0..n {
            let fk = f(self.values[k]);
            for (i, v) in self.vector(k).iter().enumerate() {
                scaled[i * n + k] = v * fk;
            }
        }
        let mut out = vec![0.0; n * n];
        matmul(&scaled, &self.vectors, &mut out, n, n, n);
        symmetrize(&mut out, n);
        out
    }
}

/// Averages `a` with its transpose (removes rounding asymmetry).
fn symmetrize(a: &mut [f64], n: usize) {
    for i in 0..n {
        for j in i + 1..n {
            let m = 0.5 * (a[i * n + j] + a[j * n + i]);
            a[i * n + j] = m;
            a[j * n + i] = m;
        }
    }
}

/// What both solvers decompose: `a` checked, and averaged with its transpose (`None` for
/// the empty matrix, whose decomposition is empty).
fn prepared(a: &[f64], n: usize) -> Result<Option<Vec<f64>>> {
    check(a, n)?;
    if n == 0 {
        return Ok(None);
    }
    let mut w = a.to_vec();
    symmetrize(&mut w, n);
    Ok(Some(w))
}

/// Checks that `a` holds an `n x n` matrix of finite numbers.
fn check(a: &[f64], n: usize) -> Result<()> {
    if n.checked_mul(n) != Some(a.len()) {
        return Err(Error::Input(format!(
            "{} values for a {n}x{n} matrix",
            a.len()
        )));
    }
    if let Some(i) = a.iter().position(|v| !v.is_finite()) {
        return Err(Error::Input(format!(
            "entry ({}, {}) is {}",
            i / n.max(1),
            i % n.max(1),
            a[i]
        )));
    }
    Ok(())
}

/// The eigendecomposition of the symmetric `n x n` matrix `a` (row-major; both solvers
/// decompose the average of `a` and `aᵀ`), by LAPACK when the `lapack` feature is on, else
/// by [`eigh_faer`].
pub fn eigh(a: &[f64], n: usize) -> Result<SymEigen> {
    #[cfg(feature = "lapack")]
    {
        eigh_lapack(a, n)
    }
    #[cfg(not(feature = "lapack"))]
    {
        eigh_faer(a, n)
    }
}

/// The solver [`eigh`] uses: `"lapack"` or `"faer"`.
pub fn solver() -> &'static str {
    if cfg!(feature = "lapack") {
        "lapack"
    } else {
        "faer"
    }
}

/// `out = a · b` with `a` `m x k`, `b` `k x n`, all row-major (multi-threaded on the current
/// rayon pool for large products; the result does not depend on the thread count).
///
/// # Panics
/// When a slice's length does not match its dimensions, or a dimension's product overflows
/// `usize` (which no slice can match).
pub fn matmul(a: &[f64], b: &[f64], out: &mut [f64], m: usize, k: usize, n: usize) {
    // Checked products: wrapped ones could match short slices and let the GEMM write out of
    // bounds.
    let len = |x: usize, y: usize, what: &str| {
        x.checked_mul(y)
            .unwrap_or_else(|| panic!("matmul: {what} {x}x{y} has more elements than a slice can"))
    };
    assert_eq!(a.len(), len(m, k, "lhs"), "matmul: lhs is not {m}x{k}");
    assert_eq!(b.len(), len(k, n, "rhs"), "matmul: rhs is not {k}x{n}");
    assert_eq!(out.len(), len(m, n, "out"), "matmul: out is not {m}x{n}");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 && m.saturating_mul(n).saturating_mul(k) > 64 * 64 * 64 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the three slices have exactly the lengths the row-major strides address, and
    // `out` is a distinct `&mut` borrow, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}
