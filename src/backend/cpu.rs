//! CPU backend: f32 arithmetic on faer's multi-threaded GEMM.
//!
//! Two GEMMs per call whatever the number of output slabs: P = Y E^T (`rows x rank`), then
//! all slabs at once, [P .* W_0; P .* W_1; ...] E (`slabs*rows x dim`), followed by the
//! element-wise epilogue a mean + b y.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef};
use rayon::prelude::*;

use crate::dtype::Element;
use crate::model::Model;
use crate::noise::Plan;

/// Evaluates `plan` on `x` (`plan.rows x dim`) into `out` (`slabs * rows x dim`).
///
/// The caller has validated sizes, finiteness and levels; this cannot fail.
pub(crate) fn apply<T: Element>(model: &Model, plan: &Plan, x: &[T], out: &mut [T]) {
    let (rows, d, r) = (plan.rows, model.dim(), model.rank());
    let nslab = plan.slabs.len();
    debug_assert_eq!(x.len(), rows * d);
    debug_assert_eq!(out.len(), nslab * rows * d);
    let par = faer::get_global_parallelism();
    let mean = model.mean();

    let mut y = vec![0f32; rows * d];
    y.par_chunks_mut(d).enumerate().for_each(|(i, yr)| {
        let c = plan.c[i] as f32;
        for ((yv, xv), &m) in yr.iter_mut().zip(&x[i * d..(i + 1) * d]).zip(mean) {
            *yv = xv.to_f32() - c * m;
        }
    });
    let e = MatRef::from_row_major_slice(model.eigvecs(), r, d);
    let ym = MatRef::from_row_major_slice(&y, rows, d);

    let mut p = Mat::<f32>::zeros(rows, r);
    matmul(p.as_mut(), Accum::Replace, ym, e.transpose(), 1.0f32, par);

    let mut q = vec![0f32; nslab * rows * r];
    q.par_chunks_mut(r).enumerate().for_each(|(row, qr)| {
        let (s, i) = (row / rows, row % rows);
        let w = &plan.slabs[s].w[i * r..(i + 1) * r];
        for (k, qv) in qr.iter_mut().enumerate() {
            *qv = p[(i, k)] * w[k] as f32;
        }
    });
    let qm = MatRef::from_row_major_slice(&q, nslab * rows, r);

    let epilogue = |row: usize, dst: &mut [f32]| {
        let (s, i) = (row / rows, row % rows);
        let (a, b) = (plan.slabs[s].a[i] as f32, plan.slabs[s].b[i] as f32);
        for ((o, &yv), &m) in dst.iter_mut().zip(&y[i * d..(i + 1) * d]).zip(mean) {
            *o += a * m + b * yv;
        }
    };

    if let Some(out32) = as_f32_mut(out) {
        let om: MatMut<'_, f32> = MatMut::from_row_major_slice_mut(out32, nslab * rows, d);
        matmul(om, Accum::Replace, qm, e, 1.0f32, par);
        out32
            .par_chunks_mut(d)
            .enumerate()
            .for_each(|(row, dst)| epilogue(row, dst));
    } else {
        let mut tmp = vec![0f32; nslab * rows * d];
        let om = MatMut::from_row_major_slice_mut(&mut tmp, nslab * rows, d);
        matmul(om, Accum::Replace, qm, e, 1.0f32, par);
        tmp.par_chunks_mut(d)
            .zip(out.par_chunks_mut(d))
            .enumerate()
            .for_each(|(row, (src, dst))| {
                epilogue(row, src);
                for (o, &v) in dst.iter_mut().zip(src.iter()) {
                    *o = T::from_f32(v);
                }
            });
    }
}

/// Views `out` as f32 when `T` is f32, so the GEMM writes straight into the caller's buffer.
fn as_f32_mut<T: Element>(out: &mut [T]) -> Option<&mut [f32]> {
    if T::DTYPE == crate::dtype::Dtype::F32 {
        // SAFETY: T::DTYPE == F32 only for T = f32 (see the Element impls), so the cast is
        // the identity on layout and lifetime.
        Some(unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut f32, out.len()) })
    } else {
        None
    }
}
