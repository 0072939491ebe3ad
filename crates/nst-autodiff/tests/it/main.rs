//! Integration tests of the tape: gradient checks of every op, compositions, Gram properties.

mod gradcheck;
mod gradients;
mod gram;
mod tape;

use nst_cpu::Cpu64;
use nst_tensor::Tensor;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Proptest cases per property: `PROPTEST_CASES` (raised by `cargo xtask gradcheck`), else 12.
pub(crate) fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

pub(crate) fn cpu() -> Cpu64 {
    Cpu64::new(2)
}

/// A tensor of uniform values in `[-1, 1)` kept at least `gap` away from zero.
pub(crate) fn rand_tensor(b: &Cpu64, dims: &[usize], seed: u64, gap: f64) -> Tensor<Cpu64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let data: Vec<f64> = (0..n)
        .map(|_| {
            let v: f64 = rng.gen_range(-1.0..1.0);
            if v.abs() < gap {
                v.signum() * gap + v
            } else {
                v
            }
        })
        .collect();
    Tensor::from_f64(b, &data, dims.to_vec()).unwrap()
}
