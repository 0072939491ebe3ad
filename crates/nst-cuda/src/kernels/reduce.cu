// Reductions and data movement of the nst CUDA backend (f32). Sums accumulate in double with a
// fixed split (independent of timing), so results are deterministic.

// Adds one value per thread of a 256-thread block, in a fixed tree, into out[blockIdx.x].
__device__ void block_sum_to(double acc, double* out) {
    __shared__ double cache[256];
    cache[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) cache[threadIdx.x] += cache[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = cache[0];
}

// Pass 1: block b sums elements b, b + gridDim.x*blockDim.x, ... into partial[b].
extern "C" __global__ void sum_partial_f32(const float* x, unsigned long long n, double* partial) {
    double acc = 0.0;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        acc += (double)x[i];
    }
    block_sum_to(acc, partial);
}

// Pass 2: one thread adds the partials in order.
extern "C" __global__ void sum_final_f32(const double* partial, unsigned int parts, float* out) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        double acc = 0.0;
        for (unsigned int i = 0; i < parts; ++i) acc += partial[i];
        out[0] = (float)acc;
    }
}

// NaN-propagating maximum (fmax would drop a NaN).
__device__ double max_nan(double m, double a) {
    return (isnan(m) || isnan(a)) ? (m + a) : fmax(m, a);
}

// Block b writes the sum and the maximum of |x[i]| over its grid-stride elements into
// sums[b] and maxes[b].
extern "C" __global__ void norms_partial_f32(const float* x, unsigned long long n, double* sums,
                                             double* maxes) {
    __shared__ double cs[256];
    __shared__ double cm[256];
    double s = 0.0, m = 0.0;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        double a = fabs((double)x[i]);
        s += a;
        m = max_nan(m, a);
    }
    cs[threadIdx.x] = s;
    cm[threadIdx.x] = m;
    __syncthreads();
    for (unsigned int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) {
            cs[threadIdx.x] += cs[threadIdx.x + k];
            cm[threadIdx.x] = max_nan(cm[threadIdx.x], cm[threadIdx.x + k]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        sums[blockIdx.x] = cs[0];
        maxes[blockIdx.x] = cm[0];
    }
}

// out[o, i] = sum_j x[o, j, i]
extern "C" __global__ void sum_axis_f32(const float* x, float* out, unsigned long long outer,
                                        unsigned long long n, unsigned long long inner) {
    unsigned long long total = outer * inner;
    for (unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; t < total;
         t += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long o = t / inner, i = t % inner;
        double acc = 0.0;
        for (unsigned long long j = 0; j < n; ++j) acc += (double)x[(o * n + j) * inner + i];
        out[t] = (float)acc;
    }
}

// Broadcast with up to 8 dimensions: dims[d] are the output sizes, strides[d] the input
// strides (0 along broadcast dimensions).
extern "C" __global__ void broadcast_f32(const float* x, float* out, unsigned long long n, int rank,
                                         const unsigned long long* dims,
                                         const unsigned long long* strides) {
    for (unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; t < n;
         t += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long rem = t, src = 0;
        for (int d = rank - 1; d >= 0; --d) {
            src += (rem % dims[d]) * strides[d];
            rem /= dims[d];
        }
        out[t] = x[src];
    }
}

// out[o, j, i] = x[o, start + j, i] for j < len.
extern "C" __global__ void narrow_f32(const float* x, float* out, unsigned long long outer,
                                      unsigned long long n, unsigned long long inner,
                                      unsigned long long start, unsigned long long len) {
    unsigned long long total = outer * len * inner;
    for (unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; t < total;
         t += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long i = t % inner, j = (t / inner) % len, o = t / (inner * len);
        out[t] = x[(o * n + start + j) * inner + i];
    }
}

// The adjoint of narrow: out[o, k, i] = dy[o, k - start, i] inside the window, else 0.
extern "C" __global__ void narrow_backward_f32(const float* dy, float* out, unsigned long long outer,
                                               unsigned long long len, unsigned long long inner,
                                               unsigned long long start, unsigned long long full) {
    unsigned long long total = outer * full * inner;
    for (unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; t < total;
         t += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long i = t % inner, k = (t / inner) % full, o = t / (inner * full);
        out[t] = (k >= start && k < start + len) ? dy[(o * len + (k - start)) * inner + i] : 0.0f;
    }
}

// out[c, r] = x[r, c] for a rows x cols matrix.
extern "C" __global__ void transpose_f32(const float* x, float* out, unsigned long long rows,
                                         unsigned long long cols) {
    unsigned long long total = rows * cols;
    for (unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; t < total;
         t += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long c = t / rows, r = t % rows;
        out[t] = x[r * cols + c];
    }
}
