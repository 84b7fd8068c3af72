//! The execution context: CPU, or one CUDA device. Operations take a context and a model.
//!
//! Plan once per call, execute on the context's backend. Every check (sizes, finiteness of
//! host inputs, noise levels) happens before anything is written, so a failed call leaves the
//! output untouched.

use std::ffi::c_void;

use half::{bf16, f16};

use crate::dtype::{Dtype, Element};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::noise::{Levels, Noise, Op};

/// Which device a context runs on. Numbers are part of the C ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// CUDA when a device is usable, otherwise CPU.
    Auto = 0,
    /// The host CPU (multi-threaded).
    Cpu = 1,
    /// One CUDA device.
    Cuda = 2,
}

impl Device {
    /// Validates an integer coming from C.
    pub fn from_u32(v: u32) -> Option<Device> {
        match v {
            0 => Some(Device::Auto),
            1 => Some(Device::Cpu),
            2 => Some(Device::Cuda),
            _ => None,
        }
    }
}

/// A CPU context or one CUDA device's context; create once, use from any thread.
#[derive(Debug)]
pub struct Context {
    device: Device,
}

impl Context {
    /// A CPU context (never fails).
    pub fn cpu() -> Context {
        Context {
            device: Device::Cpu,
        }
    }

    /// A context on `device`; `ordinal` picks the CUDA device.
    ///
    /// # Errors
    /// `NoCuda` when CUDA is asked for and no CUDA backend or device is usable.
    pub fn new(device: Device, ordinal: usize) -> Result<Context> {
        match device {
            Device::Cpu | Device::Auto => Ok(Context::cpu()),
            Device::Cuda => Err(Error::NoCuda(format!(
                "CUDA device {ordinal} was asked for, but this build has no CUDA backend yet; use the CPU context"
            ))),
        }
    }

    /// The device this context runs on (never `Auto`).
    pub fn device(&self) -> Device {
        self.device
    }

    /// Runs any operation on host rows `x` (`batch x dim`) into `out`
    /// (`op.slabs() * batch x dim`).
    ///
    /// # Errors
    /// `ShapeMismatch` for buffer sizes, `NonFinite` for NaN/Inf in `x`, level errors of
    /// [`Op::validate`]. `out` is untouched on error.
    pub fn apply<T: Element>(
        &self,
        model: &Model,
        op: Op<'_>,
        x: &[T],
        out: &mut [T],
    ) -> Result<()> {
        let d = model.dim();
        if x.len() % d != 0 || x.is_empty() {
            return Err(Error::shape(
                "x",
                format!("a positive multiple of dim = {d}"),
                x.len(),
            ));
        }
        let batch = x.len() / d;
        let want = op.slabs() * batch * d;
        if out.len() != want {
            return Err(Error::shape(
                "out",
                format!("{} x {batch} x {d} = {want}", op.slabs()),
                out.len(),
            ));
        }
        if let Some(index) = x.iter().position(|v| !v.to_f32().is_finite()) {
            return Err(Error::NonFinite { arg: "x", index });
        }
        let plan = op.plan(model.eigvals(), model.residual_var(), batch)?;
        crate::backend::cpu::apply(model, &plan, x, out);
        Ok(())
    }

    /// Exact PF-ODE jump of every row from `from` to `to` (one level for all rows, or one
    /// per row).
    ///
    /// # Errors
    /// As [`Context::apply`].
    pub fn skip<'a, T: Element>(
        &self,
        model: &Model,
        x: &[T],
        out: &mut [T],
        from: impl Into<Levels<'a>>,
        to: impl Into<Levels<'a>>,
    ) -> Result<()> {
        self.apply(
            model,
            Op::Skip {
                from: from.into(),
                to: to.into(),
            },
            x,
            out,
        )
    }

    /// Posterior mean E[x0 | x_t] of every row at level `at`.
    ///
    /// # Errors
    /// As [`Context::apply`].
    pub fn denoise<'a, T: Element>(
        &self,
        model: &Model,
        x: &[T],
        out: &mut [T],
        at: impl Into<Levels<'a>>,
    ) -> Result<()> {
        self.apply(model, Op::Denoise { at: at.into() }, x, out)
    }

    /// The states along the exact path from `from` at each of `levels`; `out` is
    /// `levels.len() x batch x dim`, level-major.
    ///
    /// # Errors
    /// As [`Context::apply`].
    pub fn skip_trajectory<'a, T: Element>(
        &self,
        model: &Model,
        x: &[T],
        out: &mut [T],
        from: impl Into<Levels<'a>>,
        levels: &'a [Noise],
    ) -> Result<()> {
        self.apply(
            model,
            Op::SkipTrajectory {
                from: from.into(),
                levels,
            },
            x,
            out,
        )
    }

    /// The x0-predictions along the exact path from `from` at each of `levels`; `out` is
    /// `levels.len() x batch x dim`, level-major.
    ///
    /// # Errors
    /// As [`Context::apply`].
    pub fn x0_trajectory<'a, T: Element>(
        &self,
        model: &Model,
        x: &[T],
        out: &mut [T],
        from: impl Into<Levels<'a>>,
        levels: &'a [Noise],
    ) -> Result<()> {
        self.apply(
            model,
            Op::X0Trajectory {
                from: from.into(),
                levels,
            },
            x,
            out,
        )
    }

    /// Runs an operation on raw buffers: host pointers on a CPU context, device pointers on a
    /// CUDA context (then `stream` is the caller's `CUstream`, NULL for the default stream;
    /// it is ignored on a CPU context). This is what the C ABI calls.
    ///
    /// # Errors
    /// As [`Context::apply`], plus `NullPointer` for NULL buffers and `InvalidArgument` for
    /// `batch == 0` or overlapping `x` and `out`.
    ///
    /// # Safety
    /// `x` must point to `batch * dim` elements of `dtype` and `out` to
    /// `op.slabs() * batch * dim`, valid for the call, on the context's device.
    pub unsafe fn apply_raw(
        &self,
        model: &Model,
        op: Op<'_>,
        dtype: Dtype,
        x: *const c_void,
        out: *mut c_void,
        batch: usize,
        _stream: *mut c_void,
    ) -> Result<()> {
        if x.is_null() {
            return Err(Error::NullPointer { arg: "x" });
        }
        if out.is_null() {
            return Err(Error::NullPointer { arg: "out" });
        }
        if batch == 0 {
            return Err(Error::arg("batch", "must be at least 1"));
        }
        let n_in = batch
            .checked_mul(model.dim())
            .ok_or_else(|| Error::arg("batch", "batch x dim overflows"))?;
        let n_out = n_in
            .checked_mul(op.slabs())
            .ok_or_else(|| Error::arg("batch", "output size overflows"))?;
        let (xs, os) = (x as usize, out as usize);
        let (xe, oe) = (xs + n_in * dtype.size(), os + n_out * dtype.size());
        if xs < oe && os < xe {
            return Err(Error::arg("out", "must not overlap x"));
        }
        // SAFETY: the caller guarantees the sizes above; the buffers do not overlap.
        unsafe fn run<T: Element>(
            ctx: &Context,
            model: &Model,
            op: Op<'_>,
            x: *const c_void,
            out: *mut c_void,
            n_in: usize,
            n_out: usize,
        ) -> Result<()> {
            let x = std::slice::from_raw_parts(x as *const T, n_in);
            let out = std::slice::from_raw_parts_mut(out as *mut T, n_out);
            ctx.apply(model, op, x, out)
        }
        match dtype {
            Dtype::F32 => run::<f32>(self, model, op, x, out, n_in, n_out),
            Dtype::F16 => run::<f16>(self, model, op, x, out, n_in, n_out),
            Dtype::BF16 => run::<bf16>(self, model, op, x, out, n_in, n_out),
        }
    }
}
