//! Reductions and data movement: sums, broadcast, narrow.

use super::CHUNK;
use crate::{CpuBuffer, Element};
use nst_tensor::Shape;
use rayon::prelude::*;

/// Sums in `f64` over fixed chunks, then adds the chunk sums in order: the result does not
/// depend on the number of threads.
pub(crate) fn sum_all<E: Element>(x: &[E]) -> CpuBuffer<E> {
    let parts: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|v| v.f64()).sum::<f64>())
        .collect();
    CpuBuffer::from_vec(vec![E::of(parts.iter().sum())])
}

/// `Σ a_i·b_i` of one chunk in `f64`: eight independent accumulators (so the loop
/// vectorizes), then the lanes in order.
fn chunk_dot<E: Element>(a: &[E], b: &[E]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let (ab, bb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ab.remainder(), bb.remainder());
    for (x, y) in ab.zip(bb) {
        for i in 0..8 {
            lanes[i] += x[i].f64() * y[i].f64();
        }
    }
    for (i, (x, y)) in ar.iter().zip(br).enumerate() {
        lanes[i] += x.f64() * y.f64();
    }
    lanes.iter().sum::<f64>()
}

/// `Σ a_i·b_i` in `f64` over fixed chunks, then the chunks in order.
pub(crate) fn dot<E: Element>(a: &[E], b: &[E]) -> f64 {
    let parts: Vec<f64> = a
        .par_chunks(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .map(|(a, b)| chunk_dot(a, b))
        .collect();
    parts.iter().sum()
}

/// Every `rows[r]·cols[c]` (row-major), each summed exactly as [`dot`] sums it (the same
/// chunks, lanes and order, so the same bits), chunk by chunk: each vector is read from memory
/// once, the rows' chunk staying in cache while every column's passes.
pub(crate) fn dots<E: Element>(rows: &[&[E]], cols: &[&[E]]) -> Vec<f64> {
    let n = rows.first().or(cols.first()).map_or(0, |v| v.len());
    let (nr, nc) = (rows.len(), cols.len());
    let parts: Vec<Vec<f64>> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|k| {
            let (lo, hi) = (k * CHUNK, ((k + 1) * CHUNK).min(n));
            let mut out = vec![0.0; nr * nc];
            for (c, col) in cols.iter().enumerate() {
                let b = &col[lo..hi];
                for (r, row) in rows.iter().enumerate() {
                    out[r * nc + c] = chunk_dot(&row[lo..hi], b);
                }
            }
            out
        })
        .collect();
    (0..nr * nc)
        .map(|i| parts.iter().map(|p| p[i]).sum())
        .collect()
}

/// `Σ_j coeffs[j]·vecs[j]`, elementwise, accumulated in `f64` in the order of `j` and rounded
/// once; each vector read once.
pub(crate) fn combine<E: Element>(coeffs: &[f64], vecs: &[&[E]]) -> CpuBuffer<E> {
    let n = vecs.first().map_or(0, |v| v.len());
    let mut out = vec![E::zero(); n];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(k, o)| {
        let lo = k * CHUNK;
        let mut acc = vec![0.0f64; o.len()];
        for (c, v) in coeffs.iter().zip(vecs) {
            for (a, x) in acc.iter_mut().zip(&v[lo..lo + o.len()]) {
                *a += c * x.f64();
            }
        }
        for (o, a) in o.iter_mut().zip(&acc) {
            *o = E::of(*a);
        }
    });
    CpuBuffer::from_vec(out)
}

/// `(Σ |x_i|, max |x_i|)` over fixed chunks, NaN-propagating.
pub(crate) fn norms<E: Element>(x: &[E]) -> (f64, f64) {
    let parts: Vec<(f64, f64)> = x
        .par_chunks(CHUNK)
        .map(|c| {
            c.iter().fold((0.0f64, 0.0f64), |(s, m), v| {
                let a = v.f64().abs();
                let m = if m.is_nan() || a.is_nan() {
                    f64::NAN
                } else {
                    m.max(a)
                };
                (s + a, m)
            })
        })
        .collect();
    let sums: Vec<f64> = parts.iter().map(|p| p.0).collect();
    let maxes: Vec<f64> = parts.iter().map(|p| p.1).collect();
    (sums.iter().sum(), nst_tensor::host_norms(&maxes).1)
}

pub(crate) fn sum_axis<E: Element>(x: &[E], shape: &Shape, axis: usize) -> CpuBuffer<E> {
    let (outer, n, inner) = shape.split_at_axis(axis);
    let mut out = E::pool().zeroed(outer * inner);
    if inner == 0 || outer == 0 {
        return CpuBuffer::from_vec(out);
    }
    out.par_chunks_mut(inner).enumerate().for_each(|(o, row)| {
        let base = o * n * inner;
        for j in 0..n {
            let src = &x[base + j * inner..base + (j + 1) * inner];
            row.iter_mut().zip(src).for_each(|(r, &s)| *r += s);
        }
    });
    CpuBuffer::from_vec(out)
}

pub(crate) fn broadcast<E: Element>(x: &[E], from: &Shape, to: &Shape) -> CpuBuffer<E> {
    if x.len() == 1 {
        return CpuBuffer::from_vec(vec![x[0]; to.numel()]);
    }
    // Strides of `from` in elements, with 0 for broadcast dimensions.
    let rank = to.rank();
    let mut strides = vec![0usize; rank];
    let mut s = 1;
    for d in (0..rank).rev() {
        strides[d] = if from.dim(d) == 1 { 0 } else { s };
        s *= from.dim(d);
    }
    let last = to.dims().last().copied().unwrap_or(1).max(1);
    let mut out = E::pool().scratch(to.numel());
    out.par_chunks_mut(last).enumerate().for_each(|(row, dst)| {
        // Decompose the row index over the leading dims.
        let mut rem = row;
        let mut base = 0;
        for d in (0..rank.saturating_sub(1)).rev() {
            base += (rem % to.dim(d)) * strides[d];
            rem /= to.dim(d);
        }
        let ls = if rank == 0 { 0 } else { strides[rank - 1] };
        dst.iter_mut()
            .enumerate()
            .for_each(|(i, o)| *o = x[base + i * ls]);
    });
    CpuBuffer::from_vec(out)
}

pub(crate) fn narrow<E: Element>(
    x: &[E],
    shape: &Shape,
    axis: usize,
    start: usize,
    len: usize,
) -> CpuBuffer<E> {
    let (outer, n, inner) = shape.split_at_axis(axis);
    let mut out = E::pool().scratch(outer * len * inner);
    if !out.is_empty() {
        out.par_chunks_mut(len * inner)
            .enumerate()
            .for_each(|(o, dst)| {
                let src = o * n * inner + start * inner;
                dst.copy_from_slice(&x[src..src + len * inner]);
            });
    }
    CpuBuffer::from_vec(out)
}

pub(crate) fn narrow_backward<E: Element>(
    dy: &[E],
    shape: &Shape,
    axis: usize,
    start: usize,
    full: usize,
) -> CpuBuffer<E> {
    let (outer, len, inner) = shape.split_at_axis(axis);
    let mut out = E::pool().zeroed(outer * full * inner);
    if !out.is_empty() {
        out.par_chunks_mut(full * inner)
            .enumerate()
            .for_each(|(o, dst)| {
                let src = o * len * inner;
                dst[start * inner..(start + len) * inner]
                    .copy_from_slice(&dy[src..src + len * inner]);
            });
    }
    CpuBuffer::from_vec(out)
}

/// The transpose of a `rows x cols` matrix, in 32x32 blocks, parallel over row blocks of the
/// output.
pub(crate) fn transpose<E: Element>(x: &[E], rows: usize, cols: usize) -> CpuBuffer<E> {
    const B: usize = 32;
    let mut out = E::pool().scratch(rows * cols);
    if rows > 0 && cols > 0 {
        out.par_chunks_mut(B * rows)
            .enumerate()
            .for_each(|(cb, dst)| {
                let c0 = cb * B;
                let c1 = (c0 + B).min(cols);
                for r0 in (0..rows).step_by(B) {
                    for r in r0..(r0 + B).min(rows) {
                        for c in c0..c1 {
                            dst[(c - c0) * rows + r] = x[r * cols + c];
                        }
                    }
                }
            });
    }
    CpuBuffer::from_vec(out)
}
