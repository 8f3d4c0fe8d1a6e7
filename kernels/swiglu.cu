// SwiGLU's gate: y = silu(g)·u, silu(g) = g·σ(g). Elementwise over n values.
// Backward: dg = dy·u·σ(g)·(1 + g·(1 − σ(g))), du = dy·silu(g).

template <typename T>
__device__ void swiglu_fwd(const T *g, const T *u, T *y, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float a = ld(g, i);
    const float s = 1.0f / (1.0f + expf(-a));
    st(y, i, a * s * ld(u, i));
}

template <typename T>
__device__ void swiglu_bwd(const T *g, const T *u, const T *dy, T *dg, T *du, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float a = ld(g, i);
    const float s = 1.0f / (1.0f + expf(-a));
    const float d = ld(dy, i);
    st(dg, i, d * ld(u, i) * s * (1.0f + a * (1.0f - s)));
    st(du, i, d * a * s);
}

extern "C" __global__ void swiglu_fwd_f32(const float *g, const float *u, float *y, u64 n) { swiglu_fwd(g, u, y, n); }
extern "C" __global__ void swiglu_fwd_bf16(const bf16_t *g, const bf16_t *u, bf16_t *y, u64 n) { swiglu_fwd(g, u, y, n); }
extern "C" __global__ void swiglu_bwd_f32(const float *g, const float *u, const float *dy, float *dg, float *du, u64 n) {
    swiglu_bwd(g, u, dy, dg, du, n);
}
extern "C" __global__ void swiglu_bwd_bf16(const bf16_t *g, const bf16_t *u, const bf16_t *dy, bf16_t *dg, bf16_t *du, u64 n) {
    swiglu_bwd(g, u, dy, dg, du, n);
}
