//! One error type for the whole crate. Every variant carries the context a user needs to fix
//! the call; the C ABI maps each variant to one stable status number (see `ffi`).

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, with enough context to say what and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required pointer or reference was missing (C ABI).
    #[error("argument `{arg}` is NULL")]
    NullPointer { arg: &'static str },

    /// A buffer or dimension does not have the size the call needs.
    #[error("`{arg}` has the wrong size: expected {expected}, got {got}")]
    ShapeMismatch {
        arg: &'static str,
        expected: String,
        got: String,
    },

    /// An input held NaN or ±Inf.
    #[error("`{arg}` holds a non-finite value (NaN or Inf) at index {index}")]
    NonFinite { arg: &'static str, index: usize },

    /// A noise level (alpha, sigma) that the operation cannot use. Levels print in Rust's
    /// debug form, so 1e-200 reads as `1e-200` and not as 200 digits.
    #[error("invalid noise level `{arg}` (alpha = {alpha:?}, sigma = {sigma:?}): {reason}")]
    InvalidNoise {
        arg: &'static str,
        alpha: f64,
        sigma: f64,
        reason: String,
    },

    /// Any other argument out of its domain.
    #[error("invalid argument `{arg}`: {reason}")]
    InvalidArgument { arg: &'static str, reason: String },

    /// Model parts that do not describe a valid Gaussian model.
    #[error("invalid model: {0}")]
    InvalidModel(String),

    /// A file that could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file that was read but whose content is not what it should be.
    #[error("{}: {reason}", path.display())]
    FileFormat { path: PathBuf, reason: String },

    /// Element type not supported for this call.
    #[error("unsupported dtype: {0}")]
    UnsupportedDtype(String),

    /// No CUDA driver, no device, or the crate was built without the CUDA backend.
    #[error("no CUDA backend: {0}")]
    NoCuda(String),

    /// A CUDA driver call failed.
    #[error("CUDA error: {0}")]
    Cuda(String),

    /// An allocation (host or device) failed.
    #[error("out of memory: {0}")]
    OutOfMemory(String),

    /// A dataset that cannot be fitted (empty, mixed shapes, unreadable items).
    #[error("dataset: {0}")]
    Dataset(String),

    /// A caller's callback (e.g. the network a calibration evaluates) reported a failure.
    #[error("callback failed: {0}")]
    Callback(String),
}

impl Error {
    #[doc(hidden)]
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    #[doc(hidden)]
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::FileFormat {
            path: path.into(),
            reason: reason.into(),
        }
    }

    #[doc(hidden)]
    pub fn shape(arg: &'static str, expected: impl ToString, got: impl ToString) -> Self {
        Error::ShapeMismatch {
            arg,
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }

    #[doc(hidden)]
    pub fn arg(arg: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            arg,
            reason: reason.into(),
        }
    }
}

/// A vector of `n` copies of `value`, or `OutOfMemory` naming `what` when the allocation
/// fails (instead of aborting the process).
pub(crate) fn try_vec<T: Clone>(n: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::OutOfMemory(format!(
            "{what}: {n} elements of {} bytes",
            std::mem::size_of::<T>()
        ))
    })?;
    v.resize(n, value);
    Ok(v)
}

/// A copy of `values`, or `OutOfMemory` naming `what`.
pub(crate) fn try_copy<T: Clone>(values: &[T], what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(values.len()).map_err(|_| {
        Error::OutOfMemory(format!(
            "{what}: {} elements of {} bytes",
            values.len(),
            std::mem::size_of::<T>()
        ))
    })?;
    v.extend_from_slice(values);
    Ok(v)
}

/// Returns `NonFinite` for the first NaN/Inf in `values`.
pub(crate) fn check_finite<T: Copy + Into<f64>>(arg: &'static str, values: &[T]) -> Result<()> {
    match values.iter().position(|&v| !v.into().is_finite()) {
        Some(index) => Err(Error::NonFinite { arg, index }),
        None => Ok(()),
    }
}
