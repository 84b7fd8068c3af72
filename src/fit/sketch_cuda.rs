//! The sketch's products on a CUDA device through cuBLAS (cudarc, with the driver and cuBLAS
//! loaded at run time: the build needs no CUDA toolkit). No hand-written kernels: every step
//! is a cuBLAS level-1/2/3 call in f64.
//!
//! Layout: a batch of `n` rows (row-major `n x dim`) is the column-major `dim x n` matrix X;
//! W and Y are column-major `dim x width`. Per batch, on one stream:
//!
//! | step | cuBLAS |
//! |---|---|
//! | batch mean m = X 1/n | `dgemv` |
//! | centre: X −= m 1ᵀ | `dger` |
//! | batch trace ‖X‖² | `dnrm2` (read on the host) |
//! | P = Xᵀ W (`n x width`) | `dgemm` |
//! | Y += X P | `dgemm` |
//! | Chan: δ = m − mean, Y += c δ (Wᵀδ)ᵀ, mean += δ n/N | `dcopy`, `daxpy`, `dgemv`, `dger`, `dnrm2` |
//!
//! The device holds a partial sum (count, mean, Y, trace) that the host folds into its own
//! with the same Chan update whenever it needs the totals (merge, export, end of a pass, fit).
//! A call returns when its rows are consumed (the stream is synchronised), so the caller may
//! reuse its buffer at once.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys as blas;
use cudarc::driver::{result, sys, CudaContext, DriverError};
use faer::{Mat, MatRef};

use super::sketch::{PassSums, Sketch};
use crate::error::{Error, Result};

/// Values per device batch (bounds the scratch copy of the rows).
const BATCH_VALUES: usize = 1 << 24;

fn driver_err(what: &'static str) -> impl Fn(DriverError) -> Error {
    move |e| {
        if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            Error::OutOfMemory(format!("{what}: {e}"))
        } else {
            Error::Cuda(format!("{what}: {e}"))
        }
    }
}

fn check(status: blas::cublasStatus_t, what: &'static str) -> Result<()> {
    match status {
        blas::cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        blas::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED => {
            Err(Error::OutOfMemory(format!("cuBLAS {what}: {status:?}")))
        }
        other => Err(Error::Cuda(format!("cuBLAS {what}: {other:?}"))),
    }
}

/// cuBLAS takes 32-bit sizes.
fn int(v: usize, what: &'static str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::arg("dim", format!("{what} = {v} exceeds cuBLAS's 32-bit sizes")))
}

/// A device allocation of f64, freed on drop.
struct DevMem {
    ctx: Arc<CudaContext>,
    ptr: sys::CUdeviceptr,
    len: usize,
}

impl DevMem {
    fn zeros(ctx: &Arc<CudaContext>, len: usize, what: &'static str) -> Result<DevMem> {
        let bytes = len.max(1) * 8;
        // SAFETY: the context is bound by the caller; the allocation is owned by the result.
        let ptr = unsafe { result::malloc_sync(bytes) }.map_err(driver_err(what))?;
        let mem = DevMem {
            ctx: ctx.clone(),
            ptr,
            len,
        };
        mem.clear()?;
        Ok(mem)
    }

    fn clear(&self) -> Result<()> {
        // SAFETY: ptr holds len f64.
        unsafe { result::memset_d8_sync(self.ptr, 0, self.len.max(1) * 8) }
            .map_err(driver_err("clearing device memory"))
    }

    fn upload(&self, values: &[f64]) -> Result<()> {
        debug_assert!(values.len() <= self.len);
        // SAFETY: ptr holds at least values.len() f64.
        unsafe { result::memcpy_htod_sync(self.ptr, values) }.map_err(driver_err("uploading"))
    }

    fn download(&self) -> Result<Vec<f64>> {
        let mut out = vec![0f64; self.len];
        // SAFETY: ptr holds len f64; the work writing it was synchronised.
        unsafe { result::memcpy_dtoh_sync(&mut out, self.ptr) }
            .map_err(driver_err("downloading"))?;
        Ok(out)
    }

    fn f(&self) -> *mut f64 {
        self.ptr as *mut f64
    }
}

impl Drop for DevMem {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: ptr came from malloc_sync; every call synchronises before returning.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// Column-major contiguous copy of a faer matrix (its columns may be padded).
fn col_major(m: MatRef<'_, f64>) -> Vec<f64> {
    (0..m.ncols())
        .flat_map(|j| (0..m.nrows()).map(move |i| m[(i, j)]))
        .collect()
}

/// The sketch's device: test matrix, partial sums and scratch on one CUDA device.
pub(crate) struct CudaSketch {
    ctx: Arc<CudaContext>,
    handle: blas::cublasHandle_t,
    dim: usize,
    width: usize,
    batch_cap: usize,
    w: DevMem,
    y: DevMem,
    mean: DevMem,
    bmean: DevMem,
    delta: DevMem,
    g: DevMem,
    ones: DevMem,
    x: DevMem,
    p: DevMem,
    count: u64,
    trace: f64,
    /// Set when a call failed part-way: the partial sums are then unusable.
    failed: Option<String>,
}

impl std::fmt::Debug for CudaSketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaSketch {{ device: {}, dim: {}, width: {}, count: {} }}",
            self.ctx.ordinal(),
            self.dim,
            self.width,
            self.count
        )
    }
}

// SAFETY: the handle and device memory are used only through &mut self or, for reads of
// finished results, &self after synchronisation; the context is bound on every call.
unsafe impl Send for CudaSketch {}

impl CudaSketch {
    /// Opens device `ordinal`, loads cuBLAS and uploads the test matrix `w`.
    ///
    /// # Errors
    /// `NoCuda` without a driver, a device or cuBLAS; `OutOfMemory` when the matrices do not
    /// fit on the device.
    pub(crate) fn new(ordinal: usize, w: MatRef<'_, f64>) -> Result<CudaSketch> {
        // SAFETY: only tries to open the libraries.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoCuda(
                "the CUDA driver library (libcuda.so) was not found: install the NVIDIA driver, or fit on the CPU".into(),
            ));
        }
        // SAFETY: as above.
        if !unsafe { blas::is_culib_present() } {
            return Err(Error::NoCuda(
                "cuBLAS (libcublas.so) was not found: put the CUDA libraries (e.g. those of a PyTorch install) on the loader path, or fit on the CPU".into(),
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
        let (dim, width) = (w.nrows(), w.ncols());
        let batch_cap = (BATCH_VALUES / dim).clamp(1, 4096);
        int(dim * width, "dim x width")?;
        int(dim * batch_cap, "dim x batch")?;
        let mut handle = std::ptr::null_mut();
        // SAFETY: the context is current (CudaContext::new binds it); handle receives a new
        // cuBLAS handle owned by the result and destroyed in Drop.
        check(unsafe { blas::cublasCreate_v2(&mut handle) }, "create")?;
        let dev = |len, what| DevMem::zeros(&ctx, len, what);
        let made = (|| {
            Ok(CudaSketch {
                w: dev(dim * width, "the test matrix")?,
                y: dev(dim * width, "the sketch")?,
                mean: dev(dim, "the mean")?,
                bmean: dev(dim, "a batch mean")?,
                delta: dev(dim, "a mean difference")?,
                g: dev(width, "a projection")?,
                ones: dev(batch_cap, "ones")?,
                x: dev(dim * batch_cap, "a batch")?,
                p: dev(batch_cap * width, "a batch projection")?,
                ctx: ctx.clone(),
                handle,
                dim,
                width,
                batch_cap,
                count: 0,
                trace: 0.0,
                failed: None,
            })
        })();
        let sketch: CudaSketch = match made {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: handle was created above and is not used again.
                let _ = unsafe { blas::cublasDestroy_v2(handle) };
                return Err(e);
            }
        };
        sketch.ones.upload(&vec![1.0; batch_cap])?;
        sketch.w.upload(&col_major(w))?;
        Ok(sketch)
    }

    /// Items in the device's partial sums.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// A new test matrix (next pass); clears the partial sums.
    pub(crate) fn set_test(&mut self, w: MatRef<'_, f64>) -> Result<()> {
        self.bind()?;
        self.w.upload(&col_major(w))?;
        self.clear()
    }

    /// Empties the partial sums.
    pub(crate) fn clear(&mut self) -> Result<()> {
        self.y.clear()?;
        self.mean.clear()?;
        self.count = 0;
        self.trace = 0.0;
        self.failed = None;
        Ok(())
    }

    /// Binds the context, after checking that no earlier call left the sums half-updated.
    fn bind(&self) -> Result<()> {
        if let Some(why) = &self.failed {
            return Err(Error::Cuda(format!(
                "an earlier call on this sketch's device failed part-way ({why}); its sums of this pass are lost: start the pass again"
            )));
        }
        self.ctx
            .bind_to_thread()
            .map_err(driver_err("binding the CUDA context"))
    }

    /// Runs `f`; a failure marks the partial sums unusable.
    fn guarded(&mut self, f: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        self.bind()?;
        let result = f(self);
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        result
    }

    /// The partial sums, or `None` when the device has seen no items.
    pub(crate) fn download(&self) -> Result<Option<PassSums>> {
        if self.count == 0 {
            return Ok(None);
        }
        self.bind()?;
        let y = self.y.download()?;
        let mean = self.mean.download()?;
        if !self.trace.is_finite() || y.iter().chain(&mean).any(|v| !v.is_finite()) {
            return Err(Error::Dataset(
                "rows added on the CUDA device held NaN or Inf (the device path does not check each row)".into(),
            ));
        }
        let (d, k) = (self.dim, self.width);
        Ok(Some(PassSums {
            count: self.count,
            mean,
            y: Mat::from_fn(d, k, |i, j| y[j * d + i]),
            trace: self.trace,
        }))
    }

    /// Adds host rows (row-major `n x dim` f64).
    pub(crate) fn add_host_rows(&mut self, rows: &[f64]) -> Result<()> {
        self.guarded(|s| {
            for chunk in rows.chunks(s.batch_cap * s.dim) {
                s.x.upload(chunk)?;
                s.add_staged(chunk.len() / s.dim, std::ptr::null_mut())?;
            }
            Ok(())
        })
    }

    /// Adds `rows` device rows (row-major `rows x dim` f64 at `x`), ordered on `stream`
    /// (NULL: the default stream); returns when they are consumed.
    ///
    /// # Safety
    /// `x` holds `rows * dim` f64 of this device's memory, written by work ordered before
    /// `stream`'s current position; `stream` is NULL or a live stream of this device.
    pub(crate) unsafe fn add_device_rows(
        &mut self,
        x: *const c_void,
        rows: usize,
        stream: *mut c_void,
    ) -> Result<()> {
        self.bind()?;
        let bytes = rows
            .checked_mul(self.dim * 8)
            .ok_or_else(|| Error::arg("rows", "rows x dim overflows"))?;
        self.check_buffer(x, bytes)?;
        let stream = stream as sys::CUstream;
        self.guarded(|s| {
            let mut done = 0;
            while done < rows {
                let n = s.batch_cap.min(rows - done);
                let src = x as sys::CUdeviceptr + (done * s.dim * 8) as u64;
                // SAFETY: src holds n rows (checked above); the staging buffer holds
                // batch_cap rows.
                unsafe { result::memcpy_dtod_async(s.x.ptr, src, n * s.dim * 8, stream) }
                    .map_err(driver_err("copying device rows"))?;
                s.add_staged(n, stream)?;
                done += n;
            }
            Ok(())
        })
    }

    /// Checks that `ptr .. ptr + bytes` is memory of this device that CUDA knows.
    fn check_buffer(&self, ptr: *const c_void, bytes: usize) -> Result<()> {
        let p = ptr as sys::CUdeviceptr;
        let mut mem_type: u32 = 0;
        // SAFETY: attribute queries write one value of the documented type at the address.
        let rc = unsafe {
            sys::cuPointerGetAttribute(
                &mut mem_type as *mut u32 as *mut c_void,
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                p,
            )
        };
        if rc != sys::CUresult::CUDA_SUCCESS || mem_type == 0 {
            return Err(Error::arg(
                "x",
                format!("{ptr:p} is not device memory CUDA knows ({rc:?}); add host rows with the host variant"),
            ));
        }
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
                "x",
                format!(
                    "lives on CUDA device {ordinal}, but the sketch uses device {}",
                    self.ctx.ordinal()
                ),
            ));
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
        if ok && size > 0 {
            let have = (start + size as u64).saturating_sub(p) as usize;
            if have < bytes {
                return Err(Error::shape(
                    "x",
                    format!("{bytes} bytes of device memory"),
                    format!("an allocation with {have} bytes from {ptr:p} on"),
                ));
            }
        }
        Ok(())
    }

    /// Adds the `n` rows staged in `self.x`, on `stream`, and waits for them.
    fn add_staged(&mut self, n: usize, stream: sys::CUstream) -> Result<()> {
        let (d, k) = (int(self.dim, "dim")?, int(self.width, "width")?);
        let ni = int(n, "batch")?;
        let h = self.handle;
        let (one, zero) = (1.0f64, 0.0f64);
        let inv_n = 1.0 / n as f64;
        let minus = -1.0f64;
        let op_n = blas::cublasOperation_t::CUBLAS_OP_N;
        let op_t = blas::cublasOperation_t::CUBLAS_OP_T;
        let (x, w, y, p) = (self.x.f(), self.w.f(), self.y.f(), self.p.f());
        let (bmean, mean, delta, g, ones) = (
            self.bmean.f(),
            self.mean.f(),
            self.delta.f(),
            self.g.f(),
            self.ones.f(),
        );
        let mut batch_norm = 0.0f64;
        // SAFETY: every pointer is a live allocation of this device with the sizes the calls
        // read and write (x: d x batch_cap ≥ d x n, p: batch_cap x k, w/y: d x k, vectors of
        // d, k and batch_cap); scalars are host values (the default pointer mode), read before
        // the calls return; the stream belongs to this device.
        unsafe {
            check(
                blas::cublasSetStream_v2(h, stream as blas::cudaStream_t),
                "set stream",
            )?;
            check(
                blas::cublasDgemv_v2(h, op_n, d, ni, &inv_n, x, d, ones, 1, &zero, bmean, 1),
                "batch mean",
            )?;
            check(
                blas::cublasDger_v2(h, d, ni, &minus, bmean, 1, ones, 1, x, d),
                "centring",
            )?;
            check(
                blas::cublasDnrm2_v2(h, d * ni, x, 1, &mut batch_norm),
                "batch trace",
            )?;
            check(
                blas::cublasDgemm_v2(h, op_t, op_n, ni, k, d, &one, x, d, w, d, &zero, p, ni),
                "projection",
            )?;
            check(
                blas::cublasDgemm_v2(h, op_n, op_n, d, k, ni, &one, x, d, p, ni, &one, y, d),
                "sketch update",
            )?;
            let (na, nb) = (self.count, n as u64);
            let total = na + nb;
            if na == 0 {
                check(blas::cublasDcopy_v2(h, d, bmean, 1, mean, 1), "mean")?;
            } else {
                let c = (na as f64) * (nb as f64) / (total as f64);
                let frac = nb as f64 / total as f64;
                let mut delta_norm = 0.0f64;
                check(
                    blas::cublasDcopy_v2(h, d, bmean, 1, delta, 1),
                    "mean difference",
                )?;
                check(
                    blas::cublasDaxpy_v2(h, d, &minus, mean, 1, delta, 1),
                    "mean difference",
                )?;
                check(
                    blas::cublasDgemv_v2(h, op_t, d, k, &one, w, d, delta, 1, &zero, g, 1),
                    "cross-term projection",
                )?;
                check(
                    blas::cublasDger_v2(h, d, k, &c, delta, 1, g, 1, y, d),
                    "cross term",
                )?;
                check(
                    blas::cublasDnrm2_v2(h, d, delta, 1, &mut delta_norm),
                    "cross-term trace",
                )?;
                check(
                    blas::cublasDaxpy_v2(h, d, &frac, delta, 1, mean, 1),
                    "mean update",
                )?;
                self.trace += c * delta_norm * delta_norm;
            }
            result::stream::synchronize(stream).map_err(driver_err("waiting for the batch"))?;
            self.count = total;
        }
        self.trace += batch_norm * batch_norm;
        Ok(())
    }
}

impl Drop for CudaSketch {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            // SAFETY: the handle is live and every call synchronised before returning.
            let _ = unsafe { blas::cublasDestroy_v2(self.handle) };
        }
    }
}

impl Sketch {
    /// Computes this sketch's products on CUDA device `ordinal` from now on: rows added with
    /// [`Sketch::add_rows`] are uploaded, and [`Sketch::add_rows_cuda`] takes device rows.
    /// Sums already on the host stay there and are combined exactly.
    ///
    /// # Errors
    /// `NoCuda` without a usable device or cuBLAS; `OutOfMemory` when two `dim x width` f64
    /// matrices and a batch do not fit on it.
    pub fn use_cuda(&mut self, ordinal: usize) -> Result<()> {
        if let Some(old) = self.device.take() {
            if let Some(part) = old.download()? {
                self.sums.merge(self.test.as_ref(), &part);
            }
        }
        self.device = Some(CudaSketch::new(ordinal, self.test.as_ref())?);
        Ok(())
    }

    /// Adds `rows` items in device memory (row-major `rows x dim` f64, the device of
    /// [`Sketch::use_cuda`]), ordered after the work already queued on `stream` (NULL: the
    /// default stream). Returns when the rows are consumed.
    ///
    /// # Errors
    /// `InvalidArgument` without [`Sketch::use_cuda`] or when `x` is not memory of that device
    /// (or too short for the rows, where CUDA knows the allocation's size); `Cuda` for a
    /// failed call. The device path does not scan for NaN/Inf.
    ///
    /// # Safety
    /// `x` holds `rows * dim` f64 on that device; `stream` is NULL or one of its live streams.
    pub unsafe fn add_rows_cuda(
        &mut self,
        x: *const c_void,
        rows: usize,
        stream: *mut c_void,
    ) -> Result<()> {
        let dev = self
            .device
            .as_mut()
            .ok_or_else(|| Error::arg("sketch", "call use_cuda before adding device rows"))?;
        if x.is_null() {
            return Err(Error::NullPointer { arg: "x" });
        }
        if rows == 0 {
            return Ok(());
        }
        // SAFETY: forwarded from the caller.
        unsafe { dev.add_device_rows(x, rows, stream) }
    }
}
