//! Elementwise ops, parallel over fixed-size chunks.

use super::CHUNK;
use crate::{CpuBuffer, Element};
use nst_tensor::{BinaryOp, UnaryOp};
use rayon::prelude::*;

fn map1<E: Element>(x: &[E], f: impl Fn(E) -> E + Sync) -> CpuBuffer<E> {
    let mut out = E::pool().scratch(x.len());
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &i)| *o = f(i)));
    CpuBuffer::from_vec(out)
}

fn map2<E: Element>(a: &[E], b: &[E], f: impl Fn(E, E) -> E + Sync) -> CpuBuffer<E> {
    let mut out = E::pool().scratch(a.len());
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            o.iter_mut()
                .zip(a.iter().zip(b))
                .for_each(|(o, (&a, &b))| *o = f(a, b))
        });
    CpuBuffer::from_vec(out)
}

pub(crate) fn unary<E: Element>(op: UnaryOp, x: &[E]) -> CpuBuffer<E> {
    match op {
        UnaryOp::Relu => map1(x, |v| if v > E::zero() { v } else { E::zero() }),
        UnaryOp::Square => map1(x, |v| v * v),
        UnaryOp::Exp => map1(x, |v| v.exp()),
        UnaryOp::Neg => map1(x, |v| -v),
        UnaryOp::Sqrt => map1(x, |v| v.sqrt()),
    }
}

pub(crate) fn affine<E: Element>(x: &[E], mul: E, add: E) -> CpuBuffer<E> {
    map1(x, |v| v * mul + add)
}

pub(crate) fn binary<E: Element>(op: BinaryOp, a: &[E], b: &[E]) -> CpuBuffer<E> {
    match op {
        BinaryOp::Add => map2(a, b, |a, b| a + b),
        BinaryOp::Sub => map2(a, b, |a, b| a - b),
        BinaryOp::Mul => map2(a, b, |a, b| a * b),
        BinaryOp::Div => map2(a, b, |a, b| a / b),
        BinaryOp::ReluGrad => map2(a, b, |y, g| if y > E::zero() { g } else { E::zero() }),
    }
}

pub(crate) fn axpy<E: Element>(a: f64, x: &[E], y: &[E]) -> CpuBuffer<E> {
    map2(x, y, |x, y| E::of(a * x.f64() + y.f64()))
}

pub(crate) fn relu_in_place<E: Element>(x: &mut [E]) {
    x.par_chunks_mut(CHUNK).for_each(|c| {
        c.iter_mut()
            .for_each(|v| *v = if *v > E::zero() { *v } else { E::zero() })
    });
}
