//! CUDA backend: the kernels of `kernels/skip.cu` driven through cudarc's driver API.
//!
//! One call is two launches on the caller's stream (projection with split-K and the weights,
//! then the weighted back-projection with the fused epilogue; see the kernel file's header).
//!
//! Life cycle and costs:
//! - Context creation loads the driver, retains the device's primary context (the one the CUDA
//!   runtime and PyTorch use, so their pointers and streams work here) and loads the kernel
//!   module. Nothing is compiled or loaded lazily inside a call.
//! - A model is uploaded on its first use (or by [`CudaBackend::prepare`]) and cached by
//!   [`Model::id`]; eigenvectors are stored in f16 unless the context asked for f32.
//! - Scratch (split-K partials, the weighted projections, tile counters, level tables) belongs
//!   to a workspace per caller stream, so concurrent streams never share it. It grows when a
//!   call needs more (which waits for that stream once, outside capture) and is reused after.
//! - A steady-state call allocates nothing and never waits for the device, so it can be
//!   captured in a CUDA graph. Inside a capture, a call that would need to upload the model,
//!   grow scratch, or upload a table of levels (per-row levels, or more than
//!   `INLINE_LEVELS` trajectory levels) fails with a message instead: run the same call once
//!   before capturing, and use uniform levels inside graphs.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::fmt;
use std::sync::{Arc, Mutex};

use cudarc::driver::{result, sys, CudaContext, DriverError};
use half::f16;

use crate::context::EigvecStorage;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::noise::{Levels, Noise, Op};

/// The compiled kernels: built by build.rs with nvcc when one is found, otherwise the committed
/// `kernels/prebuilt/gaussskip.fatbin` (sm_80 and sm_90 code, compute_90 PTX).
static FATBIN: &[u8] = include_bytes!(env!("GAUSSSKIP_FATBIN"));

/// Where the embedded kernels came from: `nvcc <version>` or `prebuilt`.
pub const FATBIN_ORIGIN: &str = env!("GAUSSSKIP_FATBIN_ORIGIN");

const THREADS: u32 = 128;
/// Columns (launch 2) or modes (launch 1) per block.
const BN: usize = 64;
/// Target levels passed inside the kernel arguments; more go through a device table.
pub const INLINE_LEVELS: usize = 16;
/// Level-table staging slots per stream: a call waits for the upload of the call this many
/// calls back (on the same stream), never for the device in general.
const STAGING_SLOTS: usize = 4;

/// One noise level as the kernels read it (`GsLevel` in kernels/common.cuh).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct GsLevel {
    alpha: f64,
    sigma: f64,
}

impl From<Noise> for GsLevel {
    fn from(n: Noise) -> Self {
        GsLevel {
            alpha: n.alpha,
            sigma: n.sigma,
        }
    }
}

/// The kernels' argument block, byte for byte `GsArgs` in kernels/common.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct GsArgs {
    x: u64,
    out: u64,
    mean: u64,
    eigvecs: u64,
    eigvals: u64,
    part: u64,
    q: u64,
    counters: u64,
    from_table: u64,
    to_table: u64,
    batch: i64,
    dim: i64,
    rank: i64,
    rq: i64,
    rpad: i64,
    rowpad: i64,
    cpad: i64,
    rowpad2: i64,
    kind: i32,
    slabs: i32,
    splits: i32,
    to_per_row: i32,
    splits2: i32,
    reserved: i32,
    residual_var: f64,
    from: GsLevel,
    to: [GsLevel; INLINE_LEVELS],
}
const _: () = assert!(std::mem::size_of::<GsArgs>() == 448);

/// Operation numbers of kernels/common.cuh (`GS_OP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Skip = 0,
    Denoise = 1,
    SkipTraj = 2,
    X0Traj = 3,
}

/// Maps a driver error: out of memory to `OutOfMemory`, everything else to `Cuda`.
fn cuda_err(what: &'static str) -> impl Fn(DriverError) -> Error {
    move |e| {
        if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            Error::OutOfMemory(format!("{what}: {e}"))
        } else {
            Error::Cuda(format!("{what}: {e}"))
        }
    }
}

/// A device allocation, freed on drop (the owning context is bound first).
struct DevBuf {
    ctx: Arc<CudaContext>,
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

impl DevBuf {
    fn new(ctx: &Arc<CudaContext>, bytes: usize, what: &'static str) -> Result<DevBuf> {
        // SAFETY: the context is bound to this thread by every caller; the allocation is owned
        // by the returned value and freed exactly once in Drop.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.map_err(cuda_err(what))?;
        Ok(DevBuf {
            ctx: ctx.clone(),
            ptr,
            bytes,
        })
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: ptr came from malloc_sync and no work using it is pending: workspaces are
            // replaced only after their stream was synchronised, models after the context's
            // device was synchronised.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// Pinned host memory for level uploads, freed on drop.
struct HostBuf {
    ctx: Arc<CudaContext>,
    ptr: *mut c_void,
    bytes: usize,
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: ptr came from malloc_host; its uploads completed (events synchronised).
            let _ = unsafe { result::free_host(self.ptr) };
        }
    }
}

/// A model's arrays on the device.
struct DeviceModel {
    mean: DevBuf,
    eigvals: DevBuf,
    eigvecs: DevBuf,
}

/// Scratch of one caller stream.
struct Workspace {
    part: Option<DevBuf>,
    q: Option<DevBuf>,
    counters: Option<DevBuf>,
    table: Option<DevBuf>,
    staging: Vec<(HostBuf, sys::CUevent, bool)>,
    next_slot: usize,
}

impl Workspace {
    fn new() -> Workspace {
        Workspace {
            part: None,
            q: None,
            counters: None,
            table: None,
            staging: Vec::new(),
            next_slot: 0,
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        for (_, event, _) in &self.staging {
            // SAFETY: the event was created by this workspace and is destroyed once.
            let _ = unsafe { result::event::destroy(*event) };
        }
    }
}

/// How much scratch a call needs, and its launch shapes.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    bm1: usize,
    row_tiles1: usize,
    mode_tiles: usize,
    splits: usize,
    bm2: usize,
    row_tiles2: usize,
    col_tiles: usize,
    splits2: usize,
    rq: usize,
    part_bytes: usize,
    q_bytes: usize,
    counter_bytes: usize,
}

/// The CUDA backend of one context.
pub(crate) struct CudaBackend {
    // Field order is drop order: buffers, then the module, then the primary context.
    workspaces: Mutex<HashMap<usize, Workspace>>,
    models: Mutex<HashMap<u64, Arc<DeviceModel>>>,
    functions: HashMap<String, sys::CUfunction>,
    module: sys::CUmodule,
    host_stream: sys::CUstream,
    storage: EigvecStorage,
    sms: usize,
    name: String,
    ctx: Arc<CudaContext>,
}

// SAFETY: the raw handles (module, functions, stream) are driver objects that may be used from
// any thread once their context is current; every entry point binds the context first, and the
// mutable state sits behind mutexes.
unsafe impl Send for CudaBackend {}
// SAFETY: as above.
unsafe impl Sync for CudaBackend {}

impl fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.name)
            .field("ordinal", &self.ctx.ordinal())
            .field("storage", &self.storage)
            .field("kernels", &FATBIN_ORIGIN)
            .finish()
    }
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "f32",
        Dtype::F16 => "f16",
        Dtype::BF16 => "bf16",
    }
}

fn kernel_name(launch: &str, x: Dtype, storage: EigvecStorage, bm: usize) -> String {
    let u = match storage {
        EigvecStorage::F16 => "f16",
        EigvecStorage::F32 => "f32",
    };
    format!("gs_{launch}_{}x_{u}u_bm{bm}", dtype_name(x))
}

impl CudaBackend {
    /// Opens device `ordinal` and loads the kernels.
    ///
    /// # Errors
    /// `NoCuda` when there is no driver, no such device or a device older than compute
    /// capability 8.0; `Cuda` when the module cannot be loaded.
    pub(crate) fn new(ordinal: usize, storage: EigvecStorage) -> Result<CudaBackend> {
        // SAFETY: only tries to open the driver library.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoCuda(
                "the CUDA driver library (libcuda.so / nvcuda.dll) was not found: install the NVIDIA driver, or use a CPU context".into(),
            ));
        }
        let count = result::init()
            .and_then(|_| result::device::get_count())
            .map_err(|e| Error::NoCuda(format!("the CUDA driver did not initialise: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::NoCuda(format!(
                "CUDA device {ordinal} was asked for, but {count} device(s) are visible"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| {
            Error::NoCuda(format!("CUDA device {ordinal} could not be opened: {e}"))
        })?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(cuda_err("reading the compute capability"))?;
        let name = ctx
            .name()
            .unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        if major < 8 {
            return Err(Error::NoCuda(format!(
                "{name} has compute capability {major}.{minor}; the kernels need 8.0 or newer"
            )));
        }
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(cuda_err("reading the multiprocessor count"))? as usize;
        // The driver reads the fatbin through its header; give it 8-byte alignment.
        let mut image = vec![0u64; FATBIN.len() / 8 + 1];
        // SAFETY: image has at least FATBIN.len() bytes; the regions do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                FATBIN.as_ptr(),
                image.as_mut_ptr() as *mut u8,
                FATBIN.len(),
            )
        };
        // SAFETY: image is a complete fatbin that outlives the call; the context is bound.
        let module = unsafe { result::module::load_data(image.as_ptr() as *const c_void) }.map_err(|e| {
            Error::Cuda(format!(
                "loading the kernels ({FATBIN_ORIGIN}) on {name} (compute capability {major}.{minor}) failed: {e}; the fatbin holds sm_80/sm_90 code and compute_90 PTX, which needs a CUDA 13 driver"
            ))
        })?;
        let mut functions = HashMap::new();
        for launch in ["project", "backproject"] {
            let bms: &[usize] = if launch == "project" {
                &[32, 64]
            } else {
                &[32, 128]
            };
            for x in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                for &bm in bms {
                    let fname = kernel_name(launch, x, storage, bm);
                    let cname = CString::new(fname.clone()).expect("kernel names hold no NUL");
                    // SAFETY: module is loaded; cname is a valid C string.
                    let f =
                        unsafe { result::module::get_function(module, cname) }.map_err(|e| {
                            Error::Cuda(format!("kernel {fname} is missing from the module: {e}"))
                        })?;
                    functions.insert(fname, f);
                }
            }
        }
        let host_stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(cuda_err("creating the context's stream"))?;
        Ok(CudaBackend {
            workspaces: Mutex::new(HashMap::new()),
            models: Mutex::new(HashMap::new()),
            functions,
            module,
            host_stream,
            storage,
            sms,
            name,
            ctx,
        })
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(cuda_err("making the CUDA context current"))
    }

    /// Whether `stream` is being captured into a graph.
    fn capturing(stream: sys::CUstream) -> Result<bool> {
        // SAFETY: the caller vouches for the stream handle (C ABI contract).
        let status = unsafe { result::stream::is_capturing(stream) }
            .map_err(cuda_err("querying the stream's capture status"))?;
        Ok(status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }

    /// The model's device copy, uploading it on first use.
    fn device_model(&self, model: &Model, capturing: bool) -> Result<Arc<DeviceModel>> {
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = models.get(&model.id()) {
            return Ok(m.clone());
        }
        if capturing {
            return Err(Error::arg(
                "stream",
                "the model is not on the device yet and cannot be uploaded during graph capture: run the call once (or Context::prepare) before capturing",
            ));
        }
        let upload = |values: &[u8], what: &'static str| -> Result<DevBuf> {
            let buf = DevBuf::new(&self.ctx, values.len(), what)?;
            // SAFETY: buf holds values.len() bytes; the copy is synchronous.
            unsafe { result::memcpy_htod_sync(buf.ptr, values) }.map_err(cuda_err(what))?;
            Ok(buf)
        };
        let bytes_of = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let eigvecs: Vec<u8> = match self.storage {
            EigvecStorage::F16 => model
                .eigvecs()
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
            EigvecStorage::F32 => bytes_of(model.eigvecs()),
        };
        let eigvals: Vec<u8> = model
            .eigvals()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let dm = Arc::new(DeviceModel {
            mean: upload(&bytes_of(model.mean()), "uploading the model mean")?,
            eigvals: upload(&eigvals, "uploading the model eigenvalues")?,
            eigvecs: upload(&eigvecs, "uploading the model eigenvectors")?,
        });
        models.insert(model.id(), dm.clone());
        Ok(dm)
    }

    /// Launch shapes and scratch sizes for `batch` rows and `slabs` output slabs.
    fn geometry(&self, model: &Model, batch: usize, slabs: usize) -> Result<Geometry> {
        let (d, r) = (model.dim(), model.rank());
        let ub = match self.storage {
            EigvecStorage::F16 => 2,
            EigvecStorage::F32 => 4,
        };
        let bk = if ub == 2 { 64 } else { 32 };
        // Splits of a reduction of `chunks` chunks over `tiles` tiles: about four blocks per
        // multiprocessor, each split a whole number of chunks.
        let split = |tiles: usize, chunks: usize| {
            let want = (4 * self.sms).div_ceil(tiles).clamp(1, chunks.max(1));
            chunks.div_ceil(chunks.div_ceil(want)).max(1)
        };
        let bm1 = if batch >= 64 { 64 } else { 32 };
        let row_tiles1 = batch.div_ceil(bm1);
        let mode_tiles = r.div_ceil(BN);
        let tiles1 = row_tiles1 * mode_tiles;
        let splits = split(tiles1, d.div_ceil(bk));
        let rows2 = slabs
            .checked_mul(batch)
            .ok_or_else(|| Error::arg("batch", "slabs x batch overflows"))?;
        let bm2 = if rows2 >= 128 { 128 } else { 32 };
        let row_tiles2 = rows2.div_ceil(bm2);
        let col_tiles = d.div_ceil(BN);
        let tiles2 = row_tiles2
            .checked_mul(col_tiles)
            .ok_or_else(|| Error::arg("batch", "too many output tiles"))?;
        let splits2 = split(tiles2, r.div_ceil(bk));
        let rq = r.div_ceil(8) * 8;
        let too_big = || Error::arg("batch", "the scratch this call needs overflows usize");
        let partial = |splits: usize, rows: usize, cols: usize| -> Result<usize> {
            if splits < 2 {
                return Ok(0);
            }
            splits
                .checked_mul(rows)
                .and_then(|v| v.checked_mul(cols))
                .and_then(|v| v.checked_mul(4))
                .ok_or_else(too_big)
        };
        let part_bytes = partial(splits, row_tiles1 * bm1, mode_tiles * BN)?.max(partial(
            splits2,
            row_tiles2 * bm2,
            col_tiles * BN,
        )?);
        let q_bytes = rows2.checked_mul(rq * ub).ok_or_else(too_big)?;
        if row_tiles1 > i32::MAX as usize
            || row_tiles2 > i32::MAX as usize
            || slabs > i32::MAX as usize
        {
            return Err(Error::arg("batch", "too many rows for one launch"));
        }
        Ok(Geometry {
            bm1,
            row_tiles1,
            mode_tiles,
            splits,
            bm2,
            row_tiles2,
            col_tiles,
            splits2,
            rq,
            part_bytes,
            q_bytes,
            counter_bytes: tiles1.max(tiles2) * 4,
        })
    }

    /// Makes sure `ws` holds at least the given sizes; waits for `stream` before replacing a
    /// buffer it may still be using.
    fn grow(
        &self,
        ws: &mut Workspace,
        g: &Geometry,
        table_bytes: usize,
        stream: sys::CUstream,
        capturing: bool,
    ) -> Result<()> {
        let short =
            |b: &Option<DevBuf>, need: usize| need > 0 && b.as_ref().is_none_or(|b| b.bytes < need);
        let needs = short(&ws.part, g.part_bytes)
            || short(&ws.q, g.q_bytes)
            || short(&ws.counters, g.counter_bytes)
            || short(&ws.table, table_bytes);
        if !needs {
            return Ok(());
        }
        if capturing {
            return Err(Error::arg(
                "stream",
                "this call needs more scratch than the stream's workspace holds, which cannot be allocated during graph capture: run the call once (or Context::prepare) with this shape before capturing",
            ));
        }
        // SAFETY: the stream handle is the caller's (C ABI contract).
        unsafe { result::stream::synchronize(stream) }.map_err(cuda_err(
            "waiting for the stream before growing its scratch",
        ))?;
        let regrow = |slot: &mut Option<DevBuf>, need: usize, what: &'static str| -> Result<bool> {
            if need == 0 || slot.as_ref().is_some_and(|b| b.bytes >= need) {
                return Ok(false);
            }
            *slot = None;
            *slot = Some(DevBuf::new(&self.ctx, need, what)?);
            Ok(true)
        };
        regrow(&mut ws.part, g.part_bytes, "allocating split-K scratch")?;
        regrow(&mut ws.q, g.q_bytes, "allocating projection scratch")?;
        regrow(&mut ws.table, table_bytes, "allocating the level table")?;
        if regrow(
            &mut ws.counters,
            g.counter_bytes,
            "allocating tile counters",
        )? {
            let c = ws.counters.as_ref().expect("just allocated");
            // SAFETY: c holds c.bytes bytes; the synchronous memset completes before any launch.
            unsafe { result::memset_d8_sync(c.ptr, 0, c.bytes) }
                .map_err(cuda_err("zeroing tile counters"))?;
        }
        Ok(())
    }

    /// Uploads a table of levels through a pinned staging slot, stream-ordered.
    fn upload_table(
        &self,
        ws: &mut Workspace,
        levels: &[GsLevel],
        stream: sys::CUstream,
    ) -> Result<()> {
        let bytes = std::mem::size_of_val(levels);
        if ws.staging.len() < STAGING_SLOTS || ws.staging[ws.next_slot].0.bytes < bytes {
            // (Re)build the slot ring; outside capture only (checked by the caller).
            for (_, event, used) in &ws.staging {
                if *used {
                    // SAFETY: the event was recorded on a live stream by this workspace.
                    unsafe { result::event::synchronize(*event) }
                        .map_err(cuda_err("waiting for a level upload"))?;
                }
                // SAFETY: created by this workspace; destroyed once (the ring is cleared below).
                let _ = unsafe { result::event::destroy(*event) };
            }
            ws.staging.clear();
            let slot_bytes = bytes.max(4096);
            for _ in 0..STAGING_SLOTS {
                // SAFETY: plain pinned allocation, owned by HostBuf.
                let ptr = unsafe { result::malloc_host(slot_bytes, 0) }
                    .map_err(cuda_err("allocating pinned staging for levels"))?;
                let host = HostBuf {
                    ctx: self.ctx.clone(),
                    ptr,
                    bytes: slot_bytes,
                };
                let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                    .map_err(cuda_err("creating a staging event"))?;
                ws.staging.push((host, event, false));
            }
            ws.next_slot = 0;
        }
        let table = ws.table.as_ref().expect("sized by grow()").ptr;
        let (host, event, used) = &mut ws.staging[ws.next_slot];
        if *used {
            // SAFETY: recorded by this workspace; waits only for that earlier upload.
            unsafe { result::event::synchronize(*event) }
                .map_err(cuda_err("waiting for a level upload"))?;
        }
        // SAFETY: host holds >= bytes; the regions do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(levels.as_ptr() as *const u8, host.ptr as *mut u8, bytes)
        };
        // SAFETY: pinned source of `bytes` bytes, device table sized by grow(); stream-ordered.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(table, host.ptr, bytes, stream)
                .result()
                .map_err(cuda_err("uploading levels"))?;
            result::event::record(*event, stream).map_err(cuda_err("recording a staging event"))?;
        }
        *used = true;
        ws.next_slot = (ws.next_slot + 1) % STAGING_SLOTS;
        Ok(())
    }

    /// Checks that `ptr .. ptr + bytes` is memory of this device that CUDA knows.
    fn check_buffer(&self, arg: &'static str, ptr: *const c_void, bytes: usize) -> Result<()> {
        let p = ptr as sys::CUdeviceptr;
        let mut mem_type: u32 = 0;
        // SAFETY: attribute queries write one value of the documented type to the given address.
        let rc = unsafe {
            sys::cuPointerGetAttribute(
                &mut mem_type as *mut u32 as *mut c_void,
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                p,
            )
        };
        if rc != sys::CUresult::CUDA_SUCCESS || mem_type == 0 {
            return Err(Error::arg(
                arg,
                format!("{ptr:p} is not memory CUDA knows ({rc:?}): a CUDA context takes device pointers; use a CPU context for host buffers"),
            ));
        }
        if mem_type == sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32 {
            let mut ordinal: i32 = -1;
            // SAFETY: as above.
            let rc = unsafe {
                sys::cuPointerGetAttribute(
                    &mut ordinal as *mut i32 as *mut c_void,
                    sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                    p,
                )
            };
            if rc == sys::CUresult::CUDA_SUCCESS && ordinal != self.ctx.ordinal() as i32 {
                return Err(Error::arg(
                    arg,
                    format!(
                        "lives on CUDA device {ordinal}, but this context is device {}",
                        self.ctx.ordinal()
                    ),
                ));
            }
        }
        let (mut start, mut size): (sys::CUdeviceptr, usize) = (0, 0);
        // SAFETY: as above (RANGE_START_ADDR is a CUdeviceptr, RANGE_SIZE a size_t).
        let ok = unsafe {
            sys::cuPointerGetAttribute(
                &mut start as *mut u64 as *mut c_void,
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                p,
            ) == sys::CUresult::CUDA_SUCCESS
                && sys::cuPointerGetAttribute(
                    &mut size as *mut usize as *mut c_void,
                    sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_RANGE_SIZE,
                    p,
                ) == sys::CUresult::CUDA_SUCCESS
        };
        // Some allocations (virtual-memory mappings) report no range; then only the type check holds.
        if ok && size > 0 {
            let have = (start + size as u64).saturating_sub(p) as usize;
            if have < bytes {
                return Err(Error::shape(
                    arg,
                    format!("{bytes} bytes of device memory"),
                    format!("an allocation with {have} bytes from {ptr:p} on"),
                ));
            }
        }
        Ok(())
    }

    /// Uploads `model` and sizes the workspace of `stream` for calls of up to `batch` rows and
    /// `slabs` output slabs, so that such calls can be captured in a graph.
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
        self.bind()?;
        let stream = stream as sys::CUstream;
        if Self::capturing(stream)? {
            return Err(Error::arg(
                "stream",
                "prepare must run outside graph capture",
            ));
        }
        self.device_model(model, false)?;
        let g = self.geometry(model, batch, slabs)?;
        let table_bytes = (batch + batch.max(slabs)) * std::mem::size_of::<GsLevel>();
        let mut wss = self.workspaces.lock().unwrap_or_else(|e| e.into_inner());
        let ws = wss.entry(stream as usize).or_insert_with(Workspace::new);
        self.grow(ws, &g, table_bytes, stream, false)
    }

    /// Drops the device copy of `model` (after the device finished all work).
    ///
    /// # Errors
    /// `Cuda` when the device cannot be synchronised.
    pub(crate) fn release_model(&self, model: &Model) -> Result<()> {
        self.bind()?;
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        if models.contains_key(&model.id()) {
            self.ctx
                .synchronize()
                .map_err(cuda_err("waiting for the device before freeing a model"))?;
            models.remove(&model.id());
        }
        Ok(())
    }

    /// Runs `op` on device buffers on the caller's stream. The caller validated the levels,
    /// the sizes and that `x` and `out` do not overlap.
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
        self.bind()?;
        let stream = stream as sys::CUstream;
        let capturing = Self::capturing(stream)?;
        let (d, r) = (model.dim(), model.rank());
        let slabs = op.slabs();
        let esize = dtype.size();
        self.check_buffer("x", x, batch * d * esize)?;
        self.check_buffer("out", out, slabs * batch * d * esize)?;
        let dm = self.device_model(model, capturing)?;
        let g = self.geometry(model, batch, slabs)?;

        // Levels: uniform ones ride in the arguments; per-row ones, and trajectories longer
        // than INLINE_LEVELS, go through the stream's level table: [from rows][to rows/slabs].
        let (kind, from, to_levels): (OpKind, Levels<'_>, Vec<Levels<'_>>) = match op {
            Op::Skip { from, to } => (OpKind::Skip, from, vec![to]),
            Op::Denoise { at } => (OpKind::Denoise, Levels::One(Noise::new(0.0, 1.0)), vec![at]),
            Op::SkipTrajectory { from, levels } => (
                OpKind::SkipTraj,
                from,
                levels.iter().map(|&n| Levels::One(n)).collect(),
            ),
            Op::X0Trajectory { from, levels } => (
                OpKind::X0Traj,
                from,
                levels.iter().map(|&n| Levels::One(n)).collect(),
            ),
        };
        let to_per_row = matches!(to_levels.first(), Some(Levels::PerRow(_)));
        let from_per_row = matches!(from, Levels::PerRow(_));
        let to_table = to_per_row || to_levels.len() > INLINE_LEVELS;
        let mut table: Vec<GsLevel> = Vec::new();
        if from_per_row || to_table {
            if let Levels::PerRow(v) = from {
                table.extend(v.iter().map(|&n| GsLevel::from(n)));
            }
            if to_table {
                match to_levels.first() {
                    Some(Levels::PerRow(v)) => table.extend(v.iter().map(|&n| GsLevel::from(n))),
                    _ => table.extend(to_levels.iter().map(|l| match l {
                        Levels::One(n) => GsLevel::from(*n),
                        Levels::PerRow(_) => unreachable!("trajectory levels are uniform"),
                    })),
                }
            }
            if capturing {
                return Err(Error::arg(
                    "levels",
                    format!(
                        "per-row levels and trajectories of more than {INLINE_LEVELS} levels are uploaded per call and cannot be captured in a graph; capture calls with one level for all rows"
                    ),
                ));
            }
        }
        let table_bytes = std::mem::size_of_val(table.as_slice());

        let mut wss = self.workspaces.lock().unwrap_or_else(|e| e.into_inner());
        let ws = wss.entry(stream as usize).or_insert_with(Workspace::new);
        self.grow(ws, &g, table_bytes, stream, capturing)?;
        if !table.is_empty() {
            self.upload_table(ws, &table, stream)?;
        }
        let table_ptr = ws.table.as_ref().map_or(0, |t| t.ptr);
        let from_rows = if from_per_row { batch } else { 0 };

        let mut args = GsArgs {
            x: x as u64,
            out: out as u64,
            mean: dm.mean.ptr,
            eigvecs: dm.eigvecs.ptr,
            eigvals: dm.eigvals.ptr,
            part: ws.part.as_ref().map_or(0, |b| b.ptr),
            q: ws.q.as_ref().map_or(0, |b| b.ptr),
            counters: ws.counters.as_ref().map_or(0, |b| b.ptr),
            from_table: if from_per_row { table_ptr } else { 0 },
            to_table: if to_table {
                table_ptr + (from_rows * std::mem::size_of::<GsLevel>()) as u64
            } else {
                0
            },
            batch: batch as i64,
            dim: d as i64,
            rank: r as i64,
            rq: g.rq as i64,
            rpad: (g.mode_tiles * BN) as i64,
            rowpad: (g.row_tiles1 * g.bm1) as i64,
            cpad: (g.col_tiles * BN) as i64,
            rowpad2: (g.row_tiles2 * g.bm2) as i64,
            kind: kind as i32,
            slabs: slabs as i32,
            splits: g.splits as i32,
            to_per_row: to_per_row as i32,
            splits2: g.splits2 as i32,
            reserved: 0,
            residual_var: model.residual_var(),
            from: match from {
                Levels::One(n) => n.into(),
                Levels::PerRow(_) => GsLevel::default(),
            },
            to: [GsLevel::default(); INLINE_LEVELS],
        };
        if !to_table {
            for (slot, l) in args.to.iter_mut().zip(&to_levels) {
                if let Levels::One(n) = l {
                    *slot = (*n).into();
                }
            }
        }

        let f1 = self.functions[&kernel_name("project", dtype, self.storage, g.bm1)];
        let f2 = self.functions[&kernel_name("backproject", dtype, self.storage, g.bm2)];
        let mut params = [&mut args as *mut GsArgs as *mut c_void];
        // SAFETY: f1 takes one GsArgs by value (copied at launch); every pointer in it is a
        // live device buffer sized by geometry()/grow() or checked above.
        result::launch_kernel(
            f1,
            (g.row_tiles1 as u32, g.mode_tiles as u32, g.splits as u32),
            (THREADS, 1, 1),
            0,
            stream,
            &mut params,
        )
        .map_err(cuda_err("launching the projection"))?;
        // SAFETY: as above for f2; it runs after f1 on the same stream.
        result::launch_kernel(
            f2,
            (g.row_tiles2 as u32, g.col_tiles as u32, g.splits2 as u32),
            (THREADS, 1, 1),
            0,
            stream,
            &mut params,
        )
        .map_err(cuda_err("launching the back-projection"))?;
        Ok(())
    }

    /// Runs `op` on host buffers: copies `x` to the device, runs on the context's own stream,
    /// copies the result back (allocates per call: the convenience path, not the fast one).
    pub(crate) fn apply_host(
        &self,
        model: &Model,
        op: Op<'_>,
        dtype: Dtype,
        x: &[u8],
        out: &mut [u8],
        batch: usize,
    ) -> Result<()> {
        self.bind()?;
        let dx = DevBuf::new(&self.ctx, x.len(), "allocating the input on the device")?;
        let dout = DevBuf::new(&self.ctx, out.len(), "allocating the output on the device")?;
        // SAFETY: sizes match the buffers; the copies are synchronous (host_stream work is
        // finished by the synchronize below before dx/dout are freed).
        unsafe {
            result::memcpy_htod_sync(dx.ptr, x)
                .map_err(cuda_err("copying the input to the device"))?;
            self.apply_device(
                model,
                op,
                dtype,
                dx.ptr as *const c_void,
                dout.ptr as *mut c_void,
                batch,
                self.host_stream as *mut c_void,
            )?;
            result::stream::synchronize(self.host_stream)
                .map_err(cuda_err("running the kernels"))?;
            result::memcpy_dtoh_sync(out, dout.ptr)
                .map_err(cuda_err("copying the output to the host"))?;
        }
        Ok(())
    }

    /// The device's name.
    pub(crate) fn device_name(&self) -> &str {
        &self.name
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            let _ = self.ctx.synchronize();
            // Free scratch and models while the context is alive, then the module and stream.
            self.workspaces
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            self.models
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            // SAFETY: created in new(); nothing uses them after this point.
            unsafe {
                let _ = result::stream::destroy(self.host_stream);
                let _ = result::module::unload(self.module);
            }
        }
    }
}
