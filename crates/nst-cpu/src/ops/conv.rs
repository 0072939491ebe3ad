//! Convolution lowered to GEMM: a cache-blocked im2col over column blocks, the `gemm` crate's
//! kernels, and a parallel col2im for the input gradient.
//!
//! The output positions of one image are cut into blocks of at most [`MAX_BLOCK_COLS`]
//! columns, further capped so that one im2col block stays under [`MAX_BLOCK_ELEMS`] elements;
//! the block buffer is the backend's reusable scratch, so steady-state calls do not allocate
//! it again.

use super::bf16::Kernel;
use super::matmul::{gemm, Mat};
use super::winograd::{Filters, Fused};
use crate::{CpuBackend, CpuBuffer, Element};
use nst_tensor::Conv2dParams;
use rayon::prelude::*;

/// The widest column block.
const MAX_BLOCK_COLS: usize = 16 * 1024;
/// The largest patch length (C_in·kh·kw) for which the bias is folded into the GEMM.
const FOLD_BIAS_MAX_K: usize = 64;
/// The largest im2col block, in elements.
const MAX_BLOCK_ELEMS: usize = 8 << 20;

fn block_cols(kk: usize, hw: usize) -> usize {
    (MAX_BLOCK_ELEMS / kk.max(1))
        .clamp(256, MAX_BLOCK_COLS)
        .min(hw)
        .max(1)
}

/// For kernel offset `k` (row or column), the range of output indices whose input index
/// `o * stride + k - padding` lies inside `0..size`.
fn valid_range(k: usize, p: &Conv2dParams, size: usize, out: usize) -> (usize, usize) {
    let s = p.stride;
    // o*s + k >= pad  <=>  o >= ceil((pad - k) / s)
    let lo = if k >= p.padding {
        0
    } else {
        (p.padding - k).div_ceil(s)
    };
    // o*s + k - pad <= size - 1  <=>  o <= (size - 1 + pad - k) / s
    let hi = if size + p.padding > k {
        ((size - 1 + p.padding - k) / s + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Visits the output positions `c0..c0+nc` of kernel offset (`ky`, `kx`) row by row, calling
/// `f(j, len, src)` for each run of `len` columns starting at block column `j` whose input
/// row exists; `src` is `Some((input row, first input column))` when in bounds. Runs with
/// out-of-range input rows or columns are reported with `None`.
fn for_runs(
    p: &Conv2dParams,
    ky: usize,
    kx: usize,
    c0: usize,
    nc: usize,
    mut f: impl FnMut(usize, usize, Option<(usize, usize)>),
) {
    let ow = p.out_w();
    let (xlo, xhi) = valid_range(kx, p, p.in_w, ow);
    let mut j = 0;
    let mut pos = c0;
    while j < nc {
        let oy = pos / ow;
        let ox0 = pos % ow;
        let run = (ow - ox0).min(nc - j);
        let iy = (oy * p.stride + ky) as isize - p.padding as isize;
        if iy < 0 || iy >= p.in_h as isize {
            f(j, run, None);
        } else {
            let a = ox0.max(xlo).min(ox0 + run);
            let b = (ox0 + run).min(xhi).max(a);
            if a > ox0 {
                f(j, a - ox0, None);
            }
            if b > a {
                let ix = a * p.stride + kx - p.padding;
                f(j + (a - ox0), b - a, Some((iy as usize, ix)));
            }
            if ox0 + run > b {
                f(j + (b - ox0), ox0 + run - b, None);
            }
        }
        j += run;
        pos += run;
    }
}

/// Fills `col` (`[C_in·kh·kw, nc]`, row-major) with the patches of output positions
/// `c0..c0+nc` of one image `x` (`[C_in, H, W]`).
fn im2col<E: Element>(x: &[E], p: &Conv2dParams, c0: usize, nc: usize, col: &mut [E]) {
    let plane = p.in_h * p.in_w;
    let s = p.stride;
    col.par_chunks_mut(nc).enumerate().for_each(|(r, row)| {
        let ci = r / (p.kh * p.kw);
        let ky = (r / p.kw) % p.kh;
        let kx = r % p.kw;
        let xp = &x[ci * plane..(ci + 1) * plane];
        for_runs(p, ky, kx, c0, nc, |j, len, src| {
            let dst = &mut row[j..j + len];
            match src {
                None => dst.fill(E::zero()),
                Some((iy, ix)) => {
                    let line = &xp[iy * p.in_w..(iy + 1) * p.in_w];
                    if s == 1 {
                        dst.copy_from_slice(&line[ix..ix + len]);
                    } else {
                        dst.iter_mut()
                            .enumerate()
                            .for_each(|(t, d)| *d = line[ix + t * s]);
                    }
                }
            }
        });
    });
}

/// Adds the columns of `col` (`[C_in·kh·kw, nc]`) back into the image gradient `dx`
/// (`[C_in, H, W]`): the adjoint of [`im2col`]. Parallel over input channels, whose planes
/// are disjoint.
fn col2im<E: Element>(col: &[E], p: &Conv2dParams, c0: usize, nc: usize, dx: &mut [E]) {
    let plane = p.in_h * p.in_w;
    let kk = p.kh * p.kw;
    let s = p.stride;
    dx.par_chunks_mut(plane).enumerate().for_each(|(ci, dp)| {
        for k in 0..kk {
            let (ky, kx) = (k / p.kw, k % p.kw);
            let row = &col[(ci * kk + k) * nc..(ci * kk + k + 1) * nc];
            for_runs(p, ky, kx, c0, nc, |j, len, src| {
                if let Some((iy, ix)) = src {
                    let line = &mut dp[iy * p.in_w..(iy + 1) * p.in_w];
                    let g = &row[j..j + len];
                    if s == 1 {
                        line[ix..ix + len]
                            .iter_mut()
                            .zip(g)
                            .for_each(|(d, &v)| *d += v);
                    } else {
                        g.iter()
                            .enumerate()
                            .for_each(|(t, &v)| line[ix + t * s] += v);
                    }
                }
            });
        }
    });
}

pub(crate) fn forward<E: Element>(
    be: &CpuBackend<E>,
    x: &[E],
    w: &[E],
    bias: Option<&[E]>,
    p: &Conv2dParams,
) -> CpuBuffer<E> {
    let hw = p.out_h() * p.out_w();
    let kk = p.in_channels * p.kh * p.kw;
    let cout = p.out_channels;
    if hw == 0 || cout == 0 || kk == 0 {
        let mut y = E::pool().zeroed(p.batch * cout * hw);
        if let Some(b) = bias {
            y.chunks_mut(hw.max(1))
                .enumerate()
                .for_each(|(i, row)| row.fill(b[i % cout]));
        }
        return CpuBuffer::from_vec(y);
    }
    // With few input rows the output pass dominates: fold the bias into the GEMM as an extra
    // row of ones under the patches, so the output is written exactly once.
    let fold_bias = bias.filter(|_| kk <= FOLD_BIAS_MAX_K);
    let wa: Vec<E>;
    let (w, kk_eff) = match fold_bias {
        Some(b) => {
            wa = (0..cout)
                .flat_map(|o| w[o * kk..(o + 1) * kk].iter().copied().chain([b[o]]))
                .collect();
            (&wa[..], kk + 1)
        }
        None => (w, kk),
    };
    let mut y = E::pool().scratch(p.batch * cout * hw);
    let accumulate = match (bias, fold_bias) {
        (Some(b), None) => {
            y.par_chunks_mut(hw)
                .enumerate()
                .for_each(|(i, row)| row.fill(b[i % cout]));
            true
        }
        _ => false,
    };
    let cb = block_cols(kk_eff, hw);
    let in_img = p.in_channels * p.in_h * p.in_w;
    be.with_scratch(kk_eff * cb, |col| {
        for img in 0..p.batch {
            let xi = &x[img * in_img..(img + 1) * in_img];
            let yi = &mut y[img * cout * hw..(img + 1) * cout * hw];
            for c0 in (0..hw).step_by(cb) {
                let nc = cb.min(hw - c0);
                let col = &mut col[..kk_eff * nc];
                im2col(xi, p, c0, nc, &mut col[..kk * nc]);
                if kk_eff > kk {
                    col[kk * nc..].fill(E::one());
                }
                // SAFETY: `w` is cout x kk_eff, `col` kk_eff x nc, and the destination is
                // columns c0..c0+nc of the cout x hw output of this image, all in bounds.
                unsafe {
                    gemm(
                        cout,
                        nc,
                        kk_eff,
                        Mat {
                            ptr: yi.as_mut_ptr().add(c0),
                            rs: hw as isize,
                            cs: 1,
                        },
                        accumulate,
                        Mat::rowmajor(w.as_ptr(), kk_eff, false),
                        Mat::rowmajor(col.as_ptr(), nc, false),
                    );
                }
            }
        }
    });
    CpuBuffer::from_vec(y)
}

/// A 3x3, stride-1, padding-1 convolution of every image of `x` through Winograd (the variant
/// `f` was made for) with `f`: the forward filters, or the rotated bank for the input gradient
/// (`x` is then the output gradient); with the bias, ReLU and input mask of `fused`, whose
/// bias is per output channel and mask is shaped like `x`; the products in bf16 on `bf16`'s
/// kernel when given.
pub(crate) fn winograd<E: Element>(
    x: &[E],
    f: &Filters<E>,
    fused: Fused<'_, E>,
    p: &Conv2dParams,
    bf16: Option<Kernel>,
) -> CpuBuffer<E> {
    let (h, w) = (p.in_h, p.in_w);
    let (out_img, in_img) = (f.out_channels() * h * w, f.in_channels() * h * w);
    let mut y = E::pool().scratch(p.batch * out_img);
    for img in 0..p.batch {
        super::winograd::conv(
            &x[img * in_img..(img + 1) * in_img],
            f,
            Fused {
                mask: fused.mask.map(|m| &m[img * in_img..(img + 1) * in_img]),
                ..fused
            },
            h,
            w,
            &mut y[img * out_img..(img + 1) * out_img],
            bf16,
        );
    }
    CpuBuffer::from_vec(y)
}

pub(crate) fn backward_input<E: Element>(
    be: &CpuBackend<E>,
    dy: &[E],
    w: &[E],
    p: &Conv2dParams,
) -> CpuBuffer<E> {
    let hw = p.out_h() * p.out_w();
    let kk = p.in_channels * p.kh * p.kw;
    let cout = p.out_channels;
    let in_img = p.in_channels * p.in_h * p.in_w;
    let mut dx = E::pool().zeroed(p.batch * in_img);
    if hw == 0 || cout == 0 || kk == 0 {
        return CpuBuffer::from_vec(dx);
    }
    let cb = block_cols(kk, hw);
    be.with_scratch(kk * cb, |col| {
        for img in 0..p.batch {
            let dyi = &dy[img * cout * hw..(img + 1) * cout * hw];
            let dxi = &mut dx[img * in_img..(img + 1) * in_img];
            for c0 in (0..hw).step_by(cb) {
                let nc = cb.min(hw - c0);
                let col = &mut col[..kk * nc];
                // SAFETY: Wᵀ is kk x cout (w stored cout x kk), dy's block is cout x nc with
                // row stride hw, and `col` is a kk x nc buffer distinct from both.
                unsafe {
                    gemm(
                        kk,
                        nc,
                        cout,
                        Mat::rowmajor(col.as_mut_ptr(), nc, false),
                        false,
                        Mat::rowmajor(w.as_ptr(), kk, true),
                        Mat {
                            ptr: dyi.as_ptr().add(c0),
                            rs: hw as isize,
                            cs: 1,
                        },
                    );
                }
                col2im(col, p, c0, nc, dxi);
            }
        }
    });
    CpuBuffer::from_vec(dx)
}

pub(crate) fn backward_weight<E: Element>(
    be: &CpuBackend<E>,
    x: &[E],
    dy: &[E],
    p: &Conv2dParams,
) -> CpuBuffer<E> {
    let hw = p.out_h() * p.out_w();
    let kk = p.in_channels * p.kh * p.kw;
    let cout = p.out_channels;
    let in_img = p.in_channels * p.in_h * p.in_w;
    let mut dw = E::pool().zeroed(cout * kk);
    if hw == 0 || cout == 0 || kk == 0 {
        return CpuBuffer::from_vec(dw);
    }
    let cb = block_cols(kk, hw);
    be.with_scratch(kk * cb, |col| {
        for img in 0..p.batch {
            let xi = &x[img * in_img..(img + 1) * in_img];
            let dyi = &dy[img * cout * hw..(img + 1) * cout * hw];
            for c0 in (0..hw).step_by(cb) {
                let nc = cb.min(hw - c0);
                let col = &mut col[..kk * nc];
                im2col(xi, p, c0, nc, col);
                // SAFETY: dy's block is cout x nc (row stride hw), colᵀ is nc x kk (col stored
                // kk x nc), and dw is a separate cout x kk buffer.
                unsafe {
                    gemm(
                        cout,
                        kk,
                        nc,
                        Mat::rowmajor(dw.as_mut_ptr(), kk, false),
                        true,
                        Mat {
                            ptr: dyi.as_ptr().add(c0),
                            rs: hw as isize,
                            cs: 1,
                        },
                        Mat::rowmajor(col.as_ptr(), nc, true),
                    );
                }
            }
        }
    });
    CpuBuffer::from_vec(dw)
}
