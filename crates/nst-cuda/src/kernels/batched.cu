// Batched reductions and vector updates of the nst CUDA backend (f32 data, double accumulators):
// the dot products and linear combinations that let L-BFGS wait for the device once per phase
// instead of once per dot product, the pixel-range projection and the fused bias + ReLU.

#define MAX_DOT_ROWS 8

// Adds one value per thread of a 256-thread block, in a fixed tree, into *out.
__device__ void block_sum_into(double acc, double* out) {
    __shared__ double cache[256];
    __syncthreads();
    cache[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) cache[threadIdx.x] += cache[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) *out = cache[0];
}

// Pass 1 of rows x cols dot products. Grid (cols, parts): block (c, p) adds, for each row r,
// rows[r][i] * cols[c][i] over i = p * blockDim + t, stepping blockDim * parts, into
// partial[((row0 + r) * ncols + c) * parts + p]. Blocks of one part run side by side, so
// the rows' elements they share stay in cache. The split depends only on n.
extern "C" __global__ void dots_partial_f32(const unsigned long long* rows, int nrows, int row0,
                                            const unsigned long long* cols, int ncols,
                                            unsigned long long n, double* partial) {
    const float* b = (const float*)cols[blockIdx.x];
    unsigned int parts = gridDim.y;
    double acc[MAX_DOT_ROWS];
    for (int r = 0; r < MAX_DOT_ROWS; ++r) acc[r] = 0.0;
    for (unsigned long long i = blockIdx.y * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * parts) {
        double bv = (double)b[i];
        for (int r = 0; r < nrows; ++r) acc[r] += (double)((const float*)rows[r])[i] * bv;
    }
    for (int r = 0; r < nrows; ++r) {
        block_sum_into(acc[r],
                       &partial[((unsigned long long)(row0 + r) * ncols + blockIdx.x) * parts +
                                blockIdx.y]);
    }
}

// Pass 2: out[k] = the partials of product k added in order.
extern "C" __global__ void dots_final_f64(const double* partial, unsigned int parts,
                                          unsigned long long count, double* out) {
    for (unsigned long long k = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         k < count; k += (unsigned long long)blockDim.x * gridDim.x) {
        double acc = 0.0;
        for (unsigned int p = 0; p < parts; ++p) acc += partial[k * parts + p];
        out[k] = acc;
    }
}

// out[i] = sum_j coef[j] * vecs[j][i], accumulated in double in the order of j, rounded once.
extern "C" __global__ void combine_f32(const unsigned long long* vecs, const double* coef,
                                       int count, unsigned long long n, float* out) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        double acc = 0.0;
        for (int j = 0; j < count; ++j) acc += coef[j] * (double)((const float*)vecs[j])[i];
        out[i] = (float)acc;
    }
}

// out = x with plane p (of `plane` elements) clamped into [lo[p % channels], hi[p % channels]];
// NaN stays NaN.
extern "C" __global__ void clamp_channels_f32(const float* x, float* out, unsigned long long n,
                                              unsigned long long plane, int channels,
                                              const float* lo, const float* hi) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        int c = (int)((i / plane) % channels);
        float v = x[i];
        out[i] = v < lo[c] ? lo[c] : (v > hi[c] ? hi[c] : v);
    }
}

// y[n, o, p] = max(y[n, o, p] + b[o], 0) in place (the bias and ReLU after a convolution in one
// pass); `b` may be null for the ReLU alone.
extern "C" __global__ void bias_relu_f32(float* y, const float* b, unsigned long long planes,
                                         int cout, unsigned long long hw) {
    unsigned long long total = planes * hw;
    for (unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; t < total;
         t += (unsigned long long)blockDim.x * gridDim.x) {
        float v = y[t] + (b ? b[(t / hw) % cout] : 0.0f);
        y[t] = v > 0.0f ? v : 0.0f;
    }
}

// out[i] = the one value of buffer i, as double (the scalars of a step in one transfer).
extern "C" __global__ void gather_scalars_f32(const unsigned long long* ptrs, int k, double* out) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < k; i += blockDim.x * gridDim.x) {
        out[i] = (double)((const float*)ptrs[i])[0];
    }
}
