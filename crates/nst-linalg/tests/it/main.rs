//! Integration tests of nst-linalg: decompositions reconstruct their matrix, are orthonormal
//! and sorted, on random, structured and degenerate matrices; the two solvers agree.

use nst_linalg::{eigh, eigh_faer, matmul, SymEigen};
use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// A random symmetric matrix with entries in [-1, 1].
fn random_symmetric(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let v: f64 = rng.gen_range(-1.0..1.0);
            a[i * n + j] = v;
            a[j * n + i] = v;
        }
    }
    a
}

/// `B Bᵀ` for a random `n x r` B: positive semi-definite of rank `r`.
fn low_rank(n: usize, r: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let b: Vec<f64> = (0..n * r).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut bt = vec![0.0; r * n];
    for i in 0..n {
        for j in 0..r {
            bt[j * n + i] = b[i * r + j];
        }
    }
    let mut out = vec![0.0; n * n];
    matmul(&b, &bt, &mut out, n, r, n);
    out
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Checks `A = V Λ Vᵀ`, `VᵀV = I` and the order, to `tol` relative to `max|A|`.
fn assert_decomposes(a: &[f64], e: &SymEigen, tol: f64) {
    let n = e.n();
    let scale = max_abs(a).max(1e-300);
    let back = e.map(|x| x);
    for (i, (x, y)) in a.iter().zip(&back).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "entry {i}: {x} vs reconstructed {y}"
        );
    }
    for k in 0..n {
        for l in 0..n {
            let d: f64 = e
                .vector(k)
                .iter()
                .zip(e.vector(l))
                .map(|(p, q)| p * q)
                .sum();
            let want = if k == l { 1.0 } else { 0.0 };
            assert!((d - want).abs() <= tol, "vᵢ·vⱼ ({k}, {l}) = {d}");
        }
    }
    assert!(e.values().windows(2).all(|w| w[0] <= w[1]), "not ascending");
}

#[test]
fn random_matrices_of_many_sizes_decompose() {
    for (n, seed) in [(1, 1), (2, 2), (3, 3), (5, 4), (17, 5), (64, 6), (130, 7)] {
        let a = random_symmetric(n, seed);
        assert_decomposes(&a, &eigh(&a, n).unwrap(), 1e-12);
        assert_decomposes(&a, &eigh_faer(&a, n).unwrap(), 1e-12);
    }
}

#[test]
fn known_spectra_come_out_exactly() {
    // A diagonal matrix, given unsorted.
    let a = [3.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 2.0];
    let e = eigh_faer(&a, 3).unwrap();
    assert_eq!(e.values(), &[-1.0, 2.0, 3.0]);
    // The path graph's Laplacian-like tridiagonal: eigenvalues 2 − 2cos(kπ/(n+1)).
    let n = 40;
    let mut t = vec![0.0; n * n];
    for i in 0..n {
        t[i * n + i] = 2.0;
        if i + 1 < n {
            t[i * n + i + 1] = -1.0;
            t[(i + 1) * n + i] = -1.0;
        }
    }
    let e = eigh_faer(&t, n).unwrap();
    for (k, v) in e.values().iter().enumerate() {
        let want = 2.0 - 2.0 * ((k + 1) as f64 * std::f64::consts::PI / (n + 1) as f64).cos();
        assert!((v - want).abs() < 1e-13, "eigenvalue {k}: {v} vs {want}");
    }
}

#[test]
fn degenerate_matrices_decompose() {
    // Zero, identity (one eigenvalue of multiplicity n), and rank-deficient PSD matrices
    // (fewer samples than dimensions, as a Gram matrix over few positions).
    for n in [1, 4, 33] {
        let zero = vec![0.0; n * n];
        let e = eigh_faer(&zero, n).unwrap();
        assert!(e.values().iter().all(|v| *v == 0.0));
        assert_decomposes(&zero, &e, 1e-12);
        let mut id = vec![0.0; n * n];
        for i in 0..n {
            id[i * n + i] = 1.0;
        }
        assert_decomposes(&id, &eigh_faer(&id, n).unwrap(), 1e-14);
    }
    let (n, r) = (96, 7);
    let a = low_rank(n, r, 9);
    let e = eigh_faer(&a, n).unwrap();
    assert_decomposes(&a, &e, 1e-12);
    let top = e.values()[n - 1];
    let near_zero = e.values().iter().filter(|v| v.abs() < 1e-12 * top).count();
    assert_eq!(near_zero, n - r, "{:?}", &e.values()[..n - r + 1]);
    // Square roots of a PSD matrix square back to it.
    let root = e.map(|v| v.max(0.0).sqrt());
    let mut sq = vec![0.0; n * n];
    matmul(&root, &root, &mut sq, n, n, n);
    let scale = max_abs(&a);
    assert!(a
        .iter()
        .zip(&sq)
        .all(|(x, y)| (x - y).abs() < 1e-12 * scale));
}

#[test]
fn badly_scaled_matrices_keep_relative_accuracy() {
    // Entries from 1e-150 to 1e150 scale: hypot-based rotations neither overflow nor underflow.
    for scale in [1e-150, 1e150] {
        let a: Vec<f64> = random_symmetric(20, 11).iter().map(|v| v * scale).collect();
        assert_decomposes(&a, &eigh_faer(&a, 20).unwrap(), 1e-12);
    }
}

#[test]
fn bad_input_is_an_error() {
    assert!(eigh(&[1.0, 2.0, 3.0], 2).is_err());
    let err = eigh(&[1.0, f64::NAN, f64::NAN, 1.0], 2).unwrap_err();
    assert!(err.to_string().contains("NaN"), "{err}");
    assert_eq!(eigh(&[], 0).unwrap().values().len(), 0);
}

#[test]
#[should_panic(expected = "x2 has more elements than a slice can")]
fn matmul_refuses_dimensions_whose_products_overflow() {
    // 2⁶³ x 2 wraps to 0 elements on 64 bits, which the empty slices would match.
    let mut out = [];
    nst_linalg::matmul(&[], &[0.0; 4], &mut out, 1 << (usize::BITS - 1), 2, 2);
}

#[test]
fn eigh_refuses_a_size_whose_square_overflows() {
    // (2³²)² wraps to 0 on 64 bits, which the empty slice would match.
    let n = 1usize << (usize::BITS / 2);
    assert!(nst_linalg::eigh(&[], n).is_err());
}

#[test]
fn the_solver_is_named() {
    let want = if cfg!(feature = "lapack") {
        "lapack"
    } else {
        "faer"
    };
    assert_eq!(nst_linalg::solver(), want);
}

#[cfg(feature = "lapack")]
#[test]
fn lapack_and_faer_agree() {
    for (n, seed) in [(3, 1), (64, 2), (257, 3)] {
        // Positive definite (the square root of a null eigenvalue is ill-conditioned).
        let a = low_rank(n, 2 * n, seed);
        let p = eigh_faer(&a, n).unwrap();
        let l = nst_linalg::eigh_lapack(&a, n).unwrap();
        assert_decomposes(&a, &l, 1e-12);
        let top = p.values()[n - 1];
        for (x, y) in p.values().iter().zip(l.values()) {
            assert!((x - y).abs() < 1e-12 * top, "{x} vs {y}");
        }
        // Eigenvectors are defined up to sign and within repeated eigenvalues: compare a
        // matrix function instead.
        let (rp, rl) = (p.map(|v| v.max(0.0).sqrt()), l.map(|v| v.max(0.0).sqrt()));
        let scale = max_abs(&rp);
        assert!(rp
            .iter()
            .zip(&rl)
            .all(|(x, y)| (x - y).abs() < 1e-9 * scale));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn any_symmetric_matrix_decomposes(n in 1usize..24, seed in any::<u64>()) {
        let a = random_symmetric(n, seed);
        assert_decomposes(&a, &eigh(&a, n).unwrap(), 1e-12);
    }

    #[test]
    fn matmul_matches_the_naive_product(m in 1usize..9, k in 0usize..9, n in 1usize..9, seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let a: Vec<f64> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let b: Vec<f64> = (0..k * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut out = vec![1.0; m * n];
        matmul(&a, &b, &mut out, m, k, n);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
                prop_assert!((out[i * n + j] - want).abs() < 1e-12);
            }
        }
    }
}
