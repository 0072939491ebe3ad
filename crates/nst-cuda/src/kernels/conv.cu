// Convolution helpers of the nst CUDA backend (f32): im2col for the GEMM lowering, a gathering
// col2im for the input gradient (no atomics, so deterministic), and the bias.

// col[(c*kh + ky)*kw + kx, oy*ow + ox] = x[c, oy*s + ky - p, ox*s + kx - p] (0 outside).
extern "C" __global__ void im2col_f32(const float* x, float* col, int c, int h, int w, int kh,
                                      int kw, int stride, int pad, int oh, int ow) {
    unsigned long long cols = (unsigned long long)oh * ow;
    unsigned long long total = (unsigned long long)c * kh * kw * cols;
    for (unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; t < total;
         t += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long pos = t % cols;
        unsigned long long row = t / cols;
        int kx = (int)(row % kw);
        int ky = (int)((row / kw) % kh);
        int ch = (int)(row / ((unsigned long long)kw * kh));
        int oy = (int)(pos / ow), ox = (int)(pos % ow);
        int iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
        col[t] = (iy >= 0 && iy < h && ix >= 0 && ix < w)
                     ? x[((unsigned long long)ch * h + iy) * w + ix]
                     : 0.0f;
    }
}

// dx[c, y, x] = sum over kernel taps (ky, kx) whose output position exists of
// col[(c*kh + ky)*kw + kx, oy*ow + ox].
extern "C" __global__ void col2im_f32(const float* col, float* dx, int c, int h, int w, int kh,
                                      int kw, int stride, int pad, int oh, int ow) {
    unsigned long long total = (unsigned long long)c * h * w;
    unsigned long long cols = (unsigned long long)oh * ow;
    for (unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; t < total;
         t += (unsigned long long)blockDim.x * gridDim.x) {
        int xx = (int)(t % w);
        int yy = (int)((t / w) % h);
        int ch = (int)(t / ((unsigned long long)w * h));
        float acc = 0.0f;
        for (int ky = 0; ky < kh; ++ky) {
            int ny = yy + pad - ky;
            if (ny < 0 || ny % stride != 0) continue;
            int oy = ny / stride;
            if (oy >= oh) continue;
            for (int kx = 0; kx < kw; ++kx) {
                int nx = xx + pad - kx;
                if (nx < 0 || nx % stride != 0) continue;
                int ox = nx / stride;
                if (ox >= ow) continue;
                unsigned long long row = ((unsigned long long)ch * kh + ky) * kw + kx;
                acc += col[row * cols + (unsigned long long)oy * ow + ox];
            }
        }
        dx[t] = acc;
    }
}

// y[n, o, p] += b[o] for an output of `planes` = N*C_out planes of `hw` elements.
extern "C" __global__ void add_bias_f32(float* y, const float* b, unsigned long long planes,
                                        int cout, unsigned long long hw) {
    unsigned long long total = planes * hw;
    for (unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; t < total;
         t += (unsigned long long)blockDim.x * gridDim.x) {
        y[t] += b[(t / hw) % cout];
    }
}
