//! Small fixed transforms mapped over runs of values eight lanes at a time, so that they
//! compile to vector instructions: the Winograd transforms' inner loops.
//!
//! A transform is written once over [`Arith`], a scalar or eight of them, and [`map`] runs it
//! over whole runs: each input run gives one lane group, each output run receives one. The
//! eight lanes are local arrays, so the compiler needs no proof that runs do not alias to
//! vectorise them, and the arithmetic per value is exactly the scalar one (the same IEEE
//! operations in the same order), so results do not depend on the vector width.

use crate::Element;
use std::ops::{Add, Mul, Sub};

/// Lanes per group.
pub(crate) const LANES: usize = 8;

/// What a transform computes with: one value, or a group of [`LANES`].
pub(crate) trait Arith:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self>
{
    /// The constant `v` in every lane.
    fn splat(v: f64) -> Self;
}

impl<E: Element> Arith for E {
    #[inline(always)]
    fn splat(v: f64) -> Self {
        E::of(v)
    }
}

/// [`LANES`] values operated on lane by lane.
#[derive(Clone, Copy)]
pub(crate) struct Group<E>([E; LANES]);

macro_rules! lanewise {
    ($tr:ident, $f:ident, $op:tt) => {
        impl<E: Element> $tr for Group<E> {
            type Output = Self;
            #[inline(always)]
            fn $f(self, o: Self) -> Self {
                Group(std::array::from_fn(|l| self.0[l] $op o.0[l]))
            }
        }
    };
}
lanewise!(Add, add, +);
lanewise!(Sub, sub, -);
lanewise!(Mul, mul, *);

impl<E: Element> Arith for Group<E> {
    #[inline(always)]
    fn splat(v: f64) -> Self {
        Group([E::of(v); LANES])
    }
}

/// A fixed map from `NI` values to `NO`, defined for scalars and lane groups alike.
pub(crate) trait Transform<const NI: usize, const NO: usize> {
    /// The map.
    fn apply<T: Arith>(x: [T; NI]) -> [T; NO];
}

/// Runs `K` over runs of `len` values: `outs[o][j] = K(ins[0][j], …)[o]` for every `j`.
#[inline(always)]
pub(crate) fn map<E: Element, K: Transform<NI, NO>, const NI: usize, const NO: usize>(
    ins: [&[E]; NI],
    outs: &mut [&mut [E]; NO],
    len: usize,
) {
    let ins: [&[E]; NI] = std::array::from_fn(|i| &ins[i][..len]);
    let mut j = 0;
    while j + LANES <= len {
        let x: [Group<E>; NI] =
            std::array::from_fn(|i| Group(ins[i][j..j + LANES].try_into().expect("a full group")));
        for (out, y) in outs.iter_mut().zip(K::apply(x)) {
            out[j..j + LANES].copy_from_slice(&y.0);
        }
        j += LANES;
    }
    for j in j..len {
        let y = K::apply::<E>(std::array::from_fn(|i| ins[i][j]));
        for (out, v) in outs.iter_mut().zip(y) {
            out[j] = v;
        }
    }
}

/// `out[N·j + o] = planes[o][j] + b` for `j < len`: `N` planar runs interleaved into one row,
/// with a bias added (as `value + b`).
#[inline(always)]
pub(crate) fn interleave<E: Element, const N: usize>(
    planes: [&[E]; N],
    b: E,
    out: &mut [E],
    len: usize,
) {
    let planes: [&[E]; N] = std::array::from_fn(|o| &planes[o][..len]);
    for (j, dst) in out[..N * len].chunks_exact_mut(N).enumerate() {
        for (d, p) in dst.iter_mut().zip(planes) {
            *d = p[j] + b;
        }
    }
}

/// `N` disjoint runs of `len` values of `v`, starting at `start(0) < start(1) < …` (each at
/// least `len` after the one before).
#[inline(always)]
pub(crate) fn regions<E, const N: usize>(
    v: &mut [E],
    start: impl Fn(usize) -> usize,
    len: usize,
) -> [&mut [E]; N] {
    let mut rest = v;
    let mut at = 0;
    std::array::from_fn(|i| {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(start(i) - at);
        let (run, tail) = tail.split_at_mut(len);
        at = start(i) + len;
        rest = tail;
        run
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mix;
    impl Transform<3, 2> for Mix {
        fn apply<T: Arith>(x: [T; 3]) -> [T; 2] {
            [x[0] * T::splat(3.0) - x[1], x[1] + x[2] * T::splat(0.1)]
        }
    }

    #[test]
    fn groups_and_the_tail_give_the_scalar_bytes() {
        // 8 + 8 + 3 values: two groups and a scalar tail, against the scalar map value by
        // value, bit for bit.
        let n = 19;
        let ins: Vec<Vec<f32>> = (0..3)
            .map(|i| {
                (0..n)
                    .map(|j| (j * 7 + i * 13) as f32 * 0.37 - 4.1)
                    .collect()
            })
            .collect();
        let mut a = vec![0.0f32; n];
        let mut b = vec![0.0f32; n];
        map::<f32, Mix, 3, 2>(
            [&ins[0], &ins[1], &ins[2]],
            &mut [&mut a[..], &mut b[..]],
            n,
        );
        for j in 0..n {
            let y = Mix::apply::<f32>([ins[0][j], ins[1][j], ins[2][j]]);
            assert_eq!(
                (a[j].to_bits(), b[j].to_bits()),
                (y[0].to_bits(), y[1].to_bits())
            );
        }
    }

    #[test]
    fn interleave_and_regions() {
        let (p, q) = ([1.0f64, 2.0, 3.0], [10.0f64, 20.0, 30.0]);
        let mut out = [0.0; 7];
        interleave([&p[..], &q[..]], 0.5, &mut out, 3);
        assert_eq!(out, [1.5, 10.5, 2.5, 20.5, 3.5, 30.5, 0.0]);
        let mut v: Vec<u32> = (0..10).collect();
        let [x, y] = regions::<u32, 2>(&mut v, |i| [1, 6][i], 3);
        assert_eq!((&x[..], &y[..]), (&[1, 2, 3][..], &[6, 7, 8][..]));
    }
}
