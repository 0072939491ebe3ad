//! Max and average pooling, parallel over channel planes.

use crate::{CpuBuffer, Element};
use nst_tensor::{Pool2dParams, PoolKind};
use rayon::prelude::*;

/// The flat in-plane index of the maximum of the window at output (`oy`, `ox`); ties go to
/// the first in row-major order.
fn argmax<E: Element>(xp: &[E], p: &Pool2dParams, oy: usize, ox: usize) -> usize {
    let mut best = (oy * p.stride) * p.in_w + ox * p.stride;
    for ky in 0..p.kernel {
        let row = (oy * p.stride + ky) * p.in_w + ox * p.stride;
        for i in row..row + p.kernel {
            if xp[i] > xp[best] {
                best = i;
            }
        }
    }
    best
}

/// Index (0..4, row-major) of the maximum of a 2x2 window `[a, b; c, d]`, first on ties.
#[inline]
fn argmax4<E: Element>(a: E, b: E, c: E, d: E) -> usize {
    let (mut best, mut i) = (a, 0);
    if b > best {
        best = b;
        i = 1;
    }
    if c > best {
        best = c;
        i = 2;
    }
    if d > best {
        i = 3;
    }
    i
}

/// 2x2 windows with stride 2 (every VGG pooling): rows are read in pairs, no index math per
/// element.
fn forward_2x2<E: Element>(x: &[E], p: &Pool2dParams) -> CpuBuffer<E> {
    let (oh, ow) = (p.out_h(), p.out_w());
    let plane = p.in_h * p.in_w;
    let quarter = E::of(0.25);
    let mut y = E::pool().scratch(p.batch * p.channels * oh * ow);
    y.par_chunks_mut(oh * ow).enumerate().for_each(|(c, yp)| {
        let xp = &x[c * plane..(c + 1) * plane];
        for (oy, yrow) in yp.chunks_exact_mut(ow).enumerate() {
            let r0 = &xp[2 * oy * p.in_w..][..2 * ow];
            let r1 = &xp[(2 * oy + 1) * p.in_w..][..2 * ow];
            for ((o, a), b) in yrow
                .iter_mut()
                .zip(r0.chunks_exact(2))
                .zip(r1.chunks_exact(2))
            {
                *o = match p.kind {
                    PoolKind::Max => [a[0], a[1], b[0], b[1]][argmax4(a[0], a[1], b[0], b[1])],
                    PoolKind::Avg => (a[0] + a[1] + b[0] + b[1]) * quarter,
                };
            }
        }
    });
    CpuBuffer::from_vec(y)
}

fn backward_2x2<E: Element>(x: &[E], dy: &[E], p: &Pool2dParams) -> CpuBuffer<E> {
    let (oh, ow) = (p.out_h(), p.out_w());
    let plane = p.in_h * p.in_w;
    let quarter = E::of(0.25);
    let mut dx = E::pool().zeroed(x.len());
    dx.par_chunks_mut(plane).enumerate().for_each(|(c, dp)| {
        let xp = &x[c * plane..(c + 1) * plane];
        let gp = &dy[c * oh * ow..(c + 1) * oh * ow];
        for (oy, grow) in gp.chunks_exact(ow).enumerate() {
            let (top, bottom) = dp[2 * oy * p.in_w..].split_at_mut(p.in_w);
            let d0 = &mut top[..2 * ow];
            let d1 = &mut bottom[..2 * ow];
            let r0 = &xp[2 * oy * p.in_w..][..2 * ow];
            let r1 = &xp[(2 * oy + 1) * p.in_w..][..2 * ow];
            for (ox, &g) in grow.iter().enumerate() {
                let j = 2 * ox;
                match p.kind {
                    PoolKind::Max => match argmax4(r0[j], r0[j + 1], r1[j], r1[j + 1]) {
                        0 => d0[j] = g,
                        1 => d0[j + 1] = g,
                        2 => d1[j] = g,
                        _ => d1[j + 1] = g,
                    },
                    PoolKind::Avg => {
                        let v = g * quarter;
                        d0[j] = v;
                        d0[j + 1] = v;
                        d1[j] = v;
                        d1[j + 1] = v;
                    }
                }
            }
        }
    });
    CpuBuffer::from_vec(dx)
}

pub(crate) fn forward<E: Element>(x: &[E], p: &Pool2dParams) -> CpuBuffer<E> {
    if p.kernel == 2 && p.stride == 2 {
        return forward_2x2(x, p);
    }
    let (oh, ow) = (p.out_h(), p.out_w());
    let plane = p.in_h * p.in_w;
    let inv = E::of(1.0 / (p.kernel * p.kernel) as f64);
    let mut y = E::pool().scratch(p.batch * p.channels * oh * ow);
    y.par_chunks_mut(oh * ow).enumerate().for_each(|(c, yp)| {
        let xp = &x[c * plane..(c + 1) * plane];
        for oy in 0..oh {
            for ox in 0..ow {
                yp[oy * ow + ox] = match p.kind {
                    PoolKind::Max => xp[argmax(xp, p, oy, ox)],
                    PoolKind::Avg => {
                        let mut s = E::zero();
                        for ky in 0..p.kernel {
                            let row = (oy * p.stride + ky) * p.in_w + ox * p.stride;
                            s += xp[row..row + p.kernel].iter().copied().sum::<E>();
                        }
                        s * inv
                    }
                };
            }
        }
    });
    CpuBuffer::from_vec(y)
}

pub(crate) fn backward<E: Element>(x: &[E], dy: &[E], p: &Pool2dParams) -> CpuBuffer<E> {
    if p.kernel == 2 && p.stride == 2 {
        return backward_2x2(x, dy, p);
    }
    let (oh, ow) = (p.out_h(), p.out_w());
    let plane = p.in_h * p.in_w;
    let inv = E::of(1.0 / (p.kernel * p.kernel) as f64);
    let mut dx = E::pool().zeroed(x.len());
    dx.par_chunks_mut(plane).enumerate().for_each(|(c, dp)| {
        let xp = &x[c * plane..(c + 1) * plane];
        let gp = &dy[c * oh * ow..(c + 1) * oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                let g = gp[oy * ow + ox];
                match p.kind {
                    PoolKind::Max => dp[argmax(xp, p, oy, ox)] += g,
                    PoolKind::Avg => {
                        for ky in 0..p.kernel {
                            let row = (oy * p.stride + ky) * p.in_w + ox * p.stride;
                            dp[row..row + p.kernel]
                                .iter_mut()
                                .for_each(|d| *d += g * inv);
                        }
                    }
                }
            }
        }
    });
    CpuBuffer::from_vec(dx)
}
