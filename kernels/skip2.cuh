/*
 * Version 2 of the two launches (kernels gs2_*; the default, version 1 in skip.cu stays
 * selectable at run time). Same operations, arguments, scratch layout, split-K meeting protocol,
 * f16 range scaling and epilogues as version 1 (the shared functions of skip.cu); what differs
 * is how the operands reach the multiply:
 *
 * - A ST-stage cp.async pipeline in dynamic shared memory: each stage holds one chunk of the
 *   eigenvector tile and the raw chunk of the row operand (x in launch 1, q in launch 2); ST - 1
 *   chunks are in flight while one is multiplied. With 8-9 KB of eigenvectors per stage and 2-3
 *   resident blocks, 48-80 KB of eigenvectors are in flight per multiprocessor (the memory needs
 *   ~3 MB in flight device-wide at 3 TB/s and ~1 us latency).
 * - Every load is a 16-byte vector where the layout allows (x and q included, by cp.async); the
 *   raw x/q chunk is turned into the f16 (or f32) operand in shared memory: y = (x - c mean)
 *   2^-e in launch 1, q brought to the row exponent in launch 2, exactly as version 1 does it.
 * - The split-K reduction moves 16-byte vectors and keeps the loads of several splits in
 *   flight, in the same fixed split order (deterministic, same sums as version 1).
 * - L2 priorities: with a.keep_eigvecs (the launcher sets it when the call's eigenvectors fit
 *   comfortably in L2) launch 1 marks the eigenvectors evict-last and launch 2 reads them as
 *   last use, so they come from memory once per call instead of twice.
 *
 * Loop of one block over its chunks c = 0 .. n-1 (stage c % ST):
 *   prologue: issue chunks 0 .. ST-2, one commit group each
 *   wait until chunk c has landed (ST-2 groups may stay in flight); barrier (every thread's
 *   copies visible, chunk c-1 consumed by everyone); issue chunk c+ST-1 into the stage chunk
 *   c-1 used; convert the raw row chunk; barrier; multiply.
 * Tile shapes and warp layout are version 1's (BM x 64, 128 threads, WMMA m16n16k16 with f16
 * eigenvectors, SIMT FMAs with f32 ones); leading dimensions are multiples of 16 bytes so that
 * every cp.async destination is aligned.
 */
#pragma once

#include "pipeline.cuh"

#ifdef GS_EMULATION
#define GS_DYN_SMEM gs_emu_smem
#else
extern __shared__ __align__(128) unsigned char gs_dyn_smem[];
#define GS_DYN_SMEM gs_dyn_smem
#endif

template <typename UT> struct GsShape2;
template <> struct GsShape2<__half> {
    static constexpr bool TC = true;
    static constexpr int BK = 64;
    static constexpr int LDK = BK + 8;
    static constexpr int LDN = GS_BN + 8;
};
template <> struct GsShape2<float> {
    static constexpr bool TC = false;
    static constexpr int BK = 32;
    static constexpr int LDK = BK + 4; /* 16-byte rows; a 2-way bank conflict on column reads */
    static constexpr int LDN = GS_BN + 4;
};

/* Issues the copies of a ROWS x COLS tile of a row-major global matrix g (leading dimension
 * ld, nrows x ncols valid) into shared s (leading dimension LDS): 16-byte cp.async where `vec`
 * (base aligned, ld % V == 0) and the vector is wholly inside or wholly outside the matrix
 * (zero fill), element by element (synchronous) otherwise. */
template <typename T, int ROWS, int COLS, int LDS>
__device__ __forceinline__ void gs2_tile(T *s, const T *g, long long ld, long long row0, long long col0,
                                         long long nrows, long long ncols, bool vec, uint64_t policy) {
    constexpr int V = 16 / sizeof(T), VPR = COLS / V;
    static_assert(COLS % V == 0 && (LDS * sizeof(T)) % 16 == 0, "tile rows must be whole 16-byte vectors");
    for (int v = threadIdx.x; v < ROWS * VPR; v += GS_THREADS) {
        const int r = v / VPR, c = (v % VPR) * V;
        const long long gr = row0 + r, gc = col0 + c;
        T *dst = s + r * LDS + c;
        const bool full = gr < nrows && gc + V <= ncols, empty = gr >= nrows || gc >= ncols;
        if (vec && (full || empty)) {
            gs_cp16(dst, full ? g + gr * ld + gc : g, full, policy);
        } else {
#pragma unroll
            for (int e = 0; e < V; ++e)
                dst[e] = (gr < nrows && gc + e < ncols) ? g[gr * ld + gc + e] : gs_from_f32<T>(0.f);
        }
    }
}

/* The raw BM x BK chunk of x at columns k0.. into shared s ([BM][BK]): row m is row row_src[m]
 * of x (-1: none, zero fill); same vector rule as gs2_tile. */
template <typename XT, int BM, int BK>
__device__ __forceinline__ void gs2_x_tile(XT *s, const XT *x, long long dim, const long long *row_src, long long k0,
                                           long long kend, bool vec, uint64_t policy) {
    constexpr int V = 16 / sizeof(XT), VPR = BK / V;
    for (int v = threadIdx.x; v < BM * VPR; v += GS_THREADS) {
        const int m = v / VPR, c = (v % VPR) * V;
        const long long r = row_src[m], k = k0 + c;
        XT *dst = s + m * BK + c;
        const bool full = r >= 0 && k + V <= kend, empty = r < 0 || k >= kend;
        if (vec && (full || empty)) {
            gs_cp16(dst, full ? x + r * dim + k : x, full, policy);
        } else {
#pragma unroll
            for (int e = 0; e < V; ++e) dst[e] = (r >= 0 && k + e < kend) ? x[r * dim + k + e] : gs_from_f32<XT>(0.f);
        }
    }
}

/* Launch 1's operand from the raw x chunk: y = (x - c mean) * 2^-row_e (f16 path), zero past
 * the rows and columns. Eight consecutive columns per thread and step. */
template <typename XT, typename UT, int BM, typename S>
__device__ __forceinline__ void gs2_form_y(UT *ys, const XT *xs, const float *mean, const float *row_c, const int *row_e,
                                           const long long *row_src, long long k0, long long kend) {
    constexpr int G = 8, GPR = S::BK / G;
    for (int v = threadIdx.x; v < BM * GPR; v += GS_THREADS) {
        const int m = v / GPR, kk = (v % GPR) * G;
        const bool row = row_src[m] >= 0;
#pragma unroll
        for (int e = 0; e < G; ++e) {
            const long long k = k0 + kk + e;
            float y = (row && k < kend) ? gs_to_f32(xs[m * S::BK + kk + e]) - row_c[m] * __ldg(mean + k) : 0.f;
            if constexpr (S::TC) y = ldexpf(y, -row_e[m]);
            ys[m * S::LDK + kk + e] = gs_from_f32<UT>(y);
        }
    }
}

/* Launch 2's operand from the raw q chunk of 64-mode tile t (q rows r0.., those below rows_end
 * exist): on the f16 path each row brought from its tile exponent to the row exponent row_e
 * (>= it), a factor 2^-delta <= 1, as version 1's gs_store_q. */
template <typename UT, int BM, typename S>
__device__ __forceinline__ void gs2_form_q(UT *qs, const UT *raw, const GsArgs &a, long long r0, long long rows_end,
                                           long long t, const int *row_e) {
    constexpr int G = 8, GPR = S::BK / G;
    for (int v = threadIdx.x; v < BM * GPR; v += GS_THREADS) {
        const int m = v / GPR, kk = (v % GPR) * G;
        float f = 1.f;
        if constexpr (S::TC) {
            const int delta = r0 + m < rows_end ? __ldg(a.qexp + (r0 + m) * a.mode_tiles + t) - row_e[m] : 0;
            f = ldexpf(1.f, delta);
        }
#pragma unroll
        for (int e = 0; e < G; ++e) qs[m * S::LDK + kk + e] = gs_from_f32<UT>(gs_to_f32(raw[m * S::BK + kk + e]) * f);
    }
}

/* Version 1's split-K meeting point (gs_split_reduce) with 16-byte vectors: partial tiles are
 * published with 16-byte L2 stores; the last block of the tile sums them in split order, its
 * own partial taken from shared memory, with the loads of several splits in flight. */
template <int BM>
__device__ __forceinline__ bool gs2_split_reduce(float *cs, float *part, unsigned int *counter, int splits,
                                                 long long rowpad, long long cpad, long long row0, long long col0) {
    __shared__ bool last;
    constexpr int V4 = GS_BN / 4;
    const long long zstride = rowpad * cpad;
    for (int e = threadIdx.x; e < BM * V4; e += GS_THREADS) {
        const int m = e / V4, n = (e % V4) * 4;
        const float4 v = *reinterpret_cast<const float4 *>(cs + m * GS_LDC + n);
        __stcg(reinterpret_cast<float4 *>(part + blockIdx.z * zstride + (row0 + m) * cpad + col0 + n), v);
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == (unsigned)splits - 1;
    __syncthreads();
    if (!last) return false;
    __threadfence();
    for (int e = threadIdx.x; e < BM * V4; e += GS_THREADS) {
        const int m = e / V4, n = (e % V4) * 4;
        float4 *c = reinterpret_cast<float4 *>(cs + m * GS_LDC + n);
        const float4 own = *c;
        const float *p = part + (row0 + m) * cpad + col0 + n;
        float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
        for (int z = 0; z < splits; ++z) {
            const float4 v = z == (int)blockIdx.z ? own : __ldcg(reinterpret_cast<const float4 *>(p + z * zstride));
            s.x += v.x;
            s.y += v.y;
            s.z += v.z;
            s.w += v.w;
        }
        *c = s;
    }
    if (threadIdx.x == 0) *counter = 0u; /* every split has arrived: ready for the next call */
    __syncthreads();
    return true;
}

/* Dynamic shared memory of launch 1: ST stages of (eigenvector tile [64][LDK], raw x [BM][BK]),
 * then the operand ys [BM][LDK]; after the loop the f32 tile cs [BM][GS_LDC] reuses the stages. */
template <typename XT, typename UT, int BM, int ST> struct Gs2ProjectSmem {
    using S = GsShape2<UT>;
    static constexpr int E = GS_BN * S::LDK * (int)sizeof(UT);
    static constexpr int X = BM * S::BK * (int)sizeof(XT);
    static constexpr int STAGE = E + X;
    static constexpr int Y = BM * S::LDK * (int)sizeof(UT);
    static constexpr int C = BM * GS_LDC * (int)sizeof(float);
    static constexpr int BYTES = ST * STAGE + Y > C ? ST * STAGE + Y : C;
    static_assert(E % 128 == 0 && X % 128 == 0, "stages stay 128-byte aligned");
};

template <typename XT, typename UT, int BM, int ST> __device__ __forceinline__ void gs2_project(const GsArgs &a) {
    using L = Gs2ProjectSmem<XT, UT, BM, ST>;
    using S = typename L::S;
    static_assert(ST >= 2, "at least two stages");
    unsigned char *smem = GS_DYN_SMEM;
    __shared__ float row_c[BM];
    __shared__ int row_e[BM];            /* f16 path: the row's power-of-two scale (y, then q) */
    __shared__ unsigned int row_max[BM]; /* f16 path: bits of the row's largest |value| */
    __shared__ long long row_src[BM];    /* the row of x, -1 past the group */
    UT *ys = reinterpret_cast<UT *>(smem + ST * L::STAGE);
    float *cs = reinterpret_cast<float *>(smem);

    const long long dim = a.dim;
    const long long rt = blockIdx.x % a.row_tiles1, mt = blockIdx.x / a.row_tiles1;
    const GsGroupView g = gs_group(a, rt, false);
    const long long rank = g.c.rank, n0 = mt * GS_BN;
    if (n0 >= rank) return; /* a component with fewer modes than the largest: no such tile */
    const long long row0 = (rt - g.tile0) * BM;
    const long long chunks = (dim + S::BK - 1) / S::BK, per_split = (chunks + a.splits - 1) / a.splits;
    const long long kbeg = blockIdx.z * per_split * S::BK;
    const long long kend = min(dim, kbeg + per_split * S::BK);
    const long long n = kend > kbeg ? (kend - kbeg + S::BK - 1) / S::BK : 0;
    const XT *x = static_cast<const XT *>(a.x);
    const UT *eig = static_cast<const UT *>(g.c.eigvecs);
    const bool evec = gs_vec_ok<UT>(eig, dim), xvec = gs_vec_ok<XT>(x, dim);
    const uint64_t epol = gs_l2_policy(a.keep_eigvecs ? GS_L2_LAST : GS_L2_NORMAL);
    const uint64_t xpol = gs_l2_policy(GS_L2_NORMAL);
    gs_project_rows<XT, S::TC, BM>(a, g, row0, kbeg, kend, row_c, row_e, row_max, row_src);

    auto issue = [&](long long c) {
        if (c < n) {
            unsigned char *st = smem + (c % ST) * L::STAGE;
            const long long k0 = kbeg + c * S::BK;
            gs2_tile<UT, GS_BN, S::BK, S::LDK>(reinterpret_cast<UT *>(st), eig, dim, n0, k0, rank, kend, evec, epol);
            gs2_x_tile<XT, BM, S::BK>(reinterpret_cast<XT *>(st + L::E), x, dim, row_src, k0, kend, xvec, xpol);
        }
        gs_cp_commit(); /* one group per chunk, empty past the end, so the wait count holds */
    };
    for (int c = 0; c < ST - 1; ++c) issue(c);
    GsAcc<UT, BM, S> acc;
    acc.zero();
    for (long long c = 0; c < n; ++c) {
        gs_cp_wait<ST - 2>();
        __syncthreads(); /* chunk c visible to all; chunk c - 1 consumed by all */
        issue(c + ST - 1);
        const unsigned char *st = smem + (c % ST) * L::STAGE;
        gs2_form_y<XT, UT, BM, S>(ys, reinterpret_cast<const XT *>(st + L::E), g.c.mean, row_c, row_e, row_src,
                                  kbeg + c * S::BK, kend);
        __syncthreads();
        acc.template mma<false>(ys, reinterpret_cast<const UT *>(st));
    }
    gs_cp_wait<0>();
    __syncthreads(); /* every product done before cs overwrites the stages */
    acc.store(cs);
    __syncthreads();
    if constexpr (S::TC) gs_unscale_rows<BM>(cs, row_e);
    if (a.splits > 1 &&
        !gs2_split_reduce<BM>(cs, a.part, a.counters + blockIdx.x, a.splits, a.rowpad, a.rpad, rt * BM, n0))
        return;
    gs_write_q<UT, BM>(a, g, cs, row_src, row_e, row_max, row0, mt);
}

/* Dynamic shared memory of launch 2: ST stages of (eigenvector tile [BK][LDN], raw q [BM][BK]),
 * then the operand qs [BM][LDK]; cs reuses the stages after the loop. */
template <typename UT, int BM, int ST> struct Gs2BackprojectSmem {
    using S = GsShape2<UT>;
    static constexpr int E = S::BK * S::LDN * (int)sizeof(UT);
    static constexpr int Q = BM * S::BK * (int)sizeof(UT);
    static constexpr int STAGE = E + Q;
    static constexpr int QS = BM * S::LDK * (int)sizeof(UT);
    static constexpr int C = BM * GS_LDC * (int)sizeof(float);
    static constexpr int BYTES = ST * STAGE + QS > C ? ST * STAGE + QS : C;
    static_assert(E % 128 == 0 && Q % 128 == 0, "stages stay 128-byte aligned");
};

template <typename XT, typename UT, int BM, int ST> __device__ __forceinline__ void gs2_backproject(const GsArgs &a) {
    using L = Gs2BackprojectSmem<UT, BM, ST>;
    using S = typename L::S;
    static_assert(ST >= 2, "at least two stages");
    static_assert(!S::TC || S::BK == GS_BN, "a launch-2 chunk is one launch-1 mode tile");
    unsigned char *smem = GS_DYN_SMEM;
    __shared__ float row_a[BM], row_b[BM], row_c[BM];
    __shared__ int row_e[BM];         /* f16 path: the largest q tile exponent of the row in this split */
    __shared__ long long row_src[BM]; /* the row of x, -1 past the group */
    __shared__ long long row_out[BM]; /* the row of out */
    UT *qs = reinterpret_cast<UT *>(smem + ST * L::STAGE);
    float *cs = reinterpret_cast<float *>(smem);

    const long long dim = a.dim;
    const long long rt = blockIdx.x % a.row_tiles2, n0 = (blockIdx.x / a.row_tiles2) * GS_BN;
    const GsGroupView g = gs_group(a, rt, true);
    const long long rank = g.c.rank, rows = (long long)a.slabs * g.count;
    const long long m0 = (rt - g.tile0) * BM, qbase = g.first * a.slabs;
    const UT *q = static_cast<const UT *>(a.q);
    const UT *eig = static_cast<const UT *>(g.c.eigvecs);
    const bool qvec = gs_vec_ok<UT>(q, a.rq), evec = gs_vec_ok<UT>(eig, dim);
    const uint64_t epol = gs_l2_policy(a.keep_eigvecs ? GS_L2_FIRST : GS_L2_NORMAL);
    const uint64_t qpol = gs_l2_policy(GS_L2_NORMAL);
    const long long chunks = (a.rank + S::BK - 1) / S::BK, per_split = (chunks + a.splits2 - 1) / a.splits2;
    const long long kbeg = blockIdx.z * per_split * S::BK;
    const long long kend = min(rank, kbeg + per_split * S::BK);
    const long long n = kend > kbeg ? (kend - kbeg + S::BK - 1) / S::BK : 0;
    gs_backproject_rows<S::TC, BM>(a, g, m0, rows, kbeg, kend, row_a, row_b, row_c, row_e, row_src, row_out);

    auto issue = [&](long long c) {
        if (c < n) {
            unsigned char *st = smem + (c % ST) * L::STAGE;
            const long long k0 = kbeg + c * S::BK;
            gs2_tile<UT, S::BK, GS_BN, S::LDN>(reinterpret_cast<UT *>(st), eig, dim, k0, n0, kend, dim, evec, epol);
            gs2_tile<UT, BM, S::BK, S::BK>(reinterpret_cast<UT *>(st + L::E), q, a.rq, qbase + m0, k0, qbase + rows,
                                          kend, qvec, qpol);
        }
        gs_cp_commit();
    };
    for (int c = 0; c < ST - 1; ++c) issue(c);
    GsAcc<UT, BM, S> acc;
    acc.zero();
    for (long long c = 0; c < n; ++c) {
        gs_cp_wait<ST - 2>();
        __syncthreads(); /* chunk c visible to all; chunk c - 1 consumed by all */
        issue(c + ST - 1);
        const unsigned char *st = smem + (c % ST) * L::STAGE;
        gs2_form_q<UT, BM, S>(qs, reinterpret_cast<const UT *>(st + L::E), a, qbase + m0, qbase + rows,
                              (kbeg + c * S::BK) / GS_BN, row_e);
        __syncthreads();
        acc.template mma<true>(qs, reinterpret_cast<const UT *>(st));
    }
    gs_cp_wait<0>();
    __syncthreads();
    acc.store(cs);
    __syncthreads();
    if constexpr (S::TC) gs_unscale_rows<BM>(cs, row_e);
    if (a.splits2 > 1 &&
        !gs2_split_reduce<BM>(cs, a.part, a.counters + blockIdx.x, a.splits2, a.rowpad2, a.cpad, rt * BM, n0))
        return;
    gs_write_out<XT, BM>(a, g, cs, row_a, row_b, row_c, row_src, row_out, n0);
}

/* ---- entry points: gs2_{project,backproject}_<x dtype>x_<eigvec dtype>u_bm<rows>, each with
 * its dynamic shared memory in bytes as the constant <name>_smem (read by the launcher when the
 * module loads). Stages: 4 for 32-row tiles (three blocks per multiprocessor), 3 for taller
 * ones (their registers allow one or two blocks). ---- */
#define GS2_PROJECT(XN, XT, UN, UT, BM, ST, MINB)                                                                   \
    extern "C" {                                                                                                   \
    __constant__ unsigned int gs2_project_##XN##x_##UN##u_bm##BM##_smem = Gs2ProjectSmem<XT, UT, BM, ST>::BYTES;    \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(GS_THREADS, MINB)                                                 \
        gs2_project_##XN##x_##UN##u_bm##BM(const __grid_constant__ GsArgs a) {                                      \
        gs2_project<XT, UT, BM, ST>(a);                                                                             \
    }
#define GS2_BACKPROJECT(XN, XT, UN, UT, BM, ST, MINB)                                                               \
    extern "C" {                                                                                                   \
    __constant__ unsigned int gs2_backproject_##XN##x_##UN##u_bm##BM##_smem = Gs2BackprojectSmem<UT, BM, ST>::BYTES; \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(GS_THREADS, MINB)                                                 \
        gs2_backproject_##XN##x_##UN##u_bm##BM(const __grid_constant__ GsArgs a) {                                  \
        gs2_backproject<XT, UT, BM, ST>(a);                                                                         \
    }
#define GS2_KERNELS(XN, XT, UN, UT)                                                                                 \
    GS2_PROJECT(XN, XT, UN, UT, 32, 4, 3)                                                                           \
    GS2_PROJECT(XN, XT, UN, UT, 64, 3, 2)                                                                           \
    GS2_BACKPROJECT(XN, XT, UN, UT, 32, 4, 3)                                                                       \
    GS2_BACKPROJECT(XN, XT, UN, UT, 128, 3, 1)

GS2_KERNELS(f32, float, f16, __half)
GS2_KERNELS(f16, __half, f16, __half)
GS2_KERNELS(bf16, __nv_bfloat16, f16, __half)
GS2_KERNELS(f32, float, f32, float)
GS2_KERNELS(f16, __half, f32, float)
GS2_KERNELS(bf16, __nv_bfloat16, f32, float)
