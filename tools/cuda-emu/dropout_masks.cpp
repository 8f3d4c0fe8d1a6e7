// Runs kernels/dropout.cu on the CPU through cuda_emu.h (one thread per mask word, 256 per
// block, the launch of crates/model/src/ops/dropout.rs) and prints
//   1. Philox4x32-10 on Random123's known-answer inputs (checked here against kat_vectors), and
//   2. the mask words of a few (seed, step, micro, stream, n, p) cases,
// in the format of crates/model/fixtures/dropout/emu_masks.txt, which the Rust test
// `issue_12_cpu_masks_equal_the_cuda_kernel_run_by_the_emulator` compares with the CPU generator.
#include "cuda_emu.h"

#include "common.cuh"
#include "dropout.cu"

#include <cstdint>
#include <cstdio>
#include <vector>

int main() {
    // Random123 kat_vectors, philox4x32 10: counter, key -> output.
    const u32 kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d,
         0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09,
         0x94fdcceb, 0x5001e420, 0x24126ea1},
    };
    int failures = 0;
    for (auto &v : kat) {
        u32 c[4] = {v[0], v[1], v[2], v[3]};
        philox4x32_10(c, v[4], v[5]);
        for (int j = 0; j < 4; ++j) failures += c[j] != v[6 + j];
    }
    std::fprintf(stderr, "philox known answers: %s\n", failures ? "FAIL" : "ok");

    struct Case {
        uint64_t seed, step, micro;
        u32 layer, projection;
        uint64_t n;
        double p;
    };
    const Case cases[] = {
        {7, 3, 1, 2, 4, 1000, 0.25},
        {0x5eedd20f0a7eull ^ 42, 0, 0, 0, 0, 77, 0.05},
        {123456789012345ull, 41, 5, 23, 6, 4099, 0.5},
        {1, 100000, 2, 0, 7, 64, 0.9},
    };
    for (const Case &c : cases) {
        const uint64_t words = (c.n + 31) / 32;
        std::vector<u32> bits(words, 0xdeadbeef);
        const u32 threshold = (u32)std::min(c.p * 4294967296.0, 4294967295.0);
        emu::launch(dropout_mask_u32, dim3((unsigned)((words + 255) / 256)), dim3(256), bits.data(),
                    (u64)c.n, (u32)c.seed, (u32)(c.seed >> 32), (u32)c.step, (u32)c.micro,
                    (u32)((c.layer << 8) | c.projection), threshold);
        // dropout_apply on ones gives the scale exactly where the mask keeps.
        std::vector<float> ones(c.n, 1.0f), y(c.n, -1.0f);
        const float scale = (float)(1.0 / (1.0 - c.p));
        emu::launch(dropout_apply_f32, dim3((unsigned)((c.n + 255) / 256)), dim3(256), ones.data(),
                    y.data(), (u64)c.n, (u32)c.seed, (u32)(c.seed >> 32), (u32)c.step, (u32)c.micro,
                    (u32)((c.layer << 8) | c.projection), threshold, scale);
        for (uint64_t e = 0; e < c.n; ++e) {
            const bool keep = bits[e / 32] >> (e % 32) & 1u;
            failures += y[e] != (keep ? scale : 0.0f);
        }
        std::printf("case %llu %llu %llu %u %u %llu %.17g\n", (unsigned long long)c.seed,
                    (unsigned long long)c.step, (unsigned long long)c.micro, c.layer, c.projection,
                    (unsigned long long)c.n, c.p);
        for (uint64_t w = 0; w < words; ++w) std::printf("%08x%c", bits[w], (w % 8 == 7 || w + 1 == words) ? '\n' : ' ');
    }
    std::fprintf(stderr, "dropout_apply agrees with the mask: %s\n", failures ? "FAIL" : "ok");
    return failures ? 1 : 0;
}
