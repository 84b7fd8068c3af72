/*
 * Shared pieces of the gaussskip kernels: the argument block every kernel takes (mirrored
 * byte for byte by `GsArgs` in src/backend/cuda/args.rs), element conversions, the noise-level
 * coefficients of SPEC §4 (the same expressions as src/noise.rs), and a bounds-checked tile
 * loader that moves 16-byte vectors where the layout allows and single elements elsewhere.
 *
 * Layouts (all row-major):
 *   x        (batch, dim)              XT = float | __half | __nv_bfloat16
 *   out      (slabs * batch, dim)      XT, slab after slab
 *   per component (GsComponent): mean (dim) float, eigvecs (rank, dim) UT = __half (default) |
 *            float with row k = u_k, eigvals (rank) double, its residual variance
 * Rows are processed in groups of one component (a call with one component for all rows is
 * one group); q rows are ordered group by group, and within a group slab by slab:
 *   q row of (slab s, group g, row p of the group) = g.first * slabs + s * g.count + p.
 *   part     (splits, rowpad, rpad)    float, launch 1's split-K partial projections; then
 *            (splits2, rowpad2, cpad)  launch 2's split-K partial outputs (same buffer), by
 *                                      the launch's global row tile
 *   q        (slabs * batch, rq)       UT, weighted projections P .* W; with f16 eigenvectors
 *                                      each row's 64-mode tile t holds (P .* W) * 2^-qexp
 *   qexp     (slabs * batch, mode_tiles)  int, those power-of-two exponents (f16 path)
 *
 * Grids are flat over tiles so that no dimension meets the 65535 limit of grid y/z:
 * blockIdx.x = column tile * row tiles + row tile, blockIdx.z = split.
 */
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define GS_THREADS 128
#define GS_INLINE_LEVELS 16

/* Operation kinds; numbers match `OpKind` in src/backend/cuda/args.rs. */
#define GS_OP_SKIP 0
#define GS_OP_DENOISE 1
#define GS_OP_SKIP_TRAJ 2
#define GS_OP_X0_TRAJ 3

struct GsLevel {
    double alpha, sigma;
};

/* One Gaussian of the model (a class component), on the device. */
struct GsComponent {
    const float *mean;     /* (dim) */
    const void *eigvecs;   /* (rank, dim), UT */
    const double *eigvals; /* (rank) */
    long long rank;
};
static_assert(sizeof(GsComponent) == 32, "GsComponent must match src/backend/cuda/args.rs");

/* The rows of one component in a call: positions first .. first + count - 1 of the call's row
 * order (rows sorted by component), the first row tile of each launch that covers them, and
 * the residual variance the launcher chose for the call (the model's, or for a full-rank
 * component the one that keeps the precision bound; see src/backend/cuda/precision.rs). */
struct GsGroup {
    long long first, count, tile1, tile2;
    long long component;
    double residual_var;
};
static_assert(sizeof(GsGroup) == 48, "GsGroup must match src/backend/cuda/args.rs");

struct GsArgs {
    const void *x;
    void *out;
    const GsComponent *components; /* the model's components */
    const GsGroup *groups;         /* NULL: one group, every row with component `component` */
    const long long *order;        /* row order: position -> row of x (NULL: identity) */
    const int *tile_group1;        /* launch 1 row tile -> group (with groups) */
    const int *tile_group2;        /* launch 2 row tile -> group (with groups) */
    float *part;
    void *q;
    int *qexp;
    unsigned int *counters;
    const GsLevel *from_table; /* per-row source levels, or NULL: use `from` */
    const GsLevel *to_table;   /* targets: per row (to_per_row) or per slab; NULL: use `to` */
    long long batch, dim, rank, rq, rpad, rowpad; /* rank: the largest component rank */
    long long cpad, rowpad2;                     /* launch 2's padded tile grid (columns, rows) */
    long long row_tiles1, row_tiles2;            /* row tiles of launch 1 and launch 2 */
    int kind, slabs, splits, to_per_row;
    int splits2, mode_tiles;
    long long component; /* without groups: every row's component and its residual variance */
    double residual_var;
    GsLevel from;
    GsLevel to[GS_INLINE_LEVELS];
    long long keep_eigvecs; /* version 2: the eigenvectors fit in L2; launch 1 keeps them there */
};
static_assert(sizeof(GsArgs) == 504, "GsArgs must match src/backend/cuda/args.rs");

/* The group a block's row tile belongs to, with its component. */
struct GsGroupView {
    GsComponent c;
    long long first, count, tile0;
    double resid;
};

__device__ __forceinline__ GsGroupView gs_group(const GsArgs &a, long long row_tile, bool second) {
    if (!a.groups) return GsGroupView{a.components[a.component], 0, a.batch, 0, a.residual_var};
    const GsGroup g = a.groups[(second ? a.tile_group2 : a.tile_group1)[row_tile]];
    return GsGroupView{a.components[g.component], g.first, g.count, second ? g.tile2 : g.tile1, g.residual_var};
}

/* The row of x at position `pos` of the call's row order. */
__device__ __forceinline__ long long gs_source_row(const GsArgs &a, long long pos) {
    return a.order ? a.order[pos] : pos;
}

/* ---- element conversions ---- */
__device__ __forceinline__ float gs_to_f32(float v) { return v; }
__device__ __forceinline__ float gs_to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float gs_to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T gs_from_f32(float v);
template <> __device__ __forceinline__ float gs_from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half gs_from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 gs_from_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

/* ---- noise levels and coefficients (SPEC §4; src/noise.rs holds the same formulas) ---- */

/* Level a row jumps from (skip, trajectories; unused by denoise). */
__device__ __forceinline__ GsLevel gs_from_level(const GsArgs &a, long long row) {
    return a.from_table ? a.from_table[row] : a.from;
}

/* Target level of (slab, row): denoise's level, the skip's target, a trajectory's level. */
__device__ __forceinline__ GsLevel gs_to_level(const GsArgs &a, int slab, long long row) {
    if (a.to_table) return a.to_per_row ? a.to_table[row] : a.to_table[slab];
    return a.to[slab];
}

/* sqrt(alpha^2 lambda + sigma^2), in the precision of T. */
template <typename T> __device__ __forceinline__ T gs_marginal_std(T alpha, T sigma, T lambda) {
    return sqrt(alpha * alpha * lambda + sigma * sigma);
}

/* alpha lambda / s^2, and 0 where s^2 = 0 (noise.rs: `denoise_gain`). */
template <typename T> __device__ __forceinline__ T gs_denoise_gain(T alpha, T sigma, T lambda) {
    T s2 = alpha * alpha * lambda + sigma * sigma;
    return s2 > T(0) ? alpha * lambda / s2 : T(0);
}

/* Gain of a direction of variance `lambda` for one output: skip g = s(t)/s(s), denoise h(t),
 * x0 along the jump h(t) g. The per-mode weight is gain(lambda_k) - gain(residual_var). */
template <typename T>
__device__ __forceinline__ T gs_gain(int kind, GsLevel from, GsLevel to, T lambda) {
    T ta = T(to.alpha), ts = T(to.sigma);
    if (kind == GS_OP_DENOISE) return gs_denoise_gain(ta, ts, lambda);
    T g = gs_marginal_std(ta, ts, lambda) / gs_marginal_std(T(from.alpha), T(from.sigma), lambda);
    return kind == GS_OP_X0_TRAJ ? gs_denoise_gain(ta, ts, lambda) * g : g;
}

/* Per-row shift c (y = x - c mean): the source alpha, or the denoise level's alpha. */
__device__ __forceinline__ double gs_row_c(const GsArgs &a, long long row) {
    return a.kind == GS_OP_DENOISE ? gs_to_level(a, 0, row).alpha : gs_from_level(a, row).alpha;
}

/* Output slab `slab` of batch row `row`: the mean coefficient a and the off-subspace gain b for
 * a component of residual variance `resid`. */
__device__ __forceinline__ void gs_row_ab(const GsArgs &a, int slab, long long row, double resid, double *ca,
                                          double *cb) {
    GsLevel from = gs_from_level(a, row), to = gs_to_level(a, slab, row);
    *ca = (a.kind == GS_OP_SKIP || a.kind == GS_OP_SKIP_TRAJ) ? to.alpha : 1.0;
    *cb = gs_gain<double>(a.kind, from, to, resid);
}

/* ---- tiles ---- */

/* A ROWS x COLS tile of a row-major global matrix (leading dimension ld, nrows x ncols valid),
 * staged through registers: `load` issues the global reads (zero outside the matrix), `store`
 * writes them to shared memory with leading dimension LDS. 16-byte vectors when `vec` (the
 * caller checked base alignment and ld % V == 0), single elements otherwise. */
template <typename T, int ROWS, int COLS, int LDS> struct GsTile {
    static constexpr int V = 16 / sizeof(T);
    static constexpr int VPR = COLS / V; /* vectors per tile row */
    static constexpr int PER = ROWS * VPR / GS_THREADS;
    static_assert(COLS % V == 0 && (ROWS * VPR) % GS_THREADS == 0, "tile must split evenly");
    union Vec {
        uint4 u;
        T e[V];
    };
    Vec reg[PER];

    __device__ __forceinline__ void load(const T *g, long long ld, long long row0, long long col0,
                                         long long nrows, long long ncols, bool vec) {
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            int v = threadIdx.x + i * GS_THREADS;
            long long gr = row0 + v / VPR, gc = col0 + (v % VPR) * V;
            if (vec && gr < nrows && gc + V <= ncols) {
                reg[i].u = __ldg(reinterpret_cast<const uint4 *>(g + gr * ld + gc));
            } else {
#pragma unroll
                for (int e = 0; e < V; ++e)
                    reg[i].e[e] = (gr < nrows && gc + e < ncols) ? g[gr * ld + gc + e] : gs_from_f32<T>(0.f);
            }
        }
    }

    __device__ __forceinline__ void store(T *s) const {
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            int v = threadIdx.x + i * GS_THREADS;
            T *dst = s + (v / VPR) * LDS + (v % VPR) * V;
            if constexpr ((LDS * sizeof(T)) % 16 == 0) {
                *reinterpret_cast<uint4 *>(dst) = reg[i].u;
            } else {
#pragma unroll
                for (int e = 0; e < V; ++e) dst[e] = reg[i].e[e];
            }
        }
    }
};

/* Whether 16-byte vector loads are legal on a row-major matrix of T with leading dimension ld. */
template <typename T> __device__ __forceinline__ bool gs_vec_ok(const void *base, long long ld) {
    return (reinterpret_cast<uintptr_t>(base) % 16 == 0) && (ld % (16 / sizeof(T)) == 0);
}

/* Power-of-two scaling that keeps f16 intermediates in range by construction: for the largest
 * magnitude m of a group of values, the exponent e with m * 2^-e < 1 (frexp), clamped so that
 * 2^e and 2^-e are normal floats; 0 for m = 0. Scaling by 2^-e is exact (no rounding). */
__device__ __forceinline__ int gs_exponent(float m) {
    if (!(m > 0.f) || !isfinite(m)) return 0;
    int e;
    frexpf(m, &e);
    return e < -120 ? -120 : (e > 120 ? 120 : e);
}

/* Largest |value| of a row, accumulated in shared memory: non-negative floats order like their
 * bit patterns, so an unsigned atomicMax on the bits is a float max. */
__device__ __forceinline__ void gs_max_abs(unsigned int *slot, float v) {
    atomicMax(slot, __float_as_uint(fabsf(v)));
}
