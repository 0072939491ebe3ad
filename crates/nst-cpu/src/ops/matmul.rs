//! Matrix products through the `gemm` crate.

use super::bf16::{self, as_f32, Kernel, PackedA};
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

/// Whether `A·Bᵀ` is a Gram-like product over many positions, computed in chunks.
fn long_k(m: usize, k: usize, n: usize, ta: bool, tb: bool) -> bool {
    !ta && tb && k >= 4 * K_CHUNK && m * n <= 1 << 18
}

/// `op(a)·op(b)` with bf16 operands and f32 sums on `kernel`, for the shapes of a style loss:
/// a Gram matrix (`A·Bᵀ` over many positions, in the fixed chunks of [`matmul_long_k`]) and
/// its gradients (a left operand of at most 1024 x 1024 times a row-major right operand, in
/// fixed blocks of columns). `None` for other shapes, which stay in f32.
#[allow(clippy::too_many_arguments)]
fn matmul_bf16(
    kernel: Kernel,
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) -> Option<Vec<f32>> {
    use rayon::prelude::*;
    if m == 0 || n == 0 || k == 0 {
        return None;
    }
    let pool = f32::pool();
    if long_k(m, k, n, ta, tb) {
        let partials: Vec<Vec<f32>> = (0..k.div_ceil(K_CHUNK))
            .into_par_iter()
            .map(|c| {
                let k0 = c * K_CHUNK;
                let kc = K_CHUNK.min(k - k0);
                // Rows of `a` and of `b` hold `k` values; this chunk reads columns k0..k0+kc.
                let pa = PackedA::from_rows(kernel, &a[k0..], m, kc, k);
                let mut pb = vec![0u16; bf16::packed_b_len(kc, n)];
                bf16::pack_bt(kernel, &b[k0..], kc, n, k, &mut pb);
                let mut p = pool.scratch(m * n);
                bf16::gemm(kernel, &pa, &pb, n, &mut p, n);
                p
            })
            .collect();
        let mut out = pool.zeroed(m * n);
        for p in partials {
            out.iter_mut().zip(&p).for_each(|(o, v)| *o += *v);
            pool.put(p);
        }
        return Some(out);
    }
    if tb || m > 1024 || k > 1024 {
        return None;
    }
    let pa = if ta {
        PackedA::from_fn(m, k, |i, p| a[p * m + i])
    } else {
        PackedA::from_rows(kernel, a, m, k, k)
    };
    // Column blocks whose packed part of B is about 1 MB.
    let cols = ((1 << 19) / k.next_multiple_of(bf16::PAD)).clamp(256, 8192) / 32 * 32;
    let mut out = pool.scratch(m * n);
    let dst = SendPtr(out.as_mut_ptr());
    (0..n.div_ceil(cols)).into_par_iter().for_each(|c| {
        let (j0, nc) = (c * cols, cols.min(n - c * cols));
        PACKED_B.with_borrow_mut(|pb| {
            pb.resize(bf16::packed_b_len(k, nc), 0);
            bf16::pack_b(kernel, &b[j0..], k, nc, n, pb);
            let dst = &dst;
            // SAFETY: this block writes columns j0..j0+nc of the m x n output, rows n apart;
            // the blocks' columns are disjoint.
            unsafe { bf16::gemm_raw(kernel, &pa, pb, nc, dst.0.add(j0), n) };
        });
    });
    Some(out)
}

/// The output pointer the column blocks write disjoint columns through.
struct SendPtr(*mut f32);
// SAFETY: the blocks write disjoint columns (see `matmul_bf16`).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

thread_local! {
    /// Each thread's buffer for a packed block of B.
    static PACKED_B: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `op(a)·op(b)` (`op` transposing where `ta`, `tb` say), `m x n` with reduction `k`; with
/// bf16 operands on `bf16`'s kernel where given (`E` then `f32`) and the shapes suit it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<E: Element>(
    a: &[E],
    b: &[E],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    bf16: Option<Kernel>,
) -> CpuBuffer<E> {
    if let Some(kernel) = bf16 {
        if let Some(out) = matmul_bf16(kernel, as_f32(a), as_f32(b), m, k, n, ta, tb) {
            let mut out = std::mem::ManuallyDrop::new(out);
            // SAFETY: `as_f32` checked that E is f32; the parts are the vector's own.
            let v = unsafe {
                Vec::from_raw_parts(out.as_mut_ptr().cast::<E>(), out.len(), out.capacity())
            };
            return CpuBuffer::from_vec(v);
        }
    }
    if long_k(m, k, n, ta, tb) {
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
