//! The C ABI of hand-off calibration (`crate::calibrate`): run a calibration with the
//! caller's network as a callback, read its result as JSON, store it in a copy of the model,
//! and look up the calibrated k of a schedule. Same conventions as `ffi` (statuses, handles,
//! panic boundary, outputs written only on success).

#![allow(non_camel_case_types)]
// Every exported function checks its pointers before using them.
#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_void};

use crate::calibrate::{self, Calibration, Options, Sampler, Tolerance};
use crate::error::Error;
use crate::ffi::{
    check_out, gs_context, gs_model, gs_noise, gs_status, guard, non_null, slice, write_out,
};
use crate::ffi_fit::{check_len, export, rows_of};
use crate::noise::Noise;
use crate::sampler::Denoiser;

/// `gs_calibrate_options.sampler`: Heun (Karras et al. Algorithm 1, no churn), the default.
pub const GS_SAMPLER_HEUN: u32 = 0;
/// `gs_calibrate_options.sampler`: Euler in EDM variables, which is deterministic DDIM on VP
/// levels and flow-matching Euler on flow levels.
pub const GS_SAMPLER_EULER: u32 = 1;
/// `gs_calibrate_options.tolerance_rule`: the default, decided at the hand-off against the
/// sampler's own step-count error there: the jump's error against the exact state
/// (extrapolated from runs with 1x and 2x the steps) at most 2^(p-1) times the sampler's
/// own, p its order (Euler 1, Heun 2). The JSON names it "hand-off".
pub const GS_TOLERANCE_STEP_COUNT: u32 = 0;
/// `gs_calibrate_options.tolerance_rule`: the fixed final-sample RMS `tolerance`.
pub const GS_TOLERANCE_RMS: u32 = 1;

/// The caller's network as an x0-predictor: writes D(x, at) = E[x0 | x_t = x] of the `rows`
/// rows of `x` (row-major `rows x dim`, host memory, in the schedule's space) at level `at`
/// to `out` (same layout). Returns 0 on success; anything else stops the calibration, which
/// returns GS_ERR_CALLBACK.
pub type gs_denoise_fn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        x: *const f32,
        rows: usize,
        dim: usize,
        at: gs_noise,
        out: *mut f32,
    ) -> c_int,
>;

/// Options of `gs_calibrate`; all zeros (or a NULL pointer) is the default: Heun, the
/// hand-off rule (GS_TOLERANCE_STEP_COUNT), candidates until the first beyond tolerance, no
/// reference set. Every candidate's final samples are measured.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct gs_calibrate_options {
    /// GS_SAMPLER_HEUN or GS_SAMPLER_EULER.
    pub sampler: u32,
    /// GS_TOLERANCE_STEP_COUNT or GS_TOLERANCE_RMS.
    pub tolerance_rule: u32,
    /// With GS_TOLERANCE_RMS: the largest final-sample RMS change accepted (>= 0).
    pub tolerance: f64,
    /// Largest candidate k; 0: every k that leaves one step.
    pub max_k: usize,
    /// Nonzero: measure every candidate up to max_k instead of stopping after the first one
    /// beyond the tolerance.
    pub full_table: c_int,
    /// Optional reference items (row-major `reference_items x dim`, host memory): each
    /// candidate then counts the samples ending nearest the same item as without the jump.
    pub reference: *const f32,
    /// Rows of `reference` (0 when it is NULL).
    pub reference_items: usize,
}

/// A finished calibration (`gs_calibrate`). Immutable; free with `gs_calibration_free`.
pub struct gs_calibration {
    inner: Calibration,
}

/// The C callback as the library's denoiser.
struct Callback {
    f: unsafe extern "C" fn(*mut c_void, *const f32, usize, usize, gs_noise, *mut f32) -> c_int,
    user: *mut c_void,
    dim: usize,
}

impl Denoiser<f32> for Callback {
    fn denoise(&mut self, x: &[f32], at: Noise, out: &mut [f32]) -> Result<(), Error> {
        let rows = x.len() / self.dim;
        // SAFETY: x and out hold rows * dim floats; the callback's contract is to read x and
        // write out within those bounds and return.
        let code = unsafe {
            (self.f)(
                self.user,
                x.as_ptr(),
                rows,
                self.dim,
                gs_noise {
                    alpha: at.alpha,
                    sigma: at.sigma,
                },
                out.as_mut_ptr(),
            )
        };
        if code != 0 {
            return Err(Error::Callback(format!(
                "the denoiser returned {code} at (alpha, sigma) = ({:?}, {:?})",
                at.alpha, at.sigma
            )));
        }
        Ok(())
    }
}

fn options_of(o: *const gs_calibrate_options, dim: usize) -> Result<Options<'static>, Error> {
    // SAFETY: a non-NULL pointer points to a gs_calibrate_options (caller's contract).
    let Some(o) = (unsafe { o.as_ref() }) else {
        return Ok(Options::default());
    };
    let sampler = sampler_of(o.sampler)?;
    let tolerance = match o.tolerance_rule {
        GS_TOLERANCE_STEP_COUNT => Tolerance::StepCount,
        GS_TOLERANCE_RMS => Tolerance::Rms(o.tolerance),
        other => {
            return Err(Error::arg(
                "tolerance_rule",
                format!("{other} is not a GS_TOLERANCE_* code"),
            ))
        }
    };
    let reference = if o.reference.is_null() {
        if o.reference_items != 0 {
            return Err(Error::NullPointer { arg: "reference" });
        }
        None
    } else {
        if o.reference_items == 0 {
            return Err(Error::arg("reference_items", "must be at least 1"));
        }
        Some(rows_of(o.reference, o.reference_items, dim)?)
    };
    Ok(Options {
        sampler,
        tolerance,
        max_k: (o.max_k != 0).then_some(o.max_k),
        full_table: o.full_table != 0,
        reference,
        final_samples: true,
    })
}

fn sampler_of(code: u32) -> Result<Sampler, Error> {
    match code {
        GS_SAMPLER_HEUN => Ok(Sampler::Heun),
        GS_SAMPLER_EULER => Ok(Sampler::Euler),
        other => Err(Error::arg(
            "sampler",
            format!("{other} is not a GS_SAMPLER_* code"),
        )),
    }
}

/// Calibrates the hand-off of a sampler on the schedule `levels` (`n_levels` noise levels,
/// noisiest first, sigma/alpha strictly decreasing, only the last may have sigma = 0: EDM
/// sigmas as gs_noise_edm, or VP / flow levels) for the caller's network `denoise`, starting
/// from `batch` rows of calibration noise `x_t` at `levels[0]` (host memory, row-major
/// `batch x dim`). Runs the schedule once without a jump, once refined (for the default
/// tolerance), and for k = 1, 2, ... the jump to `levels[k]` and the remaining steps;
/// `denoise` is called with `user` and whole batches, on this thread. On success writes a
/// new calibration to `*out` (read it with `gs_calibration_json`).
///
/// # Safety
/// `ctx` and `model` are live; `levels` has `n_levels` values and `x_t` `batch * dim`;
/// `options` is NULL or valid (its `reference` holding `reference_items * dim` floats);
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn gs_calibrate(
    ctx: *mut gs_context,
    model: *const gs_model,
    denoise: gs_denoise_fn,
    user: *mut c_void,
    levels: *const gs_noise,
    n_levels: usize,
    x_t: *const f32,
    batch: usize,
    options: *const gs_calibrate_options,
    out: *mut *mut gs_calibration,
) -> gs_status {
    guard(|| {
        check_out(out)?;
        let ctx = &non_null(ctx, "ctx")?.inner;
        let model = &non_null(model, "model")?.inner;
        let f = denoise.ok_or(Error::NullPointer { arg: "denoise" })?;
        let dim = model.dim();
        if batch == 0 {
            return Err(Error::arg("batch", "must be at least 1"));
        }
        let levels: Vec<Noise> = slice(levels, n_levels, "levels")?
            .iter()
            .map(|&n| n.into())
            .collect();
        let x_t = rows_of(x_t, batch, dim)?;
        let opts = options_of(options, dim)?;
        let mut cb = Callback { f, user, dim };
        let cal = calibrate::calibrate(ctx, model, &mut cb, &levels, x_t, &opts)?;
        write_out(out, gs_calibration { inner: cal });
        Ok(())
    })
}

/// Frees a calibration; NULL does nothing.
///
/// # Safety
/// `cal` is NULL or from `gs_calibrate`, not freed before.
#[no_mangle]
pub unsafe extern "C" fn gs_calibration_free(cal: *mut gs_calibration) {
    if !cal.is_null() {
        // SAFETY: from Box::into_raw in gs_calibrate (caller's contract).
        drop(unsafe { Box::from_raw(cal) });
    }
}

/// The chosen k of a calibration (0: do not jump; also 0 for NULL).
///
/// # Safety
/// `cal` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn gs_calibration_k(cal: *const gs_calibration) -> usize {
    // SAFETY: NULL or live (caller's contract).
    unsafe { cal.as_ref() }.map_or(0, |c| c.inner.k)
}

/// The whole calibration as JSON (sampler, levels, k, tolerance, tolerance_rule, step_error,
/// batch, nfe_full, cost, denoiser_gap, candidates: see the README), NUL-terminated: with
/// `buf` NULL sets `*len` to its length without the NUL; otherwise `cap` must be at least
/// `*len + 1`.
///
/// # Safety
/// `cal` is live; `buf` is NULL or has `cap` writable bytes; `len` is writable.
#[no_mangle]
pub unsafe extern "C" fn gs_calibration_json(
    cal: *const gs_calibration,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> gs_status {
    guard(|| {
        let c = &non_null(cal, "cal")?.inner;
        check_len(len)?;
        let mut text = c.to_value().to_string().into_bytes();
        let n = text.len();
        if !buf.is_null() {
            text.push(0);
            export(&text, buf as *mut c_void, cap, len)?;
        }
        // SAFETY: len was checked non-NULL.
        unsafe { *len = n };
        Ok(())
    })
}

/// A new model: `model` with `cal` stored in its metadata (replacing a calibration of the
/// same sampler and schedule), so that `gs_model_save` keeps it. `model` is unchanged.
///
/// # Safety
/// `model` and `cal` are live; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn gs_model_with_calibration(
    model: *const gs_model,
    cal: *const gs_calibration,
    out: *mut *mut gs_model,
) -> gs_status {
    guard(|| {
        check_out(out)?;
        let m = &non_null(model, "model")?.inner;
        let c = &non_null(cal, "cal")?.inner;
        let copy = calibrate::with_calibration(m, c)?;
        write_out(out, gs_model::new(copy));
        Ok(())
    })
}

/// The calibrated k the model holds for `sampler` (a GS_SAMPLER_* code) on the schedule
/// `levels` (`n_levels` values; alpha and sigma equal to 1e-5 relative), written to `*k`.
/// GS_ERR_INVALID_ARGUMENT, with a message listing the schedules the model holds, when it
/// holds none for this one.
///
/// # Safety
/// `model` is live; `levels` has `n_levels` values; `k` is writable.
#[no_mangle]
pub unsafe extern "C" fn gs_model_calibrated_k(
    model: *const gs_model,
    sampler: u32,
    levels: *const gs_noise,
    n_levels: usize,
    k: *mut usize,
) -> gs_status {
    guard(|| {
        let m = &non_null(model, "model")?.inner;
        if k.is_null() {
            return Err(Error::NullPointer { arg: "k" });
        }
        let sampler = sampler_of(sampler)?;
        let levels: Vec<Noise> = slice(levels, n_levels, "levels")?
            .iter()
            .map(|&n| n.into())
            .collect();
        let found = calibrate::calibrated_k(m, sampler, &levels)?;
        // SAFETY: k was checked non-NULL.
        unsafe { *k = found };
        Ok(())
    })
}
