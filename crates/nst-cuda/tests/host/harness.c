/* Runs the CUDA kernels of conv.cu and batched.cu on the host, one emulated thread per block,
 * and checks them against direct computations: the indexing of the banded im2col/col2im and
 * of the batched reductions, without a GPU. The Rust test `kernels_run_on_the_host` writes
 * the kernel sources (with `extern "C"` removed) to kernels.h and compiles this file with gcc.
 *
 * Every kernel loops grid-stride, so one thread per block covers every element; the block
 * reductions then reduce one value. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { unsigned int x, y, z; } dim3_t;
static dim3_t threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __shared__ static
#define __syncthreads()

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

/* Runs `call` once per block of a gx x gy grid of one-thread blocks. */
#define LAUNCH(gx, gy, call)                                              \
    do {                                                                  \
        gridDim.x = (gx); gridDim.y = (gy); gridDim.z = 1;                \
        blockDim.x = 1; blockDim.y = 1; blockDim.z = 1;                   \
        threadIdx.x = threadIdx.y = threadIdx.z = 0;                      \
        for (blockIdx.y = 0; blockIdx.y < (unsigned)(gy); ++blockIdx.y)   \
            for (blockIdx.x = 0; blockIdx.x < (unsigned)(gx); ++blockIdx.x) \
                call;                                                     \
    } while (0)

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

int main(void) {
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
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("all kernel checks passed\n");
    return 0;
}
