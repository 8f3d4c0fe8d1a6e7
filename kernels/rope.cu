// RoPE in transformers' (non-interleaved) layout: y = x·cos + rotate_half(x)·sin with
// rotate_half([x1, x2]) = [−x2, x1], on x, y: (B, T, H, D) contiguous (the layout the model keeps
// q and k in: no transpose), with cos, sin: (B·T, D/2) f32 from runner_model::ops::rope's table.
// The backward is the rotation by −θ (flag `inverse`). One thread per element.

template <typename T>
__device__ void rope(const T *x, const float *cos, const float *sin, T *y, u32 h, u32 d, u64 n,
                     int inverse) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const u32 half = d / 2;
    const u32 k = (u32)(i % d);
    const u64 pos = i / ((u64)d * h);
    const u32 j = k < half ? k : k - half;
    const float c = cos[pos * half + j];
    const float s = inverse ? -sin[pos * half + j] : sin[pos * half + j];
    const u64 base = i - k;
    float v;
    if (k < half) {
        v = ld(x, i) * c - ld(x, base + k + half) * s;
    } else {
        v = ld(x, i) * c + ld(x, base + k - half) * s;
    }
    st(y, i, v);
}

extern "C" __global__ void rope_f32(const float *x, const float *cos, const float *sin, float *y, u32 h, u32 d, u64 n, int inverse) {
    rope(x, cos, sin, y, h, d, n, inverse);
}
extern "C" __global__ void rope_bf16(const bf16_t *x, const float *cos, const float *sin, bf16_t *y, u32 h, u32 d, u64 n, int inverse) {
    rope(x, cos, sin, y, h, d, n, inverse);
}
