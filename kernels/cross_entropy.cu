// Cross-entropy of one chunk of rows (the caller chunks the tokens so that all logits are never
// alive at once). logits: (rows, v) contiguous; labels: (rows) u32. One block per row.
// Forward: stats[r] = (loss, lse) with lse = max + log Σ exp(l − max), loss = lse − l[label].
// Backward, from sd[r] = (loss, lse, dloss, dlse) with the upstream gradients (dloss, dlse):
//   dlogits[r, j] = dloss · (p_j − [j = label]) + dlse · p_j,  p_j = exp(l_j − lse).

template <typename T>
__device__ void cross_entropy_fwd(const T *logits, const u32 *labels, float *stats, u32 v) {
    const u64 row = blockIdx.x;
    const T *l = logits + row * v;
    float m = NEG_INF;
    for (u32 j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, ld(l, j));
    m = block_max(m);
    float s = 0.0f;
    for (u32 j = threadIdx.x; j < v; j += blockDim.x) s += expf(ld(l, j) - m);
    s = block_sum(s);
    if (threadIdx.x == 0) {
        const float z = m + logf(s);
        stats[2 * row] = z - ld(l, labels[row]);
        stats[2 * row + 1] = z;
    }
}

template <typename T>
__device__ void cross_entropy_bwd(const T *logits, const u32 *labels, const float *sd, T *dlogits, u32 v) {
    const u64 row = blockIdx.x;
    const T *l = logits + row * v;
    const float z = sd[4 * row + 1];
    const float dloss = sd[4 * row + 2], dlse = sd[4 * row + 3];
    const u32 label = labels[row];
    for (u32 j = threadIdx.x; j < v; j += blockDim.x) {
        const float p = expf(ld(l, j) - z);
        st(dlogits, row * v + j, (dloss + dlse) * p - (j == label ? dloss : 0.0f));
    }
}

extern "C" __global__ void cross_entropy_fwd_f32(const float *logits, const u32 *labels, float *stats, u32 v) {
    cross_entropy_fwd(logits, labels, stats, v);
}
extern "C" __global__ void cross_entropy_fwd_bf16(const bf16_t *logits, const u32 *labels, float *stats, u32 v) {
    cross_entropy_fwd(logits, labels, stats, v);
}
extern "C" __global__ void cross_entropy_bwd_f32(const float *logits, const u32 *labels, const float *sd,
                                                 float *dlogits, u32 v) {
    cross_entropy_bwd(logits, labels, sd, dlogits, v);
}
extern "C" __global__ void cross_entropy_bwd_bf16(const bf16_t *logits, const u32 *labels, const float *sd,
                                                  bf16_t *dlogits, u32 v) {
    cross_entropy_bwd(logits, labels, sd, dlogits, v);
}
