// RMSNorm as transformers computes it: y = w · round_T(x / sqrt(mean(x²) + eps)), in f32 inside.
// x, y, dy, dx: (rows, n) contiguous; w: (n). One block per row.

template <typename T>
__device__ void rms_norm_fwd(const T *x, const T *w, T *y, u32 n, float eps) {
    const u64 row = blockIdx.x;
    const T *xr = x + row * n;
    float ss = 0.0f;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        float v = ld(xr, i);
        ss += v * v;
    }
    const float inv = rsqrtf(block_sum(ss) / (float)n + eps);
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        float normed = round_as(xr, ld(xr, i) * inv);
        st(y, row * n + i, normed * ld(w, i));
    }
}

// dx = inv · (w·dy − x̂ · mean(w·dy·x̂)), x̂ = x·inv (the weight is frozen: no dw).
template <typename T>
__device__ void rms_norm_bwd(const T *x, const T *w, const T *dy, T *dx, u32 n, float eps) {
    const u64 row = blockIdx.x;
    const T *xr = x + row * n;
    const T *gr = dy + row * n;
    float ss = 0.0f, dot = 0.0f;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        float v = ld(xr, i);
        ss += v * v;
        dot += ld(w, i) * ld(gr, i) * v;
    }
    ss = block_sum(ss);
    dot = block_sum(dot);
    const float inv = rsqrtf(ss / (float)n + eps);
    const float c = dot * inv * inv * inv / (float)n;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        st(dx, row * n + i, inv * ld(w, i) * ld(gr, i) - c * ld(xr, i));
    }
}

extern "C" __global__ void rms_norm_fwd_f32(const float *x, const float *w, float *y, u32 n, float eps) {
    rms_norm_fwd(x, w, y, n, eps);
}
extern "C" __global__ void rms_norm_fwd_bf16(const bf16_t *x, const bf16_t *w, bf16_t *y, u32 n, float eps) {
    rms_norm_fwd(x, w, y, n, eps);
}
extern "C" __global__ void rms_norm_bwd_f32(const float *x, const float *w, const float *dy, float *dx, u32 n, float eps) {
    rms_norm_bwd(x, w, dy, dx, n, eps);
}
extern "C" __global__ void rms_norm_bwd_bf16(const bf16_t *x, const bf16_t *w, const bf16_t *dy, bf16_t *dx, u32 n, float eps) {
    rms_norm_bwd(x, w, dy, dx, n, eps);
}
