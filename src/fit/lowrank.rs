//! The dense linear algebra of the sketch, on `dim x width` matrices: an orthonormal basis of a
//! range, the Nyström approximation of a positive semi-definite matrix S from a test matrix W
//! and its sketch Y = S W, and Ritz values. All f64, all GEMMs and factorisations from faer.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::householder::{
    apply_block_householder_sequence_on_the_left_in_place_scratch,
    apply_block_householder_sequence_on_the_left_in_place_with_conj,
};
use faer::linalg::matmul::matmul;
use faer::linalg::qr::no_pivoting::factor::{
    qr_in_place, qr_in_place_scratch, recommended_block_size,
};
use faer::{Accum, Conj, Mat, MatRef, Side};

use crate::error::{Error, Result};

/// Eigenvalues of WᵀY at or below this fraction of the largest are treated as zero in the
/// pseudo-inverse of the Nyström core: below it the sketch's round-off, not the data, decides
/// the direction (a shift ν·W, as in the published algorithm, gives the same result here and
/// is not needed with an eigendecomposition in place of a Cholesky factor).
const CORE_CUTOFF: f64 = 1e-11;

/// A Householder QR factorisation of a tall `m x n` matrix, computed in the matrix's own
/// storage (no copy: these matrices are `dim x width`).
struct InPlaceQr {
    factors: Mat<f64>,
    coeff: Mat<f64>,
}

impl InPlaceQr {
    fn new(mut a: Mat<f64>) -> InPlaceQr {
        let (m, n) = a.shape();
        let block = recommended_block_size::<f64>(m, n);
        let mut coeff = Mat::<f64>::zeros(block, m.min(n));
        let par = faer::get_global_parallelism();
        let scratch = qr_in_place_scratch::<f64>(m, n, block, par, Default::default());
        qr_in_place(
            a.as_mut(),
            coeff.as_mut(),
            par,
            MemStack::new(&mut MemBuffer::new(scratch)),
            Default::default(),
        );
        InPlaceQr { factors: a, coeff }
    }

    /// The `n x n` upper-triangular factor R.
    fn r(&self) -> Mat<f64> {
        let n = self.factors.ncols();
        Mat::from_fn(n, n, |i, j| if i <= j { self.factors[(i, j)] } else { 0.0 })
    }

    /// Q [b; 0] for an `n x c` matrix b: the `m x c` combination of Q's first n columns.
    fn q_times(&self, b: MatRef<'_, f64>) -> Mat<f64> {
        let (m, n) = self.factors.shape();
        let mut out = Mat::<f64>::zeros(m, b.ncols());
        out.as_mut().subrows_mut(0, n).copy_from(b);
        let scratch = apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(
            m,
            self.coeff.nrows(),
            b.ncols(),
        );
        apply_block_householder_sequence_on_the_left_in_place_with_conj(
            self.factors.as_ref(),
            self.coeff.as_ref(),
            Conj::No,
            out.as_mut(),
            faer::get_global_parallelism(),
            MemStack::new(&mut MemBuffer::new(scratch)),
        );
        out
    }
}

/// Orthonormal basis of the columns of `y`, computed in `y`'s storage (Householder thin QR:
/// orthonormal to round-off even when `y` is rank-deficient).
pub(crate) fn orthonormal_basis(y: Mat<f64>) -> Mat<f64> {
    let n = y.ncols();
    InPlaceQr::new(y).q_times(Mat::<f64>::identity(n, n).as_ref())
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
/// all width' ≤ width eigenvalues, largest first (≥ 0; directions of zero variance are
/// dropped), and the orthonormal eigenvectors of the first `keep` of them (fewer when
/// width' < keep) as the columns of a `dim x keep` matrix.
///
/// The approximation never exceeds S (S − Ŝ is positive semi-definite), so every eigenvalue is
/// an underestimate; it equals the Rayleigh–Ritz approximation of S on span(S^½ W), half a
/// subspace iteration better than span(W).
///
/// # Errors
/// `Dataset` when an eigensolver or the SVD does not converge, or when the sketch holds no
/// variance at all.
pub(crate) fn nystrom(
    w: MatRef<'_, f64>,
    y: MatRef<'_, f64>,
    keep: usize,
) -> Result<(Vec<f64>, Mat<f64>)> {
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
    // values are Ŝ's eigenpairs: with F = QR and R = U_R Σ V_Rᵀ, they are Q U_R and Σ².
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
    let qr = InPlaceQr::new(f);
    let svd = qr
        .r()
        .svd()
        .map_err(|e| Error::Dataset(format!("the sketch's SVD did not converge: {e:?}")))?;
    let s = svd.S().column_vector();
    let eigvals = (0..kept).map(|j| s[j] * s[j]).collect();
    let cols = keep.min(kept);
    Ok((eigvals, qr.q_times(svd.U().subcols(0, cols))))
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
