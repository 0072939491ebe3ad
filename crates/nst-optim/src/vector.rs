//! [`Vector`]: the arithmetic the optimizers need, for host vectors and device tensors.

use nst_tensor::{Backend, Tensor};

/// A vector the optimizers can work on. Every operation returns a new vector; scalars come
/// back in `f64`.
pub trait Vector: Clone {
    /// The error of the arithmetic (e.g. a device error).
    type Error;

    /// `Σ a_i·b_i`.
    fn dot(&self, other: &Self) -> Result<f64, Self::Error>;
    /// `a·self + y`.
    fn axpy(&self, a: f64, y: &Self) -> Result<Self, Self::Error>;
    /// `s·self`.
    fn scale(&self, s: f64) -> Result<Self, Self::Error>;
    /// `self²`, elementwise.
    fn square(&self) -> Result<Self, Self::Error>;
    /// `self / (√(v·v_scale) + eps)`, elementwise: Adam's step direction.
    fn adam_ratio(&self, v: &Self, v_scale: f64, eps: f64) -> Result<Self, Self::Error>;
    /// `(Σ |x_i|, max |x_i|)`, NaN when an element is NaN.
    fn norms(&self) -> Result<(f64, f64), Self::Error>;
    /// Every `rows[r]·cols[c]`, row-major, each the value [`Vector::dot`] gives. The default
    /// calls `dot` per pair; device tensors compute them in one round trip.
    fn dots(rows: &[&Self], cols: &[&Self]) -> Result<Vec<f64>, Self::Error> {
        let mut out = Vec::with_capacity(rows.len() * cols.len());
        for r in rows {
            for c in cols {
                out.push(r.dot(c)?);
            }
        }
        Ok(out)
    }
    /// `Σ_j coeffs[j]·vectors[j]` (at least one vector). The default chains `axpy`s.
    fn combine(coeffs: &[f64], vectors: &[&Self]) -> Result<Self, Self::Error> {
        let mut acc = vectors[0].scale(coeffs[0])?;
        for (c, v) in coeffs.iter().zip(vectors).skip(1) {
            acc = v.axpy(*c, &acc)?;
        }
        Ok(acc)
    }
    /// Whether every scalar returned (a dot product, the norms) is a blocking round trip
    /// worth batching, as on a GPU: L-BFGS then computes its direction from batched dot
    /// products ([`crate::Recursion::Auto`]).
    fn batches_reductions(&self) -> bool {
        false
    }
    /// Whether `other` is certainly the same point (for tensors: the same buffer).
    fn same(&self, other: &Self) -> bool;
    /// The number of elements.
    fn len(&self) -> usize;
    /// Whether there are no elements.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `Σ a_i·b_i` accumulated in `f64` over 8 independent lanes (so it vectorizes), then the
/// lanes in order: the result depends only on the inputs.
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            lanes[i] += x[i] as f64 * y[i] as f64;
        }
    }
    for (i, (x, y)) in ar.iter().zip(br).enumerate() {
        lanes[i] += *x as f64 * *y as f64;
    }
    lanes.iter().sum()
}

/// Host vectors of different lengths (e.g. an optimizer not reset after the problem changed
/// size, or a state restored for another problem): an error rather than a computation on a
/// truncated vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LengthMismatch {
    /// The length of the vector the operation was called on.
    pub left: usize,
    /// The length of the other vector.
    pub right: usize,
}

impl std::fmt::Display for LengthMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "vectors of different lengths ({} and {})",
            self.left, self.right
        )
    }
}

impl std::error::Error for LengthMismatch {}

fn same_len(a: &[f32], b: &[f32]) -> Result<(), LengthMismatch> {
    if a.len() == b.len() {
        Ok(())
    } else {
        Err(LengthMismatch {
            left: a.len(),
            right: b.len(),
        })
    }
}

impl Vector for Vec<f32> {
    type Error = LengthMismatch;

    fn dot(&self, other: &Self) -> Result<f64, LengthMismatch> {
        same_len(self, other)?;
        Ok(dot_f64(self, other))
    }

    fn axpy(&self, a: f64, y: &Self) -> Result<Self, LengthMismatch> {
        same_len(self, y)?;
        Ok(self
            .iter()
            .zip(y)
            .map(|(&x, &y)| (a * x as f64 + y as f64) as f32)
            .collect())
    }

    fn scale(&self, s: f64) -> Result<Self, LengthMismatch> {
        Ok(self.iter().map(|&x| (s * x as f64) as f32).collect())
    }

    fn square(&self) -> Result<Self, LengthMismatch> {
        Ok(self.iter().map(|&x| x * x).collect())
    }

    fn adam_ratio(&self, v: &Self, v_scale: f64, eps: f64) -> Result<Self, LengthMismatch> {
        same_len(self, v)?;
        Ok(self
            .iter()
            .zip(v)
            .map(|(&m, &v)| (m as f64 / ((v as f64 * v_scale).sqrt() + eps)) as f32)
            .collect())
    }

    fn norms(&self) -> Result<(f64, f64), LengthMismatch> {
        let v: Vec<f64> = self.iter().map(|&x| x as f64).collect();
        Ok(nst_tensor::host_norms(&v))
    }

    fn same(&self, other: &Self) -> bool {
        self == other
    }

    fn len(&self) -> usize {
        Vec::len(self)
    }
}

/// Tensors keep the optimizer on their device: only the scalars come back.
impl<B: Backend> Vector for Tensor<B> {
    type Error = nst_tensor::Error;

    fn dot(&self, other: &Self) -> nst_tensor::Result<f64> {
        Tensor::dot(self, other)
    }

    fn axpy(&self, a: f64, y: &Self) -> nst_tensor::Result<Self> {
        Tensor::axpy(self, a, y)
    }

    fn scale(&self, s: f64) -> nst_tensor::Result<Self> {
        Tensor::scale(self, s)
    }

    fn square(&self) -> nst_tensor::Result<Self> {
        Tensor::square(self)
    }

    fn adam_ratio(&self, v: &Self, v_scale: f64, eps: f64) -> nst_tensor::Result<Self> {
        self.div(&v.scale(v_scale)?.sqrt()?.offset(eps)?)
    }

    fn norms(&self) -> nst_tensor::Result<(f64, f64)> {
        Tensor::norms(self)
    }

    fn dots(rows: &[&Self], cols: &[&Self]) -> nst_tensor::Result<Vec<f64>> {
        Tensor::dots(rows, cols)
    }

    fn combine(coeffs: &[f64], vectors: &[&Self]) -> nst_tensor::Result<Self> {
        Tensor::combine(coeffs, vectors)
    }

    fn batches_reductions(&self) -> bool {
        self.backend().batches_reductions()
    }

    fn same(&self, other: &Self) -> bool {
        self.same_buffer(other) && self.shape() == other.shape()
    }

    fn len(&self) -> usize {
        self.numel()
    }
}
