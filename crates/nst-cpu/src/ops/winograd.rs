//! Winograd minimal filtering F(m x m, 3x3) for 3x3, stride-1, padding-1 convolutions:
//! F(2x2, 3x3) by default (16 multiplications per 2x2 output tile and channel pair instead of
//! 36, 2.25x fewer), F(4x4, 3x3) for the fast precision mode (36 per 4x4 tile instead of 144,
//! 4x fewer, with larger transform constants and so larger rounding errors).
//!
//! With `d` an (m+2)x(m+2) input tile and `g` a 3x3 filter, the m x m output tile is
//! `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`. For F(2x2, 3x3),
//! `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`, `G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]`,
//! `Aᵀ = [1 1 1 0; 0 1 -1 -1]`; F(4x4, 3x3) uses the points 0, ±1, ±2 (Lavin & Gray, 2016).
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

use super::matmul::{gemm_with, Mat};
use crate::Element;
use rayon::prelude::*;

/// Which Winograd algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Variant {
    /// F(2x2, 3x3): 4x4 input tiles.
    F2,
    /// F(4x4, 3x3): 6x6 input tiles.
    F4,
}

impl Variant {
    /// The output tile's side.
    fn m(self) -> usize {
        match self {
            Variant::F2 => 2,
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

const F4_G: [[f64; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// F(4x4, 3x3)'s `Bᵀ` applied to a column of six inputs.
#[inline(always)]
fn bt6<E: Element>(d: [E; 6]) -> [E; 6] {
    let (two, four, five) = (E::of(2.0), E::of(4.0), E::of(5.0));
    [
        four * d[0] - five * d[2] + d[4],
        d[3] + d[4] - four * (d[1] + d[2]),
        four * (d[1] - d[2]) - d[3] + d[4],
        two * (d[3] - d[1]) - d[2] + d[4],
        two * (d[1] - d[3]) - d[2] + d[4],
        four * d[1] - five * d[3] + d[5],
    ]
}

/// F(4x4, 3x3)'s `Aᵀ` applied to a column of six products.
#[inline(always)]
fn at6<E: Element>(m: [E; 6]) -> [E; 4] {
    let (two, four, eight) = (E::of(2.0), E::of(4.0), E::of(8.0));
    let (s12, d12, s34, d34) = (m[1] + m[2], m[1] - m[2], m[3] + m[4], m[3] - m[4]);
    [
        m[0] + s12 + s34,
        d12 + two * d34,
        s12 + four * s34,
        d12 + eight * d34 + m[5],
    ]
}

/// Filters transformed for a [`Variant`]: (m+2)² matrices `U_e = G g Gᵀ` at tile position
/// `e`, each `k x c` row-major.
#[derive(Debug)]
pub(crate) struct Filters<E> {
    u: Vec<E>,
    k: usize,
    c: usize,
    variant: Variant,
}

impl<E: Element> Filters<E> {
    /// Transforms OIHW 3x3 weights `w` (`k x c x 3 x 3`), in f64. With `rotated` the result
    /// is the input gradient's bank: `c` outputs and `k` inputs, each filter turned by 180°.
    pub(crate) fn new(w: &[E], k: usize, c: usize, variant: Variant, rotated: bool) -> Self {
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
        Filters {
            u,
            k: out,
            c: inp,
            variant,
        }
    }

    /// Whether these filters have `k` outputs and `c` inputs and are of `variant`.
    pub(crate) fn matches(&self, k: usize, c: usize, variant: Variant) -> bool {
        (self.k, self.c, self.variant) == (k, c, variant)
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
/// (`C x h x w`) with `f`, with the bias, ReLU and input mask of `fused`.
pub(crate) fn conv<E: Element>(
    x: &[E],
    f: &Filters<E>,
    fused: Fused<'_, E>,
    h: usize,
    w: usize,
    out: &mut [E],
) {
    let (k, c) = (f.k, f.c);
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
        match f.variant {
            Variant::F2 => input_f2(x, fused.mask, c, (h, w), rows, &mut v),
            Variant::F4 => input_f4(x, fused.mask, c, (h, w), rows, &mut v),
        }
        let (vs, us) = (&v[..], &f.u[..]);
        // Mᵀ_e (nb x K) = Vᵀ_e (nb x C) · Uᵀ_e (C x K), all stored row-major as M_e, V_e and
        // U_e, i.e. column-major from the GEMM's point of view.
        let product = |e: usize, m_e: &mut [E]| {
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
        unsafe {
            match f.variant {
                Variant::F2 => {
                    for_output_rows::<E, 16>(&m, fused, k, (h, w), rows, 2, dst, |mm, b, o| {
                        tile_row_f2(mm, b, o, tw)
                    })
                }
                Variant::F4 => {
                    for_output_rows::<E, 36>(&m, fused, k, (h, w), rows, 4, dst, |mm, b, o| {
                        tile_row_f4(mm, b, o, tw)
                    })
                }
            }
        }
        pool.put(v);
        pool.put(m);
    });
}

/// Loads input row `r` of channel `ch` into `row` at offset 1 (a padded row: index `q` holds
/// column `q - 1`), zero where the row is outside the image or `mask` is not positive.
#[inline]
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

/// Fills `v` (16 blocks of `C x nb`) with F(2x2, 3x3)'s `Bᵀ d B` of every tile of tile rows
/// `i0..i1`, reading `x` as zero where `mask` is not positive.
fn input_f2<E: Element>(
    x: &[E],
    mask: Option<&[E]>,
    c: usize,
    (h, w): (usize, usize),
    rows: (usize, usize),
    v: &mut [E],
) {
    let tw = w.div_ceil(2);
    let nb = (rows.1 - rows.0) * tw;
    let pw = 2 * tw + 2;
    let mut s = vec![E::zero(); 4 * pw];
    for_tile_rows(x, mask, c, h, w, rows, 2, |ch, n0, p| {
        // Bᵀ along the rows of the tile, for every column at once.
        let (p0, rest) = p.split_at(pw);
        let (p1, rest) = rest.split_at(pw);
        let (p2, p3) = rest.split_at(pw);
        let (s0, rest) = s.split_at_mut(pw);
        let (s1, rest) = rest.split_at_mut(pw);
        let (s2, s3) = rest.split_at_mut(pw);
        for q in 0..pw {
            s0[q] = p0[q] - p2[q];
            s1[q] = p1[q] + p2[q];
            s2[q] = p2[q] - p1[q];
            s3[q] = p1[q] - p3[q];
        }
        // B along the columns: tile j reads padded columns 2j .. 2j+3.
        for (a, sa) in [&*s0, &*s1, &*s2, &*s3].into_iter().enumerate() {
            let base = |b: usize| ((a * 4 + b) * c + ch) * nb + n0;
            let (o0, o1, o2, o3) = (base(0), base(1), base(2), base(3));
            for j in 0..tw {
                let (q0, q1, q2, q3) = (sa[2 * j], sa[2 * j + 1], sa[2 * j + 2], sa[2 * j + 3]);
                v[o0 + j] = q0 - q2;
                v[o1 + j] = q1 + q2;
                v[o2 + j] = q2 - q1;
                v[o3 + j] = q1 - q3;
            }
        }
    });
}

/// [`input_f2`] for F(4x4, 3x3): 36 blocks, 6x6 tiles with stride 4.
fn input_f4<E: Element>(
    x: &[E],
    mask: Option<&[E]>,
    c: usize,
    (h, w): (usize, usize),
    rows: (usize, usize),
    v: &mut [E],
) {
    let tw = w.div_ceil(4);
    let nb = (rows.1 - rows.0) * tw;
    let pw = 4 * tw + 2;
    let mut s = vec![E::zero(); 6 * pw];
    for_tile_rows(x, mask, c, h, w, rows, 4, |ch, n0, p| {
        // Bᵀ along the rows of the tile, for every column at once.
        {
            let pr: [&[E]; 6] = std::array::from_fn(|a| &p[a * pw..(a + 1) * pw]);
            let mut sr = s.chunks_exact_mut(pw);
            let mut sr: [&mut [E]; 6] = std::array::from_fn(|_| sr.next().expect("6 rows"));
            for q in 0..pw {
                let r = bt6(std::array::from_fn(|a| pr[a][q]));
                for (row, v) in sr.iter_mut().zip(r) {
                    row[q] = v;
                }
            }
        }
        // B along the columns: tile j reads padded columns 4j .. 4j+5.
        for (r, sa) in s.chunks_exact(pw).enumerate() {
            let base: [usize; 6] = std::array::from_fn(|col| ((r * 6 + col) * c + ch) * nb + n0);
            for j in 0..tw {
                let out = bt6(std::array::from_fn(|b| sa[4 * j + b]));
                for (&o, val) in base.iter().zip(out) {
                    v[o + j] = val;
                }
            }
        }
    });
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

/// F(2x2, 3x3)'s `Aᵀ M A + bias` of the `tw` tiles of one tile row and output channel
/// (`mm[e]`: their products at tile position `e`) into `out`'s two output rows.
fn tile_row_f2<E: Element>(mm: &[&[E]; 16], b: E, out: &mut [E], tw: usize) {
    let (top, bottom) = out.split_at_mut(2 * tw);
    for j in 0..tw {
        // Aᵀ along the tile's rows, then A along its columns.
        let r0: [E; 4] = std::array::from_fn(|c| mm[c][j] + mm[4 + c][j] + mm[8 + c][j]);
        let r1: [E; 4] = std::array::from_fn(|c| mm[4 + c][j] - mm[8 + c][j] - mm[12 + c][j]);
        top[2 * j] = r0[0] + r0[1] + r0[2] + b;
        top[2 * j + 1] = r0[1] - r0[2] - r0[3] + b;
        bottom[2 * j] = r1[0] + r1[1] + r1[2] + b;
        bottom[2 * j + 1] = r1[1] - r1[2] - r1[3] + b;
    }
}

/// [`tile_row_f2`] for F(4x4, 3x3): four output rows.
fn tile_row_f4<E: Element>(mm: &[&[E]; 36], b: E, out: &mut [E], tw: usize) {
    for j in 0..tw {
        // Aᵀ along the tile's rows (column by column), then A along its columns.
        let cols: [[E; 4]; 6] =
            std::array::from_fn(|col| at6(std::array::from_fn(|a| mm[a * 6 + col][j])));
        for y in 0..4 {
            let r = at6(std::array::from_fn(|col| cols[col][y]));
            for (xo, val) in r.into_iter().enumerate() {
                out[y * 4 * tw + 4 * j + xo] = val + b;
            }
        }
    }
}

/// Applies ReLU to `rows` (`mt` rows of a tile row's outputs, each at least `w` long) when
/// asked, and copies them to output rows `mt·i ..` of channel `ch` that exist.
///
/// # Safety
/// `dst` must point at a `K x h x w` output whose rows `mt·i .. mt·i + mt` of channel `ch` no
/// other thread touches meanwhile.
#[allow(clippy::too_many_arguments)]
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
