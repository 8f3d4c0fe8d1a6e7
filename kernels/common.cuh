// Shared by every kernels/*.cu: crates/kernels prepends this text before NVRTC compiles a file.
// bf16 travels as raw 16-bit storage converted by hand, so no CUDA header is needed at run time
// (the GPU machines carry NVRTC but not necessarily the toolkit's include directory).

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short bf16_t;
typedef unsigned char u8;

// No headers: -inf from its bit pattern.
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf16_to_f32(bf16_t v) {
    return __uint_as_float(((u32)v) << 16);
}

// Round to nearest even, as candle's (and PyTorch's) f32 -> bf16 cast; NaN stays NaN.
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

__device__ __forceinline__ float ld(const float *p, u64 i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16_t *p, u64 i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ void st(float *p, u64 i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16_t *p, u64 i, float v) { p[i] = f32_to_bf16(v); }

// The value a T would hold: a no-op for f32, a rounding for bf16.
__device__ __forceinline__ float round_as(const float *, float v) { return v; }
__device__ __forceinline__ float round_as(const bf16_t *, float v) { return bf16_to_f32(f32_to_bf16(v)); }

// Block-wide sum / max for blockDim.x a multiple of 32 (at most 1024); every thread gets the result.
__device__ float block_sum(float v) {
    __shared__ float part[32];
    __shared__ float total;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) w += __shfl_xor_sync(0xffffffffu, w, o);
        if (lane == 0) total = w;
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}

__device__ float block_max(float v) {
    __shared__ float part[32];
    __shared__ float total;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < (int)(blockDim.x >> 5) ? part[lane] : NEG_INF;
        for (int o = 16; o > 0; o >>= 1) w = fmaxf(w, __shfl_xor_sync(0xffffffffu, w, o));
        if (lane == 0) total = w;
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}
