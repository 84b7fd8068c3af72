//! Small helpers over the CUDA driver API (cudarc's `sys` layer): status checks, the caller's
//! current context restored after every call, and the relaxed capture mode for the library's
//! own book-keeping calls.

use std::ptr;

use cudarc::driver::{sys, DriverError};

use crate::error::{Error, Result};

/// `Ok` for `CUDA_SUCCESS`; `OutOfMemory` or `Cuda` naming `what` otherwise.
pub(crate) fn check(rc: sys::CUresult, what: &str) -> Result<()> {
    match rc {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
            Err(Error::OutOfMemory(format!("{what}: {}", DriverError(rc))))
        }
        _ => Err(Error::Cuda(format!("{what}: {}", DriverError(rc)))),
    }
}

/// Makes a context current for the life of the value and restores the caller's one after:
/// a multi-GPU caller (PyTorch on another device) keeps its current device.
pub(crate) struct Current {
    pushed: bool,
}

impl Current {
    /// # Errors
    /// `Cuda` when the driver refuses the switch.
    pub fn make(ctx: sys::CUcontext) -> Result<Current> {
        let mut now: sys::CUcontext = ptr::null_mut();
        // SAFETY: writes one context handle to `now`.
        check(
            unsafe { sys::cuCtxGetCurrent(&mut now) },
            "reading the current CUDA context",
        )?;
        if now == ctx {
            return Ok(Current { pushed: false });
        }
        // SAFETY: ctx is a live (retained) context.
        check(
            unsafe { sys::cuCtxPushCurrent_v2(ctx) },
            "making the CUDA context current",
        )?;
        Ok(Current { pushed: true })
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        if self.pushed {
            let mut popped: sys::CUcontext = ptr::null_mut();
            // SAFETY: pops exactly the context this value pushed.
            let _ = unsafe { sys::cuCtxPopCurrent_v2(&mut popped) };
        }
    }
}

/// Relaxed stream-capture mode on this thread for the life of the value: the library's own
/// book-keeping (uploads and waits on its own stream, event queries, frees) then never
/// invalidates a capture that is going on in this or another thread. Nothing done under it is
/// enqueued on a capturing stream.
pub(crate) struct Relaxed {
    previous: sys::CUstreamCaptureMode,
}

impl Relaxed {
    pub fn new() -> Relaxed {
        let mut mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
        // SAFETY: exchanges this thread's mode; restored in Drop.
        let _ = unsafe { sys::cuThreadExchangeStreamCaptureMode(&mut mode) };
        Relaxed { previous: mode }
    }
}

impl Drop for Relaxed {
    fn drop(&mut self) {
        let mut mode = self.previous;
        // SAFETY: as in new().
        let _ = unsafe { sys::cuThreadExchangeStreamCaptureMode(&mut mode) };
    }
}

/// Whether `stream` is being captured into a graph.
///
/// # Safety
/// `stream` is NULL, a special stream handle, or a live stream.
pub(crate) unsafe fn capturing(stream: sys::CUstream) -> Result<bool> {
    let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    check(
        sys::cuStreamIsCapturing(stream, &mut status),
        "querying the stream's capture status",
    )?;
    match status {
        sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE => Ok(false),
        sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE => Ok(true),
        _ => Err(Error::arg(
            "stream",
            "its graph capture was invalidated by an earlier error; end the capture and start again",
        )),
    }
}
