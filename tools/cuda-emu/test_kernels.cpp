// Runs kernels/*.cu on the CPU through cuda_emu.h with the launch configurations of
// crates/kernels/src/cuda.rs (per_row, elementwise), against double-precision references and
// finite differences of the forward (the backward kernels checked against the math, not against
// a port of themselves).
#include "cuda_emu.h"

#include "common.cuh"
#include "rms_norm.cu"
#include "swiglu.cu"
#include "rope.cu"
#include "nf4.cu"
#include "cross_entropy.cu"

#include <algorithm>
#include <functional>
#include <random>
#include <string>

static int failures = 0;
static void check(bool ok, const std::string &what, double err) {
    std::printf("%-58s %s (max err %.3g)\n", what.c_str(), ok ? "ok" : "FAIL", err);
    if (!ok) ++failures;
}

// crates/kernels/src/cuda.rs
static dim3 per_row_threads(size_t cols) {
    size_t t = 1;
    while (t < cols) t <<= 1;
    t = std::clamp<size_t>(t, 32, 1024);
    return dim3((unsigned)t);
}
static dim3 elementwise_grid(size_t n) { return dim3((unsigned)std::max<size_t>(1, (n + 255) / 256)); }

static uint16_t to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float from_bf16(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

static std::mt19937 rng(42);
static std::vector<float> randv(size_t n, float sd) {
    std::normal_distribution<float> d(0, sd);
    std::vector<float> v(n);
    for (auto &x : v) x = d(rng);
    return v;
}
static std::vector<uint16_t> bf(const std::vector<float> &v) {
    std::vector<uint16_t> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = to_bf16(v[i]);
    return o;
}
static std::vector<float> unbf(const std::vector<uint16_t> &v) {
    std::vector<float> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = from_bf16(v[i]);
    return o;
}
// max |a-b| / (1 + |b|), as crates/kernels/tests/devices.rs
static double maxdiff(const std::vector<float> &a, const std::vector<double> &b) {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]) / (1 + std::fabs(b[i])));
    return m;
}

// ---------------------------------------------------------------- RMSNorm
static std::vector<double> rms_ref(const std::vector<double> &x, const std::vector<double> &w, size_t n, double eps) {
    std::vector<double> y(x.size());
    for (size_t r = 0; r < x.size() / n; ++r) {
        double ss = 0;
        for (size_t i = 0; i < n; ++i) ss += x[r * n + i] * x[r * n + i];
        double inv = 1 / std::sqrt(ss / n + eps);
        for (size_t i = 0; i < n; ++i) y[r * n + i] = x[r * n + i] * inv * w[i];
    }
    return y;
}

static void test_rms_norm(size_t rows, size_t n) {
    const float eps = 1e-5f;
    auto x = randv(rows * n, 1.0f), w = randv(n, 0.5f), g = randv(rows * n, 1.0f);
    std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end());
    auto yref = rms_ref(xd, wd, n, eps);
    // dx by the chain rule from finite differences of the double forward: dx_j = Σ_i g_i ∂y_i/∂x_j
    std::vector<double> dxref(x.size());
    for (size_t r = 0; r < rows; ++r)
        for (size_t j = 0; j < n; ++j) {
            std::vector<double> row(xd.begin() + r * n, xd.begin() + (r + 1) * n);
            double h = 1e-6 * std::max(1.0, std::fabs(row[j]));
            auto rp = row, rm = row;
            rp[j] += h;
            rm[j] -= h;
            auto yp = rms_ref(rp, wd, n, eps), ym = rms_ref(rm, wd, n, eps);
            double s = 0;
            for (size_t i = 0; i < n; ++i) s += g[r * n + i] * (yp[i] - ym[i]) / (2 * h);
            dxref[r * n + j] = s;
        }
    std::vector<float> y(x.size()), dx(x.size());
    emu::launch(rms_norm_fwd_f32, dim3((unsigned)rows), per_row_threads(n), x.data(), w.data(), y.data(), (u32)n, eps);
    emu::launch(rms_norm_bwd_f32, dim3((unsigned)rows), per_row_threads(n), x.data(), w.data(), g.data(), dx.data(), (u32)n, eps);
    char name[80];
    std::snprintf(name, sizeof name, "rms_norm f32 fwd rows=%zu n=%zu (%u thr)", rows, n, per_row_threads(n).x);
    double e = maxdiff(y, yref);
    check(e < 2e-6, name, e);
    std::snprintf(name, sizeof name, "rms_norm f32 bwd vs finite differences n=%zu", n);
    e = maxdiff(dx, dxref);
    check(e < 1e-4, name, e);
    // bf16: inputs rounded, outputs within a few bf16 ulps of the f64 result on the rounded inputs
    auto xb = bf(x), wb = bf(w), gb = bf(g);
    std::vector<uint16_t> yb(x.size()), dxb(x.size());
    emu::launch(rms_norm_fwd_bf16, dim3((unsigned)rows), per_row_threads(n), xb.data(), wb.data(), yb.data(), (u32)n, eps);
    emu::launch(rms_norm_bwd_bf16, dim3((unsigned)rows), per_row_threads(n), xb.data(), wb.data(), gb.data(), dxb.data(), (u32)n, eps);
    auto xr = unbf(xb), wr = unbf(wb);
    auto yrefb = rms_ref(std::vector<double>(xr.begin(), xr.end()), std::vector<double>(wr.begin(), wr.end()), n, eps);
    std::snprintf(name, sizeof name, "rms_norm bf16 fwd n=%zu", n);
    e = maxdiff(unbf(yb), yrefb);
    check(e < 2e-2, name, e);
}

// ---------------------------------------------------------------- SwiGLU
static void test_swiglu(size_t n) {
    auto g = randv(n, 3.0f), u = randv(n, 1.0f), dy = randv(n, 1.0f);
    g[0] = -100.0f;  // exp overflow path
    if (n > 1)
    g[1] = 90.0f;
    std::vector<float> y(n), dg(n), du(n);
    emu::launch(swiglu_fwd_f32, elementwise_grid(n), dim3(256), g.data(), u.data(), y.data(), (u64)n);
    emu::launch(swiglu_bwd_f32, elementwise_grid(n), dim3(256), g.data(), u.data(), dy.data(), dg.data(), du.data(), (u64)n);
    auto f = [](double a, double b) { return a / (1 + std::exp(-a)) * b; };
    std::vector<double> yr(n), dgr(n), dur(n);
    for (size_t i = 0; i < n; ++i) {
        yr[i] = f(g[i], u[i]);
        double h = 1e-6 * std::max(1.0, std::fabs((double)g[i]));
        dgr[i] = dy[i] * (f(g[i] + h, u[i]) - f(g[i] - h, u[i])) / (2 * h);
        dur[i] = dy[i] * (f(g[i], u[i] + 1e-6) - f(g[i], u[i] - 1e-6)) / 2e-6;
    }
    bool finite = true;
    for (size_t i = 0; i < n; ++i) finite &= std::isfinite(y[i]) && std::isfinite(dg[i]) && std::isfinite(du[i]);
    char name[80];
    std::snprintf(name, sizeof name, "swiglu f32 fwd n=%zu (grid %u x 256)", n, elementwise_grid(n).x);
    double e = maxdiff(y, yr);
    check(e < 2e-6 && finite, name, e);
    e = std::max(maxdiff(dg, dgr), maxdiff(du, dur));
    check(e < 1e-4, "swiglu f32 bwd (dg, du) vs finite differences", e);
    auto gb = bf(g), ub = bf(u), dyb = bf(dy);
    std::vector<uint16_t> yb(n), dgb(n), dub(n);
    emu::launch(swiglu_fwd_bf16, elementwise_grid(n), dim3(256), gb.data(), ub.data(), yb.data(), (u64)n);
    emu::launch(swiglu_bwd_bf16, elementwise_grid(n), dim3(256), gb.data(), ub.data(), dyb.data(), dgb.data(), dub.data(), (u64)n);
    auto gr = unbf(gb), ur = unbf(ub);
    for (size_t i = 0; i < n; ++i) yr[i] = f(gr[i], ur[i]);
    e = maxdiff(unbf(yb), yr);
    check(e < 2e-2, "swiglu bf16 fwd", e);
}

// ---------------------------------------------------------------- RoPE
static void test_rope(size_t B, size_t H, size_t T, size_t D) {
    // x: (B, T, H, D); cos, sin: (B*T, D/2), as crates/model/src/ops/rope.rs launches it.
    size_t n = B * H * T * D, half = D / 2;
    auto x = randv(n, 1.0f), g = randv(n, 1.0f);
    std::vector<float> cs(B * T * half), sn(B * T * half);
    for (size_t b = 0; b < B; ++b)
        for (size_t t = 0; t < T; ++t)
            for (size_t k = 0; k < half; ++k) {
                double ang = (t + 3 * b) * std::pow(10000.0, -2.0 * k / D);
                cs[(b * T + t) * half + k] = (float)std::cos(ang);
                sn[(b * T + t) * half + k] = (float)std::sin(ang);
            }
    std::vector<float> y(n), dx(n);
    emu::launch(rope_f32, elementwise_grid(n), dim3(256), x.data(), cs.data(), sn.data(), y.data(), (u32)H, (u32)D, (u64)n, 0);
    emu::launch(rope_f32, elementwise_grid(n), dim3(256), g.data(), cs.data(), sn.data(), dx.data(), (u32)H, (u32)D, (u64)n, 1);
    std::vector<double> yr(n);
    for (size_t i = 0; i < n; ++i) {
        size_t k = i % D, pos = i / (D * H), base = i - k, j = k % half, c = pos * half + j;
        double rot = k < half ? -(double)x[base + k + half] : (double)x[base + k - half];
        yr[i] = x[i] * (double)cs[c] + rot * sn[c];
    }
    double e = maxdiff(y, yr);
    check(e < 1e-6, "rope f32 fwd (HF rotate_half layout)", e);
    // The backward is the transpose: <R x, g> == <x, Rᵀ g>.
    double lhs = 0, rhs = 0;
    for (size_t i = 0; i < n; ++i) {
        lhs += (double)y[i] * g[i];
        rhs += (double)x[i] * dx[i];
    }
    check(std::fabs(lhs - rhs) < 1e-3, "rope bwd is the adjoint: |<Rx,g> - <x,R^T g>|", std::fabs(lhs - rhs));
}

// ---------------------------------------------------------------- NF4
static const float CODE[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                               -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                               0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                               0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
// The Rust table in crates/model/src/ops/dequant.rs (NF4_CODE), as written there.
static const float RUST_CODE[16] = {-1.0f, -0.6961928f, -0.52507305f, -0.3949175f, -0.28444138f, -0.18477343f,
                                    -0.091050036f, 0.0f, 0.0795803f, 0.1609302f, 0.2461123f, 0.33791524f,
                                    0.44070983f, 0.562617f, 0.72295684f, 1.0f};
static void test_nf4(size_t rows, size_t cols) {
    size_t n = rows * cols, nb = (n + 63) / 64, nb2 = (nb + 255) / 256;
    // Quantize a random weight the bitsandbytes way (nearest code of w/absmax per 64-block, then the
    // absmaxes minus their mean quantized with a 256-entry map per 256-block), then check the
    // kernel's dequantization against an independent reading of that layout.
    auto w = randv(n, 0.02f);
    std::vector<float> absmax(nb, 0.f);
    for (size_t i = 0; i < n; ++i) absmax[i / 64] = std::max(absmax[i / 64], std::fabs(w[i]));
    std::vector<uint8_t> packed((n + 1) / 2, 0);
    for (size_t i = 0; i < n; ++i) {
        int best = 0;
        for (int c = 1; c < 16; ++c)
            if (std::fabs(CODE[c] - w[i] / absmax[i / 64]) < std::fabs(CODE[best] - w[i] / absmax[i / 64])) best = c;
        packed[i / 2] |= (i % 2 == 0) ? (uint8_t)(best << 4) : (uint8_t)best;  // element 2i in the high nibble
    }
    float offset = 0;
    for (float a : absmax) offset += a;
    offset /= nb;
    std::vector<float> map(256);
    for (int i = 0; i < 256; ++i) map[i] = (i - 127.5f) / 127.5f;  // any signed map: the layout is what matters
    std::vector<float> absmax2(nb2, 0.f);
    for (size_t b = 0; b < nb; ++b) absmax2[b / 256] = std::max(absmax2[b / 256], std::fabs(absmax[b] - offset));
    std::vector<uint8_t> aq(nb);
    for (size_t b = 0; b < nb; ++b) {
        float v = (absmax[b] - offset) / absmax2[b / 256];
        int best = 0;
        for (int c = 1; c < 256; ++c)
            if (std::fabs(map[c] - v) < std::fabs(map[best] - v)) best = c;
        aq[b] = (uint8_t)best;
    }
    std::vector<float> out(n);
    emu::launch(nf4_dequantize_f32, elementwise_grid(n), dim3(256), packed.data(), aq.data(), absmax2.data(), map.data(), CODE, offset, out.data(), (u64)n);
    std::vector<double> ref(n);
    double qerr = 0;
    for (size_t i = 0; i < n; ++i) {
        int nib = (i % 2 == 0) ? packed[i / 2] >> 4 : packed[i / 2] & 15;
        double am = (double)map[aq[i / 64]] * absmax2[i / 64 / 256] + offset;
        ref[i] = CODE[nib] * am;
        qerr = std::max(qerr, (double)std::fabs(out[i] - w[i]));
    }
    char name[80];
    std::snprintf(name, sizeof name, "nf4 dequant %zux%zu (%zu blocks, %zu absmax2)", rows, cols, nb, nb2);
    double e = maxdiff(out, ref);
    check(e < 1e-7, name, e);
    check(qerr < 0.02 * 0.6, "nf4 round trip |dequant(quant(w)) - w| small", qerr);
    bool same = true;
    for (int i = 0; i < 16; ++i) same &= CODE[i] == RUST_CODE[i];
    check(same, "nf4 code table: CUDA literals == Rust literals (bitwise)", 0);
}

// ---------------------------------------------------------------- cross-entropy
static void test_ce(size_t rows, size_t v) {
    auto l = randv(rows * v, 4.0f);
    l[3] = 80.0f;  // a large logit: needs the max subtraction
    std::vector<u32> lab(rows);
    for (size_t r = 0; r < rows; ++r) lab[r] = (u32)((r * 7919) % v);
    std::vector<float> stats(2 * rows);
    emu::launch(cross_entropy_fwd_f32, dim3((unsigned)rows), per_row_threads(v), l.data(), lab.data(), stats.data(), (u32)v);
    std::vector<double> sr(2 * rows);
    auto lse = [&](const float *row) {
        double m = -INFINITY;
        for (size_t j = 0; j < v; ++j) m = std::max(m, (double)row[j]);
        double s = 0;
        for (size_t j = 0; j < v; ++j) s += std::exp(row[j] - m);
        return m + std::log(s);
    };
    for (size_t r = 0; r < rows; ++r) {
        double z = lse(&l[r * v]);
        sr[2 * r] = z - l[r * v + lab[r]];
        sr[2 * r + 1] = z;
    }
    char name[80];
    std::snprintf(name, sizeof name, "cross_entropy f32 fwd rows=%zu V=%zu (%u thr)", rows, v, per_row_threads(v).x);
    double e = maxdiff(stats, sr);
    check(e < 1e-5, name, e);
    // backward from upstream (dloss, dlse), against the analytic gradient of dloss·loss + dlse·lse
    std::vector<float> sd(4 * rows);
    for (size_t r = 0; r < rows; ++r) {
        sd[4 * r] = stats[2 * r];
        sd[4 * r + 1] = stats[2 * r + 1];
        sd[4 * r + 2] = 0.7f;
        sd[4 * r + 3] = -0.3f;
    }
    std::vector<float> d(rows * v);
    emu::launch(cross_entropy_bwd_f32, dim3((unsigned)rows), per_row_threads(v), l.data(), lab.data(), sd.data(), d.data(), (u32)v);
    std::vector<double> dr(rows * v);
    for (size_t r = 0; r < rows; ++r) {
        double z = lse(&l[r * v]);
        for (size_t j = 0; j < v; ++j) {
            double p = std::exp(l[r * v + j] - z);
            dr[r * v + j] = 0.7 * (p - (j == lab[r])) + (-0.3) * p;
        }
    }
    e = maxdiff(d, dr);
    check(e < 1e-6, "cross_entropy f32 bwd vs softmax - onehot", e);
}

// A deliberately wrong launch (48 threads: a partial second warp under a full-mask shuffle),
// to show that the emulator reports the bug class rather than silently computing.
static void negative_partial_warp() {
    size_t n = 48;
    auto x = randv(n, 1.0f), w = randv(n, 1.0f);
    std::vector<float> y(n);
    int before = emu::errors.load();
    emu::launch(rms_norm_fwd_f32, dim3(1), dim3(48), x.data(), w.data(), y.data(), (u32)n, 1e-5f);
    int found = emu::errors.load() - before;
    emu::errors = before;
    check(found > 0, "negative control: blockDim 48 + full-mask shuffle is reported", found);
}

int main() {
    test_rms_norm(3, 5);
    test_rms_norm(4, 200);
    test_rms_norm(2, 4096);
    test_rms_norm(2, 5000);
    test_swiglu(7 * 300);
    test_swiglu(1);
    test_rope(2, 4, 9, 16);
    test_rope(1, 2, 5, 128);
    test_nf4(3, 200);
    test_nf4(300, 256);  // 1200 blocks: several absmax2 blocks
    test_ce(5, 1000);
    test_ce(3, 32000);
    test_ce(2, 7);
    negative_partial_warp();
    std::printf("emulator errors: %d, failed checks: %d\n", emu::errors.load(), failures);
    return failures || emu::errors.load();
}
