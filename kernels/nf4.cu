// NF4 dequantization in bitsandbytes' layout with double quantization: blocks of 64 over the
// flattened row-major weight, element 2i in the HIGH nibble of byte i; the block's absmax is
// dynamic_map[absmax_q[b]] · absmax2[b / 256] + offset. One thread per output value.

__constant__ float NF4_CODE[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

template <typename T>
__device__ void nf4_dequantize(const u8 *packed, const u8 *absmax_q, const float *absmax2,
                               const float *dynamic_map, float offset, T *out, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const u8 byte = packed[i >> 1];
    const u32 nib = (i & 1) ? (byte & 15u) : (byte >> 4);
    const u64 blk = i / 64;
    // Explicit rounding steps (no fused multiply-add): bit-identical to the CPU reference.
    const float absmax = __fadd_rn(__fmul_rn(dynamic_map[absmax_q[blk]], absmax2[blk / 256]), offset);
    st(out, i, __fmul_rn(NF4_CODE[nib], absmax));
}

extern "C" __global__ void nf4_dequantize_f32(const u8 *packed, const u8 *absmax_q, const float *absmax2,
                                              const float *dynamic_map, float offset, float *out, u64 n) {
    nf4_dequantize(packed, absmax_q, absmax2, dynamic_map, offset, out, n);
}
extern "C" __global__ void nf4_dequantize_bf16(const u8 *packed, const u8 *absmax_q, const float *absmax2,
                                               const float *dynamic_map, float offset, bf16_t *out, u64 n) {
    nf4_dequantize(packed, absmax_q, absmax2, dynamic_map, offset, out, n);
}
