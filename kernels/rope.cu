// RoPE in transformers' (non-interleaved) layout: y = x·cos + rotate_half(x)·sin with
// rotate_half([x1, x2]) = [−x2, x1]. x, y: (B, H, T, D) contiguous; cos, sin: (B, T, D).
// The backward is the transpose: dx1 = g1·c1 + g2·s2, dx2 = g2·c2 − g1·s1 (flag `backward`).

template <typename T>
__device__ void rope(const T *x, const T *cos, const T *sin, T *y, u32 h, u32 t, u32 d, u64 n, int backward) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const u32 half = d / 2;
    const u32 k = (u32)(i % d);
    const u64 tt = (i / d) % t;
    const u64 b = i / ((u64)d * t * h);
    const u64 cs = (b * t + tt) * d;
    const u64 base = i - k;
    float v;
    if (!backward) {
        float rot = k < half ? -ld(x, base + k + half) : ld(x, base + k - half);
        v = ld(x, i) * ld(cos, cs + k) + rot * ld(sin, cs + k);
    } else {
        float rot = k < half ? ld(x, base + k + half) * ld(sin, cs + k + half)
                             : -ld(x, base + k - half) * ld(sin, cs + k - half);
        v = ld(x, i) * ld(cos, cs + k) + rot;
    }
    st(y, i, v);
}

extern "C" __global__ void rope_f32(const float *x, const float *cos, const float *sin, float *y, u32 h, u32 t, u32 d, u64 n, int backward) {
    rope(x, cos, sin, y, h, t, d, n, backward);
}
extern "C" __global__ void rope_bf16(const bf16_t *x, const bf16_t *cos, const bf16_t *sin, bf16_t *y, u32 h, u32 t, u32 d, u64 n, int backward) {
    rope(x, cos, sin, y, h, t, d, n, backward);
}
