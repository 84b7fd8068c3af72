//! CUDA backend: the kernels of `kernels/skip.cu` driven through cudarc's driver API.
//!
//! One call is two launches on the caller's stream (projection with split-K and the weights,
//! then the weighted back-projection with the fused epilogue; see the kernel file's header).
//!
//! Life cycle and costs:
//! - Context creation retains the device's primary context (the one the CUDA runtime and
//!   PyTorch use, so their pointers and streams work here), loads the kernel module, and creates
//!   the context's memory pool and stream. Nothing is compiled or loaded inside a call.
//! - Every call makes the context current and restores the caller's current context after.
//! - A model is uploaded on its first use (or by [`CudaBackend::prepare`]) on the context's own
//!   stream, which the call waits for once; its device copy is freed when the model is dropped
//!   (after the eager calls that used it), or by [`CudaBackend::release_model`].
//! - Scratch is allocated per call from the pool on the caller's stream and freed on it after
//!   the kernels ([`memory`]). Streams never share scratch, nothing waits on the host, and in a
//!   graph capture the allocation becomes a memory node owned by the graph.
//! - A call under graph capture needs only its model on the device already (one eager call,
//!   e.g. the warm-up of PyTorch's recipe, or `prepare`); per-row levels and trajectories of
//!   more than [`INLINE_LEVELS`] levels upload a table per call and are refused under capture.
//! - [`precision`] refuses calls whose rounding amplification breaks the precision contract.
//! - Both kernel generations are loaded; `GAUSSSKIP_KERNELS=v1|v2` picks the one a new context
//!   uses (default v2), [`CudaBackend::set_kernel_version`] changes it for later calls.

mod args;
mod driver;
pub(crate) mod geometry;
mod memory;
mod module;
mod pointers;
mod precision;

use std::ffi::{c_void, CStr};
use std::fmt;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use cudarc::driver::sys;

use crate::context::EigvecStorage;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::noise::Op;

pub use crate::backend::{KernelVersion, LaunchTimes, Splits};
pub use args::INLINE_LEVELS;
pub use module::FATBIN_ORIGIN;

use args::{GsLevel, LevelPlan, Pointers, Uniform};
use driver::{capturing, check, Current};
use geometry::{Geometry, SplitRule};
use memory::{Device, DeviceModel, ModelCache};
use module::{Kernels, Stage, THREADS};

/// The CUDA backend of one context.
pub(crate) struct CudaBackend {
    // Field order is drop order: model copies and kernels before the device (pool, stream,
    // primary context) they live in.
    models: Arc<ModelCache>,
    kernels: Kernels,
    device: Arc<Device>,
    storage: EigvecStorage,
    ordinal: usize,
    sms: usize,
    /// Bytes of L2 cache: version 2 keeps eigenvectors that fit well within it for launch 2.
    l2_bytes: usize,
    name: String,
    splits: Splits,
    poison: AtomicBool,
    /// The kernel generation of later calls (0: version 1, 1: version 2).
    version: AtomicU8,
}

// SAFETY: the raw handles (module, functions, streams, pool) are driver objects usable from any
// thread once their context is current; every entry point makes it current first, and the
// mutable state sits behind mutexes and atomics.
unsafe impl Send for CudaBackend {}
// SAFETY: as above.
unsafe impl Sync for CudaBackend {}

impl fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.name)
            .field("ordinal", &self.ordinal)
            .field("storage", &self.storage)
            .field("kernels", &FATBIN_ORIGIN)
            .finish()
    }
}

/// Split counts from `GAUSSSKIP_SPLITS` ("P,B": numbers or "auto"), for measurements.
fn splits_from_env() -> Result<Splits> {
    let Ok(text) = std::env::var("GAUSSSKIP_SPLITS") else {
        return Ok(Splits::default());
    };
    let one = |s: &str| -> Result<Option<usize>> {
        match s.trim() {
            "auto" | "" => Ok(None),
            n => n.parse().map(Some).map_err(|_| {
                Error::arg(
                    "GAUSSSKIP_SPLITS",
                    format!("{text:?}: expected two split counts \"P,B\" (numbers or auto)"),
                )
            }),
        }
    };
    let mut parts = text.split(',');
    let (p, b) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if parts.next().is_some() {
        return Err(Error::arg(
            "GAUSSSKIP_SPLITS",
            format!("{text:?}: expected two split counts \"P,B\""),
        ));
    }
    Ok(Splits {
        project: one(p)?,
        backproject: one(b)?,
    })
}

/// The kernel generation from `GAUSSSKIP_KERNELS` ("v1" or "v2"; unset: v2).
fn version_from_env() -> Result<KernelVersion> {
    match std::env::var("GAUSSSKIP_KERNELS") {
        Err(_) => Ok(KernelVersion::default()),
        Ok(text) => KernelVersion::parse(&text)
            .ok_or_else(|| Error::arg("GAUSSSKIP_KERNELS", format!("{text:?}: expected v1 or v2"))),
    }
}

/// Device attribute `a` of `dev`.
fn attribute(dev: sys::CUdevice, a: sys::CUdevice_attribute) -> Result<i32> {
    let mut v = 0;
    // SAFETY: writes one int.
    check(
        unsafe { sys::cuDeviceGetAttribute(&mut v, a, dev) },
        "reading a device attribute",
    )?;
    Ok(v)
}

impl CudaBackend {
    /// Opens device `ordinal` and loads the kernels.
    ///
    /// # Errors
    /// `NoCuda` when there is no driver, no such device or a device older than compute
    /// capability 8.0; `Cuda` when the module cannot be loaded; `InvalidArgument` for a
    /// malformed `GAUSSSKIP_SPLITS` or `GAUSSSKIP_KERNELS`.
    pub(crate) fn new(ordinal: usize, storage: EigvecStorage) -> Result<CudaBackend> {
        // SAFETY: only tries to open the driver library.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoCuda(
                "the CUDA driver library (libcuda.so / nvcuda.dll) was not found: install the NVIDIA driver, or use a CPU context".into(),
            ));
        }
        let splits = splits_from_env()?;
        let version = version_from_env()?;
        let no_cuda = |what: &str| {
            let what = what.to_string();
            move |e: Error| Error::NoCuda(format!("{what}: {e}"))
        };
        // SAFETY: plain driver queries into locals.
        let dev = unsafe {
            check(sys::cuInit(0), "cuInit")
                .map_err(no_cuda("the CUDA driver did not initialise"))?;
            let mut count = 0;
            check(sys::cuDeviceGetCount(&mut count), "cuDeviceGetCount")
                .map_err(no_cuda("counting CUDA devices"))?;
            if ordinal >= count.max(0) as usize {
                return Err(Error::NoCuda(format!(
                    "CUDA device {ordinal} was asked for, but {count} device(s) are visible"
                )));
            }
            let mut dev: sys::CUdevice = 0;
            check(sys::cuDeviceGet(&mut dev, ordinal as i32), "cuDeviceGet")
                .map_err(no_cuda("opening the CUDA device"))?;
            dev
        };
        let mut buf = [0 as std::ffi::c_char; 256];
        // SAFETY: the driver writes a NUL-terminated name of at most buf.len() bytes.
        let name = unsafe {
            if sys::cuDeviceGetName(buf.as_mut_ptr(), buf.len() as i32, dev)
                == sys::CUresult::CUDA_SUCCESS
            {
                CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
            } else {
                format!("CUDA device {ordinal}")
            }
        };
        use sys::CUdevice_attribute as A;
        let major = attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        if major < 8 {
            return Err(Error::NoCuda(format!(
                "{name} has compute capability {major}.{minor}; the kernels need 8.0 or newer"
            )));
        }
        let sms = attribute(dev, A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as usize;
        let l2_bytes = attribute(dev, A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?.max(0) as usize;
        let mut ctx: sys::CUcontext = ptr::null_mut();
        // SAFETY: retains the primary context; Device takes the retain over (or we release it).
        check(
            unsafe { sys::cuDevicePrimaryCtxRetain(&mut ctx, dev) },
            "retaining the device's primary context",
        )
        .map_err(no_cuda(&format!(
            "CUDA device {ordinal} could not be opened"
        )))?;
        let current = match Current::make(ctx) {
            Ok(c) => c,
            Err(e) => {
                // SAFETY: releases the retain taken above.
                let _ = unsafe { sys::cuDevicePrimaryCtxRelease_v2(dev) };
                return Err(e);
            }
        };
        let device = Arc::new(Device::new(ctx, dev, ordinal)?);
        // SAFETY: the context is current (`current`).
        let kernels = unsafe { Kernels::load(ctx, storage, &name) }.map_err(|e| match e {
            Error::Cuda(m) => Error::Cuda(format!("{m} (compute capability {major}.{minor})")),
            e => e,
        })?;
        drop(current);
        Ok(CudaBackend {
            models: ModelCache::new(device.clone(), storage),
            kernels,
            device,
            storage,
            ordinal,
            sms,
            l2_bytes,
            name,
            splits,
            poison: AtomicBool::new(false),
            version: AtomicU8::new(version as u8),
        })
    }

    /// The kernel generation later calls use.
    pub(crate) fn kernel_version(&self) -> KernelVersion {
        match self.version.load(Ordering::Relaxed) {
            0 => KernelVersion::V1,
            _ => KernelVersion::V2,
        }
    }

    /// Makes later calls use kernel generation `v` (graphs captured before keep theirs).
    pub(crate) fn set_kernel_version(&self, v: KernelVersion) {
        self.version.store(v as u8, Ordering::Relaxed);
    }

    /// The split rule of `version` for rows of `dtype`: version 2 counts the resident blocks of
    /// the very kernels the call will launch.
    fn split_rule(&self, version: KernelVersion, dtype: Dtype) -> SplitRule {
        match version {
            KernelVersion::V1 => SplitRule::PerSm(self.sms),
            KernelVersion::V2 => {
                let slots = |stage: Stage| {
                    stage.heights().map(|bm| {
                        self.sms
                            * self.kernels.get(version, stage, dtype, bm).blocks_per_sm as usize
                    })
                };
                SplitRule::Waves {
                    project: slots(Stage::Project),
                    backproject: slots(Stage::Backproject),
                }
            }
        }
    }

    /// The device's name.
    pub(crate) fn device_name(&self) -> &str {
        &self.name
    }

    /// Fills every call's scratch with NaN before its kernels (tests: an unwritten or stale
    /// scratch value then shows in the output).
    pub(crate) fn set_poison_scratch(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    /// Models on the device now.
    pub(crate) fn models_on_device(&self) -> usize {
        self.models.len()
    }

    /// Bytes of the context's pool in use now.
    pub(crate) fn device_bytes_in_use(&self) -> u64 {
        self.device.used_bytes()
    }

    /// The device copy of `model`, uploading it outside capture.
    fn device_model(&self, model: &Model, capturing: bool) -> Result<Arc<DeviceModel>> {
        if let Some(m) = self.models.get(model) {
            return Ok(m);
        }
        if capturing {
            return Err(Error::arg(
                "stream",
                "the model is not on the device yet and is not uploaded during graph capture: run one call with it before capturing (PyTorch's warm-up does), or prepare it",
            ));
        }
        // SAFETY: the caller made the context current.
        unsafe { self.models.upload(model) }
    }

    /// Uploads `model` and checks that calls of up to `batch` rows and `slabs` output slabs
    /// fit one launch, then warms the pool with their scratch on `stream`, so that such calls
    /// can be captured in a graph.
    ///
    /// # Safety
    /// `stream` is NULL or a live CUstream of this device.
    pub(crate) unsafe fn prepare(
        &self,
        model: &Model,
        batch: usize,
        slabs: usize,
        stream: *mut c_void,
    ) -> Result<()> {
        let _current = Current::make(self.device.ctx)?;
        let stream = stream as sys::CUstream;
        if capturing(stream)? {
            return Err(Error::arg(
                "stream",
                "prepare must run outside graph capture",
            ));
        }
        self.device_model(model, false)?;
        let table = (batch + batch.max(slabs)) * std::mem::size_of::<GsLevel>();
        // The largest scratch any row type and the current version's rule may ask for.
        let version = self.kernel_version();
        let mut total = 0;
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            let g = Geometry::new(
                model.dim(),
                model.rank(),
                batch,
                slabs,
                self.storage,
                self.split_rule(version, dtype),
                self.splits,
                table,
            )?;
            total = total.max(g.layout.total);
        }
        let p = self.device.alloc(total, stream, "reserving scratch")?;
        self.device.free(p, stream);
        Ok(())
    }

    /// Drops the device copy of `model`; it is freed once the eager calls that used it are
    /// done (nothing waits on the host). The next call with the model uploads it again.
    pub(crate) fn release_model(&self, model: &Model) -> Result<()> {
        let _current = Current::make(self.device.ctx)?;
        self.models.forget(model.id());
        Ok(())
    }

    /// Checks that `x` (`batch x dim`) and `out` (`slabs` times that) are device buffers of
    /// this context large enough for the call.
    ///
    /// # Safety
    /// As `pointers::check_buffer`: the context is current.
    unsafe fn check_buffers(
        &self,
        dtype: Dtype,
        x: *const c_void,
        out: *mut c_void,
        batch: usize,
        dim: usize,
        slabs: usize,
    ) -> Result<()> {
        let bytes = |n: Option<usize>| {
            n.and_then(|n| n.checked_mul(dtype.size()))
                .ok_or_else(|| Error::arg("batch", "the buffer size overflows"))
        };
        let in_bytes = bytes(batch.checked_mul(dim))?;
        let out_bytes = bytes(batch.checked_mul(dim).and_then(|n| n.checked_mul(slabs)))?;
        pointers::check_buffer("x", x, in_bytes, self.ordinal)?;
        pointers::check_buffer("out", out, out_bytes, self.ordinal)
    }

    /// Validates a device call and plans it: everything that can fail before any work.
    #[allow(clippy::too_many_arguments)]
    unsafe fn plan(
        &self,
        model: &Model,
        op: &Op<'_>,
        dtype: Dtype,
        x: *const c_void,
        out: *mut c_void,
        batch: usize,
        capturing: bool,
        splits: Splits,
    ) -> Result<Call> {
        let (d, r, slabs) = (model.dim(), model.rank(), op.slabs());
        self.check_buffers(dtype, x, out, batch, d, slabs)?;
        let cond = precision::condition(
            op,
            batch,
            model.eigvals(),
            model.residual_var(),
            r == d,
            self.storage,
        )?;
        let levels = LevelPlan::new(op);
        if capturing && !levels.table.is_empty() {
            return Err(Error::arg(
                "levels",
                format!(
                    "per-row levels and trajectories of more than {INLINE_LEVELS} levels are uploaded per call and cannot be captured in a graph; capture calls with one level for all rows"
                ),
            ));
        }
        let table_bytes = std::mem::size_of_val(levels.table.as_slice());
        let version = self.kernel_version();
        let geometry = Geometry::new(
            d,
            r,
            batch,
            slabs,
            self.storage,
            self.split_rule(version, dtype),
            splits,
            table_bytes,
        )?;
        let dm = self.device_model(model, capturing)?;
        Ok(Call {
            dm,
            grouped: None,
            version,
            keep_eigvecs: self.keeps_in_l2(r, d),
            geometry,
            levels,
            residual_var: cond.residual_var,
            dtype,
            x: x as u64,
            out: out as u64,
            batch,
            dim: d,
            rank: r,
            slabs,
        })
    }

    /// Whether `rank` eigenvectors of `dim` entries fit well within L2 (70 % of it: the rest
    /// holds x, q, partial tiles and other work), so that version 2's launch 1 keeps them there
    /// for launch 2 (kernels/skip2.cuh).
    fn keeps_in_l2(&self, rank: usize, dim: usize) -> bool {
        let element = match self.storage {
            EigvecStorage::F16 => 2,
            EigvecStorage::F32 => 4,
        };
        let bytes = rank.saturating_mul(dim).saturating_mul(element);
        bytes.saturating_mul(10) <= self.l2_bytes.saturating_mul(7)
    }

    /// Enqueues a planned call on `stream`: scratch, counters, levels, two launches, free.
    /// With `timing`, records events before, between and after the launches.
    unsafe fn enqueue(
        &self,
        call: &Call,
        stream: sys::CUstream,
        timing: Option<&[sys::CUevent; 3]>,
    ) -> Result<()> {
        let g = &call.geometry;
        let l = &g.layout;
        let dev = &self.device;
        let scratch = dev.alloc(l.total, stream, "allocating scratch")?;
        let run = || -> Result<()> {
            if self.poison.load(Ordering::Relaxed) {
                check(
                    sys::cuMemsetD8Async(scratch, 0xFF, l.counters, stream),
                    "poisoning scratch",
                )?;
            }
            if l.counter_count > 0 {
                check(
                    sys::cuMemsetD32Async(scratch + l.counters as u64, 0, l.counter_count, stream),
                    "zeroing tile counters",
                )?;
            }
            if !call.levels.table.is_empty() {
                let t = &call.levels.table;
                let bytes = std::slice::from_raw_parts(
                    t.as_ptr() as *const u8,
                    std::mem::size_of_val(t.as_slice()),
                );
                dev.upload_staged(scratch + l.table as u64, bytes, stream)?;
            }
            let mut components = call.dm.components;
            let mut grouped = None;
            if let Some((tables, _)) = &call.grouped {
                let base = scratch
                    + l.table as u64
                    + std::mem::size_of_val(call.levels.table.as_slice()) as u64;
                dev.upload_staged(base, &tables.bytes(), stream)?;
                let o = tables.offsets();
                components = base + o.components as u64;
                grouped = Some(args::GroupPointers {
                    groups: base + o.groups as u64,
                    order: base + o.order as u64,
                    tile_group1: base + o.tile_group1 as u64,
                    tile_group2: base + o.tile_group2 as u64,
                });
            }
            let pointers = Pointers {
                x: call.x,
                out: call.out,
                components,
                scratch,
            };
            let rows = Uniform {
                component: 0,
                residual_var: call.residual_var,
            };
            let mut args = args::build(
                &pointers,
                g,
                &call.levels,
                &rows,
                grouped.as_ref(),
                call.batch,
                call.dim,
                call.rank,
                call.slabs,
                call.keep_eigvecs,
            );
            let mut params = [&mut args as *mut args::GsArgs as *mut c_void];
            let record = |i: usize| -> Result<()> {
                if let Some(ev) = timing {
                    check(
                        sys::cuEventRecord(ev[i], stream),
                        "recording a timing event",
                    )?;
                }
                Ok(())
            };
            record(0)?;
            for (stage, launch, what) in [
                (Stage::Project, g.project, "launching the projection"),
                (
                    Stage::Backproject,
                    g.backproject,
                    "launching the back-projection",
                ),
            ] {
                let k = self.kernels.get(call.version, stage, call.dtype, launch.bm);
                // SAFETY: the kernel takes one GsArgs by value (copied at launch); every pointer
                // in it is a checked caller buffer, the model's device copy, or this call's
                // scratch laid out by Geometry for exactly these grids; its dynamic shared
                // memory is what it declares (allowed when the module loaded).
                check(
                    sys::cuLaunchKernel(
                        k.func,
                        launch.blocks() as u32,
                        1,
                        launch.splits as u32,
                        THREADS,
                        1,
                        1,
                        k.smem,
                        stream,
                        params.as_mut_ptr(),
                        ptr::null_mut(),
                    ),
                    what,
                )?;
                record(if stage == Stage::Project { 1 } else { 2 })?;
            }
            Ok(())
        };
        let result = run();
        dev.free(scratch, stream);
        result
    }

    /// Runs `op` on device buffers on the caller's stream. The caller validated the levels,
    /// the element counts and that `x` and `out` do not overlap.
    ///
    /// # Safety
    /// `x` holds `batch * dim` and `out` `op.slabs() * batch * dim` elements of `dtype` in
    /// device memory of this context; `stream` is NULL or a live CUstream of this device.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn apply_device(
        &self,
        model: &Model,
        op: Op<'_>,
        dtype: Dtype,
        x: *const c_void,
        out: *mut c_void,
        batch: usize,
        stream: *mut c_void,
    ) -> Result<()> {
        let _current = Current::make(self.device.ctx)?;
        let stream = stream as sys::CUstream;
        let capturing = capturing(stream)?;
        let call = self.plan(model, &op, dtype, x, out, batch, capturing, self.splits)?;
        self.enqueue(&call, stream, None)?;
        if !capturing {
            self.device.track(stream)?;
        }
        Ok(())
    }

    /// Runs `op` with rows of several components on device buffers: one launch pair over
    /// all groups (rows ordered by component, per-group tiles), with the call's tables
    /// uploaded per call, so it cannot be captured. The caller validated the levels against
    /// every component used.
    ///
    /// # Safety
    /// As [`CudaBackend::apply_device`]; `components` holds `batch` indices below the
    /// model's component count.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn apply_device_grouped(
        &self,
        model: &Model,
        op: Op<'_>,
        dtype: Dtype,
        x: *const c_void,
        out: *mut c_void,
        batch: usize,
        stream: *mut c_void,
        components: &[u32],
    ) -> Result<()> {
        let _current = Current::make(self.device.ctx)?;
        let stream = stream as sys::CUstream;
        if capturing(stream)? {
            return Err(Error::arg(
                "component",
                "rows of several components in one call upload a per-call table and cannot be captured in a graph; capture one call per component",
            ));
        }
        let (d, slabs) = (model.dim(), op.slabs());
        let k = model.n_components();
        let mut entries = vec![args::GsComponent::default(); k];
        let mut residual = vec![0.0; k];
        let mut parts = Vec::new();
        let mut rank = 0;
        let groups = crate::rows::groups(components, k);
        for c in (0..k).filter(|&c| !groups[c].is_empty()) {
            let part = model.part(c);
            // The bound holds per component, over the levels of its own rows.
            let sub = crate::rows::GroupOp::new(op, &groups[c]);
            let cond = precision::condition(
                &sub.op(),
                groups[c].len(),
                part.eigvals(),
                part.residual_var(),
                part.rank() == d,
                self.storage,
            )?;
            let dm = self.device_model(part, false)?;
            entries[c] = dm.entry;
            residual[c] = cond.residual_var;
            rank = rank.max(part.rank());
            parts.push(dm);
        }
        self.check_buffers(dtype, x, out, batch, d, slabs)?;
        let levels = LevelPlan::new(&op);
        let used: Vec<usize> = groups.iter().map(Vec::len).filter(|&n| n > 0).collect();
        // The smallest tile heights give the most tiles: room for the tables whatever the
        // geometry picks.
        let probe = args::GroupTables::new(&groups, entries.clone(), &residual, 32, 32, slabs);
        let table_bytes = std::mem::size_of_val(levels.table.as_slice()) + probe.offsets().total;
        let version = self.kernel_version();
        let geometry = Geometry::grouped(
            d,
            rank,
            &used,
            slabs,
            self.storage,
            self.split_rule(version, dtype),
            self.splits,
            table_bytes,
        )?;
        let eigvec_rows: usize = parts.iter().map(|p| p.entry.rank as usize).sum();
        let tables = args::GroupTables::new(
            &groups,
            entries,
            &residual,
            geometry.project.bm,
            geometry.backproject.bm,
            slabs,
        );
        let call = Call {
            dm: parts[0].clone(),
            grouped: Some((tables, parts)),
            version,
            keep_eigvecs: self.keeps_in_l2(eigvec_rows, d),
            geometry,
            levels,
            residual_var: 0.0,
            dtype,
            x: x as u64,
            out: out as u64,
            batch,
            dim: d,
            rank,
            slabs,
        };
        self.enqueue(&call, stream, None)?;
        self.device.track(stream)?;
        Ok(())
    }

    /// Runs `op` on host buffers: copies `x` to the device, runs on the context's own stream,
    /// copies the result back (allocates per call: the convenience path, not the fast one).
    /// `out` is written only after everything succeeded.
    pub(crate) fn apply_host(
        &self,
        model: &Model,
        op: Op<'_>,
        dtype: Dtype,
        x: &[u8],
        out: &mut [u8],
        batch: usize,
    ) -> Result<()> {
        let _current = Current::make(self.device.ctx)?;
        let dev = &self.device;
        let s = dev.stream;
        let mut host = Vec::new();
        host.try_reserve_exact(out.len())
            .map_err(|_| Error::OutOfMemory(format!("{} bytes for the output", out.len())))?;
        host.resize(out.len(), 0u8);
        // SAFETY: the buffers are this call's own pool allocations of the stated sizes on the
        // context's stream; the stream is drained before they are read or freed.
        unsafe {
            let dx = dev.alloc(x.len(), s, "allocating the input on the device")?;
            let dout = match dev.alloc(out.len(), s, "allocating the output on the device") {
                Ok(p) => p,
                Err(e) => {
                    dev.free(dx, s);
                    return Err(e);
                }
            };
            let result = check(
                sys::cuMemcpyHtoDAsync_v2(dx, x.as_ptr() as *const c_void, x.len(), s),
                "copying the input to the device",
            )
            .and_then(|_| {
                self.apply_device(
                    model,
                    op,
                    dtype,
                    dx as *const c_void,
                    dout as *mut c_void,
                    batch,
                    s as *mut c_void,
                )
            })
            .and_then(|_| {
                check(
                    sys::cuMemcpyDtoHAsync_v2(host.as_mut_ptr() as *mut c_void, dout, out.len(), s),
                    "copying the output to the host",
                )
            });
            let drained = check(sys::cuStreamSynchronize(s), "running the kernels");
            dev.free(dx, s);
            dev.free(dout, s);
            result?;
            drained?;
        }
        out.copy_from_slice(&host);
        Ok(())
    }

    /// Times the two launches of `reps` skips of device rows `x` into `out` on `stream` with
    /// CUDA events (waits for them), with split counts `splits` (unset: the launcher's rule).
    ///
    /// # Safety
    /// As [`CudaBackend::apply_device`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn time_skip_launches(
        &self,
        model: &Model,
        op: Op<'_>,
        dtype: Dtype,
        x: *const c_void,
        out: *mut c_void,
        batch: usize,
        stream: *mut c_void,
        splits: Splits,
        reps: usize,
    ) -> Result<LaunchTimes> {
        let _current = Current::make(self.device.ctx)?;
        let stream = stream as sys::CUstream;
        if capturing(stream)? {
            return Err(Error::arg("stream", "timing runs outside graph capture"));
        }
        let splits = Splits {
            project: splits.project.or(self.splits.project),
            backproject: splits.backproject.or(self.splits.backproject),
        };
        let call = self.plan(model, &op, dtype, x, out, batch, false, splits)?;
        let reps = reps.clamp(1, 1000);
        let mut events: Vec<[sys::CUevent; 3]> = Vec::with_capacity(reps);
        let result = (|| -> Result<LaunchTimes> {
            for _ in 0..reps {
                let mut trio = [ptr::null_mut(); 3];
                for e in trio.iter_mut() {
                    check(sys::cuEventCreate(e, 0), "creating a timing event")?;
                }
                events.push(trio);
            }
            for trio in &events {
                self.enqueue(&call, stream, Some(trio))?;
            }
            self.device.track(stream)?;
            check(
                sys::cuEventSynchronize(events[reps - 1][2]),
                "waiting for the timed launches",
            )?;
            let mut t = [Vec::with_capacity(reps), Vec::with_capacity(reps)];
            for trio in &events {
                for (i, v) in t.iter_mut().enumerate() {
                    let mut ms = 0f32;
                    check(
                        sys::cuEventElapsedTime_v2(&mut ms, trio[i], trio[i + 1]),
                        "reading a launch time",
                    )?;
                    v.push(f64::from(ms));
                }
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let g = &call.geometry;
            let mut out = LaunchTimes::default();
            for (i, (stage, launch)) in [
                (Stage::Project, g.project),
                (Stage::Backproject, g.backproject),
            ]
            .into_iter()
            .enumerate()
            {
                let k = self.kernels.get(call.version, stage, call.dtype, launch.bm);
                out.ms[i] = median(&mut t[i]);
                out.blocks[i] = launch.blocks() as u32;
                out.splits[i] = launch.splits as u32;
                out.block_rows[i] = launch.bm as u32;
                out.blocks_per_sm[i] = k.blocks_per_sm;
                out.waves[i] = (launch.blocks() * launch.splits) as f64
                    / (self.sms * k.blocks_per_sm as usize) as f64;
            }
            Ok(out)
        })();
        for trio in &events {
            for e in trio {
                if !e.is_null() {
                    let _ = sys::cuEventDestroy_v2(*e);
                }
            }
        }
        result
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Eager work still queued may use the module and the models freed after this.
        if let Ok(_current) = Current::make(self.device.ctx) {
            // SAFETY: the context is current.
            unsafe { self.device.quiesce() };
        }
    }
}

/// A validated, planned call.
struct Call {
    dm: Arc<DeviceModel>,
    /// Rows of several components: the tables (uploaded after the levels) and the device
    /// copies of the components they point to.
    grouped: Option<(args::GroupTables, Vec<Arc<DeviceModel>>)>,
    /// The kernel generation, fixed when the call is planned.
    version: KernelVersion,
    /// Version 2: the eigenvectors fit in L2 (`GsArgs::keep_eigvecs`).
    keep_eigvecs: bool,
    geometry: Geometry,
    levels: LevelPlan,
    residual_var: f64,
    dtype: Dtype,
    x: u64,
    out: u64,
    batch: usize,
    dim: usize,
    rank: usize,
    slabs: usize,
}
