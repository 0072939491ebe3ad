// Pooling kernels of the nst CUDA backend (f32): forward, and a gathering backward (each input
// element sums the windows it belongs to), so no atomics are needed.

__device__ int window_argmax(const float* xp, int w, int oy, int ox, int k, int s) {
    int best = (oy * s) * w + ox * s;
    for (int ky = 0; ky < k; ++ky) {
        for (int kx = 0; kx < k; ++kx) {
            int i = (oy * s + ky) * w + ox * s + kx;
            if (xp[i] > xp[best]) best = i;
        }
    }
    return best;
}

// kind: 0 max, 1 avg.
extern "C" __global__ void pool_forward_f32(const float* x, float* y, unsigned long long planes,
                                            int h, int w, int k, int s, int oh, int ow, int kind) {
    unsigned long long total = planes * oh * ow;
    for (unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; t < total;
         t += (unsigned long long)blockDim.x * gridDim.x) {
        int ox = (int)(t % ow);
        int oy = (int)((t / ow) % oh);
        unsigned long long pl = t / ((unsigned long long)ow * oh);
        const float* xp = x + pl * h * w;
        if (kind == 0) {
            y[t] = xp[window_argmax(xp, w, oy, ox, k, s)];
        } else {
            float acc = 0.0f;
            for (int ky = 0; ky < k; ++ky)
                for (int kx = 0; kx < k; ++kx) acc += xp[(oy * s + ky) * w + ox * s + kx];
            y[t] = acc / (float)(k * k);
        }
    }
}

extern "C" __global__ void pool_backward_f32(const float* x, const float* dy, float* dx,
                                             unsigned long long planes, int h, int w, int k, int s,
                                             int oh, int ow, int kind) {
    unsigned long long total = planes * h * w;
    for (unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; t < total;
         t += (unsigned long long)blockDim.x * gridDim.x) {
        int xx = (int)(t % w);
        int yy = (int)((t / w) % h);
        unsigned long long pl = t / ((unsigned long long)w * h);
        const float* xp = x + pl * h * w;
        const float* gp = dy + pl * oh * ow;
        int me = yy * w + xx;
        float acc = 0.0f;
        // Windows (oy, ox) with oy*s <= yy < oy*s + k.
        int oy0 = yy - k + 1 > 0 ? (yy - k + 1 + s - 1) / s : 0;
        int ox0 = xx - k + 1 > 0 ? (xx - k + 1 + s - 1) / s : 0;
        for (int oy = oy0; oy < oh && oy * s <= yy; ++oy) {
            for (int ox = ox0; ox < ow && ox * s <= xx; ++ox) {
                float g = gp[oy * ow + ox];
                if (kind == 0) {
                    if (window_argmax(xp, w, oy, ox, k, s) == me) acc += g;
                } else {
                    acc += g / (float)(k * k);
                }
            }
        }
        dx[t] = acc;
    }
}
