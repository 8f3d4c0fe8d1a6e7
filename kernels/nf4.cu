// NF4 dequantization in bitsandbytes' layout with double quantization: blocks of 64 over the
// flattened row-major weight, element 2i in the HIGH nibble of byte i; the block's absmax is
// dynamic_map[absmax_q[b]] · absmax2[b / 256] + offset. One thread per output value. `code` is
// the 16 NF4 values, passed from the one table (runner_model::ops::dequant::NF4_CODE).

template <typename T>
__device__ void nf4_dequantize(const u8 *packed, const u8 *absmax_q, const float *absmax2,
                               const float *dynamic_map, const float *code, float offset, T *out, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const u8 byte = packed[i >> 1];
    const u32 nib = (i & 1) ? (byte & 15u) : (byte >> 4);
    const u64 blk = i / 64;
    // Explicit rounding steps (no fused multiply-add): bit-identical to the CPU reference.
    const float absmax = __fadd_rn(__fmul_rn(dynamic_map[absmax_q[blk]], absmax2[blk / 256]), offset);
    st(out, i, __fmul_rn(code[nib], absmax));
}

extern "C" __global__ void nf4_dequantize_f32(const u8 *packed, const u8 *absmax_q, const float *absmax2,
                                              const float *dynamic_map, const float *code, float offset, float *out, u64 n) {
    nf4_dequantize(packed, absmax_q, absmax2, dynamic_map, code, offset, out, n);
}
extern "C" __global__ void nf4_dequantize_bf16(const u8 *packed, const u8 *absmax_q, const float *absmax2,
                                               const float *dynamic_map, const float *code, float offset, bf16_t *out, u64 n) {
    nf4_dequantize(packed, absmax_q, absmax2, dynamic_map, code, offset, out, n);
}
