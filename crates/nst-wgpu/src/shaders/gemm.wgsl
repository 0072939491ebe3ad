// One tiled matrix product, C (M x N) = A (M x K) . B (K x N), whose operands are read through
// `load_a` and `load_b` and whose result is written through `store`: a plain matrix product
// with transposes, and the three convolutions as implicit GEMMs (the im2col matrix is never
// materialised: its entries are gathered from the image while a tile is loaded).
//
// p(0) mode: 0 matmul, 1 convolution, 2 its input gradient, 3 its weight gradient.
// p(1) M, p(2) N, p(3) K.
// matmul: p(4) A stored transposed (K x M), p(5) B stored transposed (N x K); a = A, b = B.
// convolutions: p(4) batch, p(5) c_in, p(6) c_out, p(7) in_h, p(8) in_w, p(9) kh, p(10) kw,
// p(11) stride, p(12) padding, p(13) out_h, p(14) out_w, p(15) flags (1: add the bias c,
// 2: ReLU, 4: the input gradient only where the forward output c > 0).
//   mode 1: a = x, b = w, c = bias.   M = c_out, N = batch*out_h*out_w, K = c_in*kh*kw.
//   mode 2: a = dy, b = w, c = y.     M = c_in,  N = batch*in_h*in_w,   K = c_out*kh*kw.
//   mode 3: a = dy, b = x.            M = c_out, N = c_in*kh*kw,        K = batch*out_h*out_w.
//
// A workgroup of 16 x 16 invocations computes a 64 x 64 tile of C, each invocation 4 x 4
// entries 16 apart, stepping through K 16 at a time through workgroup memory. Every entry's
// sum runs over K in the same order whatever the sizes: the same inputs give the same bits.

var<workgroup> tile_a: array<f32, 1024>; // [16 k][64 m]
var<workgroup> tile_b: array<f32, 1024>; // [16 k][64 n]

// The input pixel (iy, ix) of output (oy, ox) and kernel tap (ky, kx), or -1 outside.
fn tap(oy: u32, ox: u32, ky: u32, kx: u32) -> i32 {
    let iy = i32(oy * p(11u) + ky) - i32(p(12u));
    let ix = i32(ox * p(11u) + kx) - i32(p(12u));
    if (iy < 0 || ix < 0 || iy >= i32(p(7u)) || ix >= i32(p(8u))) {
        return -1;
    }
    return iy * i32(p(8u)) + ix;
}

fn load_a(m: u32, k: u32) -> f32 {
    switch p(0u) {
        case 0u: {
            if (p(4u) != 0u) { return a[k * p(1u) + m]; }
            return a[m * p(3u) + k];
        }
        case 1u: {
            return b[m * p(3u) + k];
        }
        case 2u: {
            // m = ci, k = (co, ky, kx): w[co][ci][ky][kx].
            let khw = p(9u) * p(10u);
            return b[((k / khw) * p(5u) + m) * khw + k % khw];
        }
        default: {
            // m = co, k = (n, oy, ox): dy[n][co][oy][ox].
            let ohw = p(13u) * p(14u);
            return a[((k / ohw) * p(6u) + m) * ohw + k % ohw];
        }
    }
}

fn load_b(k: u32, n: u32) -> f32 {
    switch p(0u) {
        case 0u: {
            if (p(5u) != 0u) { return b[n * p(3u) + k]; }
            return b[k * p(2u) + n];
        }
        case 1u: {
            // k = (ci, ky, kx), n = (batch, oy, ox): x[batch][ci][iy][ix].
            let khw = p(9u) * p(10u);
            let ohw = p(13u) * p(14u);
            let r = k % khw;
            let pix = n % ohw;
            let t = tap(pix / p(14u), pix % p(14u), r / p(10u), r % p(10u));
            if (t < 0) { return 0.0; }
            return a[((n / ohw) * p(5u) + k / khw) * p(7u) * p(8u) + u32(t)];
        }
        case 2u: {
            // k = (co, ky, kx), n = (batch, iy, ix): dy[batch][co][oy][ox] where
            // oy * stride + ky - padding = iy.
            let khw = p(9u) * p(10u);
            let hw = p(7u) * p(8u);
            let r = k % khw;
            let pix = n % hw;
            let s = i32(p(11u));
            let ty = i32(pix / p(8u)) + i32(p(12u)) - i32(r / p(10u));
            let tx = i32(pix % p(8u)) + i32(p(12u)) - i32(r % p(10u));
            if (ty < 0 || tx < 0 || ty % s != 0 || tx % s != 0) { return 0.0; }
            let oy = u32(ty / s);
            let ox = u32(tx / s);
            if (oy >= p(13u) || ox >= p(14u)) { return 0.0; }
            let idx = (((n / hw) * p(6u) + k / khw) * p(13u) + oy) * p(14u) + ox;
            let g = a[idx];
            if ((p(15u) & 4u) != 0u) { return select(0.0, g, c[idx] > 0.0); }
            return g;
        }
        default: {
            // k = (batch, oy, ox), n = (ci, ky, kx): x[batch][ci][iy][ix].
            let khw = p(9u) * p(10u);
            let ohw = p(13u) * p(14u);
            let r = n % khw;
            let pix = k % ohw;
            let t = tap(pix / p(14u), pix % p(14u), r / p(10u), r % p(10u));
            if (t < 0) { return 0.0; }
            return b[((k / ohw) * p(5u) + n / khw) * p(7u) * p(8u) + u32(t)];
        }
    }
}

fn store(m: u32, n: u32, v: f32) {
    switch p(0u) {
        case 1u: {
            let ohw = p(13u) * p(14u);
            var y = v;
            if ((p(15u) & 1u) != 0u) { y += c[m]; }
            if ((p(15u) & 2u) != 0u) { y = select(0.0, y, y > 0.0); }
            out[((n / ohw) * p(6u) + m) * ohw + n % ohw] = y;
        }
        case 2u: {
            let hw = p(7u) * p(8u);
            out[((n / hw) * p(5u) + m) * hw + n % hw] = v;
        }
        default: {
            out[m * p(2u) + n] = v;
        }
    }
}

@compute @workgroup_size(16, 16)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) l: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let big_m = p(1u);
    let big_n = p(2u);
    let big_k = p(3u);
    let m0 = wg.y * 64u;
    let n0 = (wg.z * nwg.x + wg.x) * 64u;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < big_k; k0 += 16u) {
        for (var r = 0u; r < 4u; r++) {
            let e = lid + 256u * r;
            let ka = k0 + e % 16u;
            let m = m0 + e / 16u;
            var va = 0.0;
            if (m < big_m && ka < big_k) { va = load_a(m, ka); }
            tile_a[(e % 16u) * 64u + e / 16u] = va;
            let kb = k0 + e / 64u;
            let n = n0 + e % 64u;
            var vb = 0.0;
            if (n < big_n && kb < big_k) { vb = load_b(kb, n); }
            tile_b[e] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = tile_a[kk * 64u + l.y + 16u * i];
                bv[i] = tile_b[kk * 64u + l.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] += av[i] * bv[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            let m = m0 + l.y + 16u * i;
            let n = n0 + l.x + 16u * j;
            if (m < big_m && n < big_n) { store(m, n, acc[i * 4u + j]); }
        }
    }
}
