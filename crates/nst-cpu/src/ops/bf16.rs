//! bf16 matrix products with f32 accumulation, for the fast precision's Winograd products:
//! on AMX tiles (`tdpbf16ps`), on AVX512-BF16 (`vdpbf16ps`), or emulated in portable code
//! with the same operand rounding (for tests on CPUs without either).
//!
//! A product is `out (m x n, f32) = A (m x k) · B (k x n)` with both operands rounded to bf16
//! (round to nearest even) and every product of two bf16 values summed in f32. Operands are
//! packed into the layout both instruction sets read, in blocks of one AMX tile (16 rows of
//! 64 bytes, [`TILE`] values) stored whole, so that a tile load reads 1 KB in a row:
//! - [`PackedA`]: `A` padded to a multiple of 32 rows and 32 columns (the reduction) with
//!   zeros, in blocks of 16 rows by 32 columns, row-major within a block, the blocks of one
//!   16-row band in column order, band after band;
//! - [`pack_b`]: `B` as pairs of consecutive reduction rows interleaved value by value (the
//!   "VNNI" layout: a pair row holds `(b[2q][j], b[2q+1][j])` for every column `j`), padded
//!   to 32 columns, in blocks of 16 pair rows by 16 columns, the blocks of one 16-column band
//!   in reduction order, band after band.
//!
//! Which kernel runs is chosen once per process from the CPU ([`Kernel::detect`]); AMX needs
//! Linux's permission for the tile state, asked for with `arch_prctl` on first use. The
//! blocking depends only on the shapes, so the bytes do not depend on the thread count.

/// Rows and reduction columns are padded to multiples of this (two AMX tiles).
pub(crate) const PAD: usize = 32;

/// Values in one block of a packed operand: an AMX tile, 16 rows of 32 bf16.
const TILE: usize = 512;

/// Where `A`'s element (`i`, `p`) lies in a [`PackedA`] with `cols` (padded) columns.
#[inline(always)]
fn a_at(i: usize, p: usize, cols: usize) -> usize {
    ((i / 16) * (cols / 32) + p / 32) * TILE + (i % 16) * 32 + p % 32
}

/// Where `B`'s element (`p`, `j`) lies in the packed `B` of reduction length `kp` (padded):
/// pair row `p / 2`, value `p % 2` of column `j`.
#[inline(always)]
fn b_at(p: usize, j: usize, kp: usize) -> usize {
    let q = p / 2;
    ((j / 16) * (kp / 32) + q / 16) * TILE + (q % 16) * 32 + (j % 16) * 2 + p % 2
}

/// A bf16 value (its bits) from an f32, rounded to nearest even; NaN stays NaN.
#[inline(always)]
pub(crate) fn to_bf16(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// The f32 value of a bf16 (exact).
#[inline(always)]
pub(crate) fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Which bf16 kernel computes the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// AMX tiles (Intel Xeon since Sapphire Rapids).
    Amx,
    /// AVX512-BF16 dot products (Intel since Cooper Lake, AMD since Zen 4).
    Avx512,
    /// Portable code: the same rounding of the operands, f32 sums; slow.
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU (and, for AMX, the operating system) offers, if any.
    pub(crate) fn detect() -> Option<Kernel> {
        static DETECTED: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if amx::usable() {
                    return Some(Kernel::Amx);
                }
                if avx512::usable() {
                    return Some(Kernel::Avx512);
                }
            }
            None
        })
    }

    /// Whether this kernel can run here.
    pub(crate) fn usable(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => amx::usable(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::usable(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// A short name for messages and benchmark tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kernel::Amx => "amx",
            Kernel::Avx512 => "avx512-bf16",
            Kernel::Portable => "portable",
        }
    }
}

/// The left operand of bf16 products, packed: `m x k`, its rows and columns (`cols`) padded to
/// multiples of [`PAD`] with zeros, in tile blocks (see the module's documentation).
#[derive(Debug, Clone)]
pub(crate) struct PackedA {
    data: Vec<u16>,
    m: usize,
    k: usize,
    cols: usize,
}

impl PackedA {
    /// Packs `a` (`m x k`, row-major).
    pub(crate) fn new(a: &[f32], m: usize, k: usize) -> Self {
        assert_eq!(a.len(), m * k, "packed operand size");
        let (rows, cols) = (m.next_multiple_of(PAD), k.next_multiple_of(PAD));
        let mut data = vec![0u16; rows * cols];
        for i in 0..m {
            for p in 0..k {
                data[a_at(i, p, cols)] = to_bf16(a[i * k + p]);
            }
        }
        PackedA { data, m, k, cols }
    }
}

/// The length of `B`'s packed form for reduction length `k` and `n` columns.
pub(crate) fn packed_b_len(k: usize, n: usize) -> usize {
    k.next_multiple_of(PAD) * n.next_multiple_of(PAD)
}

/// Packs `b` (`k x n`, row `r` at `b[r·ld..]`) for [`gemm`] into `dst` (of
/// [`packed_b_len`]`(k, n)`): pairs of rows interleaved, padded with zeros.
pub(crate) fn pack_b(kernel: Kernel, b: &[f32], k: usize, n: usize, ld: usize, dst: &mut [u16]) {
    let np = n.next_multiple_of(PAD);
    let kp = k.next_multiple_of(PAD);
    assert!(dst.len() >= kp * np, "packed B buffer too short");
    assert!(k == 0 || b.len() >= (k - 1) * ld + n, "B too short");
    #[cfg(target_arch = "x86_64")]
    if kernel != Kernel::Portable {
        // SAFETY: the two AVX-512 kernels imply AVX512-BF16 (checked when detected), and the
        // sizes were checked above.
        unsafe { avx512::pack_b(b, k, n, ld, dst) };
        return;
    }
    let _ = kernel;
    for p in 0..kp {
        for j in 0..np {
            dst[b_at(p, j, kp)] = if p < k && j < n {
                to_bf16(b[p * ld + j])
            } else {
                0
            };
        }
    }
}

/// `out = A · B` (`m x n`, row `i` at `out[i·ldo..]`, overwritten) with `b` packed by
/// [`pack_b`] for `A`'s reduction length and `n`, on the calling thread.
///
/// # Panics
/// If the buffers are too short for the sizes, or `kernel` cannot run here.
pub(crate) fn gemm(kernel: Kernel, a: &PackedA, b: &[u16], n: usize, out: &mut [f32], ldo: usize) {
    let m = a.m;
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        ldo >= n && out.len() >= (m - 1) * ldo + n,
        "output too short"
    );
    assert!(b.len() >= packed_b_len(a.k, n), "packed B too short");
    assert!(
        kernel.usable(),
        "bf16 kernel {} cannot run here",
        kernel.name()
    );
    match kernel {
        Kernel::Portable => portable(a, b, n, out, ldo),
        // SAFETY: the kernel is usable (checked above); the sizes were checked above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Amx => unsafe { amx::gemm(a, b, n, out, ldo) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { avx512::gemm(a, b, n, out, ldo) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("checked usable"),
    }
}

/// The emulation: for each output, the pairs in order, each pair's odd product added
/// before its even one (as `vdpbf16ps` specifies).
fn portable(a: &PackedA, b: &[u16], n: usize, out: &mut [f32], ldo: usize) {
    let kp = a.cols;
    for i in 0..a.m {
        let o = &mut out[i * ldo..i * ldo + n];
        o.fill(0.0);
        for q in 0..kp / 2 {
            let a0 = from_bf16(a.data[a_at(i, 2 * q, kp)]);
            let a1 = from_bf16(a.data[a_at(i, 2 * q + 1, kp)]);
            for (j, o) in o.iter_mut().enumerate() {
                *o += a1 * from_bf16(b[b_at(2 * q + 1, j, kp)]);
                *o += a0 * from_bf16(b[b_at(2 * q, j, kp)]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! AVX512-BF16: the packing for both hardware kernels, and a register-blocked kernel.

    use super::PackedA;
    use std::arch::x86_64::*;

    /// The same 512 bits as 32 bf16 values.
    #[inline(always)]
    fn as_bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 512 bits of plain data.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// The same 512 bits as integers.
    #[inline(always)]
    fn as_int(v: __m512bh) -> __m512i {
        // SAFETY: both are 512 bits of plain data.
        unsafe { std::mem::transmute::<__m512bh, __m512i>(v) }
    }

    /// Whether the CPU has AVX512-BF16 (with the AVX-512 foundation and byte/word ops).
    pub(super) fn usable() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }

    /// [`super::pack_b`], sixteen columns of a row pair at a time.
    ///
    /// # Safety
    /// The CPU must have AVX512-BF16; sizes as checked by the caller.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_b(b: &[f32], k: usize, n: usize, ld: usize, dst: &mut [u16]) {
        let np = n.next_multiple_of(super::PAD);
        let kp = k.next_multiple_of(super::PAD);
        // Interleaves the low (row 2p) and high (row 2p + 1) halves word by word.
        let idx = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        let zero = _mm512_setzero_ps();
        for p in 0..kp / 2 {
            for j in (0..np).step_by(16) {
                let valid = n.saturating_sub(j).min(16);
                let mask: __mmask16 = if valid == 16 { !0 } else { (1u16 << valid) - 1 };
                let load = |r: usize| {
                    if r < k && valid > 0 {
                        // SAFETY: row r has n values from r·ld; the mask limits the load to
                        // columns j..j+valid < n.
                        unsafe { _mm512_maskz_loadu_ps(mask, b.as_ptr().add(r * ld + j)) }
                    } else {
                        zero
                    }
                };
                let (lo, hi) = (load(2 * p), load(2 * p + 1));
                let h = _mm512_cvtne2ps_pbh(hi, lo);
                let v = _mm512_permutexvar_epi16(idx, as_int(h));
                // SAFETY: the destination holds kp·np values; this writes the 32 of pair row
                // p, columns j..j+16, which are consecutive in their block.
                unsafe {
                    _mm512_storeu_si512(dst.as_mut_ptr().add(super::b_at(2 * p, j, kp)).cast(), v)
                };
            }
        }
    }

    /// Rows of the register block.
    const MR: usize = 8;

    /// [`super::gemm`] on AVX512-BF16: blocks of 8 rows by 32 columns in 16 registers.
    ///
    /// # Safety
    /// The CPU must have AVX512-BF16; sizes as checked by the caller.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn gemm(a: &PackedA, b: &[u16], n: usize, out: &mut [f32], ldo: usize) {
        let np = n.next_multiple_of(super::PAD);
        let (pairs, kp) = (a.cols / 2, a.cols);
        for n0 in (0..np).step_by(32) {
            for m0 in (0..a.m).step_by(MR) {
                let mut acc = [[_mm512_setzero_ps(); 2]; MR];
                for p in 0..pairs {
                    // SAFETY: columns n0..n0+32 < np of pair row p exist, 16 consecutive
                    // pairs (64 bytes) in each of two blocks; plain data.
                    let (b0, b1) = unsafe {
                        let at = |j| b.as_ptr().add(super::b_at(2 * p, j, kp)).cast();
                        (
                            as_bh(_mm512_loadu_si512(at(n0))),
                            as_bh(_mm512_loadu_si512(at(n0 + 16))),
                        )
                    };
                    for (r, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: row m0 + r < a.m rounded up to 32 (the packed rows; 8 divides 32);
                        // the pair's two values are consecutive in their block.
                        let pair = unsafe {
                            a.data
                                .as_ptr()
                                .add(super::a_at(m0 + r, 2 * p, kp))
                                .cast::<i32>()
                                .read_unaligned()
                        };
                        let av = as_bh(_mm512_set1_epi32(pair));
                        acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                        acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
                    }
                }
                for (r, acc) in acc.iter().enumerate().take(a.m - m0) {
                    let row = (m0 + r) * ldo;
                    for (h, v) in acc.iter().enumerate() {
                        let j = n0 + 16 * h;
                        let valid = n.saturating_sub(j).min(16);
                        if valid > 0 {
                            let mask: __mmask16 =
                                if valid == 16 { !0 } else { (1u16 << valid) - 1 };
                            // SAFETY: columns j..j+valid of row m0 + r lie inside `out`.
                            unsafe {
                                _mm512_mask_storeu_ps(out.as_mut_ptr().add(row + j), mask, *v)
                            };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    //! AMX: 2x2 blocks of 16x16 f32 tiles, each step two A tiles (16 rows x 32 values) and two
    //! B tiles (16 pairs x 16 columns), in inline assembly (the AMX intrinsics are not
    //! stable Rust).

    use super::PackedA;
    use std::arch::asm;

    /// Whether the CPU has AMX with bf16 and Linux lets this process use the tile data.
    pub(super) fn usable() -> bool {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| cpu_has_amx_bf16() && super::avx512::usable() && request_tile_data())
    }

    /// Whether CPUID reports AMX tiles with bf16 (leaf 7, EDX bits 24 and 22; the standard
    /// library's detection of them is not stable Rust).
    fn cpu_has_amx_bf16() -> bool {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // SAFETY: CPUID exists on every x86-64 CPU.
        #[allow(unused_unsafe)]
        let (max, edx) = unsafe { (__cpuid(0).eax, __cpuid_count(7, 0).edx) };
        max >= 7 && edx & (1 << 24) != 0 && edx & (1 << 22) != 0
    }

    /// Asks Linux for the AMX tile data state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA`):
    /// without it the first tile instruction faults.
    #[cfg(target_os = "linux")]
    fn request_tile_data() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only changes the process's permission.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn request_tile_data() -> bool {
        false
    }

    /// The tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    impl Config {
        fn new() -> Self {
            let mut c = [0u8; 64];
            c[0] = 1;
            for t in 0..8 {
                c[16 + 2 * t] = 64;
                c[48 + t] = 16;
            }
            Config(c)
        }
    }

    /// Stores C tile `T` (tmm0..tmm3) at rows `i0..`, columns `j0..` of `out`, through a
    /// scratch tile where it overhangs `m x n`.
    ///
    /// # Safety
    /// Tiles configured and computed; `out` as checked by the caller.
    #[inline(always)]
    unsafe fn store<const T: usize>(
        out: &mut [f32],
        ldo: usize,
        m: usize,
        n: usize,
        i0: usize,
        j0: usize,
    ) {
        if i0 >= m || j0 >= n {
            return;
        }
        let full = i0 + 16 <= m && j0 + 16 <= n;
        // Written whole by the tile store before it is read (not zeroed: this runs for every
        // tile).
        let mut tmp = std::mem::MaybeUninit::<[f32; 256]>::uninit();
        let (ptr, stride) = if full {
            // SAFETY: the 16x16 block at (i0, j0) lies inside `out`.
            (unsafe { out.as_mut_ptr().add(i0 * ldo + j0) }, ldo * 4)
        } else {
            (tmp.as_mut_ptr().cast::<f32>(), 64)
        };
        // SAFETY: `ptr` addresses 16 rows of 16 f32 with `stride` bytes between rows.
        unsafe {
            match T {
                0 => {
                    asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) ptr, s = in(reg) stride, options(nostack))
                }
                1 => {
                    asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) ptr, s = in(reg) stride, options(nostack))
                }
                2 => {
                    asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) ptr, s = in(reg) stride, options(nostack))
                }
                _ => {
                    asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) ptr, s = in(reg) stride, options(nostack))
                }
            }
        }
        if !full {
            // SAFETY: the tile store above wrote all 256 values.
            let tmp = unsafe { tmp.assume_init() };
            for r in 0..(m - i0).min(16) {
                let w = (n - j0).min(16);
                out[(i0 + r) * ldo + j0..][..w].copy_from_slice(&tmp[r * 16..r * 16 + w]);
            }
        }
    }

    /// [`super::gemm`] on AMX.
    ///
    /// # Safety
    /// AMX usable ([`usable`]); sizes as checked by the caller.
    pub(super) unsafe fn gemm(a: &PackedA, b: &[u16], n: usize, out: &mut [f32], ldo: usize) {
        let np = n.next_multiple_of(super::PAD);
        let cfg = Config::new();
        // Blocks are whole tiles: 16 rows of 64 bytes, one after another.
        let stride = 64usize;
        // The next 16-row band of A, and the next 16-column band of B, lie this far on.
        let band = a.cols / 32 * super::TILE;
        // SAFETY: every tile load reads one whole block of the packed operands: A's rows
        // m0..m0+32 ≤ a.m rounded up to 32 (the packed rows) and columns c0..c0+32 ≤ a.cols; B's pairs c0/2..c0/2+16 ≤
        // a.cols/2 and columns n0..n0+32 ≤ np. Stores go through `store`.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack));
            // Row panels outside, so that each 32-row panel of A (32 KB at 512 columns) is
            // read from memory once and reused from the cache across B's columns.
            // The packed rows are a multiple of 32, so both A tiles of a panel exist.
            for m0 in (0..a.m).step_by(32) {
                for n0 in (0..np).step_by(32) {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack)
                    );
                    for c0 in (0..a.cols).step_by(32) {
                        let pa = a.data.as_ptr().add(super::a_at(m0, c0, a.cols));
                        let pb = b.as_ptr().add(super::b_at(c0, n0, a.cols));
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm5, [{a1} + {sa}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) pa,
                            a1 = in(reg) pa.add(band),
                            b0 = in(reg) pb,
                            b1 = in(reg) pb.add(band),
                            sa = in(reg) stride,
                            sb = in(reg) stride,
                            options(nostack),
                        );
                    }
                    store::<0>(out, ldo, a.m, n, m0, n0);
                    store::<1>(out, ldo, a.m, n, m0, n0 + 16);
                    store::<2>(out, ldo, a.m, n, m0 + 16, n0);
                    store::<3>(out, ldo, a.m, n, m0 + 16, n0 + 16);
                }
            }
            asm!("tilerelease", options(nostack));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The product of the bf16-rounded operands in f64.
    fn exact(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let r = |v: f32| f64::from(from_bf16(to_bf16(v)));
        (0..m * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                (0..k).map(|p| r(a[i * k + p]) * r(b[p * n + j])).sum()
            })
            .collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties to the even 1.0.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: ties to the even upper.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(-2.5), 0xc020);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
    }

    /// Runs `kernel` on odd sizes (padding in every direction) and checks it against the f64
    /// product of the rounded operands: f32 sums of exact bf16 products.
    fn check(kernel: Kernel) {
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 5, 7),
            (16, 32, 16),
            (33, 70, 45),
            (64, 96, 100),
        ] {
            let a = values(m * k, (m * 31 + k) as u64);
            let b = values(k * n, (k * 17 + n) as u64);
            let pa = PackedA::new(&a, m, k);
            let ld = n + 3;
            let mut bs = vec![0f32; k * ld];
            for r in 0..k {
                bs[r * ld..r * ld + n].copy_from_slice(&b[r * n..(r + 1) * n]);
            }
            let mut pb = vec![7u16; packed_b_len(k, n)];
            pack_b(kernel, &bs, k, n, ld, &mut pb);
            let ldo = n + 5;
            let mut out = vec![f32::NAN; m * ldo];
            gemm(kernel, &pa, &pb, n, &mut out, ldo);
            let want = exact(&a, &b, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let (got, w) = (out[i * ldo + j], want[i * n + j]);
                    assert!(
                        (f64::from(got) - w).abs() <= 1e-6 * k as f64,
                        "{kernel:?} {m}x{k}x{n} at ({i}, {j}): {got} vs {w}"
                    );
                }
                // The gaps between rows are left alone.
                assert!(out[i * ldo + n..(i + 1) * ldo].iter().all(|v| v.is_nan()));
            }
        }
    }

    #[test]
    fn the_portable_kernel_sums_the_rounded_products() {
        check(Kernel::Portable);
    }

    #[test]
    #[ignore = "needs AVX512-BF16: `cargo xtask test` runs it where the CPU has it"]
    fn the_avx512_kernel_sums_the_rounded_products() {
        assert!(Kernel::Avx512.usable(), "this CPU has no AVX512-BF16");
        check(Kernel::Avx512);
    }

    #[test]
    #[ignore = "needs AMX: `cargo xtask test` runs it where the CPU has it"]
    fn the_amx_kernel_sums_the_rounded_products() {
        assert!(
            Kernel::Amx.usable(),
            "this CPU has no AMX (or Linux refused the tile data)"
        );
        check(Kernel::Amx);
    }
}
