// Host emulation of kernels/skip.cu: runs the real kernel code block by block on the CPU
// (emu.h, mma.h stand in for CUDA built-ins and WMMA) and compares every case with a float64
// evaluation of SPEC §4 written out here. Cases cover both eigenvector types, every tile
// height (BM 32/64/128), split-K in both launches (a small multiprocessor count forces
// splits), dims off the 8-element vector grid and on it, per-row level tables, trajectories
// beyond the inline level limit, and checks that every output is written and every split-K
// counter is reset. Built and run by scripts/check_fatbin.sh:
//   g++ -std=c++20 -O2 -pthread -I kernels/emulate -I <cuda include> kernels/emulate/main.cpp
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include "emu.h"
#include "../skip.cu"
#include <cstdio>
#include <functional>
#include <random>
#include <string>

using Kernel = void (*)(const GsArgs);
static void launch(Kernel k, Dim3 grid, const GsArgs &a) {
    gridDim = grid;
    blockDim = {128, 1, 1};
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                std::barrier<> bar(128);
                g_bar = &bar;
                std::vector<std::thread> th;
                for (unsigned t = 0; t < 128; ++t)
                    th.emplace_back([&, t] { threadIdx = {t, 0, 0}; blockIdx = {x, y, z}; k(a); });
                for (auto &t : th) t.join();
            }
}

struct Lv { double alpha, sigma; };
static double mstd(Lv n, double l) { return std::sqrt(n.alpha * n.alpha * l + n.sigma * n.sigma); }
static double hgain(Lv n, double l) { double s2 = n.alpha * n.alpha * l + n.sigma * n.sigma; return s2 > 0 ? n.alpha * l / s2 : 0; }

int main() {
    std::mt19937_64 rng(1);
    std::normal_distribution<double> N(0, 1);
    std::uniform_real_distribution<double> U(0, 1);
    int failures = 0, runs = 0;
    const int sms = 2;
    struct Case { int d, r, batch, kind, slabs; bool f16u, from_rows, to_rows; };
    std::vector<Case> cases = {
        {97, 97, 3, GS_OP_SKIP, 1, true, false, false},
        {97, 33, 17, GS_OP_SKIP, 1, false, true, true},
        {200, 64, 1, GS_OP_DENOISE, 1, true, false, false},
        {200, 64, 1, GS_OP_DENOISE, 1, false, false, true},
        {130, 130, 130, GS_OP_SKIP, 1, true, false, false},
        {130, 70, 65, GS_OP_SKIP, 1, false, false, false},
        {61, 61, 2, GS_OP_SKIP_TRAJ, 3, true, true, false},
        {61, 20, 2, GS_OP_X0_TRAJ, 20, false, true, false},
        {300, 100, 5, GS_OP_X0_TRAJ, 4, true, false, false},
        {256, 128, 4, GS_OP_SKIP, 1, true, false, false},
        {256, 128, 4, GS_OP_SKIP, 1, false, false, false},
    };
    for (auto c : cases) {
        const int d = c.d, r = c.r, B = c.batch, S = c.slabs;
        // DCT-II orthonormal rows, eigenvalues, mean
        std::vector<double> E((size_t)r * d), lam(r), mu(d);
        for (int k = 0; k < r; ++k)
            for (int j = 0; j < d; ++j)
                E[(size_t)k * d + j] = std::sqrt((k ? 2.0 : 1.0) / d) * std::cos(M_PI * (j + 0.5) * k / d) * (j % 3 ? 1 : -1);
        for (int k = 0; k < r; ++k) lam[k] = 20 * std::exp(-k / (r / 6.0)) + 0.01;
        for (auto &m : mu) m = 0.5 * N(rng);
        double resid = r < d ? 0.005 : 0.0;
        std::vector<Lv> from_rows(B), to_rows(B), levels(S);
        for (auto &l : from_rows) l = {1.0, 5 + 75 * U(rng)};
        for (auto &l : to_rows) l = {0.5 + U(rng), 3 * U(rng)};
        for (int s = 0; s < S; ++s) levels[s] = {1.0, 60.0 * (1 - s / double(S))};
        Lv from_u = {0.7, 30.0}, to_u = {0.9, 2.0};
        // inputs (float x) and device-side arrays
        std::vector<float> x((size_t)B * d), mean(d), out((size_t)S * B * d, NAN);
        for (auto &v : x) v = float(30 * N(rng));
        for (int j = 0; j < d; ++j) mean[j] = float(mu[j]);
        std::vector<float> Ef(E.begin(), E.end());
        std::vector<__half> Eh(E.size());
        for (size_t i = 0; i < E.size(); ++i) Eh[i] = __float2half_rn(Ef[i]);
        // geometry (as src/backend/cuda.rs)
        const int bk = c.f16u ? 64 : 32, ub = c.f16u ? 2 : 4;
        auto split = [&](long tiles, long chunks) { long want = std::clamp((4L * sms + tiles - 1) / tiles, 1L, std::max(chunks, 1L)); long per = (chunks + want - 1) / want; return std::max(1L, (chunks + per - 1) / per); };
        int bm1 = B >= 64 ? 64 : 32, rt1 = (B + bm1 - 1) / bm1, mt = (r + 63) / 64;
        long splits = split((long)rt1 * mt, (d + bk - 1) / bk);
        long rows2 = (long)S * B; int bm2 = rows2 >= 128 ? 128 : 32; long rt2 = (rows2 + bm2 - 1) / bm2, ct = (d + 63) / 64;
        long splits2 = split(rt2 * ct, (r + bk - 1) / bk);
        long rq = (r + 7) / 8 * 8;
        size_t part_n = std::max(splits * rt1 * bm1 * mt * 64, splits2 * rt2 * bm2 * ct * 64);
        std::vector<float> part(part_n, NAN);
        std::vector<unsigned char> q((size_t)rows2 * rq * ub, 0xFF);
        std::vector<unsigned> counters(std::max((long)rt1 * mt, rt2 * ct), 0);
        std::vector<double> eig64(lam);
        std::vector<GsLevel> table;
        GsArgs a{};
        a.x = x.data(); a.out = out.data(); a.mean = mean.data();
        a.eigvecs = c.f16u ? (const void *)Eh.data() : (const void *)Ef.data();
        a.eigvals = eig64.data(); a.part = part.data(); a.q = q.data(); a.counters = counters.data();
        a.batch = B; a.dim = d; a.rank = r; a.rq = rq; a.rpad = mt * 64; a.rowpad = rt1 * bm1;
        a.cpad = ct * 64; a.rowpad2 = rt2 * bm2; a.kind = c.kind; a.slabs = S; a.splits = splits; a.splits2 = splits2;
        a.residual_var = resid;
        bool to_table = c.to_rows || S > GS_INLINE_LEVELS;
        if (c.from_rows) for (auto l : from_rows) table.push_back({l.alpha, l.sigma});
        size_t from_n = table.size();
        if (to_table) {
            if (c.to_rows) for (auto l : to_rows) table.push_back({l.alpha, l.sigma});
            else for (auto l : levels) table.push_back({l.alpha, l.sigma});
        }
        a.from_table = c.from_rows ? table.data() : nullptr;
        a.to_table = to_table ? table.data() + from_n : nullptr;
        a.to_per_row = c.to_rows;
        a.from = {from_u.alpha, from_u.sigma};
        for (int s = 0; s < S && s < GS_INLINE_LEVELS; ++s) {
            Lv t = (c.kind == GS_OP_SKIP || c.kind == GS_OP_DENOISE) ? to_u : levels[s];
            a.to[s] = {t.alpha, t.sigma};
        }
        Kernel kp, kb;
        if (c.f16u) { kp = bm1 == 32 ? gs_project_f32x_f16u_bm32 : gs_project_f32x_f16u_bm64; kb = bm2 == 32 ? gs_backproject_f32x_f16u_bm32 : gs_backproject_f32x_f16u_bm128; }
        else { kp = bm1 == 32 ? gs_project_f32x_f32u_bm32 : gs_project_f32x_f32u_bm64; kb = bm2 == 32 ? gs_backproject_f32x_f32u_bm32 : gs_backproject_f32x_f32u_bm128; }
        launch(kp, {(unsigned)rt1, (unsigned)mt, (unsigned)splits}, a);
        launch(kb, {(unsigned)rt2, (unsigned)ct, (unsigned)splits2}, a);
        bool counters_clean = std::all_of(counters.begin(), counters.end(), [](unsigned v) { return v == 0; });
        // float64 reference, straight from SPEC §4
        double num = 0, den = 0; long bad = -1;
        for (int s = 0; s < S; ++s)
            for (int i = 0; i < B; ++i) {
                Lv f = c.from_rows ? from_rows[i] : from_u;
                Lv t = (c.kind == GS_OP_SKIP || c.kind == GS_OP_DENOISE) ? (c.to_rows ? to_rows[i] : to_u) : levels[s];
                auto gain = [&](double l) {
                    if (c.kind == GS_OP_DENOISE) return hgain(t, l);
                    double g = mstd(t, l) / mstd(f, l);
                    return c.kind == GS_OP_X0_TRAJ ? hgain(t, l) * g : g;
                };
                double cc = c.kind == GS_OP_DENOISE ? t.alpha : f.alpha;
                double ca = (c.kind == GS_OP_SKIP || c.kind == GS_OP_SKIP_TRAJ) ? t.alpha : 1.0, cb = gain(resid);
                std::vector<double> y(d), o(d);
                for (int j = 0; j < d; ++j) y[j] = x[(size_t)i * d + j] - cc * mu[j];
                for (int j = 0; j < d; ++j) o[j] = ca * mu[j] + cb * y[j];
                for (int k = 0; k < r; ++k) {
                    double p = 0;
                    for (int j = 0; j < d; ++j) p += E[(size_t)k * d + j] * y[j];
                    double w = gain(lam[k]) - cb;
                    for (int j = 0; j < d; ++j) o[j] += p * w * E[(size_t)k * d + j];
                }
                for (int j = 0; j < d; ++j) {
                    double v = out[((size_t)s * B + i) * d + j];
                    if (!std::isfinite(v) && bad < 0) bad = ((long)s * B + i) * d + j;
                    num += (v - o[j]) * (v - o[j]);
                    den += o[j] * o[j];
                }
            }
        double err = std::sqrt(num / den), tol = c.f16u ? 2e-3 : 1e-5;
        bool ok = err <= tol && bad < 0 && counters_clean;
        failures += !ok; ++runs;
        std::printf("%s d=%d r=%d B=%d kind=%d slabs=%d %s rows(from=%d,to=%d) splits=%ld/%ld bm=%d/%d: relerr %.2e%s%s\n",
                    ok ? "ok  " : "FAIL", d, r, B, c.kind, S, c.f16u ? "f16u" : "f32u", c.from_rows, c.to_rows, splits, splits2,
                    bm1, bm2, err, bad >= 0 ? " NONFINITE" : "", counters_clean ? "" : " COUNTERS-NOT-RESET");
    }
    std::printf("%d/%d cases ok\n", runs - failures, runs);
    return failures != 0;
}
