/*
 * skip.cu: every operation of SPEC §4 (skip, denoise, skip and x0 trajectories) in two launches.
 * This file is version 1 (entry points gs_*) and the pieces both versions share (row setup,
 * weights and output epilogues, tiles, accumulators); version 2 (gs2_*, the default: a cp.async
 * pipeline) is in skip2.cuh, included at the end. The launcher picks the version at run time.
 *
 *   out = a mean + b y + (P .* W) E,   y = x - c mean,   P = Y E^T
 *
 * x: (batch, dim) row-major, XT in {f32, f16, bf16}; out: (slabs * batch, dim), slab after slab;
 * eigvecs E: (rank, dim) row-major (row k = u_k), UT in {f16 (default), f32}; mean: (dim) f32;
 * eigvals: (rank) f64. Per-row scalars a, b, c and per-mode weights W come from the noise levels
 * in GsArgs (common.cuh), evaluated with the expressions of src/noise.rs.
 *
 * Launch 1, gs_project_*: P = Y E^T as a (batch x dim) . (dim x rank) product, split along dim.
 *   grid (ceil(batch/BM) * ceil(rank/64), 1, splits), 128 threads (flat tile index, row tile
 *   fastest). A block owns a BM x 64 tile of P
 *   (rows x modes) over one dim range; it forms the rows y on the fly from x and mean, streams
 *   its 64 eigenvector rows in chunks of BK, and accumulates in f32. Split-K keeps batch 1 on
 *   hundreds of blocks so the eigenvectors stream at full bandwidth. Partial tiles go to
 *   `part`; the last block of a tile to finish (a counter per tile, reset by that block) sums
 *   the splits in a fixed order (deterministic), multiplies by the weights W of every output
 *   slab and writes Q = P .* W to `q` (slabs * batch, rank).
 * Launch 2, gs_backproject_*: out = a mean + b y + Q E, grid (ceil(slabs*batch/BM) * ceil(dim/64),
 *   1, splits2), 128 threads. A block owns a BM x 64 tile of out (rows x dim columns) over one range
 *   of modes, streaming those 64 columns of the eigenvectors in chunks of BK modes. With
 *   splits2 > 1 the partial tiles meet in `part` the same way (last block sums in order); the
 *   block that completes a tile applies the epilogue a mean + b y in f32 and writes out.
 *
 * Arithmetic: with f16 eigenvectors, y and Q are rounded to f16 and multiplied on the tensor
 *   cores (WMMA m16n16k16, HMMA in SASS) with f32 accumulation; b y and a mean stay f32 (SPEC §5:
 *   <= 2e-3 relative). Every f16 intermediate is in range by construction: launch 1 scales each
 *   row of y by a power of two so that its largest |y| over the block's dim range is below 1,
 *   and undoes it on the f32 partial products; it stores each row's 64 weighted projections of
 *   a mode tile scaled by a power of two (exponent in qexp) so that they are below 1; launch 2
 *   brings the tiles of a row to the row's largest exponent while staging them and applies that
 *   exponent to its f32 products. Power-of-two scaling is exact, so accuracy is unchanged for
 *   every input; any finite input with |y| < 2^120 works. With f32 eigenvectors every product is
 *   an f32 FMA (<= 1e-5 relative).
 * Warps: f16 path, the 4 warps form a (BM/32) x (4/(BM/32)) grid, each owning 32 rows and
 *   64/(4/(BM/32)) columns: BM = 32, 2 fragments; BM = 64, 4; BM = 128, 8. f32 path: thread (tm, tn) of an
 *   8 x 16 grid owns rows tm*BM/8.. (BM/8 of them) and columns tn, tn+16, tn+32, tn+48.
 * Components: a model may hold several Gaussians (one per class). The rows of a call are taken
 *   in groups of one component (positions first .. first+count-1 of the call's row order, rows
 *   sorted by component, table `order`); every row tile of either launch lies in one group
 *   (tables tile_group1/2) and uses that component's mean, eigenvectors, eigenvalues and
 *   residual variance. A call with one component for every row is one group and needs no
 *   table (capturable). Mode tiles past a component's rank exit at once.
 * Sizes: any batch, dim, rank <= dim; tiles are bounds-checked (zero fill), 16-byte loads where
 *   the leading dimension allows (dim % 8 == 0 for f16, % 4 for f32), single elements otherwise.
 *
 * Reference: src/reference.rs (f64, the test oracle) and src/backend/cpu.rs (same two products,
 *   same plan) take the same model, levels and rows; tests/cuda.rs compares against the former.
 * Compile line (scripts/build_fatbin.sh; build.rs does the same with the nvcc it finds):
 *   nvcc -fatbin -O3 -std=c++17 -Xptxas -v --Werror all-warnings \
 *        -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
 *        -gencode arch=compute_90,code=compute_90 -o gaussskip.fatbin kernels/skip.cu
 */
#include <mma.h>

#include <type_traits>

#include "common.cuh"

#define GS_BN 64

/* Tile shapes per eigenvector type: BK is the reduction chunk; leading dimensions are padded
 * so WMMA pointers stay 32-byte aligned (f16) or SIMT column reads avoid bank conflicts (f32). */
template <typename UT> struct GsShape;
template <> struct GsShape<__half> {
    static constexpr bool TC = true;
    static constexpr int BK = 64;
    static constexpr int LDK = BK + 8;    /* tiles indexed [row][k] */
    static constexpr int LDN = GS_BN + 8; /* tiles indexed [k][column] */
};
template <> struct GsShape<float> {
    static constexpr bool TC = false;
    static constexpr int BK = 32;
    static constexpr int LDK = BK + 1;
    static constexpr int LDN = GS_BN + 4;
};
#define GS_LDC (GS_BN + 4)

/* Accumulators of one block: a BM x 64 f32 tile, summed on tensor cores or by FMAs, over
 * shared tiles laid out as shape S says (BK, LDK, LDN). */
template <typename UT, int BM, typename S = GsShape<UT>> struct GsAcc {
    static constexpr int WARPS_M = BM / 32, WARPS_N = 4 / WARPS_M, FN = GS_BN / 16 / WARPS_N;
    static constexpr int RM = BM / 8; /* f32 path: rows per thread */
    static_assert(BM == 32 || BM == 64 || BM == 128, "BM is 32, 64 or 128");

    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> frag[2][FN];
    float simt[S::TC ? 1 : RM][4];

    __device__ __forceinline__ void zero() {
        if constexpr (S::TC) {
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < FN; ++j) nvcuda::wmma::fill_fragment(frag[i][j], 0.f);
        } else {
#pragma unroll
            for (int i = 0; i < RM; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) simt[i][j] = 0.f;
        }
    }

    /* acc += A B over one chunk. A: shared [BM][LDK] (rows x k). B: if B_KN, shared [BK][LDN]
     * (k x columns), else shared [64][LDK] (columns x k). */
    template <bool B_KN> __device__ __forceinline__ void mma(const UT *a, const UT *b) {
        const int warp = threadIdx.x / 32;
        if constexpr (S::TC) {
            using namespace nvcuda;
            const int wm = warp / WARPS_N, wn = warp % WARPS_N;
            using BLayout = typename std::conditional<B_KN, wmma::row_major, wmma::col_major>::type;
#pragma unroll
            for (int kk = 0; kk < S::BK; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, BLayout> fb[FN];
#pragma unroll
                for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], a + (wm * 32 + i * 16) * S::LDK + kk, S::LDK);
#pragma unroll
                for (int j = 0; j < FN; ++j) {
                    const int n = (wn * FN + j) * 16;
                    if constexpr (B_KN)
                        wmma::load_matrix_sync(fb[j], b + kk * S::LDN + n, S::LDN);
                    else
                        wmma::load_matrix_sync(fb[j], b + n * S::LDK + kk, S::LDK);
                }
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < FN; ++j) wmma::mma_sync(frag[i][j], fa[i], fb[j], frag[i][j]);
            }
        } else {
            const int tm = threadIdx.x / 16, tn = threadIdx.x % 16;
#pragma unroll 4
            for (int k = 0; k < S::BK; ++k) {
                float bv[4];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int n = tn + 16 * j;
                    bv[j] = B_KN ? b[k * S::LDN + n] : b[n * S::LDK + k];
                }
#pragma unroll
                for (int i = 0; i < RM; ++i) {
                    const float av = a[(tm * RM + i) * S::LDK + k];
#pragma unroll
                    for (int j = 0; j < 4; ++j) simt[i][j] = fmaf(av, bv[j], simt[i][j]);
                }
            }
        }
    }

    /* Writes the tile to shared [BM][GS_LDC]. */
    __device__ __forceinline__ void store(float *c) const {
        if constexpr (S::TC) {
            const int warp = threadIdx.x / 32, wm = warp / WARPS_N, wn = warp % WARPS_N;
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < FN; ++j)
                    nvcuda::wmma::store_matrix_sync(c + (wm * 32 + i * 16) * GS_LDC + (wn * FN + j) * 16, frag[i][j],
                                                    GS_LDC, nvcuda::wmma::mem_row_major);
        } else {
            const int tm = threadIdx.x / 16, tn = threadIdx.x % 16;
#pragma unroll
            for (int i = 0; i < RM; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) c[(tm * RM + i) * GS_LDC + tn + 16 * j] = simt[i][j];
        }
    }
};

/* Rows y = x - c mean of a BM x BK chunk, staged through registers like GsTile: the raw x
 * values are loaded early, y is formed when the chunk is written to shared memory. A thread
 * keeps one column kk of the chunk (so one mean value) and every (128/BK)-th row. */
template <typename XT, typename UT, int BM> struct GsRows {
    using S = GsShape<UT>;
    static constexpr int RSTEP = GS_THREADS / S::BK;
    static constexpr int PER = BM / RSTEP;
    static_assert(GS_THREADS % S::BK == 0 && BM % RSTEP == 0, "rows must split evenly");
    XT reg[PER];

    /* Row m of the tile is row src[m] of x (-1: none). */
    __device__ __forceinline__ void load(const XT *x, long long dim, const long long *src, long long k0,
                                         long long kend) {
        const int mr = threadIdx.x / S::BK;
        const long long k = k0 + threadIdx.x % S::BK;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const long long r = src[mr + i * RSTEP];
            reg[i] = (k < kend && r >= 0) ? x[r * dim + k] : gs_from_f32<XT>(0.f);
        }
    }

    /* y = x - c mean of each row, times 2^-row_e (f16 path; see gs_project). */
    __device__ __forceinline__ void store(UT *s, const float *mean, const float *row_c, const int *row_e,
                                          const long long *src, long long k0, long long kend) const {
        const int mr = threadIdx.x / S::BK, kk = threadIdx.x % S::BK;
        const bool kin = k0 + kk < kend;
        const float mu = kin ? __ldg(mean + k0 + kk) : 0.f;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int m = mr + i * RSTEP;
            float y = (kin && src[m] >= 0) ? gs_to_f32(reg[i]) - row_c[m] * mu : 0.f;
            if constexpr (S::TC) y = ldexpf(y, -row_e[m]);
            s[m * S::LDK + kk] = gs_from_f32<UT>(y);
        }
    }
};

/* Split-K meeting point: every block of a tile publishes its partial tile (shared cs) to
 * part[z][row0 + m][col0 + n]; the last of the `splits` blocks to arrive (per-tile counter)
 * sums all partials in split order into cs, resets the counter for the next call and returns
 * true; the others return false. Standard fence-then-count pattern: each thread fences its
 * own stores before the barrier, the counting thread's atomic follows the barrier. */
template <int BM>
__device__ __forceinline__ bool gs_split_reduce(float *cs, float *part, unsigned int *counter, int splits,
                                                long long rowpad, long long cpad, long long row0, long long col0) {
    __shared__ bool last;
    for (int e = threadIdx.x; e < BM * GS_BN; e += GS_THREADS) {
        const int m = e / GS_BN, n = e % GS_BN;
        part[((long long)blockIdx.z * rowpad + row0 + m) * cpad + col0 + n] = cs[m * GS_LDC + n];
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == (unsigned)splits - 1;
    __syncthreads();
    if (!last) return false;
    __threadfence();
    for (int e = threadIdx.x; e < BM * GS_BN; e += GS_THREADS) {
        const int m = e / GS_BN, n = e % GS_BN;
        float s = 0.f;
        for (int z = 0; z < splits; ++z) s += __ldcg(part + ((long long)z * rowpad + row0 + m) * cpad + col0 + n);
        cs[m * GS_LDC + n] = s;
    }
    if (threadIdx.x == 0) *counter = 0u; /* every split has arrived: ready for the next call */
    __syncthreads();
    return true;
}

/* ---- launch 1: projection, split-K, weights ---- */

/* Weight of mode k in output slab s for batch row r: gain(lambda_k) - gain(residual_var). */
__device__ __forceinline__ float gs_weight(const GsArgs &a, int s, long long r, float lambda, float resid) {
    const GsLevel from = gs_from_level(a, r), to = gs_to_level(a, s, r);
    return gs_gain<float>(a.kind, from, to, lambda) - gs_gain<float>(a.kind, from, to, resid);
}

/* The rows of launch 1's tile (row0.. of its group): source rows, shifts c and, on the f16
 * path, the power of two that brings the largest |y| of each row over [kbeg, kend) below 1.
 * row_e and row_max are reused by gs_write_q. Ends with a barrier. */
template <typename XT, bool TC, int BM>
__device__ __forceinline__ void gs_project_rows(const GsArgs &a, const GsGroupView &g, long long row0, long long kbeg,
                                                long long kend, float *row_c, int *row_e, unsigned int *row_max,
                                                long long *row_src) {
    const XT *x = static_cast<const XT *>(a.x);
    if (threadIdx.x < BM) {
        const long long p = row0 + threadIdx.x;
        const long long r = p < g.count ? gs_source_row(a, g.first + p) : -1;
        row_src[threadIdx.x] = r;
        row_c[threadIdx.x] = r >= 0 ? (float)gs_row_c(a, r) : 0.f;
        row_e[threadIdx.x] = 0;
        row_max[threadIdx.x] = 0u;
    }
    __syncthreads();
    if constexpr (TC) {
        for (int m = 0; m < BM && row_src[m] >= 0; ++m) {
            const XT *xr = x + row_src[m] * a.dim;
            float v = 0.f;
            for (long long k = kbeg + threadIdx.x; k < kend; k += GS_THREADS)
                v = fmaxf(v, fabsf(gs_to_f32(xr[k]) - row_c[m] * __ldg(g.c.mean + k)));
            gs_max_abs(&row_max[m], v);
        }
        __syncthreads();
        if (threadIdx.x < BM) row_e[threadIdx.x] = gs_exponent(__uint_as_float(row_max[threadIdx.x]));
        __syncthreads();
    }
}

/* Q = P .* W of launch 1's finished tile cs (BM rows x 64 modes from n0 = 64 mt, true scale,
 * f32) for every output slab. With f16 eigenvectors each row of the tile is stored times 2^-e,
 * e chosen so that its largest |Q| is below 1, and e goes to qexp. */
template <typename UT, int BM>
__device__ __forceinline__ void gs_write_q(const GsArgs &a, const GsGroupView &g, const float *cs, const long long *row_src,
                                           int *row_e, unsigned int *row_max, long long row0, long long mt) {
    constexpr bool TC = std::is_same<UT, __half>::value;
    UT *q = static_cast<UT *>(a.q);
    const float resid = (float)g.resid;
    const long long qbase = g.first * a.slabs + row0, n0 = mt * GS_BN, rank = g.c.rank;
    for (int s = 0; s < a.slabs; ++s) {
        if constexpr (TC) {
            if (threadIdx.x < BM) row_max[threadIdx.x] = 0u;
            __syncthreads();
            for (int e = threadIdx.x; e < BM * GS_BN; e += GS_THREADS) {
                const int m = e / GS_BN, n = e % GS_BN;
                const long long r = row_src[m], k = n0 + n;
                if (r >= 0 && k < rank)
                    gs_max_abs(&row_max[m], cs[m * GS_LDC + n] * gs_weight(a, s, r, (float)g.c.eigvals[k], resid));
            }
            __syncthreads();
            if (threadIdx.x < BM) {
                row_e[threadIdx.x] = gs_exponent(__uint_as_float(row_max[threadIdx.x]));
                if (row_src[threadIdx.x] >= 0)
                    a.qexp[(qbase + s * g.count + threadIdx.x) * a.mode_tiles + mt] = row_e[threadIdx.x];
            }
            __syncthreads();
        }
        for (int e = threadIdx.x; e < BM * GS_BN; e += GS_THREADS) {
            const int m = e / GS_BN, n = e % GS_BN;
            const long long r = row_src[m], k = n0 + n;
            if (r < 0 || k >= rank) continue;
            float v = cs[m * GS_LDC + n] * gs_weight(a, s, r, (float)g.c.eigvals[k], resid);
            if constexpr (TC) v = ldexpf(v, -row_e[m]);
            q[(qbase + s * g.count + m) * a.rq + k] = gs_from_f32<UT>(v);
        }
        if constexpr (TC) __syncthreads(); /* row_e and row_max are reused by the next slab */
    }
}

/* Undoes the f16 path's row scaling 2^-row_e on the f32 tile cs (launch 1: every row; launch
 * 2: rows with a tile in this split, row_e > -1000). Ends with a barrier. */
template <int BM> __device__ __forceinline__ void gs_unscale_rows(float *cs, const int *row_e) {
    for (int e = threadIdx.x; e < BM * GS_BN; e += GS_THREADS) {
        const int m = e / GS_BN, n = e % GS_BN;
        if (row_e[m] > -1000) cs[m * GS_LDC + n] = ldexpf(cs[m * GS_LDC + n], row_e[m]);
    }
    __syncthreads();
}

template <typename XT, typename UT, int BM> __device__ __forceinline__ void gs_project(const GsArgs &a) {
    using S = GsShape<UT>;
    constexpr int TILE_BYTES = (BM + GS_BN) * S::LDK * (int)sizeof(UT);
    constexpr int C_BYTES = BM * GS_LDC * (int)sizeof(float);
    __shared__ __align__(128) unsigned char smem[TILE_BYTES > C_BYTES ? TILE_BYTES : C_BYTES];
    __shared__ float row_c[BM];
    __shared__ int row_e[BM];              /* f16 path: the row's power-of-two scale (y, then q) */
    __shared__ unsigned int row_max[BM];   /* f16 path: bits of the row's largest |value| */
    __shared__ long long row_src[BM];      /* the row of x, -1 past the group */
    UT *ys = reinterpret_cast<UT *>(smem);
    UT *es = ys + BM * S::LDK;
    float *cs = reinterpret_cast<float *>(smem);

    const long long dim = a.dim;
    const long long rt = blockIdx.x % a.row_tiles1, mt = blockIdx.x / a.row_tiles1;
    const GsGroupView g = gs_group(a, rt, false);
    const long long rank = g.c.rank, n0 = mt * GS_BN;
    if (n0 >= rank) return; /* a component with fewer modes than the largest: no such tile */
    const long long row0 = (rt - g.tile0) * BM; /* first row of the tile within its group */
    const long long chunks = (dim + S::BK - 1) / S::BK, per_split = (chunks + a.splits - 1) / a.splits;
    const long long kbeg = blockIdx.z * per_split * S::BK;
    const long long kend = min(dim, kbeg + per_split * S::BK);
    const XT *x = static_cast<const XT *>(a.x);
    const UT *eig = static_cast<const UT *>(g.c.eigvecs);
    const bool vec = gs_vec_ok<UT>(eig, dim);
    gs_project_rows<XT, S::TC, BM>(a, g, row0, kbeg, kend, row_c, row_e, row_max, row_src);

    GsAcc<UT, BM> acc;
    acc.zero();
    GsRows<XT, UT, BM> rows;
    GsTile<UT, GS_BN, S::BK, S::LDK> etile;
    rows.load(x, dim, row_src, kbeg, kend);
    etile.load(eig, dim, n0, kbeg, rank, kend, vec);
    for (long long k0 = kbeg; k0 < kend; k0 += S::BK) {
        __syncthreads(); /* previous chunk consumed */
        rows.store(ys, g.c.mean, row_c, row_e, row_src, k0, kend);
        etile.store(es);
        __syncthreads();
        if (k0 + S::BK < kend) { /* next chunk's reads in flight during the products */
            rows.load(x, dim, row_src, k0 + S::BK, kend);
            etile.load(eig, dim, n0, k0 + S::BK, rank, kend, vec);
        }
        acc.template mma<false>(ys, es);
    }
    __syncthreads();
    acc.store(cs);
    __syncthreads();
    if constexpr (S::TC) gs_unscale_rows<BM>(cs, row_e); /* back to the true scale, in f32 */

    if (a.splits > 1 &&
        !gs_split_reduce<BM>(cs, a.part, a.counters + blockIdx.x, a.splits, a.rowpad, a.rpad, rt * BM, n0))
        return;
    gs_write_q<UT, BM>(a, g, cs, row_src, row_e, row_max, row0, mt);
}

/* ---- launch 2: weighted back-projection and epilogue ---- */

/* Stages the f16 q chunk of 64-mode tile t (raw in `tile`'s registers; q rows r0 .. of which
 * those below `rows` exist) into shared memory, each row brought from its tile exponent to the
 * row exponent row_e (>= it): a factor 2^-delta <= 1. */
template <int BM, int LDS>
__device__ __forceinline__ void gs_store_q(const GsTile<__half, BM, GS_BN, LDS> &tile, __half *s, const GsArgs &a,
                                           long long r0, long long rows, long long t, const int *row_e) {
    using Tile = GsTile<__half, BM, GS_BN, LDS>;
#pragma unroll
    for (int i = 0; i < Tile::PER; ++i) {
        const int v = threadIdx.x + i * GS_THREADS, m = v / Tile::VPR;
        const int delta = r0 + m < rows ? __ldg(a.qexp + (r0 + m) * a.mode_tiles + t) - row_e[m] : 0;
        const float f = ldexpf(1.f, delta);
        __half *dst = s + m * LDS + (v % Tile::VPR) * Tile::V;
#pragma unroll
        for (int e = 0; e < Tile::V; ++e) dst[e] = __float2half_rn(__half2float(tile.reg[i].e[e]) * f);
    }
}

/* The output rows of launch 2's tile (m0.. of its group, `rows` in all): coefficients a, b, c,
 * source and output rows, and on the f16 path the largest q tile exponent of each row over the
 * modes [kbeg, kend) (row_e; -1000 when the row has none). Ends with a barrier. */
template <bool TC, int BM>
__device__ __forceinline__ void gs_backproject_rows(const GsArgs &a, const GsGroupView &g, long long m0, long long rows,
                                                    long long kbeg, long long kend, float *row_a, float *row_b,
                                                    float *row_c, int *row_e, long long *row_src, long long *row_out) {
    if (threadIdx.x < BM) {
        const long long lm = m0 + threadIdx.x;
        double ca = 0.0, cb = 0.0, cc = 0.0;
        long long src = -1, dst = -1;
        if (lm < rows) {
            const int slab = (int)(lm / g.count);
            src = gs_source_row(a, g.first + lm % g.count);
            dst = slab * a.batch + src;
            gs_row_ab(a, slab, src, g.resid, &ca, &cb);
            cc = gs_row_c(a, src);
        }
        row_a[threadIdx.x] = (float)ca;
        row_b[threadIdx.x] = (float)cb;
        row_c[threadIdx.x] = (float)cc;
        row_src[threadIdx.x] = src;
        row_out[threadIdx.x] = dst;
        row_e[threadIdx.x] = -1000; /* below any tile exponent (they are clamped to +-120) */
    }
    __syncthreads();
    if constexpr (TC) {
        const long long qbase = g.first * a.slabs;
        const long long t0 = kbeg / GS_BN, nt = kend > kbeg ? (kend - kbeg + GS_BN - 1) / GS_BN : 0;
        for (long long i = threadIdx.x; i < BM * nt; i += GS_THREADS) {
            const long long m = i / nt;
            if (m0 + m < rows)
                atomicMax(&row_e[m], __ldg(a.qexp + (qbase + m0 + m) * a.mode_tiles + t0 + i % nt));
        }
        __syncthreads();
    }
}

/* out = a mean + b y + cs for launch 2's finished tile (true scale, f32), columns n0.. */
template <typename XT, int BM>
__device__ __forceinline__ void gs_write_out(const GsArgs &a, const GsGroupView &g, const float *cs, const float *row_a,
                                             const float *row_b, const float *row_c, const long long *row_src,
                                             const long long *row_out, long long n0) {
    const long long dim = a.dim;
    const XT *x = static_cast<const XT *>(a.x);
    XT *out = static_cast<XT *>(a.out);
    for (int e = threadIdx.x; e < BM * GS_BN; e += GS_THREADS) {
        const int m = e / GS_BN, n = e % GS_BN;
        const long long gn = n0 + n;
        if (row_out[m] < 0 || gn >= dim) continue;
        const float mu = __ldg(g.c.mean + gn);
        const float y = gs_to_f32(x[row_src[m] * dim + gn]) - row_c[m] * mu;
        out[row_out[m] * dim + gn] = gs_from_f32<XT>(row_a[m] * mu + row_b[m] * y + cs[m * GS_LDC + n]);
    }
}

template <typename XT, typename UT, int BM> __device__ __forceinline__ void gs_backproject(const GsArgs &a) {
    using S = GsShape<UT>;
    constexpr int TILE_BYTES = (BM * S::LDK + S::BK * S::LDN) * (int)sizeof(UT);
    constexpr int C_BYTES = BM * GS_LDC * (int)sizeof(float);
    __shared__ __align__(128) unsigned char smem[TILE_BYTES > C_BYTES ? TILE_BYTES : C_BYTES];
    __shared__ float row_a[BM], row_b[BM], row_c[BM];
    __shared__ int row_e[BM];          /* f16 path: the largest q tile exponent of the row in this split */
    __shared__ long long row_src[BM];  /* the row of x, -1 past the group */
    __shared__ long long row_out[BM];  /* the row of out */
    UT *qs = reinterpret_cast<UT *>(smem);
    UT *es = qs + BM * S::LDK;
    float *cs = reinterpret_cast<float *>(smem);
    static_assert(!S::TC || S::BK == GS_BN, "a launch-2 chunk is one launch-1 mode tile");

    const long long dim = a.dim;
    const long long rt = blockIdx.x % a.row_tiles2, n0 = (blockIdx.x / a.row_tiles2) * GS_BN;
    const GsGroupView g = gs_group(a, rt, true);
    const long long rank = g.c.rank, rows = (long long)a.slabs * g.count; /* the group's output rows */
    const long long m0 = (rt - g.tile0) * BM, qbase = g.first * a.slabs; /* q rows qbase .. + rows */
    const UT *q = static_cast<const UT *>(a.q);
    const UT *eig = static_cast<const UT *>(g.c.eigvecs);
    const bool qvec = gs_vec_ok<UT>(q, a.rq), evec = gs_vec_ok<UT>(eig, dim);
    const long long chunks = (a.rank + S::BK - 1) / S::BK, per_split = (chunks + a.splits2 - 1) / a.splits2;
    const long long kbeg = blockIdx.z * per_split * S::BK;
    const long long kend = min(rank, kbeg + per_split * S::BK);
    gs_backproject_rows<S::TC, BM>(a, g, m0, rows, kbeg, kend, row_a, row_b, row_c, row_e, row_src, row_out);

    GsAcc<UT, BM> acc;
    acc.zero();
    GsTile<UT, BM, S::BK, S::LDK> qtile;
    GsTile<UT, S::BK, GS_BN, S::LDN> etile;
    qtile.load(q, a.rq, qbase + m0, kbeg, qbase + rows, kend, qvec);
    etile.load(eig, dim, kbeg, n0, kend, dim, evec);
    for (long long k0 = kbeg; k0 < kend; k0 += S::BK) {
        __syncthreads(); /* previous chunk consumed */
        if constexpr (S::TC)
            gs_store_q<BM, S::LDK>(qtile, qs, a, qbase + m0, qbase + rows, k0 / GS_BN, row_e);
        else
            qtile.store(qs);
        etile.store(es);
        __syncthreads();
        if (k0 + S::BK < kend) {
            qtile.load(q, a.rq, qbase + m0, k0 + S::BK, qbase + rows, kend, qvec);
            etile.load(eig, dim, k0 + S::BK, n0, kend, dim, evec);
        }
        acc.template mma<true>(qs, es);
    }
    __syncthreads();
    acc.store(cs);
    __syncthreads();
    if constexpr (S::TC) gs_unscale_rows<BM>(cs, row_e); /* the row exponent, applied in f32 */
    if (a.splits2 > 1 &&
        !gs_split_reduce<BM>(cs, a.part, a.counters + blockIdx.x, a.splits2, a.rowpad2, a.cpad, rt * BM, n0))
        return;
    gs_write_out<XT, BM>(a, g, cs, row_a, row_b, row_c, row_src, row_out, n0);
}

/* ---- entry points: gs_{project,backproject}_<x dtype>x_<eigvec dtype>u_bm<rows per block> ----
 * The second launch-bounds number caps registers so that several blocks share a multiprocessor:
 * streaming the eigenvectors needs many loads in flight per multiprocessor. */
#define GS_PROJECT(XN, XT, UN, UT, BM, MINB)                                                                        \
    extern "C" __global__ void __launch_bounds__(GS_THREADS, MINB)                                                 \
        gs_project_##XN##x_##UN##u_bm##BM(const __grid_constant__ GsArgs a) {                                       \
        gs_project<XT, UT, BM>(a);                                                                                  \
    }
#define GS_BACKPROJECT(XN, XT, UN, UT, BM, MINB)                                                                    \
    extern "C" __global__ void __launch_bounds__(GS_THREADS, MINB)                                                 \
        gs_backproject_##XN##x_##UN##u_bm##BM(const __grid_constant__ GsArgs a) {                                   \
        gs_backproject<XT, UT, BM>(a);                                                                              \
    }
#define GS_KERNELS(XN, XT, UN, UT)                                                                                  \
    GS_PROJECT(XN, XT, UN, UT, 32, 4)                                                                               \
    GS_PROJECT(XN, XT, UN, UT, 64, 2)                                                                               \
    GS_BACKPROJECT(XN, XT, UN, UT, 32, 4)                                                                           \
    GS_BACKPROJECT(XN, XT, UN, UT, 128, 1)

GS_KERNELS(f32, float, f16, __half)
GS_KERNELS(f16, __half, f16, __half)
GS_KERNELS(bf16, __nv_bfloat16, f16, __half)
GS_KERNELS(f32, float, f32, float)
GS_KERNELS(f16, __half, f32, float)
GS_KERNELS(bf16, __nv_bfloat16, f32, float)

/*
 * Launcher notes (src/backend/cuda/geometry.rs): launch 1 uses BM = 64 from 64 rows of x up,
 * else 32; launch 2 uses BM = 128 from 128 output rows up, else 32 (both versions). For each
 * launch of version 1, splits = the fewest splits that give about 4 blocks per multiprocessor
 * (4 blocks of <= 128 registers per thread fit, and 4 x 8 KB of eigenvector loads in flight per
 * multiprocessor is what the memory needs by Little's law); version 2 fills whole waves of its
 * resident blocks (occupancy API). Each split is a whole number of BK chunks; an empty split
 * (possible when the chunks do not divide evenly) adds a zero partial. Split counts can be
 * overridden at run time for measurements. part holds splits x rowpad x rpad floats for
 * launch 1, then splits2 x rowpad2 x cpad for launch 2 (padded to whole tiles, so partial
 * writes need no bounds); launch 1 has finished with it when launch 2 starts. The counters
 * (one per tile, shared by both launches) are zeroed on the caller's stream before launch 1
 * and reset by the last block of each tile. Scratch (part, q, qexp, counters, level table) is
 * allocated for each call in stream order on the caller's stream and freed after launch 2, so
 * concurrent streams and captured graphs never share it.
 */

/* Version 2 (the default): the same two launches with a cp.async pipeline. */
#include "skip2.cuh"
