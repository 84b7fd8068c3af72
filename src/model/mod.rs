//! The Gaussian model G = (mean, eigvecs, eigvals, residual_var), its validation and its
//! safetensors file format (SPEC §2, §7).
//!
//! Storage: `mean` and `eigvecs` in f32 (they are what the fast paths stream), `eigvals` and
//! `residual_var` in f64 (they only feed the per-mode coefficients). `eigvecs` is row-major
//! `rank x dim`: row k is the unit eigenvector u_k, contiguous.

use std::collections::{BTreeMap, HashMap};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::aligned::AlignedF32;
use crate::error::{Error, Result};

mod components;
mod file;

pub use components::MAX_COMPONENTS;
pub(crate) use file::write_atomic;

/// Largest allowed deviation of the eigenvector Gram matrix from the identity, per entry
/// (and of each eigenvector's norm from 1).
pub const ORTHONORMAL_TOL: f64 = 1e-3;

/// The model-file format name, stored in the metadata key `format`.
pub const FILE_FORMAT: &str = "gaussskip";
/// The model-file format version, stored in the metadata key `format_version`.
pub const FILE_FORMAT_VERSION: u32 = 2;

/// Above this many multiply-adds the Gram check uses random probes instead of the full
/// `rank x rank` product (a full-rank 16384-dim model would otherwise take minutes to load).
const EXACT_GRAM_BUDGET: f64 = 1e11;

/// Entries of the Gram matrix computed at once by the orthonormality check.
const GRAM_BLOCK: usize = 1 << 18;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Descriptive metadata carried in the model file.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ModelMeta {
    /// Shape of one data item, e.g. `[3, 32, 32]` (product = dim); empty when unknown.
    pub item_shape: Vec<usize>,
    /// The space the data vectors live in, e.g. `"[-1,1]"`.
    pub value_space: String,
    /// Number of data items the moments were computed from (0 when unknown).
    pub sample_count: u64,
    /// Free text: where the model came from.
    pub source: String,
    /// How the model was fitted (`None` when unknown, e.g. a model built from parts).
    pub fit: Option<FitInfo>,
    /// Hand-off calibrations, one per sampler and schedule (metadata key `calibration`,
    /// JSON; see [`crate::calibrate`]).
    pub calibrations: crate::calibrate::Calibrations,
}

/// How the eigenpairs of a fitted model were computed (SPEC §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FitMethod {
    /// Eigendecomposition of the full dim x dim covariance.
    Exact,
    /// Randomized low-rank sketch of the covariance (memory O(dim x width)).
    Sketch,
}

impl FitMethod {
    /// The name stored in the model file: `exact` or `sketch`.
    pub fn name(self) -> &'static str {
        match self {
            FitMethod::Exact => "exact",
            FitMethod::Sketch => "sketch",
        }
    }
}

/// What the model file records about its fit (metadata keys `fit_*`, see the README).
#[derive(Clone, Debug, PartialEq)]
pub struct FitInfo {
    /// `fit_method`.
    pub method: FitMethod,
    /// `fit_passes`: reads of the data (1 for the exact fit).
    pub passes: u32,
    /// `fit_sketch_width`: columns of the sketch, rank + oversampling (sketch only).
    pub sketch_width: Option<usize>,
    /// `fit_seed`: seed of the sketch's random test matrix (sketch only).
    pub seed: Option<u64>,
    /// `fit_explained`: fraction of the data's total variance (its exactly streamed trace)
    /// that the kept modes carry.
    pub explained: f64,
    /// `fit_captured_estimate`: for a sketch of two or more passes, the fraction of the
    /// top-rank variance found by the last pass that the previous pass's subspace already
    /// held; a conservative estimate of how much of the exact top-rank variance the model's
    /// subspace captures (1 = converged).
    pub captured_estimate: Option<f64>,
}

impl FitInfo {
    fn to_metadata(&self, meta: &mut BTreeMap<String, String>) {
        let mut put = |k: &str, v: String| {
            meta.insert(k.to_string(), v);
        };
        put("fit_method", self.method.name().to_string());
        put("fit_passes", self.passes.to_string());
        put("fit_explained", format!("{:?}", self.explained));
        if let Some(w) = self.sketch_width {
            put("fit_sketch_width", w.to_string());
        }
        if let Some(s) = self.seed {
            put("fit_seed", s.to_string());
        }
        if let Some(c) = self.captured_estimate {
            put("fit_captured_estimate", format!("{c:?}"));
        }
    }

    /// Reads the `fit_*` keys; `Ok(None)` when the file has none (older files).
    fn from_metadata(
        meta: &HashMap<String, String>,
    ) -> std::result::Result<Option<FitInfo>, String> {
        let Some(method) = meta.get("fit_method") else {
            return Ok(None);
        };
        let method = match method.as_str() {
            "exact" => FitMethod::Exact,
            "sketch" => FitMethod::Sketch,
            other => {
                return Err(format!(
                    "metadata fit_method {other:?} is not \"exact\" or \"sketch\""
                ))
            }
        };
        fn num<T: std::str::FromStr>(
            meta: &HashMap<String, String>,
            key: &str,
        ) -> std::result::Result<Option<T>, String> {
            meta.get(key)
                .map(|v| {
                    v.parse::<T>()
                        .map_err(|_| format!("metadata {key} {v:?} is not a valid number"))
                })
                .transpose()
        }
        let fraction = |key: &str| -> std::result::Result<Option<f64>, String> {
            match num::<f64>(meta, key)? {
                Some(f) if !(0.0..=1.0 + 1e-9).contains(&f) => {
                    Err(format!("metadata {key} = {f} is not a fraction in [0, 1]"))
                }
                other => Ok(other),
            }
        };
        Ok(Some(FitInfo {
            method,
            passes: num(meta, "fit_passes")?.ok_or("metadata fit_passes is missing")?,
            sketch_width: num(meta, "fit_sketch_width")?,
            seed: num(meta, "fit_seed")?,
            explained: fraction("fit_explained")?.ok_or("metadata fit_explained is missing")?,
            captured_estimate: fraction("fit_captured_estimate")?,
        }))
    }
}

/// An immutable Gaussian model of one or more components (one Gaussian per class); cheap to
/// share across threads (`Arc<Model>`).
///
/// The accessors [`Model::mean`], [`Model::eigvals`], [`Model::eigvecs`] and
/// [`Model::residual_var`] describe component 0; [`Model::component`] gives any component as
/// a one-component model, and the operations take a component index per row.
#[derive(Debug)]
pub struct Model {
    dim: usize,
    rank: usize,
    mean: Vec<f32>,
    /// ‖mean‖₂ and max |mean_i|, in f64 (the CPU path's range and rounding checks use them
    /// at every call).
    mean_norms: (f64, f64),
    eigvals: Vec<f64>,
    eigvecs: AlignedF32,
    residual_var: f64,
    meta: ModelMeta,
    id: u64,
    drop_hooks: DropHooks,
    /// Component 0's label and item count.
    label: String,
    count: u64,
    /// Components 1..K, each a one-component model.
    others: Vec<Model>,
}

/// Called with the model's id when it is dropped: device caches free their copies.
type DropHook = Box<dyn FnOnce(u64) + Send>;

/// The hooks of one model.
#[derive(Default)]
struct DropHooks(Mutex<Vec<DropHook>>);

impl std::fmt::Debug for DropHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|v| v.len()).unwrap_or(0);
        write!(f, "{n} drop hook(s)")
    }
}

impl Model {
    /// Builds a model from its parts, validating everything.
    ///
    /// `eigvecs` is row-major `rank x dim` (row k = u_k), `eigvals` non-increasing and >= 0.
    ///
    /// # Errors
    /// `ShapeMismatch` for inconsistent lengths, `NonFinite` for NaN/Inf, `InvalidModel` for
    /// negative or unsorted variances or eigenvectors that are not orthonormal within
    /// [`ORTHONORMAL_TOL`].
    pub fn from_parts(
        mean: Vec<f32>,
        eigvals: Vec<f64>,
        eigvecs: Vec<f32>,
        residual_var: f64,
        meta: ModelMeta,
    ) -> Result<Model> {
        let dim = mean.len();
        let rank = eigvals.len();
        if dim == 0 {
            return Err(Error::shape("mean", "dim >= 1", 0));
        }
        if rank == 0 || rank > dim {
            return Err(Error::shape("eigvals", format!("1..={dim} values"), rank));
        }
        if eigvecs.len() != rank * dim {
            return Err(Error::shape(
                "eigvecs",
                format!("{rank} x {dim} = {}", rank * dim),
                eigvecs.len(),
            ));
        }
        crate::error::check_finite("mean", &mean)?;
        crate::error::check_finite("eigvals", &eigvals)?;
        crate::error::check_finite("eigvecs", &eigvecs)?;
        crate::error::check_finite("residual_var", &[residual_var])?;
        if let Some(k) = eigvals.iter().position(|&l| l < 0.0) {
            return Err(Error::InvalidModel(format!(
                "eigvals[{k}] = {} is negative",
                eigvals[k]
            )));
        }
        if let Some(k) = (1..rank).find(|&k| eigvals[k] > eigvals[k - 1]) {
            return Err(Error::InvalidModel(format!(
                "eigvals must be sorted in non-increasing order, but eigvals[{k}] = {} > eigvals[{}] = {}",
                eigvals[k],
                k - 1,
                eigvals[k - 1]
            )));
        }
        if residual_var < 0.0 {
            return Err(Error::InvalidModel(format!(
                "residual_var = {residual_var} is negative"
            )));
        }
        if !item_shape_fits(&meta.item_shape, dim) {
            return Err(Error::InvalidModel(format!(
                "item shape {:?} does not have {dim} elements",
                meta.item_shape
            )));
        }
        crate::pool::install(|| check_orthonormal(&eigvecs, rank, dim))?;
        let eigvecs = AlignedF32::from_vec(eigvecs, "the eigenvectors")?;
        let mean_l2 = mean
            .iter()
            .map(|&m| f64::from(m) * f64::from(m))
            .sum::<f64>()
            .sqrt();
        let mean_max = mean.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
        Ok(Model {
            dim,
            rank,
            mean,
            mean_norms: (mean_l2, mean_max),
            eigvals,
            eigvecs,
            residual_var,
            label: String::new(),
            count: meta.sample_count,
            meta,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            drop_hooks: DropHooks::default(),
            others: Vec::new(),
        })
    }

    /// Data dimension d.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of modes r.
    pub fn rank(&self) -> usize {
        self.rank
    }
    /// The mean, length d.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }
    /// ‖mean‖₂ and the largest |mean_i|.
    pub(crate) fn mean_norms(&self) -> (f64, f64) {
        self.mean_norms
    }
    /// Mode variances, non-increasing, length r.
    pub fn eigvals(&self) -> &[f64] {
        &self.eigvals
    }
    /// Eigenvectors, row-major r x d.
    pub fn eigvecs(&self) -> &[f32] {
        &self.eigvecs
    }
    /// Variance of every direction orthogonal to the eigenvectors.
    pub fn residual_var(&self) -> f64 {
        self.residual_var
    }
    /// Descriptive metadata.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }
    /// A process-unique identity, used by backends to cache uploaded copies.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Runs `hook` with [`Model::id`] when the model is dropped (a device cache frees its copy).
    pub(crate) fn on_drop(&self, hook: DropHook) {
        self.drop_hooks
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// The metadata the model file stores (SPEC §7, the `fit_*` keys, `components` and
    /// `calibration`), as
    /// text.
    pub fn file_metadata(&self) -> BTreeMap<String, String> {
        let shape_text = self
            .meta
            .item_shape
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut meta: BTreeMap<String, String> = [
            ("format", FILE_FORMAT.to_string()),
            ("format_version", FILE_FORMAT_VERSION.to_string()),
            ("item_shape", shape_text),
            ("value_space", self.meta.value_space.clone()),
            ("sample_count", self.meta.sample_count.to_string()),
            ("source", self.meta.source.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(fit) = &self.meta.fit {
            fit.to_metadata(&mut meta);
        }
        let components: Vec<serde_json::Value> = self
            .labels()
            .into_iter()
            .zip(self.counts())
            .map(|(label, count)| serde_json::json!({ "label": label, "count": count }))
            .collect();
        meta.insert(
            "components".to_string(),
            serde_json::Value::Array(components).to_string(),
        );
        if !self.meta.calibrations.is_empty() {
            meta.insert(
                crate::calibrate::store::METADATA_KEY.to_string(),
                self.meta.calibrations.to_json(),
            );
        }
        meta
    }
}

fn item_shape_fits(shape: &[usize], dim: usize) -> bool {
    // Checked: a wrapped product of hostile sizes could equal dim.
    shape.is_empty() || crate::npy::element_count(shape) == Some(dim)
}

/// Parses "3,32,32" (empty text = unknown shape).
pub fn parse_item_shape(text: &str) -> std::result::Result<Vec<usize>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|p| match p.trim().parse::<usize>() {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(format!(
                "{text:?} is not a comma-separated list of positive sizes"
            )),
        })
        .collect()
}

/// Checks row norms and the Gram matrix E E^T against the identity.
fn check_orthonormal(eigvecs: &[f32], rank: usize, dim: usize) -> Result<()> {
    for k in 0..rank {
        let row = &eigvecs[k * dim..(k + 1) * dim];
        let n2: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        if (n2.sqrt() - 1.0).abs() > ORTHONORMAL_TOL {
            return Err(Error::InvalidModel(format!(
                "eigenvector {k} has norm {:.6}, expected 1 (tolerance {ORTHONORMAL_TOL})",
                n2.sqrt()
            )));
        }
    }
    let e = faer::MatRef::from_row_major_slice(eigvecs, rank, dim);
    if (rank * rank) as f64 * dim as f64 <= EXACT_GRAM_BUDGET {
        // The lower triangle of E E^T, a block of rows at a time, so the check needs at most
        // GRAM_BLOCK values besides the model.
        let block = (GRAM_BLOCK / rank).max(1);
        for i0 in (0..rank).step_by(block) {
            let rows = block.min(rank - i0);
            let g = e.subrows(i0, rows) * e.subrows(0, i0 + rows).transpose();
            for i in 0..rows {
                for j in 0..i0 + i {
                    let v = g[(i, j)] as f64;
                    if v.abs() > ORTHONORMAL_TOL {
                        return Err(Error::InvalidModel(format!(
                            "eigenvectors {j} and {} are not orthogonal: dot product {v:.3e} (tolerance {ORTHONORMAL_TOL})",
                            i0 + i
                        )));
                    }
                }
            }
        }
    } else {
        // Random probes z: (E E^T - I) z must stay small in every entry relative to |z|.
        let mut rng = crate::rng::Rng::new(0x6761_7573_7373_6b69);
        for _ in 0..8 {
            let z: Vec<f32> = (0..rank).map(|_| rng.normal() as f32).collect();
            let zn = z.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            let zc = faer::ColRef::from_slice(&z);
            let back = e * (e.transpose() * zc);
            let worst = (0..rank)
                .map(|i| ((back[i] - z[i]) as f64).abs())
                .fold(0.0, f64::max);
            if worst > ORTHONORMAL_TOL * zn {
                return Err(Error::InvalidModel(format!(
                    "eigenvectors are not orthonormal: a random probe moved by {:.3e} relative (tolerance {ORTHONORMAL_TOL})",
                    worst / zn
                )));
            }
        }
    }
    Ok(())
}

impl Drop for Model {
    fn drop(&mut self) {
        let hooks = std::mem::take(
            self.drop_hooks
                .0
                .get_mut()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for hook in hooks {
            hook(self.id);
        }
    }
}
