//! The one-row, one-output kernels of `cpu_small` in their AVX-512 form, for CPUs that have
//! it: 16 lanes per load and multiply-add instead of 8.
//!
//! Each output element of the back-projection is the same chain of fused multiply-adds, in
//! the same order, as in the AVX2 kernels (the same bits for the same projections); the dot
//! products sum 16 lanes instead of 8, so the projections may differ from the AVX2 ones in
//! their last bits (both are within the bound the tests check against f64 sums).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// True when this CPU has the instructions of these kernels.
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

/// `slot[j] = Σ_i group[j * d + i] y[i]` for the `M` rows j of `group`.
///
/// # Safety
/// The CPU has AVX-512F ([`available`]); `group` holds `M` rows of `y.len()`; `slot` `M`.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn dots<const M: usize>(group: &[f32], y: &[f32], slot: &mut [f32]) {
    pass::<M, false, true>(y.len(), &[], &[], group, y, slot, &mut []);
}

/// `sums[i] += Σ_j q[j] group[j * d + i]`, the `M` rows j in order.
///
/// # Safety
/// The CPU has AVX-512F; `group` holds `M` rows of `sums.len()`; `q` `M` weights.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn axpys<const M: usize>(group: &[f32], q: &[f32], sums: &mut [f32]) {
    pass::<M, true, false>(sums.len(), group, q, &[], &[], &mut [], sums);
}

/// [`axpys`] of `group` and, in the same pass, [`dots`] of `next` into `slot`: the loads of
/// `next` overlap the arithmetic on `group`, which the previous pass left in the cache.
///
/// # Safety
/// As [`axpys`] and [`dots`] (`next` holds `M` rows of `y.len()`, `slot` `M`).
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn axpys_dots<const M: usize>(
    group: &[f32],
    q: &[f32],
    next: &[f32],
    y: &[f32],
    slot: &mut [f32],
    sums: &mut [f32],
) {
    pass::<M, true, true>(sums.len(), group, q, next, y, slot, sums);
}

/// One pass over `d` columns, 16 at a time: with `AXPY`, [`axpys`] of `group` into `sums`;
/// with `DOT`, [`dots`] of `next` into `slot`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn pass<const M: usize, const AXPY: bool, const DOT: bool>(
    d: usize,
    group: &[f32],
    q: &[f32],
    next: &[f32],
    y: &[f32],
    slot: &mut [f32],
    sums: &mut [f32],
) {
    assert!(!AXPY || (group.len() == M * d && q.len() == M && sums.len() == d));
    assert!(!DOT || (next.len() == M * d && y.len() == d && slot.len() == M));
    let (g, n, out) = (group.as_ptr(), next.as_ptr(), sums.as_mut_ptr());
    let qv: [__m512; M] = std::array::from_fn(|j| _mm512_set1_ps(if AXPY { q[j] } else { 0.0 }));
    let mut dot = [_mm512_setzero_ps(); M];
    let vec_end = d - d % 16;
    let mut i = 0;
    while i < vec_end {
        if DOT {
            let yv = _mm512_loadu_ps(y.as_ptr().add(i));
            for (j, a) in dot.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(n.add(j * d + i)), yv, *a);
            }
        }
        if AXPY {
            let mut acc = _mm512_loadu_ps(out.add(i));
            for (j, &qj) in qv.iter().enumerate() {
                acc = _mm512_fmadd_ps(qj, _mm512_loadu_ps(g.add(j * d + i)), acc);
            }
            _mm512_storeu_ps(out.add(i), acc);
        }
        i += 16;
    }
    if AXPY {
        super::cpu_small::axpys_tail::<M>(group, q, sums, vec_end);
    }
    if DOT {
        for (j, &v) in dot.iter().enumerate() {
            slot[j] = finish_dot(v, &next[j * d..(j + 1) * d], y, vec_end);
        }
    }
}

/// A dot product from its 16 lanes `v` (summed in lane order) and the elements `from..` of
/// `e_row` and `y_row` past them, one at a time.
#[target_feature(enable = "avx512f")]
unsafe fn finish_dot(v: __m512, e_row: &[f32], y_row: &[f32], from: usize) -> f32 {
    let mut lanes = [0f32; 16];
    _mm512_storeu_ps(lanes.as_mut_ptr(), v);
    super::cpu_small::sum_lanes_and_tail(&lanes, e_row, y_row, from)
}
