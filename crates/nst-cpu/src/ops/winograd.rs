//! Winograd minimal filtering F(m x m, 3x3) for 3x3, stride-1, padding-1 convolutions:
//! F(2x2, 3x3) (16 multiplications per 2x2 output tile and channel pair instead of 36, 2.25x
//! fewer) and F(3x3, 3x3) (25 per 3x3 tile instead of 81, 3.24x fewer) at the default
//! precision, by the layer's size; F(4x4, 3x3) for the fast precision mode (36 per 4x4 tile
//! instead of 144, 4x fewer). The larger the tile, the larger the transform constants and so
//! the rounding errors.
//!
//! With `d` an (m+2)x(m+2) input tile and `g` a 3x3 filter, the m x m output tile is
//! `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`. For F(2x2, 3x3),
//! `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`, `G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]`,
//! `Aᵀ = [1 1 1 0; 0 1 -1 -1]`; F(3x3, 3x3) uses the points 0, ±1, -2 and F(4x4, 3x3)
//! 0, ±1, ±2 (with ∞, as in Lavin & Gray, 2016).
//! Summed over input channels, the elementwise product becomes (m+2)² independent matrix
//! products `M_e = U_e · V_e` (`U_e`: K x C filters, `V_e`: C x tiles), one per tile
//! position `e`.
//!
//! The filters are transformed once per weight buffer (the network is frozen) and cached on
//! the buffer, as is the input gradient's bank (the filters rotated by 180° with inputs and
//! outputs swapped). The tiles are processed in blocks of whole tile rows sized so that a
//! block's transformed input and products stay in the core's cache; blocks run in parallel,
//! each with a single-threaded GEMM, and write disjoint output rows. F(2x2, 3x3)'s transforms
//! use only `±1` and `½`, so its rounding error is close to the direct method's; both are
//! measured in the tests against f64.
//!
//! The transforms run over runs of tiles eight at a time ([`super::lanes`]), compiled for
//! AVX2 where the CPU has it (chosen at run time): with the same operations in the same
//! order, so the bytes do not depend on it (a test compares both paths bit for bit).

use super::bf16::{self, Kernel, PackedA};
use super::lanes::{interleave, map, regions, Arith, Transform};
use super::matmul::{gemm_with, Mat};
use crate::Element;
use rayon::prelude::*;
use std::cell::RefCell;

/// Which Winograd algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Variant {
    /// F(2x2, 3x3): 4x4 input tiles.
    F2,
    /// F(3x3, 3x3): 5x5 input tiles.
    F3,
    /// F(4x4, 3x3): 6x6 input tiles.
    F4,
}

impl Variant {
    /// The output tile's side.
    fn m(self) -> usize {
        match self {
            Variant::F2 => 2,
            Variant::F3 => 3,
            Variant::F4 => 4,
        }
    }

    /// The input tile's side.
    fn alpha(self) -> usize {
        self.m() + 2
    }

    /// `G` as rows of the (m+2) x 3 matrix.
    fn g(self) -> &'static [[f64; 3]] {
        match self {
            Variant::F2 => &F2_G,
            Variant::F3 => &F3_G,
            Variant::F4 => &F4_G,
        }
    }
}

const F2_G: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// F(3x3, 3x3) at the points 0, 1, -1, -2 and ∞: of the four-finite-point sets tried
/// (0, ±1 with 2, -2, ½ or -½), the smallest f32 error (9.0e-7 relative on 64 random channels,
/// against 2.8e-7 for F(2x2, 3x3) and 1.7e-6 for F(4x4, 3x3)).
const F3_G: [[f64; 3]; 5] = [
    [-0.5, 0.0, 0.0],
    [1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0],
    [0.5, -0.5, 0.5],
    [-1.0 / 6.0, 1.0 / 3.0, -2.0 / 3.0],
    [0.0, 0.0, 1.0],
];

const F4_G: [[f64; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// F(2x2, 3x3)'s `Bᵀ` applied to a column of four inputs.
struct Bt4;
impl Transform<4, 4> for Bt4 {
    #[inline(always)]
    fn apply<T: Arith>(d: [T; 4]) -> [T; 4] {
        [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
    }
}

/// F(2x2, 3x3)'s `Aᵀ` applied to a column of four products.
struct At4;
impl Transform<4, 2> for At4 {
    #[inline(always)]
    fn apply<T: Arith>(m: [T; 4]) -> [T; 2] {
        [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
    }
}

/// F(3x3, 3x3)'s `Bᵀ` applied to a column of five inputs:
/// `Bᵀ = [-2 -1 2 1 0; 0 2 3 1 0; 0 -2 1 1 0; 0 -1 0 1 0; 0 -2 -1 2 1]`.
struct Bt5;
impl Transform<5, 5> for Bt5 {
    #[inline(always)]
    fn apply<T: Arith>(d: [T; 5]) -> [T; 5] {
        let two = T::splat(2.0);
        let (s23, d31) = (d[3] + d[2], d[3] - d[1]);
        [
            two * (d[2] - d[0]) + (d[3] - d[1]),
            s23 + two * (d[1] + d[2]),
            s23 - two * d[1],
            d31,
            two * d31 + (d[4] - d[2]),
        ]
    }
}

/// F(3x3, 3x3)'s `Aᵀ = [1 1 1 1 0; 0 1 -1 -2 0; 0 1 1 4 1]` applied to a column of five
/// products.
struct At5;
impl Transform<5, 3> for At5 {
    #[inline(always)]
    fn apply<T: Arith>(m: [T; 5]) -> [T; 3] {
        let (two, four) = (T::splat(2.0), T::splat(4.0));
        let (s12, d12) = (m[1] + m[2], m[1] - m[2]);
        [
            m[0] + s12 + m[3],
            d12 - two * m[3],
            s12 + four * m[3] + m[4],
        ]
    }
}

/// F(4x4, 3x3)'s `Bᵀ` applied to a column of six inputs.
struct Bt6;
impl Transform<6, 6> for Bt6 {
    #[inline(always)]
    fn apply<T: Arith>(d: [T; 6]) -> [T; 6] {
        let (two, four, five) = (T::splat(2.0), T::splat(4.0), T::splat(5.0));
        [
            four * d[0] - five * d[2] + d[4],
            d[3] + d[4] - four * (d[1] + d[2]),
            four * (d[1] - d[2]) - d[3] + d[4],
            two * (d[3] - d[1]) - d[2] + d[4],
            two * (d[1] - d[3]) - d[2] + d[4],
            four * d[1] - five * d[3] + d[5],
        ]
    }
}

/// F(4x4, 3x3)'s `Aᵀ` applied to a column of six products.
struct At6;
impl Transform<6, 4> for At6 {
    #[inline(always)]
    fn apply<T: Arith>(m: [T; 6]) -> [T; 4] {
        let (two, four, eight) = (T::splat(2.0), T::splat(4.0), T::splat(8.0));
        let (s12, d12, s34, d34) = (m[1] + m[2], m[1] - m[2], m[3] + m[4], m[3] - m[4]);
        [
            m[0] + s12 + s34,
            d12 + two * d34,
            s12 + four * s34,
            d12 + eight * d34 + m[5],
        ]
    }
}

/// Filters transformed for a [`Variant`]: (m+2)² matrices `U_e = G g Gᵀ` at tile position
/// `e`, each `k x c` row-major; for bf16 products, only rounded to bf16 and packed.
#[derive(Debug)]
pub(crate) struct Filters<E> {
    /// The `U_e` in `E`; empty for bf16 products.
    u: Vec<E>,
    /// The `U_e` packed for bf16 products (one per tile position); empty for products in `E`.
    packed: Vec<PackedA>,
    k: usize,
    c: usize,
    variant: Variant,
}

impl<E: Element> Filters<E> {
    /// Transforms OIHW 3x3 weights `w` (`k x c x 3 x 3`), in f64. With `rotated` the result
    /// is the input gradient's bank: `c` outputs and `k` inputs, each filter turned by 180°.
    /// With `bf16`, for bf16 products: the transformed filters are kept only in their packed
    /// bf16 form (rounded from `E`).
    pub(crate) fn new(
        w: &[E],
        k: usize,
        c: usize,
        variant: Variant,
        rotated: bool,
        bf16: bool,
    ) -> Self {
        let (out, inp) = if rotated { (c, k) } else { (k, c) };
        let g = variant.g();
        let a = variant.alpha();
        let mut u = vec![E::zero(); a * a * out * inp];
        for o in 0..out {
            for i in 0..inp {
                let tap = |y: usize, x: usize| {
                    if rotated {
                        w[(i * c + o) * 9 + (2 - y) * 3 + (2 - x)].f64()
                    } else {
                        w[(o * c + i) * 9 + y * 3 + x].f64()
                    }
                };
                // t = G·g (a x 3), then u = t·Gᵀ (a x a).
                for (r, gr) in g.iter().enumerate() {
                    let t: [f64; 3] =
                        std::array::from_fn(|x| (0..3).map(|y| gr[y] * tap(y, x)).sum());
                    for (col, gc) in g.iter().enumerate() {
                        let v: f64 = (0..3).map(|x| t[x] * gc[x]).sum();
                        u[((r * a + col) * out + o) * inp + i] = E::of(v);
                    }
                }
            }
        }
        let packed = if bf16 {
            let n = out * inp;
            let packed = (0..a * a)
                .map(|e| {
                    let u_e: Vec<f32> = u[e * n..(e + 1) * n].iter().map(|v| v.f32()).collect();
                    PackedA::new(&u_e, out, inp)
                })
                .collect();
            u = Vec::new();
            packed
        } else {
            Vec::new()
        };
        Filters {
            u,
            packed,
            k: out,
            c: inp,
            variant,
        }
    }

    /// Whether these filters have `k` outputs and `c` inputs, are of `variant` and for bf16
    /// products or not.
    pub(crate) fn matches(&self, k: usize, c: usize, variant: Variant, bf16: bool) -> bool {
        (self.k, self.c, self.variant, !self.packed.is_empty()) == (k, c, variant, bf16)
    }

    /// Output channels.
    pub(crate) fn out_channels(&self) -> usize {
        self.k
    }

    /// Input channels.
    pub(crate) fn in_channels(&self) -> usize {
        self.c
    }
}

/// A raw pointer to the output that blocks write disjoint rows of.
#[derive(Clone, Copy)]
struct OutPtr<E>(*mut E);
// SAFETY: blocks write disjoint output rows through it (see `conv`).
unsafe impl<E: Send> Send for OutPtr<E> {}
// SAFETY: as above.
unsafe impl<E: Sync> Sync for OutPtr<E> {}

/// Runs `f` compiled for AVX2 where the CPU has it (chosen at run time), else as built: the
/// transforms' loops then run on 8-lane vectors. The arithmetic is the same IEEE operations in
/// the same order either way (Rust never contracts a multiply and an add into an FMA), so the
/// bytes are the same on every x86-64 CPU.
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    // Tests compare the two paths bit for bit.
    #[cfg(test)]
    let plain = tests::plain();
    #[cfg(not(test))]
    let plain = false;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && !plain {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2(f) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = plain;
    f()
}

/// `f`, inlined here and so compiled with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Tile rows per block: enough tiles for an efficient GEMM, few enough that the block's
/// transformed input and products (`ne·(C+K)` values per tile, `ne` tile positions) stay in a
/// 2 MB cache. Depends only on the shapes, never on the thread count, so results are
/// reproducible.
fn rows_per_block(tiles_w: usize, ne: usize, c: usize, k: usize) -> usize {
    let target = (524_288 / (ne * (c + k)).max(1)).max(96);
    target.div_ceil(tiles_w.max(1)).max(1)
}

/// What to fuse into a Winograd convolution's passes.
#[derive(Clone, Copy)]
pub(crate) struct Fused<'a, E> {
    /// Added to each output channel.
    pub(crate) bias: Option<&'a [E]>,
    /// Apply ReLU to the output.
    pub(crate) relu: bool,
    /// Read the input only where this tensor (same shape as the input) is positive, else 0:
    /// the ReLU backward pass, when the input is an output gradient and `mask` the ReLU's
    /// output.
    pub(crate) mask: Option<&'a [E]>,
}

impl<E> Default for Fused<'_, E> {
    fn default() -> Self {
        Fused {
            bias: None,
            relu: false,
            mask: None,
        }
    }
}

/// `out` (`K x h x w`) = the 3x3, stride-1, padding-1 correlation of one image `x`
/// (`C x h x w`) with `f`, with the bias, ReLU and input mask of `fused`; the products in bf16
/// on `bf16`'s kernel when given (`f` then made for bf16 products, and `E` is `f32`), else
/// in `E`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv<E: Element>(
    x: &[E],
    f: &Filters<E>,
    fused: Fused<'_, E>,
    h: usize,
    w: usize,
    out: &mut [E],
    bf16: Option<Kernel>,
) {
    let (k, c) = (f.k, f.c);
    assert_eq!(
        bf16.is_some(),
        !f.packed.is_empty(),
        "filters made for other products"
    );
    let (mt, alpha) = (f.variant.m(), f.variant.alpha());
    let ne = alpha * alpha;
    let (th, tw) = (h.div_ceil(mt), w.div_ceil(mt));
    assert_eq!(x.len(), c * h * w, "winograd input size");
    if let Some(m) = fused.mask {
        assert_eq!(m.len(), x.len(), "winograd mask size");
    }
    assert_eq!(out.len(), k * h * w, "winograd output size");
    if h == 0 || w == 0 || k == 0 {
        return;
    }
    let rows = rows_per_block(tw, ne, c, k);
    let blocks: Vec<(usize, usize)> = (0..th)
        .step_by(rows)
        .map(|i0| (i0, (i0 + rows).min(th)))
        .collect();
    let dst = OutPtr(out.as_mut_ptr());
    // Fewer blocks than threads (the deep layers of a small image: a few tiles each): the
    // block's ne products run in parallel instead, each still one single-threaded GEMM, so the
    // bytes are the same with any thread count. Measured side by side on an AMD EPYC, 2
    // threads (`cargo xtask bench phases`, a whole L-BFGS iteration): 128x96 from 125–142 to
    // 103 ms, 256x192 from 437–469 to 332 ms; 512x384 unchanged within noise.
    let products_in_parallel = blocks.len() < rayon::current_num_threads();
    blocks.par_iter().for_each(|&(i0, i1)| {
        let nb = (i1 - i0) * tw;
        let pool = E::pool();
        let mut v = pool.scratch(ne * c * nb);
        let mut m = pool.scratch(ne * k * nb);
        let rows = (i0, i1);
        simd(
            #[inline(always)]
            || match f.variant {
                Variant::F2 => input::<E, Bt4, 4, 2>(x, fused.mask, c, (h, w), rows, &mut v),
                Variant::F3 => input::<E, Bt5, 5, 3>(x, fused.mask, c, (h, w), rows, &mut v),
                Variant::F4 => input::<E, Bt6, 6, 4>(x, fused.mask, c, (h, w), rows, &mut v),
            },
        );
        let (vs, us) = (&v[..], &f.u[..]);
        // Mᵀ_e (nb x K) = Vᵀ_e (nb x C) · Uᵀ_e (C x K), all stored row-major as M_e, V_e and
        // U_e, i.e. column-major from the GEMM's point of view.
        let product = |e: usize, m_e: &mut [E]| {
            if let Some(kernel) = bf16 {
                let v_e = as_f32(&vs[e * c * nb..(e + 1) * c * nb]);
                let m_e = as_f32_mut(m_e);
                // M_e (K x nb) = U_e (K x C) · V_e (C x nb), in bf16 with f32 sums.
                PACKED_V.with_borrow_mut(|pv| {
                    pv.resize(bf16::packed_b_len(c, nb), 0);
                    bf16::pack_b(kernel, v_e, c, nb, nb, pv);
                    bf16::gemm(kernel, &f.packed[e], pv, nb, m_e, nb);
                });
                return;
            }
            let (v_e, u_e) = (
                &vs[e * c * nb..(e + 1) * c * nb],
                &us[e * k * c..(e + 1) * k * c],
            );
            // SAFETY: m_e is K x nb, v_e C x nb and u_e K x C, each its own slice of a
            // distinct allocation, of exactly those lengths.
            unsafe {
                gemm_with(
                    false,
                    nb,
                    k,
                    c,
                    Mat {
                        ptr: m_e.as_mut_ptr(),
                        rs: 1,
                        cs: nb as isize,
                    },
                    false,
                    Mat {
                        ptr: v_e.as_ptr(),
                        rs: 1,
                        cs: nb as isize,
                    },
                    Mat {
                        ptr: u_e.as_ptr(),
                        rs: 1,
                        cs: c as isize,
                    },
                );
            }
        };
        if products_in_parallel {
            m.par_chunks_mut(k * nb)
                .enumerate()
                .for_each(|(e, m_e)| product(e, m_e));
        } else {
            for (e, m_e) in m.chunks_mut(k * nb).enumerate() {
                product(e, m_e);
            }
        }
        // SAFETY: this block writes only output rows m·i0 .. min(m·i1, h) of every channel,
        // and the blocks' tile-row ranges are disjoint.
        simd(
            #[inline(always)]
            || unsafe {
                match f.variant {
                    Variant::F2 => output::<E, At4, 4, 2, 16>(&m, fused, k, (h, w), rows, dst),
                    Variant::F3 => output::<E, At5, 5, 3, 25>(&m, fused, k, (h, w), rows, dst),
                    Variant::F4 => output::<E, At6, 6, 4, 36>(&m, fused, k, (h, w), rows, dst),
                }
            },
        );
        pool.put(v);
        pool.put(m);
    });
}

thread_local! {
    /// Each thread's buffer for a packed `V_e`.
    static PACKED_V: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// `s` as `f32` values.
///
/// # Panics
/// If `E` is not `f32` (bf16 products are only asked for in `f32`).
fn as_f32<E: Element>(s: &[E]) -> &[f32] {
    assert_eq!(std::any::TypeId::of::<E>(), std::any::TypeId::of::<f32>());
    // SAFETY: E is f32, checked just above.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) }
}

/// `s` as `f32` values; panics unless `E` is `f32`.
fn as_f32_mut<E: Element>(s: &mut [E]) -> &mut [f32] {
    assert_eq!(std::any::TypeId::of::<E>(), std::any::TypeId::of::<f32>());
    // SAFETY: E is f32, checked just above.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), s.len()) }
}

/// Loads input row `r` of channel `ch` into `row` at offset 1 (a padded row: index `q` holds
/// column `q - 1`), zero where the row is outside the image or `mask` is not positive.
#[inline(always)]
fn load_row<E: Element>(
    plane: &[E],
    mask: Option<&[E]>,
    r: isize,
    h: usize,
    w: usize,
    row: &mut [E],
) {
    let dst = &mut row[1..1 + w];
    if r < 0 || r as usize >= h {
        dst.fill(E::zero());
        return;
    }
    let r = r as usize;
    let src = &plane[r * w..(r + 1) * w];
    match mask {
        None => dst.copy_from_slice(src),
        Some(m) => {
            for ((d, &v), &m) in dst.iter_mut().zip(src).zip(&m[r * w..(r + 1) * w]) {
                *d = if m > E::zero() { v } else { E::zero() };
            }
        }
    }
}

/// Calls `f(ch, n0, p)` for every input channel `ch` and tile row `i` of `i0..i1` of an
/// F(mt x mt, 3x3) transform, with `p` the tile row's `mt + 2` padded input rows (each
/// `mt·tw + 2` long, see [`load_row`]) and `n0` the tile row's first tile within the block.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn for_tile_rows<E: Element>(
    x: &[E],
    mask: Option<&[E]>,
    c: usize,
    h: usize,
    w: usize,
    (i0, i1): (usize, usize),
    mt: usize,
    mut f: impl FnMut(usize, usize, &[E]),
) {
    let tw = w.div_ceil(mt);
    let pw = mt * tw + 2;
    let mut p = vec![E::zero(); (mt + 2) * pw];
    for ch in 0..c {
        let plane = &x[ch * h * w..(ch + 1) * h * w];
        let mask = mask.map(|m| &m[ch * h * w..(ch + 1) * h * w]);
        for i in i0..i1 {
            for (a, row) in p.chunks_exact_mut(pw).enumerate() {
                load_row(plane, mask, (mt * i + a) as isize - 1, h, w, row);
            }
            f(ch, (i - i0) * tw, &p);
        }
    }
}

/// Fills `v` (`A²` blocks of `C x nb`) with `Bᵀ d B` (`K`: `Bᵀ` on a column of `A` values) of
/// every `A x A` tile of tile rows `i0..i1` (tiles every `MT = A - 2` pixels), reading `x` as
/// zero where `mask` is not positive.
#[inline(always)]
fn input<E: Element, K: Transform<A, A>, const A: usize, const MT: usize>(
    x: &[E],
    mask: Option<&[E]>,
    c: usize,
    (h, w): (usize, usize),
    rows: (usize, usize),
    v: &mut [E],
) {
    debug_assert_eq!(A, MT + 2);
    let tw = w.div_ceil(MT);
    let nb = (rows.1 - rows.0) * tw;
    let pw = MT * tw + 2;
    let mut s = vec![E::zero(); A * pw];
    let mut d = vec![E::zero(); MT * (tw + 1)];
    for_tile_rows(
        x,
        mask,
        c,
        h,
        w,
        rows,
        MT,
        #[inline(always)]
        |ch, n0, p| {
            // Bᵀ along the rows of the tile, for every column at once.
            let pr: [&[E]; A] = std::array::from_fn(|a| &p[a * pw..(a + 1) * pw]);
            map::<E, K, A, A>(pr, &mut regions(&mut s, |a| a * pw, pw), pw);
            // B along the columns: column b of tile j is padded column MT·j + b, i.e. phase
            // b mod MT of the row at j + b / MT (the row split into its phases first, so that
            // the map reads contiguous runs).
            for (r, sa) in s.chunks_exact(pw).enumerate() {
                deinterleave::<E, MT>(sa, &mut d, tw);
                let ins: [&[E]; A] =
                    std::array::from_fn(|b| &d[(b % MT) * (tw + 1) + b / MT..][..tw]);
                let mut o = regions(v, |col| ((r * A + col) * c + ch) * nb + n0, tw);
                map::<E, K, A, A>(ins, &mut o, tw);
            }
        },
    );
}

/// Splits a padded row (`MT·tw + 2` values) into its `MT` column phases, each `tw + 1` long:
/// `d[ph·(tw + 1) + j]` = column `MT·j + ph` (the phases past the row's end unset).
#[inline(always)]
fn deinterleave<E: Element, const MT: usize>(sa: &[E], d: &mut [E], tw: usize) {
    for (j, q) in sa.chunks_exact(MT).enumerate() {
        for (ph, &val) in q.iter().enumerate() {
            d[ph * (tw + 1) + j] = val;
        }
    }
    for (ph, &val) in sa[MT * tw..].iter().enumerate() {
        d[ph * (tw + 1) + tw] = val;
    }
}

/// For every output channel and tile row `i` of `i0..i1` of an F(mt x mt, 3x3) transform
/// with `NE` tile positions: calls `f(mm, bias, rows)` with `mm[e]` the tile row's products at
/// position `e` (one per tile) to fill `rows` (`mt` output rows of `mt·tw`), then applies
/// `fused`'s ReLU and stores them.
///
/// # Safety
/// `dst` must point at a `K x h x w` output, and no other thread may touch rows
/// `mt·i0 .. min(mt·i1, h)` of any channel meanwhile.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn for_output_rows<E: Element, const NE: usize>(
    m: &[E],
    fused: Fused<'_, E>,
    k: usize,
    (h, w): (usize, usize),
    (i0, i1): (usize, usize),
    mt: usize,
    dst: OutPtr<E>,
    mut f: impl FnMut(&[&[E]; NE], E, &mut [E]),
) {
    let tw = w.div_ceil(mt);
    let nb = (i1 - i0) * tw;
    let mut rows = vec![E::zero(); mt * mt * tw];
    for ch in 0..k {
        let b = fused.bias.map_or(E::zero(), |b| b[ch]);
        for i in i0..i1 {
            let n0 = (i - i0) * tw;
            let mm: [&[E]; NE] =
                std::array::from_fn(|e| &m[(e * k + ch) * nb + n0..(e * k + ch) * nb + n0 + tw]);
            f(&mm, b, &mut rows);
            // SAFETY: passed through from the caller.
            unsafe { store_rows(&mut rows, fused.relu, mt, ch, i, h, w, dst) };
        }
    }
}

/// Writes the output rows of tile rows `i0..i1` from the block's products `m` (`NE = A²`
/// blocks of `K x nb`) with `K`'s `Aᵀ M A`, adding the bias and applying the ReLU of `fused`.
///
/// # Safety
/// As [`for_output_rows`].
#[inline(always)]
unsafe fn output<
    E: Element,
    K: Transform<A, MT>,
    const A: usize,
    const MT: usize,
    const NE: usize,
>(
    m: &[E],
    fused: Fused<'_, E>,
    k: usize,
    (h, w): (usize, usize),
    rows: (usize, usize),
    dst: OutPtr<E>,
) {
    let tw = w.div_ceil(MT);
    let mut t = vec![E::zero(); (A + 1) * MT * tw];
    // SAFETY: passed through from the caller.
    unsafe {
        for_output_rows::<E, NE>(
            m,
            fused,
            k,
            (h, w),
            rows,
            MT,
            dst,
            #[inline(always)]
            |mm, b, o| tile_row::<E, K, A, MT, NE>(mm, b, o, tw, &mut t),
        )
    }
}

/// `Aᵀ M A + bias` (`K`: `Aᵀ` on a column of `A` products, giving `MT` values) of the `tw`
/// tiles of one tile row and output channel (`mm[e]`: their products at tile position `e`,
/// `NE = A²`) into `out`'s `MT` output rows. `t` is scratch of `(A + 1)·MT·tw` values: `Aᵀ`
/// along the tiles' rows goes there first, position by position across all tiles, then `A`
/// along their columns, so that both passes map contiguous runs.
#[inline(always)]
fn tile_row<E: Element, K: Transform<A, MT>, const A: usize, const MT: usize, const NE: usize>(
    mm: &[&[E]; NE],
    b: E,
    out: &mut [E],
    tw: usize,
    t: &mut [E],
) {
    let (t, u) = t.split_at_mut(A * MT * tw);
    // t[(y·A + col)·tw + j]: row y of Aᵀ applied to column col of tile j.
    for col in 0..A {
        let ins = std::array::from_fn(|a| mm[a * A + col]);
        map::<E, K, A, MT>(ins, &mut regions(t, |y| (y * A + col) * tw, tw), tw);
    }
    for (y, row) in out.chunks_exact_mut(MT * tw).take(MT).enumerate() {
        let ins = std::array::from_fn(|col| &t[(y * A + col) * tw..][..tw]);
        let mut planes = regions::<E, MT>(u, |x| x * tw, tw);
        map::<E, K, A, MT>(ins, &mut planes, tw);
        interleave(planes.each_ref().map(|p| &**p), b, row, tw);
    }
}

/// Applies ReLU to `rows` (`mt` rows of a tile row's outputs, each at least `w` long) when
/// asked, and copies them to output rows `mt·i ..` of channel `ch` that exist.
///
/// # Safety
/// `dst` must point at a `K x h x w` output whose rows `mt·i .. mt·i + mt` of channel `ch` no
/// other thread touches meanwhile.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn store_rows<E: Element>(
    rows: &mut [E],
    relu: bool,
    mt: usize,
    ch: usize,
    i: usize,
    h: usize,
    w: usize,
    dst: OutPtr<E>,
) {
    if relu {
        rows.iter_mut().for_each(|v| *v = v.max(E::zero()));
    }
    let len = rows.len() / mt;
    for (y, row) in rows.chunks_exact(len).enumerate() {
        let oy = mt * i + y;
        if oy < h {
            // SAFETY: row `oy` of channel `ch` lies inside the output and belongs to this
            // block (caller's contract); `row` has at least `w` elements.
            unsafe {
                std::ptr::copy_nonoverlapping(row.as_ptr(), dst.0.add((ch * h + oy) * w), w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set while a test runs the transforms as built, without AVX2.
    static PLAIN: AtomicBool = AtomicBool::new(false);

    pub(super) fn plain() -> bool {
        PLAIN.load(Ordering::Relaxed)
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut z = seed;
        (0..n)
            .map(|_| {
                z = z
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn the_vector_path_gives_the_plain_bytes() {
        // Odd sizes (partial tiles, a partial lane group of tiles), a mask, bias and ReLU:
        // every output bit equal with and without AVX2, for every variant.
        let (c, k, h, w) = (5, 6, 13, 37);
        let x = values(c * h * w, 1);
        let mask = values(c * h * w, 2);
        let weights = values(k * c * 9, 3);
        let bias = values(k, 4);
        for variant in [Variant::F2, Variant::F3, Variant::F4] {
            let f = Filters::new(&weights, k, c, variant, false, false);
            let fused = Fused {
                bias: Some(&bias),
                relu: true,
                mask: Some(&mask),
            };
            let run = |plain: bool| {
                PLAIN.store(plain, Ordering::Relaxed);
                let mut out = vec![0.0f32; k * h * w];
                conv(&x, &f, fused, h, w, &mut out, None);
                PLAIN.store(false, Ordering::Relaxed);
                out
            };
            let (fast, slow) = (run(false), run(true));
            assert!(fast.iter().any(|&v| v > 0.0));
            assert!(
                fast.iter()
                    .zip(&slow)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{variant:?}"
            );
        }
    }

    /// The direct 3x3, padding-1 correlation in f64, with bias and ReLU.
    fn direct(
        x: &[f32],
        wt: &[f32],
        bias: &[f32],
        (c, k, h, w): (usize, usize, usize, usize),
    ) -> Vec<f64> {
        let mut out = vec![0.0f64; k * h * w];
        for o in 0..k {
            for y in 0..h {
                for xx in 0..w {
                    let mut acc = f64::from(bias[o]);
                    for i in 0..c {
                        for dy in 0..3 {
                            for dx in 0..3 {
                                let (sy, sx) = (y as isize + dy - 1, xx as isize + dx - 1);
                                if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                    continue;
                                }
                                let v = x[(i * h + sy as usize) * w + sx as usize];
                                let g = wt[((o * c + i) * 3 + dy as usize) * 3 + dx as usize];
                                acc += f64::from(v) * f64::from(g);
                            }
                        }
                    }
                    out[(o * h + y) * w + xx] = acc.max(0.0);
                }
            }
        }
        out
    }

    #[test]
    fn every_variant_matches_the_direct_correlation_and_the_rotated_bank_its_adjoint() {
        // Sizes that leave partial tiles for every tile side (2, 3 and 4), against f64: the
        // relative L2 error within each variant's bound (F(2x2) and F(3x3) as exact as f32
        // sums of this length allow, F(4x4) a little less). Then the rotated bank: for any
        // x and y, <conv(x), y> = <x, conv_rotated(y)> (the input gradient is the adjoint).
        let (c, k, h, w) = (24, 20, 17, 23);
        let x = values(c * h * w, 5);
        let weights = values(k * c * 9, 6);
        let bias = values(k, 7);
        let want = direct(&x, &weights, &bias, (c, k, h, w));
        let y = values(k * h * w, 8);
        for (variant, bound) in [
            (Variant::F2, 1e-6),
            (Variant::F3, 3e-6),
            (Variant::F4, 1e-5),
        ] {
            let f = Filters::new(&weights, k, c, variant, false, false);
            let fused = Fused {
                bias: Some(&bias),
                relu: true,
                mask: None,
            };
            let mut out = vec![0.0f32; k * h * w];
            conv(&x, &f, fused, h, w, &mut out, None);
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (&g, &r) in out.iter().zip(&want) {
                num += (f64::from(g) - r).powi(2);
                den += r * r;
            }
            let rel = (num / den).sqrt();
            assert!(rel < bound, "{variant:?}: relative error {rel:e}");

            let fwd = Filters::new(&weights, k, c, variant, false, false);
            let back = Filters::new(&weights, k, c, variant, true, false);
            let mut ax = vec![0.0f32; k * h * w];
            conv(&x, &fwd, Fused::default(), h, w, &mut ax, None);
            let mut aty = vec![0.0f32; c * h * w];
            conv(&y, &back, Fused::default(), h, w, &mut aty, None);
            let lhs: f64 = ax
                .iter()
                .zip(&y)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let rhs: f64 = x
                .iter()
                .zip(&aty)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            assert!(
                (lhs - rhs).abs() <= 1e-4 * lhs.abs().max(rhs.abs()),
                "{variant:?}: <Ax, y> = {lhs}, <x, Aᵀy> = {rhs}"
            );
        }
    }
}
