//! Times the symmetric eigensolver(s) on Gram-like matrices of VGG19's channel counts.
//! `cargo run --release -p nst-linalg --example eigh_timing [--features lapack]`

#![allow(clippy::print_stdout)]

use std::time::Instant;

fn main() {
    for n in [64usize, 128, 256, 512] {
        // A positive definite Gram-like matrix: B Bᵀ / n with B pseudo-random n x 2n.
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let b: Vec<f64> = (0..n * 2 * n).map(|_| next()).collect();
        let mut bt = vec![0.0; 2 * n * n];
        for i in 0..n {
            for j in 0..2 * n {
                bt[j * n + i] = b[i * 2 * n + j];
            }
        }
        let mut a = vec![0.0; n * n];
        nst_linalg::matmul(&b, &bt, &mut a, n, 2 * n, n);
        let t = Instant::now();
        let e = nst_linalg::eigh_faer(&a, n).expect("decomposes");
        let faer = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let root = e.map(f64::sqrt);
        let map = t.elapsed().as_secs_f64();
        std::hint::black_box(root);
        #[cfg(feature = "lapack")]
        let lapack = {
            let t = Instant::now();
            std::hint::black_box(nst_linalg::eigh_lapack(&a, n).expect("decomposes"));
            format!("{:.4}", t.elapsed().as_secs_f64())
        };
        #[cfg(not(feature = "lapack"))]
        let lapack = "-".to_string();
        println!("n={n:4}  faer {faer:.4} s  lapack {lapack} s  map {map:.4} s");
    }
}
