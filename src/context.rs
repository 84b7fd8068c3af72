//! The execution context: CPU, or one CUDA device. Operations take a context and a model.
//!
//! Plan once per call, execute on the context's backend. Every check (sizes, finiteness of
//! host inputs, noise levels) happens before anything is written, so a failed call leaves the
//! output untouched.

use std::ffi::c_void;

use half::{bf16, f16};

use crate::backend::{KernelVersion, LaunchTimes, Splits};
use crate::dtype::{Dtype, Element};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::noise::{Levels, Noise, Op};

/// Which device a context runs on. Numbers are part of the C ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// For [`Context::new`] and the C ABI: the CPU, because a CUDA context expects device
    /// pointers and a caller asking for "auto" cannot know which it got. Tools working on
    /// host data use [`Context::for_host_data`], which picks a working GPU.
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

/// How a CUDA context stores a model's eigenvectors on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EigvecStorage {
    /// Half precision, multiplied on the tensor cores with f32 accumulation (the default):
    /// half the bytes to stream, relative error <= 2e-3 (SPEC §5).
    #[default]
    F16,
    /// Single precision, f32 arithmetic: relative error <= 1e-5, twice the bytes.
    F32,
}

/// Where a context runs its operations.
#[derive(Debug)]
enum Backend {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(Box<crate::backend::cuda::CudaBackend>),
}

/// A CPU context or one CUDA device's context; create once, use from any thread.
///
/// A CUDA context holds the loaded kernels, the device copies of the models it has seen
/// (cached by [`Model::id`], see [`Context::release_model`]) and one scratch workspace per
/// caller stream. See `backend::cuda` for when a call allocates or waits.
#[derive(Debug)]
pub struct Context {
    device: Device,
    backend: Backend,
}

impl Context {
    /// A CPU context (never fails).
    pub fn cpu() -> Context {
        Context {
            device: Device::Cpu,
            backend: Backend::Cpu,
        }
    }

    /// A context on `device`; `ordinal` picks the CUDA device. [`Device::Auto`] gives the CPU
    /// (see its documentation); [`Device::Cuda`] stores eigenvectors in f16.
    ///
    /// # Errors
    /// `InvalidArgument` for an ordinal other than 0 on the CPU (or `Auto`); `NoCuda` when CUDA is asked for and no driver, no such device, or no CUDA backend in
    /// this build; `Cuda` when the kernels cannot be loaded.
    pub fn new(device: Device, ordinal: usize) -> Result<Context> {
        match device {
            Device::Cpu | Device::Auto if ordinal != 0 => Err(Error::arg(
                "ordinal",
                format!("{ordinal} asks for a device other than the CPU; the CPU is ordinal 0"),
            )),
            Device::Cpu | Device::Auto => Ok(Context::cpu()),
            Device::Cuda => Context::cuda(ordinal, EigvecStorage::F16),
        }
    }

    /// A context on CUDA device `ordinal` with the given eigenvector storage.
    ///
    /// # Errors
    /// As [`Context::new`] with [`Device::Cuda`].
    pub fn cuda(ordinal: usize, storage: EigvecStorage) -> Result<Context> {
        #[cfg(feature = "cuda")]
        {
            let backend = crate::backend::cuda::CudaBackend::new(ordinal, storage)?;
            Ok(Context {
                device: Device::Cuda,
                backend: Backend::Cuda(Box::new(backend)),
            })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = storage;
            Err(Error::NoCuda(format!(
                "CUDA device {ordinal} was asked for, but this build has no CUDA backend (enable the `cuda` feature); use a CPU context"
            )))
        }
    }

    /// A context for host data on `device`, for tools that want the GPU when it works.
    ///
    /// [`Device::Cpu`] gives the CPU and [`Device::Cuda`] CUDA device `ordinal` (errors
    /// pass through). [`Device::Auto`] tries CUDA device `ordinal` and keeps it only when a
    /// skip of a random batch with `model` agrees with the CPU path within the f16 precision
    /// contract (relative error <= 2e-3); otherwise it returns the CPU context. The second
    /// value says what was chosen and why, for the user.
    ///
    /// # Errors
    /// Those of [`Context::new`] for an explicit device.
    pub fn for_host_data(
        device: Device,
        ordinal: usize,
        model: &Model,
    ) -> Result<(Context, String)> {
        match device {
            Device::Cpu => Ok((Context::cpu(), "CPU".to_string())),
            Device::Cuda => {
                let ctx = Context::new(Device::Cuda, ordinal)?;
                let name = ctx.device_name().unwrap_or("CUDA").to_string();
                Ok((ctx, name))
            }
            Device::Auto => match Context::cuda(ordinal, EigvecStorage::F16) {
                Err(e) => Ok((Context::cpu(), format!("CPU ({e})"))),
                Ok(ctx) => {
                    let name = ctx.device_name().unwrap_or("CUDA").to_string();
                    match agrees_with_cpu(&ctx, model) {
                        Ok(()) => Ok((ctx, name)),
                        Err(why) => {
                            Ok((Context::cpu(), format!("CPU ({name} was not used: {why})")))
                        }
                    }
                }
            },
        }
    }

    /// The CUDA device's name, or `None` on a CPU context.
    pub fn device_name(&self) -> Option<&str> {
        match &self.backend {
            Backend::Cpu => None,
            #[cfg(feature = "cuda")]
            Backend::Cuda(b) => Some(b.device_name()),
        }
    }

    /// On a CUDA context: uploads `model` and sizes the scratch of `stream` for calls of up to
    /// `batch` rows and `slabs` output slabs (1 for skip and denoise, the number of levels
    /// for trajectories), so that such calls can then be captured in a CUDA graph. Does
    /// nothing on a CPU context.
    ///
    /// # Errors
    /// `Cuda`/`OutOfMemory` from the driver; `InvalidArgument` when `stream` is capturing.
    ///
    /// # Safety
    /// `stream` is NULL (the default stream) or a live `CUstream` of this context's device.
    pub unsafe fn prepare(
        &self,
        model: &Model,
        batch: usize,
        slabs: usize,
        stream: *mut c_void,
    ) -> Result<()> {
        if batch == 0 || slabs == 0 {
            return Err(Error::arg("batch", "batch and slabs must be at least 1"));
        }
        match &self.backend {
            Backend::Cpu => {
                let _ = (model, stream);
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Backend::Cuda(b) => (0..model.n_components())
                .try_for_each(|k| b.prepare(model.part(k), batch, slabs, stream)),
        }
    }

    /// Frees the device copy of `model` on a CUDA context once the calls already queued with
    /// it are done (nothing waits on the host); the next call with it uploads it again.
    /// Dropping a model does the same on every context that holds it. Does nothing on a CPU
    /// context.
    ///
    /// # Errors
    /// `Cuda` when the context cannot be made current.
    pub fn release_model(&self, model: &Model) -> Result<()> {
        match &self.backend {
            Backend::Cpu => {
                let _ = model;
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Backend::Cuda(b) => {
                (0..model.n_components()).try_for_each(|k| b.release_model(model.part(k)))
            }
        }
    }

    /// Diagnostics for benchmarks: times the two kernel launches of `reps` skips of device rows
    /// `x` into `out` on `stream` with CUDA events (this waits for them), with the split counts
    /// `splits` (unset: the launcher's rule), and reports the launch shapes. Not capturable.
    ///
    /// # Errors
    /// As [`Context::apply_raw`]; `NoCuda` on a CPU context.
    ///
    /// # Safety
    /// As [`Context::apply_raw`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn time_skip_launches(
        &self,
        model: &Model,
        dtype: Dtype,
        x: *const c_void,
        out: *mut c_void,
        batch: usize,
        from: Noise,
        to: Noise,
        splits: Splits,
        reps: usize,
        stream: *mut c_void,
    ) -> Result<LaunchTimes> {
        let op = Op::Skip {
            from: from.into(),
            to: to.into(),
        };
        match &self.backend {
            Backend::Cpu => {
                let _ = (model, dtype, x, out, batch, op, splits, reps, stream);
                Err(Error::NoCuda(
                    "launch timings are for CUDA contexts; this is a CPU context".into(),
                ))
            }
            #[cfg(feature = "cuda")]
            Backend::Cuda(b) => {
                check_raw(model, &op, dtype, x, out, batch)?;
                op.check(model.eigvals(), model.residual_var(), batch)?;
                b.time_skip_launches(model, op, dtype, x, out, batch, stream, splits, reps)
            }
        }
    }

    /// The CUDA kernel generation this context's later calls use (`None` on a CPU context).
    /// A new CUDA context takes it from `GAUSSSKIP_KERNELS` (`v1` or `v2`), else version 2.
    pub fn kernel_version(&self) -> Option<KernelVersion> {
        match &self.backend {
            Backend::Cpu => None,
            #[cfg(feature = "cuda")]
            Backend::Cuda(b) => Some(b.kernel_version()),
        }
    }

    /// Makes this CUDA context's later calls use kernel generation `version` (both are loaded
    /// with the context; graphs captured before keep the kernels they captured). For side by
    /// side measurements and tests; no effect on a CPU context.
    pub fn set_kernel_version(&self, version: KernelVersion) {
        #[cfg(feature = "cuda")]
        if let Backend::Cuda(b) = &self.backend {
            b.set_kernel_version(version);
        }
        let _ = version;
    }

    /// Tests: fill every CUDA call's scratch with NaN before its kernels, so that a value the
    /// kernels forget to write shows in the output. No effect on a CPU context.
    #[doc(hidden)]
    pub fn debug_poison_scratch(&self, on: bool) {
        #[cfg(feature = "cuda")]
        if let Backend::Cuda(b) = &self.backend {
            b.set_poison_scratch(on);
        }
        let _ = on;
    }

    /// Tests: how many models this context holds on its device (0 on a CPU context).
    #[doc(hidden)]
    pub fn models_on_device(&self) -> usize {
        match &self.backend {
            Backend::Cpu => 0,
            #[cfg(feature = "cuda")]
            Backend::Cuda(b) => b.models_on_device(),
        }
    }

    /// Tests: bytes of this context's device memory pool in use (models and scratch of calls in
    /// flight; 0 on a CPU context).
    #[doc(hidden)]
    pub fn device_bytes_in_use(&self) -> u64 {
        match &self.backend {
            Backend::Cpu => 0,
            #[cfg(feature = "cuda")]
            Backend::Cuda(b) => b.device_bytes_in_use(),
        }
    }

    /// The device this context runs on (never `Auto`).
    pub fn device(&self) -> Device {
        self.device
    }

    /// Runs any operation on host rows `x` (`batch x dim`) into `out`
    /// (`op.slabs() * batch x dim`). On a CUDA context the rows are copied to the device and
    /// back around the kernels (a convenience path that allocates per call; use
    /// [`Context::apply_raw`] with device buffers for speed).
    ///
    /// # Errors
    /// `ShapeMismatch` for buffer sizes, `NonFinite` for NaN/Inf in `x`, level errors of
    /// [`Op::validate`]; on a CUDA context also `OutOfMemory` and `Cuda` from the driver.
    /// `out` is untouched on error.
    pub fn apply<T: Element>(
        &self,
        model: &Model,
        op: Op<'_>,
        x: &[T],
        out: &mut [T],
    ) -> Result<()> {
        self.apply_components(model, op, x, out, None)
    }

    /// [`Context::apply`] with the model's component `components[i]` for row `i` (`None`:
    /// component 0 for every row). Rows are grouped by component and each group runs as one
    /// call (on the CPU one GEMM pair per group); a batch of one component is one call.
    ///
    /// # Errors
    /// As [`Context::apply`], plus `ShapeMismatch` when `components` does not hold one index
    /// per row and `InvalidArgument` for an index out of range. `out` is untouched on error.
    pub fn apply_components<T: Element>(
        &self,
        model: &Model,
        op: Op<'_>,
        x: &[T],
        out: &mut [T],
        components: Option<&[u32]>,
    ) -> Result<()> {
        let d = model.dim();
        if !x.len().is_multiple_of(d) || x.is_empty() {
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
        match crate::rows::check(model, components, batch)? {
            Some(c) => self.apply_one(model.part(c), op, x, out, batch),
            None => crate::rows::run_grouped(
                model,
                op,
                components.expect("mixed rows have components"),
                x,
                out,
                |part, op, gx, gout| self.apply_one(part, op, gx, gout, gx.len() / part.dim()),
            ),
        }
    }

    /// One component's call on checked buffers.
    fn apply_one<T: Element>(
        &self,
        model: &Model,
        op: Op<'_>,
        x: &[T],
        out: &mut [T],
        batch: usize,
    ) -> Result<()> {
        match &self.backend {
            Backend::Cpu => {
                let plan = op.plan(model.eigvals(), model.residual_var(), batch)?;
                // The backend scans x for NaN/Inf in the pass that centres it.
                crate::backend::cpu::apply(model, &plan, x, out)
            }
            #[cfg(feature = "cuda")]
            Backend::Cuda(b) => {
                if let Some(index) = x.iter().position(|v| !v.to_f32().is_finite()) {
                    return Err(Error::NonFinite { arg: "x", index });
                }
                op.check(model.eigvals(), model.residual_var(), batch)?;
                // SAFETY: Element types are plain f32/f16/bf16 values; viewing them as bytes
                // is valid for their whole length.
                let (xb, ob) = unsafe {
                    (
                        std::slice::from_raw_parts(
                            x.as_ptr() as *const u8,
                            std::mem::size_of_val(x),
                        ),
                        std::slice::from_raw_parts_mut(
                            out.as_mut_ptr() as *mut u8,
                            std::mem::size_of_val(out),
                        ),
                    )
                };
                b.apply_host(model, op, T::DTYPE, xb, ob, batch)
            }
        }
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
    /// On a CUDA context the call is two kernel launches on `stream`; it returns once they
    /// are queued (no host synchronisation) and can be captured in a CUDA graph once the
    /// model and the stream's scratch are in place (see [`Context::prepare`]). Device inputs
    /// are not scanned for NaN/Inf (that would need a synchronisation).
    ///
    /// # Errors
    /// As [`Context::apply`], plus `NullPointer` for NULL buffers and `InvalidArgument` for
    /// `batch == 0` or overlapping `x` and `out`. On a CUDA context also: `InvalidArgument`
    /// for a pointer the driver does not know or that lives on another device,
    /// `ShapeMismatch` for an allocation smaller than the call needs, `InvalidArgument` for
    /// work that cannot be captured (first use of a model, scratch growth, per-row level
    /// tables) while `stream` is capturing, `OutOfMemory` and `Cuda` from the driver.
    ///
    /// # Safety
    /// `x` must point to `batch * dim` elements of `dtype` and `out` to
    /// `op.slabs() * batch * dim`, valid for the call, on the context's device; on a CUDA
    /// context `stream` is NULL or a live `CUstream` of that device.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn apply_raw(
        &self,
        model: &Model,
        op: Op<'_>,
        dtype: Dtype,
        x: *const c_void,
        out: *mut c_void,
        batch: usize,
        stream: *mut c_void,
    ) -> Result<()> {
        self.apply_raw_components(model, op, dtype, x, out, batch, stream, None)
    }

    /// [`Context::apply_raw`] with component `components[i]` for row `i` (`None`: component 0
    /// for every row), as [`Context::apply_components`]. `components` is host memory on
    /// every context. On a CUDA context a batch whose rows all use one component is the same
    /// two launches (capturable); mixed rows are grouped on the device by one launch pair
    /// over all groups, with a per-call table that cannot be captured.
    ///
    /// # Errors
    /// As [`Context::apply_raw`] and [`Context::apply_components`].
    ///
    /// # Safety
    /// As [`Context::apply_raw`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn apply_raw_components(
        &self,
        model: &Model,
        op: Op<'_>,
        dtype: Dtype,
        x: *const c_void,
        out: *mut c_void,
        batch: usize,
        stream: *mut c_void,
        components: Option<&[u32]>,
    ) -> Result<()> {
        let (n_in, n_out) = check_raw(model, &op, dtype, x, out, batch)?;
        let uniform = crate::rows::check(model, components, batch)?;
        #[cfg(feature = "cuda")]
        if let Backend::Cuda(b) = &self.backend {
            return match uniform {
                Some(c) => {
                    let part = model.part(c);
                    op.check(part.eigvals(), part.residual_var(), batch)?;
                    // SAFETY: the caller guarantees device buffers of the stated sizes and a
                    // live stream; the backend checks what the driver can (pointer kind,
                    // allocation size).
                    unsafe { b.apply_device(part, op, dtype, x, out, batch, stream) }
                }
                None => {
                    let components = components.expect("mixed rows have components");
                    // Each component the rows use, once (`rows::check` bounded the indices).
                    let mut used = vec![false; model.n_components()];
                    for &c in components {
                        used[c as usize] = true;
                    }
                    for k in (0..used.len()).filter(|&k| used[k]) {
                        let part = model.part(k);
                        op.check(part.eigvals(), part.residual_var(), batch)?;
                    }
                    // SAFETY: as above.
                    unsafe {
                        b.apply_device_grouped(model, op, dtype, x, out, batch, stream, components)
                    }
                }
            };
        }
        let _ = (stream, uniform);
        // SAFETY: the caller guarantees the sizes above; the buffers do not overlap.
        unsafe fn run<T: Element>(
            ctx: &Context,
            model: &Model,
            op: Op<'_>,
            (x, out): (*const c_void, *mut c_void),
            (n_in, n_out): (usize, usize),
            components: Option<&[u32]>,
        ) -> Result<()> {
            let x = std::slice::from_raw_parts(x as *const T, n_in);
            let out = std::slice::from_raw_parts_mut(out as *mut T, n_out);
            ctx.apply_components(model, op, x, out, components)
        }
        let (bufs, lens) = ((x, out), (n_in, n_out));
        match dtype {
            Dtype::F32 => run::<f32>(self, model, op, bufs, lens, components),
            Dtype::F16 => run::<f16>(self, model, op, bufs, lens, components),
            Dtype::BF16 => run::<bf16>(self, model, op, bufs, lens, components),
        }
    }
}

/// The checks every raw call makes before any backend sees it: non-NULL buffers, sizes that
/// fit ([`buffer_len`]), `x` and `out` disjoint, valid levels. Returns the element counts of `x`
/// and `out`.
fn check_raw(
    model: &Model,
    op: &Op<'_>,
    dtype: Dtype,
    x: *const c_void,
    out: *mut c_void,
    batch: usize,
) -> Result<(usize, usize)> {
    if x.is_null() {
        return Err(Error::NullPointer { arg: "x" });
    }
    if out.is_null() {
        return Err(Error::NullPointer { arg: "out" });
    }
    let (n_in, n_out) = buffer_len(model, dtype, batch, op.slabs())?;
    let (xs, os) = (x as usize, out as usize);
    let end = |start: usize, n: usize, arg| {
        start
            .checked_add(n * dtype.size())
            .ok_or_else(|| Error::arg(arg, "the buffer runs past the end of the address space"))
    };
    let (xe, oe) = (end(xs, n_in, "x")?, end(os, n_out, "out")?);
    if xs < oe && os < xe {
        return Err(Error::arg(
            "out",
            format!(
                "must not overlap x (x: {} bytes at {xs:#x}, out: {} bytes at {os:#x})",
                xe - xs,
                oe - os
            ),
        ));
    }
    op.validate(batch)?;
    Ok((n_in, n_out))
}

/// Largest buffer a call accepts, in bytes: 2^56, more than any 64-bit platform maps (x86-64
/// with 5-level paging and ARM64 have at most 2^56 bytes of user address space), and within
/// `isize::MAX`, as Rust slices require.
pub const MAX_BUFFER_BYTES: usize = if usize::BITS > 56 {
    1 << 56
} else {
    isize::MAX as usize
};

/// The element counts of a call's input (`batch x dim`) and output (`slabs x batch x dim`),
/// checked before any pointer arithmetic or allocation: `batch >= 1`, and both buffers'
/// byte sizes at most [`MAX_BUFFER_BYTES`].
///
/// # Errors
/// `InvalidArgument` naming `batch` otherwise.
pub fn buffer_len(
    model: &Model,
    dtype: Dtype,
    batch: usize,
    slabs: usize,
) -> Result<(usize, usize)> {
    if batch == 0 {
        return Err(Error::arg("batch", "must be at least 1"));
    }
    let d = model.dim();
    let bytes = |n: Option<usize>| n.and_then(|n| n.checked_mul(dtype.size()).map(|b| (n, b)));
    let fits = |n: Option<usize>, what: &str| {
        match bytes(n) {
        Some((n, b)) if b <= MAX_BUFFER_BYTES => Ok(n),
        _ => Err(Error::arg(
            "batch",
            format!(
                "{what} of {batch} rows of {d} {}-byte elements is larger than any address space ({MAX_BUFFER_BYTES} bytes)",
                dtype.size()
            ),
        )),
    }
    };
    let n_in = fits(batch.checked_mul(d), "the input")?;
    let n_out = fits(
        n_in.checked_mul(slabs),
        &format!("the output ({slabs} slabs)"),
    )?;
    Ok((n_in, n_out))
}

/// Runs one skip of a random batch on `ctx` and on the CPU and compares them.
fn agrees_with_cpu(ctx: &Context, model: &Model) -> std::result::Result<(), String> {
    const ROWS: usize = 4;
    let d = model.dim();
    let mut rng = crate::rng::Rng::new(0x5eed);
    let x: Vec<f32> = rng
        .normals(ROWS * d)
        .iter()
        .map(|&e| (80.0 * e) as f32)
        .collect();
    let (from, to) = (Noise::edm(80.0), Noise::edm(5.0));
    let mut want = vec![0f32; ROWS * d];
    let mut got = vec![0f32; ROWS * d];
    Context::cpu()
        .skip(model, &x, &mut want, from, to)
        .map_err(|e| e.to_string())?;
    ctx.skip(model, &x, &mut got, from, to)
        .map_err(|e| e.to_string())?;
    let (mut num, mut den) = (0f64, 0f64);
    for (g, w) in got.iter().zip(&want) {
        num += (f64::from(*g) - f64::from(*w)).powi(2);
        den += f64::from(*w).powi(2);
    }
    let rel = (num / den.max(f64::MIN_POSITIVE)).sqrt();
    if rel.is_finite() && rel <= 2e-3 {
        Ok(())
    } else {
        Err(format!(
            "its skip differs from the CPU path by a relative {rel:.3e} (> 2e-3)"
        ))
    }
}
