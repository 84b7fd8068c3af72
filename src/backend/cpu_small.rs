//! Small batches on the CPU (at most `MAX_ROWS` rows): both products of a call read the
//! eigenvectors once for all rows, with AVX2/FMA, split across the pool by blocks of modes
//! (projection) or of columns (back-projection).
//!
//! With one to a few rows both products are matrix-vector products: their time is the time
//! to stream the `rank x dim` eigenvectors (2.4 MB at d = r = 784, 50 MB at 12288 x 1024)
//! through the cores, where a GEMM kernel tuned for large blocks stays well below the memory
//! bandwidth. Each output element is summed by one thread in a fixed order, so the result
//! does not depend on the number of threads. Without AVX2 and FMA the caller uses its GEMM.
//!
//! Shapes: `e` is `r x d` row-major (row k = u_k); `y` is `rows x d`, `p` and `q` are
//! `rows x r`, `out` is `rows x d`, all row-major.

use faer::Par;
use rayon::prelude::*;

/// Largest batch these kernels take.
pub(crate) const MAX_ROWS: usize = 4;

/// Smallest model (rank x dim) they serve: below it the eigenvectors stay in the caches,
/// where faer's GEMM is as fast.
pub(crate) const MIN_MODEL: usize = 1 << 20;

/// Modes or columns per parallel task: enough to amortise a task, few enough to balance two
/// to sixteen threads on the larger models.
const BLOCK: usize = 64;

/// Whether the kernels take a product of `rows` rows with `model_len` (rank x dim)
/// eigenvector elements on this CPU.
pub(crate) fn serves(rows: usize, model_len: usize) -> bool {
    rows <= MAX_ROWS && model_len >= MIN_MODEL && available()
}

/// True when this CPU has the instructions the kernels need.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `p[b][k] = Σ_i y[b][i] e[k][i]` for `b < rows`.
///
/// # Panics
/// When the slices do not have the stated sizes, `rows` exceeds `MAX_ROWS`, or
/// [`available`] is false (the caller checks it).
pub(crate) fn project(e: &[f32], d: usize, y: &[f32], rows: usize, p: &mut [f32], par: Par) {
    let r = e.len() / d;
    assert!(rows <= MAX_ROWS && y.len() == rows * d && p.len() == rows * r && available());
    // Mode-major scratch so that blocks of modes are contiguous: pt[k][b].
    let mut pt = vec![0f32; r * rows];
    let block = |(kb, dst): (usize, &mut [f32])| {
        for (j, slot) in dst.chunks_mut(rows).enumerate() {
            let k = kb * BLOCK + j;
            // SAFETY: `available()` was asserted; the row and `y` have `d` and `rows * d`
            // elements and `slot` has `rows`.
            unsafe { dots(&e[k * d..(k + 1) * d], y, rows, slot) };
        }
    };
    if par != Par::Seq && r > BLOCK {
        pt.par_chunks_mut(BLOCK * rows).enumerate().for_each(block);
    } else {
        pt.chunks_mut(BLOCK * rows).enumerate().for_each(block);
    }
    for (k, vals) in pt.chunks(rows).enumerate() {
        for (b, &v) in vals.iter().enumerate() {
            p[b * r + k] = v;
        }
    }
}

/// `out[b][i] = Σ_k q[b][k] e[k][i]` for `b < rows` (`out` is overwritten).
///
/// # Panics
/// As [`project`].
pub(crate) fn back_project(e: &[f32], d: usize, q: &[f32], rows: usize, out: &mut [f32], par: Par) {
    let r = e.len() / d;
    assert!(rows <= MAX_ROWS && q.len() == rows * r && out.len() == rows * d && available());
    // Column-block-major scratch: block c holds rows x (its columns).
    let width = BLOCK * 16;
    let mut tmp = vec![0f32; rows * d];
    let block = |(c, dst): (usize, &mut [f32])| {
        let (i0, n) = (c * width, dst.len() / rows);
        // SAFETY: `available()` was asserted; every row of `e` has `d >= i0 + n` elements,
        // `q` has `rows * r` and `dst` `rows * n`.
        unsafe { axpys(e, d, i0, n, q, r, rows, dst) };
    };
    if par != Par::Seq && d > width {
        tmp.par_chunks_mut(width * rows).enumerate().for_each(block);
    } else {
        tmp.chunks_mut(width * rows).enumerate().for_each(block);
    }
    for (c, chunk) in tmp.chunks(width * rows).enumerate() {
        let n = chunk.len() / rows;
        for b in 0..rows {
            out[b * d + c * width..b * d + c * width + n]
                .copy_from_slice(&chunk[b * n..(b + 1) * n]);
        }
    }
}

/// `slot[b] = Σ_i row[i] y[b * d + i]`, four 8-lane accumulators per batch row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots(row: &[f32], y: &[f32], rows: usize, slot: &mut [f32]) {
    use std::arch::x86_64::*;
    let d = row.len();
    let mut acc = [[_mm256_setzero_ps(); 4]; MAX_ROWS];
    let mut i = 0;
    while i + 32 <= d {
        let e = row.as_ptr().add(i);
        let ev = [
            _mm256_loadu_ps(e),
            _mm256_loadu_ps(e.add(8)),
            _mm256_loadu_ps(e.add(16)),
            _mm256_loadu_ps(e.add(24)),
        ];
        for (b, a) in acc.iter_mut().enumerate().take(rows) {
            let yb = y.as_ptr().add(b * d + i);
            for (l, (av, &evl)) in a.iter_mut().zip(&ev).enumerate() {
                *av = _mm256_fmadd_ps(evl, _mm256_loadu_ps(yb.add(8 * l)), *av);
            }
        }
        i += 32;
    }
    while i + 8 <= d {
        let ev = _mm256_loadu_ps(row.as_ptr().add(i));
        for (b, a) in acc.iter_mut().enumerate().take(rows) {
            a[0] = _mm256_fmadd_ps(ev, _mm256_loadu_ps(y.as_ptr().add(b * d + i)), a[0]);
        }
        i += 8;
    }
    for (b, a) in acc.iter().enumerate().take(rows) {
        let s = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), s);
        let mut total = lanes.iter().sum::<f32>();
        for j in i..d {
            total += row[j] * y[b * d + j];
        }
        slot[b] = total;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn dots(_: &[f32], _: &[f32], _: usize, _: &mut [f32]) {
    unreachable!("available() is false off x86_64")
}

/// `dst[b * n + j] = Σ_k q[b * r + k] e[k * d + i0 + j]` for `j < n`, modes in order, four
/// at a time (one chain of fused multiply-adds per element).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn axpys(
    e: &[f32],
    d: usize,
    i0: usize,
    n: usize,
    q: &[f32],
    r: usize,
    rows: usize,
    dst: &mut [f32],
) {
    use std::arch::x86_64::*;
    let vec_end = n - n % 8;
    let mut k = 0;
    while k < r {
        let take = (r - k).min(4);
        for b in 0..rows {
            let o = dst.as_mut_ptr().add(b * n);
            let qb = &q[b * r + k..b * r + k + take];
            let mut j = 0;
            while j < vec_end {
                let mut acc = _mm256_loadu_ps(o.add(j));
                for (t, &qv) in qb.iter().enumerate() {
                    let ev = _mm256_loadu_ps(e.as_ptr().add((k + t) * d + i0 + j));
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(qv), ev, acc);
                }
                _mm256_storeu_ps(o.add(j), acc);
                j += 8;
            }
            for j in vec_end..n {
                let mut acc = *o.add(j);
                for (t, &qv) in qb.iter().enumerate() {
                    acc = qv.mul_add(e[(k + t) * d + i0 + j], acc);
                }
                *o.add(j) = acc;
            }
        }
        k += take;
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn axpys(
    _: &[f32],
    _: usize,
    _: usize,
    _: usize,
    _: &[f32],
    _: usize,
    _: usize,
    _: &mut [f32],
) {
    unreachable!("available() is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both kernels against f64 sums at odd sizes (below, at and past the vector width and
    /// the block sizes; one mode), every batch size, with and without threads; the result
    /// is the same bit for bit whatever the threads.
    #[test]
    fn kernels_match_f64_sums() {
        if !available() {
            eprintln!("skipped: no AVX2/FMA on this CPU");
            return;
        }
        let mut rng = crate::rng::Rng::new(5);
        let sizes = [
            (37, 11),
            (1100, 70),
            (97, 200),
            (1, 1),
            (7, 3),
            (8, 1),
            (32, 1),
            (33, 65),
            (2049, 2),
        ];
        for (d, r) in sizes {
            let e: Vec<f32> = rng.normals(r * d).iter().map(|&v| v as f32).collect();
            for rows in 1..=MAX_ROWS {
                let y: Vec<f32> = rng.normals(rows * d).iter().map(|&v| v as f32).collect();
                let q: Vec<f32> = rng.normals(rows * r).iter().map(|&v| v as f32).collect();
                let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
                for par in [Par::Seq, Par::rayon(2), Par::rayon(3)] {
                    let mut p = vec![f32::NAN; rows * r];
                    let mut out = vec![f32::NAN; rows * d];
                    crate::pool::install(|| {
                        project(&e, d, &y, rows, &mut p, par);
                        back_project(&e, d, &q, rows, &mut out, par);
                    });
                    for b in 0..rows {
                        for k in 0..r {
                            let want: f64 = (0..d)
                                .map(|i| f64::from(y[b * d + i]) * f64::from(e[k * d + i]))
                                .sum();
                            let tol = 1e-5 * (d as f64).sqrt() * (1.0 + want.abs());
                            assert!(
                                (f64::from(p[b * r + k]) - want).abs() < tol,
                                "p {d} {r} {b} {k}"
                            );
                        }
                        for i in 0..d {
                            let want: f64 = (0..r)
                                .map(|k| f64::from(q[b * r + k]) * f64::from(e[k * d + i]))
                                .sum();
                            let tol = 1e-5 * (r as f64).sqrt() * (1.0 + want.abs());
                            assert!(
                                (f64::from(out[b * d + i]) - want).abs() < tol,
                                "out {d} {r} {b} {i}"
                            );
                        }
                    }
                    match &first {
                        None => first = Some((p, out)),
                        Some((p0, out0)) => {
                            let bits =
                                |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(&p), bits(p0), "p {d} {r} {rows} {par:?}");
                            assert_eq!(bits(&out), bits(out0), "out {d} {r} {rows} {par:?}");
                        }
                    }
                }
            }
        }
    }
}
