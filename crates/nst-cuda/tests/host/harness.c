/* Runs every CUDA kernel of the backend on the host and checks it against direct
 * computations, without a GPU. The Rust test `kernels_run_on_the_host` writes the kernel
 * sources (with `extern "C"` removed) to kernels.h and compiles this file with gcc and OpenMP.
 *
 * Blocks run one after another; the threads of a block are an OpenMP team of blockDim.x
 * threads (256, as ops.rs launches them), `__shared__` arrays are shared by the team, and
 * `__syncthreads()` is the team's barrier. So the shared-memory tree reductions run with
 * every thread, as on a GPU, and a kernel that lets threads of a block overlap wrongly reads
 * the wrong values here too (though a missing barrier shows only when the timing exposes it,
 * which on the host is not guaranteed). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { unsigned int x, y, z; } dim3_t;
static dim3_t blockIdx, blockDim, gridDim;
static _Thread_local dim3_t threadIdx;
#define __global__
#define __device__
#define __shared__ static
#define __syncthreads() _Pragma("omp barrier")

#include "kernels.h"

static int failures = 0;
#define CHECK(cond, ...)                    \
    do {                                    \
        if (!(cond)) {                      \
            fprintf(stderr, __VA_ARGS__);   \
            fprintf(stderr, "\n");          \
            failures++;                     \
        }                                   \
    } while (0)

/* The backend's block size (ops.rs: THREADS). */
#define THREADS 256

/* Runs `call` for every block of a gx x gy grid of `nt`-thread blocks, one block at a time,
 * each block's threads as one OpenMP team. */
#define LAUNCH_T(gx, gy, nt, call)                                                   \
    do {                                                                             \
        int nt__ = (nt);                                                             \
        gridDim.x = (gx); gridDim.y = (gy); gridDim.z = 1;                           \
        blockDim.x = (unsigned)nt__; blockDim.y = 1; blockDim.z = 1;                 \
        for (unsigned by__ = 0; by__ < (unsigned)(gy); ++by__)                       \
            for (unsigned bx__ = 0; bx__ < (unsigned)(gx); ++bx__) {                 \
                int team__ = 0;                                                      \
                blockIdx.x = bx__; blockIdx.y = by__; blockIdx.z = 0;                \
                _Pragma("omp parallel num_threads(nt__)")                            \
                {                                                                    \
                    threadIdx.x = (unsigned)omp_get_thread_num();                    \
                    threadIdx.y = threadIdx.z = 0;                                   \
                    if (threadIdx.x == 0) team__ = omp_get_num_threads();            \
                    call;                                                            \
                }                                                                    \
                if (team__ != nt__) {                                                \
                    fprintf(stderr, "OpenMP gave %d threads, not %d\n", team__, nt__); \
                    exit(2);                                                         \
                }                                                                    \
            }                                                                        \
    } while (0)
#define LAUNCH(gx, gy, call) LAUNCH_T(gx, gy, THREADS, call)

static unsigned int seed = 12345;
static float rnd(void) {
    seed = seed * 1664525u + 1013904223u;
    return (float)((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* The first and last+1 input rows a band of output rows reaches (as ops.rs computes them). */
static void band_rows(int oy0, int rows, int stride, int pad, int kh, int h, int* y0, int* y1) {
    int first = oy0 * stride - pad;
    int last = (oy0 + rows - 1) * stride + kh - pad;
    if (first < 0) first = 0;
    if (last < 0) last = 0;
    *y0 = first < h ? first : h;
    *y1 = last < h ? last : h;
}

static void conv_case(int c, int h, int w, int cout, int k, int stride, int pad, int band) {
    int oh = (h + 2 * pad - k) / stride + 1, ow = (w + 2 * pad - k) / stride + 1;
    int kk = c * k * k, hw = oh * ow;
    float* x = malloc(sizeof(float) * c * h * w);
    float* wt = malloc(sizeof(float) * cout * kk);
    float* dy = malloc(sizeof(float) * cout * hw);
    float* y = calloc(cout * hw, sizeof(float));
    float* dx = calloc(c * h * w, sizeof(float));
    float* col = malloc(sizeof(float) * kk * band * ow);
    for (int i = 0; i < c * h * w; ++i) x[i] = rnd();
    for (int i = 0; i < cout * kk; ++i) wt[i] = rnd();
    for (int i = 0; i < cout * hw; ++i) dy[i] = rnd();
    for (int oy0 = 0; oy0 < oh; oy0 += band) {
        int rows = band < oh - oy0 ? band : oh - oy0;
        /* Forward: the band's columns, then y[:, band] = W col. */
        LAUNCH(3, 1, im2col_f32(x, col, c, h, w, k, k, stride, pad, oh, ow, oy0, rows));
        for (int o = 0; o < cout; ++o)
            for (int p = 0; p < rows * ow; ++p) {
                double acc = 0;
                for (int q = 0; q < kk; ++q) acc += (double)wt[o * kk + q] * col[q * rows * ow + p];
                y[o * hw + oy0 * ow + p] = (float)acc;
            }
        /* Input gradient: col = W^T dy[:, band], added into dx over the rows it reaches. */
        for (int q = 0; q < kk; ++q)
            for (int p = 0; p < rows * ow; ++p) {
                double acc = 0;
                for (int o = 0; o < cout; ++o) acc += (double)wt[o * kk + q] * dy[o * hw + oy0 * ow + p];
                col[q * rows * ow + p] = (float)acc;
            }
        int y0, y1;
        band_rows(oy0, rows, stride, pad, k, h, &y0, &y1);
        if (y1 > y0) LAUNCH(2, 1, col2im_f32(col, dx, c, h, w, k, k, stride, pad, oh, ow, oy0, rows, y0, y1));
    }
    /* Direct convolution and its adjoint. */
    double worst_y = 0, worst_dx = 0;
    double* ref_dx = calloc(c * h * w, sizeof(double));
    for (int o = 0; o < cout; ++o)
        for (int oy = 0; oy < oh; ++oy)
            for (int ox = 0; ox < ow; ++ox) {
                double acc = 0;
                for (int i = 0; i < c; ++i)
                    for (int ky = 0; ky < k; ++ky)
                        for (int kx = 0; kx < k; ++kx) {
                            int iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
                            if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                            double wv = wt[((o * c + i) * k + ky) * k + kx];
                            acc += wv * x[(i * h + iy) * w + ix];
                            ref_dx[(i * h + iy) * w + ix] += wv * dy[o * hw + oy * ow + ox];
                        }
                double e = fabs(acc - y[o * hw + oy * ow + ox]);
                if (e > worst_y) worst_y = e;
            }
    for (int i = 0; i < c * h * w; ++i) {
        double e = fabs(ref_dx[i] - dx[i]);
        if (e > worst_dx) worst_dx = e;
    }
    CHECK(worst_y < 1e-4 && worst_dx < 1e-4,
          "conv c%d %dx%d cout%d k%d s%d p%d band%d: forward off by %g, input gradient by %g",
          c, h, w, cout, k, stride, pad, band, worst_y, worst_dx);
    free(x); free(wt); free(dy); free(y); free(dx); free(col); free(ref_dx);
}

static void batched_case(void) {
    enum { N = 1237, R = 11, C = 5, PARTS = 7 };
    static float v[R + C][N];
    unsigned long long rows[R], cols[C];
    for (int j = 0; j < R + C; ++j)
        for (int i = 0; i < N; ++i) v[j][i] = rnd();
    for (int r = 0; r < R; ++r) rows[r] = (unsigned long long)(size_t)v[r];
    for (int c = 0; c < C; ++c) cols[c] = (unsigned long long)(size_t)v[R + c];
    static double partial[R * C * PARTS], out[R * C];
    /* Rows in chunks of MAX_DOT_ROWS, as ops.rs launches them. */
    for (int r0 = 0; r0 < R; r0 += MAX_DOT_ROWS) {
        int chunk = R - r0 < MAX_DOT_ROWS ? R - r0 : MAX_DOT_ROWS;
        LAUNCH(C, PARTS, dots_partial_f32(rows + r0, chunk, r0, cols, C, N, partial));
    }
    LAUNCH(1, 1, dots_final_f64(partial, PARTS, R * C, out));
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) {
            double want = 0;
            for (int i = 0; i < N; ++i) want += (double)v[r][i] * v[R + c][i];
            CHECK(fabs(out[r * C + c] - want) < 1e-9, "dots[%d][%d] = %g, expected %g", r, c, out[r * C + c], want);
        }
    /* A linear combination. */
    double coef[R];
    for (int j = 0; j < R; ++j) coef[j] = 0.3 * j - 1.0;
    static float comb[N];
    LAUNCH(3, 1, combine_f32(rows, coef, R, N, comb));
    for (int i = 0; i < N; ++i) {
        double want = 0;
        for (int j = 0; j < R; ++j) want += coef[j] * v[j][i];
        CHECK(fabs(comb[i] - want) < 1e-5, "combine[%d] = %g, expected %g", i, comb[i], want);
    }
    /* The projection: planes of 60 elements, three channels. */
    static float img[2 * 3 * 60], clamped[2 * 3 * 60];
    float lo[3] = {-0.5f, 0.0f, -1.0f}, hi[3] = {0.5f, 0.25f, 1.0f};
    for (int i = 0; i < 360; ++i) img[i] = 2.0f * rnd();
    img[7] = NAN;
    LAUNCH(2, 1, clamp_channels_f32(img, clamped, 360, 60, 3, lo, hi));
    for (int i = 0; i < 360; ++i) {
        int ch = (i / 60) % 3;
        float want = img[i] < lo[ch] ? lo[ch] : (img[i] > hi[ch] ? hi[ch] : img[i]);
        CHECK(i == 7 ? isnan(clamped[i]) : clamped[i] == want, "clamp[%d] = %g, expected %g", i, clamped[i], want);
    }
    /* Bias and ReLU in place, with and without a bias: 6 planes of 10, 3 channels. */
    static float y[60], y2[60], orig[60], b[3] = {0.5f, -0.25f, 0.0f};
    for (int i = 0; i < 60; ++i) y[i] = y2[i] = orig[i] = rnd();
    LAUNCH(2, 1, bias_relu_f32(y, b, 6, 3, 10));
    LAUNCH(1, 1, bias_relu_f32(y2, 0, 6, 3, 10));
    for (int i = 0; i < 60; ++i) {
        float with = orig[i] + b[(i / 10) % 3];
        CHECK(y[i] == (with > 0 ? with : 0.0f), "bias_relu[%d] = %g", i, y[i]);
        CHECK(y2[i] == (orig[i] > 0 ? orig[i] : 0.0f), "relu[%d] = %g", i, y2[i]);
    }
    /* The scalars of one-element buffers, gathered. */
    static float one[4] = {1.5f, -2.0f, 0.25f, 1e30f};
    unsigned long long ptrs[4];
    double got[4];
    for (int i = 0; i < 4; ++i) ptrs[i] = (unsigned long long)(size_t)&one[i];
    LAUNCH(1, 1, gather_scalars_f32(ptrs, 4, got));
    for (int i = 0; i < 4; ++i) CHECK(got[i] == (double)one[i], "gather[%d] = %g", i, got[i]);
}

/* The two-pass sum and the norms, with a few blocks of 256 threads (grid-stride, so any
 * grid covers every element; ops.rs launches 256 blocks). */
static void reduce_case(void) {
    enum { N = 5003, PARTS = 5 };
    static float x[N];
    double want = 0, want_l1 = 0, want_max = 0;
    for (int i = 0; i < N; ++i) {
        x[i] = rnd();
        want += x[i];
        want_l1 += fabs(x[i]);
        if (fabs(x[i]) > want_max) want_max = fabs(x[i]);
    }
    static double partial[PARTS], sums[PARTS], maxes[PARTS];
    float total = 0;
    LAUNCH(PARTS, 1, sum_partial_f32(x, N, partial));
    LAUNCH(1, 1, sum_final_f32(partial, PARTS, &total));
    CHECK(total == (float)want || fabs(total - want) < 1e-9 * want_l1, "sum = %.9g, expected %.9g",
          total, want);
    LAUNCH(PARTS, 1, norms_partial_f32(x, N, sums, maxes));
    double l1 = 0, mx = 0;
    for (int p = 0; p < PARTS; ++p) {
        l1 += sums[p];
        if (maxes[p] > mx) mx = maxes[p];
    }
    CHECK(fabs(l1 - want_l1) < 1e-9 * want_l1 && mx == want_max, "norms (%g, %g), expected (%g, %g)",
          l1, mx, want_l1, want_max);
    /* A NaN reaches the maximum of its block. */
    x[4000] = NAN;
    LAUNCH(PARTS, 1, norms_partial_f32(x, N, sums, maxes));
    int nans = 0;
    for (int p = 0; p < PARTS; ++p) nans += isnan(maxes[p]);
    CHECK(nans == 1, "a NaN reached %d block maxima, expected 1", nans);
    x[4000] = 0.5f;
    /* Fewer elements than threads: most threads add nothing. */
    LAUNCH(PARTS, 1, sum_partial_f32(x, 3, partial));
    LAUNCH(1, 1, sum_final_f32(partial, PARTS, &total));
    CHECK(total == (float)((double)x[0] + x[1] + x[2]), "sum of 3 = %g", total);

    /* sum over the middle axis of 3 x 5 x 7. */
    enum { O = 3, M = 5, I = 7 };
    static float t[O * M * I], axis[O * I];
    for (int i = 0; i < O * M * I; ++i) t[i] = rnd();
    LAUNCH(1, 1, sum_axis_f32(t, axis, O, M, I));
    for (int o = 0; o < O; ++o)
        for (int i = 0; i < I; ++i) {
            double acc = 0;
            for (int j = 0; j < M; ++j) acc += t[(o * M + j) * I + i];
            CHECK(axis[o * I + i] == (float)acc, "sum_axis[%d][%d] = %g, expected %g", o, i,
                  axis[o * I + i], acc);
        }
    /* Broadcast 3 x 1 x 7 to 3 x 5 x 7 (stride 0 along the middle axis). */
    unsigned long long dims[3] = {O, M, I}, strides[3] = {I, 0, 1};
    static float wide[O * M * I];
    LAUNCH(2, 1, broadcast_f32(t, wide, O * M * I, 3, dims, strides));
    for (int o = 0; o < O; ++o)
        for (int j = 0; j < M; ++j)
            for (int i = 0; i < I; ++i)
                CHECK(wide[(o * M + j) * I + i] == t[o * I + i], "broadcast[%d][%d][%d]", o, j, i);
    /* narrow to rows 1..4 of the middle axis, and its adjoint. */
    static float nar[O * 3 * I], back[O * M * I];
    LAUNCH(1, 1, narrow_f32(t, nar, O, M, I, 1, 3));
    LAUNCH(2, 1, narrow_backward_f32(nar, back, O, 3, I, 1, M));
    for (int o = 0; o < O; ++o)
        for (int j = 0; j < M; ++j)
            for (int i = 0; i < I; ++i) {
                float v = t[(o * M + j) * I + i];
                if (j >= 1 && j < 4) CHECK(nar[(o * 3 + j - 1) * I + i] == v, "narrow[%d][%d][%d]", o, j, i);
                CHECK(back[(o * M + j) * I + i] == (j >= 1 && j < 4 ? v : 0.0f),
                      "narrow_backward[%d][%d][%d]", o, j, i);
            }
    /* Transpose of a 15 x 7 matrix. */
    static float tr[O * M * I];
    LAUNCH(1, 1, transpose_f32(t, tr, O * M, I));
    for (int r = 0; r < O * M; ++r)
        for (int c = 0; c < I; ++c) CHECK(tr[c * O * M + r] == t[r * I + c], "transpose[%d][%d]", r, c);
}

/* Pooling forward and backward, max (ties included: the first maximum of a window wins, in
 * both directions) and average, against direct computations. */
static void pool_case(int planes, int h, int w, int k, int s, int ties) {
    int oh = (h - k) / s + 1, ow = (w - k) / s + 1;
    int n = planes * h * w, m = planes * oh * ow;
    float* x = malloc(sizeof(float) * n);
    float* dy = malloc(sizeof(float) * m);
    float* y = malloc(sizeof(float) * m);
    float* dx = malloc(sizeof(float) * n);
    double* ref = malloc(sizeof(double) * n);
    /* With ties, values from a handful of levels, so windows hold equal maxima. */
    for (int i = 0; i < n; ++i) x[i] = ties ? (float)((int)(4 * rnd())) : rnd();
    for (int i = 0; i < m; ++i) dy[i] = rnd();
    for (int kind = 0; kind < 2; ++kind) {
        LAUNCH(2, 1, pool_forward_f32(x, y, planes, h, w, k, s, oh, ow, kind));
        LAUNCH(3, 1, pool_backward_f32(x, dy, dx, planes, h, w, k, s, oh, ow, kind));
        for (int i = 0; i < n; ++i) ref[i] = 0;
        for (int p = 0; p < planes; ++p)
            for (int oy = 0; oy < oh; ++oy)
                for (int ox = 0; ox < ow; ++ox) {
                    const float* xp = x + p * h * w;
                    int best = (oy * s) * w + ox * s;
                    double acc = 0;
                    for (int ky = 0; ky < k; ++ky)
                        for (int kx = 0; kx < k; ++kx) {
                            int i = (oy * s + ky) * w + ox * s + kx;
                            if (xp[i] > xp[best]) best = i;
                            acc += xp[i];
                        }
                    int o = (p * oh + oy) * ow + ox;
                    float want = kind == 0 ? xp[best] : (float)(acc / (k * k));
                    CHECK(fabs(y[o] - want) <= 1e-6, "pool %s p%d h%d w%d k%d s%d: y[%d] = %g, expected %g",
                          kind ? "avg" : "max", planes, h, w, k, s, o, y[o], want);
                    if (kind == 0) {
                        ref[p * h * w + best] += dy[o];
                    } else {
                        for (int ky = 0; ky < k; ++ky)
                            for (int kx = 0; kx < k; ++kx)
                                ref[p * h * w + (oy * s + ky) * w + ox * s + kx] += dy[o] / (k * k);
                    }
                }
        double worst = 0;
        for (int i = 0; i < n; ++i)
            if (fabs(ref[i] - dx[i]) > worst) worst = fabs(ref[i] - dx[i]);
        CHECK(worst < 1e-5, "pool %s backward p%d h%d w%d k%d s%d ties%d: off by %g",
              kind ? "avg" : "max", planes, h, w, k, s, ties, worst);
    }
    free(x); free(dy); free(y); free(dx); free(ref);
}

/* The elementwise kernels against the same arithmetic on the host. */
static void elementwise_case(void) {
    enum { N = 1000 };
    static float a[N], b[N], out[N];
    for (int i = 0; i < N; ++i) {
        a[i] = 3 * rnd();
        b[i] = rnd();
        if (i % 7 == 0) b[i] += 2.0f; /* keep divisors away from zero */
    }
    LAUNCH(2, 1, fill_f32(out, N, 2.5f));
    for (int i = 0; i < N; ++i) CHECK(out[i] == 2.5f, "fill[%d] = %g", i, out[i]);
    for (int op = 0; op < 5; ++op) {
        LAUNCH(2, 1, unary_f32(a, out, N, op));
        for (int i = 0; i < N; ++i) {
            float v = a[i];
            float want = op == 0 ? (v > 0 ? v : 0) : op == 1 ? v * v : op == 2 ? expf(v) : op == 3 ? -v : sqrtf(v);
            CHECK(out[i] == want || (isnan(want) && isnan(out[i])), "unary %d [%d] = %g, expected %g", op,
                  i, out[i], want);
        }
    }
    LAUNCH(2, 1, affine_f32(a, out, N, -1.5f, 0.25f));
    for (int i = 0; i < N; ++i) CHECK(out[i] == fmaf(a[i], -1.5f, 0.25f), "affine[%d]", i);
    for (int op = 0; op < 5; ++op) {
        LAUNCH(3, 1, binary_f32(a, b, out, N, op));
        for (int i = 0; i < N; ++i) {
            float x = a[i], y = b[i];
            float want = op == 0 ? x + y : op == 1 ? x - y : op == 2 ? x * y : op == 3 ? (x > 0 ? y : 0) : x / y;
            CHECK(out[i] == want, "binary %d [%d] = %g, expected %g", op, i, out[i], want);
        }
    }
    LAUNCH(2, 1, axpy_f32(a, b, out, N, 0.3));
    for (int i = 0; i < N; ++i) CHECK(out[i] == (float)(0.3 * a[i] + (double)b[i]), "axpy[%d]", i);
}

int main(void) {
    omp_set_dynamic(0);
    /* (channels, h, w, cout, kernel, stride, padding, band rows) */
    int cases[][8] = {
        {2, 7, 5, 3, 3, 1, 1, 1}, {2, 7, 5, 3, 3, 1, 1, 2}, {2, 7, 5, 3, 3, 1, 1, 7},
        {3, 9, 8, 2, 3, 2, 1, 1}, {3, 9, 8, 2, 3, 2, 1, 3}, {3, 9, 8, 2, 3, 2, 0, 2},
        {4, 6, 6, 5, 1, 1, 0, 4}, {1, 11, 4, 2, 3, 1, 1, 5},
    };
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        int* k = cases[i];
        conv_case(k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]);
    }
    batched_case();
    reduce_case();
    /* (planes, h, w, kernel, stride, ties) */
    int pools[][6] = {
        {2, 8, 6, 2, 2, 0}, {2, 8, 6, 2, 2, 1}, {3, 7, 9, 3, 2, 1}, {1, 6, 6, 3, 1, 1}, {2, 5, 7, 2, 3, 0},
    };
    for (unsigned i = 0; i < sizeof pools / sizeof pools[0]; ++i) {
        int* p = pools[i];
        pool_case(p[0], p[1], p[2], p[3], p[4], p[5]);
    }
    elementwise_case();
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("all kernel checks passed\n");
    return 0;
}
