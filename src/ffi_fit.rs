//! The C ABI of fitting beyond `gs_fit`: moments in f64 with exported state and metadata, the
//! low-rank sketch (CPU or cuBLAS), and a model's metadata as JSON. Same conventions as
//! `ffi` (its statuses, handles and panic boundary): every function returns `gs_status`,
//! writes its outputs only on success, and leaves a message for `gs_last_error_message`.
//!
//! Exported state (`*_export` / `*_import`) is a byte image: ask for its size with
//! `buf = NULL`, then pass a buffer of at least that many bytes.

#![allow(non_camel_case_types)]
// Every exported function checks its pointers before using them.
#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::Error;
use crate::ffi::{
    c_str, check_out, gs_model, gs_moments, gs_status, guard, non_null, slice, write_out,
    GS_RESIDUAL_MEAN, GS_RESIDUAL_ZERO,
};
use crate::fit::{
    choose_method, fit_model, FitOptions, Moments, Rank, Residual, Sketch, SketchOptions,
    DEFAULT_PASSES,
};
use crate::model::{FitMethod, ModelMeta};

/// `gs_fit_choose_method`: the exact eigendecomposition of the dim x dim covariance
/// (`gs_moments_*`).
pub const GS_FIT_EXACT: u32 = 0;
/// `gs_fit_choose_method`: the low-rank sketch (`gs_sketch_*`).
pub const GS_FIT_SKETCH: u32 = 1;

/// Descriptive metadata recorded in a fitted model. Every pointer may be NULL (unknown).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gs_fit_meta {
    /// Shape of one item, `item_ndim` sizes whose product is the dimension (e.g. {4, 64, 64}).
    pub item_shape: *const usize,
    /// Number of entries of `item_shape`.
    pub item_ndim: usize,
    /// The space the data lives in, e.g. "[-1,1]" (NUL-terminated UTF-8).
    pub value_space: *const c_char,
    /// Free text: where the data came from (NUL-terminated UTF-8).
    pub source: *const c_char,
}

/// What a sketch is and how far it got (`gs_sketch_get_info`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct gs_sketch_info {
    /// Length of one item.
    pub dim: usize,
    /// Modes the model will keep at most.
    pub rank: usize,
    /// Columns of the sketch: rank + oversampling, at most dim.
    pub width: usize,
    /// The pass in progress, 1-based.
    pub pass: u32,
    /// Planned passes.
    pub passes: u32,
    /// Items added in the pass in progress.
    pub count: u64,
    /// Seed of pass 1's test matrix.
    pub seed: u64,
}

/// A streaming, mergeable low-rank sketch of a dataset's covariance (memory about
/// 2 x dim x width doubles). One thread at a time per object; fill one per thread (see
/// `gs_sketch_empty_like`) and `gs_sketch_merge` them.
pub struct gs_sketch {
    inner: Sketch,
}

fn mut_ref<'a, T>(p: *mut T, arg: &'static str) -> Result<&'a mut T, Error> {
    // SAFETY: non-NULL handles come from this library and are used by one thread at a time
    // (caller's contract, documented on every function).
    unsafe { p.as_mut() }.ok_or(Error::NullPointer { arg })
}

pub(crate) fn residual_of(code: u32) -> Result<Residual, Error> {
    match code {
        GS_RESIDUAL_ZERO => Ok(Residual::Zero),
        GS_RESIDUAL_MEAN => Ok(Residual::Mean),
        other => Err(Error::arg(
            "residual",
            format!("{other} is not a GS_RESIDUAL_* code"),
        )),
    }
}

/// `rank` (0 = `zero_rank`) or, with rank 0, the fraction `explained` in (0, 1].
pub(crate) fn rank_of(rank: usize, explained: f64, zero_rank: Rank) -> Result<Rank, Error> {
    match (rank, explained == 0.0) {
        (0, true) => Ok(zero_rank),
        (0, false) => Ok(Rank::Explained(explained)),
        (r, true) => Ok(Rank::Fixed(r)),
        (_, false) => Err(Error::arg(
            "explained",
            "give a rank or a fraction, not both",
        )),
    }
}

/// Metadata from C for `dim`-vectors (a NULL `meta` is all unknown).
pub(crate) fn meta_of(meta: *const gs_fit_meta, dim: usize) -> Result<ModelMeta, Error> {
    // SAFETY: a non-NULL meta points to a gs_fit_meta (caller's contract).
    let Some(m) = (unsafe { meta.as_ref() }) else {
        return Ok(ModelMeta::default());
    };
    let item_shape = if m.item_shape.is_null() {
        Vec::new()
    } else {
        slice(m.item_shape, m.item_ndim, "meta.item_shape")?.to_vec()
    };
    if !item_shape.is_empty()
        && item_shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s)) != Some(dim)
    {
        return Err(Error::arg(
            "meta.item_shape",
            format!("{item_shape:?} does not have {dim} elements"),
        ));
    }
    let text = |p: *const c_char, arg| -> Result<String, Error> {
        if p.is_null() {
            Ok(String::new())
        } else {
            c_str(p, arg).map(str::to_string)
        }
    };
    Ok(ModelMeta {
        item_shape,
        value_space: text(m.value_space, "meta.value_space")?,
        source: text(m.source, "meta.source")?,
        ..ModelMeta::default()
    })
}

/// Copies `bytes` to `buf` (capacity `cap`) and sets `*len`; with `buf` NULL only sets `*len`.
pub(crate) fn export(
    bytes: &[u8],
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
) -> Result<(), Error> {
    if !buf.is_null() {
        if cap < bytes.len() {
            return Err(Error::shape(
                "buf",
                format!("{} bytes", bytes.len()),
                format!("a capacity of {cap}"),
            ));
        }
        // SAFETY: buf has cap >= bytes.len() writable bytes (caller's contract).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf as *mut u8, bytes.len()) };
    }
    // SAFETY: len was checked non-NULL by the caller of this helper.
    unsafe { *len = bytes.len() };
    Ok(())
}

pub(crate) fn check_len(len: *mut usize) -> Result<(), Error> {
    if len.is_null() {
        Err(Error::NullPointer { arg: "len" })
    } else {
        Ok(())
    }
}

/// Rows `x[rows * dim]` of a host array, with the product checked.
pub(crate) fn rows_of<'a, T>(x: *const T, rows: usize, dim: usize) -> Result<&'a [T], Error> {
    let n = rows
        .checked_mul(dim)
        .ok_or_else(|| Error::arg("rows", "rows x dim overflows"))?;
    slice(x, n, "x")
}

/// Which fit suits `dim`-vectors on this machine (the rule of `gaussskip fit`): with `rank` 0
/// (all modes) the exact fit, or GS_ERR_OUT_OF_MEMORY when its dim x dim matrices would not
/// fit in the memory available now; with a rank, the exact fit when it fits, else the sketch.
/// Writes GS_FIT_EXACT or GS_FIT_SKETCH to `*method`.
///
/// # Safety
/// `method` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_fit_choose_method(
    dim: usize,
    rank: usize,
    method: *mut u32,
) -> gs_status {
    guard(|| {
        if method.is_null() {
            return Err(Error::NullPointer { arg: "method" });
        }
        if dim == 0 {
            return Err(Error::arg("dim", "must be at least 1"));
        }
        let rank = if rank == 0 {
            Rank::Full
        } else {
            Rank::Fixed(rank)
        };
        let (chosen, _) = choose_method(dim, None, rank, None)?;
        *method = match chosen {
            FitMethod::Exact => GS_FIT_EXACT,
            FitMethod::Sketch => GS_FIT_SKETCH,
        };
        Ok(())
    })
}

/// Adds `rows` items of doubles (`rows x dim`, row-major). Nothing is added on error.
///
/// # Safety
/// `moments` is live; `x` holds `rows * dim` doubles.
#[no_mangle]
pub unsafe extern "C" fn gs_moments_add_rows_f64(
    moments: *mut gs_moments,
    x: *const f64,
    rows: usize,
) -> gs_status {
    guard(|| {
        let m = &mut mut_ref(moments, "moments")?.inner;
        m.add_rows_f64(rows_of(x, rows, m.dim())?)
    })
}

/// Dimension of the items (0 for NULL).
///
/// # Safety
/// `moments` is live or NULL.
#[no_mangle]
pub unsafe extern "C" fn gs_moments_dim(moments: *const gs_moments) -> usize {
    moments.as_ref().map_or(0, |m| m.inner.dim())
}

/// Copies the mean (`dim` doubles) and the centred second-moment (scatter) matrix
/// (`dim x dim` doubles, row-major; covariance = scatter / (count - 1)); either may be NULL.
///
/// # Safety
/// Non-NULL destinations have room for the stated number of doubles.
#[no_mangle]
pub unsafe extern "C" fn gs_moments_get(
    moments: *const gs_moments,
    mean: *mut f64,
    scatter: *mut f64,
) -> gs_status {
    guard(|| {
        let m = &non_null(moments, "moments")?.inner;
        let d = m.dim();
        if !mean.is_null() {
            std::ptr::copy_nonoverlapping(m.mean().as_ptr(), mean, d);
        }
        if !scatter.is_null() {
            let s = m.scatter();
            for i in 0..d {
                for j in 0..d {
                    *scatter.add(i * d + j) = s[(i, j)];
                }
            }
        }
        Ok(())
    })
}

/// Exports the whole state (a byte image for `gs_moments_import` anywhere): with `buf` NULL
/// sets `*len` to the size needed; otherwise `buf` must hold `cap >= *len` bytes.
///
/// # Safety
/// `moments` is live; `buf` is NULL or has `cap` writable bytes; `len` is writable.
#[no_mangle]
pub unsafe extern "C" fn gs_moments_export(
    moments: *const gs_moments,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
) -> gs_status {
    guard(|| {
        let m = &non_null(moments, "moments")?.inner;
        check_len(len)?;
        export(&m.to_bytes()?, buf, cap, len)
    })
}

/// Moments from an image of `gs_moments_export` (checked: GS_ERR_FILE_FORMAT says what is
/// wrong).
///
/// # Safety
/// `buf` holds `len` readable bytes; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_moments_import(
    buf: *const c_void,
    len: usize,
    out: *mut *mut gs_moments,
) -> gs_status {
    guard(|| {
        check_out(out)?;
        let bytes = slice(buf as *const u8, len, "buf")?;
        let inner = Moments::from_bytes(bytes)?;
        write_out(out, gs_moments { inner });
        Ok(())
    })
}

/// As `gs_fit`, recording `meta` (may be NULL) in the model: eigendecomposition of the
/// covariance, `rank` modes (0 = all) or, with rank 0 and `explained` in (0, 1], the fewest
/// that carry that fraction of the variance.
///
/// # Safety
/// `moments` is live; `meta` is NULL or valid; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_moments_fit(
    moments: *const gs_moments,
    rank: usize,
    explained: f64,
    residual: u32,
    meta: *const gs_fit_meta,
    out: *mut *mut gs_model,
) -> gs_status {
    guard(|| {
        let m = &non_null(moments, "moments")?.inner;
        check_out(out)?;
        let opts = FitOptions {
            rank: rank_of(rank, explained, Rank::Full)?,
            residual: residual_of(residual)?,
            meta: meta_of(meta, m.dim())?,
        };
        write_out(out, gs_model::new(fit_model(m, &opts)?));
        Ok(())
    })
}

/// Plans a sketch of `dim`-vectors keeping up to `rank` modes: `oversampling` extra columns
/// (0 = the default, the rank itself and at least 10), `passes` reads of the data (0 = the
/// default, 5; 1 for data that can be read only once), `seed` for the test matrix.
///
/// # Safety
/// `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_sketch_create(
    dim: usize,
    rank: usize,
    oversampling: usize,
    passes: u32,
    seed: u64,
    out: *mut *mut gs_sketch,
) -> gs_status {
    guard(|| {
        check_out(out)?;
        let opts = SketchOptions {
            rank,
            oversampling: (oversampling > 0).then_some(oversampling),
            passes: if passes == 0 { DEFAULT_PASSES } else { passes },
            seed,
        };
        let inner = Sketch::new(dim, &opts)?;
        write_out(out, gs_sketch { inner });
        Ok(())
    })
}

/// Frees a sketch (NULL does nothing).
///
/// # Safety
/// `sketch` came from this library and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn gs_sketch_free(sketch: *mut gs_sketch) {
    if !sketch.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(sketch))));
    }
}

/// Adds `rows` items of floats (`rows x dim`, row-major) to the pass in progress. Nothing is
/// added on error (NaN/Inf).
///
/// # Safety
/// `sketch` is live; `x` holds `rows * dim` floats.
#[no_mangle]
pub unsafe extern "C" fn gs_sketch_add_rows(
    sketch: *mut gs_sketch,
    x: *const f32,
    rows: usize,
) -> gs_status {
    guard(|| {
        let s = &mut mut_ref(sketch, "sketch")?.inner;
        s.add_rows(rows_of(x, rows, s.dim())?)
    })
}

/// As `gs_sketch_add_rows` for doubles.
///
/// # Safety
/// `sketch` is live; `x` holds `rows * dim` doubles.
#[no_mangle]
pub unsafe extern "C" fn gs_sketch_add_rows_f64(
    sketch: *mut gs_sketch,
    x: *const f64,
    rows: usize,
) -> gs_status {
    guard(|| {
        let s = &mut mut_ref(sketch, "sketch")?.inner;
        s.add_rows_f64(rows_of(x, rows, s.dim())?)
    })
}

/// Computes the sketch's products on CUDA device `ordinal` through cuBLAS from now on (host
/// rows are uploaded). GS_ERR_NO_CUDA without a device, a driver or cuBLAS.
///
/// # Safety
/// `sketch` is live.
#[no_mangle]
pub unsafe extern "C" fn gs_sketch_use_cuda(sketch: *mut gs_sketch, ordinal: i32) -> gs_status {
    guard(|| {
        let s = &mut mut_ref(sketch, "sketch")?.inner;
        let ordinal =
            usize::try_from(ordinal).map_err(|_| Error::arg("ordinal", "must be >= 0"))?;
        s.use_cuda(ordinal)
    })
}

/// Adds `rows` items of doubles in device memory (`rows x dim`, row-major, on the device of
/// `gs_sketch_use_cuda`), ordered after the work queued on `stream` (a CUstream; NULL = the
/// default stream). Returns once the rows are consumed, so the buffer may be reused. Device
/// rows are not scanned for NaN/Inf; such values make the pass fail when it ends.
///
/// # Safety
/// `sketch` is live; `x` holds `rows * dim` doubles on that device; `stream` is NULL or a
/// live stream of that device.
#[no_mangle]
pub unsafe extern "C" fn gs_sketch_add_rows_cuda(
    sketch: *mut gs_sketch,
    x: *const c_void,
    rows: usize,
    stream: *mut c_void,
) -> gs_status {
    guard(|| {
        let s = &mut mut_ref(sketch, "sketch")?.inner;
        s.add_rows_cuda(x, rows, stream)
    })
}

/// Adds everything `src` saw in this pass to `dst`; both must come from the same plan, pass
/// and test matrix (`gs_sketch_empty_like`, or `gs_sketch_import` of the state the pass began
/// with).
///
/// # Safety
/// Both are live and distinct.
#[no_mangle]
pub unsafe extern "C" fn gs_sketch_merge(dst: *mut gs_sketch, src: *const gs_sketch) -> gs_status {
    guard(|| {
        if std::ptr::eq(dst as *const gs_sketch, src) {
            return Err(Error::arg("src", "must not be dst"));
        }
        let src = &non_null(src, "src")?.inner;
        mut_ref(dst, "dst")?.inner.merge(src)
    })
}

/// A new, empty sketch for the same pass and test matrix (on the host), to fill with a shard
/// and merge back.
///
/// # Safety
/// `sketch` is live; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_sketch_empty_like(
    sketch: *const gs_sketch,
    out: *mut *mut gs_sketch,
) -> gs_status {
    guard(|| {
        let s = &non_null(sketch, "sketch")?.inner;
        check_out(out)?;
        write_out(
            out,
            gs_sketch {
                inner: s.empty_like(),
            },
        );
        Ok(())
    })
}

/// Ends the pass in progress (all items added): the next pass reads the same items again.
/// GS_ERR_INVALID_ARGUMENT after the last planned pass; GS_ERR_DATASET with fewer than two
/// items or when the items differ from pass 1's.
///
/// # Safety
/// `sketch` is live.
#[no_mangle]
pub unsafe extern "C" fn gs_sketch_next_pass(sketch: *mut gs_sketch) -> gs_status {
    guard(|| mut_ref(sketch, "sketch")?.inner.next_pass())
}

/// Describes a sketch.
///
/// # Safety
/// `sketch` is live; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_sketch_get_info(
    sketch: *const gs_sketch,
    out: *mut gs_sketch_info,
) -> gs_status {
    guard(|| {
        let s = &non_null(sketch, "sketch")?.inner;
        if out.is_null() {
            return Err(Error::NullPointer { arg: "out" });
        }
        *out = gs_sketch_info {
            dim: s.dim(),
            rank: s.options().rank,
            width: s.width(),
            pass: s.pass(),
            passes: s.options().passes,
            count: s.count(),
            seed: s.options().seed,
        };
        Ok(())
    })
}

/// Fits a model after the last pass: `rank` modes (0 = the planned rank) or, with rank 0 and
/// `explained` in (0, 1], the fewest planned modes that carry that fraction of the variance;
/// `residual` GS_RESIDUAL_ZERO or GS_RESIDUAL_MEAN (from the exactly streamed trace); `meta`
/// may be NULL.
///
/// # Safety
/// `sketch` is live; `meta` is NULL or valid; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_sketch_fit(
    sketch: *const gs_sketch,
    rank: usize,
    explained: f64,
    residual: u32,
    meta: *const gs_fit_meta,
    out: *mut *mut gs_model,
) -> gs_status {
    guard(|| {
        let s = &non_null(sketch, "sketch")?.inner;
        check_out(out)?;
        let opts = FitOptions {
            rank: rank_of(rank, explained, Rank::Fixed(s.options().rank))?,
            residual: residual_of(residual)?,
            meta: meta_of(meta, s.dim())?,
        };
        write_out(out, gs_model::new(s.fit(&opts)?.0));
        Ok(())
    })
}

/// Exports the whole state (plan, pass, test matrix, sums, including those on a device) as a
/// byte image for `gs_sketch_import`: with `buf` NULL sets `*len` to the size needed;
/// otherwise `buf` must hold `cap >= *len` bytes.
///
/// # Safety
/// `sketch` is live; `buf` is NULL or has `cap` writable bytes; `len` is writable.
#[no_mangle]
pub unsafe extern "C" fn gs_sketch_export(
    sketch: *const gs_sketch,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
) -> gs_status {
    guard(|| {
        let s = &non_null(sketch, "sketch")?.inner;
        check_len(len)?;
        export(&s.to_bytes()?, buf, cap, len)
    })
}

/// A sketch (on the host) from an image of `gs_sketch_export` (checked: GS_ERR_FILE_FORMAT
/// says what is wrong).
///
/// # Safety
/// `buf` holds `len` readable bytes; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_sketch_import(
    buf: *const c_void,
    len: usize,
    out: *mut *mut gs_sketch,
) -> gs_status {
    guard(|| {
        check_out(out)?;
        let bytes = slice(buf as *const u8, len, "buf")?;
        let inner = Sketch::from_bytes(bytes)?;
        write_out(out, gs_sketch { inner });
        Ok(())
    })
}

/// The model's metadata (what its file stores: item_shape, value_space, sample_count, source,
/// fit_method, fit_passes, ...) as one JSON object of strings, NUL-terminated: with `buf`
/// NULL sets `*len` to its length without the NUL; otherwise `cap` must be at least
/// `*len + 1`.
///
/// # Safety
/// `model` is live; `buf` is NULL or has `cap` writable bytes; `len` is writable.
#[no_mangle]
pub unsafe extern "C" fn gs_model_metadata(
    model: *const gs_model,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> gs_status {
    guard(|| {
        let m = &non_null(model, "model")?.inner;
        check_len(len)?;
        let mut text = serde_json::to_string(&m.file_metadata())
            .map_err(|e| Error::arg("model", format!("metadata is not serialisable: {e}")))?
            .into_bytes();
        let n = text.len();
        if !buf.is_null() {
            text.push(0);
            export(&text, buf as *mut c_void, cap, len)?;
        }
        *len = n;
        Ok(())
    })
}
