//! Matrix products through the `gemm` crate.

use crate::{CpuBuffer, Element};

/// The layout of one GEMM operand: base pointer plus row and column strides, in elements.
#[derive(Clone, Copy)]
pub(crate) struct Mat<P> {
    pub(crate) ptr: P,
    pub(crate) rs: isize,
    pub(crate) cs: isize,
}

impl<P> Mat<P> {
    /// A row-major matrix with `cols` columns, or its transpose when `t` (stored `cols x rows`).
    pub(crate) fn rowmajor(ptr: P, stored_cols: usize, t: bool) -> Self {
        if t {
            Mat {
                ptr,
                rs: 1,
                cs: stored_cols as isize,
            }
        } else {
            Mat {
                ptr,
                rs: stored_cols as isize,
                cs: 1,
            }
        }
    }
}

/// `dst = (accumulate ? dst : 0) + lhs · rhs` with `lhs` `m x k` and `rhs` `k x n`, all on the
/// current rayon pool.
///
/// # Safety
/// Every pointer with its strides must address valid memory for the given sizes, and `dst`
/// must not alias `lhs` or `rhs`.
pub(crate) unsafe fn gemm<E: Element>(
    m: usize,
    n: usize,
    k: usize,
    dst: Mat<*mut E>,
    accumulate: bool,
    lhs: Mat<*const E>,
    rhs: Mat<*const E>,
) {
    // SAFETY: passed through from the caller.
    unsafe { gemm_with(true, m, n, k, dst, accumulate, lhs, rhs) }
}

/// [`gemm`], on the current rayon pool when `parallel`, else on the calling thread only (for
/// callers that already run one product per thread).
///
/// # Safety
/// As for [`gemm`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_with<E: Element>(
    parallel: bool,
    m: usize,
    n: usize,
    k: usize,
    dst: Mat<*mut E>,
    accumulate: bool,
    lhs: Mat<*const E>,
    rhs: Mat<*const E>,
) {
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let par = if threads > 1 && (m * n * k) > 32 * 32 * 32 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller guarantees the operands; gemm reads `dst` only when `accumulate`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.cs,
            dst.rs,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            E::one(),
            E::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// Columns of `k` per partial product of a long, thin `A·Bᵀ`.
const K_CHUNK: usize = 16384;

/// `A·Bᵀ` with `A` `m x k` and `B` `n x k` when `k` is long and the result small (a Gram
/// matrix over many positions): GEMM kernels parallelise over the result's blocks, of
/// which there are few, so the positions are cut into fixed chunks of [`K_CHUNK`], each
/// chunk's product computed on one thread, and the partial products added in chunk order.
/// The chunks do not depend on the thread count, so neither do the results.
fn matmul_long_k<E: Element>(a: &[E], b: &[E], m: usize, k: usize, n: usize) -> CpuBuffer<E> {
    use rayon::prelude::*;
    let chunks = k.div_ceil(K_CHUNK);
    let partials: Vec<Vec<E>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let k0 = c * K_CHUNK;
            let kc = K_CHUNK.min(k - k0);
            let mut p = E::pool().scratch(m * n);
            // SAFETY: rows of `a` and `b` hold `k` elements each, of which columns
            // `k0 .. k0 + kc` are read with row stride `k`; `p` is a fresh m*n buffer.
            unsafe {
                gemm_with(
                    false,
                    m,
                    n,
                    kc,
                    Mat::rowmajor(p.as_mut_ptr(), n, false),
                    false,
                    Mat {
                        ptr: a.as_ptr().add(k0),
                        rs: k as isize,
                        cs: 1,
                    },
                    Mat {
                        ptr: b.as_ptr().add(k0),
                        rs: 1,
                        cs: k as isize,
                    },
                )
            }
            p
        })
        .collect();
    let mut out = E::pool().zeroed(m * n);
    for p in partials {
        for (o, v) in out.iter_mut().zip(&p) {
            *o += *v;
        }
        E::pool().put(p);
    }
    CpuBuffer::from_vec(out)
}

pub(crate) fn matmul<E: Element>(
    a: &[E],
    b: &[E],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) -> CpuBuffer<E> {
    if !ta && tb && k >= 4 * K_CHUNK && m * n <= 1 << 18 {
        return matmul_long_k(a, b, m, k, n);
    }
    let mut out = E::pool().scratch(m * n);
    if m > 0 && n > 0 && k > 0 {
        // SAFETY: `a` holds m*k, `b` k*n and `out` m*n elements, laid out as described; the
        // output is a fresh allocation.
        unsafe {
            gemm(
                m,
                n,
                k,
                Mat::rowmajor(out.as_mut_ptr(), n, false),
                false,
                Mat::rowmajor(a.as_ptr(), if ta { m } else { k }, ta),
                Mat::rowmajor(b.as_ptr(), if tb { k } else { n }, tb),
            )
        }
    }
    CpuBuffer::from_vec(out)
}
