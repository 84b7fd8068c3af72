//! The low-rank fit for dimensions where the dim x dim matrix does not fit (SPEC §6): a
//! randomized sketch of the covariance with memory O(dim x width), width = rank + oversampling.
//!
//! With S the scatter (centred second-moment matrix) of the items and W a `dim x width` test
//! matrix, a pass streams the items once and accumulates Y = S W as Σ x̃ (x̃ᵀ W) over centred
//! rows x̃, together with the count, the mean and the trace of S. Batches, shards and whole
//! sketches combine with the pairwise update of Chan et al. (as [`Moments`](super::Moments)
//! does), so sketches of shards merge exactly: Y_ab = Y_a + Y_b + (n_a n_b / n) δ (δᵀ W).
//!
//! Pass 1 uses a seeded Gaussian W (the same on every machine for a seed). Each further pass
//! uses W = orth(Y) of the pass before (subspace iteration). The model comes from the last
//! pass's (W, Y) as the Nyström approximation S ≈ Y (WᵀY)⁺ Yᵀ; λ⊥ for `Residual::Mean` uses
//! the exactly streamed trace. One pass suits data that can be read only once; more passes
//! are more accurate (measured figures in the README).
//!
//! ```
//! use gaussskip::fit::{FitOptions, Rank, Sketch, SketchOptions};
//! let rows: Vec<f32> = (0..300).map(|i| ((i * 7919) % 97) as f32).collect(); // 50 items of 6
//! let mut sketch = Sketch::new(6, &SketchOptions { passes: 2, ..SketchOptions::new(2) })?;
//! sketch.add_rows(&rows)?;          // pass 1
//! sketch.next_pass()?;
//! sketch.add_rows(&rows)?;          // pass 2: the same items again
//! let (model, _) = sketch.fit(&FitOptions { rank: Rank::Fixed(2), ..FitOptions::default() })?;
//! assert_eq!(model.rank(), 2);
//! # Ok::<(), gaussskip::Error>(())
//! ```

use std::borrow::Cow;

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef};
use rayon::prelude::*;

use super::lowrank::{canonical_sign, nystrom, orthonormal_basis, ritz_values};
use super::{rank_for, FitOptions, Rank, Residual, Spectrum};
use crate::error::{check_finite, Error, Result};
use crate::model::{FitInfo, FitMethod, Model};
use crate::rng::Rng;

/// Passes of the default sketch: on the bundled MNIST, on a slowly decaying synthetic spectrum
/// and on image-like latents this keeps every top-rank eigenvalue within 1 % (README,
/// "Fitting at latent scale"); each pass is one read of the data.
pub const DEFAULT_PASSES: u32 = 5;
/// Least oversampling of the default sketch (the default is the rank itself, at least this).
pub const MIN_OVERSAMPLING: usize = 10;
/// Values per internal batch (bounds the f64 copy of a batch whatever the dimension).
const BATCH_VALUES: usize = 1 << 22;
/// Largest internal batch in rows (small dimensions).
const BATCH_ROWS: usize = 4096;

/// How a [`Sketch`] is planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SketchOptions {
    /// Modes the model will keep (1..=dim).
    pub rank: usize,
    /// Extra sketch columns beyond the rank; `None` for the default, the rank itself (at least
    /// [`MIN_OVERSAMPLING`]). The width is capped at the dimension.
    pub oversampling: Option<usize>,
    /// Reads of the data, at least 1.
    pub passes: u32,
    /// Seed of the Gaussian test matrix of pass 1.
    pub seed: u64,
}

impl SketchOptions {
    /// The default plan for `rank` modes: [`DEFAULT_PASSES`] passes, oversampling = rank,
    /// seed 0.
    pub fn new(rank: usize) -> SketchOptions {
        SketchOptions {
            rank,
            oversampling: None,
            passes: DEFAULT_PASSES,
            seed: 0,
        }
    }

    /// Columns of the sketch for `dim`-vectors: rank + oversampling, at most `dim`.
    pub fn width(&self, dim: usize) -> usize {
        let over = self.oversampling.unwrap_or(self.rank.max(MIN_OVERSAMPLING));
        self.rank.saturating_add(over).min(dim)
    }
}

/// One pass's mergeable sums: count, mean, Y = S W about the mean, and the trace of S.
#[derive(Clone, Debug)]
pub(super) struct PassSums {
    pub(super) count: u64,
    pub(super) mean: Vec<f64>,
    pub(super) y: Mat<f64>,
    pub(super) trace: f64,
}

impl PassSums {
    pub(super) fn new(dim: usize, width: usize) -> PassSums {
        PassSums {
            count: 0,
            mean: vec![0.0; dim],
            y: Mat::zeros(dim, width),
            trace: 0.0,
        }
    }

    /// Chan et al. for a part of `nb` items with mean `mean_b` whose own Y and trace were
    /// already added: mean += δ n_b/n, Y += (n_a n_b/n) δ (δᵀW), trace += (n_a n_b/n) |δ|².
    pub(super) fn combine_means(&mut self, w: MatRef<'_, f64>, nb: u64, mean_b: &[f64]) {
        if nb == 0 {
            return;
        }
        let na = self.count;
        let n = na + nb;
        let delta: Vec<f64> = mean_b.iter().zip(&self.mean).map(|(b, a)| b - a).collect();
        if na > 0 {
            let c = (na as f64) * (nb as f64) / (n as f64);
            let dm = MatRef::from_column_major_slice(&delta, delta.len(), 1);
            let mut g = Mat::<f64>::zeros(1, w.ncols());
            matmul(
                g.as_mut(),
                Accum::Replace,
                dm.transpose(),
                w,
                1.0,
                faer::get_global_parallelism(),
            );
            matmul(
                self.y.as_mut(),
                Accum::Add,
                dm,
                g.as_ref(),
                c,
                faer::get_global_parallelism(),
            );
            self.trace += c * delta.iter().map(|v| v * v).sum::<f64>();
        }
        let frac = nb as f64 / n as f64;
        for (m, dl) in self.mean.iter_mut().zip(&delta) {
            *m += dl * frac;
        }
        self.count = n;
    }

    /// Adds `other` (sums over the same W) as if its items had been added here.
    pub(super) fn merge(&mut self, w: MatRef<'_, f64>, other: &PassSums) {
        self.y += &other.y;
        self.trace += other.trace;
        self.combine_means(w, other.count, &other.mean);
    }

    /// Centres `batch` (row-major `n x dim`) on its own mean and adds it: Y += X̃ᵀ (X̃ W).
    fn add_batch(&mut self, w: MatRef<'_, f64>, batch: &mut [f64]) {
        let d = self.mean.len();
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
        bmean.iter_mut().for_each(|m| *m /= n as f64);
        let mut trace = 0.0;
        for row in batch.chunks_mut(d) {
            for (v, &m) in row.iter_mut().zip(&bmean) {
                *v -= m;
                trace += *v * *v;
            }
        }
        let x = MatRef::from_row_major_slice(batch, n, d);
        let mut p = Mat::<f64>::zeros(n, w.ncols());
        let par = faer::get_global_parallelism();
        matmul(p.as_mut(), Accum::Replace, x, w, 1.0, par);
        matmul(
            self.y.as_mut(),
            Accum::Add,
            x.transpose(),
            p.as_ref(),
            1.0,
            par,
        );
        self.trace += trace;
        self.combine_means(w, n as u64, &bmean);
    }
}

/// Count, mean and trace of pass 1, which every later pass must reproduce.
#[derive(Clone, Debug)]
pub(super) struct FirstPass {
    pub(super) count: u64,
    pub(super) mean: Vec<f64>,
    pub(super) trace: f64,
}

/// A streaming, mergeable randomized sketch of the covariance of `dim`-vectors.
///
/// Memory: two `dim x width` f64 matrices (the test matrix and Y), plus a batch; at the end of
/// a pass and in [`Sketch::fit`] a few more of that size for the factorisations.
///
/// Workflow: [`Sketch::new`], then for each pass add every item ([`Sketch::add_rows`], in any
/// order and batching, or in shards filled separately and [`Sketch::merge`]d), then
/// [`Sketch::next_pass`], except after the last pass, which goes to [`Sketch::fit`].
/// [`Sketch::to_bytes`] / [`Sketch::from_bytes`] move the whole state between processes.
#[derive(Debug)]
pub struct Sketch {
    pub(super) dim: usize,
    pub(super) opts: SketchOptions,
    pub(super) width: usize,
    /// Pass in progress, 1-based.
    pub(super) pass: u32,
    /// W, `dim x width`.
    pub(super) test: Mat<f64>,
    /// Identifies W: sketches merge only over the same test matrix.
    pub(super) test_id: u64,
    pub(super) sums: PassSums,
    pub(super) first: Option<FirstPass>,
    /// A batch in f64, kept between calls.
    pub(super) scratch: Vec<f64>,
    #[cfg(feature = "cuda")]
    pub(super) device: Option<super::sketch_cuda::CudaSketch>,
}

impl Sketch {
    /// Plans a sketch of `dim`-vectors.
    ///
    /// # Errors
    /// `InvalidArgument` for `dim` 0, a rank outside `1..=dim`, zero passes, or matrices
    /// whose size overflows.
    pub fn new(dim: usize, opts: &SketchOptions) -> Result<Sketch> {
        if dim == 0 {
            return Err(Error::arg("dim", "must be at least 1"));
        }
        if opts.rank == 0 || opts.rank > dim {
            return Err(Error::arg(
                "rank",
                format!("must be in 1..={dim}, got {}", opts.rank),
            ));
        }
        if opts.passes == 0 {
            return Err(Error::arg("passes", "must be at least 1"));
        }
        let width = opts.width(dim);
        let fits = dim
            .checked_mul(width)
            .and_then(|n| n.checked_mul(8 * 4))
            .is_some_and(|b| b <= isize::MAX as usize);
        if !fits {
            return Err(Error::arg(
                "rank",
                format!("a {dim} x {width} sketch does not fit in memory"),
            ));
        }
        let test = gaussian_test_matrix(dim, width, opts.seed);
        let mut opts = opts.clone();
        opts.oversampling = Some(width - opts.rank);
        Ok(Sketch {
            dim,
            test_id: first_test_id(dim, width, opts.seed),
            opts,
            width,
            pass: 1,
            test,
            sums: PassSums::new(dim, width),
            first: None,
            scratch: Vec::new(),
            #[cfg(feature = "cuda")]
            device: None,
        })
    }

    /// Length of one item.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// The plan, with the oversampling resolved.
    pub fn options(&self) -> &SketchOptions {
        &self.opts
    }
    /// Columns of the sketch (rank + oversampling, at most dim).
    pub fn width(&self) -> usize {
        self.width
    }
    /// The pass in progress, 1-based.
    pub fn pass(&self) -> u32 {
        self.pass
    }
    /// Items added in the pass in progress (on the host and on a device).
    pub fn count(&self) -> u64 {
        #[cfg(feature = "cuda")]
        if let Some(dev) = &self.device {
            return self.sums.count + dev.count();
        }
        self.sums.count
    }

    /// An empty sketch for the same pass over the same test matrix, to fill with a shard of
    /// the data and [`Sketch::merge`] back (on the host, whatever device this one uses).
    pub fn empty_like(&self) -> Sketch {
        Sketch {
            dim: self.dim,
            opts: self.opts.clone(),
            width: self.width,
            pass: self.pass,
            test: self.test.clone(),
            test_id: self.test_id,
            sums: PassSums::new(self.dim, self.width),
            first: self.first.clone(),
            scratch: Vec::new(),
            #[cfg(feature = "cuda")]
            device: None,
        }
    }

    /// Adds items given as row-major `items x dim` f32 values.
    ///
    /// # Errors
    /// `ShapeMismatch` when the length is not a multiple of `dim`; `NonFinite` for NaN/Inf
    /// (nothing is added then); on a device, `Cuda`/`OutOfMemory` from the device.
    pub fn add_rows(&mut self, rows: &[f32]) -> Result<()> {
        self.check_rows(rows)?;
        self.add_converted(rows, |buf, chunk| {
            buf.extend(chunk.iter().map(|&v| f64::from(v)))
        })
    }

    /// Adds items given as row-major `items x dim` f64 values.
    ///
    /// # Errors
    /// As [`Sketch::add_rows`].
    pub fn add_rows_f64(&mut self, rows: &[f64]) -> Result<()> {
        self.check_rows(rows)?;
        self.add_converted(rows, |buf, chunk| buf.extend_from_slice(chunk))
    }

    /// Copies each batch of `rows` into the reused f64 scratch (the batch is centred in
    /// place) and adds it.
    fn add_converted<T>(&mut self, rows: &[T], fill: impl Fn(&mut Vec<f64>, &[T])) -> Result<()> {
        let mut buf = std::mem::take(&mut self.scratch);
        let mut result = Ok(());
        for chunk in rows.chunks(self.batch_rows() * self.dim) {
            buf.clear();
            fill(&mut buf, chunk);
            result = self.add_batch(&mut buf);
            if result.is_err() {
                break;
            }
        }
        self.scratch = buf;
        result
    }

    fn batch_rows(&self) -> usize {
        (BATCH_VALUES / self.dim).clamp(1, BATCH_ROWS)
    }

    fn check_rows<T: Copy + Into<f64>>(&self, rows: &[T]) -> Result<()> {
        if !rows.len().is_multiple_of(self.dim) {
            return Err(Error::shape(
                "rows",
                format!("a multiple of dim = {}", self.dim),
                rows.len(),
            ));
        }
        check_finite("rows", rows)
    }

    fn add_batch(&mut self, batch: &mut [f64]) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(dev) = &mut self.device {
            return dev.add_host_rows(batch);
        }
        self.sums.add_batch(self.test.as_ref(), batch);
        Ok(())
    }

    /// Adds everything `other` has seen in this pass, exactly as if its items had been added
    /// here.
    ///
    /// # Errors
    /// `InvalidArgument` when the sketches do not share dimension, plan, pass and test
    /// matrix; `Cuda` when a device's sums cannot be read.
    pub fn merge(&mut self, other: &Sketch) -> Result<()> {
        if other.dim != self.dim
            || other.width != self.width
            || other.opts != self.opts
            || other.pass != self.pass
            || other.test_id != self.test_id
        {
            return Err(Error::arg(
                "other",
                format!(
                    "cannot merge a sketch of dim {}, width {}, pass {} of {}, seed {} into one of dim {}, width {}, pass {} of {}, seed {}{}",
                    other.dim, other.width, other.pass, other.opts.passes, other.opts.seed,
                    self.dim, self.width, self.pass, self.opts.passes, self.opts.seed,
                    if other.test_id != self.test_id && other.pass == self.pass && other.pass > 1 {
                        " (the test matrices differ: a later pass's sketches must all come from the state the previous pass ended with)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let theirs = other.totals()?;
        self.sums.merge(self.test.as_ref(), &theirs);
        Ok(())
    }

    /// Moves the sums on a device into the host's (the same sums, held in one place).
    fn fold_device(&mut self) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(dev) = &mut self.device {
            if let Some(part) = dev.download()? {
                dev.clear()?;
                self.sums.merge(self.test.as_ref(), &part);
            }
        }
        Ok(())
    }

    /// This pass's sums, including those still on a device.
    pub(super) fn totals(&self) -> Result<Cow<'_, PassSums>> {
        #[cfg(feature = "cuda")]
        if let Some(dev) = &self.device {
            let mut all = self.sums.clone();
            if let Some(part) = dev.download()? {
                all.merge(self.test.as_ref(), &part);
            }
            return Ok(Cow::Owned(all));
        }
        Ok(Cow::Borrowed(&self.sums))
    }

    /// Ends the pass in progress: the next pass sketches with W = orth(Y) of this one.
    ///
    /// # Errors
    /// `InvalidArgument` after the last planned pass; `Dataset` with fewer than two items, or
    /// when this pass did not see the same items as pass 1.
    pub fn next_pass(&mut self) -> Result<()> {
        if self.pass >= self.opts.passes {
            return Err(Error::arg(
                "pass",
                format!(
                    "pass {} was the last of {}; fit the model now",
                    self.pass, self.opts.passes
                ),
            ));
        }
        self.fold_device()?;
        self.check_pass(&self.sums)?;
        // Y becomes the next test matrix in its own storage; the new sums are allocated once
        // the old test matrix is gone, so the peak stays at three dim x width matrices.
        let sums = std::mem::replace(&mut self.sums, PassSums::new(self.dim, 0));
        self.first.get_or_insert(FirstPass {
            count: sums.count,
            mean: sums.mean,
            trace: sums.trace,
        });
        let test = orthonormal_basis(sums.y);
        self.test_id = matrix_id(test.as_ref());
        self.test = test;
        self.sums = PassSums::new(self.dim, self.width);
        self.pass += 1;
        #[cfg(feature = "cuda")]
        if let Some(dev) = &mut self.device {
            dev.set_test(self.test.as_ref())?;
        }
        Ok(())
    }

    /// The pass's sums must describe at least two items, the same ones as pass 1.
    fn check_pass(&self, sums: &PassSums) -> Result<()> {
        if sums.count < 2 {
            return Err(Error::Dataset(format!(
                "pass {} saw {} item(s); a covariance needs at least 2",
                self.pass, sums.count
            )));
        }
        let Some(first) = &self.first else {
            return Ok(());
        };
        let scale = (first.trace / first.count as f64).sqrt()
            + first.mean.iter().fold(0.0f64, |a, m| a.max(m.abs()));
        let moved = sums
            .mean
            .iter()
            .zip(&first.mean)
            .fold(0.0f64, |a, (p, q)| a.max((p - q).abs()));
        if sums.count != first.count || moved > 1e-8 * scale {
            return Err(Error::Dataset(format!(
                "pass {} saw different data than pass 1 ({} items vs {}, means {} apart): every pass must read the same items (no random augmentation)",
                self.pass, sums.count, first.count, moved
            )));
        }
        Ok(())
    }

    /// The model from the last pass: the Nyström approximation's top eigenpairs, divided by
    /// N − 1, and λ⊥ from the streamed trace. `opts.rank` is `Rank::Fixed(r)` with r at most
    /// the planned rank, or `Rank::Explained(f)` (the fewest of the planned modes that carry
    /// f of the total variance).
    ///
    /// # Errors
    /// `InvalidArgument` before the last pass ends (passes left), for `Rank::Full` or a rank
    /// above the planned one, or a fraction that the planned modes do not reach; `Dataset`
    /// with fewer than two items, data that changed between passes, or fewer directions of
    /// variance than the rank.
    pub fn fit(&self, opts: &FitOptions) -> Result<(Model, Spectrum)> {
        if self.pass < self.opts.passes {
            return Err(Error::arg(
                "pass",
                format!(
                    "the sketch is in pass {} of {}: read the data again (next_pass) before fitting",
                    self.pass, self.opts.passes
                ),
            ));
        }
        let sums = self.totals()?;
        self.check_pass(&sums)?;
        let n1 = (sums.count - 1) as f64;
        let (scatter_vals, vecs) = nystrom(self.test.as_ref(), sums.y.as_ref(), self.opts.rank)?;
        let eigvals: Vec<f64> = scatter_vals.iter().map(|&l| l / n1).collect();
        let total = (sums.trace / n1).max(0.0);
        let planned = self.opts.rank;
        let rank = match opts.rank {
            Rank::Full => {
                return Err(Error::arg(
                    "rank",
                    format!(
                        "a sketch keeps at most its planned {planned} modes, not all {}",
                        self.dim
                    ),
                ))
            }
            Rank::Fixed(r) if r == 0 || r > planned => {
                return Err(Error::arg(
                    "rank",
                    format!("must be in 1..={planned} (the sketch's planned rank), got {r}"),
                ))
            }
            Rank::Fixed(r) => r,
            Rank::Explained(f) => {
                let top = &eigvals[..planned.min(eigvals.len())];
                match rank_for(top, total, f)? {
                    Some(r) => r,
                    None => {
                        return Err(Error::arg(
                            "explained",
                            format!(
                                "the top {planned} modes carry only {:.4}% of the variance, less than {}%: plan a sketch of larger rank",
                                100.0 * top.iter().sum::<f64>() / total,
                                100.0 * f
                            ),
                        ))
                    }
                }
            }
        };
        if rank > eigvals.len() {
            return Err(Error::Dataset(format!(
                "the data has variance in only {} directions, fewer than the rank {rank} (too few items, or constant values); fit a smaller rank",
                eigvals.len()
            )));
        }
        let kept: f64 = eigvals[..rank].iter().sum();
        let residual_var = match opts.residual {
            Residual::Mean if rank < self.dim => (total - kept).max(0.0) / (self.dim - rank) as f64,
            _ => 0.0,
        };
        let captured = if self.pass > 1 {
            let ritz = ritz_values(self.test.as_ref(), sums.y.as_ref())?;
            let held: f64 = ritz[..rank.min(ritz.len())].iter().sum::<f64>() / n1;
            Some((held / kept).clamp(0.0, 1.0))
        } else {
            None
        };
        let d = self.dim;
        let mut eigvecs = vec![0f32; rank * d];
        for (k, row) in eigvecs.chunks_mut(d).enumerate() {
            let col = vecs.col(k);
            let sign = canonical_sign((0..d).map(|i| col[i]));
            for (i, v) in row.iter_mut().enumerate() {
                *v = (sign * col[i]) as f32;
            }
        }
        let explained = if total > 0.0 {
            (kept / total).min(1.0)
        } else {
            1.0
        };
        let mut meta = opts.meta.clone();
        meta.sample_count = sums.count;
        meta.fit = Some(FitInfo {
            method: FitMethod::Sketch,
            passes: self.pass,
            sketch_width: Some(self.width),
            seed: Some(self.opts.seed),
            explained,
            captured_estimate: captured,
        });
        let mean: Vec<f32> = sums.mean.iter().map(|&m| m as f32).collect();
        let model = Model::from_parts(mean, eigvals[..rank].to_vec(), eigvecs, residual_var, meta)?;
        Ok((
            model,
            Spectrum {
                eigvals,
                rank,
                explained,
                residual_var,
            },
        ))
    }
}

#[cfg(not(feature = "cuda"))]
impl Sketch {
    /// Computes the sketch's products on a CUDA device; this build has no CUDA backend.
    ///
    /// # Errors
    /// Always `NoCuda`.
    pub fn use_cuda(&mut self, ordinal: usize) -> Result<()> {
        Err(Error::NoCuda(format!(
            "CUDA device {ordinal} was asked for, but this build has no CUDA backend (enable the `cuda` feature); fit on the CPU"
        )))
    }

    /// Adds device rows; this build has no CUDA backend.
    ///
    /// # Errors
    /// Always `NoCuda`.
    ///
    /// # Safety
    /// Nothing is read.
    pub unsafe fn add_rows_cuda(
        &mut self,
        _x: *const std::ffi::c_void,
        _rows: usize,
        _stream: *mut std::ffi::c_void,
    ) -> Result<()> {
        Err(Error::NoCuda(
            "this build has no CUDA backend (enable the `cuda` feature)".into(),
        ))
    }
}

/// The seeded Gaussian test matrix of pass 1, `dim x width`, entries N(0, 1/dim). Column j
/// comes from its own generator, so it is the same on every machine and thread count.
fn gaussian_test_matrix(dim: usize, width: usize, seed: u64) -> Mat<f64> {
    let scale = 1.0 / (dim as f64).sqrt();
    let cols: Vec<Vec<f64>> = (0..width)
        .into_par_iter()
        .map(|j| {
            let mut rng = Rng::new(seed ^ (j as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            (0..dim).map(|_| rng.normal() * scale).collect()
        })
        .collect();
    Mat::from_fn(dim, width, |i, j| cols[j][i])
}

/// FNV-1a over 64-bit words.
fn fnv(words: impl IntoIterator<Item = u64>) -> u64 {
    words.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, w| {
        (h ^ w).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Identity of pass 1's test matrix: it is a function of these three numbers.
fn first_test_id(dim: usize, width: usize, seed: u64) -> u64 {
    fnv([0x6761_7573_7373_6b70, dim as u64, width as u64, seed])
}

/// Identity of a later pass's test matrix: a hash of its bits.
pub(super) fn matrix_id(w: MatRef<'_, f64>) -> u64 {
    fnv((0..w.ncols()).flat_map(|j| (0..w.nrows()).map(move |i| w[(i, j)].to_bits())))
}
