//! The C ABI: opaque handles, one status enum, a thread-local error message, and a panic
//! boundary around every entry point. No mathematics lives here.
//!
//! Conventions (also in the README, "API conventions"):
//! - Every function that can fail returns `gs_status`; `GS_OK` is 0. On failure
//!   `gs_last_error_message()` gives the detail for this thread, and no output was written.
//! - Objects come from `gs_*_create`/`_load`/`_new`/`_from_parts` and go to `gs_*_free`;
//!   freeing NULL does nothing. Models are immutable and may be shared across threads.
//! - Enumerations arrive from C as plain integers and are validated.

#![allow(non_camel_case_types)]
// Every exported function checks its pointers before using them.
#![allow(clippy::missing_safety_doc)]

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::context::{Context, Device, EigvecStorage};
use crate::dtype::Dtype;
use crate::error::Error;
use crate::fit::{fit_model, FitOptions, Moments, Rank, Residual};
use crate::model::{Model, ModelMeta};
use crate::noise::{Noise, Op};

/// Version of the C ABI. Bumped on any incompatible change to a signature, a struct or the
/// meaning of a status number.
pub const GS_ABI_VERSION: u32 = 1;

/// Status of a call. Numbers are stable and never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum gs_status {
    /// Success.
    GS_OK = 0,
    /// A required pointer argument was NULL.
    GS_ERR_NULL_POINTER = 1,
    /// An argument is out of its domain (batch 0, unknown enum value, overlapping buffers).
    GS_ERR_INVALID_ARGUMENT = 2,
    /// A size does not match the model or the other arguments.
    GS_ERR_SHAPE_MISMATCH = 3,
    /// An input holds NaN or Inf.
    GS_ERR_NON_FINITE = 4,
    /// A noise level is not usable (negative, non-finite, sigma = 0 where a skip starts).
    GS_ERR_INVALID_NOISE = 5,
    /// Model parts do not describe a valid Gaussian (negative variance, not orthonormal, ...).
    GS_ERR_INVALID_MODEL = 6,
    /// A file could not be opened, read or written.
    GS_ERR_IO = 7,
    /// A file was read but its content is wrong (corrupt, truncated, wrong dtype or shape).
    GS_ERR_FILE_FORMAT = 8,
    /// The element type is not supported for this call.
    GS_ERR_UNSUPPORTED_DTYPE = 9,
    /// No CUDA driver or device, or the library was built without CUDA.
    GS_ERR_NO_CUDA = 10,
    /// A CUDA call failed.
    GS_ERR_CUDA = 11,
    /// Out of host or device memory.
    GS_ERR_OUT_OF_MEMORY = 12,
    /// A dataset cannot be fitted (empty, mixed shapes, unreadable items).
    GS_ERR_DATASET = 13,
    /// A bug: the library panicked. The message says where; please report it.
    GS_ERR_INTERNAL = 14,
    /// A caller's callback returned a failure (the calibration's denoiser).
    GS_ERR_CALLBACK = 15,
}

/// Element type codes for `dtype` arguments.
pub const GS_DTYPE_F32: u32 = 0;
/// IEEE binary16.
pub const GS_DTYPE_F16: u32 = 1;
/// bfloat16.
pub const GS_DTYPE_BF16: u32 = 2;

/// Device codes for `gs_context_create`.
pub const GS_DEVICE_AUTO: u32 = 0;
/// The host CPU.
pub const GS_DEVICE_CPU: u32 = 1;
/// A CUDA device.
pub const GS_DEVICE_CUDA: u32 = 2;

/// `residual` codes for `gs_fit`: the discarded directions get variance 0 (the papers).
pub const GS_RESIDUAL_ZERO: u32 = 0;
/// The discarded directions get the mean of the discarded eigenvalues (keeps the trace).
pub const GS_RESIDUAL_MEAN: u32 = 1;

/// A noise level of the forward process x_t = alpha * x0 + sigma * eps.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gs_noise {
    /// Signal scale, >= 0.
    pub alpha: f64,
    /// Noise scale, >= 0.
    pub sigma: f64,
}

impl From<gs_noise> for Noise {
    fn from(n: gs_noise) -> Noise {
        Noise::new(n.alpha, n.sigma)
    }
}

/// An immutable Gaussian model. Thread-safe to share.
pub struct gs_model {
    pub(crate) inner: Arc<Model>,
}

impl gs_model {
    pub(crate) fn new(model: Model) -> gs_model {
        gs_model {
            inner: Arc::new(model),
        }
    }
}

/// A CPU context or one CUDA device's context.
pub struct gs_context {
    pub(crate) inner: Context,
}

/// Streaming, mergeable moments of a dataset (count, mean, centred second moments, f64).
/// Not thread-safe: one thread at a time per object; merge objects filled in parallel.
pub struct gs_moments {
    pub(crate) inner: Moments,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(text: &str) {
    let c = CString::new(text.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn status_of(e: &Error) -> gs_status {
    use gs_status::*;
    match e {
        Error::NullPointer { .. } => GS_ERR_NULL_POINTER,
        Error::ShapeMismatch { .. } => GS_ERR_SHAPE_MISMATCH,
        Error::NonFinite { .. } => GS_ERR_NON_FINITE,
        Error::InvalidNoise { .. } => GS_ERR_INVALID_NOISE,
        Error::InvalidArgument { .. } => GS_ERR_INVALID_ARGUMENT,
        Error::InvalidModel(_) => GS_ERR_INVALID_MODEL,
        Error::Io { .. } => GS_ERR_IO,
        Error::FileFormat { .. } => GS_ERR_FILE_FORMAT,
        Error::UnsupportedDtype(_) => GS_ERR_UNSUPPORTED_DTYPE,
        Error::NoCuda(_) => GS_ERR_NO_CUDA,
        Error::Cuda(_) => GS_ERR_CUDA,
        Error::OutOfMemory(_) => GS_ERR_OUT_OF_MEMORY,
        Error::Dataset(_) => GS_ERR_DATASET,
        Error::Callback(_) => GS_ERR_CALLBACK,
    }
}

/// The one panic boundary: runs `f`, turns its error or panic into a status and message.
pub(crate) fn guard(f: impl FnOnce() -> Result<(), Error>) -> gs_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_last_error("");
            gs_status::GS_OK
        }
        Ok(Err(e)) => {
            set_last_error(&e.to_string());
            status_of(&e)
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error (please report): {what}"));
            gs_status::GS_ERR_INTERNAL
        }
    }
}

pub(crate) fn non_null<'a, T>(p: *const T, arg: &'static str) -> Result<&'a T, Error> {
    // SAFETY: non-NULL handles passed to the ABI were created by it and are alive (caller's
    // contract, documented on every function).
    unsafe { p.as_ref() }.ok_or(Error::NullPointer { arg })
}

pub(crate) fn c_str<'a>(p: *const c_char, arg: &'static str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(Error::NullPointer { arg });
    }
    // SAFETY: caller passes a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Error::arg(arg, "is not valid UTF-8"))
}

/// A caller's array of `len` elements, after the checks a Rust slice needs: not NULL,
/// aligned, and a byte size that fits in the address space.
pub(crate) fn slice<'a, T>(p: *const T, len: usize, arg: &'static str) -> Result<&'a [T], Error> {
    if p.is_null() {
        return Err(Error::NullPointer { arg });
    }
    if !(p as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(Error::arg(
            arg,
            format!("is not aligned to {} bytes", std::mem::align_of::<T>()),
        ));
    }
    if len
        .checked_mul(std::mem::size_of::<T>())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(Error::arg(
            arg,
            format!("{len} elements do not fit in the address space"),
        ));
    }
    // SAFETY: caller guarantees `len` readable elements at `p`; the checks above make the
    // slice well-formed.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

pub(crate) fn write_out<T>(out: *mut *mut T, value: T) {
    // SAFETY: `out` was checked non-NULL before any work was done.
    unsafe { *out = Box::into_raw(Box::new(value)) };
}

pub(crate) fn check_out<T>(out: *mut *mut T) -> Result<(), Error> {
    if out.is_null() {
        Err(Error::NullPointer { arg: "out" })
    } else {
        Ok(())
    }
}

/// Library version, e.g. "0.1.0". Static storage; never free it.
#[no_mangle]
pub extern "C" fn gs_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// The ABI version this library implements (`GS_ABI_VERSION` in the header it was built with).
#[no_mangle]
pub extern "C" fn gs_abi_version() -> u32 {
    GS_ABI_VERSION
}

/// A fixed English description of a status code (any integer is accepted). Static storage.
#[no_mangle]
pub extern "C" fn gs_status_message(status: u32) -> *const c_char {
    let text: &'static str = match status {
        0 => "success\0",
        1 => "a required pointer argument was NULL\0",
        2 => "invalid argument\0",
        3 => "size mismatch between arguments and model\0",
        4 => "input holds NaN or Inf\0",
        5 => "invalid noise level\0",
        6 => "invalid model\0",
        7 => "file could not be read or written\0",
        8 => "file content is invalid\0",
        9 => "unsupported element type\0",
        10 => "no CUDA device or backend\0",
        11 => "CUDA error\0",
        12 => "out of memory\0",
        13 => "dataset cannot be fitted\0",
        14 => "internal error\0",
        15 => "a callback reported a failure\0",
        _ => "unknown status code\0",
    };
    text.as_ptr() as *const c_char
}

/// Detail of the last failed call on this thread ("" after a success). Valid until the next
/// call into the library on this thread; never free it.
#[no_mangle]
pub extern "C" fn gs_last_error_message() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// EDM / VE noise level: alpha = 1.
#[no_mangle]
pub extern "C" fn gs_noise_edm(sigma: f64) -> gs_noise {
    gs_noise { alpha: 1.0, sigma }
}

/// VP (DDPM/DDIM) noise level from alpha_bar: alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar).
#[no_mangle]
pub extern "C" fn gs_noise_vp(alpha_bar: f64) -> gs_noise {
    let n = Noise::vp(alpha_bar);
    gs_noise {
        alpha: n.alpha,
        sigma: n.sigma,
    }
}

/// Flow-matching noise level at time t: alpha = 1 - t, sigma = t.
#[no_mangle]
pub extern "C" fn gs_noise_flow(t: f64) -> gs_noise {
    gs_noise {
        alpha: 1.0 - t,
        sigma: t,
    }
}

/// Loads and validates a model file (safetensors). `*out` is set only on success.
///
/// # Safety
/// `path` is a NUL-terminated UTF-8 string; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_model_load(path: *const c_char, out: *mut *mut gs_model) -> gs_status {
    guard(|| {
        let path = c_str(path, "path")?;
        check_out(out)?;
        let model = Model::load(path)?;
        write_out(out, gs_model::new(model));
        Ok(())
    })
}

/// Builds a model from host arrays (copied): `mean[dim]`, `eigvals[rank]` (non-increasing,
/// non-negative), `eigvecs[rank * dim]` (row k = unit eigenvector k), `residual_var >= 0`.
/// The variances pass through `float`; `gs_model_from_parts_f64` takes them as `double`,
/// the precision the model keeps.
///
/// # Safety
/// The arrays hold the stated number of floats; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_model_from_parts(
    dim: usize,
    rank: usize,
    mean: *const f32,
    eigvals: *const f32,
    eigvecs: *const f32,
    residual_var: f32,
    out: *mut *mut gs_model,
) -> gs_status {
    guard(|| {
        let eigvals = model_parts_slice(dim, rank, eigvals)?;
        from_parts(
            dim,
            rank,
            mean,
            eigvals,
            eigvecs,
            f64::from(residual_var),
            out,
        )
    })
}

/// As `gs_model_from_parts`, with the variances `eigvals[rank]` and `residual_var` as
/// `double`, stored exactly (the model holds them in double precision).
///
/// # Safety
/// The arrays hold the stated number of elements; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_model_from_parts_f64(
    dim: usize,
    rank: usize,
    mean: *const f32,
    eigvals: *const f64,
    eigvecs: *const f32,
    residual_var: f64,
    out: *mut *mut gs_model,
) -> gs_status {
    guard(|| {
        let eigvals = model_parts_slice(dim, rank, eigvals)?;
        from_parts(dim, rank, mean, eigvals, eigvecs, residual_var, out)
    })
}

/// Checks `out` and the sizes of a model's parts, then borrows `eigvals[rank]`.
fn model_parts_slice<'a, T>(dim: usize, rank: usize, eigvals: *const T) -> Result<&'a [T], Error> {
    if dim == 0 || rank == 0 || rank > dim {
        return Err(Error::arg(
            "rank",
            format!("need 1 <= rank <= dim, got rank {rank}, dim {dim}"),
        ));
    }
    slice(eigvals, rank, "eigvals")
}

/// The shared body of the two `gs_model_from_parts` variants.
fn from_parts<T: Copy + Into<f64>>(
    dim: usize,
    rank: usize,
    mean: *const f32,
    eigvals: &[T],
    eigvecs: *const f32,
    residual_var: f64,
    out: *mut *mut gs_model,
) -> Result<(), Error> {
    check_out(out)?;
    let n = rank
        .checked_mul(dim)
        .ok_or_else(|| Error::arg("dim", "rank x dim overflows"))?;
    let copy = |p: *const f32, len: usize, arg: &'static str| -> Result<Vec<f32>, Error> {
        let src = slice(p, len, arg)?;
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .map_err(|_| Error::OutOfMemory(format!("{arg}: {len} floats")))?;
        v.extend_from_slice(src);
        Ok(v)
    };
    let mean = copy(mean, dim, "mean")?;
    let eigvecs = copy(eigvecs, n, "eigvecs")?;
    let eigvals = eigvals.iter().map(|&v| v.into()).collect();
    let model = Model::from_parts(mean, eigvals, eigvecs, residual_var, ModelMeta::default())?;
    write_out(out, gs_model::new(model));
    Ok(())
}

/// Writes a model file atomically (temporary file + rename).
///
/// # Safety
/// `model` is a live model or NULL; `path` a NUL-terminated UTF-8 string.
#[no_mangle]
pub unsafe extern "C" fn gs_model_save(model: *const gs_model, path: *const c_char) -> gs_status {
    guard(|| {
        let model = non_null(model, "model")?;
        let path = c_str(path, "path")?;
        model.inner.save(path)
    })
}

/// Frees a model (NULL does nothing). Contexts that cached it are unaffected.
///
/// # Safety
/// `model` came from this library and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn gs_model_free(model: *mut gs_model) {
    if !model.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(model))));
    }
}

/// Data dimension of a model (0 for NULL).
///
/// # Safety
/// `model` is a live model or NULL.
#[no_mangle]
pub unsafe extern "C" fn gs_model_dim(model: *const gs_model) -> usize {
    model.as_ref().map_or(0, |m| m.inner.dim())
}

/// Number of modes of a model (0 for NULL).
///
/// # Safety
/// `model` is a live model or NULL.
#[no_mangle]
pub unsafe extern "C" fn gs_model_rank(model: *const gs_model) -> usize {
    model.as_ref().map_or(0, |m| m.inner.rank())
}

/// Copies a model's parts out; any destination may be NULL to skip it.
/// `mean[dim]`, `eigvals[rank]`, `eigvecs[rank * dim]`, `residual_var[1]`.
///
/// # Safety
/// Non-NULL destinations have room for the stated number of elements.
#[no_mangle]
pub unsafe extern "C" fn gs_model_get_parts(
    model: *const gs_model,
    mean: *mut f32,
    eigvals: *mut f64,
    eigvecs: *mut f32,
    residual_var: *mut f64,
) -> gs_status {
    guard(|| {
        let m = &non_null(model, "model")?.inner;
        let copy = |src: &[f32], dst: *mut f32| {
            if !dst.is_null() {
                std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
            }
        };
        copy(m.mean(), mean);
        copy(m.eigvecs(), eigvecs);
        if !eigvals.is_null() {
            std::ptr::copy_nonoverlapping(m.eigvals().as_ptr(), eigvals, m.rank());
        }
        if !residual_var.is_null() {
            *residual_var = m.residual_var();
        }
        Ok(())
    })
}

/// Creates a context: `device` is GS_DEVICE_AUTO, GS_DEVICE_CPU or GS_DEVICE_CUDA;
/// `ordinal` picks the CUDA device; it must be 0 on the CPU and for GS_DEVICE_AUTO (which
/// means the CPU), GS_ERR_INVALID_ARGUMENT otherwise.
///
/// # Safety
/// `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_context_create(
    device: u32,
    ordinal: i32,
    out: *mut *mut gs_context,
) -> gs_status {
    guard(|| {
        check_out(out)?;
        let device = Device::from_u32(device)
            .ok_or_else(|| Error::arg("device", format!("{device} is not a GS_DEVICE_* code")))?;
        let ordinal =
            usize::try_from(ordinal).map_err(|_| Error::arg("ordinal", "must be >= 0"))?;
        let ctx = Context::new(device, ordinal)?;
        write_out(out, gs_context { inner: ctx });
        Ok(())
    })
}

/// Frees a context (NULL does nothing).
///
/// # Safety
/// `ctx` came from this library, is not used afterwards, and no call on it is in flight.
#[no_mangle]
pub unsafe extern "C" fn gs_context_free(ctx: *mut gs_context) {
    if !ctx.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(ctx))));
    }
}

/// The device a context runs on: GS_DEVICE_CPU or GS_DEVICE_CUDA (0 for NULL).
///
/// # Safety
/// `ctx` is a live context or NULL.
#[no_mangle]
pub unsafe extern "C" fn gs_context_device(ctx: *const gs_context) -> u32 {
    ctx.as_ref().map_or(0, |c| c.inner.device() as u32)
}

/// Shared body of every operation entry point, with one component index per row
/// (`component[batch]` in host memory; NULL: component 0 for every row). The sizes (`batch`,
/// and `slabs` output slabs) are checked before `op` reads any level table, so a huge `batch`
/// or `n_levels` is an error, never a read or an allocation of that size.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run_op_components<'a>(
    ctx: *mut gs_context,
    model: *const gs_model,
    dtype: u32,
    (x, out): (*const c_void, *mut c_void),
    batch: usize,
    slabs: usize,
    stream: *mut c_void,
    component: *const u32,
    op: impl FnOnce() -> Result<Op<'a>, Error>,
) -> gs_status {
    guard(|| {
        let ctx = &non_null(ctx as *const gs_context, "ctx")?.inner;
        let model = &non_null(model, "model")?.inner;
        let dtype = Dtype::from_u32(dtype)
            .ok_or_else(|| Error::UnsupportedDtype(format!("{dtype} is not a GS_DTYPE_* code")))?;
        crate::context::buffer_len(model, dtype, batch, slabs)?;
        let components = if component.is_null() {
            None
        } else {
            Some(slice(component, batch, "component")?)
        };
        ctx.apply_raw_components(model, op()?, dtype, x, out, batch, stream, components)
    })
}

// `gs_noise` and `Noise` are the same two doubles, so C level tables are read in place.
const _: () = assert!(
    std::mem::size_of::<gs_noise>() == std::mem::size_of::<Noise>()
        && std::mem::align_of::<gs_noise>() == std::mem::align_of::<Noise>()
);

/// A C table of `len` levels, borrowed for the call.
pub(crate) fn level_table<'a>(
    p: *const gs_noise,
    len: usize,
    arg: &'static str,
) -> Result<&'a [Noise], Error> {
    // SAFETY: gs_noise and Noise are both repr(C) { f64 alpha; f64 sigma; } (asserted above).
    slice(p as *const Noise, len, arg)
}

/// Exact PF-ODE jump of `batch` rows from level `from` to level `to`.
///
/// `x` and `out` hold `batch x dim` elements of `dtype`: host memory on a CPU context, device
/// memory on a CUDA context (then `stream` is the caller's CUstream, NULL = default stream).
/// `out` must not overlap `x` and is written only on success.
///
/// # Safety
/// Handles are live; buffers hold the stated sizes on the context's device.
#[no_mangle]
pub unsafe extern "C" fn gs_skip(
    ctx: *mut gs_context,
    model: *const gs_model,
    dtype: u32,
    x: *const c_void,
    out: *mut c_void,
    batch: usize,
    from: gs_noise,
    to: gs_noise,
    stream: *mut c_void,
) -> gs_status {
    // One implementation: the per-row-component entry point with NULL (component 0).
    crate::ffi_components::gs_skip_component(
        ctx,
        model,
        dtype,
        x,
        out,
        batch,
        from,
        to,
        std::ptr::null(),
        stream,
    )
}

/// As `gs_skip` with one source and one target level per row (`from[batch]`, `to[batch]`).
///
/// # Safety
/// As `gs_skip`; `from` and `to` hold `batch` levels.
#[no_mangle]
pub unsafe extern "C" fn gs_skip_rows(
    ctx: *mut gs_context,
    model: *const gs_model,
    dtype: u32,
    x: *const c_void,
    out: *mut c_void,
    batch: usize,
    from: *const gs_noise,
    to: *const gs_noise,
    stream: *mut c_void,
) -> gs_status {
    // One implementation: the per-row-component entry point with NULL (component 0).
    crate::ffi_components::gs_skip_rows_component(
        ctx,
        model,
        dtype,
        x,
        out,
        batch,
        from,
        to,
        std::ptr::null(),
        stream,
    )
}

/// Posterior mean E[x0 | x_t] of `batch` rows at level `at` (buffers as `gs_skip`).
///
/// # Safety
/// As `gs_skip`.
#[no_mangle]
pub unsafe extern "C" fn gs_denoise(
    ctx: *mut gs_context,
    model: *const gs_model,
    dtype: u32,
    x: *const c_void,
    out: *mut c_void,
    batch: usize,
    at: gs_noise,
    stream: *mut c_void,
) -> gs_status {
    // One implementation: the per-row-component entry point with NULL (component 0).
    crate::ffi_components::gs_denoise_component(
        ctx,
        model,
        dtype,
        x,
        out,
        batch,
        at,
        std::ptr::null(),
        stream,
    )
}

/// As `gs_denoise` with one level per row (`at[batch]`).
///
/// # Safety
/// As `gs_skip`; `at` holds `batch` levels.
#[no_mangle]
pub unsafe extern "C" fn gs_denoise_rows(
    ctx: *mut gs_context,
    model: *const gs_model,
    dtype: u32,
    x: *const c_void,
    out: *mut c_void,
    batch: usize,
    at: *const gs_noise,
    stream: *mut c_void,
) -> gs_status {
    // One implementation: the per-row-component entry point with NULL (component 0).
    crate::ffi_components::gs_denoise_rows_component(
        ctx,
        model,
        dtype,
        x,
        out,
        batch,
        at,
        std::ptr::null(),
        stream,
    )
}

/// The states along the exact path from `from` at each of `levels[n_levels]`, one projection
/// for all: `out` holds `n_levels x batch x dim` (level-major).
///
/// # Safety
/// As `gs_skip`; `levels` holds `n_levels` levels; `out` is `n_levels` times larger.
#[no_mangle]
pub unsafe extern "C" fn gs_skip_trajectory(
    ctx: *mut gs_context,
    model: *const gs_model,
    dtype: u32,
    x: *const c_void,
    out: *mut c_void,
    batch: usize,
    from: gs_noise,
    levels: *const gs_noise,
    n_levels: usize,
    stream: *mut c_void,
) -> gs_status {
    // One implementation: the per-row-component entry point with NULL (component 0).
    crate::ffi_components::gs_skip_trajectory_component(
        ctx,
        model,
        dtype,
        x,
        out,
        batch,
        from,
        levels,
        n_levels,
        std::ptr::null(),
        stream,
    )
}

/// The x0-predictions along the exact path from `from` at each of `levels[n_levels]`:
/// `out` holds `n_levels x batch x dim` (level-major). The "outline first, details later" view.
///
/// # Safety
/// As `gs_skip_trajectory`.
#[no_mangle]
pub unsafe extern "C" fn gs_x0_trajectory(
    ctx: *mut gs_context,
    model: *const gs_model,
    dtype: u32,
    x: *const c_void,
    out: *mut c_void,
    batch: usize,
    from: gs_noise,
    levels: *const gs_noise,
    n_levels: usize,
    stream: *mut c_void,
) -> gs_status {
    // One implementation: the per-row-component entry point with NULL (component 0).
    crate::ffi_components::gs_x0_trajectory_component(
        ctx,
        model,
        dtype,
        x,
        out,
        batch,
        from,
        levels,
        n_levels,
        std::ptr::null(),
        stream,
    )
}

/// Creates a CUDA context whose model copies keep eigenvectors in `eigvec_dtype`:
/// GS_DTYPE_F16 (tensor cores, the default of `gs_context_create`) or GS_DTYPE_F32.
///
/// # Safety
/// `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_context_create_cuda(
    ordinal: i32,
    eigvec_dtype: u32,
    out: *mut *mut gs_context,
) -> gs_status {
    guard(|| {
        check_out(out)?;
        let ordinal =
            usize::try_from(ordinal).map_err(|_| Error::arg("ordinal", "must be >= 0"))?;
        let storage = match eigvec_dtype {
            GS_DTYPE_F16 => EigvecStorage::F16,
            GS_DTYPE_F32 => EigvecStorage::F32,
            other => {
                return Err(Error::UnsupportedDtype(format!(
                    "eigenvectors are stored as GS_DTYPE_F16 or GS_DTYPE_F32, not code {other}"
                )))
            }
        };
        let ctx = Context::cuda(ordinal, storage)?;
        write_out(out, gs_context { inner: ctx });
        Ok(())
    })
}

/// Uploads `model` to a CUDA context, checks that calls of up to `batch` rows and `slabs`
/// output slabs (1 for skip/denoise, the level count for trajectories) fit one launch, and
/// reserves their scratch in the context's memory pool. A call under graph capture needs its
/// model on the device already: run one call with it, or this, before capturing. Does nothing
/// on a CPU context.
///
/// # Safety
/// Handles are live; `stream` is NULL or a live CUstream of the context's device.
#[no_mangle]
pub unsafe extern "C" fn gs_context_prepare(
    ctx: *mut gs_context,
    model: *const gs_model,
    batch: usize,
    slabs: usize,
    stream: *mut c_void,
) -> gs_status {
    guard(|| {
        let ctx = &non_null(ctx as *const gs_context, "ctx")?.inner;
        let model = &non_null(model, "model")?.inner;
        ctx.prepare(model, batch, slabs, stream)
    })
}

/// Frees a CUDA context's device copy of `model` once the calls already queued with it are
/// done (the next call uploads it again; `gs_model_free` does this on every context). Does
/// nothing on a CPU context.
///
/// # Safety
/// Handles are live.
#[no_mangle]
pub unsafe extern "C" fn gs_context_release_model(
    ctx: *mut gs_context,
    model: *const gs_model,
) -> gs_status {
    guard(|| {
        let ctx = &non_null(ctx as *const gs_context, "ctx")?.inner;
        let model = &non_null(model, "model")?.inner;
        ctx.release_model(model)
    })
}

/// Launch shapes and times of a CUDA skip (`gs_context_time_launches`). Index 0 is launch 1
/// (projection), index 1 launch 2 (back-projection).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct gs_launch_times {
    /// Median milliseconds of each launch (CUDA events).
    pub launch_ms: [f64; 2],
    /// Blocks per split (grid x).
    pub blocks: [u32; 2],
    /// Split-K count (grid z).
    pub splits: [u32; 2],
    /// Rows per block.
    pub block_rows: [u32; 2],
    /// Resident blocks per multiprocessor (occupancy API).
    pub blocks_per_sm: [u32; 2],
    /// Blocks / (multiprocessors x resident blocks).
    pub waves: [f64; 2],
}

/// Diagnostics for benchmarks: runs `reps` skips of `batch` device rows `x` into `out` on
/// `stream`, timing each of the two kernel launches with CUDA events, waits for them and
/// writes the median times and the launch shapes to `times`. `splits_project` and
/// `splits_backproject` override the split-K counts (0 = the launcher's rule). Not
/// capturable; `GS_ERR_NO_CUDA` on a CPU context.
///
/// # Safety
/// As `gs_skip`; `times` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_context_time_launches(
    ctx: *mut gs_context,
    model: *const gs_model,
    dtype: u32,
    x: *const c_void,
    out: *mut c_void,
    batch: usize,
    from: gs_noise,
    to: gs_noise,
    splits_project: u32,
    splits_backproject: u32,
    reps: u32,
    stream: *mut c_void,
    times: *mut gs_launch_times,
) -> gs_status {
    guard(|| {
        let ctx = &non_null(ctx as *const gs_context, "ctx")?.inner;
        let model = &non_null(model, "model")?.inner;
        if times.is_null() {
            return Err(Error::NullPointer { arg: "times" });
        }
        let dtype = Dtype::from_u32(dtype)
            .ok_or_else(|| Error::UnsupportedDtype(format!("{dtype} is not a GS_DTYPE_* code")))?;
        let forced = |n: u32| (n > 0).then_some(n as usize);
        let splits = crate::Splits {
            project: forced(splits_project),
            backproject: forced(splits_backproject),
        };
        let t = ctx.time_skip_launches(
            model,
            dtype,
            x,
            out,
            batch,
            from.into(),
            to.into(),
            splits,
            reps as usize,
            stream,
        )?;
        *times = gs_launch_times {
            launch_ms: t.ms,
            blocks: t.blocks,
            splits: t.splits,
            block_rows: t.block_rows,
            blocks_per_sm: t.blocks_per_sm,
            waves: t.waves,
        };
        Ok(())
    })
}

/// Creates empty moments of `dim`-vectors (memory: dim² doubles; GS_ERR_OUT_OF_MEMORY when
/// they cannot be allocated).
///
/// # Safety
/// `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_moments_create(dim: usize, out: *mut *mut gs_moments) -> gs_status {
    guard(|| {
        check_out(out)?;
        if dim == 0 {
            return Err(Error::arg("dim", "must be at least 1"));
        }
        let inner = Moments::try_new(dim)?;
        write_out(out, gs_moments { inner });
        Ok(())
    })
}

/// Adds `rows` items (`rows x dim` floats, row-major). Nothing is added on error (NaN/Inf).
///
/// # Safety
/// `moments` is live; `x` holds `rows * dim` floats.
#[no_mangle]
pub unsafe extern "C" fn gs_moments_add_rows(
    moments: *mut gs_moments,
    x: *const f32,
    rows: usize,
) -> gs_status {
    guard(|| {
        // SAFETY: non-NULL handles come from gs_moments_create and are used by one thread.
        let m = &mut unsafe { moments.as_mut() }
            .ok_or(Error::NullPointer { arg: "moments" })?
            .inner;
        let n = rows
            .checked_mul(m.dim())
            .ok_or_else(|| Error::arg("rows", "rows x dim overflows"))?;
        m.add_rows(slice(x, n, "x")?)
    })
}

/// Adds everything `src` has seen to `dst` (Chan et al.; exact for shards).
///
/// # Safety
/// Both are live and distinct.
#[no_mangle]
pub unsafe extern "C" fn gs_moments_merge(
    dst: *mut gs_moments,
    src: *const gs_moments,
) -> gs_status {
    guard(|| {
        if std::ptr::eq(dst as *const gs_moments, src) {
            return Err(Error::arg("src", "must not be dst"));
        }
        let src = &non_null(src, "src")?.inner;
        // SAFETY: as in gs_moments_add_rows.
        let dst = &mut unsafe { dst.as_mut() }
            .ok_or(Error::NullPointer { arg: "dst" })?
            .inner;
        dst.merge(src)
    })
}

/// Number of items added (0 for NULL).
///
/// # Safety
/// `moments` is live or NULL.
#[no_mangle]
pub unsafe extern "C" fn gs_moments_count(moments: *const gs_moments) -> u64 {
    moments.as_ref().map_or(0, |m| m.inner.count())
}

/// Frees moments (NULL does nothing).
///
/// # Safety
/// `moments` came from this library and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn gs_moments_free(moments: *mut gs_moments) {
    if !moments.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(moments))));
    }
}

/// Fits a model: eigendecomposition of the covariance (N − 1) of `moments`, keeping `rank`
/// modes (0 = all of them), or, when `explained` is in (0, 1], the fewest modes that carry that
/// fraction of the variance (`rank` must then be 0). `residual` is GS_RESIDUAL_ZERO or
/// GS_RESIDUAL_MEAN. Needs at least 2 items.
///
/// # Safety
/// `moments` is live; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_fit(
    moments: *const gs_moments,
    rank: usize,
    explained: f64,
    residual: u32,
    out: *mut *mut gs_model,
) -> gs_status {
    guard(|| {
        let m = &non_null(moments, "moments")?.inner;
        check_out(out)?;
        let rank = match (rank, explained) {
            (0, 0.0) => Rank::Full,
            (0, e) => Rank::Explained(e),
            (r, 0.0) => Rank::Fixed(r),
            _ => {
                return Err(Error::arg(
                    "explained",
                    "give a rank or a fraction, not both",
                ))
            }
        };
        let residual = match residual {
            GS_RESIDUAL_ZERO => Residual::Zero,
            GS_RESIDUAL_MEAN => Residual::Mean,
            other => {
                return Err(Error::arg(
                    "residual",
                    format!("{other} is not a GS_RESIDUAL_* code"),
                ))
            }
        };
        let model = fit_model(
            m,
            &FitOptions {
                rank,
                residual,
                meta: ModelMeta::default(),
            },
        )?;
        write_out(out, gs_model::new(model));
        Ok(())
    })
}
