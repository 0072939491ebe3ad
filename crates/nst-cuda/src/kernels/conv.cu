// Convolution helpers of the nst CUDA backend (f32): im2col for the GEMM lowering, a gathering
// col2im for the input gradient (no atomics, so deterministic), and the bias.

// The im2col lowering one band of output rows at a time (oy0 .. oy0 + rows), so the column
// buffer stays bounded: col[(c*kh + ky)*kw + kx, (oy - oy0)*ow + ox] = x[c, oy*s + ky - p,
// ox*s + kx - p] (0 outside).
extern "C" __global__ void im2col_f32(const float* x, float* col, int c, int h, int w, int kh,
                                      int kw, int stride, int pad, int oh, int ow, int oy0,
                                      int rows) {
    unsigned long long cols = (unsigned long long)rows * ow;
    unsigned long long total = (unsigned long long)c * kh * kw * cols;
    for (unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; t < total;
         t += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long pos = t % cols;
        unsigned long long row = t / cols;
        int kx = (int)(row % kw);
        int ky = (int)((row / kw) % kh);
        int ch = (int)(row / ((unsigned long long)kw * kh));
        int oy = oy0 + (int)(pos / ow), ox = (int)(pos % ow);
        int iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
        col[t] = (iy >= 0 && iy < h && ix >= 0 && ix < w)
                     ? x[((unsigned long long)ch * h + iy) * w + ix]
                     : 0.0f;
    }
}

// The adjoint for one band: dx[c, y, x] += the sum over kernel taps (ky, kx) whose output
// position lies in the band of col[(c*kh + ky)*kw + kx, (oy - oy0)*ow + ox], for the input
// rows y0 .. y1 the band reaches. A gather (no atomics); bands are added in order, so the
// result is deterministic.
extern "C" __global__ void col2im_f32(const float* col, float* dx, int c, int h, int w, int kh,
                                      int kw, int stride, int pad, int oh, int ow, int oy0,
                                      int rows, int y0, int y1) {
    unsigned long long span = (unsigned long long)(y1 - y0) * w;
    unsigned long long total = (unsigned long long)c * span;
    unsigned long long cols = (unsigned long long)rows * ow;
    for (unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; t < total;
         t += (unsigned long long)blockDim.x * gridDim.x) {
        int xx = (int)(t % w);
        int yy = y0 + (int)((t % span) / w);
        int ch = (int)(t / span);
        float acc = 0.0f;
        for (int ky = 0; ky < kh; ++ky) {
            int ny = yy + pad - ky;
            if (ny < 0 || ny % stride != 0) continue;
            int oy = ny / stride;
            if (oy >= oh || oy < oy0 || oy >= oy0 + rows) continue;
            for (int kx = 0; kx < kw; ++kx) {
                int nx = xx + pad - kx;
                if (nx < 0 || nx % stride != 0) continue;
                int ox = nx / stride;
                if (ox >= ow) continue;
                unsigned long long row = ((unsigned long long)ch * kh + ky) * kw + kx;
                acc += col[row * cols + (unsigned long long)(oy - oy0) * ow + ox];
            }
        }
        dx[((unsigned long long)ch * h + yy) * w + xx] += acc;
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
