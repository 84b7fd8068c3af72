//! The execution context: CPU, or one CUDA device. Operations take a context and a model.
//!
//! Plan once per call, execute on the context's backend. Every check (sizes, finiteness of
//! host inputs, noise levels) happens before anything is written, so a failed call leaves the
//! output untouched.

use crate::dtype::Element;
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
    pub fn apply<T: Element>(&self, model: &Model, op: Op<'_>, x: &[T], out: &mut [T]) -> Result<()> {
        let d = model.dim();
        if x.len() % d != 0 || x.is_empty() {
            return Err(Error::shape("x", format!("a positive multiple of dim = {d}"), x.len()));
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
        self.apply(model, Op::Skip { from: from.into(), to: to.into() }, x, out)
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
        self.apply(model, Op::SkipTrajectory { from: from.into(), levels }, x, out)
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
        self.apply(model, Op::X0Trajectory { from: from.into(), levels }, x, out)
    }
}
