//! The dense linear algebra of the sketch, on `dim x width` matrices: an orthonormal basis of a
//! range, the Nyström approximation of a positive semi-definite matrix S from a test matrix W
//! and its sketch Y = S W, and Ritz values. All f64, all GEMMs and factorisations from faer.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Side};

use crate::error::{Error, Result};

/// Eigenvalues of WᵀY at or below this fraction of the largest are treated as zero in the
/// pseudo-inverse of the Nyström core: below it the sketch's round-off, not the data, decides
/// the direction (a shift ν·W, as in the published algorithm, gives the same result here and
/// is not needed with an eigendecomposition in place of a Cholesky factor).
const CORE_CUTOFF: f64 = 1e-11;

/// Orthonormal basis of the columns of `y` (Householder thin QR: orthonormal to round-off even
/// when `y` is rank-deficient).
pub(crate) fn orthonormal_basis(y: MatRef<'_, f64>) -> Mat<f64> {
    y.qr().compute_thin_Q()
}

/// The symmetric part of Wᵀ Y (`width x width`).
fn core(w: MatRef<'_, f64>, y: MatRef<'_, f64>) -> Mat<f64> {
    let k = w.ncols();
    let mut b = Mat::<f64>::zeros(k, k);
    matmul(
        b.as_mut(),
        Accum::Replace,
        w.transpose(),
        y,
        1.0,
        faer::get_global_parallelism(),
    );
    Mat::from_fn(k, k, |i, j| 0.5 * (b[(i, j)] + b[(j, i)]))
}

/// Eigenvalues of the symmetric `width x width` matrix `b`, largest first, with eigenvectors.
fn eigen_desc(b: &Mat<f64>) -> Result<(Vec<f64>, Mat<f64>)> {
    let eig = b
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::Dataset(format!("the sketch's eigensolver did not converge: {e:?}")))?;
    let k = b.nrows();
    let s = eig.S().column_vector();
    let u = eig.U();
    let vals = (0..k).rev().map(|i| s[i]).collect();
    let vecs = Mat::from_fn(k, k, |i, j| u[(i, k - 1 - j)]);
    Ok((vals, vecs))
}

/// Ritz values of S on span(W) for an orthonormal W and Y = S W: the eigenvalues of WᵀSW,
/// largest first. The top `r` of them sum to the variance the best `r`-dimensional subspace
/// of span(W) captures.
pub(crate) fn ritz_values(w: MatRef<'_, f64>, y: MatRef<'_, f64>) -> Result<Vec<f64>> {
    Ok(eigen_desc(&core(w, y))?.0)
}

/// Nyström approximation S ≈ Y (WᵀY)⁺ Yᵀ of a positive semi-definite S from a test matrix W
/// (`dim x width`, full column rank) and its sketch Y = S W, returned as its eigenpairs:
/// eigenvalues largest first (≥ 0) and orthonormal eigenvectors as the columns of a
/// `dim x width'` matrix, width' ≤ width (directions of zero variance are dropped).
///
/// The approximation never exceeds S (S − Ŝ is positive semi-definite), so every eigenvalue is
/// an underestimate; it equals the Rayleigh–Ritz approximation of S on span(S^½ W), half a
/// subspace iteration better than span(W).
///
/// # Errors
/// `Dataset` when an eigensolver or the SVD does not converge, or when the sketch holds no
/// variance at all.
pub(crate) fn nystrom(w: MatRef<'_, f64>, y: MatRef<'_, f64>) -> Result<(Vec<f64>, Mat<f64>)> {
    let (d, k) = (w.nrows(), w.ncols());
    let (vals, vecs) = eigen_desc(&core(w, y))?;
    let top = vals.first().copied().unwrap_or(0.0);
    if top.is_nan() || top <= 0.0 {
        return Err(Error::Dataset(
            "the data has no variance in the sketched directions (all items equal?)".into(),
        ));
    }
    let kept = vals.iter().take_while(|&&v| v > top * CORE_CUTOFF).count();
    // F = Y V D^{-1/2}, so that Ŝ = F Fᵀ; its left singular vectors and squared singular
    // values are Ŝ's eigenpairs.
    let scaled = Mat::from_fn(k, kept, |i, j| vecs[(i, j)] / vals[j].sqrt());
    let mut f = Mat::<f64>::zeros(d, kept);
    matmul(
        f.as_mut(),
        Accum::Replace,
        y,
        scaled.as_ref(),
        1.0,
        faer::get_global_parallelism(),
    );
    let svd = f
        .thin_svd()
        .map_err(|e| Error::Dataset(format!("the sketch's SVD did not converge: {e:?}")))?;
    let s = svd.S().column_vector();
    let eigvals = (0..kept).map(|j| s[j] * s[j]).collect();
    Ok((eigvals, svd.U().to_owned()))
}

/// The sign that makes the largest-magnitude entry of `col` positive (ties: the first), so
/// that fitted eigenvectors are reproducible across runs and machines.
pub(crate) fn canonical_sign(col: impl IntoIterator<Item = f64>) -> f64 {
    let mut big = 0.0f64;
    for v in col {
        if v.abs() > big.abs() {
            big = v;
        }
    }
    if big < 0.0 {
        -1.0
    } else {
        1.0
    }
}
