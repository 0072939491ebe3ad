// Elementwise kernels of the nst CUDA backend (f32). One thread per element, grid-stride.

extern "C" __global__ void fill_f32(float* out, unsigned long long n, float v) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        out[i] = v;
    }
}

// op: 0 relu, 1 square, 2 exp, 3 neg, 4 sqrt
extern "C" __global__ void unary_f32(const float* x, float* out, unsigned long long n, int op) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        float v = x[i];
        float r;
        switch (op) {
            case 0: r = v > 0.0f ? v : 0.0f; break;
            case 1: r = v * v; break;
            case 2: r = expf(v); break;
            case 3: r = -v; break;
            default: r = sqrtf(v); break;
        }
        out[i] = r;
    }
}

extern "C" __global__ void affine_f32(const float* x, float* out, unsigned long long n, float mul,
                                      float add) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        out[i] = fmaf(x[i], mul, add);
    }
}

// op: 0 add, 1 sub, 2 mul, 3 relu_grad (b where a > 0), 4 div
extern "C" __global__ void binary_f32(const float* a, const float* b, float* out,
                                      unsigned long long n, int op) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        float x = a[i], y = b[i];
        float r;
        switch (op) {
            case 0: r = x + y; break;
            case 1: r = x - y; break;
            case 2: r = x * y; break;
            case 3: r = x > 0.0f ? y : 0.0f; break;
            default: r = x / y; break;
        }
        out[i] = r;
    }
}

// out = a * x + y, with the product and sum done in double and rounded once.
extern "C" __global__ void axpy_f32(const float* x, const float* y, float* out,
                                    unsigned long long n, double a) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        out[i] = (float)(a * (double)x[i] + (double)y[i]);
    }
}
