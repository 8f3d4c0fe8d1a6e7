// Dropout keep-masks from Philox4x32-10 (Salmon et al., SC'11; Random123), bit for bit the
// generator of crates/model/src/ops/dropout.rs: element e of a mask takes word e % 4 of
// philox(counter = [e / 4, step, micro, layer << 8 | projection], key = [seed_lo, seed_hi]) and
// is kept when that word is >= threshold (= p·2³²). Bits are packed 32 to a word, element e at
// bit e % 32 of word e / 32. One thread per word (8 Philox calls).

__device__ __forceinline__ void philox4x32_10(u32 ctr[4], u32 k0, u32 k1) {
    const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += W0;
            k1 += W1;
        }
        const u64 p0 = (u64)M0 * ctr[0];
        const u64 p1 = (u64)M1 * ctr[2];
        const u32 hi0 = (u32)(p0 >> 32), lo0 = (u32)p0;
        const u32 hi1 = (u32)(p1 >> 32), lo1 = (u32)p1;
        const u32 c1 = ctr[1], c3 = ctr[3];
        ctr[0] = hi1 ^ c1 ^ k0;
        ctr[1] = lo1;
        ctr[2] = hi0 ^ c3 ^ k1;
        ctr[3] = lo0;
    }
}

extern "C" __global__ void dropout_mask_u32(u32 *bits, u64 n, u32 seed_lo, u32 seed_hi, u32 step,
                                            u32 micro, u32 stream, u32 threshold) {
    const u64 w = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    const u64 words = (n + 31) / 32;
    if (w >= words) return;
    u32 word = 0;
    for (u32 blk = 0; blk < 8; ++blk) {
        const u64 e0 = w * 32 + blk * 4;
        if (e0 >= n) break;
        u32 ctr[4] = {(u32)(e0 / 4), step, micro, stream};
        philox4x32_10(ctr, seed_lo, seed_hi);
        for (u32 j = 0; j < 4; ++j) {
            if (e0 + j < n && ctr[j] >= threshold) word |= 1u << (blk * 4 + j);
        }
    }
    bits[w] = word;
}

// y = x·scale where element e is kept, 0 elsewhere: the same bits as dropout_mask_u32, one
// thread per element (the op's backward is this on dy: the mask is its own transpose).
template <typename T>
__device__ void dropout_apply(const T *x, T *y, u64 n, u32 seed_lo, u32 seed_hi, u32 step,
                              u32 micro, u32 stream, u32 threshold, float scale) {
    const u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    u32 ctr[4] = {(u32)(e / 4), step, micro, stream};
    philox4x32_10(ctr, seed_lo, seed_hi);
    st(y, e, ctr[e % 4] >= threshold ? ld(x, e) * scale : 0.0f);
}

extern "C" __global__ void dropout_apply_f32(const float *x, float *y, u64 n, u32 seed_lo, u32 seed_hi,
                                             u32 step, u32 micro, u32 stream, u32 threshold, float scale) {
    dropout_apply(x, y, n, seed_lo, seed_hi, step, micro, stream, threshold, scale);
}
extern "C" __global__ void dropout_apply_bf16(const bf16_t *x, bf16_t *y, u64 n, u32 seed_lo, u32 seed_hi,
                                              u32 step, u32 micro, u32 stream, u32 threshold, float scale) {
    dropout_apply(x, y, n, seed_lo, seed_hi, step, micro, stream, threshold, scale);
}
