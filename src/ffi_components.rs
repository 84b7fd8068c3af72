//! C ABI for models of several components (one Gaussian per class): the operations with a
//! component index per row, and access to the components.
//!
//! Every `*_component` operation is its plain namesake with one more argument,
//! `const uint32_t *component`: `batch` indices in host memory (also on a CUDA context), or
//! NULL for component 0 on every row. An index out of range is `GS_ERR_INVALID_ARGUMENT` with
//! `out` untouched.

use std::ffi::{c_char, c_void};

use crate::error::Error;
use crate::ffi::{
    c_str, gs_context, gs_model, gs_noise, gs_status, guard, level_table, non_null,
    run_op_components, slice, write_out,
};
use crate::ffi_fit::{check_len, export};
use crate::model::{Model, ModelMeta};
use crate::noise::{Levels, Op};

/// As `gs_skip`, row `i` using component `component[i]`.
///
/// # Safety
/// As `gs_skip`; `component` is NULL or holds `batch` indices.
#[no_mangle]
pub unsafe extern "C" fn gs_skip_component(
    ctx: *mut gs_context,
    model: *const gs_model,
    dtype: u32,
    x: *const c_void,
    out: *mut c_void,
    batch: usize,
    from: gs_noise,
    to: gs_noise,
    component: *const u32,
    stream: *mut c_void,
) -> gs_status {
    let bufs = (x, out);
    run_op_components(ctx, model, dtype, bufs, batch, 1, stream, component, || {
        Ok(Op::Skip {
            from: Levels::One(from.into()),
            to: Levels::One(to.into()),
        })
    })
}

/// As `gs_skip_rows`, row `i` using component `component[i]`.
///
/// # Safety
/// As `gs_skip_rows`; `component` is NULL or holds `batch` indices.
#[no_mangle]
pub unsafe extern "C" fn gs_skip_rows_component(
    ctx: *mut gs_context,
    model: *const gs_model,
    dtype: u32,
    x: *const c_void,
    out: *mut c_void,
    batch: usize,
    from: *const gs_noise,
    to: *const gs_noise,
    component: *const u32,
    stream: *mut c_void,
) -> gs_status {
    let bufs = (x, out);
    run_op_components(ctx, model, dtype, bufs, batch, 1, stream, component, || {
        Ok(Op::Skip {
            from: Levels::PerRow(level_table(from, batch, "from")?),
            to: Levels::PerRow(level_table(to, batch, "to")?),
        })
    })
}

/// As `gs_denoise`, row `i` using component `component[i]`.
///
/// # Safety
/// As `gs_denoise`; `component` is NULL or holds `batch` indices.
#[no_mangle]
pub unsafe extern "C" fn gs_denoise_component(
    ctx: *mut gs_context,
    model: *const gs_model,
    dtype: u32,
    x: *const c_void,
    out: *mut c_void,
    batch: usize,
    at: gs_noise,
    component: *const u32,
    stream: *mut c_void,
) -> gs_status {
    let bufs = (x, out);
    run_op_components(ctx, model, dtype, bufs, batch, 1, stream, component, || {
        Ok(Op::Denoise {
            at: Levels::One(at.into()),
        })
    })
}

/// As `gs_denoise_rows`, row `i` using component `component[i]`.
///
/// # Safety
/// As `gs_denoise_rows`; `component` is NULL or holds `batch` indices.
#[no_mangle]
pub unsafe extern "C" fn gs_denoise_rows_component(
    ctx: *mut gs_context,
    model: *const gs_model,
    dtype: u32,
    x: *const c_void,
    out: *mut c_void,
    batch: usize,
    at: *const gs_noise,
    component: *const u32,
    stream: *mut c_void,
) -> gs_status {
    let bufs = (x, out);
    run_op_components(ctx, model, dtype, bufs, batch, 1, stream, component, || {
        Ok(Op::Denoise {
            at: Levels::PerRow(level_table(at, batch, "at")?),
        })
    })
}

/// As `gs_skip_trajectory`, row `i` using component `component[i]`.
///
/// # Safety
/// As `gs_skip_trajectory`; `component` is NULL or holds `batch` indices.
#[no_mangle]
pub unsafe extern "C" fn gs_skip_trajectory_component(
    ctx: *mut gs_context,
    model: *const gs_model,
    dtype: u32,
    x: *const c_void,
    out: *mut c_void,
    batch: usize,
    from: gs_noise,
    levels: *const gs_noise,
    n_levels: usize,
    component: *const u32,
    stream: *mut c_void,
) -> gs_status {
    let bufs = (x, out);
    run_op_components(
        ctx,
        model,
        dtype,
        bufs,
        batch,
        n_levels,
        stream,
        component,
        || {
            Ok(Op::SkipTrajectory {
                from: Levels::One(from.into()),
                levels: level_table(levels, n_levels, "levels")?,
            })
        },
    )
}

/// As `gs_x0_trajectory`, row `i` using component `component[i]`.
///
/// # Safety
/// As `gs_x0_trajectory`; `component` is NULL or holds `batch` indices.
#[no_mangle]
pub unsafe extern "C" fn gs_x0_trajectory_component(
    ctx: *mut gs_context,
    model: *const gs_model,
    dtype: u32,
    x: *const c_void,
    out: *mut c_void,
    batch: usize,
    from: gs_noise,
    levels: *const gs_noise,
    n_levels: usize,
    component: *const u32,
    stream: *mut c_void,
) -> gs_status {
    let bufs = (x, out);
    run_op_components(
        ctx,
        model,
        dtype,
        bufs,
        batch,
        n_levels,
        stream,
        component,
        || {
            Ok(Op::X0Trajectory {
                from: Levels::One(from.into()),
                levels: level_table(levels, n_levels, "levels")?,
            })
        },
    )
}

/// The number of components of `model` (1 for an unconditional model) in `*out`.
///
/// # Safety
/// `model` is live; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_model_n_components(
    model: *const gs_model,
    out: *mut usize,
) -> gs_status {
    guard(|| {
        let m = &non_null(model, "model")?.inner;
        if out.is_null() {
            return Err(Error::NullPointer { arg: "out" });
        }
        *out = m.n_components();
        Ok(())
    })
}

/// Component `k` of `model` as a new one-component model (a copy; free it with
/// `gs_model_free`): its mean, eigenpairs, residual variance and label, with its item count
/// as the sample count.
///
/// # Safety
/// `model` is live; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gs_model_component(
    model: *const gs_model,
    k: usize,
    out: *mut *mut gs_model,
) -> gs_status {
    guard(|| {
        let m = &non_null(model, "model")?.inner;
        if out.is_null() {
            return Err(Error::NullPointer { arg: "out" });
        }
        let c = m.component(k)?;
        write_out(out, gs_model::new(c));
        Ok(())
    })
}

/// Component `k`'s label (UTF-8) and item count. The label follows `gs_model_metadata`'s
/// buffer rule: `buf = NULL` gives its length in `*len`; otherwise `buf` receives it and a NUL
/// (`cap` at least `*len + 1`). `count` may be NULL.
///
/// # Safety
/// `model` is live; `len` points to writable storage; `buf` is NULL or holds `cap` bytes;
/// `count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gs_model_component_info(
    model: *const gs_model,
    k: usize,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
    count: *mut u64,
) -> gs_status {
    guard(|| {
        let m = &non_null(model, "model")?.inner;
        check_len(len)?;
        if k >= m.n_components() {
            return Err(Error::arg(
                "k",
                format!(
                    "{k} is out of range: the model has {} component(s)",
                    m.n_components()
                ),
            ));
        }
        let label = m.labels()[k].as_bytes().to_vec();
        let n = label.len();
        if !buf.is_null() {
            let mut text = label;
            text.push(0);
            export(&text, buf as *mut c_void, cap, len)?;
        }
        *len = n;
        if !count.is_null() {
            *count = m.counts()[k];
        }
        Ok(())
    })
}

/// Joins `k` one-component models into one model of `k` components, component `i` being a
/// copy of `parts[i]` labelled `labels[i]` (distinct, non-empty UTF-8 text when `k > 1`).
/// Item shape, value space and source come from `parts[0]`; the sample count is the sum of
/// the parts' sample counts.
///
/// # Safety
/// `parts` and `labels` hold `k` live models and NUL-terminated strings; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn gs_model_from_components(
    parts: *const *const gs_model,
    labels: *const *const c_char,
    k: usize,
    out: *mut *mut gs_model,
) -> gs_status {
    guard(|| {
        if out.is_null() {
            return Err(Error::NullPointer { arg: "out" });
        }
        if k == 0 || k > crate::model::MAX_COMPONENTS {
            return Err(Error::arg(
                "k",
                format!(
                    "needs 1..={} components, got {k}",
                    crate::model::MAX_COMPONENTS
                ),
            ));
        }
        let parts = slice(parts, k, "parts")?;
        let labels = slice(labels, k, "labels")?;
        let mut models: Vec<Model> = Vec::new();
        models
            .try_reserve_exact(k)
            .map_err(|_| Error::OutOfMemory(format!("{k} components")))?;
        let mut meta = ModelMeta::default();
        for (i, (&p, &l)) in parts.iter().zip(labels).enumerate() {
            let part = &non_null(p, "parts")?.inner;
            if part.n_components() != 1 {
                return Err(Error::arg(
                    "parts",
                    format!(
                        "parts[{i}] has {} components; each part must have one",
                        part.n_components()
                    ),
                ));
            }
            if i == 0 {
                meta = part.meta().clone();
            }
            models.push(part.component(0)?.with_label(c_str(l, "labels")?));
        }
        let model = Model::from_components(models, meta)?;
        write_out(out, gs_model::new(model));
        Ok(())
    })
}
