// Host stand-in for the WMMA subset kernels/skip.cu uses (m16n16k16, f16 inputs, f32
// accumulators): every lane holds and computes the whole 16 x 16 tile, so the 32 lanes of a
// warp produce identical fragments and store identical values. Found before CUDA's own mma.h
// through -I kernels/emulate.
#pragma once
#include <type_traits>
namespace nvcuda { namespace wmma {
struct row_major {}; struct col_major {}; struct matrix_a {}; struct matrix_b {}; struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class L = void> struct fragment { T x[256]; };
template <class U, class T, class L, class V> void fill_fragment(fragment<U, 16, 16, 16, T, L> &f, V v) { for (auto &e : f.x) e = T(v); }
template <class L> void load_matrix_sync(fragment<matrix_a, 16, 16, 16, __half, L> &f, const __half *p, unsigned ld) {
    for (int i = 0; i < 16; ++i) for (int k = 0; k < 16; ++k) f.x[i * 16 + k] = std::is_same<L, row_major>::value ? p[i * ld + k] : p[k * ld + i];
}
template <class L> void load_matrix_sync(fragment<matrix_b, 16, 16, 16, __half, L> &f, const __half *p, unsigned ld) {
    for (int k = 0; k < 16; ++k) for (int n = 0; n < 16; ++n) f.x[k * 16 + n] = std::is_same<L, row_major>::value ? p[k * ld + n] : p[n * ld + k];
}
template <class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, __half, LA> &a,
              const fragment<matrix_b, 16, 16, 16, __half, LB> &b, const fragment<accumulator, 16, 16, 16, float> &c) {
    float t[256];
    for (int i = 0; i < 16; ++i) for (int n = 0; n < 16; ++n) {
        float s = c.x[i * 16 + n];
        for (int k = 0; k < 16; ++k) s += __half2float(a.x[i * 16 + k]) * __half2float(b.x[k * 16 + n]);
        t[i * 16 + n] = s;
    }
    for (int i = 0; i < 256; ++i) d.x[i] = t[i];
}
inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ld, layout_t) {
    for (int i = 0; i < 16; ++i) for (int n = 0; n < 16; ++n) p[i * ld + n] = f.x[i * 16 + n];
}
}}
