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

pub(crate) fn forward<E: Element>(x: &[E], p: &Pool2dParams) -> CpuBuffer<E> {
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
