// Host emulation of kernels/skip.cu: runs the real kernel code block by block on the CPU (emu.h,
// mma.h stand in for CUDA built-ins and WMMA, threads of a block run one at a time between
// barriers) and compares every case with a float64 evaluation of SPEC §4 written out here.
//
// Per case and per output row it checks: every output finite; the row's relative error against
// float64 within the precision contract (2e-3 with f16 eigenvectors, 1e-5 with f32, plus the
// output type's rounding); the row's correction out - (a mean + b y), the only part the tensor
// cores touch, within its own bound; and every split-K counter back at zero. Cases cover both
// eigenvector types, f32/f16/bf16 rows, every tile height (BM 32/64/128), split-K in both
// launches (forced split counts, empty splits included), dims off and on the 8-element vector
// grid, per-row level tables, trajectories beyond the inline level limit, a flat spectrum (every
// mode carries equal weight), a large residual variance, and inputs that leave the f16 range
// unless the kernels scale them (|x| ~ 1e6, a renoising skip 0.002 -> 80, f16 rows near 6e4).
// Scratch (part, q, qexp) and outputs are NaN-poisoned before each case; each case runs under
// two thread orders (reverse, seeded shuffle).
//
// Built and run by scripts/check_fatbin.sh and scripts/kernel_mutants.sh:
//   g++ -std=c++20 -O2 -pthread -I kernels/emulate -I <cuda include> kernels/emulate/main.cpp
// Usage: emulate [--quick] [--stop-early] [--v1 | --v2]
//   --quick: a subset (the sanitizer build); --stop-early: exit at the first failing case
//   (scripts/kernel_mutants.sh: a mutant only has to be caught once); --v1 / --v2: one kernel
//   version only (default: both, every case under each).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "emu.h"
#include "../skip.cu"

#include <cstdio>
#include <cstring>
#include <random>
#include <string>

using Kernel = void (*)(const GsArgs);
static Order g_order = Order::Reverse;
static uint64_t g_seed = 1;

// An entry point and its dynamic shared memory (version 2; 0 for version 1).
struct Entry {
    Kernel k;
    unsigned smem;
};

static void launch(Entry e, unsigned blocks, unsigned splits, const GsArgs &a) {
    if (e.smem > sizeof gs_emu_smem) {
        std::fprintf(stderr, "a kernel wants %u bytes of dynamic shared memory\n", e.smem);
        std::abort();
    }
    gridDim = {blocks, 1, splits};
    blockDim = {128, 1, 1};
    for (unsigned z = 0; z < splits; ++z)
        for (unsigned x = 0; x < blocks; ++x) {
            std::memset(gs_emu_smem, 0xFF, e.smem); // NaN: a value read before it is written shows
            Serial serial(128, g_order, g_seed++);
            g_serial = &serial;
            std::vector<std::thread> th;
            for (unsigned t = 0; t < 128; ++t)
                th.emplace_back([&, t] {
                    threadIdx = {t, 0, 0};
                    blockIdx = {x, 0, z};
                    serial.enter(t);
                    e.k(a);
                    serial.leave(t);
                });
            for (auto &t : th) t.join();
        }
}

enum XType { XF32, XF16, XBF16 };
static const char *xname(XType t) { return t == XF32 ? "f32" : t == XF16 ? "f16" : "bf16"; }

// The 48 kernels by (version, x type, eigenvector type, launch, tile height).
static Entry kernel(int version, XType x, bool f16u, bool project, int bm) {
#define GS_PICK(XN, UN)                                                                                   \
    if (version == 2) {                                                                                   \
        if (project)                                                                                      \
            return bm == 32 ? Entry{gs2_project_##XN##x_##UN##u_bm32, gs2_project_##XN##x_##UN##u_bm32_smem} \
                            : Entry{gs2_project_##XN##x_##UN##u_bm64, gs2_project_##XN##x_##UN##u_bm64_smem}; \
        return bm == 32 ? Entry{gs2_backproject_##XN##x_##UN##u_bm32, gs2_backproject_##XN##x_##UN##u_bm32_smem} \
                        : Entry{gs2_backproject_##XN##x_##UN##u_bm128, gs2_backproject_##XN##x_##UN##u_bm128_smem}; \
    }                                                                                                     \
    if (project) return {bm == 32 ? gs_project_##XN##x_##UN##u_bm32 : gs_project_##XN##x_##UN##u_bm64, 0}; \
    return {bm == 32 ? gs_backproject_##XN##x_##UN##u_bm32 : gs_backproject_##XN##x_##UN##u_bm128, 0};
    if (f16u) {
        if (x == XF32) { GS_PICK(f32, f16) }
        if (x == XF16) { GS_PICK(f16, f16) }
        GS_PICK(bf16, f16)
    }
    if (x == XF32) { GS_PICK(f32, f32) }
    if (x == XF16) { GS_PICK(f16, f32) }
    GS_PICK(bf16, f32)
#undef GS_PICK
}

// Rows in the I/O type: encode from double, decode to the exact value held.
struct Rows {
    XType t;
    std::vector<unsigned char> bytes;
    size_t esize() const { return t == XF32 ? 4 : 2; }
    Rows(XType t, size_t n) : t(t), bytes(n * (t == XF32 ? 4 : 2)) {}
    void set(size_t i, double v) {
        if (t == XF32) { float f = float(v); std::memcpy(&bytes[i * 4], &f, 4); }
        if (t == XF16) { __half h = __float2half_rn(float(v)); std::memcpy(&bytes[i * 2], &h, 2); }
        if (t == XBF16) { __nv_bfloat16 h = __float2bfloat16_rn(float(v)); std::memcpy(&bytes[i * 2], &h, 2); }
    }
    double get(size_t i) const {
        if (t == XF32) { float f; std::memcpy(&f, &bytes[i * 4], 4); return f; }
        if (t == XF16) { __half h; std::memcpy(&h, &bytes[i * 2], 2); return __half2float(h); }
        __nv_bfloat16 h;
        std::memcpy(&h, &bytes[i * 2], 2);
        return __bfloat162float(h);
    }
    double unit() const { return t == XF32 ? 0.0 : t == XF16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8); }
};

struct Lv { double alpha, sigma; };
static double mstd(Lv n, double l) { return std::sqrt(n.alpha * n.alpha * l + n.sigma * n.sigma); }
static double hgain(Lv n, double l) {
    double s2 = n.alpha * n.alpha * l + n.sigma * n.sigma;
    return s2 > 0 ? n.alpha * l / s2 : 0;
}

enum Spectrum { Decaying, Flat };
enum Inputs { Normal, Huge, Renoise, NearF16Max, InSubspace };

struct Case {
    int d, r, batch, kind, slabs;
    bool f16u;
    XType x;
    bool from_rows, to_rows;
    Spectrum spectrum = Decaying;
    Inputs inputs = Normal;
    int force1 = 0, force2 = 0; // split counts; 0 = the launcher's rule
    double from_sigma = 0, to_sigma = 0; // uniform EDM levels instead of the defaults
    int components = 1;   // Gaussians in the model (ranks r, r - 13, r - 26, ...)
    int row_component = 0; // the component of every row, or -1: a random one per row
};

// The launcher's precision bound (src/backend/cuda/precision.rs): the amplification
// kappa = max_k |w_k| / |g_k| over every (from, to) pair, at the extreme eigenvalues (the gains
// are monotone); with r = d the residual passed to the kernels is lambda_1 or lambda_r,
// whichever gives the smaller kappa. Calls above the bound are refused by the launcher.
static double gain_of(int kind, Lv f, Lv t, double l) {
    if (kind == GS_OP_DENOISE) return hgain(t, l);
    double g = mstd(t, l) / mstd(f, l);
    return kind == GS_OP_X0_TRAJ ? hgain(t, l) * g : g;
}
static double kappa_of(int kind, const std::vector<std::pair<Lv, Lv>> &pairs, double lo, double hi, double perp) {
    double worst = 0;
    for (auto [f, t] : pairs) {
        const double b = gain_of(kind, f, t, perp);
        for (double l : {lo, hi}) {
            const double g = gain_of(kind, f, t, l), w = g - b;
            const double k = w == 0 ? 0.0 : std::fabs(w / g);
            worst = std::max(worst, std::isnan(k) ? INFINITY : k);
        }
    }
    return worst;
}

// The launcher's split rules (src/backend/cuda/geometry.rs) for a small multiprocessor count.
// Version 1: about four blocks per multiprocessor.
static long split_rule(long tiles, long chunks, int sms) {
    long want = std::clamp((4L * sms + tiles - 1) / tiles, 1L, std::max(chunks, 1L));
    long per = (chunks + want - 1) / want;
    return std::max(1L, (chunks + per - 1) / per);
}
// Version 2: whole waves of `slots` resident blocks (multiprocessors x blocks per multiprocessor).
static long wave_rule(long tiles, long chunks, long slots) {
    if (tiles >= slots || chunks <= 1) return 1;
    long best = 1, limit = std::min(chunks, 4 * ((slots + tiles - 1) / tiles));
    double best_score = -1e300;
    for (long s = 1; s <= limit; ++s) {
        const long per = (chunks + s - 1) / s, splits = (chunks + per - 1) / per, blocks = tiles * splits;
        const long waves = (blocks + slots - 1) / slots;
        const double score = double(blocks) / double(waves * slots) - 0.01 * double(waves - 1);
        if (score > best_score + 1e-9) best_score = score, best = splits;
    }
    return best;
}

struct Result { bool ok; std::string line; };

// One Gaussian of the model, as the reference and the kernels see it.
struct Comp {
    int r;
    std::vector<double> E, lam, mu; // E: the f32-rounded eigenvectors, exactly
    std::vector<float> Ef, meanf;
    std::vector<__half> Eh;
    std::vector<double> eig64;
    double resid = 0, resid_k = 0; // the model's residual variance; the one passed to the kernels
};

static Comp make_component(const Case &c, int k, std::mt19937_64 &rng) {
    std::normal_distribution<double> N(0, 1);
    const int d = c.d, r = std::max(1, c.r - 13 * k);
    Comp m;
    m.r = r;
    m.E.resize((size_t)r * d), m.lam.resize(r), m.mu.resize(d);
    // DCT-II orthonormal rows with a sign pattern of the component's own
    for (int q = 0; q < r; ++q)
        for (int j = 0; j < d; ++j)
            m.E[(size_t)q * d + j] =
                std::sqrt((q ? 2.0 : 1.0) / d) * std::cos(M_PI * (j + 0.5) * q / d) * (j % (3 + k) ? 1 : -1);
    // flat: every mode carries a comparable weight (4 down to 2), so dropping any changes rows
    for (int q = 0; q < r; ++q)
        m.lam[q] = (c.spectrum == Flat ? 4.0 - 2.0 * q / r : 20 * std::exp(-q / (r / 6.0)) + 0.01) * (1 + 0.3 * k);
    for (auto &v : m.mu) v = 0.5 * N(rng) + k;
    m.Ef.assign(m.E.begin(), m.E.end());
    m.Eh.resize(m.E.size());
    for (size_t i = 0; i < m.E.size(); ++i) m.Eh[i] = __float2half_rn(m.Ef[i]);
    // the device stores eigenvectors rounded to its type; the reference uses the model's f32
    // eigenvectors, as the library's f64 reference does
    for (size_t i = 0; i < m.E.size(); ++i) m.E[i] = m.Ef[i];
    m.meanf.assign(m.mu.begin(), m.mu.end());
    m.eig64 = m.lam;
    m.resid = r < d && c.inputs != Renoise ? (c.spectrum == Flat ? 0.5 : 0.005) : 0.0;
    return m;
}

static Result run_case(const Case &c, int version, std::mt19937_64 &rng) {
    std::normal_distribution<double> N(0, 1);
    std::uniform_real_distribution<double> U(0, 1);
    const int d = c.d, B = c.batch, S = c.slabs, K = c.components, sms = 2;
    std::vector<Comp> comps;
    for (int k = 0; k < K; ++k) comps.push_back(make_component(c, k, rng));
    std::vector<int> comp_of(B);
    for (auto &k : comp_of) k = c.row_component >= 0 ? c.row_component : int(U(rng) * K) % K;
    std::vector<Lv> from_rows(B), to_rows(B), levels(S);
    for (auto &l : from_rows) l = {1.0, 5 + 75 * U(rng)};
    for (auto &l : to_rows) l = {0.5 + U(rng), 0.2 + 3 * U(rng)};
    for (int s = 0; s < S; ++s) levels[s] = {1.0, 60.0 * (1 - s / double(S))};
    Lv from_u = {0.7, 30.0}, to_u = {0.9, c.spectrum == Flat ? 0.3 : 2.0};
    if (c.inputs == Renoise) from_u = {1.0, 0.002}, to_u = {1.0, 80.0};
    if (c.from_sigma > 0) from_u = {1.0, c.from_sigma};
    if (c.to_sigma > 0) to_u = {1.0, c.to_sigma};
    const double xscale = c.inputs == Huge ? 1e6 : c.inputs == NearF16Max ? 2e4 : c.inputs == Renoise ? 2.0 : 30.0;
    auto from_of = [&](int i) { return c.from_rows ? from_rows[i] : from_u; };
    auto to_of = [&](int i, int s) {
        return (c.kind == GS_OP_SKIP || c.kind == GS_OP_DENOISE) ? (c.to_rows ? to_rows[i] : to_u) : levels[s];
    };

    // the launcher's bound, component by component, and the residual each passes the kernels
    double kappa = 0;
    for (int k = 0; k < K; ++k) {
        Comp &m = comps[k];
        std::vector<std::pair<Lv, Lv>> pairs;
        for (int i = 0; i < B; ++i)
            for (int s = 0; s < S && comp_of[i] == k; ++s)
                pairs.push_back({c.kind == GS_OP_DENOISE ? Lv{0.0, 1.0} : from_of(i), to_of(i, s)});
        const double lo = *std::min_element(m.lam.begin(), m.lam.end()), hi = *std::max_element(m.lam.begin(), m.lam.end());
        double kk = kappa_of(c.kind, pairs, lo, hi, m.resid);
        m.resid_k = m.resid;
        if (m.r == d) {
            const double klo = kappa_of(c.kind, pairs, lo, hi, lo), khi = kappa_of(c.kind, pairs, lo, hi, hi);
            m.resid_k = klo <= khi ? lo : hi;
            kk = std::min(klo, khi);
        }
        kappa = std::max(kappa, kk);
    }
    const bool accepted = kappa <= (c.f16u ? 1.0 : 32.0);

    Rows x(c.x, (size_t)B * d), out(c.x, (size_t)S * B * d);
    for (int i = 0; i < B; ++i) {
        const Comp &m = comps[comp_of[i]];
        Lv f = c.kind == GS_OP_DENOISE ? to_of(i, 0) : from_of(i);
        std::vector<double> row(d);
        for (int j = 0; j < d; ++j) {
            row[j] = xscale * N(rng);
            if (c.inputs == NearF16Max) row[j] = std::clamp(row[j], -6e4, 6e4);
        }
        if (c.inputs == InSubspace) { // x = alpha mean + sum_k c_k u_k: y lies in span(U)
            for (int j = 0; j < d; ++j) row[j] = f.alpha * m.mu[j];
            for (int q = 0; q < m.r; ++q) {
                const double ck = mstd(f, m.lam[q]) * N(rng);
                for (int j = 0; j < d; ++j) row[j] += ck * m.E[(size_t)q * d + j];
            }
        }
        for (int j = 0; j < d; ++j) x.set((size_t)i * d + j, row[j]);
    }
    std::fill(out.bytes.begin(), out.bytes.end(), 0xFF); // NaN in every type

    // row groups and geometry (as src/backend/cuda/geometry.rs and args.rs)
    const bool grouped = c.row_component < 0;
    std::vector<long long> order(B);
    for (int i = 0; i < B; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](long long p, long long q) { return comp_of[p] < comp_of[q]; });
    std::vector<GsGroup> groups;
    for (int i = 0; i < B; ++i)
        if (i == 0 || comp_of[order[i]] != comp_of[order[i - 1]])
            groups.push_back(GsGroup{i, 0, 0, 0, comp_of[order[i]], comps[comp_of[order[i]]].resid_k});
    for (auto &g : groups) g.count = std::count(comp_of.begin(), comp_of.end(), (int)g.component);
    long long most = 0;
    for (auto &g : groups) most = std::max(most, g.count);
    int max_r = 0;
    for (auto &m : comps) max_r = std::max(max_r, m.r);
    const int bk = c.f16u ? 64 : 32, ub = c.f16u ? 2 : 4;
    const int bm1 = most >= 64 ? 64 : 32, bm2 = S * most >= 128 ? 128 : 32, mt = (max_r + 63) / 64;
    long rt1 = 0, rt2 = 0;
    std::vector<int> tile_group1, tile_group2;
    for (size_t gi = 0; gi < groups.size(); ++gi) {
        GsGroup &g = groups[gi];
        g.tile1 = rt1, g.tile2 = rt2;
        const long t1 = (g.count + bm1 - 1) / bm1, t2 = (S * g.count + bm2 - 1) / bm2;
        rt1 += t1, rt2 += t2;
        tile_group1.insert(tile_group1.end(), t1, int(gi));
        tile_group2.insert(tile_group2.end(), t2, int(gi));
    }
    const long ct = (d + 63) / 64;
    // version 2: an assumed 3 resident blocks per multiprocessor for every kernel
    auto rule = [&](long tiles, long chunks) {
        return version == 1 ? split_rule(tiles, chunks, sms) : wave_rule(tiles, chunks, 3L * sms);
    };
    const long splits = c.force1 ? c.force1 : rule(rt1 * mt, (d + bk - 1) / bk);
    const long splits2 = c.force2 ? c.force2 : rule(rt2 * ct, (max_r + bk - 1) / bk);
    const long rows2 = (long)S * B, rq = (max_r + 7) / 8 * 8;
    const size_t part_n = std::max(splits * rt1 * bm1 * mt * 64, splits2 * rt2 * bm2 * ct * 64);
    std::vector<float> part(part_n, NAN);
    std::vector<unsigned char> q((size_t)rows2 * rq * ub, 0xFF);
    std::vector<int> qexp((size_t)rows2 * mt, 0x7f7f7f7f);
    std::vector<unsigned> counters(std::max(rt1 * mt, rt2 * ct), 0);
    std::vector<GsComponent> table_c;
    for (auto &m : comps)
        table_c.push_back(GsComponent{m.meanf.data(), c.f16u ? (const void *)m.Eh.data() : (const void *)m.Ef.data(),
                                      m.eig64.data(), m.r});
    std::vector<GsLevel> table;
    GsArgs a{};
    a.x = x.bytes.data();
    a.out = out.bytes.data();
    a.components = table_c.data();
    a.groups = grouped ? groups.data() : nullptr;
    a.order = grouped ? order.data() : nullptr;
    a.tile_group1 = grouped ? tile_group1.data() : nullptr;
    a.tile_group2 = grouped ? tile_group2.data() : nullptr;
    a.component = grouped ? 0 : c.row_component;
    a.residual_var = grouped ? 0.0 : comps[c.row_component].resid_k;
    a.part = part.data();
    a.q = q.data();
    a.qexp = qexp.data();
    a.counters = counters.data();
    a.batch = B, a.dim = d, a.rank = max_r, a.rq = rq, a.rpad = mt * 64, a.rowpad = rt1 * bm1;
    a.cpad = ct * 64, a.rowpad2 = rt2 * bm2, a.row_tiles1 = rt1, a.row_tiles2 = rt2;
    a.kind = c.kind, a.slabs = S, a.splits = int(splits), a.splits2 = int(splits2), a.mode_tiles = mt;
    const bool to_table = c.to_rows || S > GS_INLINE_LEVELS;
    if (c.from_rows)
        for (auto l : from_rows) table.push_back({l.alpha, l.sigma});
    const size_t from_n = table.size();
    if (to_table) {
        if (c.to_rows)
            for (auto l : to_rows) table.push_back({l.alpha, l.sigma});
        else
            for (auto l : levels) table.push_back({l.alpha, l.sigma});
    }
    a.from_table = c.from_rows ? table.data() : nullptr;
    a.to_table = to_table ? table.data() + from_n : nullptr;
    a.to_per_row = c.to_rows;
    a.from = {from_u.alpha, from_u.sigma};
    for (int s = 0; s < S && s < GS_INLINE_LEVELS; ++s) {
        Lv t = to_of(0, s);
        if (!c.to_rows) a.to[s] = {t.alpha, t.sigma};
    }
    a.keep_eigvecs = c.d % 2; // no effect on the results (an L2 priority): both values run
    launch(kernel(version, c.x, c.f16u, true, bm1), unsigned(rt1 * mt), unsigned(splits), a);
    launch(kernel(version, c.x, c.f16u, false, bm2), unsigned(rt2 * ct), unsigned(splits2), a);
    const bool counters_clean = std::all_of(counters.begin(), counters.end(), [](unsigned v) { return v == 0; });

    // float64 reference, straight from SPEC §4, row by row with each row's component
    const double tol = c.f16u ? 2e-3 : 1e-5, tol_corr = c.f16u ? 4e-3 : 2e-5;
    double worst = 0, worst_corr = 0;
    long worst_row = -1, worst_corr_row = -1, nonfinite = -1, bad_rows = 0;
    for (int s = 0; s < S; ++s)
        for (int i = 0; i < B; ++i) {
            const Comp &m = comps[comp_of[i]];
            const long row = (long)s * B + i;
            Lv f = from_of(i), t = to_of(i, s);
            auto gain = [&](double l) { return gain_of(c.kind, f, t, l); };
            const double cc = c.kind == GS_OP_DENOISE ? t.alpha : f.alpha;
            const double ca = (c.kind == GS_OP_SKIP || c.kind == GS_OP_SKIP_TRAJ) ? t.alpha : 1.0, cb = gain(m.resid_k);
            std::vector<double> y(d), corr(d, 0.0);
            for (int j = 0; j < d; ++j) y[j] = x.get((size_t)i * d + j) - cc * m.mu[j];
            for (int q = 0; q < m.r; ++q) {
                double p = 0;
                for (int j = 0; j < d; ++j) p += m.E[(size_t)q * d + j] * y[j];
                const double w = gain(m.lam[q]) - cb;
                for (int j = 0; j < d; ++j) corr[j] += p * w * m.E[(size_t)q * d + j];
            }
            double num = 0, den = 0, cnum = 0, cden = 0, onorm = 0;
            for (int j = 0; j < d; ++j) {
                const double v = out.get((size_t)row * d + j), base = ca * m.mu[j] + cb * y[j];
                if (!std::isfinite(v) && nonfinite < 0) nonfinite = row * d + j;
                const double o = base + corr[j];
                num += (v - o) * (v - o), den += o * o;
                cnum += (v - base - corr[j]) * (v - base - corr[j]), cden += corr[j] * corr[j];
                onorm += v * v;
            }
            const double err = std::sqrt(num / den), cerr = cden > 0 ? std::sqrt(cnum / cden) : 0.0;
            // an f16/bf16 output cannot hold the exact value: allow its rounding on top
            const double io = out.unit(), cbound = tol_corr + (cden > 0 ? io * std::sqrt(onorm / cden) : 0.0);
            // a call above the bound is refused by the launcher: here it only tests that the
            // f16 range protection keeps every value finite
            if (accepted && (!(err <= tol + io) || !(cerr <= cbound))) ++bad_rows;
            if (!(err <= worst)) worst = err, worst_row = row;
            if (!(cerr / cbound <= worst_corr)) worst_corr = cerr / cbound, worst_corr_row = row;
        }
    const bool ok = bad_rows == 0 && nonfinite < 0 && counters_clean;
    char buf[600];
    static const char *kinds[] = {"skip", "denoise", "skip-traj", "x0-traj"};
    static const char *ins[] = {"", " huge-x", " renoise", " near-f16-max", " in-subspace"};
    std::string comp_text =
        K == 1 ? "" : " K=" + std::to_string(K) + (grouped ? " mixed" : " all=" + std::to_string(c.row_component));
    std::snprintf(buf, sizeof buf,
                  "%s v%d d=%d r=%d B=%d %s slabs=%d x=%s u=%s rows(from=%d,to=%d)%s%s%s splits=%ld/%ld bm=%d/%d: "
                  "kappa %.2g%s, worst row err %.2e (row %ld), worst correction %.2f of bound (row %ld)%s%s%s",
                  ok ? "ok  " : "FAIL", version, d, c.r, B, kinds[c.kind], S, xname(c.x), c.f16u ? "f16" : "f32", c.from_rows,
                  c.to_rows, c.spectrum == Flat ? " flat" : "", ins[c.inputs], comp_text.c_str(), splits, splits2, bm1,
                  bm2, kappa, accepted ? "" : " (refused: range check only)", worst, worst_row, worst_corr,
                  worst_corr_row, bad_rows ? (" BAD-ROWS=" + std::to_string(bad_rows)).c_str() : "",
                  nonfinite >= 0 ? " NONFINITE" : "", counters_clean ? "" : " COUNTERS-NOT-RESET");
    return {ok, buf};
}

int main(int argc, char **argv) {
    bool quick = false, stop_early = false;
    std::vector<int> versions = {1, 2};
    for (int i = 1; i < argc; ++i) {
        quick |= std::strcmp(argv[i], "--quick") == 0;
        stop_early |= std::strcmp(argv[i], "--stop-early") == 0;
        if (std::strcmp(argv[i], "--v1") == 0) versions = {1};
        if (std::strcmp(argv[i], "--v2") == 0) versions = {2};
    }
    std::mt19937_64 rng(1);
    const int SK = GS_OP_SKIP, DN = GS_OP_DENOISE, ST = GS_OP_SKIP_TRAJ, XT = GS_OP_X0_TRAJ;
    std::vector<Case> cases = {
        {97, 97, 3, SK, 1, true, XF32, false, false},
        {97, 33, 17, SK, 1, false, XF32, true, true},
        {97, 97, 5, SK, 1, true, XF16, false, false, Flat},
        {97, 97, 5, SK, 1, false, XBF16, false, false, Flat},
        {200, 64, 1, DN, 1, true, XF32, false, false},
        {200, 64, 1, DN, 1, false, XBF16, false, true},
        {130, 130, 130, SK, 1, true, XF32, false, false},
        {130, 70, 65, SK, 1, false, XF16, false, false, Flat},
        {130, 97, 129, SK, 1, true, XBF16, true, false, Flat},
        {61, 61, 2, ST, 3, true, XF32, true, false},
        {61, 20, 2, XT, 20, false, XF32, true, false},
        {300, 100, 5, XT, 4, true, XF16, false, false},
        {256, 128, 4, SK, 1, true, XF32, false, false, Flat, Normal, 3, 2},
        {256, 128, 4, SK, 1, false, XF32, false, false, Flat, Normal, 5, 3},
        {257, 200, 3, SK, 1, true, XF16, false, false, Flat, Normal, 4, 4},
        {160, 130, 2, DN, 1, true, XF32, false, false, Flat, Normal, 1, 3},
        // one split over many chunks: version 2's pipeline stages are reused several times
        {520, 130, 3, SK, 1, true, XF16, false, false, Flat, Normal, 1, 1},
        {520, 300, 2, SK, 1, false, XF32, false, false, Flat, Normal, 1, 1},
        {300, 150, 3, SK, 1, true, XF32, false, false, Decaying, Huge},
        {300, 150, 3, SK, 1, true, XF32, false, false, Decaying, Renoise},
        {300, 300, 2, SK, 1, true, XF16, false, false, Flat, NearF16Max},
        {200, 130, 3, XT, 5, true, XF32, false, false, Decaying, Renoise},
        // the precision bound: inversions inside the subspace (the worst case) just below it
        {200, 100, 3, SK, 1, true, XF32, false, false, Decaying, InSubspace, 0, 0, 3.0, 10.0},
        {200, 100, 3, SK, 1, false, XF32, false, false, Decaying, InSubspace, 0, 0, 0.15, 10.0},
        {150, 150, 3, SK, 1, true, XF32, false, false, Decaying, InSubspace, 0, 0, 0.002, 80.0},
        {150, 80, 2, DN, 1, true, XF16, false, false, Flat, InSubspace, 0, 0, 0, 0.05},
        // several components: one for all rows (no tables), and one per row (grouped rows,
        // ranks 97 / 84 / 71 / 58, one of them full rank)
        {97, 97, 5, SK, 1, true, XF32, false, false, Flat, Normal, 0, 0, 0, 0, 3, 2},
        {97, 97, 17, SK, 1, true, XF16, true, false, Flat, Normal, 0, 0, 0, 0, 4, -1},
        {97, 97, 70, SK, 1, false, XF32, false, true, Flat, Normal, 0, 0, 0, 0, 3, -1},
        {130, 100, 9, XT, 20, true, XF32, true, false, Decaying, Normal, 3, 2, 0, 0, 3, -1},
        {130, 100, 40, DN, 1, true, XBF16, false, false, Flat, Normal, 0, 0, 0, 0, 2, -1},
    };
    if (quick) cases = {cases[0], cases[3], cases[8], cases[12], cases[16], cases[19], cases[22], cases[27]};
    int failures = 0, runs = 0;
    for (size_t i = 0; i < cases.size(); ++i)
        for (int version : versions)
            for (Order o : {Order::Reverse, Order::Shuffle}) {
                // version 2's copies land late under the reverse order, at issue under the shuffle
                g_order = o;
                g_landing = o == Order::Reverse ? Landing::Late : Landing::Eager;
                Result res = run_case(cases[i], version, rng);
                failures += !res.ok;
                ++runs;
                std::printf("%s [%s]\n", res.line.c_str(),
                            o == Order::Reverse ? "reverse, late copies" : "shuffle, copies at issue");
                std::fflush(stdout);
                if (stop_early && !res.ok) return 1;
            }
    std::printf("%d/%d cases ok\n", runs - failures, runs);
    return failures != 0;
}
