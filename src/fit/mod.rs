//! Fitting a Gaussian model to data (SPEC §6): streaming, mergeable moments, then an
//! eigendecomposition of the covariance truncated to a rank.
//!
//! [`Moments`] never holds the dataset: it keeps the count, the mean and the centred
//! second-moment (scatter) matrix in f64. Each batch is centred on its own mean before its
//! scatter is formed (one GEMM), and batches, shards or whole [`Moments`] combine with the
//! pairwise update of Chan, Golub and LeVeque, so a large common offset in the data never
//! enters a sum of squares and shards fitted on different machines merge exactly.
//!
//! ```
//! use gaussskip::fit::{fit_model, FitOptions, Moments, Rank, Residual};
//! let rows = [1.0f32, 2.0, 3.0, 5.0, 2.0, 1.0]; // three items of two values
//! let mut m = Moments::new(2);
//! m.add_rows(&rows)?;
//! let model = fit_model(&m, &FitOptions { rank: Rank::Full, ..FitOptions::default() })?;
//! assert_eq!(model.rank(), 2);
//! # Ok::<(), gaussskip::Error>(())
//! ```

mod classes;
mod input;
mod lowrank;
mod path;
mod sketch;
#[cfg(feature = "cuda")]
mod sketch_cuda;
mod state;

pub use classes::{
    classes_from_path, fit_class_moments, fit_classes, LabelSource, LoadedClasses, MIN_CLASS_ITEMS,
};
pub use input::{
    csv_item_shape, is_csv, moments_from_path, read_csv, rows_from_path, CsvSink, InputOptions,
    Loaded, Rows, Scale,
};
pub use path::{choose_method, exact_fit_bytes, fit_path, PathFit, PathFitOptions};
pub use sketch::{Sketch, SketchOptions, DEFAULT_PASSES, MIN_OVERSAMPLING};

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef};

use crate::error::{check_finite, Error, Result};
use crate::model::{FitInfo, FitMethod, Model, ModelMeta};
use lowrank::canonical_sign;

/// Rows per internal batch: bounds the f64 copy of a batch to `BATCH_ROWS x dim`.
const BATCH_ROWS: usize = 1024;

/// Streaming count, mean and centred second moments of `dim`-vectors.
#[derive(Clone, Debug)]
pub struct Moments {
    dim: usize,
    count: u64,
    mean: Vec<f64>,
    /// Sum over items of (x − mean)(x − mean)ᵀ, `dim x dim`.
    scatter: Mat<f64>,
}

impl Moments {
    /// Empty moments of `dim`-vectors (`dim >= 1`). Memory: `dim²` f64.
    ///
    /// # Panics
    /// When the memory cannot be allocated; [`Moments::try_new`] returns an error instead.
    pub fn new(dim: usize) -> Moments {
        Moments::try_new(dim).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Empty moments of `dim`-vectors, or an error when they do not fit in memory.
    ///
    /// # Errors
    /// `InvalidArgument` for `dim == 0` or a `dim x dim` f64 matrix larger than the address
    /// space; `OutOfMemory` when it cannot be allocated.
    pub fn try_new(dim: usize) -> Result<Moments> {
        if dim == 0 {
            return Err(Error::arg("dim", "must be at least 1"));
        }
        let bytes = dim.checked_mul(dim).and_then(|n| n.checked_mul(8));
        if bytes.is_none_or(|b| b > isize::MAX as usize) {
            return Err(Error::arg(
                "dim",
                format!("{dim}² doubles exceed the address space"),
            ));
        }
        Ok(Moments {
            dim,
            count: 0,
            mean: crate::error::try_vec(dim, 0.0, "the mean")?,
            scatter: square_from_fn(dim, "the scatter matrix", |_, _| 0.0)?,
        })
    }

    /// Length of one item.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of items added so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean of the items added so far (zeros when none).
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Centred second-moment matrix Σᵢ (xᵢ − x̄)(xᵢ − x̄)ᵀ.
    pub fn scatter(&self) -> MatRef<'_, f64> {
        self.scatter.as_ref()
    }

    /// Adds items given as row-major `items x dim` f32 values.
    ///
    /// # Errors
    /// `ShapeMismatch` when the length is not a multiple of `dim`; `NonFinite` for NaN/Inf
    /// (nothing is added then).
    pub fn add_rows(&mut self, rows: &[f32]) -> Result<()> {
        self.check_rows(rows)?;
        crate::pool::install(|| {
            for chunk in rows.chunks(BATCH_ROWS * self.dim) {
                let batch: Vec<f64> = chunk.iter().map(|&v| f64::from(v)).collect();
                self.add_batch(batch);
            }
        });
        Ok(())
    }

    /// Adds items given as row-major `items x dim` f64 values.
    ///
    /// # Errors
    /// As [`Moments::add_rows`].
    pub fn add_rows_f64(&mut self, rows: &[f64]) -> Result<()> {
        self.check_rows(rows)?;
        crate::pool::install(|| {
            for chunk in rows.chunks(BATCH_ROWS * self.dim) {
                self.add_batch(chunk.to_vec());
            }
        });
        Ok(())
    }

    /// Adds everything `other` has seen, exactly as if its items had been added here.
    ///
    /// # Errors
    /// `ShapeMismatch` when the dimensions differ.
    pub fn merge(&mut self, other: &Moments) -> Result<()> {
        if other.dim != self.dim {
            return Err(Error::shape("moments", self.dim, other.dim));
        }
        self.scatter += &other.scatter;
        crate::pool::install(|| self.combine_means(other.count, &other.mean));
        Ok(())
    }

    /// Unbiased covariance, scatter / (count − 1).
    ///
    /// # Errors
    /// `Dataset` with fewer than two items; `OutOfMemory` when the matrix cannot be
    /// allocated.
    pub fn covariance(&self) -> Result<Mat<f64>> {
        if self.count < 2 {
            return Err(Error::Dataset(format!(
                "a covariance needs at least 2 items, have {}",
                self.count
            )));
        }
        let inv = 1.0 / (self.count - 1) as f64;
        square_from_fn(self.dim, "the covariance", |i, j| {
            self.scatter[(i, j)] * inv
        })
    }

    fn check_rows<T: Copy + Into<f64>>(&self, rows: &[T]) -> Result<()> {
        if self.dim == 0 || !rows.len().is_multiple_of(self.dim) {
            return Err(Error::shape(
                "rows",
                format!("a multiple of dim = {}", self.dim),
                rows.len(),
            ));
        }
        check_finite("rows", rows)
    }

    /// Centres `batch` (row-major `n x dim`) on its own mean, forms its scatter with one GEMM
    /// and combines it with the running totals.
    fn add_batch(&mut self, mut batch: Vec<f64>) {
        let d = self.dim;
        let n = batch.len() / d;
        if n == 0 {
            return;
        }
        let mut bmean = vec![0.0; d];
        for row in batch.chunks(d) {
            for (m, &v) in bmean.iter_mut().zip(row) {
                *m += v;
            }
        }
        for m in &mut bmean {
            *m /= n as f64;
        }
        for row in batch.chunks_mut(d) {
            for (v, &m) in row.iter_mut().zip(&bmean) {
                *v -= m;
            }
        }
        let c = MatRef::from_row_major_slice(&batch, n, d);
        // The batch's own scatter goes straight into the total: no second dim² matrix.
        matmul(
            self.scatter.as_mut(),
            Accum::Add,
            c.transpose(),
            c,
            1.0,
            faer::get_global_parallelism(),
        );
        self.combine_means(n as u64, &bmean);
    }

    /// Chan et al., once the other part's scatter M2_b is already added: mean += δ·n_b/n,
    /// M2 += δδᵀ·n_a·n_b/n with δ = mean_b − mean_a.
    fn combine_means(&mut self, nb: u64, mean_b: &[f64]) {
        if nb == 0 {
            return;
        }
        let na = self.count;
        let n = na + nb;
        let delta: Vec<f64> = mean_b.iter().zip(&self.mean).map(|(b, a)| b - a).collect();
        let w = (na as f64) * (nb as f64) / (n as f64);
        let dm = MatRef::from_column_major_slice(&delta, self.dim, 1);
        matmul(
            self.scatter.as_mut(),
            Accum::Add,
            dm,
            dm.transpose(),
            w,
            faer::get_global_parallelism(),
        );
        let frac = nb as f64 / n as f64;
        for (m, dl) in self.mean.iter_mut().zip(&delta) {
            *m += dl * frac;
        }
        self.count = n;
    }
}

/// Eigenvalues (ascending) and eigenvectors (columns) of the symmetric `cov` (its lower
/// half is read), with every buffer allocated fallibly.
fn eigen(cov: &Mat<f64>) -> Result<(faer::Col<f64>, Mat<f64>)> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::evd;
    let d = cov.nrows();
    let par = faer::get_global_parallelism();
    let oom = |what: &str| {
        Error::OutOfMemory(format!(
            "the eigendecomposition of a {d} x {d} covariance: {what}"
        ))
    };
    let scratch = evd::self_adjoint_evd_scratch::<f64>(
        d,
        evd::ComputeEigenvectors::Yes,
        par,
        Default::default(),
    );
    let mut mem = MemBuffer::try_new(scratch).map_err(|_| oom("workspace"))?;
    let mut u = square_from_fn(d, "the eigenvectors", |_, _| 0.0)?;
    let mut s = faer::diag::Diag::<f64>::zeros(d);
    evd::self_adjoint_evd(
        cov.as_ref(),
        s.as_mut(),
        Some(u.as_mut()),
        par,
        MemStack::new(&mut mem),
        Default::default(),
    )
    .map_err(|e| Error::Dataset(format!("the eigensolver did not converge: {e:?}")))?;
    Ok((s.column_vector().to_owned(), u))
}

/// A `dim x dim` matrix of `f(i, j)`, or `OutOfMemory` naming `what`.
fn square_from_fn(dim: usize, what: &str, f: impl FnMut(usize, usize) -> f64) -> Result<Mat<f64>> {
    let mut m = Mat::new();
    m.try_reserve(dim, dim)
        .map_err(|_| Error::OutOfMemory(format!("{what}: {dim} x {dim} doubles")))?;
    m.resize_with(dim, dim, f);
    Ok(m)
}

/// How many eigenvectors the model keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rank {
    /// All `dim` of them (the papers' setting).
    Full,
    /// The top `r`, `1 <= r <= dim`.
    Fixed(usize),
    /// The fewest top modes whose variance is at least this fraction (0, 1] of the total.
    Explained(f64),
}

/// The variance λ⊥ given to the directions that are not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residual {
    /// λ⊥ = 0: the discarded directions are treated as noise-free (the papers' setting).
    Zero,
    /// λ⊥ = mean of the discarded eigenvalues, so the model keeps the data's total variance.
    Mean,
}

/// Options of [`fit_model`].
#[derive(Clone, Debug)]
pub struct FitOptions {
    /// Number of eigenvectors kept.
    pub rank: Rank,
    /// λ⊥ for the rest.
    pub residual: Residual,
    /// Metadata for the model file; `sample_count` is taken from the moments.
    pub meta: ModelMeta,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            rank: Rank::Full,
            residual: Residual::Zero,
            meta: ModelMeta::default(),
        }
    }
}

/// What the eigendecomposition found, besides the model.
#[derive(Clone, Debug)]
pub struct Spectrum {
    /// Every eigenvalue of the covariance (the exact fit) or the sketch's estimates of its
    /// largest `width` (a [`Sketch`]), non-increasing, negatives (round-off) set to 0.
    pub eigvals: Vec<f64>,
    /// Number kept.
    pub rank: usize,
    /// Fraction of the total variance the kept modes carry (1 for zero total variance).
    pub explained: f64,
    /// The residual variance λ⊥ chosen.
    pub residual_var: f64,
}

/// Eigendecomposes the covariance of `moments` and builds the model.
///
/// Eigenvalues are sorted non-increasing and round-off negatives clamped to 0; each kept
/// eigenvector's sign is fixed so that its largest-magnitude entry is positive, which makes
/// fits reproducible across runs and machines.
///
/// # Errors
/// `Dataset` with fewer than two items or when the eigensolver fails; `InvalidArgument` for a
/// rank outside `1..=dim` or a fraction outside (0, 1].
pub fn fit_model(moments: &Moments, opts: &FitOptions) -> Result<Model> {
    fit_model_with_spectrum(moments, opts).map(|(model, _)| model)
}

/// [`fit_model`] that also returns the whole spectrum (for reports).
///
/// # Errors
/// As [`fit_model`].
pub fn fit_model_with_spectrum(moments: &Moments, opts: &FitOptions) -> Result<(Model, Spectrum)> {
    crate::pool::install(|| fit_in_pool(moments, opts))
}

fn fit_in_pool(moments: &Moments, opts: &FitOptions) -> Result<(Model, Spectrum)> {
    let d = moments.dim();
    if let Rank::Fixed(r) = opts.rank {
        if r == 0 || r > d {
            return Err(Error::arg("rank", format!("must be in 1..={d}, got {r}")));
        }
    }
    if let Rank::Explained(f) = opts.rank {
        check_fraction(f)?;
    }
    let cov = moments.covariance()?;
    let (s, u) = eigen(&cov)?;
    let (s, u) = (s.as_ref(), u.as_ref());
    // faer sorts ascending; walk from the end for the largest first.
    let order: Vec<usize> = (0..d).rev().collect();
    let eigvals: Vec<f64> = order.iter().map(|&k| s[k].max(0.0)).collect();
    let total: f64 = eigvals.iter().sum();

    let rank = match opts.rank {
        Rank::Full => d,
        Rank::Fixed(r) => r,
        // Rounding may leave the full sum a hair below f·total: then all modes.
        Rank::Explained(f) => rank_for(&eigvals, total, f)?.unwrap_or(d),
    };
    let kept: f64 = eigvals[..rank].iter().sum();
    let residual_var = match opts.residual {
        Residual::Mean if rank < d => (total - kept).max(0.0) / (d - rank) as f64,
        _ => 0.0,
    };

    let mut eigvecs = vec![0f32; rank * d];
    for (row, &k) in eigvecs.chunks_mut(d).zip(&order) {
        let col = u.col(k);
        let sign = canonical_sign((0..d).map(|i| col[i]));
        for (i, v) in row.iter_mut().enumerate() {
            *v = (sign * col[i]) as f32;
        }
    }
    let explained = if total > 0.0 { kept / total } else { 1.0 };
    let mean: Vec<f32> = moments.mean().iter().map(|&m| m as f32).collect();
    let mut meta = opts.meta.clone();
    meta.sample_count = moments.count();
    meta.fit = Some(FitInfo {
        method: FitMethod::Exact,
        passes: 1,
        sketch_width: None,
        seed: None,
        explained,
        captured_estimate: None,
    });
    let model = Model::from_parts(mean, eigvals[..rank].to_vec(), eigvecs, residual_var, meta)?;
    let spectrum = Spectrum {
        explained,
        eigvals,
        rank,
        residual_var,
    };
    Ok((model, spectrum))
}

fn check_fraction(f: f64) -> Result<()> {
    if f > 0.0 && f <= 1.0 {
        Ok(())
    } else {
        Err(Error::arg(
            "explained",
            format!("must be a fraction in (0, 1], got {f}"),
        ))
    }
}

/// The fewest leading `eigvals` (non-increasing) whose sum reaches `f` of `total`, or `None`
/// when all of them do not.
///
/// # Errors
/// `InvalidArgument` for `f` outside (0, 1].
fn rank_for(eigvals: &[f64], total: f64, f: f64) -> Result<Option<usize>> {
    check_fraction(f)?;
    let mut acc = 0.0;
    for (k, &l) in eigvals.iter().enumerate() {
        acc += l;
        if acc >= f * total {
            return Ok(Some(k + 1));
        }
    }
    Ok(None)
}
